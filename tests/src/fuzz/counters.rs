//! The outcome counters of one hook, as the fuzzer reads them after each frame.
use aya::maps::{MapData, PerCpuArray};
use nve_common::{
    maps::STATS_MAP,
    metrics::{Counter, DropReason, Forward, Hook, Outcome, SLOTS_PER_HOOK},
};

use crate::progtest::Loaded;

/// The hook's outcome counters, read one slot per frame: a copy of every slot is kept, the
/// expected slot is read after the run, and only when it did not move by exactly one are
/// all slots read to find what did.
pub struct Counters<'a> {
    map: PerCpuArray<&'a MapData, Counter>,
    hook: Hook,
    seen: Vec<u64>,
}

impl<'a> Counters<'a> {
    pub fn new(loaded: &'a Loaded, hook: Hook) -> Self {
        let map = PerCpuArray::try_from(loaded.ebpf.map(STATS_MAP).expect(STATS_MAP))
            .expect("NVE_STATS is a per-CPU array");
        let mut c = Self {
            map,
            hook,
            seen: Vec::new(),
        };
        c.seen = (0..SLOTS_PER_HOOK).map(|i| c.read(c.base() + i)).collect();
        c
    }

    fn base(&self) -> u32 {
        self.hook as u32 * SLOTS_PER_HOOK
    }

    fn read(&self, slot: u32) -> u64 {
        let values = self.map.get(&slot, 0).expect("reading NVE_STATS");
        values.iter().map(|c| c.packets).sum()
    }

    /// The slots (absolute) that moved since the last call, and by how much; `expected` is
    /// tried first.
    pub fn counted(&mut self, expected: Outcome) -> Vec<(u32, u64)> {
        let slot = expected.slot(self.hook);
        let i = (slot - self.base()) as usize;
        let now = self.read(slot);
        if now == self.seen[i] + 1 {
            self.seen[i] = now;
            return vec![(slot, 1)];
        }
        self.counted_since_last()
    }

    pub fn counted_since_last(&mut self) -> Vec<(u32, u64)> {
        let mut moved = Vec::new();
        for i in 0..SLOTS_PER_HOOK {
            let now = self.read(self.base() + i);
            let before = std::mem::replace(&mut self.seen[i as usize], now);
            if now != before {
                moved.push((self.base() + i, now.wrapping_sub(before)));
            }
        }
        moved
    }

    pub fn outcome(&self, slot: u32) -> Option<Outcome> {
        let forwards = Forward::ALL.into_iter().map(Outcome::Forward);
        let drops = DropReason::ALL.into_iter().map(Outcome::Drop);
        forwards.chain(drops).find(|o| o.slot(self.hook) == slot)
    }

    pub fn name(&self, slot: u32) -> String {
        self.outcome(slot)
            .map_or_else(|| format!("slot {slot}"), |o| o.name().to_string())
    }
}
