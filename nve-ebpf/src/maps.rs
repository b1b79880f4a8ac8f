//! Every map of the dataplane. Static names equal `nve_common::maps::*_MAP`, which the
//! daemon uses to open the pins.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use nve_common::{
    maps::{
        ARP_MAX_ENTRIES, ArpEntry, ArpKey, DataplaneConfig, EVENTS_BYTES, FDB_MAX_ENTRIES,
        FdbEntry, FdbKey, MONITOR_BYTES, ND_MAX_ENTRIES, NEXTHOPS_MAX_ENTRIES, NdKey, NextHop,
        PORT_COUNTER_SLOTS, PORTS_MAX_ENTRIES, PortKey, PortValue, VN_COUNTER_SLOTS,
        VN_VTEPS_MAX_ENTRIES, VNS_MAX_ENTRIES, VnInfo, VnVtepKey, Vtep,
    },
    metrics::{Counter, PortTraffic, STATS_MAX_ENTRIES, VnTraffic},
};

#[map]
pub static NVE_CONFIG: Array<DataplaneConfig> = Array::pinned(1, 0);

#[map]
pub static NVE_PORTS: HashMap<PortKey, PortValue> = HashMap::pinned(PORTS_MAX_ENTRIES, 0);

#[map]
pub static NVE_VNS: HashMap<u32, VnInfo> = HashMap::pinned(VNS_MAX_ENTRIES, 0);

#[map]
pub static NVE_FDB: HashMap<FdbKey, FdbEntry> = HashMap::pinned(FDB_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
pub static NVE_NEXTHOPS: HashMap<[u8; 4], NextHop> = HashMap::pinned(NEXTHOPS_MAX_ENTRIES, 0);

#[map]
pub static NVE_ARP: HashMap<ArpKey, ArpEntry> = HashMap::pinned(ARP_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
pub static NVE_ND: HashMap<NdKey, ArpEntry> = HashMap::pinned(ND_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
pub static NVE_VN_VTEPS: HashMap<VnVtepKey, u32> = HashMap::pinned(VN_VTEPS_MAX_ENTRIES, 0);

/// Bytes of `NVE_SCRATCH`: the largest frame the programs build whole (an ICMPv6 packet
/// too big: 14 + 40 + 8 + 48).
pub const SCRATCH_LEN: usize = 112;

/// A per-CPU buffer for frames the programs build (ICMP, neighbour advertisements): the
/// stack is too small for them next to tc_vm_egress's own locals.
#[map]
pub static NVE_SCRATCH: PerCpuArray<[u8; SCRATCH_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// Announcements VMs made (`announce`), read by the daemon.
#[map]
pub static NVE_EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

/// What the programs report while a monitor is attached (`monitor`), read by the daemon.
#[map]
pub static NVE_MONITOR: RingBuf = RingBuf::pinned(MONITOR_BYTES, 0);

/// Per CPU: events the monitor lost (`MONITOR_LOST`) and the sampling count (`MONITOR_SEQ`).
#[map]
pub static NVE_MONITOR_STATE: PerCpuArray<u64> = PerCpuArray::pinned(2, 0);

#[map]
pub static NVE_STATS: PerCpuArray<Counter> = PerCpuArray::pinned(STATS_MAX_ENTRIES, 0);

/// Per-VN traffic by the slot the daemon gives each VN (`VnInfo::counters`,
/// `PortValue::vn_counters`); the daemon zeroes a slot before it gives it out again.
#[map]
pub static NVE_VN_STATS: PerCpuArray<VnTraffic> = PerCpuArray::pinned(VN_COUNTER_SLOTS, 0);

/// Per-VM-port traffic by the port's slot (`PortValue::counters`).
#[map]
pub static NVE_PORT_STATS: PerCpuArray<PortTraffic> = PerCpuArray::pinned(PORT_COUNTER_SLOTS, 0);

/// The instance's settings, or `None` before the daemon has written them.
#[inline(always)]
pub fn config() -> Option<&'static DataplaneConfig> {
    NVE_CONFIG.get(0).filter(|c| c.underlay_ifindex != 0)
}

#[inline(always)]
pub fn vn(vni: u32) -> Option<&'static VnInfo> {
    // SAFETY: the value is copied out or read before the program returns.
    unsafe { NVE_VNS.get(vni) }
}

#[inline(always)]
pub fn fdb(vni: u32, mac: [u8; 6]) -> Option<&'static FdbEntry> {
    // SAFETY: as above.
    unsafe { NVE_FDB.get(FdbKey::new(vni, mac)) }
}

#[inline(always)]
pub fn port(ifindex: u32, vid: u16) -> Option<&'static PortValue> {
    // SAFETY: as above.
    unsafe { NVE_PORTS.get(PortKey::new(ifindex, vid)) }
}

#[inline(always)]
pub fn next_hop(vtep: [u8; 4]) -> Option<&'static NextHop> {
    // SAFETY: as above.
    unsafe { NVE_NEXTHOPS.get(vtep) }
}

#[inline(always)]
pub fn arp(vni: u32, ip: [u8; 4]) -> Option<&'static ArpEntry> {
    // SAFETY: as above.
    unsafe { NVE_ARP.get(ArpKey::new(vni, ip)) }
}

#[inline(always)]
pub fn nd(vni: u32, ip: [u8; 16]) -> Option<&'static ArpEntry> {
    // SAFETY: as above.
    unsafe { NVE_ND.get(NdKey::new(vni, ip)) }
}

/// Whether `vtep` is one of the VTEPs VN `vni` decapsulates from.
#[inline(always)]
pub fn vn_knows_vtep(vni: u32, vtep: Vtep) -> bool {
    NVE_VN_VTEPS.get_ptr(VnVtepKey::new(vni, vtep)).is_some()
}

/// This CPU's scratch buffer.
#[inline(always)]
pub fn scratch() -> Option<&'static mut [u8; SCRATCH_LEN]> {
    // SAFETY: per-CPU, and a program runs to completion on its CPU.
    NVE_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// `N` bytes of a scratch buffer from `at`, as an array (constant bounds: LLVM drops the
/// check). No copy, and no fallback value on the stack.
#[inline(always)]
pub fn window<const N: usize>(buf: &[u8; SCRATCH_LEN], at: usize) -> &[u8; N] {
    let bytes = &buf[at..at + N];
    // SAFETY: `bytes` is exactly N bytes long.
    unsafe { &*(bytes.as_ptr() as *const [u8; N]) }
}

/// Writes `value` big-endian at byte `at` of a scratch buffer as one 16-bit store. `at`
/// must be even (the buffer, a map value, is 8-byte aligned): an odd one is not written.
#[inline(always)]
pub fn put_be16(buf: &mut [u8; SCRATCH_LEN], at: usize, value: u16) {
    if !at.is_multiple_of(2) || at + 2 > SCRATCH_LEN {
        return;
    }
    // SAFETY: in bounds, and 2-byte aligned as checked above.
    unsafe { *(buf.as_mut_ptr().add(at) as *mut u16) = value.to_be() };
}
