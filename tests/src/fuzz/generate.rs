//! Frames for the fuzzer from the test configuration's building blocks (its MACs, VNIs,
//! VIDs and addresses, and some that are none of them), each with the [`Layout`] that lets
//! the mutations (`mutate.rs`) aim at its fields. Underlay frames are in `underlay.rs`, a
//! VM's in `vm.rs`.
use std::net::{Ipv4Addr, Ipv6Addr};

use super::rng::Rng;
use crate::{
    packet::{self, BROADCAST, Ipv4},
    progtest::{self as pt, Program},
};

/// Where the fields of a generated frame are, for mutations that aim at them.
#[derive(Default)]
pub(super) struct Layout {
    /// Single bytes worth randomizing (types, lengths, flags, addresses).
    pub(super) fields: Vec<usize>,
    /// Offsets of MAC addresses.
    pub(super) macs: Vec<usize>,
    /// Offset of a 24-bit VNI.
    pub(super) vni: Option<usize>,
    /// Offset of an 802.1Q TCI.
    pub(super) tci: Option<usize>,
    /// Header boundaries, where truncation is most interesting.
    pub(super) bounds: Vec<usize>,
}

/// Frames from the configuration's building blocks, then mutated.
pub struct Generator {
    pub(super) rng: Rng,
}

const MULTICAST: [u8; 6] = [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb];
const IPV6_MULTICAST: [u8; 6] = [0x33, 0x33, 0x00, 0x00, 0x00, 0x01];
const MACS: [[u8; 6]; 16] = [
    pt::VM1,
    pt::VM2,
    pt::VM3,
    pt::VM4,
    pt::VM5,
    pt::VM6,
    pt::VM7,
    pt::VM8,
    pt::VM9,
    pt::VM10,
    pt::UNKNOWN,
    BROADCAST,
    MULTICAST,
    IPV6_MULTICAST,
    pt::NEXT_HOP_MAC,
    pt::UNDERLAY_MAC,
];

impl Generator {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Rng::new(seed),
        }
    }

    /// A frame for `program`, and whether it was mutated.
    pub fn frame(&mut self, program: Program) -> (Vec<u8>, bool) {
        let (mut frame, layout) = match program {
            Program::XdpUnderlayRx | Program::TcUnderlayRx => self.underlay(),
            Program::TcVmEgress => self.vm(),
            Program::TcTunnelRx | Program::XdpPass => {
                let (dst, src) = (self.mac(), self.mac());
                self.l2(dst, src, 0)
            }
        };
        let mutated = self.rng.percent(50);
        if mutated {
            self.mutate(&mut frame, &layout);
        }
        (frame, mutated)
    }

    pub(super) fn mac(&mut self) -> [u8; 6] {
        match self.rng.below(12) {
            0 => {
                let mut m: [u8; 6] = self.rng.bytes(6).try_into().expect("6 bytes");
                m[0] &= 0xfe;
                m
            }
            1 => self.rng.bytes(6).try_into().expect("6 bytes"),
            _ => self.rng.pick(&MACS),
        }
    }

    pub(super) fn vni(&mut self) -> u32 {
        if self.rng.percent(75) {
            return self.rng.pick(&[pt::VNI, pt::VNI_TAGGED, pt::VNI_EMPTY]);
        }
        let random = self.rng.next_u64() as u32 & 0xff_ffff;
        self.rng
            .pick(&[0, 999, 0xff_ffff, pt::VNI | 0x01_0000, pt::VNI << 8, random])
    }

    pub(super) fn ip(&mut self) -> Ipv4Addr {
        let random = Ipv4Addr::from(self.rng.next_u64() as u32);
        self.rng.pick(&[
            pt::VTEP,
            pt::REMOTE,
            Ipv4Addr::new(10, 0, 0, 9),
            pt::KNOWN_IP,
            Ipv4Addr::new(192, 168, 30, 1),
            Ipv4Addr::new(192, 168, 10, 1),
            pt::VM7_IP,
            Ipv4Addr::UNSPECIFIED,
            random,
        ])
    }

    pub(super) fn ipv6(&mut self) -> Ipv6Addr {
        let random: [u8; 16] = self.rng.bytes(16).try_into().expect("16 bytes");
        self.rng.pick(&[
            pt::VM7_IPV6,
            pt::VM7_IPV6,
            pt::KNOWN_IPV6,
            Ipv6Addr::UNSPECIFIED,
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 7),
            Ipv6Addr::new(0xfebf, 0, 0, 0, 0, 0, 0, 7),
            Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 7),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 8),
            random.into(),
        ])
    }

    /// An Ethernet frame a VM could send, from `src` to `dst`, of about `size` bytes (0: a
    /// small one).
    pub(super) fn l2(&mut self, dst: [u8; 6], src: [u8; 6], size: usize) -> (Vec<u8>, Layout) {
        let mut layout = Layout {
            fields: vec![12, 13, 14],
            macs: vec![0, 6],
            bounds: vec![0, 6, 12, 14],
            ..Layout::default()
        };
        let frame = if size > 0 {
            packet::inner_ping(dst, src, size.saturating_sub(42))
        } else {
            match self.rng.below(9) {
                0 => packet::inner_ping(dst, src, self.rng.below(80)),
                1 => {
                    let ip = Ipv4::new(self.ip(), self.ip(), 1);
                    let echo = packet::icmp_echo(1, 1, self.rng.below(40));
                    layout.fields.extend([26, 29]);
                    packet::eth(dst, src, 0x0800, &ip.packet(&echo))
                }
                2 | 3 => {
                    let (sender, target) = (self.ip(), self.ip());
                    let mut f = packet::arp_request(src, sender, target);
                    if self.rng.percent(25) {
                        f[..6].copy_from_slice(&dst);
                    }
                    layout.fields.extend([20, 21, 28, 31, 41]);
                    layout.bounds.extend([22, 42]);
                    f
                }
                4 => {
                    let (asker, owner) = (self.ip(), self.ip());
                    packet::arp_reply(dst, asker, src, owner)
                }
                5 => {
                    let (from, to) = (self.ipv6(), self.ipv6());
                    let next = self.rng.pick(&[58, 58, 17, 6, 0]);
                    let payload = match self.rng.below(3) {
                        0 if next == 58 => {
                            let target = self.ipv6();
                            packet::neighbour_advert(target, src)
                        }
                        1 => vec![128, 0, 0, 0, 0, 1, 0, 1],
                        _ => self.rng.some_bytes(0, 40),
                    };
                    layout.fields.extend([20, 22, 23, 37, 54, 62, 77]);
                    layout.bounds.extend([54, 55, 62, 78]);
                    packet::eth(dst, src, 0x86dd, &packet::ipv6(from, to, next, &payload))
                }
                6 => {
                    let vid = self.rng.below(4096) as u16;
                    let ethertype = self.rng.pick(&[0x0800, 0x0806, 0x8100, 0x88a8]);
                    let payload = self.rng.some_bytes(0, 60);
                    layout.fields.extend([15, 16, 17]);
                    packet::eth_tagged(dst, src, vid, ethertype, &payload)
                }
                7 => {
                    let ethertype = self.rng.pick(&[0x88cc, 0x05dc, 0x0600, 0x8847, 0x0842]);
                    let payload = self.rng.some_bytes(0, 64);
                    packet::eth(dst, src, ethertype, &payload)
                }
                _ => {
                    let ip = Ipv4::new(self.ip(), self.ip(), 17);
                    let payload = self.rng.some_bytes(0, 40);
                    let udp = packet::udp(self.rng.next_u64() as u16, 53, &payload);
                    packet::eth(dst, src, 0x0800, &ip.packet(&udp))
                }
            }
        };
        (frame, layout)
    }
}
