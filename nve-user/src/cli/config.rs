//! `nve vn|port|fdb|flood ...`: what is configured without signaling.
use clap::Subcommand;

use super::{JsonFlag, print, tables};
use crate::{
    api::{AttachPort, CreateVn, FdbView, FloodVtep, RemoteMac, VnView},
    client::Client,
    mac::MacAddr,
};

#[derive(Debug, Subcommand)]
pub enum VnCommand {
    /// The VNs: VNI, MTU, ports, remote MACs and flood lists.
    List(JsonFlag),
    /// Create a VN.
    Add {
        /// The VN's name (what ports, vNICs and the hook refer to).
        name: String,
        /// Its VXLAN network identifier (1 to 16777215).
        #[arg(long)]
        vni: u32,
        /// Drop unicast to unknown MACs instead of flooding it.
        #[arg(long)]
        no_flood_unknown: bool,
        /// Accept the VN's VXLAN from any VTEP, not only from its flood list and the VTEPs
        /// of its remote MACs.
        #[arg(long)]
        any_vtep: bool,
        /// The VMs' MTU if lower than the underlay allows (its MTU less 50).
        #[arg(long)]
        mtu: Option<u32>,
    },
    /// Delete a VN, with its ports, remote MACs and flood list.
    Del {
        /// The VN's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PortCommand {
    /// Bind a VM port (and VID) to a VN, with the VM's MACs behind it.
    Attach {
        /// The VN.
        vn: String,
        /// The host-side interface (tap or veth); may appear later.
        port: String,
        /// The VLAN ID the VN's frames carry on the port (0: untagged).
        #[arg(long, default_value_t = 0)]
        vid: u16,
        /// A MAC of the VM behind it (repeatable): only frames from these MACs are
        /// forwarded, and the FDB sends frames to them here. None: the port learns.
        #[arg(long = "mac")]
        macs: Vec<MacAddr>,
    },
    /// Unbind a VM port (and VID) from a VN.
    Detach {
        /// The VN.
        vn: String,
        /// The host-side interface.
        port: String,
        /// The VLAN ID it was attached with (0: untagged).
        #[arg(long, default_value_t = 0)]
        vid: u16,
    },
}

#[derive(Debug, Subcommand)]
pub enum FdbCommand {
    /// A static remote MAC: frames to it go to VTEP.
    Add {
        /// The VN.
        vn: String,
        /// The remote VM's MAC.
        mac: MacAddr,
        /// The VTEP it is behind: IPv4 or IPv6.
        #[arg(long)]
        vtep: std::net::IpAddr,
        /// An IPv4 or IPv6 address of the MAC, answered for by ARP/ND suppression
        /// (repeatable).
        #[arg(long = "ip")]
        ips: Vec<std::net::IpAddr>,
    },
    /// Remove a static remote MAC.
    Del {
        /// The VN.
        vn: String,
        /// The remote VM's MAC.
        mac: MacAddr,
    },
}

#[derive(Debug, Subcommand)]
pub enum FloodCommand {
    /// Send the VN's broadcast, multicast and unknown unicast to VTEP too.
    Add {
        /// The VN.
        vn: String,
        /// A remote VTEP (IPv4 or IPv6).
        vtep: std::net::IpAddr,
    },
    /// Stop flooding the VN's traffic to VTEP.
    Del {
        /// The VN.
        vn: String,
        /// A remote VTEP (IPv4 or IPv6).
        vtep: std::net::IpAddr,
    },
}

pub async fn vn(c: &Client, command: VnCommand) -> anyhow::Result<()> {
    match command {
        VnCommand::List(j) => {
            let vns: Vec<VnView> = c.get("/v1/vns").await?;
            print(&vns, j.json, tables::vn)
        }
        VnCommand::Add {
            name,
            vni,
            no_flood_unknown,
            any_vtep,
            mtu,
        } => {
            let req = CreateVn {
                flood_unknown: !no_flood_unknown,
                any_vtep,
                mtu,
                ..CreateVn::new(name, vni)
            };
            Ok(c.post("/v1/vns", &req).await?)
        }
        VnCommand::Del { name } => Ok(c.delete(&format!("/v1/vns/{name}")).await?),
    }
}

pub async fn port(c: &Client, command: PortCommand) -> anyhow::Result<()> {
    match command {
        PortCommand::Attach {
            vn,
            port,
            vid,
            macs,
        } => Ok(c
            .put(
                &format!("/v1/vns/{vn}/ports"),
                &AttachPort { port, vid, macs },
            )
            .await?),
        PortCommand::Detach { vn, port, vid } => Ok(c
            .delete(&format!("/v1/vns/{vn}/ports/{port}?vid={vid}"))
            .await?),
    }
}

pub async fn fdb(
    c: &Client,
    command: Option<FdbCommand>,
    mac: Option<MacAddr>,
    json: JsonFlag,
) -> anyhow::Result<()> {
    match command {
        None => {
            let path = match mac {
                Some(mac) => format!("/v1/fdb?mac={mac}"),
                None => "/v1/fdb".to_string(),
            };
            let fdb: Vec<FdbView> = c.get(&path).await?;
            print(&fdb, json.json, tables::fdb)
        }
        Some(FdbCommand::Add { vn, mac, vtep, ips }) => Ok(c
            .put(&format!("/v1/vns/{vn}/fdb"), &RemoteMac { mac, vtep, ips })
            .await?),
        Some(FdbCommand::Del { vn, mac }) => {
            Ok(c.delete(&format!("/v1/vns/{vn}/fdb/{mac}")).await?)
        }
    }
}

pub async fn flood(c: &Client, command: FloodCommand) -> anyhow::Result<()> {
    match command {
        FloodCommand::Add { vn, vtep } => Ok(c
            .put(&format!("/v1/vns/{vn}/flood"), &FloodVtep { vtep })
            .await?),
        FloodCommand::Del { vn, vtep } => {
            Ok(c.delete(&format!("/v1/vns/{vn}/flood/{vtep}")).await?)
        }
    }
}
