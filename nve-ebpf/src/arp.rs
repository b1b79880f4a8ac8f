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
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&asker_mac);
    macs[6..].copy_from_slice(&owner_mac);
    // From the operation field on: oper, sha, spa, tha, tpa.
    let mut body = [0u8; 22];
    body[..2].copy_from_slice(&ARP_REPLY.to_be_bytes());
    body[2..8].copy_from_slice(&owner_mac);
    body[8..12].copy_from_slice(&target_ip);
    body[12..18].copy_from_slice(&asker_mac);
    body[18..22].copy_from_slice(&asker_ip);
    let bad = |_| DropReason::StoreFailed;
    ctx.store(0, &macs, 0).map_err(bad)?;
    ctx.store(ETH_LEN + 6, &body, 0).map_err(bad)?;
    deliver::to_port(ctx, ingress).map(Some)
}
