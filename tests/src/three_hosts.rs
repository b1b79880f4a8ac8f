//! Three-host rig: hosts h1, h2 and h3 on one underlay segment (a Linux bridge in a
//! `fabric` namespace, one veth `ul` per host: 10.0.0.1/24, .2, .3, MTU 1500), vm1 on h1
//! and vm3 on h3 in VN `blue` (192.168.10.0/24). h2 starts without a VM: it is where a
//! test puts one (e.g. the destination of a move).
use anyhow::Result;

use crate::{
    overlay::{H1_VTEP, H2_VTEP, VM1_IP, VM1_MAC},
    rig::{Netns, Vm, veth},
};

pub const H3_VTEP: &str = "10.0.0.3";
pub const VM3_MAC: [u8; 6] = [2, 0, 0, 0, 3, 1];
pub const VM3_IP: &str = "192.168.10.3";

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
        let vm1 = Vm::new(&format!("{tag}-vm1"), &h1, "vm1p", VM1_MAC, VM1_IP)?;
        let vm3 = Vm::new(&format!("{tag}-vm3"), &h3, "vm3p", VM3_MAC, VM3_IP)?;
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
