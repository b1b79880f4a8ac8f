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
    parse::{SkbMeta, be16, header},
};

const IPV4_OFFSET: usize = ETH_LEN;

const _: () = assert!(size_of::<EthHdr>() + Ipv4Hdr::LEN + UdpHdr::LEN + VxlanHdr::LEN == 50);
const OUTER: usize = VXLAN_IPV4_OVERHEAD as usize;

/// Encapsulates the frame for `vni`, addressed to `remote` by `next_hop` (`None`: the
/// outer Ethernet addresses are left zero, for [`send`] to fill in).
///
/// IP frames grow with `bpf_skb_adjust_room` and the encap flags, which keeps a GSO skb one
/// skb (gso_type gains UDP_TUNNEL; FIXED_GSO keeps gso_size). That helper refuses non-IP
/// skbs (ARP), which are never GSO and grow at the head instead. The headers are built in
/// the per-CPU scratch buffer (on the stack they would not fit next to the callers' own
/// locals in head-end replication) with the inner Ethernet header after them, and written
/// with one store.
#[inline(always)]
pub fn encapsulate(
    ctx: &TcContext,
    cfg: &DataplaneConfig,
    vni: u32,
    remote: [u8; 4],
    next_hop: Option<&NextHop>,
) -> Result<(), DropReason> {
    let inner_len = ctx.len();
    let hash = flow_hash(ctx);
    let src_port = UDP_SRC_PORT_MIN | ((hash ^ (hash >> 16)) as u16 & 0x3fff);
    let buf = maps::scratch().ok_or(DropReason::ScratchUnavailable)?;
    outer_ipv4(buf, cfg, vni, remote, src_port, inner_len);
    if let Some(nh) = next_hop {
        buf[..6].copy_from_slice(&nh.dmac);
        buf[6..12].copy_from_slice(&nh.smac);
    }
    let proto = ctx.ether_type();
    if proto == ETH_P_IPV4 || proto == ETH_P_IPV6 {
        let inner = header::<[u8; ETH_LEN]>(ctx, 0).ok_or(DropReason::PktTooSmall)?;
        buf[OUTER..OUTER + ETH_LEN].copy_from_slice(inner);
        let flags = BPF_F_ADJ_ROOM_FIXED_GSO
            | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
            | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
            | BPF_F_ADJ_ROOM_ENCAP_L2_ETH;
        let flags = flags as u64 | encap_l2_len(ETH_LEN as u64);
        ctx.adjust_room(VXLAN_IPV4_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, flags)
            .map_err(|_| DropReason::HeaderAdjustFailed)?;
        // The room is after the inner Ethernet header: outer headers and that header go
        // over the first 64 bytes.
        ctx.store(0, maps::window::<{ OUTER + ETH_LEN }>(buf, 0), 0)
            .map_err(|_| DropReason::StoreFailed)
    } else {
        // SAFETY: helper call on our own skb.
        if unsafe { bpf_skb_change_head(ctx.skb.skb, VXLAN_IPV4_OVERHEAD, 0) } != 0 {
            return Err(DropReason::HeaderAdjustFailed);
        }
        ctx.store(0, maps::window::<OUTER>(buf, 0), 0)
            .map_err(|_| DropReason::StoreFailed)
    }
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
    let next_hop = maps::next_hop(remote);
    if let Some(nh) = next_hop {
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&nh.dmac);
        macs[6..].copy_from_slice(&nh.smac);
        ctx.store(0, &macs, 0)
            .map_err(|_| DropReason::StoreFailed)?;
    }
    transmit(ctx, cfg, next_hop, copy)
}

/// As [`send`], for a frame [`encapsulate`] addressed by `next_hop` (the caller's lookup of
/// the VTEP's; `None`: not resolved) already.
#[inline(always)]
pub fn transmit(
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
    deliver::send_to(ctx, nh.ifindex, copy)
}

/// `BPF_F_ADJ_ROOM_ENCAP_L2(len)`: a u64 flag the bindings do not provide.
#[inline(always)]
const fn encap_l2_len(len: u64) -> u64 {
    (len & 0xff) << 56
}

/// Writes outer Ethernet (addresses zero), IPv4, UDP and VXLAN into the first `OUTER`
/// bytes of `buf`, as 16-bit stores at even offsets (every field of these headers lies on
/// one), the IPv4 checksum summed from the words as they are written.
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
    let (local, ttl_proto) = (
        cfg.vtep_ipv4,
        u16::from(cfg.ttl) << 8 | u16::from(IPPROTO_UDP),
    );
    let (src_hi, src_lo) = (be16([local[0], local[1]]), be16([local[2], local[3]]));
    let (dst_hi, dst_lo) = (be16([remote[0], remote[1]]), be16([remote[2], remote[3]]));
    let sum = [
        0x4500, ip_len, IP_DF, ttl_proto, src_hi, src_lo, dst_hi, dst_lo,
    ]
    .iter()
    .fold(0u32, |sum, &w| sum + u32::from(w));
    let mut put = |at: usize, value: u16| maps::put_be16(buf, at, value);
    // Ethernet: addresses zero, IPv4.
    put(0, 0);
    put(2, 0);
    put(4, 0);
    put(6, 0);
    put(8, 0);
    put(10, 0);
    put(12, ETH_P_IPV4);
    put(IP, 0x4500);
    put(IP + 2, ip_len);
    put(IP + 4, 0);
    put(IP + 6, IP_DF);
    put(IP + 8, ttl_proto);
    put(IP + 10, csum::finish(sum));
    put(IP + 12, src_hi);
    put(IP + 14, src_lo);
    put(IP + 16, dst_hi);
    put(IP + 18, dst_lo);
    put(UDP, src_port);
    put(UDP + 2, VXLAN_PORT);
    put(UDP + 4, udp_len);
    // UDP checksum 0 on IPv4 (RFC 7348); segmentation copies it into every segment.
    put(UDP + 6, 0);
    put(VXLAN, u16::from(VXLAN_FLAG_I) << 8);
    put(VXLAN + 2, 0);
    put(VXLAN + 4, (vni >> 8) as u16);
    put(VXLAN + 6, ((vni & 0xff) << 8) as u16);
}
