//! Two-host overlay rigs: hosts h1 and h2 joined by a veth underlay (10.0.0.1/24,
//! 10.0.0.2/24), one VM on each in VN `blue` (VNI 100, 192.168.10.0/24). Each host runs nve
//! or the kernel's vxlan+bridge.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::rig::{Daemon, Netns, Vm, mac_str, veth};

pub const VNI: u32 = 100;
pub const VN: &str = "blue";
pub const H1_VTEP: &str = "10.0.0.1";
pub const H2_VTEP: &str = "10.0.0.2";
pub const VM1_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
pub const VM2_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];
pub const VM1_IP: &str = "192.168.10.1";
pub const VM2_IP: &str = "192.168.10.2";

/// Hosts, underlay and VMs; VMs are declared first so they go first on drop.
pub struct TwoHosts {
    pub vm1: Vm,
    pub vm2: Vm,
    pub h1: Netns,
    pub h2: Netns,
}

impl TwoHosts {
    pub fn new(tag: &str) -> Result<Self> {
        let h1 = Netns::new(&format!("{tag}-h1"))?;
        let h2 = Netns::new(&format!("{tag}-h2"))?;
        veth(&h1, "ul", &h2, "ul", 1500)?;
        h1.ip(&["addr", "add", &format!("{H1_VTEP}/24"), "dev", "ul"])?;
        h2.ip(&["addr", "add", &format!("{H2_VTEP}/24"), "dev", "ul"])?;
        let vm1 = Vm::new(&format!("{tag}-vm1"), &h1, "vm1p", VM1_MAC, VM1_IP)?;
        let vm2 = Vm::new(&format!("{tag}-vm2"), &h2, "vm2p", VM2_MAC, VM2_IP)?;
        Ok(Self { vm1, vm2, h1, h2 })
    }
}

/// The reference peer: the kernel's vxlan (VNI 100, no learning, static FDB) and a bridge
/// with the VM's port, in `host`.
pub fn kernel_vxlan(
    host: &Netns,
    local: &str,
    remote: &str,
    vm_port: &str,
    remote_macs: &[[u8; 6]],
) -> Result<()> {
    kernel_vxlan_vn(host, VNI, "br0", local, remote, vm_port, remote_macs)
}

/// The kernel's vxlan for `vni` (device `vx<VNI>`, no learning, unknown MACs to `remote`,
/// `remote_macs` there) bridged by `bridge` with `vm_port`, in `host`.
pub fn kernel_vxlan_vn(
    host: &Netns,
    vni: u32,
    bridge: &str,
    local: &str,
    remote: &str,
    vm_port: &str,
    remote_macs: &[[u8; 6]],
) -> Result<()> {
    let vx = format!("vx{vni}");
    kernel_vxlan_bridge(host, vni, bridge, &vx, local, vm_port)?;
    host.exec(&[
        "bridge",
        "fdb",
        "append",
        "00:00:00:00:00:00",
        "dev",
        &vx,
        "dst",
        remote,
    ])?;
    for mac in remote_macs {
        host.exec(&[
            "bridge",
            "fdb",
            "add",
            &mac_str(*mac),
            "dev",
            &vx,
            "dst",
            remote,
        ])?;
    }
    Ok(())
}

/// The kernel's vxlan device `vx` for `vni` (UDP 4789, no learning, source `local`, over
/// `ul`) in a new bridge `bridge` with `vm_port`, all up, in `host`; no FDB entry: whoever
/// runs the VN fills it (a test, or FRR's zebra from EVPN routes).
pub fn kernel_vxlan_bridge(
    host: &Netns,
    vni: u32,
    bridge: &str,
    vx: &str,
    local: &str,
    vm_port: &str,
) -> Result<()> {
    host.ip(&["link", "add", bridge, "type", "bridge"])?;
    host.ip(&[
        "link",
        "add",
        vx,
        "type",
        "vxlan",
        "id",
        &vni.to_string(),
        "local",
        local,
        "dstport",
        "4789",
        "nolearning",
        "dev",
        "ul",
    ])?;
    host.ip(&["link", "set", vx, "master", bridge, "up"])?;
    host.ip(&["link", "set", vm_port, "master", bridge, "up"])?;
    host.ip(&["link", "set", bridge, "up"])?;
    Ok(())
}

/// A host of [`TwoHosts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    H1,
    H2,
}

/// nve on `side`, serving its VM in VN blue, with the other VM's MAC behind the other
/// host's VTEP, which is also the VN's flood list. Waits until the underlay next hop is
/// resolved.
pub fn nve(rig: &TwoHosts, side: Side, tag: &str, extra: &[&str]) -> Result<Daemon> {
    let (host, vtep, port, mac, remote, remote_mac) = match side {
        Side::H1 => (&rig.h1, H1_VTEP, "vm1p", VM1_MAC, H2_VTEP, VM2_MAC),
        Side::H2 => (&rig.h2, H2_VTEP, "vm2p", VM2_MAC, H1_VTEP, VM1_MAC),
    };
    let d = Daemon::start(host, tag, vtep, "ul", extra)?;
    serve_vn(&d, remote, remote_mac)?;
    d.nve(&["port", "attach", VN, port, "--mac", &mac_str(mac)])?;
    Ok(d)
}

/// Creates VN blue on `d` with `remote_mac` behind `remote`, which is also the flood list,
/// and waits until the underlay next hop to `remote` is resolved.
pub fn serve_vn(d: &Daemon, remote: &str, remote_mac: [u8; 6]) -> Result<()> {
    d.nve(&["vn", "add", VN, "--vni", &VNI.to_string()])?;
    d.nve(&["fdb", "add", VN, &mac_str(remote_mac), "--vtep", remote])?;
    d.nve(&["flood", "add", VN, remote])?;
    d.wait_next_hop(remote)
}

/// `nve vn add blue`; without `flood_unknown`, unicast to MACs nve was not told about is
/// dropped (so traffic flows only by what signaling or the NVA installed).
pub fn add_vn(d: &Daemon, flood_unknown: bool) -> Result<String> {
    let vni = VNI.to_string();
    let mut args = vec!["vn", "add", VN, "--vni", &vni];
    if !flood_unknown {
        args.push("--no-flood-unknown");
    }
    d.nve(&args)
}

/// `nve vm associate`: the vNIC `vm` (index 0) joins VN blue on `port` with `mac` (and
/// `ip`, whose sources and ARP the dataplane then checks and answers).
pub fn associate(
    d: &Daemon,
    vm: &str,
    port: &str,
    mac: [u8; 6],
    ip: Option<&str>,
) -> Result<String> {
    signal(d, &["associate"], vm, port, mac, ip)
}

/// The destination's first step of a migration from `from` (a VTEP): vNIC `vm` (vNIC 0)
/// pre-associated in VN `blue` on `port` with `mac` and `ip`, with the migrating-in hint.
pub fn pre_associate_arriving(
    d: &Daemon,
    vm: &str,
    port: &str,
    (mac, ip): ([u8; 6], &str),
    from: &str,
) -> Result<String> {
    let op = ["pre-associate", "--migrating-in", from];
    signal(d, &op, vm, port, mac, Some(ip))
}

/// The source's side of a migration to `to` (a VTEP): vNIC `vm` disassociated, leaving a
/// forwarding pointer.
pub fn leave_for(d: &Daemon, vm: &str, to: &str) -> Result<String> {
    d.nve(&["vm", "disassociate", "--vm", vm, "--migrating-out", to])
}

/// `nve vm OP...` for vNIC `vm` in VN `blue` on `port` with `mac` (and `ip`).
fn signal(
    d: &Daemon,
    op: &[&str],
    vm: &str,
    port: &str,
    mac: [u8; 6],
    ip: Option<&str>,
) -> Result<String> {
    let mac = mac_str(mac);
    let mut args = vec!["vm"];
    args.extend(op);
    args.extend(["--vm", vm, "--vn", VN, "--port", port, "--mac", &mac]);
    if let Some(ip) = ip {
        args.extend(["--ip", ip]);
    }
    d.nve(&args)
}

/// One decoded VXLAN packet of a capture.
#[derive(Clone, Debug)]
pub struct VxlanPacket {
    pub src: String,
    pub dst: String,
    pub sport: u16,
    pub dport: u16,
    pub vni: u32,
    pub flags: u16,
    /// Inner frame's protocols, e.g. "eth:ethertype:ip:icmp:data".
    pub inner: String,
}

/// tshark's `fields` of each packet of `pcap` its display `filter` matches: a line each,
/// the fields split at `|`, several values of one field joined by `,`.
pub fn tshark_fields(pcap: &Path, filter: &str, fields: &[&str]) -> Result<Vec<Vec<String>>> {
    let file = pcap.to_str().context("pcap path")?;
    let mut args = vec!["tshark", "-r", file, "-Y", filter, "-T", "fields"];
    args.extend(["-E", "separator=|", "-E", "aggregator=,"]);
    for f in fields {
        args.extend(["-e", f]);
    }
    let out = crate::rig::run(&args)?;
    Ok(out
        .lines()
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect())
}

/// tcpdump on an interface of a namespace; stopped on drop.
pub struct Capture {
    child: Child,
    pub file: PathBuf,
}

impl Capture {
    /// The first 256 bytes of each packet: headers and VXLAN's inner headers.
    pub fn start(ns: &Netns, iface: &str, filter: &str) -> Result<Self> {
        Self::start_snaplen(ns, iface, filter, 256)
    }

    /// Whole packets (a TCP session's payload, say).
    pub fn start_full(ns: &Netns, iface: &str, filter: &str) -> Result<Self> {
        Self::start_snaplen(ns, iface, filter, 0)
    }

    /// `snaplen` bytes of each packet (0: all of it).
    pub fn start_snaplen(ns: &Netns, iface: &str, filter: &str, snaplen: u32) -> Result<Self> {
        let file = PathBuf::from(format!("/tmp/{}-{iface}.pcap", ns.name));
        let _ = std::fs::remove_file(&file);
        let child = Command::new("ip")
            .args([
                "netns", "exec", &ns.name, "tcpdump", "-i", iface, "-U", "-s",
            ])
            .arg(snaplen.to_string())
            .arg("-w")
            .arg(&file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning tcpdump")?;
        let c = Self { child, file };
        for _ in 0..50 {
            if c.file.exists() {
                thread::sleep(Duration::from_millis(200));
                return Ok(c);
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!("tcpdump did not start")
    }

    fn stop(&mut self) {
        thread::sleep(Duration::from_millis(300));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }

    /// Stops the capture and lists `field` of each packet tshark's `filter` matches.
    pub fn finish_field(mut self, filter: &str, field: &str) -> Result<Vec<String>> {
        self.stop();
        let lines = tshark_fields(&self.file, filter, &[field])?;
        Ok(lines.into_iter().map(|mut f| f.remove(0)).collect())
    }

    /// Stops the capture and copies the pcap to `to` (the capture's own file goes on drop).
    pub fn finish_pcap(mut self, to: &Path) -> Result<()> {
        self.stop();
        std::fs::copy(&self.file, to)
            .with_context(|| format!("copying {} to {}", self.file.display(), to.display()))?;
        Ok(())
    }

    /// Stops the capture and decodes it with tshark.
    pub fn finish(mut self) -> Result<Vec<VxlanPacket>> {
        self.stop();
        let lines = tshark_fields(
            &self.file,
            "vxlan",
            &[
                "ip.src",
                "ip.dst",
                "udp.srcport",
                "udp.dstport",
                "vxlan.vni",
                "vxlan.flags",
                "frame.protocols",
            ],
        )?;
        let mut packets = Vec::new();
        for f in &lines {
            if f.len() < 7 {
                continue;
            }
            let first = |s: &str| s.split(',').next().unwrap_or_default().to_string();
            let flags = f[5].trim_start_matches("0x");
            packets.push(VxlanPacket {
                src: first(&f[0]),
                dst: first(&f[1]),
                sport: first(&f[2]).parse().unwrap_or(0),
                dport: first(&f[3]).parse().unwrap_or(0),
                vni: f[4].parse().unwrap_or(u32::MAX),
                flags: u16::from_str_radix(flags, 16).unwrap_or(0),
                inner: f[6]
                    .split_once("vxlan:")
                    .map(|(_, i)| i.to_string())
                    .unwrap_or_default(),
            });
        }
        Ok(packets)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// A bounded TCP transfer of `bytes` from `client` to an iperf3 server in `server`.
pub fn tcp_transfer(server: &Vm, client: &Vm, port: u16, bytes: &str) -> Result<String> {
    let port_s = port.to_string();
    server
        .ns
        .exec(&["iperf3", "-s", "-1", "-D", "-p", &port_s])?;
    thread::sleep(Duration::from_millis(300));
    client.ns.exec(&[
        "timeout", "30", "iperf3", "-c", &server.ip, "-p", &port_s, "-n", bytes, "-J",
    ])
}
