//! The network-wide control plane (the NVA, spec.md 3) on etcd. With `nve daemon --nva
//! http://HOST:2379` each NVE publishes the vNICs associated on it (VN, MAC, addresses ->
//! its VTEP, sequence number) under `/nve/v1/vni/<vni>/mac/<mac>/vtep/<vtep>`, tied to a
//! lease (an NVE that dies drops out), and watches that prefix: the other NVEs' entries
//! become remote FDB entries, ARP/ND answers and flood-list VTEPs of the VNs this NVE
//! serves. Each (re)connection starts with a full sync, then watches from that revision.
//! While etcd is unreachable forwarding goes on with the last state (it is in the model),
//! retries back off, and `nve status` says so.
//!
//! MAC mobility (RFC 7432 section 15): every NVE claims a MAC under its own key, so claims
//! never overwrite each other; an NVE that starts to claim a MAC others claim takes their
//! highest sequence number plus one; everyone installs the claim with the highest sequence
//! number, ties to the lowest VTEP address. A MAC whose winning VTEP changes `DUP_MOVES`
//! times within `DUP_WINDOW` is a duplicate (two VMs with one MAC, or a loop): its entry is
//! frozen where it is and reported in `nve status`.
mod etcd;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

pub use etcd::Etcd;

use crate::{
    api::{CreateVn, NvaStatus},
    mac::MacAddr,
    model::{Event, Model},
    server::Shared,
};

/// Where NVEs publish.
pub const PREFIX: &str = "/nve/v1/vni/";
/// Seconds an NVE's entries outlive it.
const LEASE_TTL: u64 = 10;
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Duplicate-MAC detection: this many moves within `DUP_WINDOW` freeze the MAC.
pub const DUP_MOVES: usize = 5;
pub const DUP_WINDOW: Duration = Duration::from_secs(180);

/// What an NVE publishes per MAC, and what the model keeps of the others'.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub vtep: IpAddr,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
    /// Incremented by each NVE that takes the MAC over (RFC 7432 section 15).
    #[serde(default)]
    pub seq: u64,
    /// In a VN definition's entry: the VN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vn: Option<CreateVn>,
}

/// What the model keeps of the other NVEs' publications.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// VNI -> MAC -> where (the winning claim).
    #[serde(default)]
    pub macs: BTreeMap<u32, BTreeMap<MacAddr, Entry>>,
    /// VNI -> the other NVEs with a vNIC in the VN, pre-associated ones included: they join
    /// its flood list and decapsulation allow-list before a migration's first frame.
    #[serde(default)]
    pub members: BTreeMap<u32, BTreeSet<IpAddr>>,
    /// VN definitions other NVEs serve, by name: an associate in a VN this NVE does not
    /// have creates it from here.
    #[serde(default)]
    pub vns: BTreeMap<String, CreateVn>,
}

impl Table {
    pub fn is_empty(&self) -> bool {
        self.macs.is_empty() && self.members.is_empty() && self.vns.is_empty()
    }
}

fn key(vni: u32, mac: MacAddr, vtep: IpAddr) -> String {
    format!("{PREFIX}{vni}/mac/{mac}/vtep/{vtep}")
}

fn vn_key(vni: u32, vtep: IpAddr) -> String {
    format!("{PREFIX}{vni}/vn/{vtep}")
}

fn is_vn_key(key: &str) -> bool {
    key.strip_prefix(PREFIX)
        .is_some_and(|rest| rest.contains("/vn/"))
}

fn member_key(vni: u32, vtep: IpAddr) -> String {
    format!("{PREFIX}{vni}/member/{vtep}")
}

fn parse_member(key: &str) -> Option<u32> {
    let (vni, _vtep) = key.strip_prefix(PREFIX)?.split_once("/member/")?;
    vni.parse().ok()
}

fn parse_key(key: &str) -> Option<(u32, MacAddr)> {
    let (vni, rest) = key.strip_prefix(PREFIX)?.split_once("/mac/")?;
    let (mac, _vtep) = rest.split_once("/vtep/")?;
    Some((vni.parse().ok()?, mac.parse().ok()?))
}

/// What this NVE publishes: its associated vNICs. A MAC it already claims keeps its
/// sequence number; one it starts to claim takes the highest other claim's plus one.
fn local_entries(
    model: &Model,
    vtep: IpAddr,
    all: &BTreeMap<String, Entry>,
    published: &BTreeMap<String, Entry>,
) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    // The VNs this NVE serves, for those that do not have them yet.
    for (name, vn) in model.vns() {
        let def = CreateVn {
            flood_unknown: vn.flood_unknown,
            any_vtep: vn.any_vtep,
            mtu: vn.mtu,
            ..CreateVn::new(name.clone(), vn.vni)
        };
        let entry = Entry {
            vtep,
            ips: Vec::new(),
            seq: 0,
            vn: Some(def),
        };
        out.insert(vn_key(vn.vni, vtep), entry);
    }
    // Membership: every VN with a vNIC here, whatever its state.
    for (_, v) in model.vnics() {
        let member = Entry {
            vtep,
            ips: Vec::new(),
            seq: 0,
            vn: None,
        };
        out.insert(member_key(v.vni, vtep), member);
    }
    for (_, v) in model.vnics().filter(|(_, v)| v.state.forwards()) {
        let v4 = v.params.ipv4.iter().map(|&a| IpAddr::from(a));
        let ips: Vec<IpAddr> = v4.chain(v.params.ipv6.iter().map(|&a| a.into())).collect();
        for &mac in &v.params.macs {
            let key = key(v.vni, mac, vtep);
            let seq = match published.get(&key) {
                Some(mine) => mine.seq,
                None => highest_claim(all, v.vni, mac, vtep).map_or(0, |e| e.seq + 1),
            };
            let ips = ips.clone();
            out.insert(
                key,
                Entry {
                    vtep,
                    ips,
                    seq,
                    vn: None,
                },
            );
        }
    }
    out
}

/// The winning claim on (`vni`, `mac`) among other VTEPs than `except`: the highest
/// sequence number, ties to the lowest VTEP address.
fn highest_claim(
    all: &BTreeMap<String, Entry>,
    vni: u32,
    mac: MacAddr,
    except: IpAddr,
) -> Option<&Entry> {
    all.iter()
        .filter(|(k, e)| e.vtep != except && parse_key(k) == Some((vni, mac)))
        .map(|(_, e)| e)
        .max_by(|a, b| a.seq.cmp(&b.seq).then(b.vtep.cmp(&a.vtep)))
}

/// Runs the NVA session until the daemon stops: connects, syncs, watches; reconnects with
/// backoff.
pub async fn run(state: Shared, etcd: Etcd, endpoint: String, vtep: IpAddr, changes: Arc<Notify>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let result = session(&state, &etcd, &endpoint, vtep, &changes).await;
        let error = match result {
            Ok(()) => "session ended".to_string(),
            Err(e) => format!("{e:#}"),
        };
        tracing::warn!(%endpoint, "NVA unreachable, forwarding with the last state: {error}");
        set_status(&state, &endpoint, false, Some(error)).await;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn set_status(state: &Shared, endpoint: &str, connected: bool, last_error: Option<String>) {
    let mut nve = state.lock().await;
    let entries = nve.model.nva().macs.values().map(BTreeMap::len).sum();
    let duplicate_macs = nve
        .status
        .nva
        .as_ref()
        .map(|s| s.duplicate_macs.clone())
        .unwrap_or_default();
    nve.status.nva = Some(NvaStatus {
        endpoint: endpoint.to_string(),
        connected,
        entries,
        last_error,
        duplicate_macs,
    });
}

async fn session(
    state: &Shared,
    etcd: &Etcd,
    endpoint: &str,
    vtep: IpAddr,
    changes: &Notify,
) -> anyhow::Result<()> {
    let lease = etcd.grant(LEASE_TTL).await?;
    let (kvs, revision) = etcd.range(PREFIX).await?;
    let mut all: BTreeMap<String, Entry> = kvs
        .into_iter()
        .filter_map(|kv| Some((kv.key, serde_json::from_slice(&kv.value).ok()?)))
        .collect();
    let mut published = BTreeMap::new();
    publish(state, etcd, vtep, &lease, &all, &mut published).await?;
    let mut mobility = Mobility::default();
    install(state, &all, vtep, &mut mobility).await;
    set_status(state, endpoint, true, None).await;
    tracing::info!(%endpoint, entries = all.len(), revision, "NVA synced");

    let mut watch = etcd.watch(PREFIX, revision + 1).await?;
    let mut keep_alive = tokio::time::interval(Duration::from_secs(LEASE_TTL / 3));
    keep_alive.tick().await;
    loop {
        tokio::select! {
            batch = watch.next() => {
                for change in batch? {
                    match change {
                        etcd::Change::Put(kv) => {
                            if let Ok(e) = serde_json::from_slice(&kv.value) {
                                all.insert(kv.key, e);
                            }
                        }
                        etcd::Change::Delete(key) => {
                            all.remove(&key);
                        }
                    }
                }
                install(state, &all, vtep, &mut mobility).await;
            }
            _ = keep_alive.tick() => etcd.keep_alive(&lease).await?,
            _ = changes.notified() => {
                publish(state, etcd, vtep, &lease, &all, &mut published).await?;
            }
        }
    }
}

/// Brings what this NVE has in etcd to its associated vNICs, by difference.
async fn publish(
    state: &Shared,
    etcd: &Etcd,
    vtep: IpAddr,
    lease: &str,
    all: &BTreeMap<String, Entry>,
    published: &mut BTreeMap<String, Entry>,
) -> anyhow::Result<()> {
    let wanted = local_entries(&state.lock().await.model, vtep, all, published);
    for (key, entry) in &wanted {
        if published.get(key) != Some(entry) {
            etcd.put(key, &serde_json::to_vec(entry)?, lease).await?;
            published.insert(key.clone(), entry.clone());
        }
    }
    let gone: Vec<String> = published
        .keys()
        .filter(|k| !wanted.contains_key(*k))
        .cloned()
        .collect();
    for key in gone {
        etcd.delete(&key).await?;
        published.remove(&key);
    }
    Ok(())
}

/// Where each MAC was installed, and when it moved lately (duplicate detection).
#[derive(Default)]
struct Mobility {
    at: HashMap<(u32, MacAddr), IpAddr>,
    moves: HashMap<(u32, MacAddr), VecDeque<Instant>>,
    frozen: BTreeMap<(u32, MacAddr), Entry>,
}

impl Mobility {
    /// `winner` is where (`vni`, `mac`) is now: records a move; the entry to install (the
    /// frozen one for a duplicate).
    fn follow(&mut self, vni: u32, mac: MacAddr, winner: &Entry) -> Entry {
        let id = (vni, mac);
        if let Some(frozen) = self.frozen.get(&id) {
            return frozen.clone();
        }
        let moved = self
            .at
            .insert(id, winner.vtep)
            .is_some_and(|was| was != winner.vtep);
        if moved {
            let now = Instant::now();
            let moves = self.moves.entry(id).or_default();
            moves.push_back(now);
            while moves
                .front()
                .is_some_and(|t| now.duration_since(*t) > DUP_WINDOW)
            {
                moves.pop_front();
            }
            if moves.len() >= DUP_MOVES {
                tracing::warn!(vni, %mac, vtep = %winner.vtep, "duplicate MAC: {DUP_MOVES} moves within {DUP_WINDOW:?}; frozen");
                self.frozen.insert(id, winner.clone());
            }
        }
        winner.clone()
    }
}

/// Hands the other NVEs' entries to the model (a no-op when nothing changed): per MAC the
/// winning claim (highest sequence number, then lowest VTEP), or where a duplicate froze.
async fn install(
    state: &Shared,
    all: &BTreeMap<String, Entry>,
    vtep: IpAddr,
    mobility: &mut Mobility,
) {
    let mut claims: BTreeMap<(u32, MacAddr), &Entry> = BTreeMap::new();
    let mut table = Table::default();
    for (key, entry) in all {
        if entry.vtep == vtep {
            continue;
        }
        if let Some(vni) = parse_member(key) {
            table.members.entry(vni).or_default().insert(entry.vtep);
            continue;
        }
        if is_vn_key(key) {
            if let Some(def) = &entry.vn {
                table
                    .vns
                    .entry(def.name.clone())
                    .or_insert_with(|| def.clone());
            }
            continue;
        }
        let Some(id) = parse_key(key) else { continue };
        let better = claims.get(&id).is_none_or(|e| {
            (entry.seq, std::cmp::Reverse(entry.vtep)) > (e.seq, std::cmp::Reverse(e.vtep))
        });
        if better {
            claims.insert(id, entry);
        }
    }
    for ((vni, mac), winner) in claims {
        let entry = mobility.follow(vni, mac, winner);
        table.macs.entry(vni).or_default().insert(mac, entry);
    }
    let frozen: Vec<String> = mobility
        .frozen
        .keys()
        .map(|(vni, mac)| format!("{vni}/{mac}"))
        .collect();
    let mut nve = state.lock().await;
    if let Some(status) = nve.status.nva.as_mut() {
        status.duplicate_macs = frozen;
    }
    if nve.model.nva() == &table {
        return;
    }
    if let Err(e) = nve.submit(Event::Nva(table)).await {
        tracing::warn!("installing the NVA's entries: {}", e.message);
    }
}
