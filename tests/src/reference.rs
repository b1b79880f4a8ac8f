//! A reference model of the dataplane in plain Rust: what each program must make of a frame
//! under the configuration `progtest::Loaded` installs. It is a spec written from the
//! README, the map and counter docs and the case table, not a transcription of the eBPF
//! code; `crate::fuzz` (run by `tests/tests/all/verdict_fuzz.rs`) puts generated frames
//! through both and reports every frame on which they disagree.
//!
//! The rules, in the order they apply:
//! - Underlay (XDP and TC): only UDP to port 4789 of our VTEP is nve's; anything else, or a
//!   frame too short to tell, passes to the host, and an outer fragment passes for the host
//!   to reassemble. What the kernel's stack would drop is dropped: a frame unicast to
//!   another MAC, a wrong IPv4 checksum, total length or UDP length. A VXLAN header must be
//!   whole with the I flag set (other flag bits are ignored), the VNI served and the inner
//!   Ethernet header whole. Unless the VN accepts any VTEP, the outer source must be a VTEP
//!   the VN knows (its flood list and the VTEPs of its remote MACs). The inner destination
//!   decides: multicast floods to the VN's local ports; a MAC of a local port is delivered
//!   there while the port forwards; a MAC behind another VTEP is never relayed
//!   (UNDERLAY_HAIRPIN); a MAC that moved away is sent on to its new VTEP by TC (not with
//!   outer IPv4 options); an unknown MAC floods or is dropped as the VN says. XDP delivers
//!   only to untagged, non-tap ports itself and defers the rest to TC; TC leaves a tap
//!   port's unicast to the kernel's vxlan device.
//! - VM egress: the frame's 802.1Q tag (if any) and the port select the VN; the port (VID)
//!   must be bound and forwarding, and, if it checks source MACs, the source must be one the
//!   FDB places on that very port. The selecting tag is removed: whatever follows is the
//!   VM's frame in the VN, delivered or encapsulated byte for byte (a second tag, a VLAN of
//!   the VM's own, included). Where the source MAC's vNIC signaled addresses, the frame's
//!   IPv4 source or ARP sender (0.0.0.0 allowed), IPv6 source or neighbour advertisement
//!   target (:: and link-local allowed) must be an address of a vNIC on the same port.
//!   A multicast ARP request for an address the VN knows is answered on the asking port, and
//!   so is a multicast neighbour solicitation (RFC 4861: hop limit 255, code 0) for one,
//!   unless it is duplicate address detection (from ::) or asks for the asker's own
//!   address; other multicast floods to the VN's other ports and its flood list. Unicast
//!   goes by the FDB: to a local port while that port forwards, or encapsulated to the
//!   remote VTEP if it fits the next hop's MTU; unknown unicast floods or is dropped as the
//!   VN says.
//! - Tunnel rx: a frame the kernel's vxlan device decapsulated carries its VNI and outer
//!   source as tunnel metadata and is delivered like a decapsulated frame; without metadata
//!   it is dropped (TUNNEL_KEY_MISSING).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use nve_common::{
    metrics::{DropReason, Forward, Outcome},
    wire::{
        ARP_REPLY, ARP_REQUEST, ETH_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_ECP,
        ETH_P_IPV4, ETH_P_IPV6, ETH_P_LLDP, ICMPV6_NEIGHBOUR_ADVERT, ICMPV6_NEIGHBOUR_SOLICIT,
        IP_DF, IPPROTO_ICMPV6, IPPROTO_UDP, VXLAN_FLAG_I, VXLAN_IPV4_OVERHEAD, VXLAN_IPV6_OVERHEAD,
        VXLAN_PORT,
    },
};

use crate::{
    packet,
    progtest::{self as pt, Program, Verdict},
};

/// The shortest frame the TC path can decapsulate: the skb helper will not shrink an IPv4
/// skb below Ethernet + an IPv4 header (case table, "truncated to 64 bytes").
const TC_MIN_DECAPSULATED: usize = ETH_LEN + 20;

/// A VM port, or one VID on a trunk VM port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    pub ifindex: u32,
    /// 0: untagged.
    pub vid: u16,
}

impl Port {
    pub const fn new(ifindex: u32, vid: u16) -> Self {
        Self { ifindex, vid }
    }
}

/// A port's (VID's) membership of a VN.
#[derive(Clone, Copy, Debug)]
pub struct Binding {
    pub vni: u32,
    /// An associated vNIC (or a static binding) uses it: what it sends is forwarded.
    pub active: bool,
    /// Frames are delivered to it: it is active, or its vNIC is pre-associated as
    /// migrating in (`PORT_RECEIVES`).
    pub receives: bool,
    /// Frames from it must carry a source MAC the FDB places on it.
    pub check_src_mac: bool,
}

/// Where the FDB places a MAC of a VN.
#[derive(Clone, Copy, Debug)]
pub enum Location {
    /// Behind a local port; `check_ipv4`/`check_ipv6`: the vNIC signaled addresses of that
    /// family, so its sources are checked.
    Local {
        port: Port,
        tap: bool,
        check_ipv4: bool,
        check_ipv6: bool,
    },
    Remote(Ipv4Addr),
    /// Behind a VTEP over IPv6: the frame goes to the kernel's vxlan device as it is.
    RemoteV6(Ipv6Addr),
    /// Was here, migrated to this VTEP: VXLAN still arriving for it is sent on there.
    Moved(Ipv4Addr),
}

impl Location {
    const fn local(port: Port) -> Self {
        Self::Local {
            port,
            tap: false,
            check_ipv4: false,
            check_ipv6: false,
        }
    }
}

/// A VN's broadcast domain.
#[derive(Clone, Debug, Default)]
pub struct Vn {
    /// Unknown unicast floods like broadcast (else it is dropped, FDB_MISS).
    pub floods_unknown: bool,
    /// VXLAN is decapsulated from any VTEP, not only from those the VN knows.
    pub any_vtep: bool,
    /// This host's ports in the VN.
    pub ports: Vec<Port>,
    /// Remote VTEPs broadcast is replicated to.
    pub flood_list: Vec<Ipv4Addr>,
    /// The VMs' MTU when configured below what the underlay leaves.
    pub mtu: Option<u32>,
}

/// How to reach a remote VTEP.
#[derive(Clone, Copy, Debug)]
pub struct NextHop {
    pub mtu: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// The NVE's configuration as the model reads it.
#[derive(Clone, Debug)]
pub struct Config {
    pub vtep: Ipv4Addr,
    pub vtep6: Ipv6Addr,
    /// The underlay interface's MAC: VXLAN unicast to any other is another host's.
    pub underlay_mac: [u8; 6],
    /// The underlay interface's MTU (what remotes over IPv6 are measured against).
    pub underlay_mtu: u32,
    pub ttl: u8,
    /// The port a test run's frame arrives on (the namespace's loopback).
    pub ingress_ifindex: u32,
    pub bindings: BTreeMap<Port, Binding>,
    pub vns: BTreeMap<u32, Vn>,
    pub fdb: BTreeMap<(u32, [u8; 6]), Location>,
    /// Addresses of vNICs: answered by ARP suppression, and their owners' sources.
    pub arp: BTreeMap<(u32, Ipv4Addr), [u8; 6]>,
    pub nd: BTreeMap<(u32, Ipv6Addr), [u8; 6]>,
    pub next_hops: BTreeMap<Ipv4Addr, NextHop>,
}

impl Config {
    /// The configuration `progtest::Loaded` installs, restated from its constants.
    pub fn progtest() -> Self {
        let on = |vni| Binding {
            vni,
            active: true,
            receives: true,
            check_src_mac: false,
        };
        let pre_associated = |vni| Binding {
            vni,
            active: false,
            receives: false,
            check_src_mac: false,
        };
        let migrating_in = |vni| Binding {
            receives: true,
            ..pre_associated(vni)
        };
        let test_port = |vid| Port::new(pt::TEST_IFINDEX, vid);
        let bindings = BTreeMap::from([
            (test_port(0), on(pt::VNI)),
            (Port::new(pt::VM1_PORT, 0), on(pt::VNI)),
            (Port::new(pt::VM3_PORT, 0), on(pt::VNI)),
            (Port::new(pt::VM4_PORT, pt::VID), on(pt::VNI)),
            (Port::new(pt::VM5_PORT, 0), on(pt::VNI)),
            (Port::new(pt::VM6_PORT, 0), pre_associated(pt::VNI)),
            (
                test_port(50),
                Binding {
                    check_src_mac: true,
                    ..on(pt::VNI)
                },
            ),
            (test_port(40), pre_associated(pt::VNI)),
            (test_port(60), migrating_in(pt::VNI)),
            (Port::new(pt::VM10_PORT, 0), migrating_in(pt::VNI)),
            (test_port(pt::VID), on(pt::VNI_TAGGED)),
            (test_port(30), on(pt::VNI_EMPTY)),
        ]);
        let vns = BTreeMap::from([
            (
                pt::VNI,
                Vn {
                    floods_unknown: false,
                    ports: vec![Port::new(pt::VM1_PORT, 0)],
                    ..Vn::default()
                },
            ),
            (
                pt::VNI_TAGGED,
                Vn {
                    floods_unknown: true,
                    mtu: Some(pt::VN_MTU),
                    ..Vn::default()
                },
            ),
            (
                pt::VNI_EMPTY,
                Vn {
                    floods_unknown: true,
                    any_vtep: true,
                    ..Vn::default()
                },
            ),
        ]);
        let local = |ifindex, vid| Location::local(Port::new(ifindex, vid));
        let fdb = BTreeMap::from([
            ((pt::VNI, pt::VM1), local(pt::VM1_PORT, 0)),
            ((pt::VNI, pt::VM2), Location::Remote(pt::REMOTE)),
            ((pt::VNI, pt::VM8), Location::RemoteV6(pt::REMOTE6)),
            ((pt::VNI, pt::VM9), Location::Moved(pt::REMOTE3)),
            ((pt::VNI, pt::VM3), local(pt::VM3_PORT, 0)),
            ((pt::VNI, pt::VM6), local(pt::VM6_PORT, 0)),
            ((pt::VNI, pt::VM10), local(pt::VM10_PORT, 0)),
            (
                (pt::VNI, pt::VM7),
                Location::Local {
                    port: Port::new(pt::TEST_IFINDEX, 50),
                    tap: false,
                    check_ipv4: true,
                    check_ipv6: true,
                },
            ),
            (
                (pt::VNI, pt::VM5),
                Location::Local {
                    port: Port::new(pt::VM5_PORT, 0),
                    tap: true,
                    check_ipv4: false,
                    check_ipv6: false,
                },
            ),
            ((pt::VNI, pt::VM4), local(pt::VM4_PORT, pt::VID)),
            ((pt::VNI_TAGGED, pt::VM2), Location::Remote(pt::REMOTE)),
        ]);
        Self {
            vtep: pt::VTEP,
            vtep6: pt::VTEP6,
            underlay_mac: pt::UNDERLAY_MAC,
            underlay_mtu: pt::UNDERLAY_MTU,
            ttl: 64,
            ingress_ifindex: pt::TEST_IFINDEX,
            bindings,
            vns,
            fdb,
            arp: BTreeMap::from([
                ((pt::VNI_EMPTY, pt::KNOWN_IP), pt::VM2),
                ((pt::VNI, pt::VM7_IP), pt::VM7),
            ]),
            nd: BTreeMap::from([
                ((pt::VNI, pt::VM7_IPV6), pt::VM7),
                ((pt::VNI_EMPTY, pt::KNOWN_IPV6), pt::VM2),
            ]),
            next_hops: [pt::REMOTE, pt::REMOTE3]
                .into_iter()
                .map(|vtep| {
                    let nh = NextHop {
                        mtu: pt::UNDERLAY_MTU,
                        smac: pt::UNDERLAY_MAC,
                        dmac: pt::NEXT_HOP_MAC,
                    };
                    (vtep, nh)
                })
                .collect(),
        }
    }

    /// The VTEPs a frame of `vni` may be sent to: those of its FDB and its flood list.
    pub fn vteps_of(&self, vni: u32) -> BTreeSet<Ipv4Addr> {
        let fdb = self.fdb.iter().filter_map(|((v, _), loc)| match loc {
            Location::Remote(vtep) | Location::Moved(vtep) if *v == vni => Some(*vtep),
            _ => None,
        });
        let flood = self
            .vns
            .get(&vni)
            .into_iter()
            .flat_map(|vn| vn.flood_list.clone());
        fdb.chain(flood).collect()
    }

    /// Whether VXLAN of `vni` from `vtep` is decapsulated.
    pub fn accepts(&self, vni: u32, vtep: Ipv4Addr) -> bool {
        self.vns
            .get(&vni)
            .is_some_and(|vn| vn.any_vtep || self.vteps_of(vni).contains(&vtep))
    }

    /// Every port a frame may be delivered to (devices a test must provide for clones).
    pub fn ifindexes(&self) -> BTreeSet<u32> {
        let bound = self.bindings.keys().map(|p| p.ifindex);
        let flooded = self
            .vns
            .values()
            .flat_map(|vn| vn.ports.iter().map(|p| p.ifindex));
        bound.chain(flooded).collect()
    }

    /// The frame `encapsulated` predicts, with UDP source port 0 (the hash of the inner flow
    /// is not modelled).
    pub fn encapsulation(&self, vni: u32, vtep: Ipv4Addr, inner: &[u8]) -> Option<Vec<u8>> {
        let nh = self.next_hops.get(&vtep)?;
        let mut ip = packet::Ipv4::new(self.vtep, vtep, IPPROTO_UDP);
        ip.ttl = self.ttl;
        Some(packet::vxlan_frame(nh.dmac, nh.smac, &ip, 0, vni, inner))
    }

    /// Whether frames are delivered to `port` (what it sends is `Binding::active`).
    fn receives(&self, port: Port) -> bool {
        self.bindings.get(&port).is_some_and(|b| b.receives)
    }
}

/// What a program must do with a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prediction {
    /// The one counter the frame lands in.
    pub outcome: Outcome,
    pub verdict: Verdict,
    pub output: Output,
}

impl Prediction {
    fn new(outcome: impl Into<Outcome>, verdict: Verdict, output: Output) -> Self {
        Self {
            outcome: outcome.into(),
            verdict,
            output,
        }
    }

    fn drop(reason: DropReason) -> Self {
        Self::new(reason, Verdict::Drop, Output::Dropped)
    }

    fn pass(forward: Forward) -> Self {
        Self::new(forward, Verdict::Pass, Output::Unchanged)
    }

    /// `inner`, the payload of VXLAN of `vni`, delivered to `port`.
    fn decapsulated(vni: u32, port: Port, inner: &[u8]) -> Self {
        let frame = inner.to_vec();
        Self::new(
            Forward::Decapsulated,
            Verdict::Redirect,
            Output::Delivered { vni, port, frame },
        )
    }

    /// The program's return value.
    pub fn code(&self, program: Program) -> u32 {
        program.code(self.verdict)
    }
}

/// What becomes of the frame's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Passed on as it came.
    Unchanged,
    /// Dropped; the bytes do not matter.
    Dropped,
    /// Delivered to one local port of `vni` as `frame`; the port's VID, if it has one, is
    /// the skb's VLAN tag (metadata), not in the bytes.
    Delivered {
        vni: u32,
        port: Port,
        frame: Vec<u8>,
    },
    /// Encapsulated in VXLAN for `vni` and sent to `vtep`, carrying `inner`.
    Encapsulated {
        vni: u32,
        vtep: Ipv4Addr,
        inner: Vec<u8>,
    },
    /// Sent on as exactly these bytes: a VXLAN frame re-addressed to a moved MAC's VTEP,
    /// or a VM's frame handed to the kernel's vxlan device (IPv6 underlay).
    Forwarded(Vec<u8>),
    /// Copied to `ports` and (encapsulated) to `vteps`; the original, `frame`, is consumed.
    Flooded {
        vni: u32,
        ports: Vec<Port>,
        vteps: Vec<Ipv4Addr>,
        frame: Vec<u8>,
    },
}

/// What `program` must do with `frame` (as BPF_PROG_TEST_RUN hands it over: arriving on
/// `cfg.ingress_ifindex`, no VLAN tag in metadata and no tunnel metadata).
pub fn predict(cfg: &Config, program: Program, frame: &[u8]) -> Prediction {
    match program {
        Program::XdpUnderlayRx => xdp_underlay_rx(cfg, frame),
        Program::TcUnderlayRx => tc_underlay_rx(cfg, frame),
        Program::TcVmEgress => vm_egress(cfg, Port::new(cfg.ingress_ifindex, 0), frame),
        Program::TcTunnelRx => tunnel_rx(cfg, None, frame),
        Program::XdpPass => Prediction::pass(Forward::PassedToHost),
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn mac_at(b: &[u8], at: usize) -> [u8; 6] {
    b[at..at + 6].try_into().expect("6 bytes")
}

fn ipv4_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

fn ipv6_at(b: &[u8], at: usize) -> Ipv6Addr {
    <[u8; 16]>::try_from(&b[at..at + 16])
        .expect("16 bytes")
        .into()
}

pub fn is_multicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

/// What an underlay frame is to the NVE.
#[derive(Debug, PartialEq, Eq)]
pub enum Underlay<'a> {
    /// Not VXLAN to our VTEP, or too short to tell.
    Host,
    /// An outer IPv4 fragment to our VTEP (MF set or an offset).
    Fragment,
    /// VXLAN to our VTEP that cannot be decapsulated.
    Invalid(DropReason),
    /// VXLAN over IPv6 to our IPv6 VTEP: the kernel's vxlan device decapsulates it.
    KernelVxlan,
    /// A VXLAN frame from VTEP `src` for `vni` carrying `inner` (Ethernet header and on).
    Vxlan {
        src: Ipv4Addr,
        vni: u32,
        inner_offset: usize,
        inner: &'a [u8],
    },
}

/// Classifies an underlay frame (shared by XDP and TC, and by the test's isolation checks).
pub fn underlay<'a>(cfg: &Config, frame: &'a [u8]) -> Underlay<'a> {
    const UDP6: usize = ETH_LEN + 40;
    if frame.len() >= UDP6 + 8
        && be16(frame, 12) == ETH_P_IPV6
        && frame[ETH_LEN + 6] == IPPROTO_UDP
        && ipv6_at(frame, ETH_LEN + 24) == cfg.vtep6
        && be16(frame, UDP6 + 2) == VXLAN_PORT
    {
        return Underlay::KernelVxlan;
    }
    if frame.len() < ETH_LEN + 20 || be16(frame, 12) != ETH_P_IPV4 {
        return Underlay::Host;
    }
    let ip = &frame[ETH_LEN..];
    let (version, ihl) = (ip[0] >> 4, usize::from(ip[0] & 0x0f) * 4);
    if version != 4 || ihl < 20 || ipv4_at(ip, 16) != cfg.vtep || ip[9] != IPPROTO_UDP {
        return Underlay::Host;
    }
    let more_fragments_or_offset = be16(ip, 6) & 0x3fff != 0;
    if more_fragments_or_offset {
        return Underlay::Fragment;
    }
    let udp = ETH_LEN + ihl;
    if frame.len() < udp + 8 || be16(frame, udp + 2) != VXLAN_PORT {
        return Underlay::Host;
    }
    // What the kernel's stack would drop before its UDP socket saw the frame.
    let dst = mac_at(frame, 0);
    let ip_len = usize::from(be16(ip, 2));
    let outer = if !is_multicast(&dst) && dst != cfg.underlay_mac {
        Err(DropReason::OtherHost)
    } else if packet::checksum(&ip[..ihl]) != 0 {
        Err(DropReason::IpCsum)
    } else if ip_len + ETH_LEN != frame.len() {
        Err(DropReason::IpTotLen)
    } else if usize::from(be16(frame, udp + 4)) + ihl != ip_len {
        Err(DropReason::UdpLen)
    } else {
        Ok(())
    };
    if let Err(reason) = outer {
        return Underlay::Invalid(reason);
    }
    let vxlan = udp + 8;
    if frame.len() < vxlan + 8 || frame[vxlan] & VXLAN_FLAG_I == 0 {
        return Underlay::Invalid(DropReason::VxlanInvalidHdr);
    }
    let vni = u32::from_be_bytes([0, frame[vxlan + 4], frame[vxlan + 5], frame[vxlan + 6]]);
    let inner_offset = vxlan + 8;
    if frame.len() < inner_offset + ETH_LEN {
        return Underlay::Invalid(DropReason::InnerTruncated);
    }
    Underlay::Vxlan {
        src: ipv4_at(ip, 12),
        vni,
        inner_offset,
        inner: &frame[inner_offset..],
    }
}

/// Where a frame arriving from the underlay goes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Port { port: Port, tap: bool },
    Flood(Vec<Port>),
    Moved(Ipv4Addr),
}

/// Where a frame of `vni` for `dst`, from VTEP `src`, goes.
fn decap_target(cfg: &Config, vni: u32, src: Ipv4Addr, dst: [u8; 6]) -> Result<Target, DropReason> {
    let vn = cfg.vns.get(&vni).ok_or(DropReason::VniNotFound)?;
    if !cfg.accepts(vni, src) {
        return Err(DropReason::VtepNotInVn);
    }
    let flood = || Target::Flood(vn.ports.clone());
    if is_multicast(&dst) {
        return Ok(flood());
    }
    match cfg.fdb.get(&(vni, dst)) {
        Some(Location::Local { port, tap, .. }) if cfg.receives(*port) => Ok(Target::Port {
            port: *port,
            tap: *tap,
        }),
        Some(Location::Local { .. }) => Err(DropReason::VnicInactive),
        // Behind another VTEP: the underlay is not relayed back onto the underlay, unless
        // the MAC moved away from here (the forwarding pointer).
        Some(Location::Remote(_) | Location::RemoteV6(_)) => Err(DropReason::UnderlayHairpin),
        Some(Location::Moved(vtep)) => Ok(Target::Moved(*vtep)),
        None if vn.floods_unknown => Ok(flood()),
        None => Err(DropReason::FdbMiss),
    }
}

/// The verdicts common to both underlay hooks: `Err` is the final prediction.
fn underlay_vxlan<'a>(
    cfg: &Config,
    frame: &'a [u8],
) -> Result<(u32, &'a [u8], Target), Prediction> {
    match underlay(cfg, frame) {
        Underlay::Host => Err(Prediction::pass(Forward::PassedToHost)),
        Underlay::Fragment => Err(Prediction::pass(Forward::PassedFragment)),
        Underlay::Invalid(reason) => Err(Prediction::drop(reason)),
        Underlay::KernelVxlan => Err(Prediction::pass(Forward::ToKernelVxlan)),
        Underlay::Vxlan {
            src, vni, inner, ..
        } => match decap_target(cfg, vni, src, mac_at(inner, 0)) {
            Ok(target) => Ok((vni, inner, target)),
            Err(reason) => Err(Prediction::drop(reason)),
        },
    }
}

fn xdp_underlay_rx(cfg: &Config, frame: &[u8]) -> Prediction {
    let (vni, inner, target) = match underlay_vxlan(cfg, frame) {
        Ok(t) => t,
        Err(p) => return p,
    };
    match target {
        // XDP cannot push a tag, clone, or keep GSO for a tap: TC does those.
        Target::Port { port, tap: false } if port.vid == 0 => {
            Prediction::decapsulated(vni, port, inner)
        }
        _ => Prediction::pass(Forward::DeferredToTc),
    }
}

fn tc_underlay_rx(cfg: &Config, frame: &[u8]) -> Prediction {
    let (vni, inner, target) = match underlay_vxlan(cfg, frame) {
        Ok(t) => t,
        Err(p) => return p,
    };
    match target {
        Target::Port { tap: true, .. } => return Prediction::pass(Forward::ToKernelVxlan),
        Target::Moved(vtep) => return forward_moved(cfg, frame, vtep),
        _ => {}
    }
    if inner.len() < TC_MIN_DECAPSULATED {
        return Prediction::drop(DropReason::HeaderAdjustFailed);
    }
    deliver(vni, inner, target)
}

/// VXLAN for a MAC that moved to `vtep`: the outer IPv4 header re-addressed (from this
/// VTEP), TTL one less, the UDP checksum cleared, the next hop's MACs; sent on. A TTL at 1
/// or below ends it (two NVEs pointing at each other); so do outer IPv4 options.
fn forward_moved(cfg: &Config, frame: &[u8], vtep: Ipv4Addr) -> Prediction {
    let ip = ETH_LEN;
    if frame[ip] != 0x45 {
        return Prediction::drop(DropReason::ForwardIpOptions);
    }
    if frame[ip + 8] <= 1 {
        return Prediction::drop(DropReason::TtlExceeded);
    }
    let Some(nh) = cfg.next_hops.get(&vtep) else {
        // Not in the test configuration: every VTEP it names has a next hop.
        return Prediction::drop(DropReason::UnderlayNoNeigh);
    };
    let mut out = frame.to_vec();
    out[..6].copy_from_slice(&nh.dmac);
    out[6..12].copy_from_slice(&nh.smac);
    out[ip + 8] -= 1;
    out[ip + 10..ip + 12].fill(0);
    out[ip + 12..ip + 16].copy_from_slice(&cfg.vtep.octets());
    out[ip + 16..ip + 20].copy_from_slice(&vtep.octets());
    let check = packet::checksum(&out[ip..ip + 20]);
    out[ip + 10..ip + 12].copy_from_slice(&check.to_be_bytes());
    out[ip + 26..ip + 28].fill(0);
    Prediction::new(
        Forward::ForwardedToVtep,
        Verdict::Redirect,
        Output::Forwarded(out),
    )
}

/// Delivery of a decapsulated frame (TC and tunnel rx).
fn deliver(vni: u32, inner: &[u8], target: Target) -> Prediction {
    match target {
        Target::Port { port, .. } => Prediction::decapsulated(vni, port, inner),
        // A moved MAC over the kernel's device is not forwarded (the TC path forwards it
        // before delivery).
        Target::Moved(_) => Prediction::drop(DropReason::FdbMiss),
        Target::Flood(ports) if ports.is_empty() => Prediction::drop(DropReason::FloodListEmpty),
        Target::Flood(ports) => Prediction::new(
            Forward::Flooded,
            Verdict::Drop,
            Output::Flooded {
                vni,
                ports,
                vteps: vec![],
                frame: inner.to_vec(),
            },
        ),
    }
}

/// Tunnel rx: `tunnel` is the (VNI, outer source) the kernel's vxlan device left as
/// metadata (a test run can attach none).
pub fn tunnel_rx(cfg: &Config, tunnel: Option<(u32, Ipv4Addr)>, frame: &[u8]) -> Prediction {
    let Some((vni, src)) = tunnel else {
        return Prediction::drop(DropReason::TunnelKeyMissing);
    };
    if frame.len() < ETH_LEN {
        return Prediction::drop(DropReason::InnerTruncated);
    }
    match decap_target(cfg, vni, src, mac_at(frame, 0)) {
        Ok(target) => deliver(vni, frame, target),
        Err(reason) => Prediction::drop(reason),
    }
}

/// The VLAN a VM frame names with its 802.1Q or 802.1ad tag (0: untagged or
/// priority-tagged), and the frame without that tag. A VN carries untagged frames: one
/// still tagged under the port's tag is VLAN_STACKED. `Err`: that, or a tag cut short.
pub fn vm_frame(frame: &[u8]) -> Result<(u16, Vec<u8>), DropReason> {
    if !is_vlan(be16(frame, 12)) {
        return Ok((0, frame.to_vec()));
    }
    if frame.len() < ETH_LEN + 4 {
        return Err(DropReason::PktTooSmall);
    }
    if is_vlan(be16(frame, 16)) {
        return Err(DropReason::VlanStacked);
    }
    let vid = be16(frame, 14) & 0x0fff;
    let mut untagged = frame[..12].to_vec();
    untagged.extend_from_slice(&frame[16..]);
    Ok((vid, untagged))
}

fn is_vlan(ether_type: u16) -> bool {
    matches!(ether_type, ETH_P_8021Q | ETH_P_8021AD)
}

fn vm_egress(cfg: &Config, port: Port, frame: &[u8]) -> Prediction {
    // The link's own protocols (a VDP station's) go to the host as they are.
    if frame.len() >= ETH_LEN && matches!(be16(frame, 12), ETH_P_LLDP | ETH_P_ECP) {
        return Prediction::pass(Forward::LinkControl);
    }
    let (vid, frame) = match vm_frame(frame) {
        Ok(f) => f,
        Err(reason) => return Prediction::drop(reason),
    };
    let ingress = Port::new(port.ifindex, vid);
    let Some(binding) = cfg.bindings.get(&ingress) else {
        return Prediction::drop(DropReason::PortNotInVn);
    };
    let vni = binding.vni;
    let (dst, src) = (mac_at(&frame, 0), mac_at(&frame, 6));
    if binding.check_src_mac {
        let (check_ipv4, check_ipv6) = match cfg.fdb.get(&(vni, src)) {
            Some(Location::Local {
                port,
                check_ipv4,
                check_ipv6,
                ..
            }) if *port == ingress => (*check_ipv4, *check_ipv6),
            _ => return Prediction::drop(DropReason::SpoofedSrcMac),
        };
        let sources = SourceCheck {
            cfg,
            vni,
            ingress,
            check_ipv4,
            check_ipv6,
        };
        if let Err(reason) = sources.check(&frame) {
            return Prediction::drop(reason);
        }
    }
    // A vNIC that is not associated yet is still checked first (its announcements are
    // reported), then dropped.
    if !binding.active {
        return Prediction::drop(DropReason::VnicInactive);
    }
    if is_multicast(&dst) {
        let suppressed = arp_reply(cfg, vni, &frame)
            .map(|reply| (Forward::ArpReplied, reply))
            .or_else(|| nd_reply(cfg, vni, &frame).map(|reply| (Forward::NdReplied, reply)));
        if let Some((answered, reply)) = suppressed {
            return Prediction::new(
                answered,
                Verdict::Redirect,
                Output::Delivered {
                    vni,
                    port: ingress,
                    frame: reply,
                },
            );
        }
        return flood(cfg, vni, ingress, frame);
    }
    match cfg.fdb.get(&(vni, dst)) {
        // As a bridge: never back to the port (and VID) it came from.
        Some(Location::Local { port, .. }) if cfg.receives(*port) && *port == ingress => {
            Prediction::drop(DropReason::Hairpin)
        }
        Some(Location::Local { port, .. }) if cfg.receives(*port) => Prediction::new(
            Forward::LocalSwitched,
            Verdict::Redirect,
            Output::Delivered {
                vni,
                port: *port,
                frame,
            },
        ),
        // A paused vNIC, or one pre-associated and not migrating in, receives nothing, from
        // the underlay or locally.
        Some(Location::Local { .. }) => Prediction::drop(DropReason::VnicInactive),
        Some(Location::Moved(vtep)) => cfg
            .next_hops
            .get(vtep)
            .and_then(|nh| too_big(cfg, vni, nh.mtu - VXLAN_IPV4_OVERHEAD, ingress, &frame))
            .unwrap_or_else(|| encapsulate(cfg, vni, *vtep, frame)),
        Some(Location::RemoteV6(_)) => {
            let budget = cfg.underlay_mtu - VXLAN_IPV6_OVERHEAD;
            // To the kernel's vxlan device as it is (without the port's tag).
            too_big(cfg, vni, budget, ingress, &frame).unwrap_or_else(|| {
                Prediction::new(
                    Forward::Encapsulated,
                    Verdict::Redirect,
                    Output::Forwarded(frame),
                )
            })
        }
        Some(Location::Remote(vtep)) => cfg
            .next_hops
            .get(vtep)
            .and_then(|nh| too_big(cfg, vni, nh.mtu - VXLAN_IPV4_OVERHEAD, ingress, &frame))
            .unwrap_or_else(|| encapsulate(cfg, vni, *vtep, frame)),
        None => match cfg.vns.get(&vni) {
            Some(vn) if vn.floods_unknown => flood(cfg, vni, ingress, frame),
            Some(_) => Prediction::drop(DropReason::FdbMiss),
            None => Prediction::drop(DropReason::VniNotFound),
        },
    }
}

/// The source addresses a vNIC whose addresses are signaled may use: its own (those the VN's
/// ARP and ND tables give to a MAC on the same port), and the unspecified and link-local
/// ones.
struct SourceCheck<'a> {
    cfg: &'a Config,
    vni: u32,
    ingress: Port,
    check_ipv4: bool,
    check_ipv6: bool,
}

impl SourceCheck<'_> {
    fn check(&self, frame: &[u8]) -> Result<(), DropReason> {
        let need = |len: usize| {
            if frame.len() < len {
                Err(DropReason::PktTooSmall)
            } else {
                Ok(())
            }
        };
        let ok = |fine: bool| {
            if fine {
                Ok(())
            } else {
                Err(DropReason::SpoofedSrcIp)
            }
        };
        match be16(frame, 12) {
            ETH_P_IPV4 if self.check_ipv4 => {
                need(ETH_LEN + 20)?;
                ok(self.ipv4(ipv4_at(frame, ETH_LEN + 12)))
            }
            ETH_P_ARP if self.check_ipv4 => {
                need(ETH_LEN + 28)?;
                ok(self.ipv4(ipv4_at(frame, ETH_LEN + 14)))
            }
            ETH_P_IPV6 if self.check_ipv6 => {
                let icmp = ETH_LEN + 40;
                need(icmp)?;
                ok(self.ipv6(ipv6_at(frame, ETH_LEN + 8)))?;
                if frame[ETH_LEN + 6] != IPPROTO_ICMPV6 {
                    return Ok(());
                }
                need(icmp + 1)?;
                if frame[icmp] != ICMPV6_NEIGHBOUR_ADVERT {
                    return Ok(());
                }
                need(icmp + 8 + 16)?;
                ok(self.ipv6(ipv6_at(frame, icmp + 8)))
            }
            _ => Ok(()),
        }
    }

    fn owned_here(&self, owner: Option<&[u8; 6]>) -> bool {
        owner.is_some_and(|mac| {
            matches!(self.cfg.fdb.get(&(self.vni, *mac)),
                Some(Location::Local { port, .. }) if *port == self.ingress)
        })
    }

    fn ipv4(&self, ip: Ipv4Addr) -> bool {
        ip.is_unspecified() || self.owned_here(self.cfg.arp.get(&(self.vni, ip)))
    }

    fn ipv6(&self, ip: Ipv6Addr) -> bool {
        ip.is_unspecified()
            || ip.is_unicast_link_local()
            || self.owned_here(self.cfg.nd.get(&(self.vni, ip)))
    }
}

/// A unicast frame that will not fit once encapsulated (`budget`: what the underlay
/// leaves, 50 bytes less than the next hop's MTU over IPv4 and 70 less than the underlay's
/// over IPv6; or the VN's MTU if lower): IPv4 with DF and IPv6 are answered on the sender's port with ICMP
/// "fragmentation needed" / ICMPv6 "packet too big" from the destination; anything else is
/// dropped. `None`: it fits.
fn too_big(cfg: &Config, vni: u32, budget: u32, ingress: Port, frame: &[u8]) -> Option<Prediction> {
    let len = frame.len() as u32 - ETH_LEN as u32;
    let mut mtu = budget;
    if let Some(vn_mtu) = cfg.vns.get(&vni).and_then(|vn| vn.mtu) {
        mtu = mtu.min(vn_mtu);
    }
    if len <= mtu {
        return None;
    }
    let answer = |frame| {
        Prediction::new(
            Forward::IcmpTooBig,
            Verdict::Redirect,
            Output::Delivered {
                vni,
                port: ingress,
                frame,
            },
        )
    };
    Some(match be16(frame, 12) {
        ETH_P_IPV4 if be16(frame, ETH_LEN + 6) & IP_DF != 0 => {
            answer(crate::packet::frag_needed(frame, mtu as u16))
        }
        ETH_P_IPV6 => answer(crate::packet::packet_too_big(frame, mtu)),
        _ => Prediction::drop(DropReason::UnderlayMtuExceeded),
    })
}

fn encapsulate(cfg: &Config, vni: u32, vtep: Ipv4Addr, inner: Vec<u8>) -> Prediction {
    let Some(nh) = cfg.next_hops.get(&vtep) else {
        // Not in the test configuration: every VTEP it names has a next hop.
        return Prediction::drop(DropReason::UnderlayNoNeigh);
    };
    let on_the_wire = inner.len() + VXLAN_IPV4_OVERHEAD as usize;
    if on_the_wire > (nh.mtu as usize) + ETH_LEN {
        return Prediction::drop(DropReason::UnderlayMtuExceeded);
    }
    Prediction::new(
        Forward::Encapsulated,
        Verdict::Redirect,
        Output::Encapsulated { vni, vtep, inner },
    )
}

/// Copies to the VN's ports except `ingress` and to its flood list.
fn flood(cfg: &Config, vni: u32, ingress: Port, frame: Vec<u8>) -> Prediction {
    let Some(vn) = cfg.vns.get(&vni) else {
        return Prediction::drop(DropReason::VniNotFound);
    };
    let ports: Vec<Port> = vn.ports.iter().copied().filter(|p| *p != ingress).collect();
    if ports.is_empty() && vn.flood_list.is_empty() {
        return Prediction::drop(DropReason::FloodListEmpty);
    }
    Prediction::new(
        Forward::Flooded,
        Verdict::Drop,
        Output::Flooded {
            vni,
            ports,
            vteps: vn.flood_list.clone(),
            frame,
        },
    )
}

/// The reply to `frame` if it is an ARP request (IPv4 over Ethernet, not gratuitous) for
/// an address `vni` knows: the request turned around in place, from the address's owner.
fn arp_reply(cfg: &Config, vni: u32, frame: &[u8]) -> Option<Vec<u8>> {
    const ARP_LEN: usize = 28;
    if frame.len() < ETH_LEN + ARP_LEN || be16(frame, 12) != ETH_P_ARP {
        return None;
    }
    let arp = &frame[ETH_LEN..ETH_LEN + ARP_LEN];
    let ipv4_over_ethernet =
        be16(arp, 0) == 1 && be16(arp, 2) == ETH_P_IPV4 && arp[4] == 6 && arp[5] == 4;
    let (oper, sha, spa, tpa) = (
        be16(arp, 6),
        mac_at(arp, 8),
        ipv4_at(arp, 14),
        ipv4_at(arp, 24),
    );
    if !ipv4_over_ethernet || oper != ARP_REQUEST || spa == tpa {
        return None;
    }
    let owner = *cfg.arp.get(&(vni, tpa))?;
    let mut reply = frame.to_vec();
    reply[0..6].copy_from_slice(&sha);
    reply[6..12].copy_from_slice(&owner);
    let body = &mut reply[ETH_LEN..ETH_LEN + ARP_LEN];
    body[6..8].copy_from_slice(&ARP_REPLY.to_be_bytes());
    body[8..14].copy_from_slice(&owner);
    body[14..18].copy_from_slice(&tpa.octets());
    body[18..24].copy_from_slice(&sha);
    body[24..28].copy_from_slice(&spa.octets());
    Some(reply)
}

/// The neighbour advertisement answering `frame` if it is a neighbour solicitation for an
/// address `vni` knows, from the address's owner to the asker (solicited, override, with
/// the owner's link-layer address), in place of the solicitation.
fn nd_reply(cfg: &Config, vni: u32, frame: &[u8]) -> Option<Vec<u8>> {
    let icmp = ETH_LEN + 40;
    if frame.len() < icmp + 8 + 16 || be16(frame, 12) != ETH_P_IPV6 {
        return None;
    }
    let (next, hop_limit) = (frame[ETH_LEN + 6], frame[ETH_LEN + 7]);
    let (kind, code) = (frame[icmp], frame[icmp + 1]);
    let solicitation =
        next == IPPROTO_ICMPV6 && hop_limit == 255 && kind == ICMPV6_NEIGHBOUR_SOLICIT && code == 0;
    let (asker_mac, asker, target) = (
        mac_at(frame, 6),
        ipv6_at(frame, ETH_LEN + 8),
        ipv6_at(frame, icmp + 8),
    );
    if !solicitation || asker.is_unspecified() {
        return None;
    }
    let owner = *cfg.nd.get(&(vni, target))?;
    if owner == asker_mac {
        return None;
    }
    Some(packet::neighbour_reply(asker_mac, asker, owner, target))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progtest::{Output as CaseOutput, cases};

    /// The model agrees with every row of the hand-written case table.
    #[test]
    fn model_matches_the_case_table() {
        let cfg = Config::progtest();
        for case in cases() {
            let p = predict(&cfg, case.program, &case.frame);
            assert_eq!(
                (p.outcome, p.verdict),
                (case.outcome, case.verdict),
                "{} / {}",
                case.program.name(),
                case.name
            );
            match (&case.output, &p.output) {
                (CaseOutput::Same, Output::Unchanged) => {}
                (CaseOutput::Same, Output::Delivered { frame, .. } | Output::Forwarded(frame)) => {
                    assert_eq!(frame, &case.frame, "{}", case.name)
                }
                (
                    CaseOutput::Bytes(want),
                    Output::Delivered { frame, .. } | Output::Forwarded(frame),
                ) => {
                    assert_eq!(frame, want, "{}", case.name)
                }
                (
                    CaseOutput::Encap { vni, inner },
                    Output::Encapsulated {
                        vni: v, inner: i, ..
                    },
                ) => {
                    assert_eq!((vni, inner), (v, i), "{}", case.name)
                }
                (CaseOutput::Any, _) => {}
                (want, got) => panic!("{}: want {want:?}, model says {got:?}", case.name),
            }
        }
    }
}
