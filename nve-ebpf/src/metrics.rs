//! Per-CPU counters: every packet a program sees is counted exactly once by outcome, and
//! for the VN and the VM port it turned out to belong to. Per-VN and per-port bytes are
//! the VM's frames' (no outer headers).
use aya_ebpf::{EbpfContext, bindings::BPF_NOEXIST, maps::PerCpuHashMap};
use aya_log_ebpf::debug;
use nve_common::metrics::{
    Counter, DropReason, Forward, Hook, Outcome, PortCounter, PortTraffic, VnCounter, VnTraffic,
};

use crate::maps::{NVE_PORT_STATS, NVE_STATS, NVE_VN_STATS};

/// The VN and the VM port (ifindex) a packet was found to belong to before its verdict.
/// Set only once the port or VN is known to the dataplane, so a sender cannot make the
/// counter maps grow. Plain integers with "none" values rather than `Option`s: the payload
/// of a `None` is undefined, and the verifier rejects a program that copies it.
#[derive(Clone, Copy)]
pub struct Scope {
    /// `NO_VNI` until known (VNIs are 24 bits).
    vni: u32,
    /// 0 until known (no interface has index 0).
    port: u32,
}

const NO_VNI: u32 = u32::MAX;

impl Default for Scope {
    fn default() -> Self {
        Self {
            vni: NO_VNI,
            port: 0,
        }
    }
}

impl Scope {
    #[inline(always)]
    pub fn set_vni(&mut self, vni: u32) {
        self.vni = vni;
    }

    #[inline(always)]
    pub fn set_port(&mut self, ifindex: u32) {
        self.port = ifindex;
    }

    #[inline(always)]
    fn vni(&self) -> Option<u32> {
        (self.vni != NO_VNI).then_some(self.vni)
    }

    #[inline(always)]
    fn port(&self) -> Option<u32> {
        (self.port != 0).then_some(self.port)
    }
}

#[inline(always)]
pub fn count(hook: Hook, outcome: Outcome, bytes: u32) {
    if let Some(c) = NVE_STATS.get_ptr_mut(outcome.slot(hook)) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { add(c, bytes) };
    }
}

/// A flood copy of a frame of `vni` (`bytes`: the VM's frame) delivered to a VM port.
#[inline(always)]
pub fn copied_to_port(vni: u32, ifindex: u32, bytes: u32) {
    bump(
        &NVE_VN_STATS,
        &VN_ZERO,
        vni,
        VnCounter::ToVms as usize,
        None,
        bytes,
    );
    delivered(ifindex, bytes);
}

/// A frame delivered to VM port `ifindex` (its VN is counted by `account`, or by
/// `copied_to_port` for flood copies).
#[inline(always)]
pub fn delivered(ifindex: u32, bytes: u32) {
    let slot = PortCounter::ToVm as usize;
    bump(&NVE_PORT_STATS, &PORT_ZERO, ifindex, slot, None, bytes);
}

/// A flood copy of a frame of `vni` sent to a remote VTEP (`bytes`: the VM's frame).
#[inline(always)]
pub fn copied_to_underlay(vni: u32, bytes: u32) {
    let slot = VnCounter::ToUnderlay as usize;
    bump(&NVE_VN_STATS, &VN_ZERO, vni, slot, None, bytes);
}

/// What an entry point returns for the outcome of its `try_*` body, counted once: the
/// body's action when it forwarded, `drop` when it dropped. `len` is the frame's length
/// as it arrived; `scope` what the body learned of it. Drops are logged at debug level
/// (aya-log), which the daemon turns off at load unless asked: then the verifier removes
/// the logging code and it costs nothing.
#[inline(always)]
pub fn account<A>(
    ctx: &impl EbpfContext,
    hook: Hook,
    len: u32,
    scope: Scope,
    result: Result<(A, Forward), DropReason>,
    drop: A,
) -> A {
    match result {
        Ok((action, forward)) => {
            count(hook, Outcome::Forward(forward), len);
            if let Some(vni) = scope.vni()
                && !forward.hands_over()
            {
                // Both ends of a unicast frame with one lookup; flood copies are counted
                // where they are made.
                let from = match hook {
                    Hook::VmEgress => VnCounter::FromVms,
                    Hook::UnderlayRx | Hook::TunnelRx => VnCounter::FromUnderlay,
                };
                let to = match forward {
                    Forward::Encapsulated | Forward::ForwardedToVtep => {
                        Some(VnCounter::ToUnderlay as usize)
                    }
                    Forward::Flooded => None,
                    _ => Some(VnCounter::ToVms as usize),
                };
                bump(&NVE_VN_STATS, &VN_ZERO, vni, from as usize, to, len);
            }
            if let Some(port) = scope.port() {
                let slot = PortCounter::FromVm as usize;
                bump(&NVE_PORT_STATS, &PORT_ZERO, port, slot, None, len);
            }
            action
        }
        Err(reason) => {
            count(hook, Outcome::Drop(reason), len);
            debug!(
                ctx,
                "{} drop {}: vni {} port {} len {}",
                hook.name(),
                reason.name(),
                scope.vni,
                scope.port,
                len
            );
            if let Some(vni) = scope.vni() {
                let slot = VnCounter::Dropped as usize;
                bump(&NVE_VN_STATS, &VN_ZERO, vni, slot, None, len);
            }
            if let Some(port) = scope.port() {
                let slot = PortCounter::Dropped as usize;
                bump(&NVE_PORT_STATS, &PORT_ZERO, port, slot, None, len);
            }
            drop
        }
    }
}

static VN_ZERO: VnTraffic = [Counter {
    packets: 0,
    bytes: 0,
}; VnCounter::ALL.len()];
static PORT_ZERO: PortTraffic = [Counter {
    packets: 0,
    bytes: 0,
}; PortCounter::ALL.len()];

/// Adds a packet of `bytes` to slot `slot` (and `also`) of `key`'s counters, creating
/// them at zero.
#[inline(always)]
fn bump<const N: usize>(
    map: &PerCpuHashMap<u32, [Counter; N]>,
    zero: &'static [Counter; N],
    key: u32,
    slot: usize,
    also: Option<usize>,
    bytes: u32,
) {
    let counters = match map.get_ptr_mut(key) {
        Some(c) => c,
        None => {
            // From read-only data, not the stack: every delivery site inlines this.
            let _ = map.insert(key, zero, BPF_NOEXIST as u64);
            match map.get_ptr_mut(key) {
                Some(c) => c,
                None => return,
            }
        }
    };
    // SAFETY: this CPU's copy of the entry; no concurrent writer on this CPU.
    let counters = unsafe { &mut *counters };
    for slot in [Some(slot), also].into_iter().flatten() {
        if let Some(c) = counters.get_mut(slot) {
            // SAFETY: as above.
            unsafe { add(c, bytes) };
        }
    }
}

/// # Safety
/// `c` points to a counter only this CPU writes.
#[inline(always)]
unsafe fn add(c: *mut Counter, bytes: u32) {
    unsafe {
        (*c).packets += 1;
        (*c).bytes += bytes as u64;
    }
}
