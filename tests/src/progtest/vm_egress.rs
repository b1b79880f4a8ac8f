//! Rows for `tc_vm_egress`: frames a VM sends on the test port (the namespace's loopback),
//! untagged or tagged with one of its VIDs.
use std::net::{Ipv4Addr, Ipv6Addr};

use nve_common::{
    metrics::{DropReason, Forward},
    wire::{
        ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_ECP, ETH_P_IPV4, ETH_P_IPV6, ETH_P_LLDP,
        IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_UDP,
    },
};

use super::{
    Case, Expect, KNOWN_IP, KNOWN_IPV6, Output, Program, UNKNOWN, VID, VM1, VM2, VM3, VM6, VM7,
    VM7_IP, VM7_IPV6, VM8, VM10, VNI, VNI_TAGGED, dropped, passed, redirected,
};
use crate::packet::{self, BROADCAST, Ipv4};

/// The VID of the test port whose source MACs are checked (VM7 is behind it).
const CHECKED: u16 = 50;
/// The VID of the test port in VNI_EMPTY, whose addresses the dataplane answers for.
const SUPPRESSED: u16 = 30;

pub(super) fn cases() -> Vec<Case> {
    let mut rows = Rows(Vec::new());
    rows.underlay_mtu();
    rows.other_mtus();
    rows.vlan_tags();
    rows.source_macs();
    rows.ipv4_sources();
    rows.ipv6_sources();
    rows.suppression();
    rows.switching();
    rows.link_control();
    rows.0
}

struct Rows(Vec<Case>);

impl Rows {
    fn row(&mut self, name: &str, frame: Vec<u8>, expect: Expect) {
        self.0
            .push(Case::new(Program::TcVmEgress, name, frame, expect));
    }

    /// Encapsulation to REMOTE against the underlay's MTU (1500: 1450 for the VM's
    /// packets).
    fn underlay_mtu(&mut self) {
        let to_vm2 = packet::inner_ping(VM2, VM1, 32);
        self.row(
            "to a remote VM: encapsulated",
            to_vm2.clone(),
            encap(VNI, to_vm2),
        );
        let big = packet::inner_ping(VM2, VM1, 1464 - 42);
        self.row(
            "largest frame the underlay MTU carries",
            big.clone(),
            encap(VNI, big),
        );
        let too_big = packet::inner_ping(VM2, VM1, 1465 - 42);
        self.row(
            "one byte over the underlay MTU, DF: ICMP fragmentation needed",
            too_big.clone(),
            too_big_answer(packet::frag_needed(&too_big, 1450)),
        );
        let mut no_df = Ipv4::new(
            [192, 168, 10, 1].into(),
            [192, 168, 10, 2].into(),
            IPPROTO_ICMP,
        );
        no_df.frag = 0;
        let echo = no_df.packet(&packet::icmp_echo(1, 1, 1465 - 42));
        self.row(
            "one byte over the underlay MTU, no DF: dropped, never fragmented",
            packet::eth(VM2, VM1, ETH_P_IPV4, &echo),
            dropped(DropReason::UnderlayMtuExceeded),
        );
    }

    /// IPv6 against the underlay's MTU, and IPv4 against a VN's lower one.
    fn other_mtus(&mut self) {
        let v6 = |len: usize| {
            let (src, dst) = (
                "2001:db8::1".parse().unwrap(),
                "2001:db8::2".parse().unwrap(),
            );
            let udp = packet::udp(1, 2, &vec![0; len]);
            packet::eth(
                VM2,
                VM1,
                ETH_P_IPV6,
                &packet::ipv6(src, dst, IPPROTO_UDP, &udp),
            )
        };
        let fits6 = v6(1450 - 48);
        self.row(
            "IPv6 at the MTU: encapsulated",
            fits6.clone(),
            encap(VNI, fits6),
        );
        let big6 = v6(1451 - 48);
        let answer = too_big_answer(packet::packet_too_big(&big6, 1450));
        self.row("IPv6 one byte over: ICMPv6 packet too big", big6, answer);
        let over_vn = Ipv4::new(
            [192, 168, 20, 1].into(),
            [192, 168, 20, 2].into(),
            IPPROTO_ICMP,
        )
        .packet(&packet::icmp_echo(1, 1, 1281 - 28));
        let untagged = packet::eth(VM2, VM1, ETH_P_IPV4, &over_vn);
        self.row(
            "over the VN's configured MTU (1280): ICMP with that MTU",
            packet::eth_tagged(VM2, VM1, VID, ETH_P_IPV4, &over_vn),
            too_big_answer(packet::frag_needed(&untagged, 1280)),
        );
    }

    /// The port's VLAN tag selects the VN and is removed; a tag under it is refused.
    fn vlan_tags(&mut self) {
        let ip = tagged_ip();
        let untagged = packet::eth(VM2, VM1, ETH_P_IPV4, &ip);
        self.row(
            "tagged frame: VID selects the VN, tag not sent",
            packet::eth_tagged(VM2, VM1, VID, ETH_P_IPV4, &ip),
            encap(VNI_TAGGED, untagged.clone()),
        );
        self.row(
            "VID bound to no VN",
            packet::eth_tagged(VM2, VM1, 99, ETH_P_IPV4, &ip),
            dropped(DropReason::PortNotInVn),
        );
        let inner_tagged = packet::eth_tagged(VM2, VM1, 7, ETH_P_IPV4, &ip);
        for (name, outer) in [
            ("802.1Q inside the port's tag: stacked", ETH_P_8021Q),
            ("802.1ad-tagged frame: stacked", ETH_P_8021AD),
        ] {
            let mut frame = packet::eth_tagged(VM2, VM1, VID, ETH_P_8021Q, &inner_tagged[14..]);
            frame[12..14].copy_from_slice(&u16::to_be_bytes(outer));
            self.row(name, frame, dropped(DropReason::VlanStacked));
        }
        self.row(
            "priority-tagged (VID 0): the untagged VN, tag removed",
            packet::eth_tagged(VM2, VM1, 0, ETH_P_IPV4, &ip),
            encap(VNI, untagged),
        );
        self.row(
            "truncated 802.1Q tag",
            packet::eth(VM2, VM1, ETH_P_8021Q, &[0]),
            dropped(DropReason::PktTooSmall),
        );
    }

    /// A VDP station's LLDP and ECP: to the host (nve's VDP session), never into a VN,
    /// whatever they are addressed to.
    fn link_control(&mut self) {
        let group = [0x01, 0x80, 0xc2, 0, 0, 0];
        for (name, ethertype) in [
            ("LLDP (EVB TLV): to the host", ETH_P_LLDP),
            ("ECP (VDP): to the host", ETH_P_ECP),
        ] {
            let frame = packet::eth(group, VM1, ethertype, &[0x10, 0x01, 0, 1]);
            self.row(name, frame, passed(Forward::LinkControl));
        }
        let to_vm2 = packet::eth(VM2, VM1, ETH_P_ECP, &[0x14, 0x01, 0, 1]);
        self.row(
            "ECP to a remote VM's MAC: to the host",
            to_vm2,
            passed(Forward::LinkControl),
        );
    }

    /// On the checked VID only VM7's MAC may send.
    fn source_macs(&mut self) {
        let from_vm7 = from_ipv4(VM7_IP.octets());
        self.row(
            "source MAC of the port: forwarded",
            packet::eth_tagged(VM2, VM7, CHECKED, ETH_P_IPV4, &from_vm7),
            encap(VNI, packet::eth(VM2, VM7, ETH_P_IPV4, &from_vm7)),
        );
        self.row(
            "to a MAC on the port it came from: not sent back",
            packet::eth_tagged(VM7, VM7, CHECKED, ETH_P_IPV4, &from_vm7),
            dropped(DropReason::Hairpin),
        );
        self.row(
            "source MAC of another port: spoofed",
            packet::eth_tagged(VM2, VM1, CHECKED, ETH_P_IPV4, &from_vm7),
            dropped(DropReason::SpoofedSrcMac),
        );
    }

    /// VM7 signaled VM7_IP: its IPv4 sources and ARP senders are checked.
    fn ipv4_sources(&mut self) {
        let ipv4_from = |src| packet::eth_tagged(VM2, VM7, CHECKED, ETH_P_IPV4, &from_ipv4(src));
        let spoofed = dropped(DropReason::SpoofedSrcIp);
        let frame = ipv4_from([192, 168, 10, 8]);
        self.row(
            "IPv4 source not the vNIC's: spoofed",
            frame,
            spoofed.clone(),
        );
        let frame = ipv4_from(KNOWN_IP.octets());
        self.row(
            "IPv4 source of a vNIC of another VN: spoofed",
            frame,
            spoofed.clone(),
        );
        let dhcp = from_ipv4([0; 4]);
        self.row(
            "IPv4 source 0.0.0.0 (DHCP): forwarded",
            ipv4_from([0; 4]),
            encap(VNI, packet::eth(VM2, VM7, ETH_P_IPV4, &dhcp)),
        );
        self.row(
            "truncated IPv4 header from a checked vNIC",
            packet::eth_tagged(
                VM2,
                VM7,
                CHECKED,
                ETH_P_IPV4,
                &from_ipv4(VM7_IP.octets())[..19],
            ),
            dropped(DropReason::PktTooSmall),
        );
        // Unicast ARP (to VM2, remote) so that what passes is encapsulated.
        let arp_body = |sender: Ipv4Addr| {
            packet::arp_request(VM7, sender, [192, 168, 10, 2].into())[14..].to_vec()
        };
        let arp_from = |sender| packet::eth_tagged(VM2, VM7, CHECKED, ETH_P_ARP, &arp_body(sender));
        let name = "ARP sender address not the vNIC's: spoofed";
        self.row(name, arp_from([192, 168, 10, 9].into()), spoofed);
        for (name, sender) in [
            ("ARP from the vNIC's address: forwarded", VM7_IP),
            (
                "ARP probe (sender 0.0.0.0): forwarded",
                Ipv4Addr::UNSPECIFIED,
            ),
        ] {
            let inner = packet::eth(VM2, VM7, ETH_P_ARP, &arp_body(sender));
            self.row(name, arp_from(sender), encap(VNI, inner));
        }
    }

    /// VM7 signaled VM7_IPV6: its IPv6 sources and advertised targets are checked.
    fn ipv6_sources(&mut self) {
        let peer6: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let echo6 = [128, 0, 0, 0, 0, 1, 0, 1];
        let link_local: Ipv6Addr = "fe80::7".parse().unwrap();
        for (name, src, spoofed) in [
            ("IPv6 from the vNIC's address: forwarded", VM7_IPV6, false),
            (
                "IPv6 from a link-local address: forwarded",
                link_local,
                false,
            ),
            (
                "IPv6 from another address: spoofed",
                "2001:db8::8".parse().unwrap(),
                true,
            ),
        ] {
            let ip = packet::ipv6(src, peer6, IPPROTO_ICMPV6, &echo6);
            let expect = match spoofed {
                true => dropped(DropReason::SpoofedSrcIp),
                false => encap(VNI, packet::eth(VM2, VM7, ETH_P_IPV6, &ip)),
            };
            self.row(
                name,
                packet::eth_tagged(VM2, VM7, CHECKED, ETH_P_IPV6, &ip),
                expect,
            );
        }
        let na = |target: Ipv6Addr| {
            let advert = packet::neighbour_advert(target, VM7);
            let ip = packet::ipv6(link_local, peer6, IPPROTO_ICMPV6, &advert);
            packet::eth_tagged(VM2, VM7, CHECKED, ETH_P_IPV6, &ip)
        };
        self.row(
            "neighbour advertisement for another address: spoofed",
            na("2001:db8::9".parse().unwrap()),
            dropped(DropReason::SpoofedSrcIp),
        );
        let own_na = na(VM7_IPV6);
        let inner = packet::eth(VM2, VM7, ETH_P_IPV6, &own_na[18..]);
        let name = "neighbour advertisement for the vNIC's address: forwarded";
        self.row(name, own_na, encap(VNI, inner));
    }

    /// ARP and ND for addresses of VNI_EMPTY: the known ones answered, the rest flooded
    /// (to nowhere: FLOOD_LIST_EMPTY).
    fn suppression(&mut self) {
        let flooded = dropped(DropReason::FloodListEmpty);
        let asker_ip = Ipv4Addr::new(192, 168, 30, 1);
        let request = packet::arp_request(VM1, asker_ip, KNOWN_IP);
        self.row(
            "ARP request for a known address: answered on the port",
            packet::eth_tagged(BROADCAST, VM1, SUPPRESSED, ETH_P_ARP, &request[14..]),
            redirected(
                Output::Bytes(packet::arp_reply(VM1, asker_ip, VM2, KNOWN_IP)),
                Forward::ArpReplied,
            ),
        );
        let asker6: Ipv6Addr = "2001:db8:30::1".parse().unwrap();
        let solicit = |from, target| {
            let frame = packet::neighbour_solicit(VM1, from, target);
            packet::eth_tagged(frame_dst(&frame), VM1, SUPPRESSED, ETH_P_IPV6, &frame[14..])
        };
        self.row(
            "neighbour solicitation for a known address: answered on the port",
            solicit(asker6, KNOWN_IPV6),
            redirected(
                Output::Bytes(packet::neighbour_reply(VM1, asker6, VM2, KNOWN_IPV6)),
                Forward::NdReplied,
            ),
        );
        let unknown: Ipv6Addr = "2001:db8:30::77".parse().unwrap();
        let name = "neighbour solicitation for an unknown address: flooded";
        self.row(name, solicit(asker6, unknown), flooded.clone());
        let name = "duplicate address detection (from ::) is not answered";
        self.row(
            name,
            solicit(Ipv6Addr::UNSPECIFIED, KNOWN_IPV6),
            flooded.clone(),
        );
        let garp = packet::arp_request(VM1, KNOWN_IP, KNOWN_IP);
        self.row(
            "gratuitous ARP is an announcement, not answered",
            packet::eth_tagged(BROADCAST, VM1, SUPPRESSED, ETH_P_ARP, &garp[14..]),
            flooded,
        );
    }

    /// Where the FDB sends unicast: a local port, a remote VTEP over IPv6, nowhere.
    fn switching(&mut self) {
        let flooded = dropped(DropReason::FloodListEmpty);
        let inactive = dropped(DropReason::VnicInactive);
        let ip = tagged_ip();
        let frame = packet::inner_ping(VM6, VM1, 32);
        self.row(
            "to a pre-associated vNIC on this host: not switched",
            frame,
            inactive.clone(),
        );
        let frame = packet::eth_tagged(UNKNOWN, VM1, SUPPRESSED, ETH_P_IPV4, &ip);
        self.row(
            "unknown unicast in a VN that floods it",
            frame,
            flooded.clone(),
        );
        let frame = packet::eth_tagged(VM2, VM1, 40, ETH_P_IPV4, &ip);
        self.row(
            "from a port whose vNIC is only pre-associated",
            frame,
            inactive.clone(),
        );
        let frame = packet::eth_tagged(VM2, VM1, 60, ETH_P_IPV4, &ip);
        self.row(
            "from a vNIC pre-associated as migrating in: it receives, it does not send yet",
            frame,
            inactive,
        );
        self.row(
            "to a vNIC pre-associated as migrating in on this host: switched",
            packet::inner_ping(VM10, VM1, 32),
            redirected(Output::Same, Forward::LocalSwitched),
        );
        let frame = packet::inner_ping(UNKNOWN, VM1, 32);
        self.row("unknown unicast", frame, dropped(DropReason::FdbMiss));
        self.row(
            "to a VM behind an IPv6 VTEP: to the kernel's tunnel device",
            packet::inner_ping(VM8, VM1, 32),
            redirected(Output::Same, Forward::Encapsulated),
        );
        self.row(
            "to a VM on this host: switched, not encapsulated",
            packet::inner_ping(VM3, VM1, 32),
            redirected(Output::Same, Forward::LocalSwitched),
        );
        let request = packet::arp_request(VM1, [192, 168, 30, 1].into(), [192, 168, 30, 2].into());
        self.row(
            "broadcast in a VN with nowhere to flood",
            packet::eth_tagged(BROADCAST, VM1, SUPPRESSED, ETH_P_ARP, &request[14..]),
            flooded,
        );
    }
}

/// Encapsulated for `vni` to REMOTE, carrying `inner`.
fn encap(vni: u32, inner: Vec<u8>) -> Expect {
    redirected(Output::Encap { vni, inner }, Forward::Encapsulated)
}

/// Answered on the sender's port with `answer` (ICMP too big).
fn too_big_answer(answer: Vec<u8>) -> Expect {
    redirected(Output::Bytes(answer), Forward::IcmpTooBig)
}

/// A small ICMP echo in VNI_TAGGED's addresses.
fn tagged_ip() -> Vec<u8> {
    Ipv4::new(
        [192, 168, 20, 1].into(),
        [192, 168, 20, 2].into(),
        IPPROTO_ICMP,
    )
    .packet(&packet::icmp_echo(1, 1, 32))
}

/// A small ICMP echo from `src` to VM2's address.
fn from_ipv4(src: [u8; 4]) -> Vec<u8> {
    Ipv4::new(src.into(), [192, 168, 10, 2].into(), IPPROTO_ICMP)
        .packet(&packet::icmp_echo(1, 1, 32))
}

fn frame_dst(frame: &[u8]) -> [u8; 6] {
    frame[..6].try_into().expect("an Ethernet frame")
}
