//! Per-CPU counters: every packet a program sees is counted exactly once by outcome, and
//! once more for the VN and the VM port it turned out to belong to.
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

/// A copy delivered to a VM port of `vni`.
#[inline(always)]
pub fn delivered(vni: u32, ifindex: u32, bytes: u32) {
    bump(
        &NVE_VN_STATS,
        &VN_ZERO,
        vni,
        VnCounter::ToVms as usize,
        bytes,
    );
    bump(
        &NVE_PORT_STATS,
        &PORT_ZERO,
        ifindex,
        PortCounter::ToVm as usize,
        bytes,
    );
}

/// An encapsulated copy of a frame of `vni` sent to a remote VTEP.
#[inline(always)]
pub fn sent(vni: u32, bytes: u32) {
    bump(
        &NVE_VN_STATS,
        &VN_ZERO,
        vni,
        VnCounter::ToUnderlay as usize,
        bytes,
    );
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
                let slot = match hook {
                    Hook::VmEgress => VnCounter::FromVms,
                    Hook::UnderlayRx | Hook::TunnelRx => VnCounter::FromUnderlay,
                };
                bump(&NVE_VN_STATS, &VN_ZERO, vni, slot as usize, len);
            }
            if let Some(port) = scope.port() {
                bump(
                    &NVE_PORT_STATS,
                    &PORT_ZERO,
                    port,
                    PortCounter::FromVm as usize,
                    len,
                );
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
                bump(
                    &NVE_VN_STATS,
                    &VN_ZERO,
                    vni,
                    VnCounter::Dropped as usize,
                    len,
                );
            }
            if let Some(port) = scope.port() {
                bump(
                    &NVE_PORT_STATS,
                    &PORT_ZERO,
                    port,
                    PortCounter::Dropped as usize,
                    len,
                );
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

/// Adds a packet of `bytes` to slot `slot` of `key`'s counters, creating them at zero.
#[inline(always)]
fn bump<const N: usize>(
    map: &PerCpuHashMap<u32, [Counter; N]>,
    zero: &'static [Counter; N],
    key: u32,
    slot: usize,
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
    if let Some(c) = unsafe { (*counters).get_mut(slot) } {
        unsafe { add(c, bytes) };
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
