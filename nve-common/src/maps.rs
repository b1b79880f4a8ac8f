//! Map names, capacities and layouts. The eBPF side declares its maps with these names and
//! the daemon opens the pinned maps by the same names under `PIN_ROOT/<instance>/`.

/// bpffs directory holding one subdirectory per daemon instance.
pub const PIN_ROOT: &str = "/sys/fs/bpf/nve";
/// The collect_md vxlan device the daemon creates in its network namespace.
pub const TUNNEL_DEV: &str = "nve-vxlan";

pub const CONFIG_MAP: &str = "NVE_CONFIG";
pub const PORTS_MAP: &str = "NVE_PORTS";
pub const VNS_MAP: &str = "NVE_VNS";
pub const FDB_MAP: &str = "NVE_FDB";
pub const STATS_MAP: &str = "NVE_STATS";
pub const NEXTHOPS_MAP: &str = "NVE_NEXTHOPS";
pub const ARP_MAP: &str = "NVE_ARP";
pub const ND_MAP: &str = "NVE_ND";
pub const EVENTS_MAP: &str = "NVE_EVENTS";
/// Bytes of the announcement ring buffer (a power of two of pages).
pub const EVENTS_BYTES: u32 = 64 * 1024;
pub const VN_VTEPS_MAP: &str = "NVE_VN_VTEPS";
pub const VN_STATS_MAP: &str = "NVE_VN_STATS";
pub const PORT_STATS_MAP: &str = "NVE_PORT_STATS";
/// The ring buffer of `MonitorEvent`s (`nve monitor`).
pub const MONITOR_MAP: &str = "NVE_MONITOR";
/// Bytes of the monitor's ring buffer (a power of two of pages): about 1,500 events.
pub const MONITOR_BYTES: u32 = 256 * 1024;
/// Per-CPU `u64`s of the monitor: `MONITOR_LOST` and `MONITOR_SEQ`.
pub const MONITOR_STATE_MAP: &str = "NVE_MONITOR_STATE";
/// `MONITOR_STATE_MAP` slot: events lost because the ring buffer was full.
pub const MONITOR_LOST: u32 = 0;
/// `MONITOR_STATE_MAP` slot: packets seen while sampling (one in `monitor_sample` reported).
pub const MONITOR_SEQ: u32 = 1;
/// `DataplaneConfig::monitor`: report drops.
pub const MONITOR_DROPS: u32 = 1;
/// `DataplaneConfig::monitor`: report drops and forwards.
pub const MONITOR_ALL: u32 = 2;
/// Bytes of a frame a `MonitorEvent` carries.
pub const MONITOR_HEAD: usize = 128;

pub const PORTS_MAX_ENTRIES: u32 = 4096;
pub const VNS_MAX_ENTRIES: u32 = 4096;
/// The maps with an entry per MAC or address, remote ones included (100,000 remote MACs
/// from the NVA fit): allocated as entries are added, not up front.
pub const FDB_MAX_ENTRIES: u32 = 262_144;
pub const NEXTHOPS_MAX_ENTRIES: u32 = 4096;
pub const ARP_MAX_ENTRIES: u32 = 262_144;
pub const ND_MAX_ENTRIES: u32 = 262_144;
pub const VN_VTEPS_MAX_ENTRIES: u32 = 65536;
/// Remote VTEPs a VN floods broadcast to (head-end replication).
pub const FLOOD_MAX_REMOTES: usize = 16;
/// Local ports a VN floods broadcast to.
pub const FLOOD_MAX_PORTS: usize = 16;

/// A VTEP address, IPv4 or IPv6: 16 bytes, network order, an IPv4 address mapped
/// (::ffff:a.b.c.d).
pub type Vtep = [u8; 16];

/// The VTEP address of IPv4 `a`.
pub const fn vtep_v4(a: [u8; 4]) -> Vtep {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// The VTEP address of `ip`.
pub const fn vtep_of(ip: core::net::IpAddr) -> Vtep {
    match ip {
        core::net::IpAddr::V4(a) => vtep_v4(a.octets()),
        core::net::IpAddr::V6(a) => a.octets(),
    }
}

/// The IPv4 address of `v`, if it is one.
#[inline(always)]
pub fn vtep_ipv4(v: &Vtep) -> Option<[u8; 4]> {
    let mapped = v[..10].iter().all(|&b| b == 0) && v[10] == 0xff && v[11] == 0xff;
    mapped.then_some([v[12], v[13], v[14], v[15]])
}

/// Per-instance dataplane settings, one entry at index 0 of `CONFIG_MAP`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// This NVE's VTEP address, network order.
    pub vtep_ipv4: [u8; 4],
    /// The underlay interface encapsulated frames leave by.
    pub underlay_ifindex: u32,
    /// Outer IPv4 TTL (and IPv6 hop limit).
    pub ttl: u8,
    pub _pad: [u8; 3],
    /// This NVE's IPv6 VTEP address (zero: none): VXLAN over IPv6 goes through the kernel's
    /// collect_md vxlan device, which computes the outer UDP checksum.
    pub vtep_ipv6: [u8; 16],
    /// `TUNNEL_DEV`'s ifindex.
    pub tunnel_ifindex: u32,
    /// The underlay interface's MTU (for remotes over IPv6, which have no mirrored next
    /// hop).
    pub underlay_mtu: u32,
    /// The underlay interface's MAC: XDP drops VXLAN in frames unicast to another MAC
    /// (OTHERHOST), as TC does by the skb's pkt_type.
    pub underlay_mac: [u8; 6],
    pub _pad2: [u8; 2],
    /// 0: no monitor attached (the programs report nothing); `MONITOR_DROPS` or
    /// `MONITOR_ALL`: they report to `MONITOR_MAP`.
    pub monitor: u32,
    /// While monitoring, report one packet in this many per CPU (0 and 1: every one).
    pub monitor_sample: u32,
}
const _: () = assert!(size_of::<DataplaneConfig>() == 52);

/// A VM port, or one VLAN on a trunk VM port: what a frame arrives on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub ifindex: u32,
    /// 802.1Q VID the frame carries, 0 for untagged.
    pub vid: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<PortKey>() == 8);

impl PortValue {
    pub const fn active(vni: u32) -> Self {
        Self {
            vni,
            flags: PORT_ACTIVE | PORT_RECEIVES,
            counters: NO_COUNTERS,
            vn_counters: NO_COUNTERS,
        }
    }

    pub const fn is_active(&self) -> bool {
        self.flags & PORT_ACTIVE != 0
    }

    /// Whether frames are delivered to it: an active port, or one whose vNIC is migrating
    /// in (`PORT_RECEIVES`). `PORT_ACTIVE` alone counts too, as maps written before
    /// `PORT_RECEIVES` existed have it.
    pub const fn receives(&self) -> bool {
        self.flags & (PORT_ACTIVE | PORT_RECEIVES) != 0
    }

    pub const fn checks_src_mac(&self) -> bool {
        self.flags & PORT_CHECK_SRC_MAC != 0
    }
}

impl PortKey {
    pub const fn new(ifindex: u32, vid: u16) -> Self {
        Self {
            ifindex,
            vid,
            _pad: 0,
        }
    }
}

/// `PortValue::flags`: the port forwards. Clear while every vNIC behind it is only
/// pre-associated or paused: associate is this one bit.
pub const PORT_ACTIVE: u32 = 1;
/// `PortValue::flags`: frames from this port must carry a source MAC the FDB places on it
/// (anti-spoofing); set when the MACs behind the port are known.
pub const PORT_CHECK_SRC_MAC: u32 = 2;
/// `PortValue::flags`: frames are delivered to the port (decapsulated or locally switched)
/// though it may not forward what it sends: set with `PORT_ACTIVE`, and alone for a vNIC
/// pre-associated as migrating in, whose frames wait in its tap until the VM resumes.
pub const PORT_RECEIVES: u32 = 4;

/// The VN a port (and VID) belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortValue {
    /// VNI, host order.
    pub vni: u32,
    /// `PORT_ACTIVE`, `PORT_CHECK_SRC_MAC`, `PORT_RECEIVES`.
    pub flags: u32,
    /// The port's slot in `PORT_STATS_MAP` (`NO_COUNTERS`: none), the same for all its VIDs.
    pub counters: u16,
    /// The VN's slot in `VN_STATS_MAP`, as in its `VnInfo`.
    pub vn_counters: u16,
}
const _: () = assert!(size_of::<PortValue>() == 12);

/// A counter slot that counts nothing: slots the daemon assigns start at 1. The counters
/// of VNs and ports are per-CPU arrays indexed by slots the daemon writes into the values
/// the programs look up anyway, so counting costs no lookup of its own.
pub const NO_COUNTERS: u16 = 0;
/// Slots of `VN_STATS_MAP`: one per VN, and the unused `NO_COUNTERS`.
pub const VN_COUNTER_SLOTS: u32 = VNS_MAX_ENTRIES + 1;
/// Slots of `PORT_STATS_MAP`: one per VM port (all its VIDs), and `NO_COUNTERS`.
pub const PORT_COUNTER_SLOTS: u32 = PORTS_MAX_ENTRIES + 1;

/// `LocalPort::flags`: the port is a tap. Known unicast for it is decapsulated by the
/// kernel's collect_md vxlan device (`TUNNEL_DEV`), which clears the tunnel GSO state, so
/// large TCP segments reach the tap whole; decapsulating in the program would leave that
/// state behind and make the tap segment them.
pub const PORT_F_TAP: u16 = 1;
/// `LocalPort::flags` in a local FDB entry: the vNIC with this MAC has signaled IPv4
/// addresses; its IPv4 sources and ARP sender addresses must be addresses of a vNIC on the
/// same port (`ARP_MAP`), or 0.0.0.0.
pub const PORT_F_CHECK_IPV4: u16 = 2;
/// As `PORT_F_CHECK_IPV4` for IPv6 sources and neighbour advertisement targets (`ND_MAP`);
/// the unspecified address and link-local sources are always allowed.
pub const PORT_F_CHECK_IPV6: u16 = 4;

/// A local delivery point: a VM port and the VID to tag frames with (0: untagged).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LocalPort {
    pub ifindex: u32,
    pub vid: u16,
    /// `PORT_F_*`.
    pub flags: u16,
}
const _: () = assert!(size_of::<LocalPort>() == 8);

impl LocalPort {
    pub const fn new(ifindex: u32, vid: u16) -> Self {
        Self {
            ifindex,
            vid,
            flags: 0,
        }
    }

    pub const fn with_flags(self, flags: u16) -> Self {
        Self { flags, ..self }
    }

    /// The same port and VID, whatever the flags.
    pub const fn is(&self, other: &LocalPort) -> bool {
        self.ifindex == other.ifindex && self.vid == other.vid
    }

    pub const fn is_tap(&self) -> bool {
        self.flags & PORT_F_TAP != 0
    }

    pub const fn checks_ipv4(&self) -> bool {
        self.flags & PORT_F_CHECK_IPV4 != 0
    }

    pub const fn checks_ipv6(&self) -> bool {
        self.flags & PORT_F_CHECK_IPV6 != 0
    }
}

/// A VN as the dataplane sees it, keyed by VNI (host order) in `VNS_MAP`: where its
/// broadcast goes. The daemon rewrites the whole value on every change, so a reader never
/// sees half a list.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VnInfo {
    /// `VN_F_*`.
    pub flags: u32,
    /// The VMs' MTU if configured lower than the underlay allows (0: the underlay's MTU
    /// less the encapsulation).
    pub mtu: u32,
    /// Valid entries at the front of `remotes`.
    pub remote_count: u32,
    /// Of those, the first ones are over IPv4 (the program encapsulates once for them all);
    /// the rest over IPv6 (the kernel's vxlan device encapsulates each).
    pub remote_v4_count: u32,
    /// Valid entries at the front of `ports`.
    pub port_count: u32,
    /// The VN's slot in `VN_STATS_MAP` (`NO_COUNTERS`: none).
    pub counters: u16,
    /// Valid entries at the front of `vteps` (with `VN_F_VTEPS_INLINE`).
    pub vtep_count: u16,
    /// With `VN_F_VTEPS_INLINE`: every VTEP the VN decapsulates from, so decapsulation
    /// checks the sender here instead of looking it up in `VN_VTEPS_MAP`. IPv4 addresses
    /// as their octets read in memory order (`u32::from_ne_bytes`): one aligned load each.
    pub vteps: [u32; VN_INLINE_VTEPS],
    /// Remote VTEPs (network order) for head-end replication.
    pub remotes: [Vtep; FLOOD_MAX_REMOTES],
    /// This host's ports in the VN.
    pub ports: [LocalPort; FLOOD_MAX_PORTS],
    /// `ports[i]`'s slot in `PORT_STATS_MAP`.
    pub port_counters: [u16; FLOOD_MAX_PORTS],
}
const _: () = assert!(
    size_of::<VnInfo>() == 24 + 4 * VN_INLINE_VTEPS + 16 * FLOOD_MAX_REMOTES + 10 * FLOOD_MAX_PORTS
);

/// VTEPs a VN's value lists inline (`VnInfo::vteps`).
pub const VN_INLINE_VTEPS: usize = 8;

/// `VnInfo::flags`: unicast to a MAC the FDB does not know is dropped (FDB_MISS) instead of
/// flooded like broadcast; for VNs whose every MAC is known from signaling.
pub const VN_F_NO_UNKNOWN_FLOOD: u32 = 1;
/// `VnInfo::flags`: decapsulate VXLAN of this VN from any VTEP, not only from those in
/// `VN_VTEPS_MAP` for it (its flood list and the VTEPs of its remote MACs).
pub const VN_F_ANY_VTEP: u32 = 2;
/// `VnInfo::flags`: `VnInfo::vteps` lists every VTEP the VN decapsulates from (they are
/// few, and IPv4); without it, `VN_VTEPS_MAP` has them.
pub const VN_F_VTEPS_INLINE: u32 = 4;

impl VnInfo {
    pub const fn floods_unknown(&self) -> bool {
        self.flags & VN_F_NO_UNKNOWN_FLOOD == 0
    }

    pub const fn accepts_any_vtep(&self) -> bool {
        self.flags & VN_F_ANY_VTEP != 0
    }

    pub const fn lists_vteps_inline(&self) -> bool {
        self.flags & VN_F_VTEPS_INLINE != 0
    }
}

impl Default for VnInfo {
    fn default() -> Self {
        Self {
            flags: 0,
            mtu: 0,
            remote_count: 0,
            remote_v4_count: 0,
            port_count: 0,
            counters: NO_COUNTERS,
            vtep_count: 0,
            vteps: [0; VN_INLINE_VTEPS],
            remotes: [[0; 16]; FLOOD_MAX_REMOTES],
            ports: [LocalPort::default(); FLOOD_MAX_PORTS],
            port_counters: [NO_COUNTERS; FLOOD_MAX_PORTS],
        }
    }
}

/// (VN, MAC) in `FDB_MAP`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FdbKey {
    /// VNI, host order.
    pub vni: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FdbKey>() == 12);

impl FdbKey {
    pub const fn new(vni: u32, mac: [u8; 6]) -> Self {
        Self {
            vni,
            mac,
            _pad: [0; 2],
        }
    }
}

/// `FdbEntry::kind`: the MAC is behind a local port.
pub const FDB_LOCAL: u32 = 1;
/// `FdbEntry::kind`: the MAC is behind a remote VTEP.
pub const FDB_REMOTE: u32 = 2;
/// `FdbEntry::kind`: the MAC was here and moved to a remote VTEP (a forwarding pointer,
/// for the hold time after a migration): VXLAN that still arrives for it is re-addressed
/// to that VTEP instead of dropped; local VMs reach it as a remote MAC.
pub const FDB_MOVED: u32 = 3;

/// Where a MAC of a VN lives. `u32` kind rather than an enum so any bit pattern read from
/// the map is a valid value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdbEntry {
    /// `FDB_LOCAL` or `FDB_REMOTE`.
    pub kind: u32,
    /// `FDB_LOCAL`: the port.
    pub port: LocalPort,
    /// `FDB_REMOTE`: the VTEP.
    pub remote: Vtep,
}
const _: () = assert!(size_of::<FdbEntry>() == 28);

impl FdbEntry {
    pub const fn local(port: LocalPort) -> Self {
        Self {
            kind: FDB_LOCAL,
            port,
            remote: [0; 16],
        }
    }
    pub const fn remote(vtep: Vtep) -> Self {
        Self {
            kind: FDB_REMOTE,
            port: LocalPort::new(0, 0),
            remote: vtep,
        }
    }

    pub const fn moved(vtep: Vtep) -> Self {
        Self {
            kind: FDB_MOVED,
            ..Self::remote(vtep)
        }
    }

    /// Behind a remote VTEP, moved there or not.
    pub const fn is_remote(&self) -> bool {
        self.kind == FDB_REMOTE || self.kind == FDB_MOVED
    }
}

/// How to reach a remote VTEP (key: its address, network order) on the underlay: the
/// kernel's route and resolved neighbour, mirrored by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// Egress interface.
    pub ifindex: u32,
    /// Its MTU: a non-GSO encapsulated frame longer than this is dropped, counted.
    pub mtu: u32,
    /// Egress interface's MAC.
    pub smac: [u8; 6],
    /// The next hop's MAC (the VTEP's, or its gateway's).
    pub dmac: [u8; 6],
}
const _: () = assert!(size_of::<NextHop>() == 20);

/// (VN, IPv4 address) in `ARP_MAP`: an address the dataplane answers ARP requests for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ArpKey {
    /// VNI, host order.
    pub vni: u32,
    /// Network order.
    pub ip: [u8; 4],
}
const _: () = assert!(size_of::<ArpKey>() == 8);

impl ArpKey {
    pub const fn new(vni: u32, ip: [u8; 4]) -> Self {
        Self { vni, ip }
    }
}

/// The MAC that holds an address (the value of `ARP_MAP`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArpEntry {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<ArpEntry>() == 8);

impl ArpEntry {
    pub const fn new(mac: [u8; 6]) -> Self {
        Self { mac, _pad: [0; 2] }
    }
}

/// (VN, IPv6 address) in `ND_MAP`: an address of a local vNIC (value: its MAC, an
/// `ArpEntry`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NdKey {
    /// VNI, host order.
    pub vni: u32,
    pub ip: [u8; 16],
}
const _: () = assert!(size_of::<NdKey>() == 20);

impl NdKey {
    pub const fn new(vni: u32, ip: [u8; 16]) -> Self {
        Self { vni, ip }
    }
}

/// (VN, remote VTEP) in `VN_VTEPS_MAP`: VXLAN of the VN is decapsulated from this VTEP
/// (value: unused, 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VnVtepKey {
    /// VNI, host order.
    pub vni: u32,
    pub vtep: Vtep,
}
const _: () = assert!(size_of::<VnVtepKey>() == 20);

impl VnVtepKey {
    pub const fn new(vni: u32, vtep: Vtep) -> Self {
        Self { vni, vtep }
    }
}

/// `Announcement::kind`: a gratuitous ARP (sender address = target address).
pub const ANNOUNCE_GARP: u32 = 1;
/// `Announcement::kind`: a reverse ARP (QEMU announces a migrated guest's MAC with it).
pub const ANNOUNCE_RARP: u32 = 2;
/// `Announcement::kind`: an unsolicited IPv6 neighbour advertisement.
pub const ANNOUNCE_NA: u32 = 3;

/// What a VM announced on its port (`EVENTS_MAP` records), for the daemon to learn from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Announcement {
    /// `ANNOUNCE_*`.
    pub kind: u32,
    /// VNI, host order.
    pub vni: u32,
    pub ifindex: u32,
    pub vid: u16,
    pub mac: [u8; 6],
    /// GARP: IPv4 in the first 4 bytes; NA: the IPv6 target; RARP: zero.
    pub ip: [u8; 16],
}
const _: () = assert!(size_of::<Announcement>() == 36);

/// A packet a program reported while a monitor is attached (`MONITOR_MAP` records). `head`
/// is the frame as the program left it at its verdict: as it arrived for most drops; for
/// forwards, after the program's rewrites (encapsulated, decapsulated, tag removed).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MonitorEvent {
    /// bpf_ktime_get_ns (CLOCK_MONOTONIC).
    pub time_ns: u64,
    /// The frame's length as it arrived.
    pub len: u32,
    /// The interface the program ran on.
    pub ifindex: u32,
    /// The VN's VNI (host order) once the program knew it, else 0.
    pub vni: u32,
    /// `Hook` as a number.
    pub hook: u8,
    /// 1: `code` is a `DropReason`; 0: a `Forward`.
    pub dropped: u8,
    pub code: u16,
    /// Valid bytes at the front of `head`.
    pub captured: u16,
    pub _pad: [u8; 6],
    pub head: [u8; MONITOR_HEAD],
}
const _: () = assert!(size_of::<MonitorEvent>() == 32 + MONITOR_HEAD);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), Copy, with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for DataplaneConfig {}
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for PortValue {}
    unsafe impl aya::Pod for LocalPort {}
    unsafe impl aya::Pod for VnInfo {}
    unsafe impl aya::Pod for FdbKey {}
    unsafe impl aya::Pod for FdbEntry {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for ArpKey {}
    unsafe impl aya::Pod for ArpEntry {}
    unsafe impl aya::Pod for NdKey {}
    unsafe impl aya::Pod for VnVtepKey {}
    unsafe impl aya::Pod for Announcement {}
    unsafe impl aya::Pod for MonitorEvent {}
    unsafe impl aya::Pod for crate::metrics::Counter {}
}
