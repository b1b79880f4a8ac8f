//! VXLAN encapsulation on the TC path: outer Ethernet / IPv4 / UDP / VXLAN written by the
//! program; the next hop from the kernel's route and neighbour tables, as the daemon
//! mirrors them in `NVE_NEXTHOPS`.
use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_REDIRECT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::{bpf_redirect_neigh, bpf_skb_change_head},
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr, vxlan::VxlanHdr};
use nve_common::{
    maps::{DataplaneConfig, NextHop},
    metrics::DropReason,
    wire::{
        ETH_LEN, ETH_P_IPV4, ETH_P_IPV6, IP_DF, IPPROTO_UDP, UDP_SRC_PORT_MIN, VXLAN_FLAG_I,
        VXLAN_IPV4_OVERHEAD, VXLAN_PORT,
    },
};

use crate::{
    csum, deliver,
    maps::{self, SCRATCH_LEN},
    parse::{SkbMeta, header},
};

const IPV4_OFFSET: usize = ETH_LEN;

const _: () = assert!(size_of::<EthHdr>() + Ipv4Hdr::LEN + UdpHdr::LEN + VxlanHdr::LEN == 50);
const OUTER: usize = VXLAN_IPV4_OVERHEAD as usize;

/// Encapsulates the frame for `vni`, addressed to `remote`. On return the outer Ethernet
/// addresses are not yet set: [`send`] fills them in.
///
/// IP frames grow with `bpf_skb_adjust_room` and the encap flags, which keeps a GSO skb one
/// skb (gso_type gains UDP_TUNNEL; FIXED_GSO keeps gso_size). That helper refuses non-IP
/// skbs (ARP), which are never GSO and grow at the head instead.
#[inline(always)]
pub fn encapsulate(
    ctx: &TcContext,
    cfg: &DataplaneConfig,
    vni: u32,
    remote: [u8; 4],
) -> Result<(), DropReason> {
    let inner_len = ctx.len();
    let hash = flow_hash(ctx);
    let src_port = UDP_SRC_PORT_MIN | ((hash ^ (hash >> 16)) as u16 & 0x3fff);
    // Built in the per-CPU scratch buffer: on the stack it would not fit next to the
    // callers' own locals in head-end replication.
    let outer = maps::scratch().ok_or(DropReason::ScratchUnavailable)?;
    outer_ipv4(outer, cfg, vni, remote, src_port, inner_len);
    let proto = ctx.ether_type();
    if proto == ETH_P_IPV4 || proto == ETH_P_IPV6 {
        let inner_eth: [u8; ETH_LEN] = ctx.load(0).map_err(|_| DropReason::PktTooSmall)?;
        let flags = BPF_F_ADJ_ROOM_FIXED_GSO
            | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
            | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
            | BPF_F_ADJ_ROOM_ENCAP_L2_ETH;
        let flags = flags as u64 | encap_l2_len(ETH_LEN as u64);
        ctx.adjust_room(VXLAN_IPV4_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, flags)
            .map_err(|_| DropReason::HeaderAdjustFailed)?;
        ctx.store(VXLAN_IPV4_OVERHEAD as usize, &inner_eth, 0)
            .map_err(|_| DropReason::StoreFailed)?;
    } else {
        // SAFETY: helper call on our own skb.
        if unsafe { bpf_skb_change_head(ctx.skb.skb, VXLAN_IPV4_OVERHEAD, 0) } != 0 {
            return Err(DropReason::HeaderAdjustFailed);
        }
    }
    ctx.store(0, maps::window::<OUTER>(outer, 0), 0)
        .map_err(|_| DropReason::StoreFailed)
}

/// The inner flow's hash, for the outer UDP source port (RFC 7348 entropy): the skb's
/// when the stack has one (a local socket's, or from an earlier dissection), else a mix of
/// the IPv4 addresses and ports. The kernel's bpf_get_hash_recalc would run the flow
/// dissector here: 190 ns of the 770 ns encapsulation costs in BPF_PROG_TEST_RUN.
#[inline(always)]
fn flow_hash(ctx: &TcContext) -> u32 {
    let hash = ctx.skb_hash();
    if hash != 0 {
        return hash;
    }
    // Ethertype, then (IPv4 without options) addresses and the first 4 bytes after them.
    let (Some(ether_type), Some(tuple)) = (header::<[u8; 2]>(ctx, 12), header::<[u32; 3]>(ctx, 26))
    else {
        return 0;
    };
    if u16::from_be_bytes(*ether_type) != ETH_P_IPV4 {
        return 0;
    }
    // murmur3's finaliser over the words.
    let mut h = tuple[0] ^ tuple[1].rotate_left(13) ^ tuple[2].rotate_left(26);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Sends a VXLAN frame that arrived for a MAC which moved away on to `remote` (the
/// forwarding pointer a migration leaves): the outer IPv4 header is re-addressed from this
/// VTEP to `remote` with its TTL decremented (two NVEs pointing at each other cannot loop
/// a frame forever), the UDP checksum cleared (IPv4 allows it; the addresses it covered
/// changed), and the frame leaves by the VTEP's next hop. Outer IPv4 options: dropped.
#[inline(always)]
pub fn forward(ctx: &TcContext, cfg: &DataplaneConfig, remote: [u8; 4]) -> Result<i32, DropReason> {
    rewrite_outer_ipv4(ctx, cfg, remote, |ip| {
        if ip[0] != 0x45 {
            return Err(DropReason::ForwardIpOptions);
        }
        if ip[8] <= 1 {
            return Err(DropReason::TtlExceeded);
        }
        ip[8] -= 1;
        Ok(())
    })?;
    ctx.store(IPV4_OFFSET + Ipv4Hdr::LEN + 6, &[0u8; 2], 0)
        .map_err(|_| DropReason::StoreFailed)?;
    send(ctx, cfg, remote, false)
}

/// Re-addresses an encapsulated frame to another VTEP (head-end replication).
#[inline(always)]
pub fn readdress(
    ctx: &TcContext,
    cfg: &DataplaneConfig,
    remote: [u8; 4],
) -> Result<(), DropReason> {
    rewrite_outer_ipv4(ctx, cfg, remote, |_| Ok(()))
}

/// Rewrites the frame's outer IPv4 header (the fixed 20 bytes) from this VTEP to `remote`,
/// after `edit` has checked or changed it, with its checksum recomputed.
#[inline(always)]
fn rewrite_outer_ipv4(
    ctx: &TcContext,
    cfg: &DataplaneConfig,
    remote: [u8; 4],
    edit: impl FnOnce(&mut [u8; Ipv4Hdr::LEN]) -> Result<(), DropReason>,
) -> Result<(), DropReason> {
    let mut ip: [u8; Ipv4Hdr::LEN] = ctx.load(IPV4_OFFSET).map_err(|_| DropReason::PktTooSmall)?;
    edit(&mut ip)?;
    ip[12..16].copy_from_slice(&cfg.vtep_ipv4);
    ip[16..20].copy_from_slice(&remote);
    ip[10..12].fill(0);
    let check = csum::finish(csum::add(0, &ip));
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    ctx.store(IPV4_OFFSET, &ip, 0)
        .map_err(|_| DropReason::StoreFailed)
}

/// Sends an encapsulated frame to `remote` over the underlay, by the next hop the daemon
/// mirrors from the kernel's route and neighbour tables. With `copy` the frame is cloned and
/// stays with the caller (returns 0); otherwise it is redirected (returns the TC action).
/// A lone IPv4 frame to a VTEP whose next hop is not resolved yet goes through
/// `bpf_redirect_neigh`, which routes it and resolves the neighbour.
#[inline(always)]
pub fn send(
    ctx: &TcContext,
    cfg: &DataplaneConfig,
    remote: [u8; 4],
    copy: bool,
) -> Result<i32, DropReason> {
    send_via(ctx, cfg, maps::next_hop(remote), copy)
}

/// As [`send`], by `next_hop` (the caller's lookup of the VTEP's; `None`: not resolved).
#[inline(always)]
pub fn send_via(
    ctx: &TcContext,
    cfg: &DataplaneConfig,
    next_hop: Option<&NextHop>,
    copy: bool,
) -> Result<i32, DropReason> {
    let Some(nh) = next_hop else {
        if copy || ctx.ether_type() != ETH_P_IPV4 {
            return Err(DropReason::UnderlayNoNeigh);
        }
        // SAFETY: helper call; NULL params: the kernel looks the route up itself.
        let action =
            unsafe { bpf_redirect_neigh(cfg.underlay_ifindex, core::ptr::null_mut(), 0, 0) } as i32;
        if action != TC_ACT_REDIRECT {
            return Err(DropReason::UnderlayNoRoute);
        }
        return Ok(action);
    };
    if ctx.gso_size() == 0 && ctx.len() > nh.mtu + ETH_LEN as u32 {
        return Err(DropReason::UnderlayMtuExceeded);
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&nh.dmac);
    macs[6..].copy_from_slice(&nh.smac);
    ctx.store(0, &macs, 0)
        .map_err(|_| DropReason::StoreFailed)?;
    deliver::send_to(ctx, nh.ifindex, copy)
}

/// `BPF_F_ADJ_ROOM_ENCAP_L2(len)`: a u64 flag the bindings do not provide.
#[inline(always)]
const fn encap_l2_len(len: u64) -> u64 {
    (len & 0xff) << 56
}

/// Writes outer Ethernet (addresses left to `send`), IPv4, UDP and VXLAN into the first
/// `OUTER` bytes of `buf`.
#[inline(always)]
fn outer_ipv4(
    buf: &mut [u8; SCRATCH_LEN],
    cfg: &DataplaneConfig,
    vni: u32,
    remote: [u8; 4],
    src_port: u16,
    inner_len: u32,
) {
    const IP: usize = ETH_LEN;
    const UDP: usize = IP + Ipv4Hdr::LEN;
    const VXLAN: usize = UDP + UdpHdr::LEN;
    let udp_len = (inner_len + (UdpHdr::LEN + VxlanHdr::LEN) as u32) as u16;
    let ip_len = udp_len + Ipv4Hdr::LEN as u16;
    buf[..OUTER].fill(0);
    buf[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
    buf[IP] = 0x45;
    buf[IP + 2..IP + 4].copy_from_slice(&ip_len.to_be_bytes());
    buf[IP + 6..IP + 8].copy_from_slice(&IP_DF.to_be_bytes());
    buf[IP + 8] = cfg.ttl;
    buf[IP + 9] = IPPROTO_UDP;
    buf[IP + 12..IP + 16].copy_from_slice(&cfg.vtep_ipv4);
    buf[IP + 16..IP + 20].copy_from_slice(&remote);
    let check = csum::finish(csum::add(0, maps::window::<20>(buf, IP)));
    buf[IP + 10..IP + 12].copy_from_slice(&check.to_be_bytes());
    buf[UDP..UDP + 2].copy_from_slice(&src_port.to_be_bytes());
    buf[UDP + 2..UDP + 4].copy_from_slice(&VXLAN_PORT.to_be_bytes());
    buf[UDP + 4..UDP + 6].copy_from_slice(&udp_len.to_be_bytes());
    // UDP checksum 0 on IPv4 (RFC 7348); segmentation copies it into every segment.
    buf[VXLAN] = VXLAN_FLAG_I;
    buf[VXLAN + 4] = (vni >> 16) as u8;
    buf[VXLAN + 5] = (vni >> 8) as u8;
    buf[VXLAN + 6] = vni as u8;
}
