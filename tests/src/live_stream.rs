//! A VM migrates h1 -> h2 on a [`MigrationRig`] while h3's VM streams numbered UDP
//! datagrams to it (about `rate` a second): h2 pre-associates (nothing published), the VM
//! pauses on h1 (link down), h1 disassociates with `--migrating-out h2` (forwarding
//! pointer), the VM resumes on h2 and announces itself with a RARP, which activates it and
//! publishes the move. Used by the live-migration test (which asserts on the figures) and
//! the bench (which reports them over several migrations).
use std::{
    collections::BTreeSet,
    fs::File,
    net::UdpSocket,
    ops::Range,
    os::fd::AsRawFd,
    sync::{
        Arc, Barrier, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{
    overlay::{H2_VTEP, VM1_IP, VM1_MAC},
    packet,
    rig::{Netns, send_frames},
    three_hosts::MigrationRig,
};

const PORT: u16 = 9999;
/// Datagrams in flight when the link goes down may die with it: this many before the
/// pause count as sent during it.
const IN_FLIGHT: u32 = 20;

/// What one migration under the stream did.
#[derive(Debug, serde::Serialize)]
pub struct Figures {
    pub sent: u32,
    pub received: usize,
    /// Sequence numbers sent while the VM was paused (from `IN_FLIGHT` before it).
    pub pause: Range<u32>,
    /// How long the VM was paused (link down on h1 to link up and RARP on h2), ms.
    pub pause_ms: f64,
    /// Lost among those sent while the VM was paused.
    pub lost_in_pause: usize,
    /// Lost outside the pause: what the network is responsible for.
    pub lost_otherwise: Vec<u32>,
    /// Datagrams received twice, and after one with a higher sequence number (by either VM).
    pub duplicates: usize,
    pub out_of_order: usize,
    /// The longest run of consecutive datagrams lost, as time at the stream's rate, ms.
    pub longest_gap_ms: f64,
    /// Frames h1 forwarded through its forwarding pointer.
    pub forwarded: u64,
}

/// Runs `f` on a thread inside `ns`.
pub fn in_ns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let path = ns.path();
    thread::spawn(move || {
        let target = File::open(path).expect("netns");
        // SAFETY: setns on this thread only.
        assert_eq!(
            unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
}

/// What the VM's two incarnations received, together.
#[derive(Default)]
pub struct Received {
    pub seqs: BTreeSet<u32>,
    pub duplicates: usize,
    pub out_of_order: usize,
}

impl Received {
    fn add(&mut self, seq: u32) {
        if !self.seqs.insert(seq) {
            self.duplicates += 1;
        } else if self.seqs.last().is_some_and(|&h| seq < h) {
            self.out_of_order += 1;
        }
    }
}

/// Collects the sequence numbers arriving on UDP `PORT` in `ns` until `stop`; waits on
/// `bound` once listening.
pub fn receiver(
    ns: &Netns,
    got: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
    bound: Arc<Barrier>,
) -> thread::JoinHandle<()> {
    in_ns(ns, move || {
        let socket = UdpSocket::bind(("0.0.0.0", PORT)).expect("bind");
        bound.wait();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok(n) = socket.recv(&mut buf)
                && n >= 4
            {
                let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
                got.lock().unwrap().add(seq);
            }
        }
    })
}

/// Sends datagrams 0..`total` from `ns` to the VM's `PORT`, `rate` a second, storing in
/// `next` the number of the next to leave.
pub fn sender(ns: &Netns, rate: u32, total: u32, next: Arc<AtomicU32>) -> thread::JoinHandle<()> {
    in_ns(ns, move || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket.connect((VM1_IP, PORT)).unwrap();
        let start = Instant::now();
        for seq in 0..total {
            // Paced: datagram `seq` leaves at seq / rate seconds.
            let due = Duration::from_secs_f64(f64::from(seq) / f64::from(rate));
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                thread::sleep(wait);
            }
            let _ = socket.send(&seq.to_be_bytes());
            next.store(seq + 1, Ordering::Relaxed);
        }
    })
}

/// The longest run of consecutive numbers in `lost` (sorted).
fn longest_run(lost: &[u32]) -> u32 {
    let (mut best, mut run, mut last) = (0, 0, None);
    for &s in lost {
        run = if last.is_some_and(|l: u32| l + 1 == s) {
            run + 1
        } else {
            1
        };
        best = best.max(run);
        last = Some(s);
    }
    best
}

/// Streams `rate` datagrams a second for `seconds` from vm3 to the VM and migrates it one
/// second in. `vmx`: the migrating VM's UUID on the rig.
pub fn migrate_under_stream(r: &MigrationRig, rate: u32, seconds: u32) -> Result<Figures> {
    let (d1, rig, new) = (&r.d1, &r.rig, &r.new);
    // The destination pre-associates the VM's new incarnation (not running yet).
    r.pre_associate_on_h2()?;

    let got = Arc::new(Mutex::new(Received::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let bound = Arc::new(Barrier::new(3));
    let receivers = [
        receiver(&rig.vm1.ns, got.clone(), stop.clone(), bound.clone()),
        receiver(&new.ns, got.clone(), stop.clone(), bound.clone()),
    ];
    // Both listening before the first datagram leaves.
    bound.wait();
    let next = Arc::new(AtomicU32::new(0));
    let total = rate * seconds;
    let sender = sender(&rig.vm3.ns, rate, total, next.clone());

    // The move, a second into the stream.
    thread::sleep(Duration::from_secs(1));
    let paused_at = next.load(Ordering::Relaxed);
    let paused = Instant::now();
    let moved = (|| -> Result<()> {
        rig.vm1.ns.ip(&["link", "set", "eth0", "down"])?;
        let vm = r.vmx.as_str();
        d1.nve(&["vm", "disassociate", "--vm", vm, "--migrating-out", H2_VTEP])?;
        new.ns.ip(&["link", "set", "eth0", "up"])?;
        send_frames(&new.ns, "eth0", &[packet::rarp(VM1_MAC)])
    })();
    let pause_ms = paused.elapsed().as_secs_f64() * 1e3;
    let resumed_at = next.load(Ordering::Relaxed);

    let sent = sender.join();
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for r in receivers {
        let _ = r.join();
    }
    moved?;
    if sent.is_err() {
        bail!("the sender failed");
    }
    let got = got.lock().unwrap();
    let pause = paused_at.saturating_sub(IN_FLIGHT)..resumed_at;
    let lost: Vec<u32> = (0..total).filter(|s| !got.seqs.contains(s)).collect();
    let (during_pause, otherwise): (Vec<u32>, Vec<u32>) =
        lost.iter().partition(|s| pause.contains(s));
    Ok(Figures {
        sent: total,
        received: got.seqs.len(),
        pause,
        pause_ms,
        lost_in_pause: during_pause.len(),
        lost_otherwise: otherwise,
        duplicates: got.duplicates,
        out_of_order: got.out_of_order,
        longest_gap_ms: f64::from(longest_run(&lost)) * 1e3 / f64::from(rate),
        forwarded: d1.counter("underlay_rx", "FORWARDED_TO_VTEP")?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn longest_run_counts_consecutive_numbers() {
        assert_eq!(super::longest_run(&[]), 0);
        assert_eq!(super::longest_run(&[3, 5, 6, 7, 9]), 3);
    }
}
