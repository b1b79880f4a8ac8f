//! How a port reaches the writer: commands on a bounded channel, answers on a oneshot, and
//! the snapshot the writer publishes after each batch. The one door every input uses.
use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    api::{NvaStatus, StatsView, VdpSessionView},
    dataplane::{Counters, DataplaneError, MonitorRing},
    error::{Error, ErrorCode},
    model::Event,
};

use super::writer::{Command, Reply, Snapshot};

/// Commands the writer's queue holds before senders wait (or the API answers E_BUSY).
pub const QUEUE: usize = 4096;

/// A port's way to the writer: changes in, snapshots and counters out.
#[derive(Clone)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
    published: watch::Receiver<Arc<Snapshot>>,
    counters: Arc<Counters>,
    /// The VDP sessions' live state by port (written by the VDP port, read by the API).
    vdp: Arc<Mutex<BTreeMap<String, VdpSessionView>>>,
    /// Link events seen (the writer's port lookups hold until the next).
    link_events: Arc<AtomicU64>,
    /// The monitor's ring buffer while no monitor holds it.
    monitor: Arc<Mutex<Option<MonitorRing>>>,
}

fn gone() -> Error {
    Error::new(ErrorCode::EHost, "the daemon is shutting down")
}

impl Handle {
    pub fn new(
        commands: mpsc::Sender<Command>,
        published: watch::Receiver<Arc<Snapshot>>,
        counters: Counters,
        link_events: Arc<AtomicU64>,
        monitor: Option<MonitorRing>,
    ) -> Self {
        Self {
            commands,
            published,
            counters: Arc::new(counters),
            vdp: Arc::default(),
            link_events,
            monitor: Arc::new(Mutex::new(monitor)),
        }
    }

    /// The monitor's ring buffer, for one monitor at a time (E_BUSY while another has it).
    pub fn take_monitor(&self) -> Result<MonitorRing, Error> {
        let mut ring = self.monitor.lock().unwrap_or_else(|e| e.into_inner());
        ring.take().ok_or_else(|| {
            Error::new(
                ErrorCode::EBusy,
                "another monitor is attached (one at a time): stop it first (one that just \
                 stopped is detached within a second)",
            )
        })
    }

    /// Gives the ring buffer back when a monitor ends.
    pub fn give_back_monitor(&self, ring: MonitorRing) {
        *self.monitor.lock().unwrap_or_else(|e| e.into_inner()) = Some(ring);
    }

    /// Has the writer turn the dataplane's reports to the monitor on (`mode`, one packet in
    /// `sample`) or off (0).
    pub async fn monitor(&self, mode: u32, sample: u32) -> Result<(), Error> {
        let (reply, result) = oneshot::channel();
        self.commands
            .send(Command::Monitor {
                mode,
                sample,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        result.await.map_err(|_| gone())?
    }

    /// The dataplane's counters now (read on the counters' own descriptors, never through
    /// the writer).
    pub fn counters(&self) -> Result<StatsView, Error> {
        self.counters.read().map_err(DataplaneError::to_error)
    }

    /// Queues `event`, waiting for room, and waits for its result (the internal ports: they
    /// slow down rather than lose an event).
    pub async fn submit(&self, event: Event) -> Reply {
        let (reply, result) = oneshot::channel();
        self.commands
            .send(Command::Apply { event, reply })
            .await
            .map_err(|_| gone())?;
        result.await.map_err(|_| gone())?
    }

    /// Queues `event` if there is room (E_BUSY otherwise) and waits for its result (the
    /// API: a full queue is answered at once, it never grows without bound).
    pub async fn try_submit(&self, event: Event) -> Reply {
        let (reply, result) = oneshot::channel();
        self.commands
            .try_send(Command::Apply { event, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Error::new(
                    ErrorCode::EBusy,
                    format!("{QUEUE} changes are waiting already: try again"),
                ),
                mpsc::error::TrySendError::Closed(_) => gone(),
            })?;
        result.await.map_err(|_| gone())?
    }

    /// Counts a link, neighbour or route event at once (what the writer looked up of the
    /// VM ports no longer holds), before the writer hears of the burst.
    pub fn link_event(&self) {
        self.link_events.fetch_add(1, Ordering::AcqRel);
    }

    /// Tells the writer the underlay changed (a link, neighbour or route event).
    pub async fn underlay_changed(&self) {
        let _ = self.commands.send(Command::Underlay).await;
    }

    /// Tells the writer how the NVA's connection is.
    pub async fn nva_status(&self, status: NvaStatus) {
        let _ = self.commands.send(Command::NvaStatus(status)).await;
    }

    /// A VDP session's state now (`None`: it ended).
    pub fn vdp_session(&self, port: &str, view: Option<VdpSessionView>) {
        let mut sessions = self.vdp.lock().unwrap_or_else(|e| e.into_inner());
        match view {
            Some(v) => sessions.insert(port.to_string(), v),
            None => sessions.remove(port),
        };
    }

    /// The VDP sessions' states now.
    pub fn vdp_sessions(&self) -> BTreeMap<String, VdpSessionView> {
        self.vdp.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The state as of the writer's last batch.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.published.borrow().clone()
    }

    /// A receiver that wakes on each new snapshot (what the NVA republishes from).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.published.clone()
    }
}
