//! IPv6 neighbour discovery suppression: a multicast neighbour solicitation for an address
//! the VN knows is answered with a neighbour advertisement on the asking port, built in
//! place of the solicitation, and never flooded (as the kernel bridge's neigh_suppress).
use aya_ebpf::programs::TcContext;
use network_types::{eth::EthHdr, ip::Ipv6Hdr};
use nve_common::{
    metrics::DropReason,
    wire::{
        ETH_LEN, ETH_P_IPV6, ICMPV6_NEIGHBOUR_ADVERT, ICMPV6_NEIGHBOUR_SOLICIT, IPPROTO_ICMPV6,
    },
};

use crate::{
    csum,
    deliver::{self, VmPort},
    maps,
    parse::{copy_out, header},
};

/// Solicited and override.
const NA_FLAGS: u8 = 0x60;
/// The advertisement's type, code, checksum (filled in later), flags and reserved bytes.
const NA_HEADER: [u8; 8] = [ICMPV6_NEIGHBOUR_ADVERT, 0, 0, 0, NA_FLAGS, 0, 0, 0];
const OPT_TARGET_LL_ADDR: u8 = 2;
/// Type, code, checksum, reserved: the target follows.
const TARGET_OFFSET: usize = 8;
const ICMP_OFFSET: usize = ETH_LEN + Ipv6Hdr::LEN;
/// The advertisement: header, target, one target link-layer address option.
const NA_LEN: usize = TARGET_OFFSET + 16 + 8;

/// Answers the (untagged) frame if it is a neighbour solicitation for an address of `vni`
/// the dataplane knows, sending the advertisement back to `ingress`. `Ok(None)`: not one
/// to answer (duplicate address detection from `::` and questions about the asker's own
/// address go their way).
#[inline(always)]
pub fn reply(ctx: &TcContext, vni: u32, ingress: VmPort) -> Result<Option<i32>, DropReason> {
    match header::<EthHdr>(ctx, 0) {
        Some(eth) if u16::from_be(eth.ether_type) == ETH_P_IPV6 => solicited(ctx, vni, ingress),
        _ => Ok(None),
    }
}

// Out of line, built in the scratch buffer: the stack next to tc_vm_egress's own locals
// has no room for it. The frame is read with helpers only: LLVM would pass direct packet
// pointers as promoted integer arguments, which the verifier refuses.
#[inline(never)]
fn solicited(ctx: &TcContext, vni: u32, ingress: VmPort) -> Result<Option<i32>, DropReason> {
    const IP: usize = ETH_LEN;
    const LEN: usize = ICMP_OFFSET + NA_LEN;
    const TARGET: usize = ICMP_OFFSET + TARGET_OFFSET;
    let Some(buf) = maps::scratch() else {
        return Ok(None);
    };
    // Ethernet, IPv6, the solicitation's header and target.
    if copy_out(ctx, 0, &mut buf[..TARGET + 16]).is_err() {
        return Ok(None);
    }
    let (next, hops) = (buf[IP + 6], buf[IP + 7]);
    let unspecified = buf[IP + 8..IP + 24].iter().all(|&b| b == 0);
    if next != IPPROTO_ICMPV6 || hops != 255 || unspecified {
        return Ok(None);
    }
    if buf[ICMP_OFFSET] != ICMPV6_NEIGHBOUR_SOLICIT || buf[ICMP_OFFSET + 1] != 0 {
        return Ok(None);
    }
    let mut target = [0u8; 16];
    target.copy_from_slice(&buf[TARGET..TARGET + 16]);
    let Some(owner) = maps::nd(vni, target) else {
        return Ok(None);
    };
    let owner_mac = owner.mac;
    if buf[6..12] == owner_mac {
        return Ok(None);
    }

    // Over the solicitation in place: to the asker from the owner, from the target address
    // to the asker's; the target stays where it is.
    buf.copy_within(6..12, 0);
    buf[6..12].copy_from_slice(&owner_mac);
    buf.copy_within(IP + 8..IP + 24, IP + 24);
    buf[IP + 8..IP + 24].copy_from_slice(&target);
    buf[IP..IP + 8].copy_from_slice(&[0x60, 0, 0, 0, 0, NA_LEN as u8, IPPROTO_ICMPV6, 255]);
    buf[ICMP_OFFSET..TARGET].copy_from_slice(&NA_HEADER);
    buf[TARGET + 16] = OPT_TARGET_LL_ADDR;
    buf[TARGET + 17] = 1;
    buf[TARGET + 18..LEN].copy_from_slice(&owner_mac);
    // Pseudo-header (addresses, length, next header), then the message.
    let sum =
        csum::add(0, maps::window::<32>(buf, IP + 8)) + (NA_LEN + IPPROTO_ICMPV6 as usize) as u32;
    let message = maps::window::<NA_LEN>(buf, ICMP_OFFSET);
    let check = csum::finish(csum::add(sum, message)).to_be_bytes();
    buf[ICMP_OFFSET + 2..ICMP_OFFSET + 4].copy_from_slice(&check);

    deliver::reply(ctx, ingress, maps::window::<LEN>(buf, 0)).map(Some)
}
