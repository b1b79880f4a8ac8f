//! XDP on the underlay interface: decapsulates known unicast to untagged ports in the
//! driver; leaves broadcast, tagged and tap ports to `tc_underlay_rx` (XDP cannot clone,
//! push a VLAN tag or keep GSO), and everything that is not nve's to the host.
use aya_ebpf::{bindings::xdp_action, helpers::bpf_redirect, macros::xdp, programs::XdpContext};
use nve_common::metrics::{DropReason, Forward, Hook};

use crate::{
    decap::{self, Target, Underlay},
    maps,
    metrics::{self, Scope},
    parse::Frame,
};

#[xdp]
pub fn xdp_underlay_rx(ctx: XdpContext) -> u32 {
    let len = ctx.frame_len();
    let mut scope = Scope::default();
    let result = try_xdp_underlay_rx(&ctx, &mut scope);
    metrics::account(
        &ctx,
        Hook::UnderlayRx,
        len,
        scope,
        result,
        xdp_action::XDP_DROP,
    )
}

#[inline(always)]
fn try_xdp_underlay_rx(ctx: &XdpContext, scope: &mut Scope) -> Result<(u32, Forward), DropReason> {
    let Some(cfg) = maps::config() else {
        return Ok((xdp_action::XDP_PASS, Forward::PassedToHost));
    };
    let d = match decap::classify(ctx, cfg, scope)? {
        Underlay::Host(forward) => return Ok((xdp_action::XDP_PASS, forward)),
        Underlay::Vxlan(d) => d,
    };
    match d.target {
        Target::Port(port) if port.at.vid == 0 && !port.at.is_tap() => {
            // SAFETY: helper call on our own context.
            let rc =
                unsafe { aya_ebpf::helpers::bpf_xdp_adjust_head(ctx.ctx, d.inner_offset as i32) };
            if rc != 0 {
                return Err(DropReason::HeaderAdjustFailed);
            }
            // SAFETY: helper call; the result is an XDP action.
            let action = unsafe { bpf_redirect(port.at.ifindex, 0) } as u32;
            if action != xdp_action::XDP_REDIRECT {
                return Err(DropReason::RedirectFailed);
            }
            metrics::delivered(port.counters, ctx.frame_len());
            Ok((action, Forward::Decapsulated))
        }
        _ => Ok((xdp_action::XDP_PASS, Forward::DeferredToTc)),
    }
}
