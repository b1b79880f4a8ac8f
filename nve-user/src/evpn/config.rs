//! `"bgp"` in the daemon's config file (read at every start, with `nve daemon --nva bgp`):
//! this NVE's AS and router ID, its neighbours (route reflectors or a full mesh), and per
//! VN the route distinguisher and route targets (default: RD `VTEP:VNI`, RT `ASN:VNI`, as
//! FRR's auto RD/RT).
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use serde::{Deserialize, Serialize};

use super::route::{Rd, RouteTarget};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpConfig {
    pub asn: u32,
    /// Default: the VTEP address.
    #[serde(default)]
    pub router_id: Option<Ipv4Addr>,
    #[serde(alias = "neighbours")]
    pub neighbors: Vec<Neighbor>,
    /// Per VN name.
    #[serde(default)]
    pub vns: BTreeMap<String, VnRouting>,
    /// Seconds a neighbour's routes outlive its session (graceful restart, as receiver),
    /// unless it advertised a restart time of its own.
    #[serde(default = "defaults::stale_time")]
    pub stale_time: u64,
    /// The hold time nve proposes, seconds (0 or 3 to 65535).
    #[serde(default = "defaults::hold_time")]
    pub hold_time: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Neighbor {
    pub address: IpAddr,
    pub remote_as: u32,
    #[serde(default = "defaults::port")]
    pub port: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VnRouting {
    /// "A.B.C.D:N".
    #[serde(default)]
    pub rd: Option<String>,
    /// "ASN:N" each.
    #[serde(default)]
    pub import: Vec<String>,
    #[serde(default)]
    pub export: Vec<String>,
}

mod defaults {
    pub fn stale_time() -> u64 {
        120
    }
    pub fn hold_time() -> u16 {
        9
    }
    pub fn port() -> u16 {
        179
    }
}

/// A VN's routing, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    pub rd: Rd,
    pub import: Vec<RouteTarget>,
    pub export: Vec<RouteTarget>,
}

fn route_target(s: &str) -> Result<RouteTarget, String> {
    let bad = || format!("route target {s:?}: ASN:N");
    let (asn, n) = s.split_once(':').ok_or_else(bad)?;
    let asn: u32 = asn.parse().map_err(|_| bad())?;
    match u16::try_from(asn) {
        Ok(asn) => Ok(RouteTarget::as2(asn, n.parse().map_err(|_| bad())?)),
        Err(_) => Ok(RouteTarget::as4(asn, n.parse().map_err(|_| bad())?)),
    }
}

fn rd(s: &str) -> Result<Rd, String> {
    let bad = || format!("route distinguisher {s:?}: A.B.C.D:N");
    let (ip, n) = s.split_once(':').ok_or_else(bad)?;
    Ok(Rd::ipv4(
        ip.parse().map_err(|_| bad())?,
        n.parse().map_err(|_| bad())?,
    ))
}

impl BgpConfig {
    /// What is wrong with it, if anything.
    pub fn check(&self) -> Result<(), String> {
        if self.asn == 0 {
            return Err("asn 0: not an AS".into());
        }
        if self.neighbors.is_empty() {
            return Err("no neighbors".into());
        }
        if self.hold_time != 0 && self.hold_time < 3 {
            return Err(format!("hold_time {}: 0 or 3 to 65535 s", self.hold_time));
        }
        for (vn, r) in &self.vns {
            let strings = r.import.iter().chain(&r.export);
            for t in strings {
                route_target(t).map_err(|e| format!("VN {vn}: {e}"))?;
            }
            if let Some(d) = &r.rd {
                rd(d).map_err(|e| format!("VN {vn}: {e}"))?;
            }
        }
        Ok(())
    }

    /// The router ID: configured, or the VTEP.
    pub fn router_id(&self, vtep: Ipv4Addr) -> Ipv4Addr {
        self.router_id.unwrap_or(vtep)
    }

    /// VN `name`'s (VNI `vni`) routing on this NVE (VTEP `vtep`).
    pub fn routing(&self, name: &str, vni: u32, vtep: Ipv4Addr) -> Routing {
        let r = self.vns.get(name).cloned().unwrap_or_default();
        let auto = RouteTarget::as2((self.asn & 0xffff) as u16, vni);
        let targets = |list: &[String]| -> Vec<RouteTarget> {
            let parsed: Vec<RouteTarget> =
                list.iter().filter_map(|t| route_target(t).ok()).collect();
            if parsed.is_empty() {
                vec![auto]
            } else {
                parsed
            }
        };
        Routing {
            rd: r
                .rd
                .as_deref()
                .and_then(|d| rd(d).ok())
                .unwrap_or_else(|| Rd::ipv4(vtep, (vni & 0xffff) as u16)),
            import: targets(&r.import),
            export: targets(&r.export),
        }
    }
}
