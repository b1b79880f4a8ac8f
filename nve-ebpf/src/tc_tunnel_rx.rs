//! TC ingress on the kernel's collect_md vxlan device: the kernel has decapsulated the frame
//! (GRO'd, GSO state clean) and left the VNI in the tunnel metadata; deliver it by the same
//! VN maps as the other decapsulation paths.
use aya_ebpf::{
    bindings::{TC_ACT_SHOT, bpf_tunnel_key},
    helpers::bpf_skb_get_tunnel_key,
    macros::classifier,
    programs::TcContext,
};
use network_types::eth::EthHdr;
use nve_common::{
    maps::LocalPort,
    metrics::{DropReason, Forward, Hook},
};

use crate::{
    decap::{self, Target},
    deliver,
    metrics::{self, Scope},
    parse::{Frame, require},
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
    // SAFETY: plain-old-data; zero is its neutral value.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: helper call with a correctly sized key.
    let rc = unsafe {
        bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, size_of::<bpf_tunnel_key>() as u32, 0)
    };
    if rc != 0 {
        return Err(DropReason::VxlanInvalidHdr);
    }
    let eth = require::<EthHdr>(ctx, 0, DropReason::InnerTruncated)?;
    let vni = key.tunnel_id;
    // SAFETY: the kernel filled the IPv4 member (no BPF_F_TUNINFO_IPV6 asked); it holds
    // the outer source address in host order.
    let src = unsafe { key.__bindgen_anon_1.remote_ipv4 }.to_be_bytes();
    match decap::target(vni, eth.dst_addr, src, scope)? {
        Target::Port(port) => Ok((deliver::to_port(ctx, vni, port)?, Forward::Decapsulated)),
        Target::Flood(vn) => {
            if deliver::flood_ports(ctx, vni, vn, LocalPort::default())? == 0 {
                return Err(DropReason::FloodListEmpty);
            }
            Ok((TC_ACT_SHOT, Forward::Flooded))
        }
    }
}
