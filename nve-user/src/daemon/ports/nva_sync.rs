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

use super::{
    etcd::{self, Etcd},
    nva_link::{Link, install, install_all, local_entries},
};
use crate::{
    daemon::{handle::Handle, writer::Snapshot},
    model::Model,
    nva::{Entry, Mobility, PREFIX, claims::Claims},
};

/// Seconds an NVE's entries outlive it.
const LEASE_TTL: u64 = 10;
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Runs the NVA session until the daemon stops: connects, syncs, watches; reconnects with
/// backoff.
pub async fn run(handle: Handle, etcd: Etcd, endpoint: String, vtep: IpAddr) {
    let mut link = Link::new(handle, endpoint);
    let mut backoff = Duration::from_millis(500);
    loop {
        let error = match session(&mut link, &etcd, vtep).await {
            Ok(()) => "session ended".to_string(),
            Err(e) => format!("{e:#}"),
        };
        tracing::warn!(endpoint = %link.endpoint(), "NVA unreachable, forwarding with the last state: {error}");
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
    let mut snapshots = link.handle().subscribe();
    let mut published = Published::default();
    let snapshot = snapshots.borrow_and_update().clone();
    published
        .update(&snapshot, etcd, vtep, &lease, &claims)
        .await?;
    let mut mobility = Mobility::default();
    install_all(link.handle(), &claims, vtep, &mut mobility).await?;
    link.duplicates(&mobility).await;
    link.report(true, None).await;
    tracing::info!(endpoint = %link.endpoint(), entries = kvs.len(), revision, "NVA synced");

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
                install(link.handle(), &claims, &touched, vtep, &mut mobility).await?;
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
