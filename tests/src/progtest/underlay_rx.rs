//! Rows for the underlay programs, `xdp_underlay_rx` and `tc_underlay_rx`: each frame goes
//! through both, which classify alike and part where XDP defers to TC.
use nve_common::{
    metrics::{DropReason, Forward},
    wire::{ETH_P_IPV4, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP, VXLAN_FLAG_I, VXLAN_PORT},
};

use super::{
    Case, Expect, NEXT_HOP_MAC, Output, Program, REMOTE, REMOTE3, REMOTE6, STRANGER, UNDERLAY_MAC,
    UNKNOWN, VM1, VM2, VM4, VM5, VM6, VM9, VM10, VNI, VNI_EMPTY, VTEP, VTEP6, dropped, passed,
    redirected,
};
use crate::packet::{self, Ipv4};

/// Offset of the outer IPv4 header.
const IP: usize = 14;

pub(super) fn cases() -> Vec<Case> {
    let mut rows = Rows::new();
    rows.valid();
    rows.outer_header_faults();
    rows.not_vxlan_for_us();
    rows.refused();
    rows.local_targets();
    rows.moved_macs();
    rows.truncated();
    rows.cases
}

/// The rows being built, and the frames most of them start from.
struct Rows {
    /// The outer IPv4 header of VXLAN from REMOTE to this VTEP.
    ip: Ipv4,
    /// A ping to VM1 (on an untagged local port) from VM2.
    to_vm1: Vec<u8>,
    /// `to_vm1` in VXLAN of VNI from REMOTE: decapsulated by both.
    valid: Vec<u8>,
    cases: Vec<Case>,
}

impl Rows {
    fn new() -> Self {
        let ip = Ipv4::new(REMOTE, VTEP, IPPROTO_UDP);
        let to_vm1 = packet::inner_ping(VM1, VM2, 32);
        let valid = vxlan(&ip, VNI, &to_vm1);
        Self {
            ip,
            to_vm1,
            valid,
            cases: Vec::new(),
        }
    }

    /// A row for each program, with the same expectation.
    fn both(&mut self, name: &str, frame: Vec<u8>, expect: Expect) {
        self.each(name, frame, expect.clone(), expect);
    }

    /// A row for each program.
    fn each(&mut self, name: &str, frame: Vec<u8>, xdp: Expect, tc: Expect) {
        self.cases
            .push(Case::new(Program::TcUnderlayRx, name, frame.clone(), tc));
        self.xdp(name, frame, xdp);
    }

    /// A row for XDP alone.
    fn xdp(&mut self, name: &str, frame: Vec<u8>, expect: Expect) {
        self.cases
            .push(Case::new(Program::XdpUnderlayRx, name, frame, expect));
    }

    /// VXLAN of `vni` from REMOTE carrying a ping from VM2 to `dst`.
    fn ping(&self, vni: u32, dst: [u8; 6]) -> Vec<u8> {
        vxlan(&self.ip, vni, &packet::inner_ping(dst, VM2, 32))
    }

    /// `to_vm1` decapsulated and delivered.
    fn delivered_to_vm1(&self) -> Expect {
        redirected(Output::Bytes(self.to_vm1.clone()), Forward::Decapsulated)
    }

    fn valid(&mut self) {
        let delivered = self.delivered_to_vm1();
        self.both(
            "valid VXLAN to a local VM",
            self.valid.clone(),
            delivered.clone(),
        );
        let reserved = from_remote(&self.ip, VXLAN_PORT, 0x0c, VNI, &self.to_vm1);
        let name = "reserved flag bits set besides I are ignored";
        self.both(name, reserved, delivered.clone());
        let mut with_options = self.ip.clone();
        with_options.options = vec![1, 1, 1, 0];
        let frame = vxlan(&with_options, VNI, &self.to_vm1);
        self.both("outer IPv4 options", frame, delivered);
        let udp = packet::udp(
            54321,
            VXLAN_PORT,
            &packet::vxlan(VXLAN_FLAG_I, VNI, &self.to_vm1),
        );
        let over_ipv6 = packet::eth(
            UNDERLAY_MAC,
            NEXT_HOP_MAC,
            ETH_P_IPV6,
            &packet::ipv6(REMOTE6, VTEP6, IPPROTO_UDP, &udp),
        );
        let name = "VXLAN over IPv6 to this VTEP: to the kernel's tunnel device";
        self.both(name, over_ipv6, passed(Forward::ToKernelVxlan));
    }

    /// Each outer fault the kernel's stack drops before a UDP socket sees the frame.
    fn outer_header_faults(&mut self) {
        let faults: [(&str, Fault, DropReason); 5] = [
            (
                "VXLAN to this VTEP in a frame for another host's MAC",
                |f| f[..6].copy_from_slice(&NEXT_HOP_MAC),
                DropReason::OtherHost,
            ),
            (
                "VXLAN with a wrong outer IPv4 header checksum",
                |f| f[IP + 10] ^= 0x40,
                DropReason::IpCsum,
            ),
            (
                "VXLAN whose outer IPv4 total length is larger than the frame",
                |f| {
                    add16(f, IP + 2, 8);
                    packet::refresh_ipv4_checksum(f, IP);
                },
                DropReason::IpTotLen,
            ),
            (
                "VXLAN whose outer IPv4 total length is shorter than the frame",
                |f| {
                    add16(f, IP + 2, -4);
                    packet::refresh_ipv4_checksum(f, IP);
                },
                DropReason::IpTotLen,
            ),
            (
                "VXLAN whose UDP length disagrees with the IPv4 total length",
                |f| add16(f, IP + 24, -2),
                DropReason::UdpLen,
            ),
        ];
        for (name, fault, reason) in faults {
            let mut frame = self.valid.clone();
            fault(&mut frame);
            self.both(name, frame, dropped(reason));
        }
    }

    /// Frames that are not VXLAN to this VTEP, or that the host reassembles first.
    fn not_vxlan_for_us(&mut self) {
        let host = passed(Forward::PassedToHost);
        let wrong_port = from_remote(&self.ip, 4790, VXLAN_FLAG_I, VNI, &self.to_vm1);
        self.both("wrong UDP port", wrong_port, host.clone());
        let elsewhere = Ipv4::new(REMOTE, [10, 0, 0, 9].into(), IPPROTO_UDP);
        let frame = vxlan(&elsewhere, VNI, &self.to_vm1);
        self.both("VXLAN to another address", frame, host.clone());
        let arp = packet::arp_request(NEXT_HOP_MAC, REMOTE, VTEP);
        self.both("ARP on the underlay", arp, host.clone());
        let tcp = Ipv4::new(REMOTE, VTEP, IPPROTO_TCP).packet(&[0; 20]);
        let frame = packet::eth(UNDERLAY_MAC, NEXT_HOP_MAC, ETH_P_IPV4, &tcp);
        self.both("TCP to the VTEP", frame, host);
        for (name, frag) in [
            ("outer first fragment (MF)", 0x2000),
            ("outer later fragment (offset)", 0x0010),
        ] {
            let mut fragment = self.ip.clone();
            fragment.frag = frag;
            let frame = vxlan(&fragment, VNI, &self.to_vm1);
            self.both(name, frame, passed(Forward::PassedFragment));
        }
    }

    /// VXLAN to this VTEP that is not decapsulated: its header, its VNI, its source VTEP or
    /// its inner destination.
    fn refused(&mut self) {
        let frame = from_remote(&self.ip, VXLAN_PORT, 0x00, VNI, &self.to_vm1);
        self.both("I flag clear", frame, dropped(DropReason::VxlanInvalidHdr));
        let frame = vxlan(&self.ip, 999, &self.to_vm1);
        self.both("unknown VNI", frame, dropped(DropReason::VniNotFound));
        let frame = self.ping(VNI, UNKNOWN);
        self.both(
            "unknown inner destination",
            frame,
            dropped(DropReason::FdbMiss),
        );
        let frame = vxlan(&self.ip, VNI, &packet::inner_ping(VM2, VM1, 32));
        let name = "VXLAN for a MAC behind another VTEP: not sent back onto the underlay";
        self.both(name, frame, dropped(DropReason::UnderlayHairpin));
        let stranger = Ipv4::new(STRANGER, VTEP, IPPROTO_UDP);
        let frame = vxlan(&stranger, VNI, &self.to_vm1);
        let name = "VXLAN from a VTEP the VN does not know";
        self.both(name, frame, dropped(DropReason::VtepNotInVn));
        let broadcast = packet::inner_ping(packet::BROADCAST, VM2, 32);
        self.each(
            "VXLAN from any VTEP to a VN that accepts any",
            vxlan(&stranger, VNI_EMPTY, &broadcast),
            passed(Forward::DeferredToTc),
            dropped(DropReason::FloodListEmpty),
        );
    }

    /// Delivery XDP leaves to TC: broadcast, tagged, tap and inactive ports.
    fn local_targets(&mut self) {
        let deferred = passed(Forward::DeferredToTc);
        let nowhere = dropped(DropReason::FloodListEmpty);
        let arp = packet::arp_request(VM2, [192, 168, 10, 2].into(), [192, 168, 10, 1].into());
        let frame = vxlan(&self.ip, VNI_EMPTY, &arp);
        let name = "inner broadcast in a VN with no local port";
        self.each(name, frame, deferred.clone(), nowhere.clone());
        let to_vm4 = packet::inner_ping(VM4, VM2, 32);
        let frame = vxlan(&self.ip, VNI, &to_vm4);
        // The tag is pushed as skb metadata (offload), not into the bytes.
        let tagged = redirected(Output::Bytes(to_vm4), Forward::Decapsulated);
        self.each("to a VM on a tagged port", frame, deferred.clone(), tagged);
        let frame = self.ping(VNI_EMPTY, UNKNOWN);
        let name = "unknown inner unicast in a VN that floods it";
        self.each(name, frame, deferred.clone(), nowhere);
        let frame = self.ping(VNI, VM6);
        self.both(
            "to a pre-associated vNIC",
            frame,
            dropped(DropReason::VnicInactive),
        );
        let to_vm10 = packet::inner_ping(VM10, VM2, 32);
        self.both(
            "to a vNIC pre-associated as migrating in: delivered before activation",
            vxlan(&self.ip, VNI, &to_vm10),
            redirected(Output::Bytes(to_vm10.clone()), Forward::Decapsulated),
        );
        let frame = self.ping(VNI, VM5);
        let name = "to a VM on a tap port: left to the kernel's collect_md vxlan (GSO)";
        self.each(name, frame, deferred, passed(Forward::ToKernelVxlan));
    }

    /// VXLAN for VM9, which moved to REMOTE3: TC sends it on (the forwarding pointer).
    fn moved_macs(&mut self) {
        let deferred = passed(Forward::DeferredToTc);
        let to_vm9 = packet::inner_ping(VM9, VM2, 32);
        let mut sent_on = Ipv4::new(VTEP, REMOTE3, IPPROTO_UDP);
        sent_on.ttl = 63;
        let out = packet::vxlan_frame(NEXT_HOP_MAC, UNDERLAY_MAC, &sent_on, 54321, VNI, &to_vm9);
        self.each(
            "VXLAN for a MAC that moved away: sent on to its new VTEP",
            vxlan(&self.ip, VNI, &to_vm9),
            deferred.clone(),
            redirected(Output::Bytes(out), Forward::ForwardedToVtep),
        );
        let mut last_hop = self.ip.clone();
        last_hop.ttl = 1;
        let frame = vxlan(&last_hop, VNI, &to_vm9);
        let name = "VXLAN for a moved MAC with its TTL run out: not sent on";
        self.each(
            name,
            frame,
            deferred.clone(),
            dropped(DropReason::TtlExceeded),
        );
        let mut with_options = self.ip.clone();
        with_options.options = vec![1, 1, 1, 0];
        let frame = vxlan(&with_options, VNI, &to_vm9);
        let name = "VXLAN with outer IPv4 options for a moved MAC: not re-addressed";
        self.each(name, frame, deferred, dropped(DropReason::ForwardIpOptions));
    }

    /// Truncated at (and one byte short of) every header boundary: Ethernet 14, IPv4 34,
    /// UDP 42, VXLAN 50, inner Ethernet 64, with IPv4 and UDP lengths saying so (a cut
    /// frame whose headers claim more is IP_TOT_LEN, above). BPF_PROG_TEST_RUN refuses an
    /// skb whose IPv4 header is cut (EINVAL), so the TC program sees those lengths only
    /// through XDP's rows.
    fn truncated(&mut self) {
        for len in [14, 33, 34, 41, 42, 49, 50, 63, 64, 84] {
            let frame = truncated(&self.valid, len);
            let name = format!("truncated to {len} bytes");
            let expect = match len {
                ..42 => passed(Forward::PassedToHost),
                42..50 => dropped(DropReason::VxlanInvalidHdr),
                50..64 => dropped(DropReason::InnerTruncated),
                _ => {
                    let inner = Output::Bytes(self.valid[50..len].to_vec());
                    redirected(inner, Forward::Decapsulated)
                }
            };
            match len {
                ..34 => self.xdp(&name, frame, expect),
                // A bare inner Ethernet header: XDP delivers it; the skb helper refuses to
                // shrink an IPv4 skb below an IPv4 header.
                64 => self.each(
                    &name,
                    frame,
                    expect,
                    dropped(DropReason::HeaderAdjustFailed),
                ),
                _ => self.both(&name, frame, expect),
            }
        }
    }
}

/// An edit that breaks a valid frame.
type Fault = fn(&mut Vec<u8>);

/// VXLAN (the VXLAN port, the I flag) of `vni` under outer IPv4 header `ip`, carrying
/// `inner`.
fn vxlan(ip: &Ipv4, vni: u32, inner: &[u8]) -> Vec<u8> {
    from_remote(ip, VXLAN_PORT, VXLAN_FLAG_I, vni, inner)
}

/// A UDP frame from REMOTE's next hop to this VTEP's MAC, to `dport`, carrying a VXLAN
/// header with `flags` and `vni` before `inner`.
fn from_remote(ip: &Ipv4, dport: u16, flags: u8, vni: u32, inner: &[u8]) -> Vec<u8> {
    let udp = packet::udp(54321, dport, &packet::vxlan(flags, vni, inner));
    packet::eth(UNDERLAY_MAC, NEXT_HOP_MAC, ETH_P_IPV4, &ip.packet(&udp))
}

/// The first `len` bytes of VXLAN frame `frame`, its IPv4 and UDP lengths (where it still
/// has those headers) cut to match.
fn truncated(frame: &[u8], len: usize) -> Vec<u8> {
    let mut f = frame[..len].to_vec();
    if len >= IP + 28 {
        f[IP + 2..IP + 4].copy_from_slice(&((len - IP) as u16).to_be_bytes());
        f[IP + 24..IP + 26].copy_from_slice(&((len - IP - 20) as u16).to_be_bytes());
        packet::refresh_ipv4_checksum(&mut f, IP);
    }
    f
}

/// Adds `delta` to the big-endian 16-bit field at `at`.
fn add16(frame: &mut [u8], at: usize, delta: i32) {
    let v = i32::from(u16::from_be_bytes([frame[at], frame[at + 1]])) + delta;
    frame[at..at + 2].copy_from_slice(&(v as u16).to_be_bytes());
}
