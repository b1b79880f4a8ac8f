//! The dataplane's counters, read on descriptors of their own (the pinned maps opened
//! again), so the ports read them without the writer.
use std::{collections::BTreeMap, path::Path};

use aya::maps::{HashMap, Map, MapData, PerCpuArray, PerCpuValues};
use nve_common::{
    maps::{
        NO_COUNTERS, PORT_STATS_MAP, PORTS_MAP, PortKey, PortValue, STATS_MAP, VN_STATS_MAP,
        VNS_MAP, VnInfo,
    },
    metrics::{
        Counter, DropReason, Forward, Hook, Outcome, PortCounter, PortTraffic, VnCounter, VnTraffic,
    },
};

use super::{Result, map_err};
use crate::api::{CounterView, CountersView, StatsView};

pub struct Counters {
    stats: PerCpuArray<MapData, Counter>,
    vn_stats: PerCpuArray<MapData, VnTraffic>,
    port_stats: PerCpuArray<MapData, PortTraffic>,
    /// Where the VNs' and ports' counter slots are written.
    vns: HashMap<MapData, u32, VnInfo>,
    ports: HashMap<MapData, PortKey, PortValue>,
}

/// Opens the map pinned as `name` in `pin_dir`, of the kind `kind` wraps.
fn pinned<T>(pin_dir: &Path, name: &'static str, kind: fn(MapData) -> Map) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let data = MapData::from_pin(pin_dir.join(name)).map_err(map_err(name))?;
    T::try_from(kind(data)).map_err(map_err(name))
}

impl Counters {
    pub(super) fn open(pin_dir: &Path) -> Result<Self> {
        Ok(Self {
            stats: pinned(pin_dir, STATS_MAP, Map::PerCpuArray)?,
            vn_stats: pinned(pin_dir, VN_STATS_MAP, Map::PerCpuArray)?,
            port_stats: pinned(pin_dir, PORT_STATS_MAP, Map::PerCpuArray)?,
            vns: pinned(pin_dir, VNS_MAP, Map::HashMap)?,
            ports: pinned(pin_dir, PORTS_MAP, Map::HashMap)?,
        })
    }

    /// Counters summed over CPUs: by hook and outcome name (zero counters left out), by VN
    /// and by VM port (those that carried a packet).
    pub fn read(&self) -> Result<StatsView> {
        let mut vns = BTreeMap::new();
        for entry in self.vns.iter() {
            let (vni, info) = entry.map_err(map_err(VNS_MAP))?;
            if let Some(view) = slot_view(
                &self.vn_stats,
                info.counters,
                VN_STATS_MAP,
                VnCounter::ALL.map(VnCounter::name),
            )? {
                vns.insert(vni, view);
            }
        }
        let mut slots = BTreeMap::new();
        for entry in self.ports.iter() {
            let (key, value) = entry.map_err(map_err(PORTS_MAP))?;
            slots.insert(key.ifindex, value.counters);
        }
        let mut ports = BTreeMap::new();
        for (ifindex, slot) in slots {
            let names = PortCounter::ALL.map(PortCounter::name);
            if let Some(view) = slot_view(&self.port_stats, slot, PORT_STATS_MAP, names)? {
                let name =
                    crate::netlink::ifname(ifindex).unwrap_or_else(|| format!("if{ifindex}"));
                ports.insert(name, view);
            }
        }
        Ok(StatsView {
            hooks: self.hook_stats()?,
            vns,
            ports,
        })
    }

    fn hook_stats(&self) -> Result<BTreeMap<String, CountersView>> {
        let outcomes = Forward::ALL
            .iter()
            .map(|&f| Outcome::Forward(f))
            .chain(DropReason::ALL.iter().map(|&d| Outcome::Drop(d)));
        let mut view = BTreeMap::new();
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
}

/// The counters at `slot` of `map`, if it is one and they counted a packet.
fn slot_view<const N: usize>(
    map: &PerCpuArray<MapData, [Counter; N]>,
    slot: u16,
    name: &'static str,
    names: [&'static str; N],
) -> Result<Option<CountersView>>
where
    [Counter; N]: aya::Pod,
{
    if slot == NO_COUNTERS {
        return Ok(None);
    }
    let values = map.get(&u32::from(slot), 0).map_err(map_err(name))?;
    let view = traffic_view(&values, names);
    Ok(view.values().any(|c| c.packets != 0).then_some(view))
}

/// Named slots of a per-CPU counter array, summed over CPUs.
fn traffic_view<const N: usize>(
    values: &PerCpuValues<[Counter; N]>,
    names: [&'static str; N],
) -> CountersView {
    names
        .iter()
        .enumerate()
        .map(|(slot, name)| {
            let sum = values
                .iter()
                .fold(CounterView::default(), |acc, c| CounterView {
                    packets: acc.packets + c[slot].packets,
                    bytes: acc.bytes + c[slot].bytes,
                });
            (name.to_string(), sum)
        })
        .collect()
}
