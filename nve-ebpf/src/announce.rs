//! Announcements from VMs: gratuitous ARP, reverse ARP and unsolicited neighbour
//! advertisements are reported to the daemon through a ring buffer, which learns the MAC
//! and address from them. The frame itself goes on as any other broadcast.
use aya_ebpf::programs::TcContext;
use network_types::{arp::ArpHdr, eth::EthHdr, ip::Ipv6Hdr};
use nve_common::{
    maps::{ANNOUNCE_GARP, ANNOUNCE_NA, ANNOUNCE_RARP, Announcement, LocalPort},
    wire::{ETH_LEN, ETH_P_ARP, ETH_P_IPV6, ETH_P_RARP, ICMPV6_NEIGHBOUR_ADVERT, IPPROTO_ICMPV6},
};

use crate::{
    maps::NVE_EVENTS,
    parse::{header, ipv6_next_hdr},
};

/// The solicited flag of a neighbour advertisement's flags byte.
const NA_SOLICITED: u8 = 0x40;

/// Reports the (untagged) frame from `port` if it is an announcement. A full ring buffer
/// loses the report, never the frame.
#[inline(always)]
pub fn observe(ctx: &TcContext, vni: u32, port: LocalPort) {
    let Some(eth) = header::<EthHdr>(ctx, 0) else {
        return;
    };
    let mut event = Announcement {
        kind: 0,
        vni,
        ifindex: port.ifindex,
        vid: port.vid,
        mac: eth.src_addr,
        ip: [0; 16],
    };
    match u16::from_be(eth.ether_type) {
        ETH_P_RARP => event.kind = ANNOUNCE_RARP,
        ETH_P_ARP => {
            let Some(arp) = header::<ArpHdr>(ctx, ETH_LEN) else {
                return;
            };
            if arp.spa != arp.tpa || arp.spa == [0; 4] {
                return;
            }
            event.kind = ANNOUNCE_GARP;
            event.ip[..4].copy_from_slice(&arp.spa);
        }
        ETH_P_IPV6 => {
            let Some(ip) = header::<Ipv6Hdr>(ctx, ETH_LEN) else {
                return;
            };
            if ipv6_next_hdr(ip) != IPPROTO_ICMPV6 {
                return;
            }
            let icmp = ETH_LEN + Ipv6Hdr::LEN;
            let Some(na) = header::<[u8; 24]>(ctx, icmp) else {
                return;
            };
            if na[0] != ICMPV6_NEIGHBOUR_ADVERT || na[4] & NA_SOLICITED != 0 {
                return;
            }
            event.kind = ANNOUNCE_NA;
            event.ip.copy_from_slice(&na[8..24]);
        }
        _ => return,
    }
    let _ = NVE_EVENTS.output::<Announcement>(&event, 0);
}
