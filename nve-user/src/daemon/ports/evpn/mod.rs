//! The NVA port on BGP EVPN (`nve daemon --nva bgp`, `"bgp"` in the config file): a
//! session per neighbour (`session.rs`), and the core here, which owns the neighbours'
//! routes (Adj-RIB-In, kept for a stale time when a session drops: graceful restart as
//! receiver), turns them into the NVA's claims for the same table and mobility rules as
//! etcd (`nva_link`), and advertises what this NVE publishes as type 2 and 3 routes.
mod session;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::Duration,
};

use tokio::{sync::mpsc, time::Instant};

use super::nva_link::{Link, install, install_all, local_entries};
use crate::{
    api::NvaNeighbor,
    daemon::handle::Handle,
    evpn::{
        config::{BgpConfig, Routing},
        rib::{Import, Ribs},
        route::Route,
        translate::{self, Advert, Speaker},
        wire::{Message, Update},
    },
    model::Model,
    nva::{Entry, Mobility, claims::Claims},
};

use session::{Local, Up};

/// How often stale routes are looked at.
const TICK: Duration = Duration::from_secs(1);

/// A neighbour as the core knows it.
struct Peer {
    address: IpAddr,
    remote_as: u32,
    tx: mpsc::Sender<Vec<Message>>,
    established: Option<Instant>,
    /// Routes of a session that went down (or before its End-of-RIB after coming back),
    /// and until when they are kept.
    stale: HashSet<Route>,
    stale_until: Option<Instant>,
    /// How long its routes outlive its session: the restart time of its graceful-restart
    /// capability, at most the configured stale time.
    stale_for: Duration,
    sent: usize,
    last_error: Option<String>,
}

struct Core {
    link: Link,
    cfg: BgpConfig,
    vtep: Ipv4Addr,
    peers: Vec<Peer>,
    /// What this NVE publishes (as the etcd backend would), and its routes.
    published: BTreeMap<String, Entry>,
    advertised: HashMap<Route, Advert>,
    from: Option<Arc<Model>>,
    /// The neighbours' routes (by the index of `peers`).
    ribs: Ribs,
    /// Each VN's RD and route targets, by VNI (as of the last snapshot).
    routing: BTreeMap<u32, Routing>,
    /// Every claim: this NVE's and those the neighbours' routes make.
    claims: Claims,
    mobility: Mobility,
    /// The model got the whole table once (after the first End-of-RIB, or a stale time).
    synced: bool,
    started: Instant,
}

/// Runs until the daemon stops.
pub async fn run(handle: Handle, cfg: BgpConfig, vtep: Ipv4Addr) {
    let (up_tx, mut ups) = mpsc::channel(1024);
    let local = Local {
        asn: cfg.asn,
        router_id: cfg.router_id(vtep),
        hold_time: cfg.hold_time,
    };
    let mut peers = Vec::new();
    for n in &cfg.neighbors {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(session::run(n.clone(), local.clone(), up_tx.clone(), rx));
        peers.push(Peer {
            address: n.address,
            remote_as: n.remote_as,
            tx,
            established: None,
            stale: HashSet::new(),
            stale_until: None,
            stale_for: Duration::from_secs(cfg.stale_time),
            sent: 0,
            last_error: None,
        });
    }
    let endpoint = format!("bgp AS {} ({} neighbors)", cfg.asn, cfg.neighbors.len());
    let mut core = Core {
        link: Link::new(handle.clone(), endpoint),
        cfg,
        vtep,
        ribs: Ribs::new(peers.len()),
        routing: BTreeMap::new(),
        peers,
        published: BTreeMap::new(),
        advertised: HashMap::new(),
        from: None,
        claims: Claims::default(),
        mobility: Mobility::default(),
        synced: false,
        started: Instant::now(),
    };
    let mut snapshots = handle.subscribe();
    let mut tick = tokio::time::interval(TICK);
    // What the state dir holds is advertised from the first session on.
    let model = snapshots.borrow_and_update().model.clone();
    core.publish(&model).await;
    core.report().await;
    loop {
        tokio::select! {
            Some(up) = ups.recv() => core.on_up(up).await,
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
                let model = snapshots.borrow_and_update().model.clone();
                core.publish(&model).await;
            }
            _ = tick.tick() => core.expire().await,
        }
    }
}

impl Core {
    fn speaker(&self) -> Speaker {
        Speaker {
            asn: self.cfg.asn,
            vtep: self.vtep,
        }
    }

    /// Each VN's RD and route targets, by VNI.
    fn routing(&self, model: &Model) -> BTreeMap<u32, Routing> {
        model
            .vns()
            .map(|(name, vn)| (vn.vni, self.cfg.routing(name, vn.vni, self.vtep)))
            .collect()
    }

    fn peer(&self, address: IpAddr) -> Option<usize> {
        self.peers.iter().position(|p| p.address == address)
    }

    async fn on_up(&mut self, up: Up) {
        match up {
            Up::Established { peer, open } => {
                let restart = open
                    .caps
                    .graceful_restart
                    .map(|g| u64::from(g.restart_time));
                let stale = self.cfg.stale_time;
                let stale_for = Duration::from_secs(restart.map_or(stale, |r| r.min(stale)));
                let asn = self.cfg.asn;
                let remote = self.peer(peer).map_or(asn, |i| self.peers[i].remote_as);
                let table = translate::for_neighbour(&self.full_table(), asn, remote);
                if let Some(i) = self.peer(peer) {
                    let routes: HashSet<Route> = self.ribs.keys(i).cloned().collect();
                    let p = &mut self.peers[i];
                    p.established = Some(Instant::now());
                    p.last_error = None;
                    p.stale_for = stale_for;
                    // What it had is stale until its End-of-RIB says what is still there.
                    p.stale = routes;
                    p.stale_until = Some(Instant::now() + stale_for);
                    p.sent = table.iter().map(announced).sum();
                    let _ = p.tx.send(table).await;
                }
                tracing::info!(neighbor = %peer, "BGP session established");
            }
            Up::Update { peer, update } => self.on_update(peer, update).await,
            Up::Down { peer, error } => {
                if let Some(i) = self.peer(peer) {
                    let routes: HashSet<Route> = self.ribs.keys(i).cloned().collect();
                    let p = &mut self.peers[i];
                    if p.established.take().is_some() {
                        p.stale = routes;
                        p.stale_until = Some(Instant::now() + p.stale_for);
                    }
                    p.last_error = Some(error);
                }
            }
        }
        self.report().await;
    }

    async fn on_update(&mut self, peer: IpAddr, update: Update) {
        let Some(i) = self.peer(peer) else { return };
        let import = Import {
            routing: &self.routing,
            own: self.vtep.into(),
        };
        let mut touched = BTreeSet::new();
        let p = &mut self.peers[i];
        for route in &update.withdrawn {
            let key = route.key();
            self.ribs.withdraw(i, &key, &mut touched);
            p.stale.remove(&key);
        }
        // Routes that went round back to this NVE (its AS in the path, or a route
        // reflector's copy of its own) are not taken (RFC 4271 s.9.1.2, RFC 4456 s.8).
        let router_id = self.cfg.router_id(self.vtep);
        let looped = update.attributes.as_ref().is_some_and(|a| {
            a.as_path.contains(&self.cfg.asn) || a.originator_id == Some(router_id)
        });
        if let Some(attrs) = update.attributes.as_ref().filter(|_| !looped) {
            for route in &update.announced {
                self.ribs.announce(i, route, attrs, &import, &mut touched);
                p.stale.remove(&route.key());
            }
        }
        if update.end_of_rib {
            for key in std::mem::take(&mut p.stale) {
                self.ribs.withdraw(i, &key, &mut touched);
            }
            p.stale_until = None;
        }
        self.reclaim(&touched).await;
        if update.end_of_rib && !self.synced {
            self.sync_all().await;
        }
    }

    /// Stale routes whose time ran out go.
    async fn expire(&mut self) {
        let now = Instant::now();
        let mut touched = BTreeSet::new();
        for (i, p) in self.peers.iter_mut().enumerate() {
            if p.stale_until.is_some_and(|t| t <= now) {
                for key in std::mem::take(&mut p.stale) {
                    self.ribs.withdraw(i, &key, &mut touched);
                }
                p.stale_until = None;
            }
        }
        self.reclaim(&touched).await;
        let grace = Duration::from_secs(self.cfg.stale_time);
        if !self.synced && self.started.elapsed() >= grace {
            self.sync_all().await;
        }
        self.report().await;
    }

    /// Brings the claims `touched` to the neighbours' routes and hands the model what
    /// changed.
    async fn reclaim(&mut self, touched: &BTreeSet<String>) {
        if touched.is_empty() {
            return;
        }
        let import = Import {
            routing: &self.routing,
            own: self.vtep.into(),
        };
        let mut macs = BTreeSet::new();
        for (key, entry) in self.ribs.claims(touched, &import) {
            let id = match entry {
                Some(e) => self.claims.put_entry(key, e),
                None => self.claims.delete(key),
            };
            macs.extend(id);
        }
        if !self.synced {
            return;
        }
        let vtep = self.vtep.into();
        let handle = self.link.handle().clone();
        if let Err(e) = install(&handle, &self.claims, &macs, vtep, &mut self.mobility).await {
            tracing::warn!("installing EVPN routes: {e:#}");
        }
        self.link.duplicates(&self.mobility).await;
    }

    /// The first full install: replaces what the model kept from before (the state dir's
    /// NVA table) with what the neighbours say now.
    async fn sync_all(&mut self) {
        self.synced = true;
        let handle = self.link.handle().clone();
        let vtep = self.vtep.into();
        if let Err(e) = install_all(&handle, &self.claims, vtep, &mut self.mobility).await {
            tracing::warn!("installing EVPN routes: {e:#}");
        }
        self.link.duplicates(&self.mobility).await;
    }

    /// Advertises what `model` has this NVE publish, by difference.
    async fn publish(&mut self, model: &Arc<Model>) {
        if self.from.as_ref().is_some_and(|m| Arc::ptr_eq(m, model)) {
            return;
        }
        self.from = Some(model.clone());
        let vtep: IpAddr = self.vtep.into();
        let wanted = local_entries(model, vtep, &self.claims, &self.published);
        for (key, entry) in &wanted {
            if self.published.get(key) != Some(entry) {
                self.claims.put_entry(key, entry.clone());
            }
        }
        for key in self.published.keys().filter(|k| !wanted.contains_key(*k)) {
            self.claims.delete(key);
        }
        self.published = wanted;
        let routing = self.routing(model);
        if routing != self.routing {
            // VNs came or went: every route's claim again.
            self.routing = routing.clone();
            let mut touched = BTreeSet::new();
            let import = Import {
                routing: &self.routing,
                own: vtep,
            };
            self.ribs.reindex(&import, &mut touched);
            self.reclaim(&touched).await;
        }
        // A MAC another VTEP took over with a higher sequence is not this NVE's to
        // advertise until it claims it anew (the vNIC associated again).
        let own: BTreeMap<String, Entry> = self
            .published
            .iter()
            .filter(|(k, e)| !beaten(&self.claims, k, e, vtep))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        let adverts: HashMap<Route, Advert> = translate::advertised(&own, self.speaker(), &routing)
            .into_iter()
            .map(|a| (a.0.key(), a))
            .collect();
        let mut msgs = Vec::new();
        let withdrawn: Vec<Route> = self
            .advertised
            .iter()
            .filter(|(k, _)| !adverts.contains_key(*k))
            .map(|(_, (r, _))| r.clone())
            .collect();
        msgs.extend(translate::withdrawals(&withdrawn));
        let changed: Vec<&Advert> = adverts
            .iter()
            .filter(|(k, a)| self.advertised.get(*k) != Some(*a))
            .map(|(_, a)| a)
            .collect();
        msgs.extend(translate::announcements(changed.into_iter()));
        self.advertised = adverts;
        if msgs.is_empty() {
            return;
        }
        let (count, asn) = (self.advertised.len(), self.cfg.asn);
        for p in self.peers.iter_mut().filter(|p| p.established.is_some()) {
            p.sent = count;
            let _ =
                p.tx.send(translate::for_neighbour(&msgs, asn, p.remote_as))
                    .await;
        }
        self.report().await;
    }

    /// Everything advertised, then End-of-RIB: what a neighbour gets when it comes up.
    fn full_table(&self) -> Vec<Message> {
        let mut msgs = translate::announcements(self.advertised.values());
        msgs.push(Message::Update(Update {
            end_of_rib: true,
            ..Update::default()
        }));
        msgs
    }

    async fn report(&mut self) {
        let neighbors = self
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| NvaNeighbor {
                address: p.address,
                remote_as: p.remote_as,
                state: if p.established.is_some() {
                    "established"
                } else {
                    "idle"
                }
                .into(),
                uptime_secs: p.established.map(|t| t.elapsed().as_secs()),
                prefixes_received: self.ribs.len(i),
                prefixes_sent: if p.established.is_some() { p.sent } else { 0 },
                stale: p.stale.len(),
                last_error: p.last_error.clone(),
            })
            .collect();
        let up = self.peers.iter().any(|p| p.established.is_some());
        let error = self.peers.iter().find_map(|p| p.last_error.clone());
        self.link.neighbors(neighbors).await;
        self.link.report(up, if up { None } else { error }).await;
    }
}

/// Whether the claim `key` this NVE publishes loses to another VTEP's.
fn beaten(claims: &Claims, key: &str, entry: &Entry, vtep: IpAddr) -> bool {
    match crate::nva::claims::parse(key) {
        Some(crate::nva::claims::Key::Mac(vni, mac, _)) => claims
            .winner((vni, mac), vtep)
            .is_some_and(|other| other.beats(entry)),
        _ => false,
    }
}

/// Routes an UPDATE announces.
fn announced(m: &Message) -> usize {
    match m {
        Message::Update(u) => u.announced.len(),
        _ => 0,
    }
}
