//! Delivery of a (decapsulated or locally switched) frame to VM ports, on the TC path.
use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_REDIRECT, TC_ACT_SHOT},
    cty::c_void,
    helpers::{bpf_loop, bpf_redirect, bpf_skb_change_tail, bpf_skb_vlan_pop, bpf_skb_vlan_push},
    programs::TcContext,
};
use nve_common::{
    maps::{FLOOD_MAX_PORTS, LocalPort, VnInfo},
    metrics::{DropReason, Forward},
    wire::ETH_P_8021Q,
};

use crate::{maps, metrics};

/// A VM port (and VID) frames are delivered to, with its counters.
#[derive(Clone, Copy)]
pub struct VmPort {
    pub at: LocalPort,
    /// `PortValue::counters`.
    pub counters: u16,
}

/// `port`, if it receives: a paused vNIC, or a pre-associated one not migrating in,
/// receives nothing, from the underlay or locally (what it sends is `tc_vm_egress`'s check).
#[inline(always)]
pub fn receiving(port: LocalPort) -> Result<VmPort, DropReason> {
    match maps::port(port.ifindex, port.vid) {
        Some(p) if p.receives() => Ok(VmPort {
            at: port,
            counters: p.counters,
        }),
        _ => Err(DropReason::VnicInactive),
    }
}

/// Redirects the frame to `port`, tagged with the port's VID if it has one. Returns the TC
/// action.
#[inline(always)]
pub fn to_port(ctx: &TcContext, port: VmPort) -> Result<i32, DropReason> {
    if port.at.vid != 0 {
        vlan_push(ctx, port.at.vid)?;
    }
    let action = send_to(ctx, port.at.ifindex, false)?;
    metrics::delivered(port.counters, ctx.len());
    Ok(action)
}

/// Sends the frame out of `ifindex`. With `copy` a clone goes and the frame stays with the
/// caller (returns 0); otherwise it is redirected (returns the TC action).
#[inline(always)]
pub fn send_to(ctx: &TcContext, ifindex: u32, copy: bool) -> Result<i32, DropReason> {
    if copy {
        ctx.clone_redirect(ifindex, 0)
            .map_err(|_| DropReason::RedirectFailed)?;
        return Ok(0);
    }
    // SAFETY: helper call.
    let action = unsafe { bpf_redirect(ifindex, 0) } as i32;
    if action != TC_ACT_REDIRECT {
        return Err(DropReason::RedirectFailed);
    }
    Ok(action)
}

/// Replaces the frame with `answer` (a reply the program built: ICMP, a neighbour
/// advertisement) and sends it back to `ingress`, where the frame came from.
#[inline(always)]
pub fn reply<const N: usize>(
    ctx: &TcContext,
    ingress: VmPort,
    answer: &[u8; N],
) -> Result<i32, DropReason> {
    // SAFETY: helper call on our own skb (which it also takes out of GSO).
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, N as u32, 0) } != 0 {
        return Err(DropReason::HeaderAdjustFailed);
    }
    ctx.store(0, answer, 0)
        .map_err(|_| DropReason::StoreFailed)?;
    to_port(ctx, ingress)
}

/// Floods a decapsulated frame to every local port of `vn`; the copies go, the frame
/// itself is dropped (TC_ACT_SHOT).
#[inline(always)]
pub fn flood_decapsulated(ctx: &TcContext, vn: &VnInfo) -> Result<(i32, Forward), DropReason> {
    if flood_ports(ctx, vn, LocalPort::default())? == 0 {
        return Err(DropReason::FloodListEmpty);
    }
    Ok((TC_ACT_SHOT, Forward::Flooded))
}

/// Sends a copy of the frame to every port of `vn` except `except`, leaving the frame as it
/// was. Returns the number of copies. A `bpf_loop` keeps the verifier's work to one pass
/// over the body, however long the list.
#[inline(always)]
pub fn flood_ports(ctx: &TcContext, vn: &VnInfo, except: LocalPort) -> Result<u32, DropReason> {
    let mut state = PortsLoop {
        skb: ctx.skb.skb,
        vn,
        except,
        copies: 0,
        error: None,
    };
    repeat(
        vn.port_count.min(FLOOD_MAX_PORTS as u32),
        port_copy,
        &mut state,
    );
    match state.error {
        Some(reason) => Err(reason),
        None => Ok(state.copies),
    }
}

/// Calls `callback(i, state)` for each `i` in [0, n) until it returns 1, through
/// `bpf_loop`: the verifier checks the body once, however large `n`. `state` is the
/// callback's own type, behind the `*mut c_void` it is given.
#[inline(always)]
pub fn repeat<S>(n: u32, callback: extern "C" fn(u64, *mut c_void) -> i64, state: &mut S) {
    if n == 0 {
        return;
    }
    // SAFETY: the callback and its state live for the call; the state is ours.
    unsafe {
        bpf_loop(
            n,
            callback as *mut c_void,
            state as *mut S as *mut c_void,
            0,
        )
    };
}

struct PortsLoop<'a> {
    skb: *mut __sk_buff,
    vn: &'a VnInfo,
    except: LocalPort,
    copies: u32,
    error: Option<DropReason>,
}

extern "C" fn port_copy(index: u64, state: *mut c_void) -> i64 {
    // SAFETY: `state` is the `PortsLoop` flood_ports passed to bpf_loop.
    let state = unsafe { &mut *(state as *mut PortsLoop) };
    let i = index as usize;
    if i >= FLOOD_MAX_PORTS {
        return 1;
    }
    let port = state.vn.ports[i];
    if port.is(&state.except) {
        return 0;
    }
    let ctx = TcContext::new(state.skb);
    match copy_to_port(&ctx, port) {
        Ok(()) => {
            let counters = state.vn.port_counters[i];
            metrics::copied_to_port(state.vn.counters, counters, ctx.len());
            state.copies += 1;
            0
        }
        Err(reason) => {
            state.error = Some(reason);
            1
        }
    }
}

#[inline(always)]
fn copy_to_port(ctx: &TcContext, port: LocalPort) -> Result<(), DropReason> {
    if port.vid != 0 {
        vlan_push(ctx, port.vid)?;
    }
    let cloned = send_to(ctx, port.ifindex, true);
    if port.vid != 0 {
        vlan_pop(ctx)?;
    }
    cloned.map(|_| ())
}

#[inline(always)]
pub fn vlan_push(ctx: &TcContext, vid: u16) -> Result<(), DropReason> {
    // SAFETY: helper call on our own skb.
    let rc = unsafe { bpf_skb_vlan_push(ctx.skb.skb, (ETH_P_8021Q).to_be(), vid) };
    if rc != 0 {
        return Err(DropReason::HeaderAdjustFailed);
    }
    Ok(())
}

#[inline(always)]
pub fn vlan_pop(ctx: &TcContext) -> Result<(), DropReason> {
    // SAFETY: helper call on our own skb.
    if unsafe { bpf_skb_vlan_pop(ctx.skb.skb) } != 0 {
        return Err(DropReason::HeaderAdjustFailed);
    }
    Ok(())
}
