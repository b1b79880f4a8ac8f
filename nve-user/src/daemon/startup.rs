//! Starting (and tearing down) an NVE instance: the arguments, the instance lock, the
//! stored state, the dataplane, the API socket.
use std::{
    fs::{self, File},
    net::IpAddr,
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use nve_common::maps::{DataplaneConfig, TUNNEL_DEV};
use tokio::net::UnixListener;

use super::{
    ports::http::{Allowed, group_id},
    settings::{self, Resolved, Settings},
    writer::{Writer, now},
};
use crate::{
    api::{ReloadView, StatusView},
    dataplane::Dataplane,
    netlink,
    paths::Paths,
    store::Store,
};

/// `nve daemon`'s command line: where its settings come from, and the settings that
/// override the file's.
#[derive(Clone, Debug, clap::Args)]
pub struct DaemonArgs {
    /// The config file: TOML, or JSON if its name ends in .json [default:
    /// /etc/nve/<instance>.toml, if it exists]. Read at every start and on SIGHUP (`nve
    /// reload`); the flags below override its keys (see README).
    #[arg(long, env = "NVE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check a config file (FILE, or the one the daemon would read) with the flags given
    /// over it, print what is wrong (the key and line) or "ok", and exit.
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    pub check_config: Option<Option<PathBuf>>,
    #[command(flatten)]
    pub settings: Settings,
}

impl DaemonArgs {
    /// The config file to read: `--config`, else the instance's default if present.
    pub fn config_path(&self, paths: &Paths) -> anyhow::Result<Option<PathBuf>> {
        settings::config_path(self.config.as_deref(), &paths.config)
    }

    /// The settings in force: these flags over the config file.
    pub fn resolve(&self, paths: &Paths) -> anyhow::Result<Resolved> {
        settings::load(&self.settings, self.config_path(paths)?)
    }

    /// `--check-config [FILE]`: the file (and these flags over it) resolved, or why not.
    pub fn check_file(&self, paths: &Paths, file: Option<&Path>) -> anyhow::Result<PathBuf> {
        let path = match file {
            Some(f) => f.to_path_buf(),
            None => self.config_path(paths)?.with_context(|| {
                format!("no config file: {} does not exist", paths.config.display())
            })?,
        };
        settings::load(&self.settings, Some(path.clone()))?;
        Ok(path)
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
    /// What the config file added to the stored state.
    pub seeded: ReloadView,
}

/// Everything up to serving: refuses bad arguments before anything is set up, takes the
/// instance, loads the state and the dataplane and brings one to the other.
pub async fn start(paths: &Paths, socket: &Path, cfg: &Resolved) -> anyhow::Result<Started> {
    let nva_vtep = cfg.all.nva_vtep.unwrap_or(cfg.vtep.into());
    let bgp = (cfg.all.nva.as_deref() == Some("bgp"))
        .then(|| cfg.all.bgp.clone())
        .flatten();
    let allowed = Allowed {
        gid: cfg.all.group.as_deref().map(group_id).transpose()?,
    };
    let run_dir = socket.parent().context("socket path has no directory")?;
    fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    if let Some(dir) = paths.lock.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let lock = InstanceLock::take(&paths.lock, &paths.instance)?;
    let (store, stored) = Store::open(&paths.state_dir)?;
    let (initial, mut seeded) = cfg
        .all
        .seeded(stored, now(), |port| netlink::ifindex(port).is_some());
    seeded.file = cfg.file.as_ref().map(|f| f.display().to_string());
    let (conn, netlink, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(conn);
    let dataplane = load_dataplane(paths, cfg, &netlink).await?;
    let mut writer = Writer::new(dataplane, netlink, store, status(paths, cfg));
    if let Err(e) = writer.start(initial).await {
        if cfg.all.teardown_on_exit {
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
        seeded,
    })
}

/// Creates the tunnel device and loads (or takes over) the pinned dataplane.
async fn load_dataplane(
    paths: &Paths,
    args: &Resolved,
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
        vtep_ipv6: args.all.vtep6.map_or([0; 16], |a| a.octets()),
        tunnel_ifindex: netlink::ifindex(TUNNEL_DEV).context("the tunnel device vanished")?,
        underlay_mtu: netlink::mtu(handle, &args.underlay).await.unwrap_or(1500),
        underlay_mac: netlink::mac(handle, &args.underlay)
            .await
            .with_context(|| format!("underlay {:?}: not an Ethernet interface", args.underlay))?,
        _pad2: [0; 2],
        monitor: 0,
        monitor_sample: 0,
    };
    let loaded = Dataplane::load(
        &paths.pin_dir,
        &args.underlay,
        args.underlay_mode,
        config,
        args.all.debug_log,
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
fn status(paths: &Paths, args: &Resolved) -> StatusView {
    StatusView {
        instance: paths.instance.clone(),
        vtep: args.vtep,
        vtep6: args.all.vtep6,
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
