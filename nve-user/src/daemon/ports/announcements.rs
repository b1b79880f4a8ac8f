//! The announcements port: reads the announcements VMs made (`NVE_EVENTS`, written by the
//! dataplane) and submits them to the writer as `Event::Learn`, like any change.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::{MapData, RingBuf};
use nve_common::maps::{ANNOUNCE_GARP, ANNOUNCE_NA, ANNOUNCE_RARP, Announcement};
use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    daemon::handle::Handle,
    mac::MacAddr,
    model::{Announced, Event},
    netlink,
};

/// What the model learns from one record; `None` for a record it cannot place (a port
/// gone since).
fn announced(a: &Announcement) -> Option<Announced> {
    let ip = match a.kind {
        ANNOUNCE_GARP => {
            let v4: [u8; 4] = a.ip[..4].try_into().expect("4 bytes");
            Some(IpAddr::V4(Ipv4Addr::from(v4)))
        }
        ANNOUNCE_NA => Some(IpAddr::V6(Ipv6Addr::from(a.ip))),
        ANNOUNCE_RARP => None,
        _ => return None,
    };
    Some(Announced {
        vni: a.vni,
        port: netlink::ifname(a.ifindex)?,
        vid: a.vid,
        mac: MacAddr(a.mac),
        ip,
    })
}

/// Runs until the ring buffer cannot be polled any more.
pub async fn learn(handle: Handle, ring: RingBuf<MapData>) {
    // SAFETY: the ring buffer owns its map fd and keeps that same fd open for as long as it
    // lives, which is as long as the AsyncFd that owns it.
    let registered = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) };
    let mut ring = match registered {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("polling the announcement ring buffer: {e}");
            return;
        }
    };
    loop {
        let Ok(mut guard) = ring.readable_mut().await else {
            return;
        };
        let mut events = Vec::new();
        let inner = guard.get_inner_mut();
        while let Some(item) = inner.next() {
            if item.len() < size_of::<Announcement>() {
                continue;
            }
            // SAFETY: the record holds an Announcement the dataplane wrote; any bit
            // pattern is a valid Announcement.
            let record: Announcement =
                unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Announcement) };
            if let Some(a) = announced(&record) {
                events.push(Event::Learn(a));
            }
        }
        guard.clear_ready();
        if events.is_empty() {
            continue;
        }
        // Queued together, so the writer applies them as one change.
        let results =
            futures_util::future::join_all(events.iter().map(|e| handle.submit(e.clone())));
        for (event, result) in events.iter().zip(results.await) {
            if let Err(e) = result {
                tracing::info!(?event, "announcement not learned: {}", e.message);
            }
        }
    }
}
