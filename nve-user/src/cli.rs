//! The `nve` command: `nve daemon` runs an instance; every other subcommand is a client of
//! its socket. Read commands print a table, or JSON with `--json`, from the same value.
use std::{net::Ipv4Addr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::{
    api::{
        AttachPort, CreateVn, FdbTarget, FdbView, FloodVtep, RemoteMac, StatsView, StatusView,
        VnView,
    },
    client::Client,
    daemon::{self, DaemonArgs},
    mac::MacAddr,
    paths::Paths,
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
        #[arg(long)]
        vtep: Ipv4Addr,
    },
    Del {
        vn: String,
        mac: MacAddr,
    },
}

#[derive(Debug, Subcommand)]
pub enum FloodCommand {
    Add { vn: String, vtep: Ipv4Addr },
    Del { vn: String, vtep: Ipv4Addr },
}

pub fn main(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("nve: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nve: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let paths = Paths::new(&cli.instance)?;
    let socket = cli.socket.clone().unwrap_or_else(|| paths.socket.clone());
    if let Command::Daemon(args) = cli.command {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_writer(std::io::stderr)
            .init();
        return daemon::run(paths, socket, args).await;
    }
    let c = Client::new(&socket);
    match cli.command {
        Command::Daemon(_) => unreachable!("handled above"),
        Command::Status(j) => {
            let s: StatusView = c.get("/v1/status").await?;
            print(&s, j.json, status_table)
        }
        Command::Vn { command } => match command {
            VnCommand::List(j) => {
                let vns: Vec<VnView> = c.get("/v1/vns").await?;
                print(&vns, j.json, vn_table)
            }
            VnCommand::Add { name, vni } => Ok(c.post("/v1/vns", &CreateVn { name, vni }).await?),
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
        Command::Fdb { command, json } => match command {
            None => {
                let fdb: Vec<FdbView> = c.get("/v1/fdb").await?;
                print(&fdb, json.json, fdb_table)
            }
            Some(FdbCommand::Add { vn, mac, vtep }) => Ok(c
                .put(&format!("/v1/vns/{vn}/fdb"), &RemoteMac { mac, vtep })
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
        Command::Stats(j) => {
            let s: StatsView = c.get("/v1/stats").await?;
            print(&s, j.json, stats_table)
        }
    }
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
    let mut out = format!("{:<16} {:>9}  {:<28} {}\n", "VN", "VNI", "PORTS", "FLOOD");
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
            "{:<16} {:>9}  {:<28} {}\n",
            vn.name,
            vn.vni,
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
        out += &format!("{:<16} {:>9}  {:<17}  {}\n", e.vn, e.vni, e.mac, target);
    }
    out
}

fn stats_table(s: &StatsView) -> String {
    let mut out = format!(
        "{:<12} {:<24} {:>12} {:>14}\n",
        "HOOK", "OUTCOME", "PACKETS", "BYTES"
    );
    for (hook, outcomes) in s {
        for (name, c) in outcomes {
            out += &format!(
                "{:<12} {:<24} {:>12} {:>14}\n",
                hook, name, c.packets, c.bytes
            );
        }
    }
    out
}
