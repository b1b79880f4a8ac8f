//! BPF_PROG_TEST_RUN of the real programs with their real maps: a loaded instance with a
//! fixed configuration, and the table of cases the tests assert and the bench replays.
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use nve_common::{
    maps::{
        ARP_MAP, ArpEntry, ArpKey, CONFIG_MAP, DataplaneConfig, FDB_MAP, FdbEntry, FdbKey,
        LocalPort, ND_MAP, NEXTHOPS_MAP, NdKey, NextHop, PORT_ACTIVE, PORT_CHECK_SRC_MAC,
        PORT_F_CHECK_IPV4, PORT_F_CHECK_IPV6, PORT_F_TAP, PORTS_MAP, PortKey, PortValue,
        VN_F_ANY_VTEP, VN_F_NO_UNKNOWN_FLOOD, VN_VTEPS_MAP, VNS_MAP, VnInfo, VnVtepKey, vtep_v4,
    },
    metrics::{Counter, DropReason, Forward, Hook, Outcome},
};

use crate::packet::{self, Ipv4};

pub const VTEP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const VNI: u32 = 100;
pub const VNI_TAGGED: u32 = 200;
pub const VNI_EMPTY: u32 = 300;
/// VID of VNI_TAGGED on the test port; VNI_EMPTY is on VID 30.
pub const VID: u16 = 10;
/// In BPF_PROG_TEST_RUN an skb's device is the namespace's loopback.
pub const TEST_IFINDEX: u32 = 1;
/// Local ports redirects name (never transmitted to by a test run).
pub const VM1_PORT: u32 = 42;
pub const VM3_PORT: u32 = 43;
pub const VM4_PORT: u32 = 44;
pub const VM5_PORT: u32 = 45;
pub const VM6_PORT: u32 = 46;
pub const VM1: [u8; 6] = [2, 0, 0, 0, 1, 1];
pub const VM2: [u8; 6] = [2, 0, 0, 0, 2, 1];
pub const VM3: [u8; 6] = [2, 0, 0, 0, 3, 1];
pub const VM4: [u8; 6] = [2, 0, 0, 0, 4, 1];
/// Behind a tap port.
pub const VM5: [u8; 6] = [2, 0, 0, 0, 5, 1];
/// A pre-associated vNIC: installed, not forwarding.
pub const VM6: [u8; 6] = [2, 0, 0, 0, 6, 1];
/// The one MAC allowed on the test port's VID 50.
pub const VM7: [u8; 6] = [2, 0, 0, 0, 7, 1];
pub const UNKNOWN: [u8; 6] = [2, 0, 0, 0, 9, 9];
/// Migrated from here to REMOTE3: a forwarding pointer.
pub const VM9: [u8; 6] = [2, 0, 0, 0, 9, 1];
pub const REMOTE3: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
/// Behind REMOTE6, over the IPv6 underlay.
pub const VM8: [u8; 6] = [2, 0, 0, 0, 8, 1];
pub const VTEP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
pub const REMOTE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
/// The collect_md vxlan device VXLAN over IPv6 goes through.
pub const TUNNEL_IFINDEX: u32 = 9;
/// The underlay interface's MAC. Zero: BPF_PROG_TEST_RUN runs TC programs on the
/// namespace's loopback, whose address is zero, and eth_type_trans marks a frame unicast to
/// any other MAC as another host's (PACKET_OTHERHOST), which decapsulation refuses.
pub const UNDERLAY_MAC: [u8; 6] = [0; 6];
pub const NEXT_HOP_MAC: [u8; 6] = [2, 0xbb, 0, 0, 0, 2];
pub const UNDERLAY_MTU: u32 = 1500;
/// VNI_TAGGED's configured MTU.
pub const VN_MTU: u32 = 1280;
/// An address of VNI_EMPTY the dataplane answers ARP for (VM2 holds it).
pub const KNOWN_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 30, 9);
/// An address of VNI_EMPTY the dataplane answers neighbour solicitations for (VM2's).
pub const KNOWN_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x30, 0, 0, 0, 0, 9);
/// VM7's signaled addresses: its IPv4 and IPv6 sources are checked.
pub const VM7_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 7);
pub const VM7_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);
/// A VTEP no VN knows.
pub const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 66);

/// The dataplane object loaded with maps pinned in a private directory (removed on drop),
/// filled with the fixed configuration the cases assume.
pub struct Loaded {
    pub ebpf: Ebpf,
    pin_dir: PathBuf,
}

impl Loaded {
    pub fn new(tag: &str) -> Result<Self> {
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/nvet-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&pin_dir);
        std::fs::create_dir_all(&pin_dir).context("creating pin dir (is /sys/fs/bpf bpffs?)")?;
        // As the daemon loads it by default: drop logging off (removed by the verifier).
        let ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .override_global(aya_log::LEVEL, &0u8, true)
            .load(nve_user::dataplane::ebpf_object());
        let mut l = Self {
            ebpf: ebpf.context("loading nve-ebpf")?,
            pin_dir,
        };
        l.configure()?;
        for name in ["tc_vm_egress", "tc_underlay_rx", "tc_tunnel_rx"] {
            let p: &mut SchedClassifier = l.ebpf.program_mut(name).context(name)?.try_into()?;
            p.load()?;
        }
        for name in ["xdp_underlay_rx", "xdp_pass"] {
            let p: &mut Xdp = l.ebpf.program_mut(name).context(name)?.try_into()?;
            p.load()?;
        }
        Ok(l)
    }

    fn configure(&mut self) -> Result<()> {
        let mut cfg: Array<_, DataplaneConfig> =
            Array::try_from(self.ebpf.map_mut(CONFIG_MAP).context(CONFIG_MAP)?)?;
        cfg.set(
            0,
            DataplaneConfig {
                vtep_ipv4: VTEP.octets(),
                underlay_ifindex: 7,
                ttl: 64,
                _pad: [0; 3],
                vtep_ipv6: VTEP6.octets(),
                tunnel_ifindex: TUNNEL_IFINDEX,
                underlay_mtu: UNDERLAY_MTU,
                underlay_mac: UNDERLAY_MAC,
                _pad2: [0; 2],
            },
            0,
        )?;
        let mut ports: HashMap<_, PortKey, PortValue> =
            HashMap::try_from(self.ebpf.map_mut(PORTS_MAP).context(PORTS_MAP)?)?;
        ports.insert(PortKey::new(TEST_IFINDEX, 0), PortValue::active(VNI), 0)?;
        // The VMs' ports decapsulation delivers to; VM6's vNIC is only pre-associated, and so
        // is the test port's VID 40.
        for (port, vid) in [(VM1_PORT, 0), (VM3_PORT, 0), (VM4_PORT, VID), (VM5_PORT, 0)] {
            ports.insert(PortKey::new(port, vid), PortValue::active(VNI), 0)?;
        }
        ports.insert(
            PortKey::new(VM6_PORT, 0),
            PortValue { vni: VNI, flags: 0 },
            0,
        )?;
        // VID 50 of the test port checks source MACs: only VM7 is behind it.
        ports.insert(
            PortKey::new(TEST_IFINDEX, 50),
            PortValue {
                vni: VNI,
                flags: PORT_ACTIVE | PORT_CHECK_SRC_MAC,
            },
            0,
        )?;
        ports.insert(
            PortKey::new(TEST_IFINDEX, 40),
            PortValue { vni: VNI, flags: 0 },
            0,
        )?;
        ports.insert(
            PortKey::new(TEST_IFINDEX, VID),
            PortValue::active(VNI_TAGGED),
            0,
        )?;
        ports.insert(
            PortKey::new(TEST_IFINDEX, 30),
            PortValue::active(VNI_EMPTY),
            0,
        )?;
        let mut vns: HashMap<_, u32, VnInfo> =
            HashMap::try_from(self.ebpf.map_mut(VNS_MAP).context(VNS_MAP)?)?;
        // VNI: every MAC known, unknown unicast dropped. VNI_EMPTY floods it (to nowhere).
        let mut vn = VnInfo {
            flags: VN_F_NO_UNKNOWN_FLOOD,
            ..VnInfo::default()
        };
        vn.ports[0] = LocalPort::new(VM1_PORT, 0);
        vn.port_count = 1;
        vns.insert(VNI, vn, 0)?;
        // VNI_TAGGED's VMs have a configured MTU below the underlay's.
        vns.insert(
            VNI_TAGGED,
            VnInfo {
                mtu: VN_MTU,
                ..VnInfo::default()
            },
            0,
        )?;
        // VNI_EMPTY decapsulates from any VTEP; the others only from REMOTE.
        vns.insert(
            VNI_EMPTY,
            VnInfo {
                flags: VN_F_ANY_VTEP,
                ..VnInfo::default()
            },
            0,
        )?;
        let mut vteps: HashMap<_, VnVtepKey, u32> =
            HashMap::try_from(self.ebpf.map_mut(VN_VTEPS_MAP).context(VN_VTEPS_MAP)?)?;
        for vni in [VNI, VNI_TAGGED] {
            vteps.insert(VnVtepKey::new(vni, vtep_v4(REMOTE.octets())), 0, 0)?;
        }
        // A moved MAC's VTEP is one the VN knows.
        vteps.insert(VnVtepKey::new(VNI, vtep_v4(REMOTE3.octets())), 0, 0)?;
        let mut fdb: HashMap<_, FdbKey, FdbEntry> =
            HashMap::try_from(self.ebpf.map_mut(FDB_MAP).context(FDB_MAP)?)?;
        fdb.insert(
            FdbKey::new(VNI, VM1),
            FdbEntry::local(LocalPort::new(VM1_PORT, 0)),
            0,
        )?;
        fdb.insert(
            FdbKey::new(VNI, VM2),
            FdbEntry::remote(vtep_v4(REMOTE.octets())),
            0,
        )?;
        fdb.insert(FdbKey::new(VNI, VM8), FdbEntry::remote(REMOTE6.octets()), 0)?;
        let remote3 = vtep_v4(REMOTE3.octets());
        fdb.insert(FdbKey::new(VNI, VM9), FdbEntry::moved(remote3), 0)?;
        fdb.insert(
            FdbKey::new(VNI, VM3),
            FdbEntry::local(LocalPort::new(VM3_PORT, 0)),
            0,
        )?;
        fdb.insert(
            FdbKey::new(VNI, VM6),
            FdbEntry::local(LocalPort::new(VM6_PORT, 0)),
            0,
        )?;
        fdb.insert(
            FdbKey::new(VNI, VM7),
            FdbEntry::local(
                LocalPort::new(TEST_IFINDEX, 50).with_flags(PORT_F_CHECK_IPV4 | PORT_F_CHECK_IPV6),
            ),
            0,
        )?;
        fdb.insert(
            FdbKey::new(VNI, VM5),
            FdbEntry::local(LocalPort::new(VM5_PORT, 0).with_flags(PORT_F_TAP)),
            0,
        )?;
        fdb.insert(
            FdbKey::new(VNI, VM4),
            FdbEntry::local(LocalPort::new(VM4_PORT, VID)),
            0,
        )?;
        fdb.insert(
            FdbKey::new(VNI_TAGGED, VM2),
            FdbEntry::remote(vtep_v4(REMOTE.octets())),
            0,
        )?;
        let mut arp: HashMap<_, ArpKey, ArpEntry> =
            HashMap::try_from(self.ebpf.map_mut(ARP_MAP).context(ARP_MAP)?)?;
        arp.insert(
            ArpKey::new(VNI_EMPTY, KNOWN_IP.octets()),
            ArpEntry::new(VM2),
            0,
        )?;
        arp.insert(ArpKey::new(VNI, VM7_IP.octets()), ArpEntry::new(VM7), 0)?;
        let mut nd: HashMap<_, NdKey, ArpEntry> =
            HashMap::try_from(self.ebpf.map_mut(ND_MAP).context(ND_MAP)?)?;
        nd.insert(NdKey::new(VNI, VM7_IPV6.octets()), ArpEntry::new(VM7), 0)?;
        nd.insert(
            NdKey::new(VNI_EMPTY, KNOWN_IPV6.octets()),
            ArpEntry::new(VM2),
            0,
        )?;
        let mut nh: HashMap<_, [u8; 4], NextHop> =
            HashMap::try_from(self.ebpf.map_mut(NEXTHOPS_MAP).context(NEXTHOPS_MAP)?)?;
        for vtep in [REMOTE, REMOTE3] {
            let next_hop = NextHop {
                ifindex: 7,
                mtu: UNDERLAY_MTU,
                smac: UNDERLAY_MAC,
                dmac: NEXT_HOP_MAC,
            };
            nh.insert(vtep.octets(), next_hop, 0)?;
        }
        Ok(())
    }

    /// Packets counted for `outcome` at `hook`, summed over CPUs.
    pub fn counter(&self, hook: Hook, outcome: Outcome) -> Result<u64> {
        let stats: PerCpuArray<_, Counter> =
            PerCpuArray::try_from(self.ebpf.map("NVE_STATS").context("NVE_STATS")?)?;
        Ok(stats
            .get(&outcome.slot(hook), 0)?
            .iter()
            .map(|c| c.packets)
            .sum())
    }

    /// Runs `program` on `frame` `repeat` times: (return value, output frame, ns per run).
    pub fn run(&self, program: Program, frame: &[u8], repeat: u32) -> Result<(u32, Vec<u8>, f64)> {
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        };
        let prog = self.ebpf.program(program.name()).context(program.name())?;
        let r = match program {
            Program::XdpUnderlayRx | Program::XdpPass => {
                let p: &Xdp = prog.try_into()?;
                p.test_run(opts)?
            }
            Program::TcUnderlayRx | Program::TcVmEgress | Program::TcTunnelRx => {
                let p: &SchedClassifier = prog.try_into()?;
                p.test_run(opts)?
            }
        };
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out, r.duration.as_nanos() as f64))
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    XdpUnderlayRx,
    TcUnderlayRx,
    TcVmEgress,
    TcTunnelRx,
    XdpPass,
}

impl Program {
    pub fn name(self) -> &'static str {
        match self {
            Program::XdpUnderlayRx => "xdp_underlay_rx",
            Program::TcUnderlayRx => "tc_underlay_rx",
            Program::TcVmEgress => "tc_vm_egress",
            Program::TcTunnelRx => "tc_tunnel_rx",
            Program::XdpPass => "xdp_pass",
        }
    }

    pub fn hook(self) -> Hook {
        match self {
            Program::TcVmEgress => Hook::VmEgress,
            Program::TcTunnelRx => Hook::TunnelRx,
            _ => Hook::UnderlayRx,
        }
    }

    /// The program's return value for a verdict.
    pub fn code(self, v: Verdict) -> u32 {
        let xdp = matches!(self, Program::XdpUnderlayRx | Program::XdpPass);
        match (v, xdp) {
            (Verdict::Pass, true) => 2,
            (Verdict::Drop, true) => 1,
            (Verdict::Redirect, true) => 4,
            (Verdict::Pass, false) => 0,
            (Verdict::Drop, false) => 2,
            (Verdict::Redirect, false) => 7,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    Redirect,
}

/// What a program must make of the frame.
#[derive(Clone, Debug)]
pub enum Output {
    /// Unchanged.
    Same,
    /// Exactly these bytes.
    Bytes(Vec<u8>),
    /// An encapsulation of `inner` for `vni` to REMOTE; the UDP source port is checked to be
    /// in the RFC 7348 range, every other byte exactly.
    Encap { vni: u32, inner: Vec<u8> },
    /// Not checked (dropped frames).
    Any,
}

/// One row: a named frame through one program, the verdict, output and counter it must give.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub program: Program,
    pub frame: Vec<u8>,
    pub verdict: Verdict,
    pub output: Output,
    pub outcome: Outcome,
}

/// The expected encapsulation of `inner` (source port zero; compare it separately).
pub fn encapsulated(vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut ip = Ipv4::new(VTEP, REMOTE, 17);
    ip.ttl = 64;
    packet::vxlan_frame(NEXT_HOP_MAC, UNDERLAY_MAC, &ip, 0, vni, inner)
}

/// `valid` (VXLAN to this VTEP) with each outer fault the kernel's stack drops before a UDP
/// socket sees it, and the drop reason decapsulation gives it.
fn outer_header_faults(valid: &[u8]) -> Vec<(&'static str, Vec<u8>, DropReason)> {
    const IP: usize = 14;
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut frame = valid.to_vec();
        f(&mut frame);
        frame
    };
    let add16 = |frame: &mut Vec<u8>, at: usize, delta: i32| {
        let v = i32::from(u16::from_be_bytes([frame[at], frame[at + 1]])) + delta;
        frame[at..at + 2].copy_from_slice(&(v as u16).to_be_bytes());
    };
    vec![
        (
            "VXLAN to this VTEP in a frame for another host's MAC",
            edit(&|f| f[..6].copy_from_slice(&NEXT_HOP_MAC)),
            DropReason::OtherHost,
        ),
        (
            "VXLAN with a wrong outer IPv4 header checksum",
            edit(&|f| f[IP + 10] ^= 0x40),
            DropReason::IpCsum,
        ),
        (
            "VXLAN whose outer IPv4 total length is larger than the frame",
            edit(&|f| {
                add16(f, IP + 2, 8);
                packet::refresh_ipv4_checksum(f, IP);
            }),
            DropReason::IpTotLen,
        ),
        (
            "VXLAN whose outer IPv4 total length is shorter than the frame",
            edit(&|f| {
                add16(f, IP + 2, -4);
                packet::refresh_ipv4_checksum(f, IP);
            }),
            DropReason::IpTotLen,
        ),
        (
            "VXLAN whose UDP length disagrees with the IPv4 total length",
            edit(&|f| add16(f, IP + 24, -2)),
            DropReason::UdpLen,
        ),
    ]
}

/// The first `len` bytes of VXLAN frame `frame`, its IPv4 and UDP lengths (where it still
/// has those headers) cut to match.
fn truncated(frame: &[u8], len: usize) -> Vec<u8> {
    const IP: usize = 14;
    let mut f = frame[..len].to_vec();
    if len >= IP + 28 {
        f[IP + 2..IP + 4].copy_from_slice(&((len - IP) as u16).to_be_bytes());
        f[IP + 24..IP + 26].copy_from_slice(&((len - IP - 20) as u16).to_be_bytes());
        packet::refresh_ipv4_checksum(&mut f, IP);
    }
    f
}

/// A VXLAN frame from REMOTE to VTEP.
fn from_remote(ip: &Ipv4, dport: u16, flags: u8, vni: u32, inner: &[u8]) -> Vec<u8> {
    packet::eth(
        UNDERLAY_MAC,
        NEXT_HOP_MAC,
        0x0800,
        &ip.packet(&packet::udp(
            54321,
            dport,
            &packet::vxlan(flags, vni, inner),
        )),
    )
}

pub fn cases() -> Vec<Case> {
    use Verdict::*;
    let ip = Ipv4::new(REMOTE, VTEP, 17);
    let to_vm1 = packet::inner_ping(VM1, VM2, 32);
    let valid = from_remote(&ip, 4789, 0x08, VNI, &to_vm1);
    let fwd = |f| Outcome::Forward(f);
    let drop = |d| Outcome::Drop(d);
    let mut cases = Vec::new();
    let mut decap = |name: &str,
                     frame: Vec<u8>,
                     xdp: (Verdict, Output, Outcome),
                     tc: (Verdict, Output, Outcome)| {
        for (program, (verdict, output, outcome)) in
            [(Program::XdpUnderlayRx, xdp), (Program::TcUnderlayRx, tc)]
        {
            cases.push(Case {
                name: name.into(),
                program,
                frame: frame.clone(),
                verdict,
                output,
                outcome,
            });
        }
    };
    let both = |v: Verdict, o: Output, c: Outcome| ((v, o.clone(), c), (v, o, c));

    let (x, t) = both(
        Redirect,
        Output::Bytes(to_vm1.clone()),
        fwd(Forward::Decapsulated),
    );
    decap("valid VXLAN to a local VM", valid.clone(), x, t);
    for (name, frame, reason) in outer_header_faults(&valid) {
        let (x, t) = both(Drop, Output::Any, drop(reason));
        decap(name, frame, x, t);
    }
    let (x, t) = both(
        Redirect,
        Output::Bytes(to_vm1.clone()),
        fwd(Forward::Decapsulated),
    );
    decap(
        "reserved flag bits set besides I are ignored",
        from_remote(&ip, 4789, 0x0c, VNI, &to_vm1),
        x,
        t,
    );
    let stranger = Ipv4::new(STRANGER, VTEP, 17);
    let (x, t) = both(Drop, Output::Any, drop(DropReason::VtepNotInVn));
    decap(
        "VXLAN from a VTEP the VN does not know",
        from_remote(&stranger, 4789, 0x08, VNI, &to_vm1),
        x,
        t,
    );
    decap(
        "VXLAN from any VTEP to a VN that accepts any",
        from_remote(
            &stranger,
            4789,
            0x08,
            VNI_EMPTY,
            &packet::inner_ping(packet::BROADCAST, VM2, 32),
        ),
        (Pass, Output::Same, fwd(Forward::DeferredToTc)),
        (Drop, Output::Any, drop(DropReason::FloodListEmpty)),
    );
    let (x, t) = both(Pass, Output::Same, fwd(Forward::ToKernelVxlan));
    decap(
        "VXLAN over IPv6 to this VTEP: to the kernel's tunnel device",
        packet::eth(
            UNDERLAY_MAC,
            NEXT_HOP_MAC,
            0x86dd,
            &packet::ipv6(
                REMOTE6,
                VTEP6,
                17,
                &packet::udp(54321, 4789, &packet::vxlan(0x08, VNI, &to_vm1)),
            ),
        ),
        x,
        t,
    );
    let to_vm9 = packet::inner_ping(VM9, VM2, 32);
    let mut sent_on = Ipv4::new(VTEP, REMOTE3, 17);
    sent_on.ttl = 63;
    decap(
        "VXLAN for a MAC that moved away: sent on to its new VTEP",
        from_remote(&ip, 4789, 0x08, VNI, &to_vm9),
        (Pass, Output::Same, fwd(Forward::DeferredToTc)),
        (
            Redirect,
            Output::Bytes(packet::vxlan_frame(
                NEXT_HOP_MAC,
                UNDERLAY_MAC,
                &sent_on,
                54321,
                VNI,
                &to_vm9,
            )),
            fwd(Forward::ForwardedToVtep),
        ),
    );
    let mut last_hop = Ipv4::new(REMOTE, VTEP, 17);
    last_hop.ttl = 1;
    decap(
        "VXLAN for a moved MAC with its TTL run out: not sent on",
        from_remote(&last_hop, 4789, 0x08, VNI, &to_vm9),
        (Pass, Output::Same, fwd(Forward::DeferredToTc)),
        (Drop, Output::Any, drop(DropReason::TtlExceeded)),
    );
    let (x, t) = both(Pass, Output::Same, fwd(Forward::PassedToHost));
    decap(
        "wrong UDP port",
        from_remote(&ip, 4790, 0x08, VNI, &to_vm1),
        x,
        t,
    );
    let (x, t) = both(Pass, Output::Same, fwd(Forward::PassedToHost));
    decap(
        "VXLAN to another address",
        from_remote(
            &Ipv4::new(REMOTE, [10, 0, 0, 9].into(), 17),
            4789,
            0x08,
            VNI,
            &to_vm1,
        ),
        x,
        t,
    );
    let (x, t) = both(Pass, Output::Same, fwd(Forward::PassedToHost));
    decap(
        "ARP on the underlay",
        packet::arp_request(NEXT_HOP_MAC, REMOTE, VTEP),
        x,
        t,
    );
    let (x, t) = both(Pass, Output::Same, fwd(Forward::PassedToHost));
    decap(
        "TCP to the VTEP",
        packet::eth(
            UNDERLAY_MAC,
            NEXT_HOP_MAC,
            0x0800,
            &Ipv4::new(REMOTE, VTEP, 6).packet(&[0; 20]),
        ),
        x,
        t,
    );
    let (x, t) = both(Drop, Output::Any, drop(DropReason::VxlanInvalidHdr));
    decap(
        "I flag clear",
        from_remote(&ip, 4789, 0x00, VNI, &to_vm1),
        x,
        t,
    );
    let (x, t) = both(Drop, Output::Any, drop(DropReason::VniNotFound));
    decap(
        "unknown VNI",
        from_remote(&ip, 4789, 0x08, 999, &to_vm1),
        x,
        t,
    );
    let (x, t) = both(Drop, Output::Any, drop(DropReason::FdbMiss));
    decap(
        "unknown inner destination",
        from_remote(&ip, 4789, 0x08, VNI, &packet::inner_ping(UNKNOWN, VM2, 32)),
        x,
        t,
    );
    let (x, t) = both(Drop, Output::Any, drop(DropReason::UnderlayHairpin));
    decap(
        "VXLAN for a MAC behind another VTEP: not sent back onto the underlay",
        from_remote(&ip, 4789, 0x08, VNI, &packet::inner_ping(VM2, VM1, 32)),
        x,
        t,
    );
    let mut with_options = ip.clone();
    with_options.options = vec![1, 1, 1, 0];
    let (x, t) = both(
        Redirect,
        Output::Bytes(to_vm1.clone()),
        fwd(Forward::Decapsulated),
    );
    decap(
        "outer IPv4 options",
        from_remote(&with_options, 4789, 0x08, VNI, &to_vm1),
        x,
        t,
    );
    decap(
        "VXLAN with outer IPv4 options for a moved MAC: not re-addressed",
        from_remote(&with_options, 4789, 0x08, VNI, &to_vm9),
        (Pass, Output::Same, fwd(Forward::DeferredToTc)),
        (Drop, Output::Any, drop(DropReason::ForwardIpOptions)),
    );
    let mut first_fragment = ip.clone();
    first_fragment.frag = 0x2000;
    let (x, t) = both(Pass, Output::Same, fwd(Forward::PassedFragment));
    decap(
        "outer first fragment (MF)",
        from_remote(&first_fragment, 4789, 0x08, VNI, &to_vm1),
        x,
        t,
    );
    let mut later_fragment = ip.clone();
    later_fragment.frag = 0x0010;
    let (x, t) = both(Pass, Output::Same, fwd(Forward::PassedFragment));
    decap(
        "outer later fragment (offset)",
        from_remote(&later_fragment, 4789, 0x08, VNI, &to_vm1),
        x,
        t,
    );
    decap(
        "inner broadcast in a VN with no local port",
        from_remote(
            &ip,
            4789,
            0x08,
            VNI_EMPTY,
            &packet::arp_request(VM2, [192, 168, 10, 2].into(), [192, 168, 10, 1].into()),
        ),
        (Pass, Output::Same, fwd(Forward::DeferredToTc)),
        (Drop, Output::Any, drop(DropReason::FloodListEmpty)),
    );
    decap(
        "to a VM on a tagged port",
        from_remote(&ip, 4789, 0x08, VNI, &packet::inner_ping(VM4, VM2, 32)),
        (Pass, Output::Same, fwd(Forward::DeferredToTc)),
        // The tag is pushed as skb metadata (offload), not into the bytes.
        (
            Redirect,
            Output::Bytes(packet::inner_ping(VM4, VM2, 32)),
            fwd(Forward::Decapsulated),
        ),
    );
    let (x, t) = both(Drop, Output::Any, drop(DropReason::VnicInactive));
    decap(
        "unknown inner unicast in a VN that floods it",
        from_remote(
            &ip,
            4789,
            0x08,
            VNI_EMPTY,
            &packet::inner_ping(UNKNOWN, VM2, 32),
        ),
        (Pass, Output::Same, fwd(Forward::DeferredToTc)),
        (Drop, Output::Any, drop(DropReason::FloodListEmpty)),
    );
    decap(
        "to a pre-associated vNIC",
        from_remote(&ip, 4789, 0x08, VNI, &packet::inner_ping(VM6, VM2, 32)),
        x,
        t,
    );
    decap(
        "to a VM on a tap port: left to the kernel's collect_md vxlan (GSO)",
        from_remote(&ip, 4789, 0x08, VNI, &packet::inner_ping(VM5, VM2, 32)),
        (Pass, Output::Same, fwd(Forward::DeferredToTc)),
        (Pass, Output::Same, fwd(Forward::ToKernelVxlan)),
    );
    // Truncated at (and one byte short of) every header boundary: Ethernet 14, IPv4 34,
    // UDP 42, VXLAN 50, inner Ethernet 64, with IPv4 and UDP lengths saying so (a cut
    // frame whose headers claim more is IP_TOT_LEN, above). BPF_PROG_TEST_RUN refuses an
    // skb whose IPv4 header is cut (EINVAL), so the TC program sees those lengths only
    // through XDP's rows.
    let mut xdp_only = Vec::new();
    for len in [14, 33, 34, 41, 42, 49, 50, 63, 64, 84] {
        let frame = truncated(&valid, len);
        let (x, t) = match len {
            ..42 => both(Pass, Output::Same, fwd(Forward::PassedToHost)),
            42..50 => both(Drop, Output::Any, drop(DropReason::VxlanInvalidHdr)),
            50..64 => both(Drop, Output::Any, drop(DropReason::InnerTruncated)),
            // A bare inner Ethernet header: XDP delivers it; the skb helper refuses to shrink
            // an IPv4 skb below an IPv4 header.
            64 => (
                (
                    Redirect,
                    Output::Bytes(valid[50..64].to_vec()),
                    fwd(Forward::Decapsulated),
                ),
                (Drop, Output::Any, drop(DropReason::HeaderAdjustFailed)),
            ),
            _ => both(
                Redirect,
                Output::Bytes(valid[50..len].to_vec()),
                fwd(Forward::Decapsulated),
            ),
        };
        if len < 34 {
            xdp_only.push(Case {
                name: format!("truncated to {len} bytes"),
                program: Program::XdpUnderlayRx,
                frame,
                verdict: x.0,
                output: x.1,
                outcome: x.2,
            });
            continue;
        }
        decap(&format!("truncated to {len} bytes"), frame, x, t);
    }

    cases.append(&mut xdp_only);

    let egress = |name: &str, frame: Vec<u8>, verdict, output, outcome| Case {
        name: name.into(),
        program: Program::TcVmEgress,
        frame,
        verdict,
        output,
        outcome,
    };
    let to_vm2 = packet::inner_ping(VM2, VM1, 32);
    cases.push(egress(
        "to a remote VM: encapsulated",
        to_vm2.clone(),
        Redirect,
        Output::Encap {
            vni: VNI,
            inner: to_vm2.clone(),
        },
        fwd(Forward::Encapsulated),
    ));
    let big = packet::inner_ping(VM2, VM1, 1464 - 42);
    cases.push(egress(
        "largest frame the underlay MTU carries",
        big.clone(),
        Redirect,
        Output::Encap {
            vni: VNI,
            inner: big,
        },
        fwd(Forward::Encapsulated),
    ));
    // The underlay's 1500 bytes leave 1450 for the VM's packets.
    let too_big = packet::inner_ping(VM2, VM1, 1465 - 42);
    cases.push(egress(
        "one byte over the underlay MTU, DF: ICMP fragmentation needed",
        too_big.clone(),
        Redirect,
        Output::Bytes(packet::frag_needed(&too_big, 1450)),
        fwd(Forward::IcmpTooBig),
    ));
    let mut no_df = Ipv4::new([192, 168, 10, 1].into(), [192, 168, 10, 2].into(), 1);
    no_df.frag = 0;
    cases.push(egress(
        "one byte over the underlay MTU, no DF: dropped, never fragmented",
        packet::eth(
            VM2,
            VM1,
            0x0800,
            &no_df.packet(&packet::icmp_echo(1, 1, 1465 - 42)),
        ),
        Drop,
        Output::Any,
        drop(DropReason::UnderlayMtuExceeded),
    ));
    let v6 = |len: usize| {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::2".parse().unwrap();
        packet::eth(
            VM2,
            VM1,
            0x86dd,
            &packet::ipv6(src, dst, 17, &packet::udp(1, 2, &vec![0; len])),
        )
    };
    let fits6 = v6(1450 - 48);
    cases.push(egress(
        "IPv6 at the MTU: encapsulated",
        fits6.clone(),
        Redirect,
        Output::Encap {
            vni: VNI,
            inner: fits6,
        },
        fwd(Forward::Encapsulated),
    ));
    let big6 = v6(1451 - 48);
    cases.push(egress(
        "IPv6 one byte over: ICMPv6 packet too big",
        big6.clone(),
        Redirect,
        Output::Bytes(packet::packet_too_big(&big6, 1450)),
        fwd(Forward::IcmpTooBig),
    ));
    let over_vn = Ipv4::new([192, 168, 20, 1].into(), [192, 168, 20, 2].into(), 1)
        .packet(&packet::icmp_echo(1, 1, 1281 - 28));
    cases.push(egress(
        "over the VN's configured MTU (1280): ICMP with that MTU",
        packet::eth_tagged(VM2, VM1, VID, 0x0800, &over_vn),
        Redirect,
        Output::Bytes(packet::frag_needed(
            &packet::eth(VM2, VM1, 0x0800, &over_vn),
            1280,
        )),
        fwd(Forward::IcmpTooBig),
    ));
    let tagged_ip = Ipv4::new([192, 168, 20, 1].into(), [192, 168, 20, 2].into(), 1)
        .packet(&packet::icmp_echo(1, 1, 32));
    cases.push(egress(
        "tagged frame: VID selects the VN, tag not sent",
        packet::eth_tagged(VM2, VM1, VID, 0x0800, &tagged_ip),
        Redirect,
        Output::Encap {
            vni: VNI_TAGGED,
            inner: packet::eth(VM2, VM1, 0x0800, &tagged_ip),
        },
        fwd(Forward::Encapsulated),
    ));
    cases.push(egress(
        "VID bound to no VN",
        packet::eth_tagged(VM2, VM1, 99, 0x0800, &tagged_ip),
        Drop,
        Output::Any,
        drop(DropReason::PortNotInVn),
    ));
    let inner_tagged = packet::eth_tagged(VM2, VM1, 7, 0x0800, &tagged_ip);
    for (name, outer) in [
        ("802.1Q inside the port's tag: stacked", 0x8100),
        ("802.1ad-tagged frame: stacked", 0x88a8),
    ] {
        let mut frame = packet::eth_tagged(VM2, VM1, VID, 0x8100, &inner_tagged[14..]);
        frame[12..14].copy_from_slice(&u16::to_be_bytes(outer));
        cases.push(egress(
            name,
            frame,
            Drop,
            Output::Any,
            drop(DropReason::VlanStacked),
        ));
    }
    cases.push(egress(
        "priority-tagged (VID 0): the untagged VN, tag removed",
        packet::eth_tagged(VM2, VM1, 0, 0x0800, &tagged_ip),
        Redirect,
        Output::Encap {
            vni: VNI,
            inner: packet::eth(VM2, VM1, 0x0800, &tagged_ip),
        },
        fwd(Forward::Encapsulated),
    ));
    cases.push(egress(
        "to a pre-associated vNIC on this host: not switched",
        packet::inner_ping(VM6, VM1, 32),
        Drop,
        Output::Any,
        drop(DropReason::VnicInactive),
    ));
    cases.push(egress(
        "truncated 802.1Q tag",
        packet::eth(VM2, VM1, 0x8100, &[0]),
        Drop,
        Output::Any,
        drop(DropReason::PktTooSmall),
    ));
    let from_vm7 = Ipv4::new([192, 168, 10, 7].into(), [192, 168, 10, 2].into(), 1)
        .packet(&packet::icmp_echo(1, 1, 32));
    cases.push(egress(
        "source MAC of the port: forwarded",
        packet::eth_tagged(VM2, VM7, 50, 0x0800, &from_vm7),
        Redirect,
        Output::Encap {
            vni: VNI,
            inner: packet::eth(VM2, VM7, 0x0800, &from_vm7),
        },
        fwd(Forward::Encapsulated),
    ));
    cases.push(egress(
        "to a MAC on the port it came from: not sent back",
        packet::eth_tagged(VM7, VM7, 50, 0x0800, &from_vm7),
        Drop,
        Output::Any,
        drop(DropReason::Hairpin),
    ));
    cases.push(egress(
        "source MAC of another port: spoofed",
        packet::eth_tagged(VM2, VM1, 50, 0x0800, &from_vm7),
        Drop,
        Output::Any,
        drop(DropReason::SpoofedSrcMac),
    ));
    let from = |src: [u8; 4]| {
        Ipv4::new(src.into(), [192, 168, 10, 2].into(), 1).packet(&packet::icmp_echo(1, 1, 32))
    };
    cases.push(egress(
        "IPv4 source not the vNIC's: spoofed",
        packet::eth_tagged(VM2, VM7, 50, 0x0800, &from([192, 168, 10, 8])),
        Drop,
        Output::Any,
        drop(DropReason::SpoofedSrcIp),
    ));
    cases.push(egress(
        "IPv4 source of a vNIC of another VN: spoofed",
        packet::eth_tagged(VM2, VM7, 50, 0x0800, &from(KNOWN_IP.octets())),
        Drop,
        Output::Any,
        drop(DropReason::SpoofedSrcIp),
    ));
    cases.push(egress(
        "IPv4 source 0.0.0.0 (DHCP): forwarded",
        packet::eth_tagged(VM2, VM7, 50, 0x0800, &from([0; 4])),
        Redirect,
        Output::Encap {
            vni: VNI,
            inner: packet::eth(VM2, VM7, 0x0800, &from([0; 4])),
        },
        fwd(Forward::Encapsulated),
    ));
    cases.push(egress(
        "truncated IPv4 header from a checked vNIC",
        packet::eth_tagged(VM2, VM7, 50, 0x0800, &from(VM7_IP.octets())[..19]),
        Drop,
        Output::Any,
        drop(DropReason::PktTooSmall),
    ));
    // Unicast ARP (to VM2, remote) so that what passes is encapsulated.
    let arp_body = |sender: Ipv4Addr| {
        packet::arp_request(VM7, sender, [192, 168, 10, 2].into())[14..].to_vec()
    };
    let arp_from = |sender| packet::eth_tagged(VM2, VM7, 50, 0x0806, &arp_body(sender));
    cases.push(egress(
        "ARP sender address not the vNIC's: spoofed",
        arp_from([192, 168, 10, 9].into()),
        Drop,
        Output::Any,
        drop(DropReason::SpoofedSrcIp),
    ));
    for (name, sender) in [
        ("ARP from the vNIC's address: forwarded", VM7_IP),
        (
            "ARP probe (sender 0.0.0.0): forwarded",
            Ipv4Addr::UNSPECIFIED,
        ),
    ] {
        cases.push(egress(
            name,
            arp_from(sender),
            Redirect,
            Output::Encap {
                vni: VNI,
                inner: packet::eth(VM2, VM7, 0x0806, &arp_body(sender)),
            },
            fwd(Forward::Encapsulated),
        ));
    }
    let peer6: Ipv6Addr = "2001:db8::2".parse().unwrap();
    let v6 = |src: Ipv6Addr, next: u8, payload: &[u8]| packet::ipv6(src, peer6, next, payload);
    let echo6 = [128, 0, 0, 0, 0, 1, 0, 1];
    for (name, src, outcome) in [
        (
            "IPv6 from the vNIC's address: forwarded",
            VM7_IPV6,
            fwd(Forward::Encapsulated),
        ),
        (
            "IPv6 from a link-local address: forwarded",
            "fe80::7".parse().unwrap(),
            fwd(Forward::Encapsulated),
        ),
        (
            "IPv6 from another address: spoofed",
            "2001:db8::8".parse().unwrap(),
            drop(DropReason::SpoofedSrcIp),
        ),
    ] {
        let ip = v6(src, 58, &echo6);
        let (verdict, output) = if outcome.is_drop() {
            (Drop, Output::Any)
        } else {
            (
                Redirect,
                Output::Encap {
                    vni: VNI,
                    inner: packet::eth(VM2, VM7, 0x86dd, &ip),
                },
            )
        };
        cases.push(egress(
            name,
            packet::eth_tagged(VM2, VM7, 50, 0x86dd, &ip),
            verdict,
            output,
            outcome,
        ));
    }
    let na = |target: Ipv6Addr| {
        let ip = v6(
            "fe80::7".parse().unwrap(),
            58,
            &packet::neighbour_advert(target, VM7),
        );
        packet::eth_tagged(VM2, VM7, 50, 0x86dd, &ip)
    };
    cases.push(egress(
        "neighbour advertisement for another address: spoofed",
        na("2001:db8::9".parse().unwrap()),
        Drop,
        Output::Any,
        drop(DropReason::SpoofedSrcIp),
    ));
    let own_na = na(VM7_IPV6);
    cases.push(egress(
        "neighbour advertisement for the vNIC's address: forwarded",
        own_na.clone(),
        Redirect,
        Output::Encap {
            vni: VNI,
            inner: packet::eth(VM2, VM7, 0x86dd, &own_na[18..]),
        },
        fwd(Forward::Encapsulated),
    ));
    let asker_ip = Ipv4Addr::new(192, 168, 30, 1);
    let request = packet::arp_request(VM1, asker_ip, KNOWN_IP);
    cases.push(egress(
        "ARP request for a known address: answered on the port",
        packet::eth_tagged(packet::BROADCAST, VM1, 30, 0x0806, &request[14..]),
        Redirect,
        Output::Bytes(packet::arp_reply(VM1, asker_ip, VM2, KNOWN_IP)),
        fwd(Forward::ArpReplied),
    ));
    let asker6: Ipv6Addr = "2001:db8:30::1".parse().unwrap();
    let tag30 =
        |frame: Vec<u8>| packet::eth_tagged(frame_dst(&frame), VM1, 30, 0x86dd, &frame[14..]);
    cases.push(egress(
        "neighbour solicitation for a known address: answered on the port",
        tag30(packet::neighbour_solicit(VM1, asker6, KNOWN_IPV6)),
        Redirect,
        Output::Bytes(packet::neighbour_reply(VM1, asker6, VM2, KNOWN_IPV6)),
        fwd(Forward::NdReplied),
    ));
    cases.push(egress(
        "neighbour solicitation for an unknown address: flooded",
        tag30(packet::neighbour_solicit(
            VM1,
            asker6,
            "2001:db8:30::77".parse().unwrap(),
        )),
        Drop,
        Output::Any,
        drop(DropReason::FloodListEmpty),
    ));
    cases.push(egress(
        "duplicate address detection (from ::) is not answered",
        tag30(packet::neighbour_solicit(
            VM1,
            Ipv6Addr::UNSPECIFIED,
            KNOWN_IPV6,
        )),
        Drop,
        Output::Any,
        drop(DropReason::FloodListEmpty),
    ));
    let garp = packet::arp_request(VM1, KNOWN_IP, KNOWN_IP);
    cases.push(egress(
        "gratuitous ARP is an announcement, not answered",
        packet::eth_tagged(packet::BROADCAST, VM1, 30, 0x0806, &garp[14..]),
        Drop,
        Output::Any,
        drop(DropReason::FloodListEmpty),
    ));
    cases.push(egress(
        "unknown unicast in a VN that floods it",
        packet::eth_tagged(UNKNOWN, VM1, 30, 0x0800, &tagged_ip),
        Drop,
        Output::Any,
        drop(DropReason::FloodListEmpty),
    ));
    cases.push(egress(
        "from a port whose vNIC is only pre-associated",
        packet::eth_tagged(VM2, VM1, 40, 0x0800, &tagged_ip),
        Drop,
        Output::Any,
        drop(DropReason::VnicInactive),
    ));
    cases.push(Case {
        name: "a frame without tunnel metadata".into(),
        program: Program::TcTunnelRx,
        frame: to_vm1.clone(),
        verdict: Drop,
        output: Output::Any,
        outcome: drop(DropReason::TunnelKeyMissing),
    });
    cases.push(egress(
        "unknown unicast",
        packet::inner_ping(UNKNOWN, VM1, 32),
        Drop,
        Output::Any,
        drop(DropReason::FdbMiss),
    ));
    cases.push(egress(
        "to a VM behind an IPv6 VTEP: to the kernel's tunnel device",
        packet::inner_ping(VM8, VM1, 32),
        Redirect,
        Output::Same,
        fwd(Forward::Encapsulated),
    ));
    let to_vm3 = packet::inner_ping(VM3, VM1, 32);
    cases.push(egress(
        "to a VM on this host: switched, not encapsulated",
        to_vm3,
        Redirect,
        Output::Same,
        fwd(Forward::LocalSwitched),
    ));
    cases.push(egress(
        "broadcast in a VN with nowhere to flood",
        packet::eth_tagged(
            packet::BROADCAST,
            VM1,
            30,
            0x0806,
            &packet::arp_request(VM1, [192, 168, 30, 1].into(), [192, 168, 30, 2].into())[14..],
        ),
        Drop,
        Output::Any,
        drop(DropReason::FloodListEmpty),
    ));
    cases
}

fn frame_dst(frame: &[u8]) -> [u8; 6] {
    frame[..6].try_into().expect("an Ethernet frame")
}
