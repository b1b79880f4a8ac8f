//! Three-host rig: hosts h1, h2 and h3 on one underlay segment (a Linux bridge in a
//! `fabric` namespace, one veth `ul` per host: 10.0.0.1/24, .2, .3, MTU 1500), vm1 on h1
//! and vm3 on h3 in VN `blue` (192.168.10.0/24). h2 starts without a VM: it is where a
//! test puts one (e.g. the destination of a move).
use anyhow::Result;

use crate::{
    etcd::EtcdServer,
    frr::{Frr, FrrConfig, Neighbour},
    overlay::{self, H1_VTEP, H2_VTEP, VM1_IP, VM1_MAC, VN, VNI},
    rig::{Daemon, Netns, Vm, veth},
};

/// The fabric's own address (br0), where a route reflector listens.
pub const FABRIC_IP: &str = "10.0.0.254";

pub const H3_VTEP: &str = "10.0.0.3";
pub const VM3_MAC: [u8; 6] = [2, 0, 0, 0, 3, 1];
pub const VM3_IP: &str = "192.168.10.3";

/// The fabric namespace (a bridge) and hosts h1, h2, h3 on it, each with its underlay
/// address on `ul`.
pub fn underlay(tag: &str) -> Result<(Netns, Netns, Netns, Netns)> {
    let fabric = Netns::new(&format!("{tag}-fab"))?;
    fabric.ip(&["link", "add", "br0", "type", "bridge"])?;
    fabric.ip(&["link", "set", "br0", "up"])?;
    let host = |name: &str, vtep: &str| -> Result<Netns> {
        let h = Netns::new(&format!("{tag}-{name}"))?;
        veth(&fabric, name, &h, "ul", 1500)?;
        fabric.ip(&["link", "set", name, "master", "br0"])?;
        h.ip(&["addr", "add", &format!("{vtep}/24"), "dev", "ul"])?;
        Ok(h)
    };
    let h1 = host("h1", H1_VTEP)?;
    let h2 = host("h2", H2_VTEP)?;
    let h3 = host("h3", H3_VTEP)?;
    Ok((fabric, h1, h2, h3))
}

/// Underlay, hosts and VMs; VMs are declared first so they go first on drop.
pub struct ThreeHosts {
    pub vm1: Vm,
    pub vm3: Vm,
    pub h1: Netns,
    pub h2: Netns,
    pub h3: Netns,
    pub fabric: Netns,
}

impl ThreeHosts {
    pub fn new(tag: &str) -> Result<Self> {
        let (fabric, h1, h2, h3) = underlay(tag)?;
        // IPv4 only: the tests count what the NVEs flood, and the VMs' own IPv6 chatter
        // would be some of it.
        let vm1 = Vm::new(&format!("{tag}-vm1"), &h1, "vm1p", VM1_MAC, VM1_IP)?.without_ipv6()?;
        let vm3 = Vm::new(&format!("{tag}-vm3"), &h3, "vm3p", VM3_MAC, VM3_IP)?.without_ipv6()?;
        Ok(Self {
            vm1,
            vm3,
            h1,
            h2,
            h3,
            fabric,
        })
    }
}

/// The NVA a [`MigrationRig`]'s NVEs share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nva {
    /// A real etcd in h3.
    Etcd,
    /// BGP EVPN through FRR as route reflector in the fabric namespace (10.0.0.254).
    Evpn,
}

/// A VM about to migrate h1 -> h2, three NVEs sharing an NVA: VN blue on each, the VM
/// (vm1's MAC and IP, vNIC `vmx`) associated on h1, vm3 (vNIC `vm3`) on h3 and reaching
/// it, the VM's next incarnation ready on h2 (port `vmxp`, link down). Fields drop in
/// order: daemons and VMs before the NVA and the namespaces.
pub struct MigrationRig {
    /// The migrating VM's UUID.
    pub vmx: String,
    pub d1: Daemon,
    pub d2: Daemon,
    pub d3: Daemon,
    pub new: Vm,
    pub etcd: Option<EtcdServer>,
    pub frr: Option<Frr>,
    /// The NVEs' config file (EVPN).
    config: Option<std::path::PathBuf>,
    pub rig: ThreeHosts,
}

impl Drop for MigrationRig {
    fn drop(&mut self) {
        if let Some(c) = &self.config {
            let _ = std::fs::remove_file(c);
        }
    }
}

/// FRR in the fabric namespace reflecting EVPN routes among h1, h2 and h3; the NVEs'
/// config file naming it.
fn route_reflector(rig: &ThreeHosts) -> Result<(Frr, std::path::PathBuf)> {
    rig.fabric
        .ip(&["addr", "add", &format!("{FABRIC_IP}/24"), "dev", "br0"])?;
    let mut cfg = FrrConfig::new(crate::evpn_rig::ASN, FABRIC_IP.parse()?);
    for h in [H1_VTEP, H2_VTEP, H3_VTEP] {
        let mut n = Neighbour::new(h.parse()?, crate::evpn_rig::ASN);
        n.route_reflector_client = true;
        cfg = cfg.neighbour(n);
    }
    let frr = Frr::new(&rig.fabric, cfg)?;
    let config = std::path::PathBuf::from(format!("/tmp/{}-nve.json", rig.fabric.name));
    let bgp = serde_json::json!({"bgp": {
        "asn": crate::evpn_rig::ASN,
        "neighbors": [{"address": FABRIC_IP, "remote_as": crate::evpn_rig::ASN}],
    }});
    std::fs::write(&config, bgp.to_string())?;
    Ok((frr, config))
}

impl MigrationRig {
    pub fn new(tag: &str, vmx: &str, vm3: &str) -> Result<Self> {
        Self::on(Nva::Etcd, tag, vmx, vm3)
    }

    pub fn on(nva: Nva, tag: &str, vmx: &str, vm3: &str) -> Result<Self> {
        let rig = ThreeHosts::new(tag)?;
        let (etcd, frr, config) = match nva {
            Nva::Etcd => (Some(EtcdServer::start(&rig.h3, H3_VTEP)?), None, None),
            Nva::Evpn => {
                let (frr, config) = route_reflector(&rig)?;
                (None, Some(frr), Some(config))
            }
        };
        let args: Vec<String> = match (&etcd, &config) {
            (Some(e), _) => vec!["--nva".into(), e.url.clone()],
            (None, Some(c)) => vec![
                "--nva".into(),
                "bgp".into(),
                "--config".into(),
                c.display().to_string(),
            ],
            (None, None) => Vec::new(),
        };
        let nva: Vec<&str> = args.iter().map(String::as_str).collect();
        let d1 = Daemon::start(&rig.h1, &format!("{tag}1"), H1_VTEP, "ul", &nva)?;
        let d2 = Daemon::start(&rig.h2, &format!("{tag}2"), H2_VTEP, "ul", &nva)?;
        let d3 = Daemon::start(&rig.h3, &format!("{tag}3"), H3_VTEP, "ul", &nva)?;
        if let Some(frr) = &frr {
            for h in [H1_VTEP, H2_VTEP, H3_VTEP] {
                frr.wait_established(
                    h.parse::<std::net::Ipv4Addr>()?,
                    std::time::Duration::from_secs(20),
                )?;
            }
        }
        for d in [&d1, &d2, &d3] {
            d.nve(&["vn", "add", VN, "--vni", &VNI.to_string()])?;
        }
        overlay::associate(&d1, vmx, "vm1p", VM1_MAC, Some(VM1_IP))?;
        overlay::associate(&d3, vm3, "vm3p", VM3_MAC, Some(VM3_IP))?;
        rig.vm3.ping_until_reachable(VM1_IP, 20)?;
        let new =
            Vm::new(&format!("{tag}-new"), &rig.h2, "vmxp", VM1_MAC, VM1_IP)?.without_ipv6()?;
        new.ns.ip(&["link", "set", "eth0", "down"])?;
        Ok(Self {
            vmx: vmx.to_string(),
            d1,
            d2,
            d3,
            new,
            etcd,
            frr,
            config,
            rig,
        })
    }
}

impl MigrationRig {
    /// The destination's first step: the VM's new incarnation pre-associated on h2
    /// (installed, not forwarding, nothing of it published).
    pub fn pre_associate_on_h2(&self) -> Result<String> {
        overlay::pre_associate_arriving(&self.d2, &self.vmx, "vmxp", (VM1_MAC, VM1_IP), H1_VTEP)
    }
}
