//! `nve dump MAP`: a pinned map's entries decoded with nve-common's types into named fields.
//! The maps are declared the legacy way (`#[map]`, a `maps` section without key/value BTF),
//! so `bpftool map dump` shows them as bytes; this reads the pins directly (root, no daemon
//! needed: also what a stopped daemon left forwarding).
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::{
    Pod,
    maps::{Array, HashMap, MapData},
};
use nve_common::maps::{
    ARP_MAP, ArpEntry, ArpKey, CONFIG_MAP, DataplaneConfig, FDB_LOCAL, FDB_MAP, FDB_MOVED,
    FDB_REMOTE, FdbEntry, FdbKey, LocalPort, ND_MAP, NEXTHOPS_MAP, NdKey, NextHop, PORTS_MAP,
    PortKey, PortValue, VN_VTEPS_MAP, VNS_MAP, VnInfo, VnVtepKey, Vtep, vtep_ipv4,
};
use serde::Serialize;
use serde_json::{Value, json};

use super::{DataplaneError, Result, map_err};
use crate::mac::MacAddr;

/// The maps `nve dump` decodes (the counters are `nve stats`'s).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DumpMap {
    /// NVE_CONFIG: the instance's settings.
    #[value(alias = "NVE_CONFIG")]
    Config,
    /// NVE_PORTS: (port, VID) -> VN.
    #[value(alias = "NVE_PORTS")]
    Ports,
    /// NVE_VNS: VNI -> flood lists, inline VTEPs, MTU.
    #[value(alias = "NVE_VNS")]
    Vns,
    /// NVE_FDB: (VNI, MAC) -> local port or remote VTEP.
    #[value(alias = "NVE_FDB")]
    Fdb,
    /// NVE_NEXTHOPS: remote VTEP -> underlay next hop.
    #[value(alias = "NVE_NEXTHOPS")]
    Nexthops,
    /// NVE_ARP: (VNI, IPv4) -> MAC.
    #[value(alias = "NVE_ARP")]
    Arp,
    /// NVE_ND: (VNI, IPv6) -> MAC.
    #[value(alias = "NVE_ND")]
    Nd,
    /// NVE_VN_VTEPS: (VNI, VTEP) pairs decapsulation accepts.
    #[value(alias = "NVE_VN_VTEPS")]
    VnVteps,
}

impl DumpMap {
    /// The pinned map's name.
    pub fn pin_name(self) -> &'static str {
        match self {
            DumpMap::Config => CONFIG_MAP,
            DumpMap::Ports => PORTS_MAP,
            DumpMap::Vns => VNS_MAP,
            DumpMap::Fdb => FDB_MAP,
            DumpMap::Nexthops => NEXTHOPS_MAP,
            DumpMap::Arp => ARP_MAP,
            DumpMap::Nd => ND_MAP,
            DumpMap::VnVteps => VN_VTEPS_MAP,
        }
    }
}

/// One entry: its key and value, field by field.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DumpEntry {
    pub key: Value,
    pub value: Value,
}

/// The entries of `map` pinned under `pin_dir`, in the map's order.
pub fn dump(pin_dir: &Path, map: DumpMap) -> Result<Vec<DumpEntry>> {
    let name = map.pin_name();
    let data = MapData::from_pin(pin_dir.join(name)).map_err(map_err(name))?;
    match map {
        DumpMap::Config => {
            let a: Array<_, DataplaneConfig> =
                Array::try_from(aya::maps::Map::Array(data)).map_err(map_err(name))?;
            let c = a.get(&0, 0).map_err(map_err(name))?;
            Ok(vec![DumpEntry {
                key: json!(0),
                value: config(&c),
            }])
        }
        DumpMap::Ports => entries(data, name, |k: PortKey, v: PortValue| {
            (
                json!({"ifindex": k.ifindex, "vid": k.vid}),
                json!({
                    "vni": v.vni,
                    "active": v.is_active(),
                    "receives": v.receives(),
                    "check_src_mac": v.checks_src_mac(),
                    "counters": v.counters,
                    "vn_counters": v.vn_counters,
                }),
            )
        }),
        DumpMap::Vns => entries(data, name, |vni: u32, v: VnInfo| (json!(vni), vn(&v))),
        DumpMap::Fdb => entries(data, name, |k: FdbKey, v: FdbEntry| {
            (json!({"vni": k.vni, "mac": MacAddr(k.mac)}), fdb(&v))
        }),
        DumpMap::Nexthops => entries(data, name, |k: [u8; 4], v: NextHop| {
            (
                json!(Ipv4Addr::from(k)),
                json!({
                    "ifindex": v.ifindex,
                    "mtu": v.mtu,
                    "smac": MacAddr(v.smac),
                    "dmac": MacAddr(v.dmac),
                }),
            )
        }),
        DumpMap::Arp => entries(data, name, |k: ArpKey, v: ArpEntry| {
            (
                json!({"vni": k.vni, "ip": Ipv4Addr::from(k.ip)}),
                json!({"mac": MacAddr(v.mac)}),
            )
        }),
        DumpMap::Nd => entries(data, name, |k: NdKey, v: ArpEntry| {
            (
                json!({"vni": k.vni, "ip": Ipv6Addr::from(k.ip)}),
                json!({"mac": MacAddr(v.mac)}),
            )
        }),
        DumpMap::VnVteps => entries(data, name, |k: VnVtepKey, v: u32| {
            (json!({"vni": k.vni, "vtep": vtep(&k.vtep)}), json!(v))
        }),
    }
}

/// Every entry of the hash map in `data`, decoded by `decode`.
fn entries<K: Pod, V: Pod>(
    data: MapData,
    name: &'static str,
    decode: impl Fn(K, V) -> (Value, Value),
) -> Result<Vec<DumpEntry>> {
    let m: HashMap<_, K, V> =
        HashMap::try_from(aya::maps::Map::HashMap(data)).map_err(map_err(name))?;
    m.iter()
        .map(|e| {
            let (k, v) = e.map_err(map_err(name))?;
            let (key, value) = decode(k, v);
            Ok(DumpEntry { key, value })
        })
        .collect::<std::result::Result<_, DataplaneError>>()
}

fn vtep(v: &Vtep) -> IpAddr {
    match vtep_ipv4(v) {
        Some(a) => IpAddr::V4(a.into()),
        None => IpAddr::V6((*v).into()),
    }
}

fn port(p: &LocalPort) -> Value {
    json!({
        "ifindex": p.ifindex,
        "vid": p.vid,
        "tap": p.is_tap(),
        "check_ipv4": p.checks_ipv4(),
        "check_ipv6": p.checks_ipv6(),
    })
}

fn config(c: &DataplaneConfig) -> Value {
    json!({
        "vtep_ipv4": Ipv4Addr::from(c.vtep_ipv4),
        "vtep_ipv6": Ipv6Addr::from(c.vtep_ipv6),
        "underlay_ifindex": c.underlay_ifindex,
        "underlay_mtu": c.underlay_mtu,
        "underlay_mac": MacAddr(c.underlay_mac),
        "tunnel_ifindex": c.tunnel_ifindex,
        "ttl": c.ttl,
        "monitor": c.monitor,
        "monitor_sample": c.monitor_sample,
    })
}

fn fdb(e: &FdbEntry) -> Value {
    let kind = match e.kind {
        FDB_LOCAL => "local",
        FDB_REMOTE => "remote",
        FDB_MOVED => "moved",
        _ => "unknown",
    };
    match e.kind {
        FDB_LOCAL => json!({"kind": kind, "port": port(&e.port)}),
        FDB_REMOTE | FDB_MOVED => json!({"kind": kind, "vtep": vtep(&e.remote)}),
        code => json!({"kind": kind, "code": code}),
    }
}

fn vn(v: &VnInfo) -> Value {
    let remotes = &v.remotes[..(v.remote_count as usize).min(v.remotes.len())];
    let ports = &v.ports[..(v.port_count as usize).min(v.ports.len())];
    let vteps = &v.vteps[..usize::from(v.vtep_count).min(v.vteps.len())];
    json!({
        "flood_unknown": v.floods_unknown(),
        "any_vtep": v.accepts_any_vtep(),
        "vteps_inline": v.lists_vteps_inline(),
        "mtu": v.mtu,
        "counters": v.counters,
        "remotes": remotes.iter().map(vtep).collect::<Vec<_>>(),
        "remotes_v4": v.remote_v4_count,
        "ports": ports.iter().map(port).collect::<Vec<_>>(),
        "port_counters": &v.port_counters[..ports.len()],
        "vteps": vteps
            .iter()
            .map(|a| Ipv4Addr::from(a.to_ne_bytes()))
            .collect::<Vec<_>>(),
    })
}

/// One entry as a line of `name=value` pairs (nested fields dotted, lists comma-joined).
pub fn entry_line(e: &DumpEntry) -> String {
    let mut key = Vec::new();
    let mut value = Vec::new();
    flatten("", &e.key, &mut key);
    flatten("", &e.value, &mut value);
    format!("{} -> {}", key.join(" "), value.join(" "))
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, v, out);
            }
        }
        Value::Array(a) if a.iter().any(Value::is_object) => {
            for (i, v) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(scalar).collect();
            out.push(format!("{prefix}=[{}]", items.join(",")));
        }
        v if prefix.is_empty() => out.push(scalar(v)),
        v => out.push(format!("{prefix}={}", scalar(v))),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_print_as_named_fields() {
        let e = DumpEntry {
            key: json!({"vni": 100, "mac": "52:54:00:12:34:56"}),
            value: fdb(&FdbEntry::local(LocalPort::new(7, 0))),
        };
        assert_eq!(
            entry_line(&e),
            "mac=52:54:00:12:34:56 vni=100 -> kind=local port.check_ipv4=false \
             port.check_ipv6=false port.ifindex=7 port.tap=false port.vid=0"
        );
        let remote = fdb(&FdbEntry::remote(nve_common::maps::vtep_v4([10, 0, 0, 2])));
        assert_eq!(remote, json!({"kind": "remote", "vtep": "10.0.0.2"}));
        let mut info = VnInfo {
            remote_count: 1,
            port_count: 1,
            ..VnInfo::default()
        };
        info.remotes[0] = nve_common::maps::vtep_v4([10, 0, 0, 2]);
        info.ports[0] = LocalPort::new(5, 0);
        let line = entry_line(&DumpEntry {
            key: json!(100),
            value: vn(&info),
        });
        assert!(
            line.starts_with("100 -> ") && line.contains("remotes=[10.0.0.2]"),
            "{line}"
        );
        assert!(line.contains("ports[0].ifindex=5"), "{line}");
    }
}
