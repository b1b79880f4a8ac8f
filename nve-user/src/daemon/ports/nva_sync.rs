//! The NVA port on etcd (`nve daemon --nva URL`): publishes this NVE's associated vNICs
//! and VN memberships under a lease, and turns the other NVEs' publications into events
//! for the writer (the whole table after each (re)connection, then only what changed).
//! While etcd is unreachable forwarding goes on with the last state (it is in the model),
//! retries back off, and `nve status` says so.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use super::etcd::{self, Etcd};
use crate::{
    api::{CreateVn, NvaStatus},
    daemon::{handle::Handle, writer::Snapshot},
    model::{Event, Model},
    nva::{
        Delta, Entry, MacChange, Mobility, PREFIX, Table,
        claims::{Claims, MacId, key, member_key, vn_key},
        mobility::installed,
    },
};

/// Seconds an NVE's entries outlive it.
const LEASE_TTL: u64 = 10;
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// How this port reports to `nve status`.
struct Link {
    handle: Handle,
    endpoint: String,
    duplicates: Vec<String>,
    connected: bool,
    last_error: Option<String>,
}

impl Link {
    async fn report(&mut self, connected: bool, last_error: Option<String>) {
        self.connected = connected;
        self.last_error = last_error;
        self.send().await;
    }

    /// Reports the duplicates `mobility` froze, if they changed.
    async fn duplicates(&mut self, mobility: &Mobility) {
        let now = mobility.duplicates();
        if now != self.duplicates {
            self.duplicates = now;
            self.send().await;
        }
    }

    async fn send(&self) {
        let status = NvaStatus {
            endpoint: self.endpoint.clone(),
            connected: self.connected,
            entries: 0,
            last_error: self.last_error.clone(),
            duplicate_macs: self.duplicates.clone(),
        };
        self.handle.nva_status(status).await;
    }
}

/// Runs the NVA session until the daemon stops: connects, syncs, watches; reconnects with
/// backoff.
pub async fn run(handle: Handle, etcd: Etcd, endpoint: String, vtep: IpAddr) {
    let mut link = Link {
        handle,
        endpoint,
        duplicates: Vec::new(),
        connected: false,
        last_error: None,
    };
    let mut backoff = Duration::from_millis(500);
    loop {
        let error = match session(&mut link, &etcd, vtep).await {
            Ok(()) => "session ended".to_string(),
            Err(e) => format!("{e:#}"),
        };
        tracing::warn!(endpoint = %link.endpoint, "NVA unreachable, forwarding with the last state: {error}");
        link.report(false, Some(error)).await;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn session(link: &mut Link, etcd: &Etcd, vtep: IpAddr) -> anyhow::Result<()> {
    let lease = etcd.grant(LEASE_TTL).await?;
    let (kvs, revision) = etcd.range(PREFIX).await?;
    let mut claims = Claims::default();
    for kv in &kvs {
        claims.put(&kv.key, &kv.value);
    }
    let mut snapshots = link.handle.subscribe();
    let mut published = Published::default();
    let snapshot = snapshots.borrow_and_update().clone();
    published
        .update(&snapshot, etcd, vtep, &lease, &claims)
        .await?;
    let mut mobility = Mobility::default();
    install_all(&link.handle, &claims, vtep, &mut mobility).await?;
    link.duplicates(&mobility).await;
    link.report(true, None).await;
    tracing::info!(endpoint = %link.endpoint, entries = kvs.len(), revision, "NVA synced");

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
                install(&link.handle, &claims, &touched, vtep, &mut mobility).await?;
                link.duplicates(&mobility).await;
            }
            _ = keep_alive.tick() => etcd.keep_alive(&lease).await?,
            changed = snapshots.changed() => {
                changed?;
                let snapshot = snapshots.borrow_and_update().clone();
                published.update(&snapshot, etcd, vtep, &lease, &claims).await?;
            }
        }
    }
}

/// What this NVE has in etcd, and the model it was derived from.
#[derive(Default)]
struct Published {
    entries: BTreeMap<String, Entry>,
    from: Option<Arc<Model>>,
}

impl Published {
    /// Brings what this NVE has in etcd to `snapshot`'s vNICs, by difference (nothing to do
    /// when the model is the one published last).
    async fn update(
        &mut self,
        snapshot: &Snapshot,
        etcd: &Etcd,
        vtep: IpAddr,
        lease: &str,
        claims: &Claims,
    ) -> anyhow::Result<()> {
        if self
            .from
            .as_ref()
            .is_some_and(|m| Arc::ptr_eq(m, &snapshot.model))
        {
            return Ok(());
        }
        let wanted = local_entries(&snapshot.model, vtep, claims, &self.entries);
        for (key, entry) in &wanted {
            if self.entries.get(key) != Some(entry) {
                etcd.put(key, &serde_json::to_vec(entry)?, lease).await?;
                self.entries.insert(key.clone(), entry.clone());
            }
        }
        let gone: Vec<String> = self
            .entries
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            etcd.delete(&key).await?;
            self.entries.remove(&key);
        }
        self.from = Some(snapshot.model.clone());
        Ok(())
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

/// Hands every other NVE's entry to the model (a session's first sync; a no-op when the
/// model has them all already, e.g. after an outage in which nothing changed).
async fn install_all(
    handle: &Handle,
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
    // This port is the only one that changes the NVA's table: the snapshot is current.
    if handle.snapshot().model.nva() == &table {
        return Ok(());
    }
    handle
        .submit(Event::Nva(table))
        .await
        .map(drop)
        .map_err(|e| anyhow::anyhow!("installing the NVA's entries: {}", e.message))
}

/// Hands the model what changed for the MACs in `touched` (and the memberships and VN
/// definitions, when they changed): a change costs what it touches, not the table's size.
async fn install(
    handle: &Handle,
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
    let snapshot = handle.snapshot();
    let table = snapshot.model.nva();
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
    handle
        .submit(Event::NvaDelta(delta))
        .await
        .map(drop)
        .map_err(|e| anyhow::anyhow!("installing the NVA's changes: {}", e.message))
}
