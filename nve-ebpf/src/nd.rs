//! IPv6 neighbour discovery suppression: a multicast neighbour solicitation for an address
//! the VN knows is answered with a neighbour advertisement on the asking port, built in
//! place of the solicitation, and never flooded (as the kernel bridge's neigh_suppress).
use aya_ebpf::{helpers::bpf_skb_change_tail, programs::TcContext};
use network_types::{eth::EthHdr, ip::Ipv6Hdr};
use nve_common::{maps::LocalPort, metrics::DropReason};

use crate::{
    csum, deliver, maps,
    parse::{ETH_LEN, ETH_P_IPV6, IPPROTO_ICMPV6, header},
};

const NEIGHBOUR_SOLICIT: u8 = 135;
const NEIGHBOUR_ADVERT: u8 = 136;
/// Solicited and override.
const NA_FLAGS: u8 = 0x60;
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
pub fn reply(ctx: &TcContext, vni: u32, ingress: LocalPort) -> Result<Option<i32>, DropReason> {
    let Some(eth) = header::<EthHdr>(ctx, 0) else {
        return Ok(None);
    };
    if u16::from_be(eth.ether_type) != ETH_P_IPV6 {
        return Ok(None);
    }
    let Some(ip) = header::<Ipv6Hdr>(ctx, ETH_LEN) else {
        return Ok(None);
    };
    // SAFETY: one byte of the header bounds-checked above, read as a byte.
    let next = unsafe { *(core::ptr::addr_of!(ip.next_hdr) as *const u8) };
    if next != IPPROTO_ICMPV6 || ip.hop_limit != 255 || ip.src_addr == [0; 16] {
        return Ok(None);
    }
    let Some(kind) = header::<[u8; 2]>(ctx, ICMP_OFFSET) else {
        return Ok(None);
    };
    if kind[0] != NEIGHBOUR_SOLICIT || kind[1] != 0 {
        return Ok(None);
    }
    let Some(target) = header::<[u8; 16]>(ctx, ICMP_OFFSET + TARGET_OFFSET) else {
        return Ok(None);
    };
    let target = *target;
    let Some(owner) = maps::nd(vni, target) else {
        return Ok(None);
    };
    let (asker_mac, asker_ip, owner_mac) = (eth.src_addr, ip.src_addr, owner.mac);
    if owner_mac == asker_mac {
        return Ok(None);
    }

    // Written field by field over the solicitation: whole headers on the stack do not fit
    // tc_vm_egress's 512 bytes.
    // SAFETY: helper call on our own skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ICMP_OFFSET + NA_LEN) as u32, 0) } != 0 {
        return Err(DropReason::HeaderAdjustFailed);
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&asker_mac);
    macs[6..].copy_from_slice(&owner_mac);
    let ip_head: [u8; 8] = [0x60, 0, 0, 0, 0, NA_LEN as u8, IPPROTO_ICMPV6, 255];
    let mut option = [0u8; 8];
    option[0] = OPT_TARGET_LL_ADDR;
    option[1] = 1;
    option[2..].copy_from_slice(&owner_mac);
    // Pseudo-header (source, destination, length, next header) and the message: type and
    // code, flags, target, option.
    let sum = csum::add(csum::add(0, &target), &asker_ip) + NA_LEN as u32 + IPPROTO_ICMPV6 as u32;
    let sum = csum::add(sum, &target) + ((NEIGHBOUR_ADVERT as u32) << 8) + ((NA_FLAGS as u32) << 8);
    let check = csum::finish(csum::add(sum, &option)).to_be_bytes();
    let icmp_head: [u8; 8] = [NEIGHBOUR_ADVERT, 0, check[0], check[1], NA_FLAGS, 0, 0, 0];
    let bad = |_| DropReason::HeaderAdjustFailed;
    ctx.store(0, &macs, 0).map_err(bad)?;
    ctx.store(ETH_LEN, &ip_head, 0).map_err(bad)?;
    ctx.store(ETH_LEN + 8, &target, 0).map_err(bad)?;
    ctx.store(ETH_LEN + 24, &asker_ip, 0).map_err(bad)?;
    ctx.store(ICMP_OFFSET, &icmp_head, 0).map_err(bad)?;
    ctx.store(ICMP_OFFSET + TARGET_OFFSET, &target, 0)
        .map_err(bad)?;
    ctx.store(ICMP_OFFSET + TARGET_OFFSET + 16, &option, 0)
        .map_err(bad)?;
    deliver::to_port(ctx, vni, ingress).map(Some)
}
