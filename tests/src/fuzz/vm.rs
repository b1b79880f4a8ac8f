//! Frames a VM sends on the test port: ARP requests and neighbour solicitations (the
//! suppression candidates among them), frames around the MTU and any other Ethernet frame,
//! untagged or tagged.
use std::net::Ipv4Addr;

use super::generate::{Generator, Layout};
use crate::{
    packet::{self, BROADCAST},
    progtest as pt,
};

impl Generator {
    /// A frame a VM sends on the test port: untagged, priority-tagged, tagged with one of
    /// the port's VIDs or another, sometimes with a second tag of its own.
    pub(super) fn vm(&mut self) -> (Vec<u8>, Layout) {
        let vid = match self.rng.below(20) {
            0..7 => None,
            7 => Some(0),
            8 => Some(self.rng.below(4096) as u16),
            9 => Some(self.rng.pick(&[40, 60, 99, 4095])),
            _ => Some(self.rng.pick(&[pt::VID, 30, 50])),
        };
        let dst = match self.rng.below(10) {
            0 | 1 => BROADCAST,
            _ => self.mac(),
        };
        let src = if vid == Some(50) && self.rng.percent(70) {
            pt::VM7
        } else {
            self.mac()
        };
        let (frame, layout) = self.vm_untagged(dst, src);
        let Some(vid) = vid else {
            return (frame, layout);
        };
        self.tagged(&frame, layout, vid)
    }

    /// What the VM sends before any tag: `src` to `dst`.
    fn vm_untagged(&mut self, dst: [u8; 6], src: [u8; 6]) -> (Vec<u8>, Layout) {
        match self.rng.below(20) {
            0..3 => {
                // An ARP request, the suppression candidates among them.
                let (other_target, other_sender) = (self.ip(), self.ip());
                let target = self.rng.pick(&[pt::KNOWN_IP, pt::KNOWN_IP, other_target]);
                let sender = self
                    .rng
                    .pick(&[Ipv4Addr::new(192, 168, 30, 1), other_sender]);
                let mut f = packet::arp_request(src, sender, target);
                if self.rng.percent(10) {
                    f[..6].copy_from_slice(&dst);
                }
                let layout = Layout {
                    fields: vec![12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 28, 31, 41],
                    macs: vec![0, 6, 22],
                    bounds: vec![14, 22, 41, 42],
                    ..Layout::default()
                };
                (f, layout)
            }
            3 | 4 => {
                // A neighbour solicitation, the suppression candidates among them.
                let (asker, other) = (self.ipv6(), self.ipv6());
                let target = self.rng.pick(&[pt::KNOWN_IPV6, pt::KNOWN_IPV6, other]);
                let mut f = packet::neighbour_solicit(src, asker, target);
                if self.rng.percent(10) {
                    f[..6].copy_from_slice(&dst);
                }
                let layout = Layout {
                    // Hop limit, ICMPv6 type and code, the target's last byte.
                    fields: vec![12, 13, 20, 21, 37, 54, 55, 77],
                    macs: vec![0, 6],
                    bounds: vec![14, 54, 56, 62, 78],
                    ..Layout::default()
                };
                (f, layout)
            }
            5 => {
                // Around the largest frame the underlay MTU carries (1464 bytes untagged).
                let size = 1464 + self.rng.below(7) - 3;
                self.l2(dst, src, size)
            }
            _ => self.l2(dst, src, 0),
        }
    }

    /// `frame` with an 802.1Q tag of `vid` (any priority), sometimes a second tag inside,
    /// and `layout` moved along.
    fn tagged(&mut self, frame: &[u8], mut layout: Layout, vid: u16) -> (Vec<u8>, Layout) {
        let tci = (self.rng.below(8) as u16) << 13 | vid;
        let mut tagged = frame[..12].to_vec();
        tagged.extend_from_slice(&0x8100u16.to_be_bytes());
        tagged.extend_from_slice(&tci.to_be_bytes());
        if self.rng.percent(8) {
            // A second tag: the VM's own VLANs inside its VN.
            let tpid = self.rng.pick(&[0x8100u16, 0x88a8]);
            tagged.extend_from_slice(&tpid.to_be_bytes());
            tagged.extend_from_slice(&(self.rng.below(4096) as u16).to_be_bytes());
        }
        let shift = tagged.len() - 12;
        tagged.extend_from_slice(&frame[12..]);
        for f in layout.fields.iter_mut().chain(&mut layout.bounds) {
            if *f >= 12 {
                *f += shift;
            }
        }
        for m in layout.macs.iter_mut().filter(|m| **m >= 12) {
            *m += shift;
        }
        layout.fields.extend([12, 13, 14, 15]);
        layout.bounds.extend([13, 16, 17, 18]);
        layout.tci = Some(14);
        (tagged, layout)
    }
}
