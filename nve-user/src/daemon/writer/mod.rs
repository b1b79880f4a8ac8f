//! The writer: the one task that owns the daemon's state (the model, the dataplane, the
//! store, the underlay's next hops) and the only code that changes it. Every input reaches
//! it the same way, as a [`Command`] on a bounded channel (see `handle.rs`); after each
//! batch it publishes a [`Snapshot`], which is all the ports read, so a read never waits
//! on a write, on netlink or on etcd. Changes that queue up while one is applied are
//! applied together: one dataplane update and one journal write for all of them.
mod arrival_queue;
mod port_cache;
mod sync;

use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use nve_common::maps::{NextHop, TUNNEL_DEV};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    api::{NextHopView, NvaStatus, StatusView, VnicView},
    dataplane::Dataplane,
    error::{Error, ErrorCode},
    mac::MacAddr,
    model::{Event, Keys, Model, Touched},
    netlink,
    store::Store,
};

/// Largest number of queued commands taken as one batch.
const MAX_BATCH: usize = 256;

/// What a change's sender gets back.
pub type Reply = Result<Option<VnicView>, Error>;

/// An input for the writer.
pub enum Command {
    /// Apply an event to the model (and the dataplane, and the journal).
    Apply {
        event: Event,
        reply: oneshot::Sender<Reply>,
    },
    /// A link, neighbour or route changed: bring ports and next hops up to date.
    Underlay,
    /// The NVA's connection as its port sees it (`entries` is the writer's to fill).
    NvaStatus(NvaStatus),
    /// Turn the dataplane's reports to the monitor on or off (`Dataplane::set_monitor`).
    Monitor {
        mode: u32,
        sample: u32,
        reply: oneshot::Sender<Result<(), Error>>,
    },
}

/// What the writer published after its last batch: the committed model and the status.
pub struct Snapshot {
    pub model: Arc<Model>,
    pub status: StatusView,
}

/// Changes of one batch: those not applied yet, and the results of those applied.
#[derive(Default)]
struct Queued {
    events: Vec<Event>,
    replies: Vec<oneshot::Sender<Reply>>,
    answered: Vec<(oneshot::Sender<Reply>, Reply)>,
}

impl Queued {
    fn push(&mut self, event: Event, reply: oneshot::Sender<Reply>) {
        self.events.push(event);
        self.replies.push(reply);
    }

    /// Applies the events not applied yet, as one change.
    async fn apply(&mut self, writer: &mut Writer) {
        if self.events.is_empty() {
            return;
        }
        let results = writer.submit_batch(&self.events).await;
        self.events.clear();
        self.answered.extend(self.replies.drain(..).zip(results));
    }

    fn answer(self) {
        for (reply, result) in self.answered {
            let _ = reply.send(result);
        }
    }
}

/// The daemon's state. Owned by the writer task; nothing else holds it.
pub struct Writer {
    pub(super) model: Arc<Model>,
    pub(super) dataplane: Dataplane,
    pub(super) netlink: rtnetlink::Handle,
    /// What `nve status` shows, less what is derived when published.
    pub(super) status: StatusView,
    pub(super) underlay_mtu: u32,
    /// Next hops whose neighbour entries the kernel keeps resolved for us.
    pub(super) managed_neighbours: BTreeSet<netlink::Route>,
    /// The model on disk.
    pub(super) store: Store,
    /// Remote VTEPs -> their resolved next hop, as written to the dataplane.
    pub(super) next_hops: HashMap<[u8; 4], NextHop>,
    /// The dataplane's FDB, ARP and ND entries above the NVA's, as last written, while the
    /// NVA holds many entries: a change that touches only some NVA entries rewrites those
    /// and these (see `Recompute::Touched`). `None`: not known, the next change rewrites
    /// what differs among all.
    pub(super) above_nva: Option<Keys>,
    /// The remote VTEPs whose next hops were last resolved.
    pub(super) next_hop_vteps: BTreeSet<Ipv4Addr>,
    /// The VM ports as the last sync that wrote the dataplane found them: while they stay
    /// so, a change of vNICs rewrites only their entries. `None`: not known.
    pub(super) synced_ports: Option<HashMap<String, crate::model::PortInfo>>,
    /// The VM ports' interfaces while no link event came (see `port_cache.rs`).
    pub(super) port_cache: port_cache::PortCache,
    /// How long the last batch's stages took (logged at debug level).
    stages: Stages,
}

/// A batch's time by stage: applying it to the model, writing the dataplane (what the
/// packets see), journaling it.
#[derive(Clone, Copy, Debug, Default)]
struct Stages {
    model: Duration,
    dataplane: Duration,
    journal: Duration,
}

impl Stages {
    /// Logs (at debug level) the batch of `events` that started at `started`, answered now.
    fn trace(&self, events: usize, started: Instant) {
        let us = |d: Duration| d.as_micros() as u64;
        tracing::debug!(
            events,
            total_us = us(started.elapsed()),
            model_us = us(self.model),
            dataplane_us = us(self.dataplane),
            journal_us = us(self.journal),
            "batch applied and answered"
        );
    }
}

/// What a batch changed, for the dataplane.
#[derive(Clone, Copy)]
pub enum Change<'a> {
    /// Anything: every entry is compared.
    Any,
    /// The NVA's entries of these keys, and anything but the NVA's.
    Nva(&'a Keys),
    /// Only vNICs, which had and have these entries.
    Vnics(&'a Touched),
}

/// Milliseconds since the epoch: the model's clock (VID quarantine, hold times).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Writer {
    /// A writer over a loaded dataplane, with nothing applied yet.
    pub fn new(
        dataplane: Dataplane,
        netlink: rtnetlink::Handle,
        store: Store,
        status: StatusView,
    ) -> Self {
        Self {
            model: Arc::new(Model::default()),
            dataplane,
            netlink,
            status,
            underlay_mtu: 0,
            managed_neighbours: BTreeSet::new(),
            store,
            next_hops: HashMap::new(),
            above_nva: None,
            next_hop_vteps: BTreeSet::new(),
            synced_ports: None,
            port_cache: port_cache::PortCache::default(),
            stages: Stages::default(),
        }
    }

    /// Takes over the dataplane at start: brings it to `model` (the stored state) by
    /// difference, so entries traffic uses are left alone. Ports that are missing now are
    /// bound when they appear.
    pub async fn start(&mut self, model: Model) -> Result<(), Error> {
        self.sync_with(&model, false, Change::Any).await?;
        self.dataplane
            .drop_unclaimed_links()
            .map_err(crate::dataplane::DataplaneError::to_error)?;
        self.store
            .snapshot(&model)
            .map_err(|e| Error::new(ErrorCode::EHost, format!("writing the snapshot: {e:#}")))?;
        self.model = Arc::new(model);
        self.underlay_mtu = netlink::mtu(&self.netlink, &self.status.underlay)
            .await
            .unwrap_or(0);
        Ok(())
    }

    /// The counter of link events the underlay watch keeps for the writer (its port
    /// lookups hold until the next).
    pub fn link_events(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.port_cache.link_events()
    }

    /// The state as the ports see it.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let mut status = self.status.clone();
        status.vns = self.model.vns().count();
        status.ports = self.model.ports().count();
        if let Some(nva) = status.nva.as_mut() {
            nva.entries = self.model.nva().len();
        }
        status.underlay_mtu = self.underlay_mtu;
        status.vm_mtu = self
            .underlay_mtu
            .saturating_sub(nve_common::wire::VXLAN_IPV4_OVERHEAD);
        status.next_hops = self
            .next_hops
            .iter()
            .map(|(vtep, nh)| NextHopView {
                vtep: Ipv4Addr::from(*vtep),
                ifindex: nh.ifindex,
                mac: MacAddr(nh.dmac),
            })
            .collect();
        status.next_hops.sort_by_key(|n| n.vtep);
        Arc::new(Snapshot {
            model: self.model.clone(),
            status,
        })
    }

    /// Runs the writer until every sender is gone, publishing after each batch; then
    /// hands the state back (for the daemon to keep or tear down).
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        published: watch::Sender<Arc<Snapshot>>,
    ) -> Self {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while commands.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let mut queued = Queued::default();
            for command in batch.drain(..) {
                match command {
                    Command::Apply { event, reply } => queued.push(event, reply),
                    Command::Underlay => {
                        // What queued before it goes first.
                        queued.apply(&mut self).await;
                        self.follow_underlay().await;
                    }
                    Command::NvaStatus(s) => self.status.nva = Some(s),
                    Command::Monitor {
                        mode,
                        sample,
                        reply,
                    } => {
                        let set = self.dataplane.set_monitor(mode, sample);
                        let _ = reply.send(set.map_err(crate::dataplane::DataplaneError::to_error));
                    }
                }
            }
            let started = Instant::now();
            self.stages = Stages::default();
            let events = queued.events.len();
            queued.apply(&mut self).await;
            // Published before anyone hears back: a sender's next read sees its change.
            published.send_replace(self.snapshot());
            queued.answer();
            self.stages.trace(events, started);
        }
        self
    }

    /// Applies one event (see [`Writer::submit_batch`]).
    pub async fn submit(&mut self, event: Event) -> Reply {
        self.submit_batch(std::slice::from_ref(&event))
            .await
            .remove(0)
    }

    /// Applies events in order to a copy of the model (each accepted or refused on its
    /// own, a refused one changing nothing), then brings the dataplane to the result once
    /// and journals the accepted events; the model is committed only if both succeeded,
    /// otherwise every accepted event gets that error.
    pub async fn submit_batch(&mut self, events: &[Event]) -> Vec<Reply> {
        let now = now();
        let started = Instant::now();
        let mut next = (*self.model).clone();
        let mut results = Vec::with_capacity(events.len());
        let mut accepted = Vec::new();
        // The NVA's entries the batch changes: only those are rewritten (all after a full
        // table, or when VNs came or went).
        let mut touched = Some(Keys::default());
        // A batch of signaling only: the vNICs' entries before and after, and whether any
        // message changed the model (a repeat does not).
        let mut vnics = Some(Touched::default());
        let mut vnics_changed = false;
        for event in events {
            match (event, touched.as_mut()) {
                (Event::NvaDelta(delta), Some(keys)) => next.nva_keys(delta, keys),
                (Event::Nva(_), _) => touched = None,
                _ => {}
            }
            let before = match (event, vnics.as_mut()) {
                (Event::Signal { id, req }, Some(t)) => {
                    next.vnic_touches(id, t);
                    Some(next.signal_footprint(id, req))
                }
                _ => {
                    vnics = None;
                    None
                }
            };
            let result = next.apply(event, now);
            if result.is_ok() {
                accepted.push(event);
                if let (Event::Signal { id, req }, Some(t), Some(before)) =
                    (event, vnics.as_mut(), before)
                {
                    next.vnic_touches(id, t);
                    vnics_changed |= next.signal_footprint(id, req) != before;
                }
            }
            results.push(result);
        }
        self.stages.model += started.elapsed();
        if accepted.is_empty() {
            return results;
        }
        let unchanged = match vnics {
            Some(_) => !vnics_changed,
            None => next == *self.model,
        };
        let change = match (&vnics, &touched) {
            _ if next.vnis() != self.model.vnis() => Change::Any,
            (Some(t), _) => Change::Vnics(t),
            (None, Some(keys)) => Change::Nva(keys),
            (None, None) => Change::Any,
        };
        if unchanged {
            return results;
        }
        let persisted = self
            .move_to(next, change, |store, model| {
                accepted
                    .iter()
                    .try_for_each(|e| store.append(e, now, model))
            })
            .await;
        match persisted {
            Ok(()) => results,
            Err(e) => results.into_iter().map(|r| r.and(Err(e.clone()))).collect(),
        }
    }

    /// Brings the dataplane to `next` (which differs from the committed model by `change`)
    /// and persists it; commits `next` only if both succeeded, else brings the dataplane
    /// back to the committed model.
    async fn move_to(
        &mut self,
        next: Model,
        change: Change<'_>,
        persist: impl FnOnce(&mut Store, &Model) -> Result<(), crate::store::StoreError>,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let synced = self.sync_with(&next, true, change).await;
        let written = Instant::now();
        self.stages.dataplane += written - started;
        let result = synced.and_then(|()| {
            persist(&mut self.store, &next)
                .map_err(|e| Error::new(ErrorCode::EHost, format!("persisting the change: {e:#}")))
        });
        self.stages.journal += written.elapsed();
        if let Err(e) = result {
            let current = self.model.clone();
            if let Err(again) = self.sync_with(&current, true, Change::Any).await {
                tracing::error!("restoring the dataplane after a failed change: {again}");
            }
            return Err(e);
        }
        self.model = Arc::new(next);
        Ok(())
    }

    /// Detaches and unpins the dataplane, removes the tunnel device and the managed
    /// neighbours: nothing is left.
    pub async fn teardown(self) {
        self.dataplane.teardown();
        for route in &self.managed_neighbours {
            if let Err(e) = netlink::forget_neighbour(&self.netlink, *route).await {
                tracing::warn!(hop = %route.hop, "removing managed neighbour: {e}");
            }
        }
        if let Err(e) = netlink::delete_link(&self.netlink, TUNNEL_DEV).await {
            tracing::warn!("removing {TUNNEL_DEV}: {e:#}");
        }
    }
}
