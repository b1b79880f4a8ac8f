//! The local API: JSON bodies of `/v1/...` on the instance's Unix socket, shared by the
//! daemon and its clients. Every error is an [`ErrorBody`] with a stable code.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Serialize};

pub use crate::error::ErrorCode;
use crate::{error::Error, mac::MacAddr};

/// Path prefix of this API version.
pub const PREFIX: &str = "/v1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// An error as the API sends it: its code and what went wrong.
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl From<Error> for ErrorBody {
    fn from(e: Error) -> Self {
        Self {
            code: e.code,
            message: e.message,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVn {
    pub name: String,
    pub vni: u32,
    /// Flood unicast to unknown MACs like broadcast (the default). Off for VNs whose every
    /// MAC is known from signaling: unknown unicast is then dropped (FDB_MISS).
    #[serde(default = "yes")]
    pub flood_unknown: bool,
    /// Decapsulate the VN's VXLAN from any VTEP. Off by default: only from the VTEPs in
    /// its flood list and behind its remote MACs (others: VTEP_NOT_IN_VN).
    #[serde(default)]
    pub any_vtep: bool,
    /// The VMs' MTU, when it must be lower than the underlay allows (its MTU less 50
    /// bytes of encapsulation); larger packets get ICMP fragmentation needed / packet too
    /// big. 576 to 9000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// serde's default for settings that are on unless turned off.
pub(crate) fn yes() -> bool {
    true
}

impl CreateVn {
    pub fn new(name: impl Into<String>, vni: u32) -> Self {
        Self {
            name: name.into(),
            vni,
            flood_unknown: true,
            any_vtep: false,
            mtu: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachPort {
    /// Host-side interface name of the VM's tap or veth.
    pub port: String,
    /// 802.1Q VID the VN uses on this port; 0 or absent: untagged.
    #[serde(default)]
    pub vid: u16,
    /// MACs of the VM behind this port, delivered to it by decapsulation.
    #[serde(default)]
    pub macs: Vec<MacAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteMac {
    pub mac: MacAddr,
    /// IPv4 or IPv6.
    pub vtep: IpAddr,
    /// Addresses of the remote MAC: the dataplane answers ARP and neighbour solicitations
    /// for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<std::net::IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloodVtep {
    pub vtep: IpAddr,
}

/// A VN as `GET /v1/vns` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VnView {
    pub name: String,
    pub vni: u32,
    pub flood_unknown: bool,
    pub any_vtep: bool,
    /// The MTU the VMs of the VN must use: configured, or the underlay's less 50 bytes.
    pub mtu: u32,
    /// Whether `mtu` was configured.
    #[serde(default)]
    pub mtu_configured: bool,
    pub ports: Vec<PortView>,
    pub flood: Vec<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortView {
    pub port: String,
    pub vid: u16,
    pub macs: Vec<MacAddr>,
}

/// Where an FDB entry points.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FdbTarget {
    Port { port: String, vid: u16 },
    Vtep { vtep: IpAddr },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbView {
    pub vn: String,
    pub vni: u32,
    pub mac: MacAddr,
    #[serde(flatten)]
    pub target: FdbTarget,
    /// Learned from the VM's announcements rather than configured or signaled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub learned: bool,
    /// A forwarding pointer: the MAC's vNIC migrated to `vtep`; VXLAN that still arrives
    /// for it is sent on there until this time (ms since the epoch). A paused vNIC's
    /// pointer (`pause` with a migrating-out VTEP) lasts while it is paused and has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_until: Option<u64>,
    /// Another NVE published it on the NVA.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_nva: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterView {
    pub packets: u64,
    pub bytes: u64,
}

/// Counters by name, summed over CPUs.
pub type CountersView = BTreeMap<String, CounterView>;

/// `GET /v1/stats`, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsView {
    /// Per hook, per outcome name (forwards and drop reasons); outcomes never seen are
    /// left out.
    pub hooks: BTreeMap<String, CountersView>,
    /// Per VNI: from_vms, to_vms, from_underlay, to_underlay, dropped.
    pub vns: BTreeMap<u32, CountersView>,
    /// Per VM port name: from_vm, to_vm, dropped.
    pub ports: BTreeMap<String, CountersView>,
}

/// What `POST /v1/reload` (and SIGHUP) did with the config file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadView {
    /// The file read (none: the flags alone).
    pub file: Option<String>,
    /// What the file lists and the state lacked, created now (`vn NAME`, `vdp PORT`).
    pub created: Vec<String>,
    /// What the file lists that could not be created, and why (nothing of it is left).
    pub failed: Vec<String>,
    /// Where the file and the state differ and the state was kept.
    pub kept: Vec<String>,
    /// Keys whose changed value takes effect only when the daemon is restarted.
    pub restart_needed: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    pub instance: String,
    pub vtep: Ipv4Addr,
    /// The IPv6 VTEP address, if the NVE has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep6: Option<Ipv6Addr>,
    pub underlay: String,
    pub underlay_mode: String,
    pub pin_dir: String,
    pub vns: usize,
    pub ports: usize,
    /// The underlay interface's MTU, and what it leaves the VMs (less 50 bytes of VXLAN
    /// over IPv4).
    #[serde(default)]
    pub underlay_mtu: u32,
    #[serde(default)]
    pub vm_mtu: u32,
    /// The network-wide control plane, when the daemon has one (`--nva`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nva: Option<NvaStatus>,
    /// Remote VTEPs whose underlay next hop is resolved.
    pub next_hops: Vec<NextHopView>,
}

/// The NVA connection as `nve status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvaStatus {
    pub endpoint: String,
    /// Synced and watching; otherwise forwarding goes on with the last state.
    pub connected: bool,
    /// Other NVEs' MACs installed from it.
    pub entries: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// MACs found moving too often (duplicates), frozen where they were: "VNI/MAC".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub duplicate_macs: Vec<String>,
    /// BGP EVPN: each neighbour's session.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub neighbors: Vec<NvaNeighbor>,
}

/// A BGP neighbour as `nve status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvaNeighbor {
    pub address: IpAddr,
    pub remote_as: u32,
    /// RFC 4271's FSM state: idle, connect, open-sent, open-confirm, established.
    pub state: String,
    /// Seconds since it was established (while it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<u64>,
    pub prefixes_received: usize,
    pub prefixes_sent: usize,
    /// Routes kept from a session that went down, until its stale time runs out.
    #[serde(default)]
    pub stale: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextHopView {
    pub vtep: Ipv4Addr,
    pub ifindex: u32,
    /// The next hop's MAC.
    pub mac: MacAddr,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = serde_json::to_value(self.code).map_err(|_| std::fmt::Error)?;
        write!(f, "{}: {}", code.as_str().unwrap_or("?"), self.message)
    }
}

impl std::error::Error for ErrorBody {}

/// The local VID a vNIC's frames carry on its port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum VidRequest {
    /// This VID (1-4094).
    Vid(u16),
    /// `"untagged"` (the default: one VN per tap) or `"assign"` (the NVE picks one).
    Word(VidWord),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VidWord {
    Untagged,
    Assign,
}

impl Default for VidRequest {
    fn default() -> Self {
        VidRequest::Word(VidWord::Untagged)
    }
}

/// The server's hint about a move (spec.md 2.2, VDP's M/S bits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Migration {
    #[default]
    None,
    /// The VM is arriving from this VTEP.
    MigratingIn(Ipv4Addr),
    /// The VM is leaving for this VTEP; 0.0.0.0: for the VTEP that the NVA says expects it
    /// (another NVE pre-associated it migrating in).
    MigratingOut(Ipv4Addr),
}

impl Migration {
    pub fn is_migrating_in(self) -> bool {
        matches!(self, Migration::MigratingIn(_))
    }
}

/// `POST /v1/vnics/{vm}/{index}`: one signaling message for the vNIC (VM UUID, vNIC index).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VnicRequest {
    pub op: crate::vnic::Op,
    /// The server's sequence for this vNIC: a repeat with equal parameters is OK; other
    /// parameters need a higher one (an update).
    #[serde(default)]
    pub request_id: u64,
    /// VN name (pre-associate, associate).
    #[serde(default)]
    pub vn: Option<String>,
    #[serde(default)]
    pub macs: Vec<MacAddr>,
    #[serde(default)]
    pub ipv4: Vec<Ipv4Addr>,
    #[serde(default)]
    pub ipv6: Vec<std::net::Ipv6Addr>,
    /// Host-side interface (tap or veth); it may appear later.
    #[serde(default)]
    pub port: Option<String>,
    #[serde(default)]
    pub vid: VidRequest,
    #[serde(default)]
    pub migration: Migration,
    /// Soft state: the association is removed unless a message for this vNIC (e.g.
    /// `keep-alive`) arrives within this many seconds. Absent: associations are hard, and
    /// pre-associations expire after 120 s (a migration that never happened).
    #[serde(default)]
    pub hold_time: Option<u64>,
    /// Pre-associate with resource reservation (VDP PA-RR). nve always reserves the VID and
    /// table slots at pre-associate, so this only documents the server's intent.
    #[serde(default)]
    pub reserve: bool,
}

impl VnicRequest {
    /// `op` alone: no parameters, no hint (pause, resume, keep-alive, disassociate).
    pub fn bare(op: crate::vnic::Op) -> Self {
        Self {
            op,
            request_id: 0,
            vn: None,
            macs: Vec::new(),
            ipv4: Vec::new(),
            ipv6: Vec::new(),
            port: None,
            vid: VidRequest::default(),
            migration: Migration::None,
            reserve: false,
            hold_time: None,
        }
    }
}

/// A vNIC as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VnicView {
    pub vm: String,
    pub index: u32,
    pub state: crate::vnic::VnicState,
    pub vn: String,
    pub vni: u32,
    pub port: String,
    /// The VID bound on the port (0: untagged).
    pub vid: u16,
    pub macs: Vec<MacAddr>,
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<std::net::Ipv6Addr>,
    pub migration: Migration,
    pub request_id: u64,
    /// When the association expires unless refreshed (milliseconds since the epoch).
    pub expires_at: Option<u64>,
    /// Whether the port exists now. Without it the vNIC does not forward whatever its
    /// state (it is kept, and bound again when the port appears).
    #[serde(default)]
    pub port_present: bool,
}

/// A successful signaling reply: `code` is always `OK`; `vnic` is absent after disassociate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalReply {
    pub code: String,
    pub vnic: Option<VnicView>,
}

/// `PUT /v1/vdp/ports/{port}`: VDP on for a trunk port, with this bridge's timers (each
/// absent one at 802.1Qbg's default).
pub type VdpEnable = crate::vdp::lldp::Timers;

/// `GET /v1/vdp`: the trunk ports VDP is on for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdpPortView {
    pub port: String,
    /// This bridge's timers, as configured.
    pub timers: crate::vdp::lldp::Timers,
    /// The port's session, while the daemon runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<VdpSessionView>,
    pub vsis: Vec<VsiView>,
}

/// A trunk port's VDP session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdpSessionView {
    /// The interface is there and nve listens on it.
    pub up: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The timers both sides use (each the larger of the two sides').
    pub negotiated: crate::vdp::lldp::Timers,
    /// How long a VSI lives without a keep-alive, ms.
    pub keep_alive_timeout_ms: u64,
    /// The station, once its LLDP was heard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<VdpPeerView>,
    pub counters: VdpCounters,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdpPeerView {
    pub mac: MacAddr,
    /// Its LLDP chassis and port IDs (subtype byte first), hex.
    pub chassis_id: String,
    pub port_id: String,
    pub ttl: u16,
    /// Its EVB TLV: status and timers (absent: it sent none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evb: Option<crate::vdp::lldp::StationEvb>,
    /// Both sides support GroupIDs (the station may use filter formats 3 and 4).
    pub group_ids: bool,
    pub last_heard_ms_ago: u64,
}

/// What a VDP session counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdpCounters {
    /// ECP: requests received (each new sequence number once), their repeats, ACKs sent.
    pub ecp_received: u64,
    pub ecp_duplicates: u64,
    pub ecp_acks_sent: u64,
    /// ECP: this bridge's requests sent, resent, acknowledged, given up after R retries.
    pub ecp_sent: u64,
    pub ecp_retransmitted: u64,
    pub ecp_acked: u64,
    pub ecp_given_up: u64,
    /// Frames that were not ECP or VDP as 802.1Qbg writes them (dropped).
    pub malformed: u64,
    /// Frames the kernel dropped before nve read them (receive buffer full).
    pub kernel_drops: u64,
    /// Frames nve sent that the host dropped on the way out (a full queue, a filter).
    #[serde(default)]
    pub send_dropped: u64,
    /// VSI requests answered, and of them refused (an error status).
    pub vsi_requests: u64,
    pub vsi_refused: u64,
    /// Unsolicited DeAssocs sent (VSIs this bridge ended).
    pub deassocs_sent: u64,
    /// Answers dropped for want of room (a station flooding requests).
    #[serde(default)]
    pub outbox_dropped: u64,
    pub lldp_sent: u64,
    pub lldp_received: u64,
    pub lldp_malformed: u64,
}

/// A VSI associated through VDP (or owed an unsolicited DeAssoc).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsiView {
    pub vsiid: String,
    pub manager: crate::vdp::Id16,
    pub type_id: u32,
    pub type_version: u8,
    /// The vNIC's state; absent: ended here, the station is being told (DeAssoc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<crate::vnic::VnicState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// The VID nve gave it on the port.
    pub vid: u16,
    pub macs: Vec<MacAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}
