//! Per-CPU outcome counters: every packet a program sees is counted exactly once.
use nve_common::metrics::{Hook, Outcome};

use crate::maps::NVE_STATS;

#[inline(always)]
pub fn count(hook: Hook, outcome: Outcome, bytes: u32) {
    if let Some(c) = NVE_STATS.get_ptr_mut(outcome.slot(hook)) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
        }
    }
}
