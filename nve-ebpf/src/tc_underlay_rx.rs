//! TC ingress on the underlay interface: decapsulates VXLAN for the VNs this NVE serves and
//! delivers it to local ports; keeps GSO (FIXED_GSO), so large TCP segments stay large.
//! Unicast for a tap port goes up to the kernel's collect_md vxlan device instead
//! (`tc_tunnel_rx`), which hands the tap clean GSO frames.
use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_OK, TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    macros::classifier,
    programs::TcContext,
};
use nve_common::{
    maps::vtep_ipv4,
    metrics::{DropReason, Forward, Hook},
    wire::ETH_LEN,
};

use crate::{
    decap::{self, Target, Underlay},
    deliver, encap, maps,
    metrics::{self, Scope},
    parse::{Frame, header},
};

#[classifier]
pub fn tc_underlay_rx(ctx: TcContext) -> i32 {
    let len = ctx.frame_len();
    let mut scope = Scope::default();
    let result = try_tc_underlay_rx(&ctx, &mut scope);
    metrics::account(&ctx, Hook::UnderlayRx, len, scope, result, TC_ACT_SHOT)
}

#[inline(always)]
fn try_tc_underlay_rx(ctx: &TcContext, scope: &mut Scope) -> Result<(i32, Forward), DropReason> {
    let Some(cfg) = maps::config() else {
        return Ok((TC_ACT_OK, Forward::PassedToHost));
    };
    let d = match decap::classify(ctx, cfg, scope)? {
        Underlay::Host(forward) => return Ok((TC_ACT_OK, forward)),
        Underlay::Vxlan(d) => d,
    };
    match d.target {
        Target::Port(port) if port.at.is_tap() => Ok((TC_ACT_OK, Forward::ToKernelVxlan)),
        Target::Moved(vtep) => {
            let v4 = vtep_ipv4(&vtep).ok_or(DropReason::VtepNotIpv4)?;
            Ok((encap::forward(ctx, cfg, v4)?, Forward::ForwardedToVtep))
        }
        Target::Port(port) => {
            strip_outer(ctx, d.inner_offset)?;
            Ok((deliver::to_port(ctx, port)?, Forward::Decapsulated))
        }
        Target::Flood(vn) => {
            strip_outer(ctx, d.inner_offset)?;
            deliver::flood_decapsulated(ctx, vn)
        }
    }
}

/// Removes the outer headers, the first `inner_offset` bytes, keeping the skb's GSO state.
#[inline(always)]
fn strip_outer(ctx: &TcContext, inner_offset: usize) -> Result<(), DropReason> {
    // Copied out by a direct read, not the load helper: classify saw it in the frame.
    let inner = *header::<[u8; ETH_LEN]>(ctx, inner_offset).ok_or(DropReason::InnerTruncated)?;
    // Removes outer IPv4 + UDP + VXLAN + inner Ethernet right after the outer Ethernet
    // header, then the inner Ethernet header takes the outer one's place.
    ctx.adjust_room(
        -(inner_offset as i32),
        BPF_ADJ_ROOM_MAC,
        BPF_F_ADJ_ROOM_FIXED_GSO as u64,
    )
    .map_err(|_| DropReason::HeaderAdjustFailed)?;
    ctx.store(0, &inner, 0).map_err(|_| DropReason::StoreFailed)
}
