//! Path MTU on the encapsulation path. A frame that will not fit the underlay once
//! encapsulated (or exceeds its VN's configured MTU) is never sent as a fragmented VXLAN
//! packet: IPv4 with DF set gets ICMP "fragmentation needed", IPv6 gets ICMPv6 "packet too
//! big", back on the VM's port and as if from the destination (as OVS answers for its
//! tunnels), so the VM's stack lowers its path MTU; anything else is dropped and counted.
//! A GSO frame is measured by its segments.
use aya_ebpf::programs::TcContext;
use nve_common::{
    metrics::DropReason,
    wire::{
        ETH_LEN, ETH_P_IPV4, ETH_P_IPV6, IP_DF, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
        IPPROTO_UDP, MIN_VN_MTU,
    },
};

use crate::{
    csum,
    deliver::{self, VmPort},
    maps::{self, SCRATCH_LEN},
    parse::{SkbMeta, be16, copy_out, header},
};
/// Of the frame that did not fit, ICMP quotes the IPv4 header and 8 bytes (RFC 792);
/// ICMPv6 the IPv6 header and 8 bytes (enough for the sender to find its flow).
const QUOTE_V4: usize = 28;
const QUOTE_V6: usize = 48;

/// Whether the (untagged) frame fits in `budget` (what the underlay leaves: 50 bytes less
/// than the next hop's MTU over IPv4, 70 less than the underlay's over IPv6) and its VN's
/// MTU; if not, the ICMP answer has been sent back to
/// `ingress` (returns the TC action) or the frame is an `Err`.
#[inline(always)]
pub fn check(
    ctx: &TcContext,
    vni: u32,
    budget: Option<u32>,
    ingress: VmPort,
) -> Result<Option<i32>, DropReason> {
    // No budget (an IPv4 VTEP whose next hop is not mirrored yet): the send path decides.
    let Some(budget) = budget else {
        return Ok(None);
    };
    let Some(ether_type) = header::<[u8; 2]>(ctx, 12) else {
        return Ok(None);
    };
    let ether_type = be16(*ether_type);
    let len = network_len(ctx, ether_type);
    let mut mtu = budget;
    if len > MIN_VN_MTU
        && let Some(vn) = maps::vn(vni)
        && vn.mtu != 0
        && vn.mtu < mtu
    {
        mtu = vn.mtu;
    }
    if len <= mtu {
        return Ok(None);
    }
    match ether_type {
        ETH_P_IPV4 => frag_needed(ctx, mtu, ingress).map(Some),
        ETH_P_IPV6 => packet_too_big(ctx, mtu, ingress).map(Some),
        _ => Err(DropReason::UnderlayMtuExceeded),
    }
}

/// The length of the frame's network packet, or of one of its segments if it is GSO.
#[inline(always)]
fn network_len(ctx: &TcContext, ether_type: u16) -> u32 {
    let gso_size = ctx.gso_size();
    let whole = ctx.len().saturating_sub(ETH_LEN as u32);
    if gso_size == 0 {
        return whole;
    }
    let (l3, proto) = match ether_type {
        ETH_P_IPV4 => match ctx.load::<[u8; 10]>(ETH_LEN) {
            Ok(ip) => (((ip[0] & 0x0f) as u32) * 4, ip[9]),
            Err(_) => return whole,
        },
        ETH_P_IPV6 => match ctx.load::<[u8; 7]>(ETH_LEN) {
            Ok(ip) => (40, ip[6]),
            Err(_) => return whole,
        },
        _ => return whole,
    };
    let l4 = match proto {
        IPPROTO_TCP => match ctx.load::<u8>(ETH_LEN + l3 as usize + 12) {
            Ok(offset) => ((offset >> 4) as u32) * 4,
            Err(_) => return whole,
        },
        IPPROTO_UDP => 8,
        _ => return whole,
    };
    (l3 + l4 + gso_size).min(whole)
}

/// Turns the IPv4 frame into ICMP "fragmentation needed" (type 3, code 4) from its
/// destination to its source and sends it back to `ingress`; without DF, a drop.
// Out of line, built in the scratch buffer: the stack next to tc_vm_egress's own locals
// has no room for it. The frame is read with helpers only: LLVM would pass direct packet
// pointers as promoted integer arguments, which the verifier refuses.
#[inline(never)]
fn frag_needed(ctx: &TcContext, mtu: u32, ingress: VmPort) -> Result<i32, DropReason> {
    const IP: usize = ETH_LEN;
    const ICMP: usize = IP + 20;
    const QUOTE: usize = ICMP + 8;
    const LEN: usize = QUOTE + QUOTE_V4;
    let buf = maps::scratch().ok_or(DropReason::ScratchUnavailable)?;
    copy_out(ctx, 0, &mut buf[..QUOTE])?;
    if be16([buf[IP + 6], buf[IP + 7]]) & IP_DF == 0 {
        return Err(DropReason::UnderlayMtuExceeded);
    }
    // The quote (the frame's IPv4 header and 8 bytes) goes where it ends.
    buf.copy_within(IP..QUOTE, QUOTE);
    swap_macs(buf);
    let header: [u8; 12] = [
        0x45,
        0,
        0,
        (LEN - IP) as u8,
        0,
        0,
        0,
        0,
        64,
        IPPROTO_ICMP,
        0,
        0,
    ];
    buf[IP..IP + 12].copy_from_slice(&header);
    buf.copy_within(QUOTE + 16..QUOTE + 20, IP + 12);
    buf.copy_within(QUOTE + 12..QUOTE + 16, IP + 16);
    let check = csum::finish(csum::add(0, maps::window::<20>(buf, IP))).to_be_bytes();
    buf[IP + 10..IP + 12].copy_from_slice(&check);
    let mtu = (mtu as u16).to_be_bytes();
    buf[ICMP..QUOTE].copy_from_slice(&[3, 4, 0, 0, 0, 0, mtu[0], mtu[1]]);
    let check = csum::finish(csum::add(0, maps::window::<{ LEN - ICMP }>(buf, ICMP))).to_be_bytes();
    buf[ICMP + 2..ICMP + 4].copy_from_slice(&check);
    deliver::reply(ctx, ingress, maps::window::<LEN>(buf, 0))
}

/// Turns the IPv6 frame into ICMPv6 "packet too big" from its destination to its source
/// and sends it back to `ingress`.
// Out of line and in the scratch buffer, as `frag_needed`.
#[inline(never)]
fn packet_too_big(ctx: &TcContext, mtu: u32, ingress: VmPort) -> Result<i32, DropReason> {
    const IP: usize = ETH_LEN;
    const ICMP: usize = IP + 40;
    const QUOTE: usize = ICMP + 8;
    const LEN: usize = QUOTE + QUOTE_V6;
    let buf = maps::scratch().ok_or(DropReason::ScratchUnavailable)?;
    copy_out(ctx, 0, &mut buf[..QUOTE])?;
    buf.copy_within(IP..QUOTE, QUOTE);
    swap_macs(buf);
    let header: [u8; 8] = [0x60, 0, 0, 0, 0, (LEN - ICMP) as u8, IPPROTO_ICMPV6, 64];
    buf[IP..IP + 8].copy_from_slice(&header);
    // Source: the frame's destination; destination: its source.
    buf.copy_within(QUOTE + 24..QUOTE + 40, IP + 8);
    buf.copy_within(QUOTE + 8..QUOTE + 24, IP + 24);
    let mtu = mtu.to_be_bytes();
    buf[ICMP..QUOTE].copy_from_slice(&[2, 0, 0, 0, mtu[0], mtu[1], mtu[2], mtu[3]]);
    // Pseudo-header (addresses, length, next header), then the message.
    // SAFETY: windows at even offsets of the scratch buffer.
    let sum = unsafe { csum::add_aligned(0, maps::window::<32>(buf, IP + 8)) };
    let sum = sum + (LEN - ICMP) as u32 + IPPROTO_ICMPV6 as u32;
    // SAFETY: as above.
    let sum = unsafe { csum::add_aligned(sum, maps::window::<{ LEN - ICMP }>(buf, ICMP)) };
    buf[ICMP + 2..ICMP + 4].copy_from_slice(&csum::finish(sum).to_be_bytes());
    deliver::reply(ctx, ingress, maps::window::<LEN>(buf, 0))
}

/// The answer's MACs: from the frame's destination, to its source.
#[inline(always)]
fn swap_macs(buf: &mut [u8; SCRATCH_LEN]) {
    let mut dst = [0u8; 6];
    dst.copy_from_slice(&buf[..6]);
    buf.copy_within(6..12, 0);
    buf[6..12].copy_from_slice(&dst);
}
