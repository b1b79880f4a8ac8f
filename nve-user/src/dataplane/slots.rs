//! Counter slots: where each VN's and each VM port's counters live in the per-CPU arrays
//! `VN_STATS_MAP` and `PORT_STATS_MAP`. The daemon writes a VN's slot into its `VnInfo`
//! (and into the `PortValue`s and flood lists that name it) and a port's into its
//! `PortValue`s, so the programs count without a lookup of their own.
use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
};

use aya::{
    Pod,
    maps::{MapData, PerCpuArray, PerCpuValues},
};
use nve_common::{
    maps::{
        NO_COUNTERS, PORT_COUNTER_SLOTS, PORT_STATS_MAP, PortKey, PortValue, VN_COUNTER_SLOTS,
        VN_STATS_MAP, VnInfo,
    },
    metrics::{Counter, PortTraffic, VnTraffic},
};

use super::{DataplaneError, Result, map_err};

/// The slots of every VN (by VNI) and VM port (by ifindex), and the arrays they index.
pub(super) struct CounterSlots {
    vns: Slots<u32>,
    ports: Slots<u32>,
    vn_stats: PerCpuArray<MapData, VnTraffic>,
    port_stats: PerCpuArray<MapData, PortTraffic>,
}

impl CounterSlots {
    /// Takes over the slots the maps' current `ports` and `vns` name.
    pub(super) fn new<'a>(
        vn_stats: PerCpuArray<MapData, VnTraffic>,
        port_stats: PerCpuArray<MapData, PortTraffic>,
        ports: impl Iterator<Item = (&'a PortKey, &'a PortValue)>,
        vns: impl Iterator<Item = (&'a u32, &'a VnInfo)>,
    ) -> Self {
        Self {
            vns: Slots::new(
                last_slot(VN_COUNTER_SLOTS),
                vns.map(|(&v, i)| (v, i.counters)),
            ),
            ports: Slots::new(
                last_slot(PORT_COUNTER_SLOTS),
                ports.map(|(k, v)| (k.ifindex, v.counters)),
            ),
            vn_stats,
            port_stats,
        }
    }

    /// `vns` and `ports` as the maps should hold them: with their counter slots. Slots of
    /// VNs and ports no longer there are freed, but those of VNs `vn_kept` and ports (by
    /// ifindex) `port_kept` keeps (a scoped change leaves them in the maps); a slot given
    /// out anew starts at zero.
    pub(super) fn stamp(
        &mut self,
        ports: &HashMap<PortKey, PortValue>,
        vns: &HashMap<u32, VnInfo>,
        vn_kept: impl Fn(u32) -> bool,
        port_kept: impl Fn(u32) -> bool,
    ) -> Result<(HashMap<PortKey, PortValue>, HashMap<u32, VnInfo>)> {
        self.vns
            .retain(|&vni| vns.contains_key(&vni) || vn_kept(vni));
        let wanted: HashSet<u32> = ports.keys().map(|k| k.ifindex).collect();
        self.ports
            .retain(|ifindex| wanted.contains(ifindex) || port_kept(*ifindex));
        let mut port_slot = |ifindex: u32| -> Result<u16> {
            let slot = self.ports.assign(ifindex);
            if slot.fresh {
                zero(&mut self.port_stats, slot.index, PORT_STATS_MAP)?;
            }
            Ok(slot.index)
        };
        let mut port_slots = HashMap::new();
        for key in ports.keys() {
            if let std::collections::hash_map::Entry::Vacant(e) = port_slots.entry(key.ifindex) {
                e.insert(port_slot(key.ifindex)?);
            }
        }
        let mut stamped_vns = HashMap::with_capacity(vns.len());
        for (&vni, info) in vns {
            let slot = self.vns.assign(vni);
            if slot.fresh {
                zero(&mut self.vn_stats, slot.index, VN_STATS_MAP)?;
            }
            let mut info = VnInfo {
                counters: slot.index,
                ..*info
            };
            for (i, port) in info.ports.iter().take(info.port_count as usize).enumerate() {
                // A flooding port out of a scoped change's reach has its slot already.
                info.port_counters[i] = port_slots
                    .get(&port.ifindex)
                    .or_else(|| self.ports.get(&port.ifindex))
                    .copied()
                    .unwrap_or(NO_COUNTERS);
            }
            stamped_vns.insert(vni, info);
        }
        let stamped_ports = ports
            .iter()
            .map(|(k, v)| {
                let vn = stamped_vns
                    .get(&v.vni)
                    .map(|i| i.counters)
                    .or_else(|| self.vns.get(&v.vni).copied())
                    .unwrap_or(NO_COUNTERS);
                let value = PortValue {
                    counters: port_slots[&k.ifindex],
                    vn_counters: vn,
                    ..*v
                };
                (*k, value)
            })
            .collect();
        Ok((stamped_ports, stamped_vns))
    }
}

/// The highest slot of an array of `len` (slot 0 is `NO_COUNTERS`).
fn last_slot(len: u32) -> u16 {
    u16::try_from(len - 1).expect("counter arrays fit u16 slots")
}

/// Sets every CPU's copy of slot `index` of `map` to zero counters.
fn zero<const N: usize>(
    map: &mut PerCpuArray<MapData, [Counter; N]>,
    index: u16,
    name: &'static str,
) -> Result<()>
where
    [Counter; N]: Pod,
{
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
    let zeros = PerCpuValues::try_from(vec![[Counter::default(); N]; cpus])
        .map_err(|e| DataplaneError::Cpus(std::io::Error::other(e)))?;
    map.set(u32::from(index), zeros, 0).map_err(map_err(name))
}

/// Slots 1..=`capacity` handed out by key. A slot freed is given out again only after
/// every other: the counters of a VN or port just removed stay readable a while.
#[derive(Debug)]
pub(super) struct Slots<K> {
    by_key: HashMap<K, u16>,
    free: std::collections::VecDeque<u16>,
}

/// A slot, and whether it was just given out (its counters still hold a former owner's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Slot {
    pub index: u16,
    pub fresh: bool,
}

impl<K: Copy + Eq + Hash> Slots<K> {
    /// `capacity` slots, of which those in `taken` (as a previous daemon wrote them into the
    /// maps) are kept for their keys.
    pub(super) fn new(capacity: u16, taken: impl IntoIterator<Item = (K, u16)>) -> Self {
        let by_key: HashMap<K, u16> = taken
            .into_iter()
            .filter(|&(_, slot)| slot != NO_COUNTERS && slot <= capacity)
            .collect();
        let used: HashSet<u16> = by_key.values().copied().collect();
        let free = (1..=capacity).filter(|s| !used.contains(s)).collect();
        Self { by_key, free }
    }

    /// `key`'s slot, given one if it has none; `NO_COUNTERS` (not fresh) when all are
    /// taken: the key is then not counted.
    pub(super) fn assign(&mut self, key: K) -> Slot {
        if let Some(&index) = self.by_key.get(&key) {
            return Slot {
                index,
                fresh: false,
            };
        }
        match self.free.pop_front() {
            Some(index) => {
                self.by_key.insert(key, index);
                Slot { index, fresh: true }
            }
            None => Slot {
                index: NO_COUNTERS,
                fresh: false,
            },
        }
    }

    /// `key`'s slot, if it has one.
    pub(super) fn get(&self, key: &K) -> Option<&u16> {
        self.by_key.get(key)
    }

    /// Frees the slots of the keys `keep` refuses.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        let free = &mut self.free;
        self.by_key.retain(|k, slot| {
            let kept = keep(k);
            if !kept {
                free.push_back(*slot);
            }
            kept
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_slots_and_freed_slots_come_back_last() {
        let mut s = Slots::new(3, [(10u32, 2)]);
        assert_eq!(
            s.assign(10),
            Slot {
                index: 2,
                fresh: false
            }
        );
        assert_eq!(s.assign(11).index, 1);
        assert!(s.assign(12).fresh);
        assert_eq!(s.assign(12).index, 3);
        assert_eq!(s.assign(13).index, NO_COUNTERS);
        s.retain(|&k| k != 11);
        let again = s.assign(13);
        assert_eq!((again.index, again.fresh), (1, true));
    }

    #[test]
    fn slots_out_of_range_from_the_maps_are_ignored() {
        let mut s = Slots::new(2, [(1u32, 9), (2, NO_COUNTERS)]);
        assert_eq!(s.assign(1).index, 1);
        assert_eq!(s.assign(2).index, 2);
    }
}
