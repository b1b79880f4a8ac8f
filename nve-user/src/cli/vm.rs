//! `nve vm ...` (a vNIC's signaling) and `nve hook qemu ...` (libvirt's hook).
use std::net::Ipv4Addr;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::{JsonFlag, print, tables};
use crate::{
    api::{Migration, SignalReply, VidRequest, VidWord, VnicRequest, VnicView},
    client::Client,
    libvirt,
    mac::MacAddr,
    vnic::Op,
};

#[derive(Debug, Args)]
pub struct VnicArgs {
    /// VM UUID.
    #[arg(long)]
    pub vm: String,
    /// vNIC index within the VM.
    #[arg(long, default_value_t = 0)]
    pub vnic: u32,
    /// The server's request sequence for this vNIC (higher: an update).
    #[arg(long, default_value_t = 0)]
    pub request_id: u64,
}

/// The parameters of (pre-)association.
#[derive(Debug, Args)]
pub struct AssocArgs {
    #[command(flatten)]
    pub id: VnicArgs,
    /// VN name.
    #[arg(long)]
    pub vn: String,
    /// Host-side interface of the vNIC (tap or veth); may appear later.
    #[arg(long)]
    pub port: String,
    /// The vNIC's MAC (repeatable): the only source MACs it may send from.
    #[arg(long = "mac", required = true)]
    pub macs: Vec<MacAddr>,
    /// An IPv4 or IPv6 address of the vNIC (repeatable): the only sources it may send
    /// from, answered for by ARP/ND suppression and published on the NVA.
    #[arg(long = "ip")]
    pub ips: Vec<std::net::IpAddr>,
    /// Local VID on the port: a number, "untagged" (default) or "assign".
    #[arg(long, default_value = "untagged")]
    pub vid: String,
    /// The VM is migrating in from this VTEP.
    #[arg(long, conflicts_with = "migrating_out")]
    pub migrating_in: Option<Ipv4Addr>,
    /// The VM is migrating out to this VTEP.
    #[arg(long)]
    pub migrating_out: Option<Ipv4Addr>,
    /// Soft state: removed unless refreshed (`nve vm keep-alive`) within this many seconds.
    #[arg(long)]
    pub hold_time: Option<u64>,
}

/// Disassociation, and where the VM went if it migrated.
#[derive(Debug, Args)]
pub struct DisassocArgs {
    #[command(flatten)]
    pub id: VnicArgs,
    /// The VM migrated to this VTEP: VXLAN that still arrives for its MACs is sent on
    /// there for the hold time (a forwarding pointer). 0.0.0.0: where it was paused
    /// toward, or where the NVA says it is expected. Without it, a vNIC paused toward a
    /// destination points there, and one pre-associated migrating in that never ran here
    /// (an aborted migration) points back to where it came from.
    #[arg(long)]
    pub migrating_out: Option<Ipv4Addr>,
    /// With --migrating-out: seconds the forwarding pointer lasts (default 60).
    #[arg(long, requires = "migrating_out")]
    pub hold_time: Option<u64>,
}

/// A pause, and where the VM is going if a migration stopped it.
#[derive(Debug, Args)]
pub struct PauseArgs {
    #[command(flatten)]
    pub id: VnicArgs,
    /// The VM stopped to migrate to this VTEP: from now on frames for its MACs are sent
    /// there (a forwarding pointer) instead of into its stopped port; `resume` undoes it.
    /// 0.0.0.0: to the NVE that pre-associated it migrating in, as the NVA says (etcd).
    #[arg(long)]
    pub migrating_out: Option<Ipv4Addr>,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Install everything for the vNIC, not forwarding yet (e.g. migration destination).
    PreAssociate(AssocArgs),
    /// Make the vNIC forward.
    Associate(AssocArgs),
    /// Remove the vNIC (VM stopped, or migrated away).
    Disassociate(DisassocArgs),
    /// Keep the association, stop forwarding (with --migrating-out, send its frames on).
    Pause(PauseArgs),
    /// Forward again after a pause.
    Resume(VnicArgs),
    /// Refresh a soft association's hold time.
    KeepAlive(VnicArgs),
    /// The vNICs and their states.
    List(JsonFlag),
}

pub async fn hook(
    c: &Client,
    driver: &str,
    domain: &str,
    op: &str,
    sub: &str,
) -> anyhow::Result<()> {
    use std::io::Read as _;
    let Some((vnic_op, migration)) = libvirt::operation(op, sub).filter(|_| driver == "qemu")
    else {
        return Ok(());
    };
    let mut xml = String::new();
    std::io::stdin()
        .read_to_string(&mut xml)
        .context("reading the domain XML")?;
    let (uuid, ifaces) = libvirt::parse_domain(&xml).with_context(|| format!("domain {domain}"))?;
    let held: Vec<VnicView> = if ifaces.is_empty() {
        Vec::new()
    } else {
        c.get("/v1/vnics").await?
    };
    for iface in &ifaces {
        let current = held.iter().find(|v| v.vm == uuid && v.index == iface.index);
        let libvirt::Step::Send(req) = libvirt::step(vnic_op, migration, iface, current)? else {
            continue;
        };
        let path = format!("/v1/vnics/{uuid}/{}", iface.index);
        let _: SignalReply = c.post_json(&path, &*req).await.with_context(|| {
            format!(
                "domain {domain} {op} {sub}: interface {} ({})",
                iface.index, iface.mac
            )
        })?;
    }
    Ok(())
}

pub async fn vm(c: &Client, command: VmCommand) -> anyhow::Result<()> {
    let (id, req) = match command {
        VmCommand::List(j) => {
            let vnics: Vec<VnicView> = c.get("/v1/vnics").await?;
            return print(&vnics, j.json, tables::vnic);
        }
        VmCommand::PreAssociate(a) => assoc(Op::PreAssociate, a)?,
        VmCommand::Associate(a) => assoc(Op::Associate, a)?,
        VmCommand::Disassociate(d) => (
            d.id,
            VnicRequest {
                migration: d
                    .migrating_out
                    .map_or(Migration::None, Migration::MigratingOut),
                hold_time: d.hold_time,
                ..VnicRequest::bare(Op::Disassociate)
            },
        ),
        VmCommand::Pause(p) => (
            p.id,
            VnicRequest {
                migration: p
                    .migrating_out
                    .map_or(Migration::None, Migration::MigratingOut),
                ..VnicRequest::bare(Op::Pause)
            },
        ),
        VmCommand::Resume(id) => (id, VnicRequest::bare(Op::Resume)),
        VmCommand::KeepAlive(id) => (id, VnicRequest::bare(Op::KeepAlive)),
    };
    let req = VnicRequest {
        request_id: id.request_id,
        ..req
    };
    let reply: SignalReply = c
        .post_json(&format!("/v1/vnics/{}/{}", id.vm, id.vnic), &req)
        .await?;
    match reply.vnic {
        Some(v) => println!(
            "OK: vNIC {}/{} {:?} in VN {} on {} (VID {})",
            v.vm, v.index, v.state, v.vn, v.port, v.vid
        ),
        None => println!("OK: vNIC {}/{} removed", id.vm, id.vnic),
    }
    Ok(())
}

fn assoc(op: Op, a: AssocArgs) -> anyhow::Result<(VnicArgs, VnicRequest)> {
    let vid = match a.vid.as_str() {
        "untagged" => VidRequest::Word(VidWord::Untagged),
        "assign" => VidRequest::Word(VidWord::Assign),
        n => VidRequest::Vid(
            n.parse()
                .with_context(|| format!("--vid {n:?}: a number, \"untagged\" or \"assign\""))?,
        ),
    };
    let migration = match (a.migrating_in, a.migrating_out) {
        (Some(v), _) => Migration::MigratingIn(v),
        (_, Some(v)) => Migration::MigratingOut(v),
        _ => Migration::None,
    };
    let (ipv4, ipv6) = a
        .ips
        .iter()
        .fold((Vec::new(), Vec::new()), |(mut v4, mut v6), ip| {
            match ip {
                std::net::IpAddr::V4(a) => v4.push(*a),
                std::net::IpAddr::V6(a) => v6.push(*a),
            }
            (v4, v6)
        });
    let req = VnicRequest {
        vn: Some(a.vn),
        macs: a.macs,
        ipv4,
        ipv6,
        port: Some(a.port),
        vid,
        migration,
        hold_time: a.hold_time,
        ..VnicRequest::bare(op)
    };
    Ok((a.id, req))
}
