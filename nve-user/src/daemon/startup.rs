//! Starting (and tearing down) an NVE instance: the arguments, the instance lock, the
//! state and the startup configuration, the dataplane, the API socket.
use std::{
    fs::{self, File},
    net::{IpAddr, Ipv4Addr},
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use nve_common::{
    maps::{DataplaneConfig, TUNNEL_DEV},
    wire::DEFAULT_TTL,
};
use serde::Deserialize;
use tokio::net::UnixListener;

use super::{
    ports::http::{Allowed, group_id},
    writer::{Writer, now},
};
use crate::{
    api::{AttachPort, CreateVn, RemoteMac, StatusView},
    dataplane::{Dataplane, UnderlayMode},
    model::Model,
    netlink,
    paths::Paths,
    store::Store,
};

#[derive(Clone, Debug, clap::Args)]
pub struct DaemonArgs {
    /// This NVE's VTEP address (an address of the underlay interface).
    #[arg(long)]
    pub vtep: Ipv4Addr,
    /// Its IPv6 VTEP address, for peers over an IPv6 underlay (VXLAN over IPv6 goes
    /// through the kernel's collect_md vxlan device, with the outer UDP checksum).
    #[arg(long)]
    pub vtep6: Option<std::net::Ipv6Addr>,
    /// The underlay interface VXLAN arrives on and leaves by.
    #[arg(long)]
    pub underlay: String,
    /// Decapsulation hook on the underlay.
    #[arg(long, value_enum, default_value_t = UnderlayMode::Tc)]
    pub underlay_mode: UnderlayMode,
    /// Outer IPv4 TTL.
    #[arg(long, default_value_t = DEFAULT_TTL)]
    pub ttl: u8,
    /// JSON file of VNs to create on first start, when the state dir holds no state yet
    /// (see README).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// On SIGTERM/SIGINT remove the dataplane (programs, pins, nve-vxlan, managed
    /// neighbours). Without it the dataplane keeps forwarding with the last state, and a
    /// restarted daemon takes it over without losing a packet; `nve teardown` removes it.
    #[arg(long)]
    pub teardown_on_exit: bool,
    /// Group whose members may use the API socket besides root.
    #[arg(long)]
    pub group: Option<String>,
    /// Serve Prometheus metrics on http://ADDR/metrics (for example 127.0.0.1:9464). Off
    /// unless given.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Log every packet the dataplane drops (aya-log, debug level, in the daemon's log).
    /// Off by default: the programs are loaded with logging disabled and the verifier
    /// removes it.
    #[arg(long)]
    pub debug_log: bool,
    /// The network-wide control plane: etcd's client URL (http://HOST:2379), or `bgp` for
    /// BGP EVPN with the neighbours and AS of the config file's "bgp" section (see README).
    /// Each NVE publishes its associated vNICs there and installs the others'. Without it,
    /// remote MACs and flood lists are configured (`nve fdb`, `nve flood`).
    #[arg(long, value_name = "URL|bgp")]
    pub nva: Option<String>,
    /// The embedded NVA's static peers file (JSON: the other NVEs' VTEPs, VNIs and MACs;
    /// see README), followed as it changes. Instead of --nva, for hosts without etcd.
    #[arg(long, value_name = "FILE", conflicts_with = "nva")]
    pub peers: Option<PathBuf>,
    /// The VTEP the NVA publishes for this NVE's vNICs: --vtep (the default) or, where the
    /// NVEs reach each other over IPv6, the --vtep6 address.
    #[arg(long, value_name = "ADDR", requires = "nva")]
    pub nva_vtep: Option<std::net::IpAddr>,
}

impl DaemonArgs {
    /// The VTEP published on the NVA: one of this NVE's own.
    fn published_vtep(&self) -> anyhow::Result<std::net::IpAddr> {
        let own = [Some(self.vtep.into()), self.vtep6.map(Into::into)];
        match self.nva_vtep {
            None => Ok(self.vtep.into()),
            Some(v) if own.contains(&Some(v)) => Ok(v),
            Some(v) => anyhow::bail!(
                "--nva-vtep {v}: not one of this NVE's VTEPs (--vtep {}, --vtep6 {})",
                self.vtep,
                self.vtep6.map_or("unset".to_string(), |a| a.to_string())
            ),
        }
    }
}

/// The startup configuration file: VNs and VDP ports applied on the first start (an empty
/// state dir), the BGP settings read at every start.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// BGP EVPN (`--nva bgp`).
    #[serde(default)]
    pub bgp: Option<crate::evpn::config::BgpConfig>,
    #[serde(default)]
    pub vns: Vec<ConfigVn>,
    /// Trunk ports to speak VDP on (`nve vdp enable`).
    #[serde(default)]
    pub vdp: Vec<ConfigVdp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigVdp {
    pub port: String,
    #[serde(default)]
    pub timers: crate::vdp::lldp::Timers,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigVn {
    pub name: String,
    pub vni: u32,
    #[serde(default)]
    pub ports: Vec<AttachPort>,
    #[serde(default)]
    pub remote: Vec<RemoteMac>,
    #[serde(default)]
    pub flood: Vec<std::net::IpAddr>,
}

impl ConfigFile {
    /// The model this configuration describes; errors name the offending entry.
    pub fn model(&self) -> anyhow::Result<Model> {
        let mut m = Model::default();
        for vn in &self.vns {
            let ctx = || format!("VN {:?}", vn.name);
            m.create_vn(&CreateVn::new(vn.name.clone(), vn.vni))
                .with_context(ctx)?;
            for p in &vn.ports {
                m.attach_port(&vn.name, p, now()).with_context(ctx)?;
            }
            for r in &vn.remote {
                m.add_remote(&vn.name, r).with_context(ctx)?;
            }
            for &v in &vn.flood {
                m.add_flood(&vn.name, v).with_context(ctx)?;
            }
        }
        for v in &self.vdp {
            m.vdp_enable(&v.port, v.timers)
                .with_context(|| format!("VDP port {:?}", v.port))?;
        }
        Ok(m)
    }
}

/// Holds the instance lock for the daemon's lifetime.
pub struct InstanceLock {
    _file: File,
}

impl InstanceLock {
    fn take(path: &Path, instance: &str) -> anyhow::Result<Self> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock {}", path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "instance {instance:?} is already running (another daemon holds {})",
                path.display()
            );
        }
        Ok(Self { _file: file })
    }
}

/// What startup leaves the daemon: the instance held, the writer with the stored state
/// applied to the dataplane, the API socket bound.
pub struct Started {
    pub lock: InstanceLock,
    pub writer: Writer,
    pub listener: UnixListener,
    pub allowed: Allowed,
    /// The VTEP the NVA publishes.
    pub nva_vtep: IpAddr,
    /// BGP EVPN's settings, with `--nva bgp`.
    pub bgp: Option<crate::evpn::config::BgpConfig>,
}

/// Everything up to serving: refuses bad arguments before anything is set up, takes the
/// instance, loads the state and the dataplane and brings one to the other.
pub async fn start(paths: &Paths, socket: &Path, args: &DaemonArgs) -> anyhow::Result<Started> {
    let nva_vtep = args.published_vtep()?;
    let bgp = bgp_config(args)?;
    let allowed = Allowed {
        gid: args.group.as_deref().map(group_id).transpose()?,
    };
    let run_dir = socket.parent().context("socket path has no directory")?;
    fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    if let Some(dir) = paths.lock.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let lock = InstanceLock::take(&paths.lock, &paths.instance)?;
    let (store, stored) = Store::open(&paths.state_dir)?;
    let initial = initial_model(args, stored)?;
    let (conn, netlink, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(conn);
    let dataplane = load_dataplane(paths, args, &netlink).await?;
    let mut writer = Writer::new(dataplane, netlink, store, status(paths, args));
    if let Err(e) = writer.start(initial).await {
        if args.teardown_on_exit {
            writer.teardown().await;
        }
        bail!("bringing the dataplane to the stored state: {e}");
    }
    let listener = bind(socket, allowed)?;
    Ok(Started {
        lock,
        writer,
        listener,
        allowed,
        nva_vtep,
        bgp,
    })
}

/// With `--nva bgp`: the config file's "bgp" section, checked.
fn bgp_config(args: &DaemonArgs) -> anyhow::Result<Option<crate::evpn::config::BgpConfig>> {
    if args.nva.as_deref() != Some("bgp") {
        return Ok(None);
    }
    let path = args.config.as_ref().context(
        "--nva bgp reads its neighbours and AS from --config FILE (its \"bgp\" section)",
    )?;
    let cfg = read_config(path)?.bgp.with_context(|| {
        format!(
            "config {}: no \"bgp\" section for --nva bgp",
            path.display()
        )
    })?;
    cfg.check()
        .map_err(|e| anyhow::anyhow!("config {}: bgp: {e}", path.display()))?;
    Ok(Some(cfg))
}

fn read_config(path: &Path) -> anyhow::Result<ConfigFile> {
    let text =
        fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
}

/// The stored state, or on a first start (an empty state dir) the config file's.
fn initial_model(args: &DaemonArgs, stored: Model) -> anyhow::Result<Model> {
    Ok(match &args.config {
        Some(path) if stored != Model::default() => {
            tracing::info!(config = %path.display(), "state dir holds state: config file not applied");
            stored
        }
        Some(path) => read_config(path)?
            .model()
            .with_context(|| format!("config {}", path.display()))?,
        None => stored,
    })
}

/// Creates the tunnel device and loads (or takes over) the pinned dataplane.
async fn load_dataplane(
    paths: &Paths,
    args: &DaemonArgs,
    handle: &rtnetlink::Handle,
) -> anyhow::Result<Dataplane> {
    let underlay_ifindex = netlink::ifindex(&args.underlay)
        .with_context(|| format!("underlay {:?}: no such interface", args.underlay))?;
    netlink::create_tunnel_device(handle).await?;
    let config = DataplaneConfig {
        vtep_ipv4: args.vtep.octets(),
        underlay_ifindex,
        ttl: args.ttl,
        _pad: [0; 3],
        vtep_ipv6: args.vtep6.map_or([0; 16], |a| a.octets()),
        tunnel_ifindex: netlink::ifindex(TUNNEL_DEV).context("the tunnel device vanished")?,
        underlay_mtu: netlink::mtu(handle, &args.underlay).await.unwrap_or(1500),
        underlay_mac: netlink::mac(handle, &args.underlay)
            .await
            .with_context(|| format!("underlay {:?}: not an Ethernet interface", args.underlay))?,
        _pad2: [0; 2],
    };
    let loaded = Dataplane::load(
        &paths.pin_dir,
        &args.underlay,
        args.underlay_mode,
        config,
        args.debug_log,
    );
    match loaded {
        Ok(dp) => Ok(dp),
        Err(e) => {
            let _ = netlink::delete_link(handle, TUNNEL_DEV).await;
            Err(anyhow::Error::from(e).context("loading the dataplane"))
        }
    }
}

/// What `nve status` shows that does not change while the daemon runs.
fn status(paths: &Paths, args: &DaemonArgs) -> StatusView {
    StatusView {
        instance: paths.instance.clone(),
        vtep: args.vtep,
        vtep6: args.vtep6,
        underlay: args.underlay.clone(),
        underlay_mode: args.underlay_mode.to_string(),
        pin_dir: paths.pin_dir.display().to_string(),
        vns: 0,
        ports: 0,
        underlay_mtu: 0,
        vm_mtu: 0,
        nva: None,
        next_hops: Vec::new(),
    }
}

/// Binds the API socket: root's, the allowed group's, mode 0660.
fn bind(socket: &Path, allowed: Allowed) -> anyhow::Result<UnixListener> {
    let _ = fs::remove_file(socket);
    let listener = UnixListener::bind(socket)
        .with_context(|| format!("binding API socket {}", socket.display()))?;
    std::os::unix::fs::chown(socket, Some(0), allowed.gid)
        .with_context(|| format!("chown {}", socket.display()))?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod {}", socket.display()))?;
    Ok(listener)
}

/// `nve teardown`: removes a dataplane a stopped daemon left forwarding (pinned programs
/// and maps, nve-vxlan, the managed neighbours of its VTEPs). The stored state stays; a
/// daemon started later rebuilds the dataplane from it.
pub async fn teardown(paths: &Paths) -> anyhow::Result<()> {
    let _lock = InstanceLock::take(&paths.lock, &paths.instance)
        .context("stop the daemon first: teardown removes what it forwards with")?;
    let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(conn);
    if paths.state_dir.exists() {
        let (_, model) = Store::open(&paths.state_dir)?;
        for vtep in model.ipv4_vteps() {
            if let Some(route) = netlink::route_to(&handle, vtep).await? {
                let _ = netlink::forget_neighbour(&handle, route).await;
            }
        }
    }
    match fs::remove_dir_all(&paths.pin_dir) {
        Ok(()) => println!("removed {} (programs detached)", paths.pin_dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", paths.pin_dir.display())),
    }
    if let Some(parent) = paths.pin_dir.parent() {
        let _ = fs::remove_dir(parent);
    }
    netlink::delete_link(&handle, TUNNEL_DEV).await?;
    Ok(())
}
