//! Per-CPU outcome counters: every packet a program sees is counted exactly once.
use nve_common::metrics::{DropReason, Forward, Hook, Outcome};

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

/// What an entry point returns for the outcome of its `try_*` body, counted once: the
/// body's action when it forwarded, `drop` when it dropped. `len` is the frame's length
/// as it arrived.
#[inline(always)]
pub fn account<A>(hook: Hook, len: u32, result: Result<(A, Forward), DropReason>, drop: A) -> A {
    match result {
        Ok((action, forward)) => {
            count(hook, Outcome::Forward(forward), len);
            action
        }
        Err(reason) => {
            count(hook, Outcome::Drop(reason), len);
            drop
        }
    }
}
