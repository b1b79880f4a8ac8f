//! Per-CPU counters: every packet a program sees is counted exactly once by outcome, and
//! for the VN and the VM port it turned out to belong to. Per-VN and per-port bytes are
//! the VM's frames' (no outer headers). VN and port counters are found by the slots the
//! daemon writes into the port and VN values the programs read anyway: no lookup of their
//! own.
use aya_ebpf::{EbpfContext, maps::PerCpuArray};
use aya_log_ebpf::debug;
use nve_common::{
    maps::NO_COUNTERS,
    metrics::{Counter, DropReason, Forward, Hook, Outcome, PortCounter, VnCounter},
};

use crate::{
    maps::{NVE_PORT_STATS, NVE_STATS, NVE_VN_STATS},
    monitor,
    parse::Frame,
};

/// The VN and the VM port (ifindex) a packet was found to belong to before its verdict,
/// with their counter slots. Set only once the port or VN is known to the dataplane, so a
/// sender cannot pick the counters. Plain integers with "none" values rather than
/// `Option`s: the payload of a `None` is undefined, and the verifier rejects a program
/// that copies it.
#[derive(Clone, Copy, Default)]
pub struct Scope {
    /// 0 until known (VNI 0 is never served; for the log and the monitor only).
    vni: u32,
    /// 0 until known (no interface has index 0; for the log only).
    port: u32,
    vn_counters: u16,
    port_counters: u16,
}

impl Scope {
    #[inline(always)]
    pub fn set_vn(&mut self, vni: u32, counters: u16) {
        self.vni = vni;
        self.vn_counters = counters;
    }

    #[inline(always)]
    pub fn set_port(&mut self, ifindex: u32, counters: u16) {
        self.port = ifindex;
        self.port_counters = counters;
    }
}

#[inline(always)]
pub fn count(hook: Hook, outcome: Outcome, bytes: u32) {
    if let Some(c) = NVE_STATS.get_ptr_mut(outcome.slot(hook)) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { add(c, bytes) };
    }
}

/// A flood copy of a frame (`bytes`: the VM's frame) of the VN with counters `vn`
/// delivered to the VM port with counters `port`.
#[inline(always)]
pub fn copied_to_port(vn: u16, port: u16, bytes: u32) {
    bump(&NVE_VN_STATS, vn, VnCounter::ToVms as usize, None, bytes);
    delivered(port, bytes);
}

/// A frame delivered to the VM port with counters `port` (its VN is counted by `account`,
/// or by `copied_to_port` for flood copies).
#[inline(always)]
pub fn delivered(port: u16, bytes: u32) {
    bump(
        &NVE_PORT_STATS,
        port,
        PortCounter::ToVm as usize,
        None,
        bytes,
    );
}

/// A flood copy of a frame of the VN with counters `vn` sent to a remote VTEP (`bytes`:
/// the VM's frame).
#[inline(always)]
pub fn copied_to_underlay(vn: u16, bytes: u32) {
    bump(
        &NVE_VN_STATS,
        vn,
        VnCounter::ToUnderlay as usize,
        None,
        bytes,
    );
}

/// What an entry point returns for the outcome of its `try_*` body, counted once: the
/// body's action when it forwarded, `drop` when it dropped. `len` is the frame's length
/// as it arrived; `scope` what the body learned of it. Both are reported to an attached
/// monitor (`monitor::report`). Drops are logged at debug level
/// (aya-log), which the daemon turns off at load unless asked: then the verifier removes
/// the logging code and it costs nothing.
#[inline(always)]
pub fn account<A>(
    ctx: &(impl EbpfContext + Frame),
    hook: Hook,
    len: u32,
    scope: Scope,
    result: Result<(A, Forward), DropReason>,
    drop: A,
) -> A {
    match result {
        Ok((action, forward)) => {
            count(hook, Outcome::Forward(forward), len);
            monitor::report(ctx, hook, Outcome::Forward(forward), len, scope.vni);
            if !forward.hands_over() {
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
                bump(&NVE_VN_STATS, scope.vn_counters, from as usize, to, len);
            }
            let slot = PortCounter::FromVm as usize;
            bump(&NVE_PORT_STATS, scope.port_counters, slot, None, len);
            action
        }
        Err(reason) => {
            count(hook, Outcome::Drop(reason), len);
            monitor::report(ctx, hook, Outcome::Drop(reason), len, scope.vni);
            debug!(
                ctx,
                "{} drop {}: vni {} port {} len {}",
                hook.name(),
                reason.name(),
                scope.vni,
                scope.port,
                len
            );
            let slot = VnCounter::Dropped as usize;
            bump(&NVE_VN_STATS, scope.vn_counters, slot, None, len);
            let slot = PortCounter::Dropped as usize;
            bump(&NVE_PORT_STATS, scope.port_counters, slot, None, len);
            drop
        }
    }
}

/// Adds a packet of `bytes` to slot `slot` (and `also`) of the counters at `counters`
/// (`NO_COUNTERS`: none).
#[inline(always)]
fn bump<const N: usize>(
    map: &PerCpuArray<[Counter; N]>,
    counters: u16,
    slot: usize,
    also: Option<usize>,
    bytes: u32,
) {
    if counters == NO_COUNTERS {
        return;
    }
    let Some(counters) = map.get_ptr_mut(u32::from(counters)) else {
        return;
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
