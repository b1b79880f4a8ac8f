//! The `nve` command: `nve daemon` runs an instance; every other subcommand is a client of
//! its socket (`vm.rs`: signaling and the libvirt hook; `config.rs`: VNs, ports, the FDB,
//! flood lists). Read commands print a table (`tables.rs`), or JSON with `--json`, from the
//! same value.
mod config;
mod docs;
mod monitor;
mod tables;
mod vdp;
mod vm;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

pub use config::{FdbCommand, FloodCommand, PortCommand, VnCommand};
pub use vm::{AssocArgs, DisassocArgs, VmCommand, VnicArgs};

use crate::{
    api::{ReloadView, StatsView, StatusView},
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
    /// Watch packets the dataplane drops (with --all, forwards too), live: time, hook,
    /// reason, port, VN and the frame's headers. Costs nothing while no monitor runs.
    Monitor(monitor::MonitorArgs),
    /// Re-read the daemon's config file (as SIGHUP does): create the VNs and VDP ports it
    /// lists that are missing, and name the changed keys that need a restart.
    Reload(JsonFlag),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Write man pages (nve.1, nve-vm.1, nve-vm-resume.1, ...) into DIR.
    Manpages {
        /// Directory to write them into (created if missing), e.g. /usr/local/share/man/man1.
        dir: PathBuf,
    },
    /// Remove the dataplane a stopped daemon of this instance left forwarding.
    Teardown,
    /// A pinned map's entries with named fields, read from the instance's pins (root; no
    /// daemon needed). `bpftool map dump` shows them as bytes: the maps carry no key/value
    /// BTF.
    Dump {
        /// Which map (or its pinned name, e.g. NVE_FDB).
        #[arg(value_enum)]
        map: crate::dataplane::dump::DumpMap,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// libvirt's qemu hook: `nve hook qemu DOMAIN OPERATION SUB-OPERATION [EXTRA]`, domain
    /// XML on stdin (see contrib/libvirt/qemu).
    Hook {
        /// The hook's name (only `qemu` is handled).
        driver: String,
        /// The domain's name.
        domain: String,
        /// libvirt's operation (prepare, start, started, stopped, release, migrate, ...).
        operation: String,
        /// Its sub-operation (begin, end, ...).
        sub_operation: String,
        /// libvirt's extra argument (ignored).
        #[arg(trailing_var_arg = true)]
        extra: Vec<String>,
    },
    /// Follow libvirt's domain lifecycle events and signal nve where the qemu hook is not
    /// called: at a migration's switchover (Suspended Migrated) pause the source's vNICs
    /// toward the destination, at Resumed resume a paused vNIC or associate an arriving one.
    /// Runs until SIGTERM; needs virsh (libvirt's client).
    LibvirtEvents {
        /// libvirt URI to follow (virsh -c; default: virsh's, e.g. qemu:///system).
        #[arg(long)]
        connect: Option<String>,
    },
    /// Signal VM lifecycle events for a vNIC (what a hypervisor hook calls).
    Vm {
        #[command(subcommand)]
        command: VmCommand,
    },
    /// VDP (IEEE 802.1Qbg) on trunk ports: stations such as lldpad associate VSIs.
    Vdp {
        #[command(subcommand)]
        command: vdp::VdpCommand,
    },
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn main(cli: Cli) -> ExitCode {
    if let Some(done) = offline(&cli) {
        return match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nve: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // Before the runtime's threads: settling may change the process's mount namespace.
    let pins = match cli.command {
        Command::Daemon(_) | Command::Teardown | Command::Dump { .. } => {
            match crate::bpffs::settle() {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("nve: {e:#}");
                    return ExitCode::FAILURE;
                }
            }
        }
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

/// The commands that need neither a daemon nor the runtime: completions, man pages,
/// `daemon --check-config`.
fn offline(cli: &Cli) -> Option<anyhow::Result<()>> {
    match &cli.command {
        Command::Completions { shell } => {
            docs::completions(*shell);
            Some(Ok(()))
        }
        Command::Manpages { dir } => Some(docs::manpages(dir)),
        Command::Daemon(args) => args.check_config.as_ref().map(|file| {
            let paths = Paths::new(&cli.instance)?;
            let path = args.check_file(&paths, file.as_deref())?;
            println!("{}: ok", path.display());
            Ok(())
        }),
        _ => None,
    }
}

async fn run(cli: Cli, pins: Option<crate::bpffs::Settled>) -> anyhow::Result<()> {
    let paths = Paths::new(&cli.instance)?;
    let socket = cli.socket.clone().unwrap_or_else(|| paths.socket.clone());
    if let Command::Daemon(args) = cli.command {
        let cfg = args.resolve(&paths)?;
        init_logging(cfg.all.debug_log);
        if let Some(pins) = pins {
            tracing::info!("{pins}");
        }
        return daemon::run(paths, socket, args, cfg).await;
    }
    if let Command::Teardown = cli.command {
        return daemon::teardown(&paths).await;
    }
    if let Command::Dump { map, json } = cli.command {
        return dump(&paths, map, json.json);
    }
    let c = Client::new(&socket);
    match cli.command {
        Command::Daemon(_)
        | Command::Teardown
        | Command::Dump { .. }
        | Command::Completions { .. }
        | Command::Manpages { .. } => unreachable!("handled above"),
        Command::Hook {
            driver,
            domain,
            operation,
            sub_operation,
            ..
        } => vm::hook(&c, &driver, &domain, &operation, &sub_operation).await,
        Command::LibvirtEvents { connect } => {
            init_logging(false);
            crate::libvirt::bridge::run(&c, connect).await
        }
        Command::Status(j) => {
            let s: StatusView = c.get("/v1/status").await?;
            print(&s, j.json, tables::status)
        }
        Command::Vn { command } => config::vn(&c, command).await,
        Command::Port { command } => config::port(&c, command).await,
        Command::Fdb { command, mac, json } => config::fdb(&c, command, mac, json).await,
        Command::Flood { command } => config::flood(&c, command).await,
        Command::Vm { command } => vm::vm(&c, command).await,
        Command::Vdp { command } => vdp::vdp(&c, command).await,
        Command::Monitor(args) => monitor::monitor(&c, args).await,
        Command::Stats(j) => {
            let s: StatsView = c.get("/v1/stats").await?;
            print(&s, j.json, tables::stats)
        }
        Command::Reload(j) => {
            let r: ReloadView = c.post_json("/v1/reload", &()).await?;
            print(&r, j.json, tables::reload)
        }
    }
}

/// `nve dump MAP`: the entries of the instance's pinned map, one a line or as JSON.
fn dump(paths: &Paths, map: crate::dataplane::dump::DumpMap, json: bool) -> anyhow::Result<()> {
    use crate::dataplane::dump;
    let entries = dump::dump(&paths.pin_dir, map).with_context(|| {
        format!(
            "reading {} of instance {} (root, and a daemon that ran: `nve status`)",
            paths.pin_dir.join(map.pin_name()).display(),
            paths.instance
        )
    })?;
    print(&entries, json, |entries| {
        entries
            .iter()
            .map(|e| format!("{}\n", dump::entry_line(e)))
            .collect()
    })
}

/// The daemon's log on stderr; `--debug-log` adds the programs' aya-log records (their
/// target is the eBPF crate's, `nve::...`).
fn init_logging(debug_log: bool) {
    let default_filter = if debug_log { "info,nve=debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

pub(crate) fn print<T: Serialize>(
    value: &T,
    json: bool,
    table: fn(&T) -> String,
) -> anyhow::Result<()> {
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
