//! A numbered UDP stream from h3's VM to the migrating VM of a [`MigrationRig`], received
//! apart at the source (h1's VM) and the destination (h2's new incarnation), for the tests
//! of a migration whose source pauses toward the destination (`nve vm pause
//! --migrating-out`): which datagrams arrived where, and when.
use std::{
    sync::{
        Arc, Barrier, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Result, bail};

use crate::{
    live_stream::{Received, receiver, sender},
    three_hosts::MigrationRig,
};

/// Sequence numbers received, by side.
pub type Seen = Arc<Mutex<Received>>;

/// A stream under way.
pub struct Stream {
    at_source: Seen,
    at_destination: Seen,
    next: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    sender: thread::JoinHandle<()>,
    receivers: [thread::JoinHandle<()>; 2],
    pub total: u32,
}

impl Stream {
    /// Starts `rate` datagrams a second for `seconds` from vm3 to the VM; returns once
    /// both sides listen.
    pub fn start(r: &MigrationRig, rate: u32, seconds: u32) -> Self {
        let (at_source, at_destination) = (Seen::default(), Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let bound = Arc::new(Barrier::new(3));
        let receivers = [
            receiver(
                &r.rig.vm1.ns,
                at_source.clone(),
                stop.clone(),
                bound.clone(),
            ),
            receiver(
                &r.new.ns,
                at_destination.clone(),
                stop.clone(),
                bound.clone(),
            ),
        ];
        bound.wait();
        let next = Arc::new(AtomicU32::new(0));
        let total = rate * seconds;
        let sender = sender(&r.rig.vm3.ns, rate, total, next.clone());
        Self {
            at_source,
            at_destination,
            next,
            stop,
            sender,
            receivers,
            total,
        }
    }

    /// How many datagrams have left so far (the next one's number).
    pub fn sent(&self) -> u32 {
        self.next.load(Ordering::Relaxed)
    }

    /// How many have reached the destination so far.
    pub fn at_destination_count(&self) -> usize {
        self.at_destination.lock().unwrap().seqs.len()
    }

    /// How many numbered `from` or above have reached the source so far.
    pub fn at_source_from(&self, from: u32) -> usize {
        self.at_source.lock().unwrap().seqs.range(from..).count()
    }

    /// Waits for the last datagram (and 300 ms for it to arrive), stops the receivers;
    /// the numbers lost from `from` on (received on neither side).
    pub fn finish(self, from: u32) -> Result<Vec<u32>> {
        let sent = self.sender.join();
        thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::Relaxed);
        for r in self.receivers {
            let _ = r.join();
        }
        if sent.is_err() {
            bail!("the sender failed");
        }
        let (src, dst) = (
            self.at_source.lock().unwrap(),
            self.at_destination.lock().unwrap(),
        );
        Ok((from..self.total)
            .filter(|s| !src.seqs.contains(s) && !dst.seqs.contains(s))
            .collect())
    }
}
