//! TC ingress on the kernel's collect_md vxlan device: the kernel has decapsulated the frame
//! (GRO'd, GSO state clean) and left the VNI in the tunnel metadata; deliver it by the same
//! VN maps as the other decapsulation paths.
use aya_ebpf::{
    bindings::{BPF_F_TUNINFO_IPV6, TC_ACT_SHOT, bpf_tunnel_key},
    helpers::bpf_skb_get_tunnel_key,
    macros::classifier,
    programs::TcContext,
};
use network_types::eth::EthHdr;
use nve_common::{
    maps::{Vtep, vtep_v4},
    metrics::{DropReason, Forward, Hook},
};

use crate::{
    decap::{self, Target},
    deliver,
    metrics::{self, Scope},
    parse::{Frame, require},
    tunnel,
};

#[classifier]
pub fn tc_tunnel_rx(ctx: TcContext) -> i32 {
    let len = ctx.frame_len();
    let mut scope = Scope::default();
    let result = try_tc_tunnel_rx(&ctx, &mut scope);
    metrics::account(&ctx, Hook::TunnelRx, len, scope, result, TC_ACT_SHOT)
}

#[inline(always)]
fn try_tc_tunnel_rx(ctx: &TcContext, scope: &mut Scope) -> Result<(i32, Forward), DropReason> {
    let Some((vni, src, ttl)) = tunnel_source(ctx) else {
        return Err(DropReason::TunnelKeyMissing);
    };
    let eth = require::<EthHdr>(ctx, 0, DropReason::InnerTruncated)?;
    match decap::target(vni, eth.dst_addr, src, scope)? {
        Target::Port(port) => Ok((deliver::to_port(ctx, port)?, Forward::Decapsulated)),
        // A MAC that migrated away (a forwarding pointer): on to its new VTEP.
        Target::Moved(vtep) => Ok((
            tunnel::forward(ctx, vni, &vtep, ttl)?,
            Forward::ForwardedToVtep,
        )),
        Target::Flood(vn) => deliver::flood_decapsulated(ctx, vn),
    }
}

/// The VNI, the VTEP the kernel decapsulated the frame from (over IPv4 or IPv6) and the
/// outer TTL.
#[inline(always)]
fn tunnel_source(ctx: &TcContext) -> Option<(u32, Vtep, u8)> {
    // SAFETY: plain-old-data; zero is its neutral value.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    let size = size_of::<bpf_tunnel_key>() as u32;
    // SAFETY: helper call with a correctly sized key; it refuses (-EPROTO) the family the
    // tunnel is not.
    if unsafe { bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, size, 0) } == 0 {
        // SAFETY: the IPv4 member, filled; it holds the address in host order.
        let v4 = unsafe { key.__bindgen_anon_1.remote_ipv4 }.to_be_bytes();
        return Some((key.tunnel_id, vtep_v4(v4), key.tunnel_ttl));
    }
    // SAFETY: as above, asking for IPv6.
    let rc =
        unsafe { bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, size, BPF_F_TUNINFO_IPV6 as u64) };
    if rc != 0 {
        return None;
    }
    // SAFETY: the IPv6 member, filled, in network order.
    let words = unsafe { key.__bindgen_anon_1.remote_ipv6 };
    let mut v6 = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        v6[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Some((key.tunnel_id, v6, key.tunnel_ttl))
}
