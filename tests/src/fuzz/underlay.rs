//! Frames from the underlay: VXLAN to this VTEP (from a known VTEP or a stranger, with
//! IPv4 options, fragment bits, other ports, flags and VNIs), and some that are not VXLAN.
use super::generate::{Generator, Layout};
use crate::{
    packet::{self, Ipv4},
    progtest as pt,
};

impl Generator {
    pub(super) fn underlay(&mut self) -> (Vec<u8>, Layout) {
        if self.rng.percent(10) {
            return self.not_vxlan();
        }
        let (dst, src) = (self.mac(), self.mac());
        let (inner, inner_layout) = self.l2(dst, src, 0);
        let ip = self.outer_ipv4();
        let dport = if self.rng.percent(92) {
            4789
        } else {
            self.rng.pick(&[4790, 8472, 0, 0x12b6, 0xb512])
        };
        let flags = if self.rng.percent(90) {
            0x08
        } else {
            self.rng.pick(&[0x00, 0x0c, 0x88, 0xff, 0xf7, 0x80])
        };
        let vni = self.vni();
        let sport = self.rng.next_u64() as u16;
        let frame = packet::eth(
            pt::UNDERLAY_MAC,
            pt::NEXT_HOP_MAC,
            0x0800,
            &ip.packet(&packet::udp(
                sport,
                dport,
                &packet::vxlan(flags, vni, &inner),
            )),
        );
        let udp = 14 + 20 + ip.options.len();
        (frame, vxlan_layout(udp, &inner_layout))
    }

    /// The outer IPv4 header: mostly from the remote VTEP to ours over UDP, sometimes with
    /// options or fragment bits; any TTL.
    fn outer_ipv4(&mut self) -> Ipv4 {
        let mut ip = Ipv4::new(
            match self.rng.below(10) {
                0 => pt::STRANGER,
                1 => self.ip(),
                _ => pt::REMOTE,
            },
            if self.rng.percent(90) {
                pt::VTEP
            } else {
                self.ip()
            },
            if self.rng.percent(95) {
                17
            } else {
                self.rng.pick(&[1, 6, 47, 255])
            },
        );
        if self.rng.percent(10) {
            let words = 1 + self.rng.below(10);
            ip.options = if self.rng.percent(50) {
                vec![1; words * 4]
            } else {
                self.rng.bytes(words * 4)
            };
        }
        ip.frag = if self.rng.percent(85) {
            self.rng.pick(&[0x4000, 0])
        } else {
            self.rng
                .pick(&[0x2000, 0x0010, 0x8000, 0x4001, 0x3fff, 0x6000, 0xa000])
        };
        ip.ttl = self.rng.byte();
        ip
    }

    fn not_vxlan(&mut self) -> (Vec<u8>, Layout) {
        let frame = match self.rng.below(4) {
            0 => packet::arp_request(pt::NEXT_HOP_MAC, pt::REMOTE, pt::VTEP),
            1 => packet::eth(
                pt::UNDERLAY_MAC,
                pt::NEXT_HOP_MAC,
                0x0800,
                &Ipv4::new(pt::REMOTE, pt::VTEP, 6).packet(&[0; 20]),
            ),
            2 => {
                // VXLAN behind an 802.1Q tag: the underlay is untagged, so not ours.
                let inner = packet::inner_ping(pt::VM1, pt::VM2, 8);
                let mut ip = Ipv4::new(pt::REMOTE, pt::VTEP, 17);
                ip.ttl = 64;
                let f = packet::vxlan_frame(
                    pt::UNDERLAY_MAC,
                    pt::NEXT_HOP_MAC,
                    &ip,
                    1,
                    pt::VNI,
                    &inner,
                );
                packet::eth_tagged(pt::UNDERLAY_MAC, pt::NEXT_HOP_MAC, 5, 0x0800, &f[14..])
            }
            _ => {
                let mut v6 = vec![0x60, 0, 0, 0, 0, 16, 17, 64];
                v6.extend(self.rng.bytes(32 + 16));
                packet::eth(pt::UNDERLAY_MAC, pt::NEXT_HOP_MAC, 0x86dd, &v6)
            }
        };
        let layout = Layout {
            fields: vec![12, 13, 14, 23],
            bounds: vec![14, 34],
            ..Layout::default()
        };
        (frame, layout)
    }
}

/// The layout of a VXLAN frame whose UDP header is at `udp`, around an inner frame laid out
/// as `inner`.
fn vxlan_layout(udp: usize, inner: &Layout) -> Layout {
    let (vxlan, at) = (udp + 8, udp + 16);
    let mut layout = Layout {
        fields: vec![
            12,
            13,
            14,
            20,
            21,
            23,
            29,
            30,
            33,
            udp + 2,
            udp + 3,
            vxlan,
            vxlan + 4,
        ],
        macs: vec![],
        vni: Some(vxlan + 4),
        tci: None,
        bounds: vec![14, 33, 34, udp, udp + 8, vxlan + 8, at + 14, at + 34],
    };
    layout.fields.extend(inner.fields.iter().map(|f| at + f));
    layout.macs.extend(inner.macs.iter().map(|f| at + f));
    layout
}
