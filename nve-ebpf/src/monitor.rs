//! `nve monitor`: while a monitor is attached (`DataplaneConfig::monitor` set by the
//! daemon), each program reports its verdict on a packet, with the frame's first bytes, to
//! the `NVE_MONITOR` ring buffer; with `monitor_sample` N, one packet in N per CPU. With no
//! monitor attached it costs the test of one field of the config entry (an array lookup
//! the verifier inlines, no helper call). A full ring buffer loses the report, counted in
//! `NVE_MONITOR_STATE`, never the packet.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use nve_common::{
    maps::{MONITOR_ALL, MONITOR_HEAD, MONITOR_LOST, MONITOR_SEQ, MonitorEvent},
    metrics::{Hook, Outcome},
};

use crate::{
    maps::{NVE_CONFIG, NVE_MONITOR, NVE_MONITOR_STATE},
    parse::Frame,
};

/// Reports `outcome` of a packet of `len` bytes (as it arrived) of VN `vni` (0: not known)
/// if a monitor is attached and wants it.
#[inline(always)]
pub fn report(ctx: &impl Frame, hook: Hook, outcome: Outcome, len: u32, vni: u32) {
    let Some(cfg) = NVE_CONFIG.get(0) else {
        return;
    };
    let mode = cfg.monitor;
    if mode == 0 || (mode != MONITOR_ALL && !outcome.is_drop()) {
        return;
    }
    if !sampled(cfg.monitor_sample) {
        return;
    }
    let (dropped, code) = match outcome {
        Outcome::Forward(f) => (0, f as u16),
        Outcome::Drop(d) => (1, d as u16),
    };
    let Some(mut entry) = NVE_MONITOR.reserve::<MonitorEvent>(0) else {
        if let Some(lost) = NVE_MONITOR_STATE.get_ptr_mut(MONITOR_LOST) {
            // SAFETY: this CPU's slot; no concurrent writer on this CPU.
            unsafe { *lost += 1 };
        }
        return;
    };
    let event = entry.as_mut_ptr();
    let captured = ctx.frame_len().min(MONITOR_HEAD as u32);
    // SAFETY: `event` is the reserved record, MonitorEvent-sized; fields are written in
    // place (no copy of the event on the stack) before it is submitted.
    unsafe {
        let head = core::ptr::addr_of_mut!((*event).head) as *mut u8;
        let captured = if captured > 0 && ctx.load_into(head, captured) {
            captured as u16
        } else {
            0
        };
        (*event).time_ns = bpf_ktime_get_ns();
        (*event).len = len;
        (*event).ifindex = ctx.ifindex_seen();
        (*event).vni = vni;
        (*event).hook = hook as u8;
        (*event).dropped = dropped;
        (*event).code = code;
        (*event).captured = captured;
        (*event)._pad = [0; 6];
    }
    entry.submit(0);
}

/// Whether this packet is one to report: every one, or one in `every` per CPU.
#[inline(always)]
fn sampled(every: u32) -> bool {
    if every <= 1 {
        return true;
    }
    let Some(seq) = NVE_MONITOR_STATE.get_ptr_mut(MONITOR_SEQ) else {
        return false;
    };
    // SAFETY: this CPU's slot; no concurrent writer on this CPU.
    unsafe {
        *seq += 1;
        *seq % u64::from(every) == 0
    }
}
