//! The network-wide control plane (the NVA, spec.md 3) on etcd. With `nve daemon --nva
//! http://HOST:2379` each NVE publishes the vNICs associated on it (VN, MAC, addresses ->
//! its VTEP) under `/nve/v1/vni/<vni>/mac/<mac>`, tied to a lease (an NVE that dies drops
//! out), and watches that prefix: the other NVEs' entries become remote FDB entries, ARP/ND
//! answers and flood-list VTEPs of the VNs this NVE serves. Each (re)connection starts with
//! a full sync, then watches from that revision. While etcd is unreachable forwarding goes
//! on with the last state (it is in the model), retries back off, and `nve status` says so.
mod etcd;

use std::{collections::BTreeMap, net::IpAddr, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

pub use etcd::Etcd;

use crate::{
    api::NvaStatus,
    mac::MacAddr,
    model::{Event, Model},
    server::Shared,
};

/// Where NVEs publish.
pub const PREFIX: &str = "/nve/v1/vni/";
/// Seconds an NVE's entries outlive it.
const LEASE_TTL: u64 = 10;
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// What an NVE publishes per MAC, and what the model keeps of the others'.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub vtep: IpAddr,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
}

/// The other NVEs' entries: VNI -> MAC -> where.
pub type Table = BTreeMap<u32, BTreeMap<MacAddr, Entry>>;

fn key(vni: u32, mac: MacAddr) -> String {
    format!("{PREFIX}{vni}/mac/{mac}")
}

fn parse_key(key: &str) -> Option<(u32, MacAddr)> {
    let (vni, mac) = key.strip_prefix(PREFIX)?.split_once("/mac/")?;
    Some((vni.parse().ok()?, mac.parse().ok()?))
}

/// What this NVE publishes: its associated vNICs.
fn local_entries(model: &Model, vtep: IpAddr) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    for (_, v) in model.vnics().filter(|(_, v)| v.state.forwards()) {
        let ips: Vec<IpAddr> = v
            .params
            .ipv4
            .iter()
            .map(|&a| a.into())
            .chain(v.params.ipv6.iter().map(|&a| a.into()))
            .collect();
        for &mac in &v.params.macs {
            out.insert(
                key(v.vni, mac),
                Entry {
                    vtep,
                    ips: ips.clone(),
                },
            );
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
    let entries = nve.model.nva().values().map(BTreeMap::len).sum();
    nve.status.nva = Some(NvaStatus {
        endpoint: endpoint.to_string(),
        connected,
        entries,
        last_error,
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
    let mut published = BTreeMap::new();
    publish(state, etcd, vtep, &lease, &mut published).await?;
    let (kvs, revision) = etcd.range(PREFIX).await?;
    let mut all: BTreeMap<String, Entry> = kvs
        .into_iter()
        .filter_map(|kv| Some((kv.key, serde_json::from_slice(&kv.value).ok()?)))
        .collect();
    install(state, &all, vtep).await;
    set_status(state, endpoint, true, None).await;
    tracing::info!(%endpoint, entries = all.len(), revision, "NVA synced");

    let mut watch = etcd.watch(PREFIX, revision + 1).await?;
    let follow = async {
        loop {
            for change in watch.next().await? {
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
            install(state, &all, vtep).await;
        }
    };
    let keep_alive = async {
        loop {
            tokio::time::sleep(Duration::from_secs(LEASE_TTL / 3)).await;
            etcd.keep_alive(&lease).await?;
        }
    };
    let republish = async {
        loop {
            changes.notified().await;
            publish(state, etcd, vtep, &lease, &mut published).await?;
        }
    };
    tokio::select! {
        r = follow => r,
        r = keep_alive => r,
        r = republish => r,
    }
}

/// Brings what this NVE has in etcd to its associated vNICs, by difference.
async fn publish(
    state: &Shared,
    etcd: &Etcd,
    vtep: IpAddr,
    lease: &str,
    published: &mut BTreeMap<String, Entry>,
) -> anyhow::Result<()> {
    let wanted = local_entries(&state.lock().await.model, vtep);
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

/// Hands the other NVEs' entries to the model (a no-op when nothing changed).
async fn install(state: &Shared, all: &BTreeMap<String, Entry>, vtep: IpAddr) {
    let mut table = Table::new();
    for (key, entry) in all {
        if entry.vtep == vtep {
            continue;
        }
        if let Some((vni, mac)) = parse_key(key) {
            table.entry(vni).or_default().insert(mac, entry.clone());
        }
    }
    let mut nve = state.lock().await;
    if nve.model.nva() == &table {
        return;
    }
    if let Err(e) = nve.submit(Event::Nva(table)).await {
        tracing::warn!("installing the NVA's entries: {}", e.message);
    }
}
