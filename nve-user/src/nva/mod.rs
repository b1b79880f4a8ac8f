//! The network-wide control plane (the NVA, spec.md 3), with two backends: embedded (the
//! default: one host needs nothing, several list each other in a static peers file, see
//! `peers.rs`) and etcd. Both hand the model the same [`Table`].
//!
//! On etcd: with `nve daemon --nva
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
mod claims;
mod etcd;
pub mod peers;
mod table;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

pub use etcd::Etcd;
pub use table::{Delta, MacChange, Table};

use claims::{Claims, MacId, key, member_key, vn_key};

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
    /// In a VN definition's entry: the VN (boxed: MAC entries, by far the most, have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vn: Option<Box<CreateVn>>,
    /// Never published: set by the NVE installing the entry when the claim beats its own
    /// on the same MAC (the VM moved on, and this NVE has not been told yet): its local
    /// vNIC's MAC then forwards to the claim's VTEP, as a forwarding pointer does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub supersedes_local: bool,
    /// The hypervisor signaled this MAC's arrival at `vtep` (its vNIC was (pre-)associated
    /// there with a migrating-in hint): a move to it is a migration, never counted towards
    /// duplicate detection, and it thaws a MAC frozen elsewhere.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub migrated: bool,
}

impl Entry {
    /// An entry for `vtep` with nothing else set.
    pub fn at(vtep: IpAddr) -> Self {
        Self {
            vtep,
            ips: Vec::new(),
            seq: 0,
            vn: None,
            supersedes_local: false,
            migrated: false,
        }
    }

    /// Whether this claim wins over `other` (RFC 7432 section 15: the higher sequence
    /// number; equal ones, the lower VTEP address).
    pub fn beats(&self, other: &Entry) -> bool {
        (self.seq, std::cmp::Reverse(self.vtep)) > (other.seq, std::cmp::Reverse(other.vtep))
    }
}

/// What this NVE publishes: its associated vNICs. A MAC it already claims keeps its
/// sequence number; one it starts to claim takes the highest other claim's plus one.
fn local_entries(
    model: &Model,
    vtep: IpAddr,
    claims: &Claims,
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
            vn: Some(Box::new(def)),
            ..Entry::at(vtep)
        };
        out.insert(vn_key(vn.vni, vtep), entry);
    }
    // Membership: every VN with a vNIC here, whatever its state, or a forwarding pointer
    // (the VM's last vNIC here left, and VXLAN for it that still arrives is sent on: the
    // destination must keep accepting this VTEP's VXLAN of the VN until the pointer goes).
    let pointing = model
        .vns()
        .filter(|(_, vn)| !vn.moved.is_empty())
        .map(|(_, vn)| vn.vni);
    for vni in model.vnics().map(|(_, v)| v.vni).chain(pointing) {
        out.insert(member_key(vni, vtep), Entry::at(vtep));
    }
    for (_, v) in model.vnics().filter(|(_, v)| v.state.forwards()) {
        let v4 = v.params.ipv4.iter().map(|&a| IpAddr::from(a));
        let ips: Vec<IpAddr> = v4.chain(v.params.ipv6.iter().map(|&a| a.into())).collect();
        for &mac in &v.params.macs {
            let key = key(v.vni, mac, vtep);
            let seq = match published.get(&key) {
                Some(mine) => mine.seq,
                None => claims.winner((v.vni, mac), vtep).map_or(0, |e| e.seq + 1),
            };
            let entry = Entry {
                ips: ips.clone(),
                seq,
                migrated: v.migrated_in,
                ..Entry::at(vtep)
            };
            out.insert(key, entry);
        }
    }
    out
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
    let entries = nve.model.nva().len();
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
    let mut claims = Claims::default();
    for kv in &kvs {
        claims.put(&kv.key, &kv.value);
    }
    let mut published = BTreeMap::new();
    publish(state, etcd, vtep, &lease, &claims, &mut published).await?;
    let mut mobility = Mobility::default();
    install_all(state, &claims, vtep, &mut mobility).await?;
    set_status(state, endpoint, true, None).await;
    tracing::info!(%endpoint, entries = kvs.len(), revision, "NVA synced");

    let mut watch = etcd.watch(PREFIX, revision + 1).await?;
    let mut keep_alive = tokio::time::interval(Duration::from_secs(LEASE_TTL / 3));
    keep_alive.tick().await;
    loop {
        tokio::select! {
            batch = watch.next() => {
                let mut touched = BTreeSet::new();
                for change in batch? {
                    let id = match change {
                        etcd::Change::Put(kv) => claims.put(&kv.key, &kv.value),
                        etcd::Change::Delete(key) => claims.delete(&key),
                    };
                    touched.extend(id);
                }
                install(state, &claims, &touched, vtep, &mut mobility).await?;
            }
            _ = keep_alive.tick() => etcd.keep_alive(&lease).await?,
            _ = changes.notified() => {
                publish(state, etcd, vtep, &lease, &claims, &mut published).await?;
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
    claims: &Claims,
    published: &mut BTreeMap<String, Entry>,
) -> anyhow::Result<()> {
    let wanted = local_entries(&state.lock().await.model, vtep, claims, published);
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
            // A VM the hypervisor says it moved is where it says, frozen or not.
            if !(winner.migrated && winner.vtep != frozen.vtep) {
                return frozen.clone();
            }
            tracing::info!(vni, %mac, vtep = %winner.vtep, "duplicate MAC thawed: a signaled migration");
            self.frozen.remove(&id);
            self.moves.remove(&id);
        }
        let moved = self
            .at
            .insert(id, winner.vtep)
            .is_some_and(|was| was != winner.vtep);
        // Only unexplained moves count: learned, or claimed without a signaled migration.
        if moved && !winner.migrated {
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

/// The entry to install for `id`: the winning claim of another NVE (highest sequence
/// number, then lowest VTEP), or where a duplicate froze.
fn installed(claims: &Claims, id: MacId, vtep: IpAddr, mobility: &mut Mobility) -> Option<Entry> {
    let winner = claims.winner(id, vtep)?;
    let mut entry = mobility.follow(id.0, id.1, winner);
    entry.supersedes_local = claims.own(id, vtep).is_some_and(|own| entry.beats(own));
    Some(entry)
}

/// Hands every other NVE's entry to the model (a session's first sync; a no-op when the
/// model has them all already, e.g. after an outage in which nothing changed).
async fn install_all(
    state: &Shared,
    claims: &Claims,
    vtep: IpAddr,
    mobility: &mut Mobility,
) -> anyhow::Result<()> {
    let mut table = Table::default();
    for id in claims.ids() {
        if let Some(entry) = installed(claims, id, vtep, mobility) {
            table.set(id.0, id.1, Some(entry));
        }
    }
    table.members = claims.members(vtep);
    table.vns = claims.vns(vtep);
    let mut nve = state.lock().await;
    report_duplicates(&mut nve, mobility);
    if nve.model.nva() == &table {
        return Ok(());
    }
    nve.submit(Event::Nva(table))
        .await
        .map(drop)
        .map_err(|e| anyhow::anyhow!("installing the NVA's entries: {}", e.message))
}

/// Hands the model what changed for the MACs in `touched` (and the memberships and VN
/// definitions, when they changed): a change costs what it touches, not the table's size.
async fn install(
    state: &Shared,
    claims: &Claims,
    touched: &BTreeSet<MacId>,
    vtep: IpAddr,
    mobility: &mut Mobility,
) -> anyhow::Result<()> {
    let wanted: Vec<(MacId, Option<Entry>)> = touched
        .iter()
        .map(|&id| (id, installed(claims, id, vtep, mobility)))
        .collect();
    let members = claims.members(vtep);
    let vns = claims.vns(vtep);
    let mut nve = state.lock().await;
    report_duplicates(&mut nve, mobility);
    let table = nve.model.nva();
    let delta = Delta {
        macs: wanted
            .into_iter()
            .filter(|((vni, mac), entry)| table.get(*vni, *mac) != entry.as_ref())
            .map(|((vni, mac), entry)| MacChange { vni, mac, entry })
            .collect(),
        members: (table.members != members).then_some(members),
        vns: (table.vns != vns).then_some(vns),
    };
    if delta.is_empty() {
        return Ok(());
    }
    // Refused (a full map): the session starts over, and says why in `nve status`.
    nve.submit(Event::NvaDelta(delta))
        .await
        .map(drop)
        .map_err(|e| anyhow::anyhow!("installing the NVA's changes: {}", e.message))
}

fn report_duplicates(nve: &mut crate::server::Nve, mobility: &Mobility) {
    let frozen: Vec<String> = mobility
        .frozen
        .keys()
        .map(|(vni, mac)| format!("{vni}/{mac}"))
        .collect();
    if let Some(status) = nve.status.nva.as_mut() {
        status.duplicate_macs = frozen;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(vtep: &str, migrated: bool) -> Entry {
        Entry {
            migrated,
            ..Entry::at(vtep.parse().unwrap())
        }
    }

    #[test]
    fn only_unexplained_moves_count_towards_duplicates() {
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let mut m = Mobility::default();
        let back_and_forth = |i: usize| {
            if i.is_multiple_of(2) {
                "10.0.0.1"
            } else {
                "10.0.0.2"
            }
        };
        // Signaled migrations, twice as many as would freeze: each followed.
        for i in 0..2 * DUP_MOVES {
            let to = back_and_forth(i);
            assert_eq!(m.follow(7, mac, &claim(to, true)).vtep.to_string(), to);
        }
        assert!(m.frozen.is_empty());
        // Unexplained moves (claims without a signaled migration) freeze it.
        for i in 0..=DUP_MOVES {
            m.follow(7, mac, &claim(back_and_forth(i), false));
        }
        let frozen = m.frozen.get(&(7, mac)).expect("frozen").vtep;
        let other = if frozen.to_string() == "10.0.0.1" {
            "10.0.0.2"
        } else {
            "10.0.0.1"
        };
        assert_eq!(m.follow(7, mac, &claim(other, false)).vtep, frozen);
        // A signaled migration thaws it: the VM is where the hypervisor put it.
        assert_eq!(
            m.follow(7, mac, &claim("10.0.0.3", true)).vtep.to_string(),
            "10.0.0.3"
        );
        assert!(m.frozen.is_empty());
    }
}
