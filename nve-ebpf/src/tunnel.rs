//! VXLAN through the kernel's collect_md vxlan device (`TUNNEL_DEV`): the program sets the
//! tunnel key (remote VTEP, VNI, hop limit, source) and redirects the frame to the device,
//! which encapsulates. Used over an IPv6 underlay, where the device computes the outer UDP
//! checksum (offloaded for GSO frames; encapsulating IPv6 in the program would leave that
//! checksum to software over every byte, or zero, which receivers refuse over IPv6), and
//! for frames the device decapsulated that must go on to another VTEP (a forwarding
//! pointer), over either family.
use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_TUNINFO_IPV6, bpf_tunnel_key},
    helpers::bpf_skb_set_tunnel_key,
    programs::TcContext,
};
use nve_common::{
    maps::{Vtep, vtep_ipv4},
    metrics::DropReason,
};

use crate::{deliver, maps};

/// Sends the (inner) frame of `vni` to `remote` over IPv6. With `copy` a clone goes and
/// the frame stays with the caller (returns 0); otherwise it is redirected (returns the TC
/// action).
#[inline(always)]
pub fn send_v6(ctx: &TcContext, vni: u32, remote: &Vtep, copy: bool) -> Result<i32, DropReason> {
    out_of_line(ctx, vni, remote, copy, 0)
}

/// Sends a frame the device decapsulated (`ttl`: its outer TTL) on to `remote`, either
/// family, with the TTL decremented: two NVEs pointing at each other cannot loop a frame
/// forever.
#[inline(always)]
pub fn forward(ctx: &TcContext, vni: u32, remote: &Vtep, ttl: u8) -> Result<i32, DropReason> {
    if ttl <= 1 {
        return Err(DropReason::TtlExceeded);
    }
    out_of_line(ctx, vni, remote, false, ttl - 1)
}

#[inline(always)]
fn out_of_line(
    ctx: &TcContext,
    vni: u32,
    remote: &Vtep,
    copy: bool,
    ttl: u8,
) -> Result<i32, DropReason> {
    let rc = send_out_of_line(ctx.skb.skb, vni, remote, copy, ttl);
    if rc < 0 {
        return Err(DropReason::from_u32((-rc) as u32).unwrap_or(DropReason::RedirectFailed));
    }
    Ok(rc as i32)
}

/// `send` as a subprogram of its own, so its locals stay off the stacks of tc_vm_egress
/// and of the head-end replication callback (a subprogram takes at most five arguments and
/// returns a register: the action, or a negated drop reason).
#[inline(never)]
fn send_out_of_line(skb: *mut __sk_buff, vni: u32, remote: &Vtep, copy: bool, ttl: u8) -> i64 {
    match send(&TcContext::new(skb), vni, remote, copy, ttl) {
        Ok(action) => action as i64,
        Err(reason) => -(reason as i64),
    }
}

/// `ttl` 0: the configured one.
#[inline(always)]
fn send(ctx: &TcContext, vni: u32, remote: &Vtep, copy: bool, ttl: u8) -> Result<i32, DropReason> {
    let cfg = maps::config().ok_or(DropReason::NoConfig)?;
    if cfg.tunnel_ifindex == 0 {
        return Err(DropReason::NoConfig);
    }
    // In the per-CPU scratch buffer: on the stack it would not fit next to the callers'
    // own locals in head-end replication.
    let buf = maps::scratch().ok_or(DropReason::ScratchUnavailable)?;
    const _: () = assert!(size_of::<bpf_tunnel_key>() <= maps::SCRATCH_LEN);
    buf[..size_of::<bpf_tunnel_key>()].fill(0);
    // SAFETY: the buffer is large enough and 8-byte aligned (a map value); zero bytes are a
    // valid key.
    let key = unsafe { &mut *(buf.as_mut_ptr() as *mut bpf_tunnel_key) };
    key.tunnel_id = vni;
    key.tunnel_ttl = if ttl == 0 { cfg.ttl } else { ttl };
    let flags = match vtep_ipv4(remote) {
        Some(v4) => {
            // The IPv4 members hold addresses in host order.
            key.__bindgen_anon_1.remote_ipv4 = u32::from_be_bytes(v4);
            key.__bindgen_anon_3.local_ipv4 = u32::from_be_bytes(cfg.vtep_ipv4);
            0
        }
        None => {
            key.__bindgen_anon_1.remote_ipv6 = words(remote);
            key.__bindgen_anon_3.local_ipv6 = words(&cfg.vtep_ipv6);
            BPF_F_TUNINFO_IPV6 as u64
        }
    };
    // SAFETY: helper call with a correctly sized key.
    let rc = unsafe {
        bpf_skb_set_tunnel_key(ctx.skb.skb, key, size_of::<bpf_tunnel_key>() as u32, flags)
    };
    if rc != 0 {
        return Err(DropReason::TunnelKeyFailed);
    }
    deliver::send_to(ctx, cfg.tunnel_ifindex, copy)
}

/// An IPv6 address as the tunnel key holds it: four words in network order.
#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}
