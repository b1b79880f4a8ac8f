//! Mutations of generated frames, aimed at the fields their [`Layout`] names.
use super::generate::{Generator, Layout};
use crate::packet;

impl Generator {
    /// One to three mutations of `frame`: bit flips (anywhere, or in the headers), a
    /// field of `layout` set to any byte, a cut or an extension (resealed half the time),
    /// a MAC, VNI or VID swapped for another, or a run of noise.
    pub(super) fn mutate(&mut self, frame: &mut Vec<u8>, layout: &Layout) {
        for _ in 0..1 + self.rng.below(3) {
            let len = frame.len();
            match self.rng.below(8) {
                0 if len > 0 => {
                    let bit = self.rng.below(len * 8);
                    frame[bit / 8] ^= 1 << (bit % 8);
                }
                1 if len > 0 => {
                    let bit = self.rng.below(len.min(80) * 8);
                    frame[bit / 8] ^= 1 << (bit % 8);
                }
                2 if !layout.fields.is_empty() => {
                    let at = self.rng.pick(&layout.fields);
                    if at < len {
                        frame[at] = self.rng.byte();
                    }
                }
                3 => {
                    let cut = if self.rng.percent(60) && !layout.bounds.is_empty() {
                        (self.rng.pick(&layout.bounds) + self.rng.below(3)).saturating_sub(1)
                    } else {
                        self.rng.below(len + 1)
                    };
                    frame.truncate(cut);
                    if self.rng.percent(50) {
                        reseal_ipv4(frame);
                    }
                }
                4 => {
                    let extra = self.rng.some_bytes(1, 40);
                    frame.extend(extra);
                    if self.rng.percent(50) {
                        reseal_ipv4(frame);
                    }
                }
                5 if !layout.macs.is_empty() => {
                    let at = self.rng.pick(&layout.macs);
                    let mac = self.mac();
                    if at + 6 <= len {
                        frame[at..at + 6].copy_from_slice(&mac);
                    }
                }
                6 => {
                    if let Some(at) = layout.vni.filter(|at| at + 3 <= len) {
                        let vni = self.vni().to_be_bytes();
                        frame[at..at + 3].copy_from_slice(&vni[1..]);
                    } else if let Some(at) = layout.tci.filter(|at| at + 2 <= len) {
                        let vid = self.rng.pick(&[0, 10, 30, 40, 50, 60, 99, 4095]);
                        let tci = u16::from_be_bytes([frame[at], frame[at + 1]]) & 0xf000 | vid;
                        frame[at..at + 2].copy_from_slice(&tci.to_be_bytes());
                    }
                }
                _ => {
                    let at = self.rng.below(len.max(1));
                    let n = (1 + self.rng.below(8)).min(len - at.min(len));
                    let noise = self.rng.bytes(n);
                    frame[at..at + n].copy_from_slice(&noise);
                }
            }
        }
    }
}

/// Makes an untagged IPv4 frame's total length, UDP length and header checksum agree with
/// its length again after a cut or an extension, as a sender of a short (or long) frame
/// would have written them: what lies past the outer headers is then what gets tested.
fn reseal_ipv4(frame: &mut [u8]) {
    const IP: usize = 14;
    let len = frame.len();
    if len < IP + 20 || frame[12..14] != [0x08, 0x00] {
        return;
    }
    let ihl = usize::from(frame[IP] & 0x0f) * 4;
    if ihl < 20 || len < IP + ihl {
        return;
    }
    frame[IP + 2..IP + 4].copy_from_slice(&((len - IP) as u16).to_be_bytes());
    let udp = IP + ihl;
    if frame[IP + 9] == 17 && len >= udp + 8 {
        frame[udp + 4..udp + 6].copy_from_slice(&((len - udp) as u16).to_be_bytes());
    }
    packet::refresh_ipv4_checksum(frame, IP);
}
