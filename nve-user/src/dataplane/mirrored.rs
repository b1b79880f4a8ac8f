//! A pinned hash map mirrored in the daemon, so a change costs syscalls only for what
//! differs.
use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
};

use aya::{
    Pod,
    maps::{HashMap as BpfHashMap, MapData},
};

use super::{DataplaneError, Result, map_err};

/// A pinned hash map and what this daemon knows it holds: read once when the daemon
/// starts (the map may hold what an earlier daemon wrote), then kept in step with every
/// write, so a change costs syscalls only for the entries that differ.
pub(super) struct Mirrored<K, V> {
    map: BpfHashMap<MapData, K, V>,
    current: HashMap<K, V>,
    name: &'static str,
}

impl<K: Pod + Eq + Hash, V: Pod + PartialEq> Mirrored<K, V> {
    pub(super) fn new(map: BpfHashMap<MapData, K, V>, name: &'static str) -> Result<Self> {
        let current = map
            .iter()
            .collect::<std::result::Result<HashMap<_, _>, _>>()
            .map_err(map_err(name))?;
        Ok(Self { map, current, name })
    }

    /// What the map holds.
    pub(super) fn current(&self) -> impl Iterator<Item = (&K, &V)> {
        self.current.iter()
    }

    /// Deletes the entries `desired` does not have (of those in `scope`, when given);
    /// returns their keys.
    pub(super) fn remove_absent(
        &mut self,
        desired: &HashMap<K, V>,
        scope: Option<&HashSet<K>>,
    ) -> Result<Vec<K>> {
        let Some(keys) = scope else {
            return self.remove_absent_where(desired, |_| true);
        };
        let stale: Vec<K> = keys
            .iter()
            .filter(|k| self.current.contains_key(k) && !desired.contains_key(k))
            .copied()
            .collect();
        self.remove(&stale)?;
        Ok(stale)
    }

    fn remove(&mut self, keys: &[K]) -> Result<()> {
        for k in keys {
            self.map.remove(k).map_err(map_err(self.name))?;
            self.current.remove(k);
        }
        Ok(())
    }

    /// Deletes the entries `desired` does not have of those whose keys pass `in_scope`
    /// (a scan of what the map holds: for the small maps); returns their keys.
    pub(super) fn remove_absent_where(
        &mut self,
        desired: &HashMap<K, V>,
        in_scope: impl Fn(&K) -> bool,
    ) -> Result<Vec<K>> {
        let stale: Vec<K> = self
            .current
            .keys()
            .filter(|k| in_scope(k) && !desired.contains_key(k))
            .copied()
            .collect();
        self.remove(&stale)?;
        Ok(stale)
    }

    /// Writes the entries of `desired` that the map lacks or holds otherwise.
    pub(super) fn upsert_changed(&mut self, desired: &HashMap<K, V>) -> Result<()> {
        for (k, v) in desired {
            if self.current.get(k) == Some(v) {
                continue;
            }
            let name = self.name;
            self.map.insert(k, v, 0).map_err(|e| match e {
                aya::maps::MapError::SyscallError(ref s)
                    if s.io_error.raw_os_error() == Some(libc::E2BIG) =>
                {
                    DataplaneError::MapFull { name }
                }
                e => DataplaneError::Map { name, source: e },
            })?;
            self.current.insert(*k, *v);
        }
        Ok(())
    }
}
