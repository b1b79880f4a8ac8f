//! Delivery of a (decapsulated or locally switched) frame to VM ports, on the TC path.
use aya_ebpf::{
    bindings::TC_ACT_REDIRECT,
    helpers::{bpf_redirect, bpf_skb_vlan_pop, bpf_skb_vlan_push},
    programs::TcContext,
};
use nve_common::{
    maps::{FLOOD_MAX_PORTS, LocalPort, VnInfo},
    metrics::DropReason,
};

use crate::parse::ETH_P_8021Q;

/// Redirects the frame to `port`, tagged with the port's VID if it has one. Returns the TC
/// action.
#[inline(always)]
pub fn to_port(ctx: &TcContext, port: LocalPort) -> Result<i32, DropReason> {
    if port.vid != 0 {
        vlan_push(ctx, port.vid)?;
    }
    // SAFETY: helper call.
    let action = unsafe { bpf_redirect(port.ifindex, 0) } as i32;
    if action != TC_ACT_REDIRECT {
        return Err(DropReason::RedirectFailed);
    }
    Ok(action)
}

/// Sends a copy of the frame to every port of `vn` except `except`, leaving the frame as it
/// was. Returns the number of copies.
#[inline(always)]
pub fn flood_ports(ctx: &TcContext, vn: &VnInfo, except: LocalPort) -> Result<u32, DropReason> {
    let mut copies = 0;
    for i in 0..FLOOD_MAX_PORTS {
        if i as u32 >= vn.port_count {
            break;
        }
        let port = vn.ports[i];
        if port == except {
            continue;
        }
        if port.vid != 0 {
            vlan_push(ctx, port.vid)?;
        }
        let cloned = ctx.clone_redirect(port.ifindex, 0);
        if port.vid != 0 {
            vlan_pop(ctx)?;
        }
        cloned.map_err(|_| DropReason::RedirectFailed)?;
        copies += 1;
    }
    Ok(copies)
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
