//! The embedded NVA: nothing else to run. On one host there is nothing to tell; hosts
//! without etcd list each other in a static peers file (`nve daemon --peers FILE`), the
//! same file on every host (each leaves its own VTEPs out):
//!
//! ```json
//! {"peers": [
//!   {"vtep": "10.0.0.1", "vnis": [100],
//!    "macs": [{"vni": 100, "mac": "02:00:00:00:01:01", "ips": ["192.168.10.1"]}]},
//!   {"vtep": "10.0.0.2", "vnis": [100]}
//! ]}
//! ```
//!
//! A peer's VNIs put it in those VNs' flood lists and decapsulation allow-lists; its MACs
//! become remote FDB entries and ARP/ND answers, exactly as the etcd backend's. The file is
//! read again when it changes (checked every second); a file that does not parse or
//! contradicts itself is refused with its reason in `nve status`, and the last good one
//! stays in force.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use super::{Entry, Table};
use crate::{api::NvaStatus, mac::MacAddr, model::Event, server::Shared};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeersFile {
    peers: Vec<Peer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Peer {
    vtep: IpAddr,
    #[serde(default)]
    vnis: Vec<u32>,
    #[serde(default)]
    macs: Vec<PeerMac>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerMac {
    vni: u32,
    mac: MacAddr,
    #[serde(default)]
    ips: Vec<IpAddr>,
}

/// The table `text` describes, seen from an NVE whose VTEPs are `own`.
fn parse(text: &str, own: &[IpAddr]) -> anyhow::Result<Table> {
    let file: PeersFile = serde_json::from_str(text)?;
    let mut table = Table::default();
    let mut owner: BTreeMap<(u32, MacAddr), IpAddr> = BTreeMap::new();
    for peer in &file.peers {
        for m in &peer.macs {
            if m.mac.is_multicast() || m.mac.0 == [0; 6] {
                bail!("peer {}: MAC {} is not a unicast address", peer.vtep, m.mac);
            }
            for &ip in &m.ips {
                crate::model::check_host_ip(&format!("peer {} MAC {}", peer.vtep, m.mac), ip)
                    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            }
            if let Some(other) = owner.insert((m.vni, m.mac), peer.vtep)
                && other != peer.vtep
            {
                bail!(
                    "MAC {} of VNI {} is behind both {other} and {}",
                    m.mac,
                    m.vni,
                    peer.vtep
                );
            }
        }
        if own.contains(&peer.vtep) {
            continue;
        }
        for &vni in peer.vnis.iter().chain(peer.macs.iter().map(|m| &m.vni)) {
            table.members.entry(vni).or_default().insert(peer.vtep);
        }
        for m in &peer.macs {
            let entry = Entry {
                ips: m.ips.clone(),
                ..Entry::at(peer.vtep)
            };
            table.set(m.vni, m.mac, Some(entry));
        }
    }
    Ok(table)
}

/// What identifies a version of the file.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Installs `path` and follows its changes until the daemon stops.
pub async fn run(state: Shared, path: PathBuf, own: Vec<IpAddr>) {
    let endpoint = format!("file:{}", path.display());
    let mut seen = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = stamp(&path);
        if now.is_some() && now == seen {
            continue;
        }
        seen = now;
        let loaded = tokio::fs::read_to_string(&path)
            .await
            .with_context(|| format!("reading {}", path.display()))
            .and_then(|text| parse(&text, &own).with_context(|| format!("{}", path.display())));
        let mut nve = state.lock().await;
        let result = match loaded {
            Ok(table) if nve.model.nva() == &table => Ok(()),
            Ok(table) => nve
                .submit(Event::Nva(table))
                .await
                .map(drop)
                .map_err(|e| anyhow::anyhow!("installing the peers: {}", e.message)),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::warn!("peers file refused, the last one stays in force: {e:#}");
        }
        nve.status.nva = Some(NvaStatus {
            endpoint: endpoint.clone(),
            connected: result.is_ok(),
            entries: nve.model.nva().len(),
            last_error: result.err().map(|e| format!("{e:#}")),
            duplicate_macs: Vec::new(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"{"peers": [
        {"vtep": "10.0.0.1", "vnis": [100],
         "macs": [{"vni": 100, "mac": "02:00:00:00:01:01", "ips": ["192.168.10.1"]}]},
        {"vtep": "10.0.0.2", "macs": [{"vni": 200, "mac": "02:00:00:00:02:01"}]}
    ]}"#;

    #[test]
    fn each_host_leaves_itself_out() {
        let on_1 = parse(FILE, &["10.0.0.1".parse().unwrap()]).unwrap();
        assert_eq!(on_1.len(), 1);
        let vteps: std::collections::BTreeSet<IpAddr> = on_1.vteps(200).collect();
        assert_eq!(vteps.len(), 1);
        assert_eq!(on_1.vteps(100).count(), 0);
        let on_3 = parse(FILE, &["10.0.0.3".parse().unwrap()]).unwrap();
        assert_eq!(on_3.len(), 2);
        let mac = "02:00:00:00:01:01".parse().unwrap();
        assert_eq!(on_3.owner(100, "192.168.10.1".parse().unwrap()), Some(mac));
    }

    #[test]
    fn contradictions_and_typos_are_refused() {
        let twice = r#"{"peers": [
            {"vtep": "10.0.0.1", "macs": [{"vni": 1, "mac": "02:00:00:00:00:01"}]},
            {"vtep": "10.0.0.2", "macs": [{"vni": 1, "mac": "02:00:00:00:00:01"}]}]}"#;
        let e = parse(twice, &[]).unwrap_err().to_string();
        assert!(e.contains("behind both 10.0.0.1 and 10.0.0.2"), "{e}");
        let typo = r#"{"peers": [{"vtep": "10.0.0.1", "vni": [1]}]}"#;
        assert!(
            parse(typo, &[])
                .unwrap_err()
                .to_string()
                .contains("unknown field")
        );
        let multicast = r#"{"peers": [{"vtep": "10.0.0.1", "macs": [{"vni": 1, "mac": "01:00:5e:00:00:01"}]}]}"#;
        assert!(parse(multicast, &[]).is_err());
    }
}
