//! Packet sockets on a guest's tap (or a host's underlay): which datagram of the stream the
//! device transmitted, and when (kernel timestamps), and the guest's announcements.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    os::fd::OwnedFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::SystemTime,
};

use anyhow::Result;

use super::{GUEST_IP, GUEST_MAC, PORT};
use crate::{
    rig::Netns,
    stamped::{recv_stamped, socket_drops, stamped_socket},
};

/// What a packet socket on a guest's tap saw, with kernel timestamps.
#[derive(Default)]
pub struct TapLog {
    /// The stream's datagrams the device transmitted (a tap: to its guest; the underlay:
    /// re-encapsulated, as through the forwarding pointer): sequence number -> when.
    pub arrivals: BTreeMap<u32, SystemTime>,
    /// QEMU's RARPs from the guest's MAC.
    pub rarps: Vec<SystemTime>,
    /// The guest's gratuitous ARPs.
    pub garps: Vec<SystemTime>,
    /// The stream's sequence numbers in the order the device transmitted them, repeats
    /// included, with when.
    pub order: Vec<(u32, SystemTime)>,
    /// Frames the packet socket itself dropped (then the counts are not trustworthy).
    pub drops: u32,
}

/// Records what `tap` (in `ns`) transmits to its guest and the guest's announcements, until
/// `stop`. Frames the kernel hands the tap are seen as PACKET_OUTGOING before the tap queues
/// them for QEMU (or drops them, its queue full): the network's side of the tap.
pub fn tap_capture(
    ns: &Netns,
    tap: &str,
    stop: Arc<AtomicBool>,
) -> Result<thread::JoinHandle<TapLog>> {
    // ETH_P_ALL: outgoing frames reach only the packet sockets of every protocol.
    let fd = stamped_socket(ns, tap, libc::ETH_P_ALL as u16)?;
    Ok(thread::spawn(move || capture_loop(&fd, &stop)))
}

fn capture_loop(fd: &OwnedFd, stop: &AtomicBool) -> TapLog {
    let mut log = TapLog::default();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Some((n, kind, at)) = recv_stamped(fd, &mut buf) else {
            continue;
        };
        let frame = &buf[..n];
        if kind == libc::PACKET_OUTGOING {
            if let Some(seq) = stream_seq(frame).or_else(|| vxlan_inner(frame).and_then(stream_seq))
            {
                log.arrivals.entry(seq).or_insert(at);
                log.order.push((seq, at));
            }
        } else if frame.get(6..12) == Some(&GUEST_MAC[..]) {
            match announcement(frame) {
                Some(Announcement::Rarp) => log.rarps.push(at),
                Some(Announcement::Garp) => log.garps.push(at),
                None => {}
            }
        }
    }
    log.drops = socket_drops(fd);
    log
}

enum Announcement {
    Rarp,
    Garp,
}

/// A RARP, or an ARP whose sender and target address are both the guest's.
fn announcement(frame: &[u8]) -> Option<Announcement> {
    match frame.get(12..14)? {
        [0x80, 0x35] => Some(Announcement::Rarp),
        [0x08, 0x06] => {
            let guest = GUEST_IP.parse::<Ipv4Addr>().ok()?.octets();
            (frame.get(28..32)? == guest && frame.get(38..42)? == guest)
                .then_some(Announcement::Garp)
        }
        _ => None,
    }
}

/// The inner frame of a VXLAN packet (IPv4, UDP 4789).
fn vxlan_inner(frame: &[u8]) -> Option<&[u8]> {
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    let udp = ip.get(ihl..)?;
    (frame.get(12..14)? == [8, 0] && ip.get(9)? == &17 && udp.get(2..4)? == 4789u16.to_be_bytes())
        .then(|| udp.get(16..))
        .flatten()
}

/// The sequence number of a datagram of the stream (IPv4/UDP to the guest's `PORT`).
fn stream_seq(frame: &[u8]) -> Option<u32> {
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if frame.get(12..14)? != [8, 0]
        || ip.get(9)? != &17
        || ip.get(16..20)? != GUEST_IP.parse::<Ipv4Addr>().ok()?.octets()
    {
        return None;
    }
    let udp = ip.get(ihl..)?;
    if u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]) != PORT {
        return None;
    }
    Some(u32::from_be_bytes(udp.get(8..12)?.try_into().ok()?))
}
