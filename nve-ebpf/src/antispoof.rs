//! Anti-spoofing on VM ports: a frame's source MAC must be one the FDB places behind the
//! port; where a vNIC's addresses were signaled, its source IPs (IPv4 source, ARP sender,
//! IPv6 source, neighbour advertisement target) must be addresses of a vNIC behind the
//! same port.
use aya_ebpf::programs::TcContext;
use network_types::{arp::ArpHdr, eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr};
use nve_common::{
    maps::{FDB_LOCAL, LocalPort},
    metrics::DropReason,
    wire::{ETH_LEN, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, ICMPV6_NEIGHBOUR_ADVERT, IPPROTO_ICMPV6},
};

use crate::{
    maps,
    parse::{ipv6_next_hdr, require},
};

/// ICMPv6 type, code, checksum and flags precede a neighbour advertisement's target.
const NA_TARGET_OFFSET: usize = 8;

/// The flags of `port`'s FDB entry for `src`, if `src` is a MAC of `port`.
#[inline(always)]
pub fn mac(vni: u32, src: [u8; 6], port: LocalPort) -> Result<u16, DropReason> {
    match maps::fdb(vni, src) {
        Some(e) if e.kind == FDB_LOCAL && e.port.is(&port) => Ok(e.port.flags),
        _ => Err(DropReason::SpoofedSrcMac),
    }
}

/// Checks the (untagged) frame's source addresses of the families `flags` (the sender's
/// FDB flags) say are known.
#[inline(always)]
pub fn ips(ctx: &TcContext, vni: u32, port: LocalPort, flags: u16) -> Result<(), DropReason> {
    let probe = LocalPort { flags, ..port };
    let eth = require::<EthHdr>(ctx, 0, DropReason::PktTooSmall)?;
    match u16::from_be(eth.ether_type) {
        ETH_P_IPV4 if probe.checks_ipv4() => {
            let ip = require::<Ipv4Hdr>(ctx, ETH_LEN, DropReason::PktTooSmall)?;
            ipv4_of(vni, ip.src_addr, port)
        }
        ETH_P_ARP if probe.checks_ipv4() => {
            let arp = require::<ArpHdr>(ctx, ETH_LEN, DropReason::PktTooSmall)?;
            ipv4_of(vni, arp.spa, port)
        }
        ETH_P_IPV6 if probe.checks_ipv6() => {
            let ip = require::<Ipv6Hdr>(ctx, ETH_LEN, DropReason::PktTooSmall)?;
            ipv6_of(vni, &ip.src_addr, port)?;
            if ipv6_next_hdr(ip) != IPPROTO_ICMPV6 {
                return Ok(());
            }
            let icmp = ETH_LEN + Ipv6Hdr::LEN;
            let kind = require::<u8>(ctx, icmp, DropReason::PktTooSmall)?;
            if *kind != ICMPV6_NEIGHBOUR_ADVERT {
                return Ok(());
            }
            let target =
                require::<[u8; 16]>(ctx, icmp + NA_TARGET_OFFSET, DropReason::PktTooSmall)?;
            ipv6_of(vni, target, port)
        }
        _ => Ok(()),
    }
}

/// 0.0.0.0 (DHCP, ARP probes), or an address of a vNIC behind `port`.
#[inline(always)]
fn ipv4_of(vni: u32, ip: [u8; 4], port: LocalPort) -> Result<(), DropReason> {
    if ip == [0; 4] {
        return Ok(());
    }
    match maps::arp(vni, ip) {
        Some(owner) if mac(vni, owner.mac, port).is_ok() => Ok(()),
        _ => Err(DropReason::SpoofedSrcIp),
    }
}

/// `::` (duplicate address detection), link-local (fe80::/10), or an address of a vNIC
/// behind `port`.
#[inline(always)]
fn ipv6_of(vni: u32, ip: &[u8; 16], port: LocalPort) -> Result<(), DropReason> {
    if *ip == [0; 16] || (ip[0] == 0xfe && ip[1] & 0xc0 == 0x80) {
        return Ok(());
    }
    match maps::nd(vni, *ip) {
        Some(owner) if mac(vni, owner.mac, port).is_ok() => Ok(()),
        _ => Err(DropReason::SpoofedSrcIp),
    }
}
