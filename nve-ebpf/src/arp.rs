//! ARP suppression: a request for an address the VN knows is answered on the asking port,
//! by rewriting the request into the reply in place, and never flooded.
use aya_ebpf::programs::TcContext;
use network_types::{arp::ArpHdr, eth::EthHdr};
use nve_common::{
    metrics::DropReason,
    wire::{ARP_REPLY, ARP_REQUEST, ETH_LEN, ETH_P_ARP, ETH_P_IPV4},
};

use crate::{
    deliver::{self, VmPort},
    maps,
    parse::{be16, header},
};

/// Ethernet and ARP for IPv4 over Ethernet.
const ARP_FRAME: usize = ETH_LEN + 28;

/// Answers the (untagged) frame if it is an ARP request for an address of `vni` the
/// dataplane knows, sending the reply back to `ingress`. `Ok(None)`: not one to answer.
#[inline(always)]
pub fn reply(ctx: &TcContext, vni: u32, ingress: VmPort) -> Result<Option<i32>, DropReason> {
    let Some(eth) = header::<EthHdr>(ctx, 0) else {
        return Ok(None);
    };
    if u16::from_be(eth.ether_type) != ETH_P_ARP {
        return Ok(None);
    }
    let Some(arp) = header::<ArpHdr>(ctx, ETH_LEN) else {
        return Ok(None);
    };
    let ipv4_over_ethernet =
        be16(arp.htype) == 1 && be16(arp.ptype) == ETH_P_IPV4 && arp.hlen == 6 && arp.plen == 4;
    // A gratuitous ARP (sender = target) announces; it is not a question.
    if !ipv4_over_ethernet || be16(arp.oper) != ARP_REQUEST || arp.spa == arp.tpa {
        return Ok(None);
    }
    let Some(owner) = maps::arp(vni, arp.tpa) else {
        return Ok(None);
    };
    let (asker_mac, asker_ip, target_ip, owner_mac) = (arp.sha, arp.spa, arp.tpa, owner.mac);
    // The whole reply (42 bytes: Ethernet, then the ARP header and body) built in the
    // scratch buffer and written with one store; the fields between the MACs and the
    // operation are the request's, checked above.
    let buf = maps::scratch().ok_or(DropReason::ScratchUnavailable)?;
    buf[..6].copy_from_slice(&asker_mac);
    buf[6..12].copy_from_slice(&owner_mac);
    buf[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    buf[14..20].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
    buf[20..22].copy_from_slice(&ARP_REPLY.to_be_bytes());
    buf[22..28].copy_from_slice(&owner_mac);
    buf[28..32].copy_from_slice(&target_ip);
    buf[32..38].copy_from_slice(&asker_mac);
    buf[38..42].copy_from_slice(&asker_ip);
    ctx.store(0, maps::window::<ARP_FRAME>(buf, 0), 0)
        .map_err(|_| DropReason::StoreFailed)?;
    deliver::to_port(ctx, ingress).map(Some)
}
