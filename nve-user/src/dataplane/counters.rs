//! The dataplane's counters, read on descriptors of their own (the pinned maps opened
//! again), so the ports read them without the writer.
use std::{collections::BTreeMap, path::Path};

use aya::maps::{Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use nve_common::{
    maps::{PORT_STATS_MAP, STATS_MAP, VN_STATS_MAP},
    metrics::{
        Counter, DropReason, Forward, Hook, Outcome, PortCounter, PortTraffic, VnCounter, VnTraffic,
    },
};

use super::{Result, map_err};
use crate::api::{CounterView, CountersView, StatsView};

pub struct Counters {
    stats: PerCpuArray<MapData, Counter>,
    vn_stats: PerCpuHashMap<MapData, u32, VnTraffic>,
    port_stats: PerCpuHashMap<MapData, u32, PortTraffic>,
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
            vn_stats: pinned(pin_dir, VN_STATS_MAP, Map::PerCpuHashMap)?,
            port_stats: pinned(pin_dir, PORT_STATS_MAP, Map::PerCpuHashMap)?,
        })
    }

    /// Counters summed over CPUs: by hook and outcome name (zero counters left out), by VN
    /// and by VM port.
    pub fn read(&self) -> Result<StatsView> {
        let mut vns = BTreeMap::new();
        for entry in self.vn_stats.iter() {
            let (vni, values) = entry.map_err(map_err(VN_STATS_MAP))?;
            vns.insert(
                vni,
                traffic_view(&values, VnCounter::ALL.map(VnCounter::name)),
            );
        }
        let mut ports = BTreeMap::new();
        for entry in self.port_stats.iter() {
            let (ifindex, values) = entry.map_err(map_err(PORT_STATS_MAP))?;
            let name = crate::netlink::ifname(ifindex).unwrap_or_else(|| format!("if{ifindex}"));
            ports.insert(
                name,
                traffic_view(&values, PortCounter::ALL.map(PortCounter::name)),
            );
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
