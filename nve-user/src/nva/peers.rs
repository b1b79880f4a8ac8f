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
//! become remote FDB entries and ARP/ND answers, exactly as the etcd backend's. This is
//! the file's meaning; `daemon/ports/peers_file.rs` follows it as it changes.
use std::{collections::BTreeMap, net::IpAddr};

use serde::Deserialize;

use super::{Entry, Table};
use crate::mac::MacAddr;

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

/// Why a peers file is refused.
#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    #[error(transparent)]
    Syntax(#[from] serde_json::Error),
    #[error("{0}")]
    Contradiction(String),
    #[error(transparent)]
    Address(#[from] crate::error::Error),
}

macro_rules! refuse {
    ($($arg:tt)*) => {
        return Err(PeersError::Contradiction(format!($($arg)*)))
    };
}

/// The table `text` describes, seen from an NVE whose VTEPs are `own`.
pub fn parse(text: &str, own: &[IpAddr]) -> Result<Table, PeersError> {
    let file: PeersFile = serde_json::from_str(text)?;
    let mut table = Table::default();
    let mut owner: BTreeMap<(u32, MacAddr), IpAddr> = BTreeMap::new();
    for peer in &file.peers {
        for m in &peer.macs {
            if m.mac.is_multicast() || m.mac.0 == [0; 6] {
                refuse!("peer {}: MAC {} is not a unicast address", peer.vtep, m.mac);
            }
            for &ip in &m.ips {
                crate::addr::check_host_ip(&format!("peer {} MAC {}", peer.vtep, m.mac), ip)?;
            }
            if let Some(other) = owner.insert((m.vni, m.mac), peer.vtep)
                && other != peer.vtep
            {
                refuse!(
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
