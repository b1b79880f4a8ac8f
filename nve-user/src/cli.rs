//! The `nve` command: `nve daemon` runs an instance; every other subcommand is a client of
//! its socket. Read commands print a table, or JSON with `--json`, from the same value.
use std::{net::Ipv4Addr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::{
    api::{
        AttachPort, CreateVn, FdbTarget, FdbView, FloodVtep, Migration, RemoteMac, SignalReply,
        StatsView, StatusView, VidRequest, VidWord, VnView, VnicRequest, VnicView,
    },
    client::Client,
    daemon::{self, DaemonArgs},
    libvirt,
    mac::MacAddr,
    paths::Paths,
    vnic::Op,
};

#[derive(Debug, Parser)]
#[command(
    name = "nve",
    version,
    about = "A co-resident VXLAN Network Virtualization Edge"
)]
pub struct Cli {
    /// Instance name: selects socket, state dir and pin dir.
    #[arg(long, global = true, env = "NVE_INSTANCE", default_value = "default")]
    pub instance: String,
    /// API socket path (default: /run/nve/<instance>.sock).
    #[arg(long, global = true, env = "NVE_SOCKET")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the NVE for this instance.
    Daemon(DaemonArgs),
    /// Instance, VTEP, underlay and counts.
    Status(JsonFlag),
    /// Virtual networks.
    Vn {
        #[command(subcommand)]
        command: VnCommand,
    },
    /// VM ports of a VN.
    Port {
        #[command(subcommand)]
        command: PortCommand,
    },
    /// The forwarding database: list, or add/remove static remote MACs.
    #[command(args_conflicts_with_subcommands = true)]
    Fdb {
        #[command(subcommand)]
        command: Option<FdbCommand>,
        /// Only this MAC's entries.
        #[arg(long)]
        mac: Option<MacAddr>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// A VN's flood list of remote VTEPs (broadcast, e.g. ARP).
    Flood {
        #[command(subcommand)]
        command: FloodCommand,
    },
    /// Dataplane counters: forwards and drops by reason.
    Stats(JsonFlag),
    /// Remove the dataplane a stopped daemon of this instance left forwarding.
    Teardown,
    /// libvirt's qemu hook: `nve hook qemu DOMAIN OPERATION SUB-OPERATION [EXTRA]`, domain
    /// XML on stdin (see contrib/libvirt/qemu).
    Hook {
        /// The hook's name (only `qemu` is handled).
        driver: String,
        domain: String,
        operation: String,
        sub_operation: String,
        #[arg(trailing_var_arg = true)]
        extra: Vec<String>,
    },
    /// Signal VM lifecycle events for a vNIC (what a hypervisor hook calls).
    Vm {
        #[command(subcommand)]
        command: VmCommand,
    },
}

/// Which vNIC: the VM's UUID and the vNIC's index.
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
    #[arg(long = "mac", required = true)]
    pub macs: Vec<MacAddr>,
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
    /// there for the hold time (a forwarding pointer).
    #[arg(long)]
    pub migrating_out: Option<Ipv4Addr>,
    /// With --migrating-out: seconds the forwarding pointer lasts (default 60).
    #[arg(long, requires = "migrating_out")]
    pub hold_time: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Install everything for the vNIC, not forwarding yet (e.g. migration destination).
    PreAssociate(AssocArgs),
    /// Make the vNIC forward.
    Associate(AssocArgs),
    /// Remove the vNIC (VM stopped, or migrated away).
    Disassociate(DisassocArgs),
    /// Keep the association, stop forwarding.
    Pause(VnicArgs),
    Resume(VnicArgs),
    /// Refresh a soft association's hold time.
    KeepAlive(VnicArgs),
    /// The vNICs and their states.
    List(JsonFlag),
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum VnCommand {
    List(JsonFlag),
    Add {
        name: String,
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
    Del {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PortCommand {
    /// Bind a VM port (and VID) to a VN, with the VM's MACs behind it.
    Attach {
        vn: String,
        port: String,
        #[arg(long, default_value_t = 0)]
        vid: u16,
        #[arg(long = "mac")]
        macs: Vec<MacAddr>,
    },
    Detach {
        vn: String,
        port: String,
        #[arg(long, default_value_t = 0)]
        vid: u16,
    },
}

#[derive(Debug, Subcommand)]
pub enum FdbCommand {
    /// A static remote MAC: frames to it go to VTEP.
    Add {
        vn: String,
        mac: MacAddr,
        /// IPv4 or IPv6.
        #[arg(long)]
        vtep: std::net::IpAddr,
        /// An IPv4 or IPv6 address of the MAC, answered for by ARP/ND suppression
        /// (repeatable).
        #[arg(long = "ip")]
        ips: Vec<std::net::IpAddr>,
    },
    Del {
        vn: String,
        mac: MacAddr,
    },
}

#[derive(Debug, Subcommand)]
pub enum FloodCommand {
    Add { vn: String, vtep: std::net::IpAddr },
    Del { vn: String, vtep: std::net::IpAddr },
}

pub fn main(cli: Cli) -> ExitCode {
    // Before the runtime's threads: settling may change the process's mount namespace.
    let pins = match cli.command {
        Command::Daemon(_) | Command::Teardown => match crate::bpffs::settle() {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("nve: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("nve: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, pins)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nve: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, pins: Option<crate::bpffs::Settled>) -> anyhow::Result<()> {
    let paths = Paths::new(&cli.instance)?;
    let socket = cli.socket.clone().unwrap_or_else(|| paths.socket.clone());
    if let Command::Daemon(args) = cli.command {
        // The programs' aya-log records carry the eBPF crate's target, `nve::...`.
        let default_filter = if args.debug_log {
            "info,nve=debug"
        } else {
            "info"
        };
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| default_filter.into()),
            )
            .with_writer(std::io::stderr)
            .init();
        if let Some(pins) = pins {
            tracing::info!("{pins}");
        }
        return daemon::run(paths, socket, args).await;
    }
    if let Command::Teardown = cli.command {
        return daemon::teardown(&paths).await;
    }
    let c = Client::new(&socket);
    match cli.command {
        Command::Daemon(_) | Command::Teardown => unreachable!("handled above"),
        Command::Hook {
            driver,
            domain,
            operation,
            sub_operation,
            ..
        } => hook(&c, &driver, &domain, &operation, &sub_operation).await,
        Command::Status(j) => {
            let s: StatusView = c.get("/v1/status").await?;
            print(&s, j.json, status_table)
        }
        Command::Vn { command } => match command {
            VnCommand::List(j) => {
                let vns: Vec<VnView> = c.get("/v1/vns").await?;
                print(&vns, j.json, vn_table)
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
        },
        Command::Port { command } => match command {
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
        },
        Command::Fdb { command, mac, json } => match command {
            None => {
                let path = match mac {
                    Some(mac) => format!("/v1/fdb?mac={mac}"),
                    None => "/v1/fdb".to_string(),
                };
                let fdb: Vec<FdbView> = c.get(&path).await?;
                print(&fdb, json.json, fdb_table)
            }
            Some(FdbCommand::Add { vn, mac, vtep, ips }) => Ok(c
                .put(&format!("/v1/vns/{vn}/fdb"), &RemoteMac { mac, vtep, ips })
                .await?),
            Some(FdbCommand::Del { vn, mac }) => {
                Ok(c.delete(&format!("/v1/vns/{vn}/fdb/{mac}")).await?)
            }
        },
        Command::Flood { command } => match command {
            FloodCommand::Add { vn, vtep } => Ok(c
                .put(&format!("/v1/vns/{vn}/flood"), &FloodVtep { vtep })
                .await?),
            FloodCommand::Del { vn, vtep } => {
                Ok(c.delete(&format!("/v1/vns/{vn}/flood/{vtep}")).await?)
            }
        },
        Command::Vm { command } => vm(&c, command).await,
        Command::Stats(j) => {
            let s: StatsView = c.get("/v1/stats").await?;
            print(&s, j.json, stats_table)
        }
    }
}

/// Signals every nve interface of the domain on stdin for one libvirt hook call. Fails
/// (and so makes libvirt abort prepare/start/migrate) when the NVE refuses, e.g. an unknown VN.
async fn hook(c: &Client, driver: &str, domain: &str, op: &str, sub: &str) -> anyhow::Result<()> {
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
    for iface in &ifaces {
        let req = libvirt::request(vnic_op, migration, iface)?;
        let path = format!("/v1/vnics/{uuid}/{}", iface.index);
        let _: SignalReply = c.post_json(&path, &req).await.with_context(|| {
            format!(
                "domain {domain} {op} {sub}: interface {} ({})",
                iface.index, iface.mac
            )
        })?;
    }
    Ok(())
}

async fn vm(c: &Client, command: VmCommand) -> anyhow::Result<()> {
    let (id, req) = match command {
        VmCommand::List(j) => {
            let vnics: Vec<VnicView> = c.get("/v1/vnics").await?;
            return print(&vnics, j.json, vnic_table);
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
                ..bare(Op::Disassociate)
            },
        ),
        VmCommand::Pause(id) => (id, bare(Op::Pause)),
        VmCommand::Resume(id) => (id, bare(Op::Resume)),
        VmCommand::KeepAlive(id) => (id, bare(Op::KeepAlive)),
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

fn bare(op: Op) -> VnicRequest {
    VnicRequest {
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
        ..bare(op)
    };
    Ok((a.id, req))
}

fn vnic_table(vnics: &Vec<VnicView>) -> String {
    let mut out = format!(
        "{:<38} {:<16} {:<14} {:<15} {:>4}  {}\n",
        "VNIC", "STATE", "VN", "PORT", "VID", "MACS"
    );
    for v in vnics {
        let macs: Vec<String> = v.macs.iter().map(ToString::to_string).collect();
        let state = serde_json::to_value(v.state)
            .ok()
            .and_then(|s| s.as_str().map(str::to_string))
            .unwrap_or_default();
        out += &format!(
            "{:<38} {:<16} {:<14} {:<15} {:>4}  {}\n",
            format!("{}/{}", v.vm, v.index),
            state,
            v.vn,
            v.port,
            v.vid,
            macs.join(",")
        );
    }
    out
}

fn print<T: Serialize>(value: &T, json: bool, table: fn(&T) -> String) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).context("encoding JSON")?
        );
    } else {
        print!("{}", table(value));
    }
    Ok(())
}

fn status_table(s: &StatusView) -> String {
    format!(
        "instance      {}\nvtep          {}\nunderlay      {} ({})\npins          {}\nvns           {}\nports         {}\n",
        s.instance, s.vtep, s.underlay, s.underlay_mode, s.pin_dir, s.vns, s.ports
    ) + &s
        .next_hops
        .iter()
        .map(|n| {
            format!(
                "next hop      {} via {} (ifindex {})\n",
                n.vtep, n.mac, n.ifindex
            )
        })
        .collect::<String>()
}

fn vn_table(vns: &Vec<VnView>) -> String {
    let mut out = format!(
        "{:<16} {:>9} {:>5}  {:<28} {}\n",
        "VN", "VNI", "MTU", "PORTS", "FLOOD"
    );
    for vn in vns {
        let ports: Vec<String> = vn
            .ports
            .iter()
            .map(|p| {
                if p.vid == 0 {
                    p.port.clone()
                } else {
                    format!("{}.{}", p.port, p.vid)
                }
            })
            .collect();
        let flood: Vec<String> = vn.flood.iter().map(ToString::to_string).collect();
        out += &format!(
            "{:<16} {:>9} {:>5}  {:<28} {}\n",
            vn.name,
            vn.vni,
            vn.mtu,
            ports.join(","),
            flood.join(",")
        );
    }
    out
}

fn fdb_table(fdb: &Vec<FdbView>) -> String {
    let mut out = format!("{:<16} {:>9}  {:<17}  {}\n", "VN", "VNI", "MAC", "TARGET");
    for e in fdb {
        let target = match &e.target {
            FdbTarget::Port { port, vid: 0 } => format!("port {port}"),
            FdbTarget::Port { port, vid } => format!("port {port} vid {vid}"),
            FdbTarget::Vtep { vtep } => format!("vtep {vtep}"),
        };
        let learned = match (e.learned, e.moved_until) {
            (true, _) => " (learned)",
            (_, Some(_)) => " (moved: forwarding)",
            _ if e.from_nva => " (NVA)",
            _ => "",
        };
        out += &format!(
            "{:<16} {:>9}  {:<17}  {target}{learned}\n",
            e.vn, e.vni, e.mac
        );
    }
    out
}

fn stats_table(s: &StatsView) -> String {
    let mut out = format!(
        "{:<12} {:<24} {:>12} {:>14}\n",
        "HOOK", "OUTCOME", "PACKETS", "BYTES"
    );
    for (hook, outcomes) in &s.hooks {
        for (name, c) in outcomes {
            out += &format!(
                "{:<12} {:<24} {:>12} {:>14}\n",
                hook, name, c.packets, c.bytes
            );
        }
    }
    let scopes = s
        .vns
        .iter()
        .map(|(vni, c)| (format!("vni {vni}"), c))
        .chain(s.ports.iter().map(|(port, c)| (format!("port {port}"), c)));
    for (scope, counters) in scopes {
        out += "\n";
        for (name, c) in counters {
            out += &format!(
                "{:<16} {:<20} {:>12} {:>14}\n",
                scope, name, c.packets, c.bytes
            );
        }
    }
    out
}
