//! BPF_PROG_TEST_RUN of the real programs with their real maps: a loaded instance with a
//! fixed configuration, and the table of cases the tests assert and the bench replays, one
//! file of rows per program (`underlay_rx`: XDP and TC alike, `vm_egress`, `tunnel_rx`).
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
        PORT_F_CHECK_IPV4, PORT_F_CHECK_IPV6, PORT_F_TAP, PORT_RECEIVES, PORTS_MAP, PortKey,
        PortValue, VN_F_ANY_VTEP, VN_F_NO_UNKNOWN_FLOOD, VN_F_VTEPS_INLINE, VN_VTEPS_MAP, VNS_MAP,
        VnInfo, VnVtepKey, vtep_v4,
    },
    metrics::{Counter, DropReason, Forward, Hook, Outcome},
};

use crate::packet::{self, Ipv4};

pub mod profile;
mod tunnel_rx;
mod underlay_rx;
mod vm_egress;

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
pub const VM10_PORT: u32 = 47;
pub const VM1: [u8; 6] = [2, 0, 0, 0, 1, 1];
pub const VM2: [u8; 6] = [2, 0, 0, 0, 2, 1];
pub const VM3: [u8; 6] = [2, 0, 0, 0, 3, 1];
pub const VM4: [u8; 6] = [2, 0, 0, 0, 4, 1];
/// Behind a tap port.
pub const VM5: [u8; 6] = [2, 0, 0, 0, 5, 1];
/// A pre-associated vNIC: installed, not forwarding.
pub const VM6: [u8; 6] = [2, 0, 0, 0, 6, 1];
/// A vNIC pre-associated as migrating in: receives (its tap queues for the VM), does not
/// send yet.
pub const VM10: [u8; 6] = [2, 0, 0, 0, 10, 1];
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

/// The counter slot of a VN of the cases, as the daemon would give one.
fn vn_counters(vni: u32) -> u16 {
    (vni / 100) as u16
}

/// The counter slot of a port of the cases.
fn port_counters(ifindex: u32) -> u16 {
    ifindex as u16
}

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

    /// Fills every map with the configuration the cases assume.
    fn configure(&mut self) -> Result<()> {
        self.configure_settings()?;
        self.configure_ports()?;
        self.configure_vns()?;
        self.configure_fdb()?;
        self.configure_addresses()?;
        self.configure_next_hops()?;
        Ok(())
    }

    /// The instance's settings.
    fn configure_settings(&mut self) -> Result<()> {
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
                monitor: 0,
                monitor_sample: 0,
            },
            0,
        )?;
        Ok(())
    }

    /// The VM ports (VIDs) and their VNs, with counter slots as the daemon gives them.
    fn configure_ports(&mut self) -> Result<()> {
        let mut ports: HashMap<_, PortKey, PortValue> =
            HashMap::try_from(self.ebpf.map_mut(PORTS_MAP).context(PORTS_MAP)?)?;
        let active = PORT_ACTIVE | PORT_RECEIVES;
        // The VMs' ports decapsulation delivers to; VM6's vNIC is only pre-associated, and so
        // is the test port's VID 40. VM10's and the test port's VID 60 are pre-associated as
        // migrating in: they receive, and do not send. VID 50 of the test port checks source
        // MACs: only VM7 is behind it.
        let rows = [
            (TEST_IFINDEX, 0, VNI, active),
            (VM1_PORT, 0, VNI, active),
            (VM3_PORT, 0, VNI, active),
            (VM4_PORT, VID, VNI, active),
            (VM5_PORT, 0, VNI, active),
            (VM6_PORT, 0, VNI, 0),
            (VM10_PORT, 0, VNI, PORT_RECEIVES),
            (TEST_IFINDEX, 60, VNI, PORT_RECEIVES),
            (TEST_IFINDEX, 50, VNI, active | PORT_CHECK_SRC_MAC),
            (TEST_IFINDEX, 40, VNI, 0),
            (TEST_IFINDEX, VID, VNI_TAGGED, active),
            (TEST_IFINDEX, 30, VNI_EMPTY, active),
        ];
        for (ifindex, vid, vni, flags) in rows {
            let value = PortValue {
                vni,
                flags,
                counters: port_counters(ifindex),
                vn_counters: vn_counters(vni),
            };
            ports.insert(PortKey::new(ifindex, vid), value, 0)?;
        }
        Ok(())
    }

    /// The VNs, and the VTEPs they decapsulate from.
    fn configure_vns(&mut self) -> Result<()> {
        let mut vns: HashMap<_, u32, VnInfo> =
            HashMap::try_from(self.ebpf.map_mut(VNS_MAP).context(VNS_MAP)?)?;
        // VNI: every MAC known, unknown unicast dropped. VNI_EMPTY floods it (to nowhere).
        // VNI lists its VTEPs inline, as the daemon does for few; VNI_TAGGED leaves them
        // to VN_VTEPS_MAP.
        let mut vn = VnInfo {
            flags: VN_F_NO_UNKNOWN_FLOOD | VN_F_VTEPS_INLINE,
            counters: vn_counters(VNI),
            vtep_count: 2,
            ..VnInfo::default()
        };
        vn.vteps[0] = u32::from_ne_bytes(REMOTE.octets());
        vn.vteps[1] = u32::from_ne_bytes(REMOTE3.octets());
        vn.ports[0] = LocalPort::new(VM1_PORT, 0);
        vn.port_counters[0] = port_counters(VM1_PORT);
        vn.port_count = 1;
        vns.insert(VNI, vn, 0)?;
        // VNI_TAGGED's VMs have a configured MTU below the underlay's.
        vns.insert(
            VNI_TAGGED,
            VnInfo {
                mtu: VN_MTU,
                counters: vn_counters(VNI_TAGGED),
                ..VnInfo::default()
            },
            0,
        )?;
        // VNI_EMPTY decapsulates from any VTEP; the others only from REMOTE.
        vns.insert(
            VNI_EMPTY,
            VnInfo {
                flags: VN_F_ANY_VTEP,
                counters: vn_counters(VNI_EMPTY),
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
        Ok(())
    }

    /// Where the VNs' MACs are.
    fn configure_fdb(&mut self) -> Result<()> {
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
            FdbKey::new(VNI, VM10),
            FdbEntry::local(LocalPort::new(VM10_PORT, 0)),
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
        Ok(())
    }

    /// The vNICs' addresses (ARP and ND suppression, source checks).
    fn configure_addresses(&mut self) -> Result<()> {
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
        Ok(())
    }

    /// The next hops of the remote VTEPs over IPv4.
    fn configure_next_hops(&mut self) -> Result<()> {
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

/// What one program must do with a case's frame: verdict, output, counter.
pub type Expect = (Verdict, Output, Outcome);

/// Dropped, counted for `reason`.
fn dropped(reason: DropReason) -> Expect {
    (Verdict::Drop, Output::Any, reason.into())
}

/// Passed on unchanged (to the host or the next program), counted as `forward`.
fn passed(forward: Forward) -> Expect {
    (Verdict::Pass, Output::Same, forward.into())
}

/// Redirected as `output`, counted as `forward`.
fn redirected(output: Output, forward: Forward) -> Expect {
    (Verdict::Redirect, output, forward.into())
}

impl Case {
    fn new(
        program: Program,
        name: &str,
        frame: Vec<u8>,
        (verdict, output, outcome): Expect,
    ) -> Self {
        Self {
            name: name.into(),
            program,
            frame,
            verdict,
            output,
            outcome,
        }
    }
}

/// Every row of the table.
pub fn cases() -> Vec<Case> {
    [underlay_rx::cases(), vm_egress::cases(), tunnel_rx::cases()].concat()
}
