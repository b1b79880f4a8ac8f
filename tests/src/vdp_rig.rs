//! The VDP rig: lldpad as the station in namespace `st` on one end of a veth, nve's trunk
//! port `trunk0` on the other (no bridge between: bridges do not forward 01:80:c2:00:00:00),
//! in host h1. Behind the underlay, h2 runs the kernel's vxlan+bridge for two VNs: blue
//! (VNI 100, vm2) and red (VNI 200, vm3). The station's vNICs have no devices of their own
//! (no 8021q here): their frames are crafted on `vst0`, tagged with the VID nve returned.
use std::{net::Ipv4Addr, os::fd::AsRawFd, thread, time::Duration};

use anyhow::{Result, bail};
use nve_user::api::VdpPortView;

use crate::{
    lldpad::{self, Station, Vsi},
    overlay::{self, Capture, H1_VTEP, H2_VTEP, VM2_IP, VM2_MAC},
    packet::{self, Ipv4},
    rig::{Daemon, Netns, Vm, mac_str, packet_socket, send_frames, veth},
};

pub const RED: &str = "red";
pub const RED_VNI: u32 = 200;
pub const VM3_MAC: [u8; 6] = [2, 0, 0, 0, 3, 1];
pub const VM3_IP: &str = "192.168.20.3";
/// The station's own MAC (its LLDP and ECP come from it).
pub const STATION_MAC: [u8; 6] = [2, 0, 0, 0, 0xee, 1];
pub const TRUNK: &str = "trunk0";
pub const STATION_IF: &str = "vst0";

/// Declared in drop order: lldpad, nve, the VMs, the namespaces.
pub struct VdpRig {
    pub station: Station,
    pub nve: Daemon,
    pub vm2: Vm,
    pub vm3: Vm,
    pub st: Netns,
    pub h1: Netns,
    pub h2: Netns,
}

/// A VSI of the rig: `n` names its UUID and MAC; `vni` its VN by GroupID.
pub fn vsi(n: u8, vni: u32) -> Vsi {
    Vsi {
        group: Some(vni),
        ..Vsi::new(
            &format!("6f1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a{n:02x}"),
            [2, 0, 0, 0, 0x10, n],
        )
    }
}

impl VdpRig {
    /// The rig with nve's timers `nve_timers` (`nve vdp enable` flags) and lldpad's
    /// `station` config; returns once lldpad heard nve's EVB TLV with BGID.
    pub fn new(tag: &str, nve_timers: &[&str], station: lldpad::Config) -> Result<Self> {
        let h1 = Netns::new(&format!("{tag}-h1"))?;
        let h2 = Netns::new(&format!("{tag}-h2"))?;
        veth(&h1, "ul", &h2, "ul", 1500)?;
        h1.ip(&["addr", "add", &format!("{H1_VTEP}/24"), "dev", "ul"])?;
        h2.ip(&["addr", "add", &format!("{H2_VTEP}/24"), "dev", "ul"])?;
        let vm2 = Vm::new(&format!("{tag}-vm2"), &h2, "vm2p", VM2_MAC, VM2_IP)?;
        let vm3 = Vm::new(&format!("{tag}-vm3"), &h2, "vm3p", VM3_MAC, VM3_IP)?;
        overlay::kernel_vxlan(&h2, H2_VTEP, H1_VTEP, "vm2p", &[])?;
        overlay::kernel_vxlan_vn(&h2, RED_VNI, "br1", H2_VTEP, H1_VTEP, "vm3p", &[])?;
        let st = Netns::new(&format!("{tag}-st"))?;
        veth(&h1, TRUNK, &st, STATION_IF, 1500)?;
        st.ip(&["link", "set", STATION_IF, "address", &mac_str(STATION_MAC)])?;
        let nve = Daemon::start(&h1, tag, H1_VTEP, "ul", &[])?;
        overlay::serve_vn(&nve, H2_VTEP, VM2_MAC)?;
        nve.nve(&["vn", "add", RED, "--vni", &RED_VNI.to_string()])?;
        nve.nve(&["fdb", "add", RED, &mac_str(VM3_MAC), "--vtep", H2_VTEP])?;
        nve.nve(&["flood", "add", RED, H2_VTEP])?;
        let mut enable = vec!["vdp", "enable", TRUNK];
        enable.extend_from_slice(nve_timers);
        nve.nve(&enable)?;
        let station = Station::new(&st, STATION_IF, station)?;
        let evb = station.wait_neighbor_evb(Duration::from_secs(15))?;
        if !evb.bgid() {
            bail!("lldpad heard nve's EVB TLV without BGID: {evb}");
        }
        Ok(Self {
            station,
            nve,
            vm2,
            vm3,
            st,
            h1,
            h2,
        })
    }

    /// `nve vdp status --json` for the trunk port.
    pub fn status(&self) -> Result<VdpPortView> {
        let ports: Vec<VdpPortView> =
            serde_json::from_str(&self.nve.nve(&["vdp", "status", "--json"])?)?;
        ports
            .into_iter()
            .find(|p| p.port == TRUNK)
            .ok_or_else(|| anyhow::anyhow!("no VDP port {TRUNK}"))
    }

    /// Pings `to` from the station's vNIC `mac`/`ip` with frames tagged `vid`: the VLAN
    /// IDs of the echo replies that came back on the trunk (empty: none did).
    pub fn ping(&self, mac: [u8; 6], ip: Ipv4Addr, vid: u16, to: &Vm) -> Result<Vec<u16>> {
        to.ns.ip(&[
            "neigh",
            "replace",
            &ip.to_string(),
            "lladdr",
            &mac_str(mac),
            "dev",
            "eth0",
        ])?;
        let capture = Capture::start(&self.st, STATION_IF, "icmp or (vlan and icmp)")?;
        let dst: Ipv4Addr = to.ip.parse()?;
        let frames: Vec<Vec<u8>> = (1..=3)
            .map(|seq| {
                let echo = Ipv4::new(ip, dst, 1).packet(&packet::icmp_echo(7, seq, 32));
                packet::eth_tagged(to.mac, mac, vid, 0x0800, &echo)
            })
            .collect();
        send_frames(&self.st, STATION_IF, &frames)?;
        thread::sleep(Duration::from_millis(500));
        let vids = capture.finish_field("icmp.type == 0", "vlan.id")?;
        Ok(vids.iter().map(|v| v.parse().unwrap_or(0)).collect())
    }

    /// A tap on the ECP frames nve sends the station (what lldpad receives too).
    pub fn ecp_tap(&self) -> Result<EcpTap> {
        Ok(EcpTap(packet_socket(
            &self.st,
            STATION_IF,
            nve_user::vdp::ETH_P_ECP,
        )?))
    }
}

pub struct EcpTap(std::os::fd::OwnedFd);

impl EcpTap {
    /// The frames heard since the tap opened (or the last call).
    pub fn frames(&self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut buf = [0u8; 2048];
        loop {
            // SAFETY: recv into a buffer we own, without blocking, on our socket.
            let n = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                return frames;
            }
            frames.push(buf[..n as usize].to_vec());
        }
    }
}
