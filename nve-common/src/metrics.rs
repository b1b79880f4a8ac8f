//! What happened to each packet. Every packet a program sees lands in exactly one counter:
//! a [`Forward`] outcome or a [`DropReason`], per [`Hook`]. Discriminants are never reused;
//! retired ones stay reserved.

/// Packet and byte count of one outcome (per CPU in the map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<Counter>() == 16);

/// Where a program is attached.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Underlay ingress (decapsulation), XDP or TC.
    UnderlayRx = 0,
    /// VM port egress from the VM (TC ingress on the host side): encapsulation and switching.
    VmEgress = 1,
    /// Frames the kernel's collect_md vxlan device decapsulated (TC ingress on it).
    TunnelRx = 2,
}

impl Hook {
    pub const ALL: [Hook; 3] = [Hook::UnderlayRx, Hook::VmEgress, Hook::TunnelRx];

    pub const fn name(self) -> &'static str {
        match self {
            Hook::UnderlayRx => "underlay_rx",
            Hook::VmEgress => "vm_egress",
            Hook::TunnelRx => "tunnel_rx",
        }
    }
}

/// Packets that went somewhere.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// Encapsulated and sent to one remote VTEP.
    Encapsulated = 1,
    /// Decapsulated and delivered to one local port.
    Decapsulated = 2,
    /// Switched to another local port without encapsulation.
    LocalSwitched = 3,
    /// Broadcast/multicast replicated to the VN's flood list.
    Flooded = 4,
    /// Not for nve (not VXLAN to this VTEP): left to the host's stack untouched.
    PassedToHost = 5,
    /// An outer IPv4 fragment: left to the host's stack, which reassembles.
    PassedFragment = 6,
    /// XDP left a VXLAN frame to the TC program (broadcast, tagged or tap port).
    DeferredToTc = 7,
    /// Left to the kernel's vxlan device to decapsulate (for a tap port).
    ToKernelVxlan = 8,
    /// An ARP request the dataplane answered on the asking port (suppressed).
    ArpReplied = 9,
    /// An IPv6 neighbour solicitation the dataplane answered on the asking port.
    NdReplied = 10,
    /// Too large for the underlay (or the VN's MTU) once encapsulated: answered with ICMP
    /// fragmentation needed / ICMPv6 packet too big on the sender's port.
    IcmpTooBig = 11,
    /// VXLAN for a MAC that moved to another VTEP (the forwarding pointer a migration
    /// leaves): re-addressed to it rather than decapsulated.
    ForwardedToVtep = 12,
    /// An LLDP or ECP frame (a VDP station's) from a VM port: to the host, where nve's VDP
    /// session reads it; never into a VN.
    LinkControl = 13,
}

impl Forward {
    pub const ALL: [Forward; 13] = [
        Forward::Encapsulated,
        Forward::Decapsulated,
        Forward::LocalSwitched,
        Forward::Flooded,
        Forward::PassedToHost,
        Forward::PassedFragment,
        Forward::DeferredToTc,
        Forward::ToKernelVxlan,
        Forward::ArpReplied,
        Forward::NdReplied,
        Forward::IcmpTooBig,
        Forward::ForwardedToVtep,
        Forward::LinkControl,
    ];

    /// The frame goes on to another program of the NVE (or the kernel's vxlan device)
    /// that counts it again; per-VN and per-port counters skip it here.
    pub const fn hands_over(self) -> bool {
        matches!(
            self,
            Forward::DeferredToTc
                | Forward::ToKernelVxlan
                | Forward::PassedToHost
                | Forward::PassedFragment
        )
    }

    pub const fn name(self) -> &'static str {
        match self {
            Forward::Encapsulated => "ENCAPSULATED",
            Forward::Decapsulated => "DECAPSULATED",
            Forward::LocalSwitched => "LOCAL_SWITCHED",
            Forward::Flooded => "FLOODED",
            Forward::PassedToHost => "PASSED_TO_HOST",
            Forward::PassedFragment => "PASSED_FRAGMENT",
            Forward::DeferredToTc => "DEFERRED_TO_TC",
            Forward::ToKernelVxlan => "TO_KERNEL_VXLAN",
            Forward::ArpReplied => "ARP_REPLIED",
            Forward::NdReplied => "ND_REPLIED",
            Forward::IcmpTooBig => "ICMP_TOO_BIG",
            Forward::ForwardedToVtep => "FORWARDED_TO_VTEP",
            Forward::LinkControl => "LINK_CONTROL",
        }
    }
}

/// Why a packet was dropped: one cause per reason. Names follow the kernel's skb drop
/// reasons. New reasons take the next number; a retired one stays reserved.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The frame ends inside a header the program must read: Ethernet, an 802.1Q tag, or
    /// an ARP, IP or ICMP header it checks, quotes or rewrites.
    PktTooSmall = 1,
    /// VXLAN to this VTEP whose VXLAN header is not valid: cut short, or the I flag clear.
    VxlanInvalidHdr = 2,
    /// A VNI the dataplane has no VN for: VXLAN for a VNI this NVE does not serve, or a
    /// frame from a port bound to a VN that is being removed.
    VniNotFound = 3,
    /// Decapsulated payload shorter than an Ethernet header.
    InnerTruncated = 4,
    /// A VM port (or VID on it) that belongs to no VN.
    PortNotInVn = 5,
    /// Unicast to a MAC the VN's FDB has no entry for (of a kind this dataplane knows).
    FdbMiss = 6,
    /// Broadcast in a VN with nowhere to flood to.
    FloodListEmpty = 7,
    /// The kernel could not route an encapsulated frame to the remote VTEP.
    UnderlayNoRoute = 8,
    /// A copy (broadcast) to a VTEP whose next hop is not resolved yet; the daemon has the
    /// kernel keep VTEP neighbours resolved, so this is transient.
    UnderlayNoNeigh = 9,
    /// The encapsulated frame does not fit the underlay MTU.
    UnderlayMtuExceeded = 10,
    /// A helper refused to grow or shrink the frame: add or remove headers (adjust room,
    /// change head), push or pop a VLAN tag, or resize it for an answer (change tail).
    HeaderAdjustFailed = 11,
    /// A helper refused to redirect or clone.
    RedirectFailed = 12,
    /// To or from a port whose vNICs are pre-associated or paused, not associated.
    VnicInactive = 13,
    /// From a VM port with a source MAC that is not one of the port's.
    SpoofedSrcMac = 14,
    /// From a VM port with a source IP (IPv4, ARP sender, IPv6 source, ND target) that is
    /// not one of the addresses signaled for the vNICs on the port.
    SpoofedSrcIp = 15,
    /// VXLAN of a VN from a VTEP the VN does not know (not in its flood list nor the VTEP
    /// of one of its remote MACs), in a VN that checks.
    VtepNotInVn = 16,
    /// From a VM port, a frame that is still tagged once the port's own VLAN tag (if any)
    /// is removed: stacked tags are not carried.
    VlanStacked = 17,
    /// Unicast to a MAC on the very port (and VID) it came from: as a bridge, never sent
    /// back where it came from.
    Hairpin = 18,
    /// VXLAN re-addressed to a moved MAC's VTEP whose outer TTL ran out (two NVEs pointing
    /// at each other).
    TtlExceeded = 19,
    /// VXLAN to this VTEP in a frame addressed to another host's MAC (a unicast outer
    /// destination MAC that is not the underlay interface's: seen on a shared segment).
    OtherHost = 20,
    /// VXLAN to this VTEP whose outer IPv4 header checksum is wrong.
    IpCsum = 21,
    /// VXLAN to this VTEP whose outer IPv4 total length is not the frame's length.
    IpTotLen = 22,
    /// VXLAN to this VTEP whose UDP length is not what the outer IPv4 header leaves.
    UdpLen = 23,
    /// The daemon's configuration (`CONFIG_MAP`) is missing what the frame needs: not
    /// written yet, or without the tunnel device.
    NoConfig = 24,
    /// The per-CPU scratch buffer (`NVE_SCRATCH`), where headers and answers are built,
    /// could not be looked up.
    ScratchUnavailable = 25,
    /// A helper refused to write bytes into the frame (bpf_skb_store_bytes).
    StoreFailed = 26,
    /// VXLAN for a moved MAC whose outer IPv4 header has options: the forwarding pointer
    /// re-addresses a 20-byte header only.
    ForwardIpOptions = 27,
    /// The kernel refused the tunnel key for a frame to its vxlan device
    /// (bpf_skb_set_tunnel_key).
    TunnelKeyFailed = 28,
    /// A frame on the kernel's vxlan device without tunnel metadata: not one the device
    /// decapsulated.
    TunnelKeyMissing = 29,
    /// VXLAN for a MAC the FDB places behind a remote VTEP: what comes from the underlay is
    /// never sent back onto it (a moved MAC's forwarding pointer aside).
    UnderlayHairpin = 30,
    /// An IPv6 VTEP where the program itself encapsulates over IPv4: a moved MAC's new VTEP
    /// for VXLAN decapsulated by `tc_underlay_rx`, or the first IPv4 VTEP of a flood list.
    VtepNotIpv4 = 31,
}

impl DropReason {
    /// The reason numbered `n`, if any.
    #[inline(always)]
    pub fn from_u32(n: u32) -> Option<DropReason> {
        DropReason::ALL.into_iter().find(|&d| d as u32 == n)
    }

    pub const ALL: [DropReason; 31] = [
        DropReason::PktTooSmall,
        DropReason::VxlanInvalidHdr,
        DropReason::VniNotFound,
        DropReason::InnerTruncated,
        DropReason::PortNotInVn,
        DropReason::FdbMiss,
        DropReason::FloodListEmpty,
        DropReason::UnderlayNoRoute,
        DropReason::UnderlayNoNeigh,
        DropReason::UnderlayMtuExceeded,
        DropReason::HeaderAdjustFailed,
        DropReason::RedirectFailed,
        DropReason::VnicInactive,
        DropReason::SpoofedSrcMac,
        DropReason::SpoofedSrcIp,
        DropReason::VtepNotInVn,
        DropReason::VlanStacked,
        DropReason::Hairpin,
        DropReason::TtlExceeded,
        DropReason::OtherHost,
        DropReason::IpCsum,
        DropReason::IpTotLen,
        DropReason::UdpLen,
        DropReason::NoConfig,
        DropReason::ScratchUnavailable,
        DropReason::StoreFailed,
        DropReason::ForwardIpOptions,
        DropReason::TunnelKeyFailed,
        DropReason::TunnelKeyMissing,
        DropReason::UnderlayHairpin,
        DropReason::VtepNotIpv4,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::PktTooSmall => "PKT_TOO_SMALL",
            DropReason::VxlanInvalidHdr => "VXLAN_INVALID_HDR",
            DropReason::VniNotFound => "VNI_NOT_FOUND",
            DropReason::InnerTruncated => "INNER_TRUNCATED",
            DropReason::PortNotInVn => "PORT_NOT_IN_VN",
            DropReason::FdbMiss => "FDB_MISS",
            DropReason::FloodListEmpty => "FLOOD_LIST_EMPTY",
            DropReason::UnderlayNoRoute => "UNDERLAY_NO_ROUTE",
            DropReason::UnderlayNoNeigh => "UNDERLAY_NO_NEIGH",
            DropReason::UnderlayMtuExceeded => "UNDERLAY_MTU_EXCEEDED",
            DropReason::HeaderAdjustFailed => "HEADER_ADJUST_FAILED",
            DropReason::RedirectFailed => "REDIRECT_FAILED",
            DropReason::VnicInactive => "VNIC_INACTIVE",
            DropReason::SpoofedSrcMac => "SPOOFED_SRC_MAC",
            DropReason::SpoofedSrcIp => "SPOOFED_SRC_IP",
            DropReason::VtepNotInVn => "VTEP_NOT_IN_VN",
            DropReason::VlanStacked => "VLAN_STACKED",
            DropReason::Hairpin => "HAIRPIN",
            DropReason::TtlExceeded => "TTL_EXCEEDED",
            DropReason::OtherHost => "OTHERHOST",
            DropReason::IpCsum => "IP_CSUM",
            DropReason::IpTotLen => "IP_TOT_LEN",
            DropReason::UdpLen => "UDP_LEN",
            DropReason::NoConfig => "NO_CONFIG",
            DropReason::ScratchUnavailable => "SCRATCH_UNAVAILABLE",
            DropReason::StoreFailed => "STORE_FAILED",
            DropReason::ForwardIpOptions => "FORWARD_IP_OPTIONS",
            DropReason::TunnelKeyFailed => "TUNNEL_KEY_FAILED",
            DropReason::TunnelKeyMissing => "TUNNEL_KEY_MISSING",
            DropReason::UnderlayHairpin => "UNDERLAY_HAIRPIN",
            DropReason::VtepNotIpv4 => "VTEP_NOT_IPV4",
        }
    }
}

/// Slots per hook in `STATS_MAP`: forwards in [0, 32), drops in [32, 96): forward outcomes
/// 1 to 31 and drop reasons 1 to 63 fit (the daemon reads every slot `Outcome::slot` names).
pub const SLOTS_PER_HOOK: u32 = 96;
const DROP_BASE: u32 = 32;
const _: () = assert!(DropReason::ALL.len() < (SLOTS_PER_HOOK - DROP_BASE) as usize);
const _: () = assert!(Forward::ALL.len() < DROP_BASE as usize);
/// Entries of `STATS_MAP`.
pub const STATS_MAX_ENTRIES: u32 = SLOTS_PER_HOOK * Hook::ALL.len() as u32;

/// One counter slot: a forward or a drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Forward(Forward),
    Drop(DropReason),
}

impl Outcome {
    /// Index of this outcome's counter for `hook` in `STATS_MAP`.
    #[inline(always)]
    pub const fn slot(self, hook: Hook) -> u32 {
        let base = hook as u32 * SLOTS_PER_HOOK;
        match self {
            Outcome::Forward(f) => base + f as u32,
            Outcome::Drop(d) => base + DROP_BASE + d as u32,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Forward(f) => f.name(),
            Outcome::Drop(d) => d.name(),
        }
    }

    pub const fn is_drop(self) -> bool {
        matches!(self, Outcome::Drop(_))
    }
}

impl From<DropReason> for Outcome {
    fn from(d: DropReason) -> Self {
        Outcome::Drop(d)
    }
}

impl From<Forward> for Outcome {
    fn from(f: Forward) -> Self {
        Outcome::Forward(f)
    }
}

/// Per-VN traffic, keyed by VNI in `VN_STATS_MAP` (per CPU): one [`Counter`] per
/// [`VnCounter`].
pub type VnTraffic = [Counter; VnCounter::ALL.len()];

/// A slot of [`VnTraffic`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VnCounter {
    /// Frames the VN's local VMs sent that the NVE forwarded.
    FromVms = 0,
    /// Copies delivered to the VN's local VM ports (decapsulated or switched).
    ToVms = 1,
    /// VXLAN frames of the VN decapsulated from the underlay.
    FromUnderlay = 2,
    /// Encapsulated copies sent to remote VTEPs.
    ToUnderlay = 3,
    /// Frames of the VN dropped, whatever the reason (the hook counters say why).
    Dropped = 4,
}

impl VnCounter {
    pub const ALL: [VnCounter; 5] = [
        VnCounter::FromVms,
        VnCounter::ToVms,
        VnCounter::FromUnderlay,
        VnCounter::ToUnderlay,
        VnCounter::Dropped,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            VnCounter::FromVms => "from_vms",
            VnCounter::ToVms => "to_vms",
            VnCounter::FromUnderlay => "from_underlay",
            VnCounter::ToUnderlay => "to_underlay",
            VnCounter::Dropped => "dropped",
        }
    }
}

/// Per-VM-port traffic, keyed by ifindex in `PORT_STATS_MAP` (per CPU): one [`Counter`]
/// per [`PortCounter`].
pub type PortTraffic = [Counter; PortCounter::ALL.len()];

/// A slot of [`PortTraffic`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortCounter {
    /// Frames the VM sent that the NVE forwarded.
    FromVm = 0,
    /// Frames delivered to the VM.
    ToVm = 1,
    /// Frames the VM sent that were dropped (the hook counters say why).
    Dropped = 2,
}

impl PortCounter {
    pub const ALL: [PortCounter; 3] =
        [PortCounter::FromVm, PortCounter::ToVm, PortCounter::Dropped];

    pub const fn name(self) -> &'static str {
        match self {
            PortCounter::FromVm => "from_vm",
            PortCounter::ToVm => "to_vm",
            PortCounter::Dropped => "dropped",
        }
    }
}
