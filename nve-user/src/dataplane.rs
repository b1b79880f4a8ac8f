//! The only code that touches the eBPF programs and maps: loads and pins them, attaches
//! them to the underlay and VM ports, and reconciles map contents with the model's
//! [`Desired`] state by difference, so entries traffic uses are never cleared and refilled.
use std::{
    collections::{BTreeMap, HashMap},
    fs,
    hash::Hash,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, tc::SchedClassifierLinkId},
};
use nve_common::{
    maps::{
        CONFIG_MAP, DataplaneConfig, FDB_MAP, FdbEntry, FdbKey, NEXTHOPS_MAP, NextHop, PORTS_MAP,
        PortKey, PortValue, STATS_MAP, TUNNEL_DEV, VNS_MAP, VnInfo,
    },
    metrics::{Counter, DropReason, Forward, Hook, Outcome},
};
use serde::{Deserialize, Serialize};

use crate::{
    api::{CounterView, StatsView},
    model::Desired,
};

/// The compiled nve-ebpf object, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nve"));

/// The eBPF object the daemon loads (tests and the bench load it too).
pub fn ebpf_object() -> &'static [u8] {
    EBPF_OBJECT
}

/// How the underlay decapsulates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UnderlayMode {
    /// TC ingress: keeps GSO/GRO skbs whole; the peer of a veth underlay keeps TSO.
    #[default]
    Tc,
    /// XDP for known unicast (TC behind it for broadcast and tagged ports). Attaching XDP
    /// to a veth turns TSO off on its peer.
    Xdp,
}

impl std::fmt::Display for UnderlayMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UnderlayMode::Tc => "tc",
            UnderlayMode::Xdp => "xdp",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("creating pin directory {0}")]
    PinDir(PathBuf, #[source] std::io::Error),
    #[error("loading the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching {name} to {iface}")]
    Attach {
        name: &'static str,
        iface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {name} is full")]
    MapFull { name: &'static str },
}

type Result<T> = std::result::Result<T, DataplaneError>;

const TC_UNDERLAY_RX: &str = "tc_underlay_rx";
const XDP_UNDERLAY_RX: &str = "xdp_underlay_rx";
const TC_VM_EGRESS: &str = "tc_vm_egress";
const TC_TUNNEL_RX: &str = "tc_tunnel_rx";

pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    ports: BpfHashMap<MapData, PortKey, PortValue>,
    vns: BpfHashMap<MapData, u32, VnInfo>,
    fdb: BpfHashMap<MapData, FdbKey, FdbEntry>,
    next_hops: BpfHashMap<MapData, [u8; 4], NextHop>,
    stats: PerCpuArray<MapData, Counter>,
    /// VM ports with `tc_vm_egress` attached.
    vm_links: BTreeMap<String, SchedClassifierLinkId>,
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

impl Dataplane {
    /// Loads the programs with their maps pinned under `pin_dir`, writes the configuration
    /// and attaches decapsulation to the underlay and to `TUNNEL_DEV` (which must exist).
    pub fn load(
        pin_dir: &Path,
        underlay: &str,
        mode: UnderlayMode,
        config: DataplaneConfig,
    ) -> Result<Self> {
        fs::create_dir_all(pin_dir).map_err(|e| DataplaneError::PinDir(pin_dir.into(), e))?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(EBPF_OBJECT)
            .map_err(DataplaneError::Load)?;
        let mut cfg: Array<_, DataplaneConfig> = take_map(&mut ebpf, CONFIG_MAP)?;
        cfg.set(0, config, 0).map_err(map_err(CONFIG_MAP))?;
        let mut dp = Self {
            ports: take_map(&mut ebpf, PORTS_MAP)?,
            vns: take_map(&mut ebpf, VNS_MAP)?,
            fdb: take_map(&mut ebpf, FDB_MAP)?,
            next_hops: take_map(&mut ebpf, NEXTHOPS_MAP)?,
            stats: take_map(&mut ebpf, STATS_MAP)?,
            ebpf,
            pin_dir: pin_dir.into(),
            vm_links: BTreeMap::new(),
        };

        let tc = dp.classifier(TC_UNDERLAY_RX)?;
        tc.attach(underlay, TcAttachType::Ingress)
            .map_err(|source| DataplaneError::Attach {
                name: TC_UNDERLAY_RX,
                iface: underlay.into(),
                source,
            })?;
        if mode == UnderlayMode::Xdp {
            let xdp: &mut Xdp = dp
                .ebpf
                .program_mut(XDP_UNDERLAY_RX)
                .ok_or(DataplaneError::MissingProgram(XDP_UNDERLAY_RX))?
                .try_into()
                .map_err(|source| DataplaneError::Program {
                    name: XDP_UNDERLAY_RX,
                    source,
                })?;
            xdp.load().map_err(|source| DataplaneError::Program {
                name: XDP_UNDERLAY_RX,
                source,
            })?;
            xdp.attach(underlay, XdpMode::Default)
                .map_err(|source| DataplaneError::Attach {
                    name: XDP_UNDERLAY_RX,
                    iface: underlay.into(),
                    source,
                })?;
        }
        let tunnel = dp.classifier(TC_TUNNEL_RX)?;
        tunnel
            .attach(TUNNEL_DEV, TcAttachType::Ingress)
            .map_err(|source| DataplaneError::Attach {
                name: TC_TUNNEL_RX,
                iface: TUNNEL_DEV.into(),
                source,
            })?;
        dp.classifier(TC_VM_EGRESS)?;
        Ok(dp)
    }

    /// The named classifier, loaded.
    fn classifier(&mut self, name: &'static str) -> Result<&mut SchedClassifier> {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })?;
        if prog.fd().is_err() {
            prog.load()
                .map_err(|source| DataplaneError::Program { name, source })?;
        }
        Ok(prog)
    }

    /// Makes the VM ports with `tc_vm_egress` attached exactly `ports` (those that exist).
    pub fn set_vm_ports<'a>(&mut self, ports: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let wanted: Vec<&str> = ports.into_iter().collect();
        let stale: Vec<String> = self
            .vm_links
            .keys()
            .filter(|p| !wanted.contains(&p.as_str()))
            .cloned()
            .collect();
        for port in stale {
            let id = self.vm_links.remove(&port).expect("listed above");
            // The interface may be gone already, taking the link with it.
            let _ = self.classifier(TC_VM_EGRESS)?.detach(id);
        }
        for port in wanted {
            if self.vm_links.contains_key(port) {
                continue;
            }
            let id = self
                .classifier(TC_VM_EGRESS)?
                .attach(port, TcAttachType::Ingress)
                .map_err(|source| DataplaneError::Attach {
                    name: TC_VM_EGRESS,
                    iface: port.into(),
                    source,
                })?;
            self.vm_links.insert(port.to_string(), id);
        }
        Ok(())
    }

    /// Brings the maps to `desired`, touching only entries that differ. Ports are removed
    /// first and added last, so a port is never active before its VN and FDB are in place.
    pub fn apply(&mut self, desired: &Desired) -> Result<()> {
        remove_absent(&mut self.ports, &desired.ports, PORTS_MAP)?;
        remove_absent(&mut self.fdb, &desired.fdb, FDB_MAP)?;
        remove_absent(&mut self.vns, &desired.vns, VNS_MAP)?;
        upsert_changed(&mut self.vns, &desired.vns, VNS_MAP)?;
        upsert_changed(&mut self.fdb, &desired.fdb, FDB_MAP)?;
        upsert_changed(&mut self.ports, &desired.ports, PORTS_MAP)?;
        Ok(())
    }

    /// Makes the underlay next hops (remote VTEP -> egress and MACs) exactly `next_hops`.
    pub fn set_next_hops(&mut self, next_hops: &HashMap<[u8; 4], NextHop>) -> Result<()> {
        remove_absent(&mut self.next_hops, next_hops, NEXTHOPS_MAP)?;
        upsert_changed(&mut self.next_hops, next_hops, NEXTHOPS_MAP)
    }

    /// Counters summed over CPUs, by hook and outcome name; zero counters left out.
    pub fn stats(&self) -> Result<StatsView> {
        let outcomes = Forward::ALL
            .iter()
            .map(|&f| Outcome::Forward(f))
            .chain(DropReason::ALL.iter().map(|&d| Outcome::Drop(d)));
        let mut view = StatsView::new();
        for hook in Hook::ALL {
            let mut per_hook = BTreeMap::new();
            for outcome in outcomes.clone() {
                let values = self
                    .stats
                    .get(&outcome.slot(hook), 0)
                    .map_err(map_err(STATS_MAP))?;
                let sum = values
                    .iter()
                    .fold(CounterView::default(), |acc, c| CounterView {
                        packets: acc.packets + c.packets,
                        bytes: acc.bytes + c.bytes,
                    });
                if sum.packets != 0 {
                    per_hook.insert(outcome.name().to_string(), sum);
                }
            }
            view.insert(hook.name().to_string(), per_hook);
        }
        Ok(view)
    }

    /// Detaches everything and removes the pins: nothing of the instance is left.
    pub fn teardown(self) {
        let pin_dir = self.pin_dir.clone();
        drop(self);
        if let Err(e) = fs::remove_dir_all(&pin_dir) {
            tracing::warn!(pin_dir = %pin_dir.display(), "removing pins: {e}");
        }
        // The shared parent goes with the last instance (fails harmlessly otherwise).
        if let Some(parent) = pin_dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// Takes map `name` out of the object, typed.
fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::MissingMap(name))?;
    T::try_from(map).map_err(map_err(name))
}

fn remove_absent<K: Pod + Eq + Hash, V: Pod>(
    map: &mut BpfHashMap<MapData, K, V>,
    desired: &HashMap<K, V>,
    name: &'static str,
) -> Result<()> {
    let stale: Vec<K> = map
        .keys()
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(map_err(name))?
        .into_iter()
        .filter(|k| !desired.contains_key(k))
        .collect();
    for k in stale {
        map.remove(&k).map_err(map_err(name))?;
    }
    Ok(())
}

fn upsert_changed<K: Pod + Eq + Hash, V: Pod + PartialEq>(
    map: &mut BpfHashMap<MapData, K, V>,
    desired: &HashMap<K, V>,
    name: &'static str,
) -> Result<()> {
    for (k, v) in desired {
        if map.get(k, 0).ok().as_ref() == Some(v) {
            continue;
        }
        map.insert(k, v, 0).map_err(|e| match e {
            aya::maps::MapError::SyscallError(ref s)
                if s.io_error.raw_os_error() == Some(libc::E2BIG) =>
            {
                DataplaneError::MapFull { name }
            }
            e => DataplaneError::Map { name, source: e },
        })?;
    }
    Ok(())
}
