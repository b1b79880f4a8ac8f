//! The monitor's side of the dataplane: its ring buffer and its per-CPU lost count, taken
//! by one monitor at a time, and the config fields that turn the programs' reports on.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use nve_common::maps::{MONITOR_LOST, MONITOR_STATE_MAP};

/// `NVE_MONITOR` and `NVE_MONITOR_STATE`: what a monitor reads.
pub struct MonitorRing {
    pub ring: RingBuf<MapData>,
    state: PerCpuArray<MapData, u64>,
}

impl MonitorRing {
    pub(super) fn new(ring: RingBuf<MapData>, state: PerCpuArray<MapData, u64>) -> Self {
        Self { ring, state }
    }

    /// Events lost (the ring buffer was full) since the map was created, over all CPUs.
    pub fn lost(&self) -> u64 {
        match self.state.get(&MONITOR_LOST, 0) {
            Ok(per_cpu) => per_cpu.iter().sum(),
            Err(e) => {
                tracing::warn!("reading {MONITOR_STATE_MAP}: {e}");
                0
            }
        }
    }
}

impl AsRawFd for MonitorRing {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

impl AsFd for MonitorRing {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}
