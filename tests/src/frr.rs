//! FRR (Debian's frr 8.4: zebra + bgpd) as the BGP EVPN peer in a rig namespace, over the
//! kernel's bridge and vxlan devices ([`evpn_vni`]): FRR takes no injected routes, it learns
//! local MACs from the bridge's FDB through zebra and installs remote ones (and the flood
//! list) into the vxlan device's FDB.
//!
//! Each instance lives in a directory of its own, /tmp/<ns>-frr: generated zebra.conf and
//! bgpd.conf, pid files, vty sockets, the zebra API socket and the logs; the daemons also get
//! the pathspace `-N <ns>` (/var/run/frr is shared by every namespace), whose
//! /var/run/frr/<ns> stays empty. The daemons are children of the guard (no `-d`): stopped
//! (SIGTERM, then SIGKILL) on drop, the directory removed, or kept with its logs if the test
//! panicked.
//!
//! What FRR 8.4.4 does here (measured by the self-tests below): Established 0.05-0.3 s after
//! the second speaker starts (connect retry 1 s: FRR's 120 s default would stall a session
//! whose first SYN found no listener); the first UPDATEs about 1 s later; vtysh's `json`
//! commands print nothing when there is nothing (read as `{}`). Neither SIGTERM nor SIGKILL
//! makes bgpd send a NOTIFICATION: the peer sees the TCP connection close, and drops every
//! EVPN route of the session at once, although graceful restart was negotiated (EVPN
//! graceful restart came to FRR in 2025). tests/data/evpn has FRR's messages as sent.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::{IpAddr, Ipv4Addr},
    os::unix::fs::chown,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::{overlay, rig::Netns};

/// Where Debian installs the daemons.
const SBIN: &str = "/usr/lib/frr";
/// How long a daemon may take to answer vtysh with its config applied and, for bgpd, to
/// register with zebra (measured: 0.1-0.3 s).
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a daemon may take to exit on SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// vtysh waits on the daemons' sockets; past this it is stuck.
const VTYSH_TIMEOUT_S: &str = "10";

/// BGP timers for one neighbour, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    pub keepalive: u16,
    pub hold: u16,
    /// ConnectRetry: FRR's default of 120 s leaves a session down for two minutes when the
    /// peer was not listening yet at the first try.
    pub connect: u16,
}

impl Default for Timers {
    /// Rig timers: keep-alive 3 s, hold 9 s, connect retry 1 s.
    fn default() -> Self {
        Timers {
            keepalive: 3,
            hold: 9,
            connect: 1,
        }
    }
}

/// A BGP neighbour, activated in the L2VPN EVPN family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub addr: Ipv4Addr,
    pub remote_as: u32,
    pub timers: Timers,
    /// This instance is the route reflector and the neighbour its client.
    pub route_reflector_client: bool,
}

impl Neighbour {
    /// An EVPN neighbour with the rig's timers.
    pub fn new(addr: Ipv4Addr, remote_as: u32) -> Self {
        Neighbour {
            addr,
            remote_as,
            timers: Timers::default(),
            route_reflector_client: false,
        }
    }
}

/// One VNI's EVPN settings; FRR learns the VNI itself from the kernel (advertise-all-vni)
/// and derives RD (`router-id:index`) and RT (`(AS & 0xffff):VNI`) unless given here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VniConfig {
    pub vni: u32,
    /// e.g. "10.0.0.1:100".
    pub rd: Option<String>,
    /// Import and export RT, e.g. "65000:100".
    pub route_target: Option<String>,
}

impl From<u32> for VniConfig {
    /// Auto RD and RT.
    fn from(vni: u32) -> Self {
        VniConfig {
            vni,
            rd: None,
            route_target: None,
        }
    }
}

/// What the generated zebra.conf and bgpd.conf say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrrConfig {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// The `hostname`: bgpd sends it in its OPEN (FQDN capability), so it is not derived
    /// from the namespace's per-process name.
    pub hostname: String,
    pub neighbours: Vec<Neighbour>,
    /// VNIs with an explicit RD or RT (`vni N` blocks); every VNI of the kernel is
    /// advertised anyway.
    pub vnis: Vec<VniConfig>,
    /// FRR's duplicate address detection (on by default: 5 moves in 180 s freeze a MAC);
    /// false writes `no dup-addr-detection`.
    pub dup_addr_detection: bool,
    /// `bgp graceful-restart` (RFC 4724 capability with restart time 120 s).
    pub graceful_restart: bool,
    /// Lines appended to bgpd.conf at the top level (`router bgp ASN` enters the router
    /// again; `debug bgp updates` logs every UPDATE).
    pub extra: String,
}

impl FrrConfig {
    /// An EVPN speaker with no neighbour yet, hostname `frr-A-B-C-D` after the router-id,
    /// FRR's duplicate detection, no graceful restart.
    pub fn new(asn: u32, router_id: Ipv4Addr) -> Self {
        FrrConfig {
            asn,
            router_id,
            hostname: format!("frr-{}", router_id.to_string().replace('.', "-")),
            neighbours: Vec::new(),
            vnis: Vec::new(),
            dup_addr_detection: true,
            graceful_restart: false,
            extra: String::new(),
        }
    }

    /// Adds `neighbour`.
    pub fn neighbour(mut self, neighbour: Neighbour) -> Self {
        self.neighbours.push(neighbour);
        self
    }

    /// zebra.conf: zebra needs nothing but its name; the kernel's devices say the rest.
    pub fn render_zebra(&self) -> String {
        format!("hostname {}\n", self.hostname)
    }

    /// bgpd.conf.
    pub fn render_bgpd(&self) -> String {
        let mut c = String::new();
        let _ = writeln!(c, "hostname {}", self.hostname);
        let _ = writeln!(c, "router bgp {}", self.asn);
        let _ = writeln!(c, " bgp router-id {}", self.router_id);
        // No IPv4 unicast session unless asked; eBGP without a policy would send nothing.
        c.push_str(" no bgp default ipv4-unicast\n no bgp ebgp-requires-policy\n");
        c.push_str(" bgp log-neighbor-changes\n");
        if self.graceful_restart {
            c.push_str(" bgp graceful-restart\n");
        }
        for n in &self.neighbours {
            let t = n.timers;
            let _ = writeln!(c, " neighbor {} remote-as {}", n.addr, n.remote_as);
            let _ = writeln!(c, " neighbor {} timers {} {}", n.addr, t.keepalive, t.hold);
            let _ = writeln!(c, " neighbor {} timers connect {}", n.addr, t.connect);
        }
        c.push_str(" address-family l2vpn evpn\n");
        for n in &self.neighbours {
            let _ = writeln!(c, "  neighbor {} activate", n.addr);
            if n.route_reflector_client {
                let _ = writeln!(c, "  neighbor {} route-reflector-client", n.addr);
            }
        }
        c.push_str("  advertise-all-vni\n");
        if !self.dup_addr_detection {
            c.push_str("  no dup-addr-detection\n");
        }
        for v in &self.vnis {
            if v.rd.is_none() && v.route_target.is_none() {
                continue;
            }
            let _ = writeln!(c, "  vni {}", v.vni);
            if let Some(rd) = &v.rd {
                let _ = writeln!(c, "   rd {rd}");
            }
            if let Some(rt) = &v.route_target {
                let _ = writeln!(
                    c,
                    "   route-target import {rt}\n   route-target export {rt}"
                );
            }
            c.push_str("  exit-vni\n");
        }
        c.push_str(" exit-address-family\nexit\n");
        c.push_str(&self.extra);
        if !c.ends_with('\n') {
            c.push('\n');
        }
        c
    }
}

/// A daemon of the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Daemon {
    Zebra,
    Bgpd,
}

impl Daemon {
    fn name(self) -> &'static str {
        match self {
            Daemon::Zebra => "zebra",
            Daemon::Bgpd => "bgpd",
        }
    }
}

/// zebra and bgpd running in a rig namespace. See the module doc.
pub struct Frr {
    ns: String,
    config: FrrConfig,
    /// /tmp/<ns>-frr.
    dir: PathBuf,
    zebra: Option<Child>,
    bgpd: Option<Child>,
}

impl Frr {
    /// Starts zebra, then bgpd, in `ns` (an existing namespace: create its bridges and vxlan
    /// devices first, or after; zebra follows them) and waits until both answer vtysh with
    /// their config applied and bgpd is zebra's client.
    pub fn new(ns: &Netns, config: FrrConfig) -> Result<Self> {
        let dir = PathBuf::from(format!("/tmp/{}-frr", ns.name));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (uid, gid) = frr_ids()?;
        // The daemons drop to user frr: their sockets and pid files go here.
        chown(&dir, Some(uid), Some(gid))?;
        // Read by vtysh (--config_dir); empty, but present, so that vtysh does not complain.
        fs::write(dir.join("vtysh.conf"), "")?;
        let mut frr = Frr {
            ns: ns.name.clone(),
            config,
            dir,
            zebra: None,
            bgpd: None,
        };
        frr.start()?;
        Ok(frr)
    }

    /// Starts whichever of zebra and bgpd is not running (zebra first), with the config
    /// written again.
    pub fn start(&mut self) -> Result<()> {
        if self.zebra.is_none() {
            self.spawn(Daemon::Zebra)?;
        }
        if self.bgpd.is_none() {
            self.start_bgpd()?;
        }
        Ok(())
    }

    /// Starts bgpd again after [`Frr::stop`] or [`Frr::kill_bgpd`] (zebra running), with
    /// the config written again: a restarting speaker, to its peers.
    pub fn start_bgpd(&mut self) -> Result<()> {
        if self.bgpd.is_some() {
            bail!("bgpd already runs in {}", self.ns);
        }
        if self.zebra.is_none() {
            bail!("zebra is not running in {}: start() starts both", self.ns);
        }
        self.spawn(Daemon::Bgpd)
    }

    /// Stops bgpd with SIGTERM. FRR 8.4 sends no NOTIFICATION on the way out (seen on the
    /// wire, graceful restart or not): its peers see the TCP connection close, as after
    /// [`Frr::kill_bgpd`]. For a Cease NOTIFICATION use [`Frr::shutdown_neighbour`].
    pub fn stop(&mut self) -> Result<()> {
        stop_child(&mut self.bgpd, &self.ns, "bgpd")
    }

    /// Stops bgpd, then zebra (which removes the MACs and flood entries it installed).
    pub fn stop_all(&mut self) -> Result<()> {
        let bgpd = self.stop();
        let zebra = stop_child(&mut self.zebra, &self.ns, "zebra");
        bgpd.and(zebra)
    }

    /// Kills bgpd with SIGKILL: no NOTIFICATION, the kernel closes its sockets, so peers
    /// see the session end at once (not at their hold timer: see [`Frr::pause_bgpd`]).
    pub fn kill_bgpd(&mut self) {
        if let Some(mut child) = self.bgpd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes bgpd (SIGSTOP): its sessions stay open but silent, so each peer's hold
    /// timer expires (a hung speaker, or a cut underlay, as the peer sees it).
    pub fn pause_bgpd(&self) -> Result<()> {
        self.signal_bgpd(libc::SIGSTOP)
    }

    /// Wakes bgpd after [`Frr::pause_bgpd`] (SIGCONT).
    pub fn resume_bgpd(&self) -> Result<()> {
        self.signal_bgpd(libc::SIGCONT)
    }

    /// `neighbor PEER shutdown`: bgpd sends a Cease NOTIFICATION (Administrative Shutdown)
    /// and keeps the session down until `shutdown_neighbour(peer, false)`.
    pub fn shutdown_neighbour(&self, peer: Ipv4Addr, down: bool) -> Result<()> {
        let no = if down { "" } else { "no " };
        self.vtysh(&[
            "configure terminal",
            &format!("router bgp {}", self.config.asn),
            &format!("{no}neighbor {peer} shutdown"),
        ])
        .map(drop)
    }

    fn signal_bgpd(&self, signal: i32) -> Result<()> {
        let pid = self
            .bgpd_pid()
            .with_context(|| format!("bgpd is not running in {}", self.ns))?;
        // SAFETY: signalling our own child (nsenter execs bgpd).
        if unsafe { libc::kill(pid as i32, signal) } != 0 {
            bail!(
                "signal {signal} to bgpd ({pid}): {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    pub fn bgpd_running(&self) -> bool {
        self.bgpd.is_some()
    }

    pub fn zebra_running(&self) -> bool {
        self.zebra.is_some()
    }

    /// bgpd's pid while it runs.
    pub fn bgpd_pid(&self) -> Option<u32> {
        self.bgpd.as_ref().map(Child::id)
    }

    pub fn config(&self) -> &FrrConfig {
        &self.config
    }

    /// Changes the config the next start of a daemon writes.
    pub fn set_config(&mut self, config: FrrConfig) {
        self.config = config;
    }

    /// The instance's directory (configs, sockets, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pathspace the daemons and vtysh run with.
    pub fn pathspace(&self) -> &str {
        &self.ns
    }

    /// `zebra` or `bgpd`'s log (FRR's own, `--log file:`).
    pub fn log_text(&self, daemon: &str) -> String {
        fs::read_to_string(self.dir.join(format!("{daemon}.log"))).unwrap_or_default()
    }

    /// Runs vtysh with one `-c` per command, in order (so `configure terminal`, `router bgp
    /// 65000`, ... work): what it printed; an error if vtysh said a command failed.
    pub fn vtysh(&self, commands: &[&str]) -> Result<String> {
        self.vtysh_on(None, commands)
    }

    /// Runs one show command with `json` appended if missing and parses its output; no
    /// output is `{}` (FRR prints nothing for, say, the MACs of a VNI that has none).
    pub fn vtysh_json(&self, command: &str) -> Result<Value> {
        let command = if command.trim_end().ends_with(" json") {
            command.to_string()
        } else {
            format!("{command} json")
        };
        let out = self.vtysh(&[&command])?;
        if out.trim().is_empty() {
            return Ok(Value::Object(Default::default()));
        }
        serde_json::from_str(&out).with_context(|| format!("vtysh `{command}` printed {out:?}"))
    }

    /// The L2VPN EVPN neighbours and their states (`show bgp l2vpn evpn summary json`).
    pub fn summary(&self) -> Result<BTreeMap<IpAddr, PeerSummary>> {
        parse_summary(&self.vtysh_json("show bgp l2vpn evpn summary")?)
    }

    /// Waits until `peer`'s session is Established (measured on the rig: 1-2 s after the
    /// second speaker started); its summary then.
    pub fn wait_established(
        &self,
        peer: impl Into<IpAddr>,
        timeout: Duration,
    ) -> Result<PeerSummary> {
        self.wait_peer(
            peer.into(),
            timeout,
            "Established",
            PeerSummary::established,
        )
    }

    /// Waits until `peer`'s summary satisfies `done` (`what` names it in the error).
    pub fn wait_peer(
        &self,
        peer: IpAddr,
        timeout: Duration,
        what: &str,
        done: impl Fn(&PeerSummary) -> bool,
    ) -> Result<PeerSummary> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.summary()?.remove(&peer);
            if let Some(p) = last.as_ref().filter(|p| done(p)) {
                return Ok(p.clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "{peer} not {what} in {} within {timeout:?}: {last:?}\nbgpd's log:\n{}",
                    self.ns,
                    self.log_text("bgpd")
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// zebra's MACs of `vni` (`show evpn mac vni N json`), by MAC (lowercase, colons);
    /// empty for a VNI zebra does not know.
    pub fn evpn_macs(&self, vni: u32) -> Result<BTreeMap<String, EvpnMac>> {
        parse_macs(&self.vtysh_json(&format!("show evpn mac vni {vni}"))?)
    }

    /// Every path of bgpd's EVPN table (`show bgp l2vpn evpn route detail json`, which
    /// unlike the plain one has the VNI and the PMSI tunnel).
    pub fn evpn_routes(&self) -> Result<Vec<EvpnRoute>> {
        Ok(parse_routes(
            &self.vtysh_json("show bgp l2vpn evpn route detail")?,
        ))
    }

    /// Waits until `done` holds for bgpd's EVPN table; the table then.
    pub fn wait_routes(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[EvpnRoute]) -> bool,
    ) -> Result<Vec<EvpnRoute>> {
        let deadline = Instant::now() + timeout;
        loop {
            let routes = self.evpn_routes()?;
            if done(&routes) {
                return Ok(routes);
            }
            if Instant::now() > deadline {
                bail!(
                    "no {what} in {}'s EVPN table within {timeout:?}: {routes:#?}",
                    self.ns
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `done` holds for zebra's MACs of `vni`; the MACs then.
    pub fn wait_macs(
        &self,
        vni: u32,
        timeout: Duration,
        what: &str,
        done: impl Fn(&BTreeMap<String, EvpnMac>) -> bool,
    ) -> Result<BTreeMap<String, EvpnMac>> {
        let deadline = Instant::now() + timeout;
        loop {
            let macs = self.evpn_macs(vni)?;
            if done(&macs) {
                return Ok(macs);
            }
            if Instant::now() > deadline {
                bail!(
                    "no {what} among {}'s MACs of VNI {vni} within {timeout:?}: {macs:#?}",
                    self.ns
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn vtysh_on(&self, daemon: Option<Daemon>, commands: &[&str]) -> Result<String> {
        let mut c = Command::new("timeout");
        c.args([VTYSH_TIMEOUT_S, "vtysh", "--vty_socket"])
            .arg(&self.dir)
            .arg("--config_dir")
            .arg(&self.dir);
        if let Some(d) = daemon {
            c.args(["-d", d.name()]);
        }
        for cmd in commands {
            c.args(["-c", cmd]);
        }
        let out = c
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running vtysh for {}", self.ns))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "vtysh {commands:?} in {} failed ({}): {text}{}",
                self.ns,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(text)
    }

    /// Writes the daemon's config, spawns it in the namespace and waits until it is ready.
    fn spawn(&mut self, daemon: Daemon) -> Result<()> {
        let name = daemon.name();
        let conf = self.dir.join(format!("{name}.conf"));
        let text = match daemon {
            Daemon::Zebra => self.config.render_zebra(),
            Daemon::Bgpd => self.config.render_bgpd(),
        };
        fs::write(&conf, text)?;
        // stdout and stderr: what the daemon says before its log is open.
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.out")))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg(format!("{SBIN}/{name}"))
            .args(["-N", &self.ns, "-f"])
            .arg(&conf)
            .arg("-i")
            .arg(self.dir.join(format!("{name}.pid")))
            .arg("--vty_socket")
            .arg(&self.dir)
            .arg("-z")
            .arg(self.dir.join("zserv.api"))
            // No vty on TCP (2601, 2605): vtysh uses the sockets.
            .args(["-P", "0", "--log"])
            .arg(format!(
                "file:{}",
                self.dir.join(format!("{name}.log")).display()
            ))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawning {name} (Debian's frr package)"))?;
        match daemon {
            Daemon::Zebra => self.zebra = Some(child),
            Daemon::Bgpd => self.bgpd = Some(child),
        }
        self.wait_ready(daemon)
    }

    /// Until the daemon answers with its config applied (bgpd: `router bgp ASN` in its
    /// running config, and registered with zebra).
    fn wait_ready(&mut self, daemon: Daemon) -> Result<()> {
        let name = daemon.name();
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            let slot = match daemon {
                Daemon::Zebra => &mut self.zebra,
                Daemon::Bgpd => &mut self.bgpd,
            };
            if let Some(child) = slot.as_mut()
                && let Some(status) = child.try_wait()?
            {
                *slot = None;
                bail!(
                    "{name} exited ({status}) before ready in {}:\n{}{}",
                    self.ns,
                    fs::read_to_string(self.dir.join(format!("{name}.out"))).unwrap_or_default(),
                    self.log_text(name)
                );
            }
            let ready = match daemon {
                Daemon::Zebra => self.vtysh_on(Some(daemon), &["show version"]).map(|_| true),
                Daemon::Bgpd => self
                    .vtysh_on(Some(daemon), &["show running-config"])
                    .and_then(|conf| {
                        let configured = conf.contains(&format!("router bgp {}", self.config.asn));
                        let clients =
                            self.vtysh_on(Some(Daemon::Zebra), &["show zebra client summary"])?;
                        Ok(configured && clients.lines().any(|l| l.starts_with("bgp")))
                    }),
            };
            match ready {
                Ok(true) => return Ok(()),
                Ok(false) => last = "not configured or not zebra's client yet".into(),
                Err(e) => last = format!("{e:#}"),
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{name} in {} not ready within {START_TIMEOUT:?} ({last}):\n{}",
            self.ns,
            self.log_text(name)
        )
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        if self.stop_all().is_err() {
            for child in [self.bgpd.take(), self.zebra.take()].into_iter().flatten() {
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = fs::remove_dir(format!("/var/run/frr/{}", self.ns));
        if thread::panicking() {
            eprintln!("FRR's configs and logs kept: {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]; reaped.
fn stop_child(slot: &mut Option<Child>, ns: &str, name: &str) -> Result<()> {
    let Some(mut child) = slot.take() else {
        return Ok(());
    };
    if child.try_wait()?.is_none() {
        // SAFETY: signalling our own child (nsenter execs the daemon); SIGCONT in case it
        // was paused, or SIGTERM would wait.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
            libc::kill(child.id() as i32, libc::SIGCONT);
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    bail!("{name} in {ns} ignored SIGTERM for {STOP_TIMEOUT:?}")
}

/// The uid and gid of user frr (the package's), to whom the daemons drop.
fn frr_ids() -> Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == "frr")
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
        .context("no user frr: install Debian's frr package (cargo xtask does)")
}

/// The kernel side FRR needs for `vni` in `host`: bridge `br<VNI>` with vxlan device
/// `vxlan<VNI>` (UDP 4789, no learning, source `local`, over `ul`) and `vm_port`, all up. No
/// FDB entry: zebra adds the flood entry (00:00:00:00:00:00 dst VTEP) for each type-3 route
/// and the MACs of type-2 routes (extern_learn). Without an address on the bridge (an SVI)
/// FRR sends MAC-only type-2 routes; with one it also learns the VMs' IPs from its ARP
/// and sends MAC/IP routes.
pub fn evpn_vni(host: &Netns, vni: u32, local: &str, vm_port: &str) -> Result<()> {
    let (bridge, vx) = evpn_devices(vni);
    overlay::kernel_vxlan_bridge(host, vni, &bridge, &vx, local, vm_port)
}

/// The bridge and vxlan device names of [`evpn_vni`].
pub fn evpn_devices(vni: u32) -> (String, String) {
    (format!("br{vni}"), format!("vxlan{vni}"))
}

/// One neighbour of `show bgp l2vpn evpn summary json`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct PeerSummary {
    /// "Idle", "Connect", "Active", "OpenSent", "OpenConfirm", "Established", ...
    pub state: String,
    pub remote_as: u32,
    pub local_as: u32,
    /// Prefixes received and sent (all EVPN routes, any type).
    pub pfx_rcd: u64,
    pub pfx_snt: u64,
    pub msg_rcvd: u64,
    pub msg_sent: u64,
    pub peer_uptime_msec: u64,
    pub connections_established: u64,
    pub connections_dropped: u64,
}

impl PeerSummary {
    pub fn established(&self) -> bool {
        self.state == "Established"
    }
}

/// Where zebra has a MAC.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MacType {
    /// Learned on a bridge port (a VM's).
    Local,
    /// From a type-2 route: behind `remote_vtep`.
    Remote,
    /// Anything else (FRR's "auto", for one).
    #[serde(other)]
    Other,
}

/// One MAC of `show evpn mac vni N json`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EvpnMac {
    #[serde(rename = "type")]
    pub kind: MacType,
    /// The bridge port of a local MAC.
    pub intf: Option<String>,
    pub remote_vtep: Option<Ipv4Addr>,
    /// MAC mobility sequence numbers: the one this VTEP advertises, the best it received.
    #[serde(default)]
    pub local_sequence: u32,
    #[serde(default)]
    pub remote_sequence: u32,
    #[serde(default)]
    pub detection_count: u32,
    /// Frozen by duplicate address detection.
    #[serde(default)]
    pub is_duplicate: bool,
}

/// One path of bgpd's EVPN table, as `show bgp l2vpn evpn route detail json` gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvpnRoute {
    /// e.g. "10.0.0.1:2" (FRR's auto RD: router-id and a per-VNI index).
    pub rd: String,
    /// FRR's text, e.g. "[2]:[0]:[48]:[02:00:00:00:01:01]:[32]:[192.168.10.1]".
    pub prefix: String,
    /// 2 MAC/IP, 3 inclusive multicast, ...
    pub route_type: u8,
    pub eth_tag: u32,
    pub mac: Option<String>,
    /// Type 2: the IP, if any; type 3: the originator.
    pub ip: Option<IpAddr>,
    pub next_hop: Option<IpAddr>,
    /// Type 2: label 1; type 3: the PMSI tunnel's label.
    pub vni: Option<u32>,
    /// Type 3: "Ingress Replication".
    pub pmsi_tunnel: Option<String>,
    /// "65000:100", in FRR's order.
    pub route_targets: Vec<String>,
    /// Tunnel encapsulation (extended community type 0x03 sub-type 0x0c): 8 is VXLAN.
    pub encap: Option<u16>,
    /// MAC mobility sequence (extended community 0x06 0x00), when sent.
    pub mac_mobility_seq: Option<u32>,
    pub sticky: bool,
    /// FRR's text of all the extended communities, e.g. "RT:65000:100 ET:8 MM:1".
    pub ext_community: String,
    /// The peer it came from; None for a route of this VTEP.
    pub peer: Option<IpAddr>,
    pub best: bool,
    pub valid: bool,
    /// Kept through a peer's graceful restart.
    pub stale: bool,
}

impl EvpnRoute {
    /// A route of this VTEP (from zebra), not received.
    pub fn local(&self) -> bool {
        self.peer.is_none()
    }

    /// The MAC's route, lowercase with colons.
    pub fn is_mac(&self, mac: &str) -> bool {
        self.route_type == 2 && self.mac.as_deref() == Some(mac)
    }
}

/// The neighbours of a `show bgp l2vpn evpn summary json` (`{}` without any).
pub fn parse_summary(v: &Value) -> Result<BTreeMap<IpAddr, PeerSummary>> {
    let Some(peers) = v.get("peers") else {
        return Ok(BTreeMap::new());
    };
    let peers: BTreeMap<String, PeerSummary> =
        serde_json::from_value(peers.clone()).with_context(|| format!("summary peers {peers}"))?;
    peers
        .into_iter()
        .map(|(addr, p)| Ok((addr.parse().with_context(|| format!("peer {addr}"))?, p)))
        .collect()
}

/// The MACs of a `show evpn mac vni N json` (no "macs": none).
pub fn parse_macs(v: &Value) -> Result<BTreeMap<String, EvpnMac>> {
    match v.get("macs") {
        Some(macs) => serde_json::from_value(macs.clone()).with_context(|| format!("macs {macs}")),
        None => Ok(BTreeMap::new()),
    }
}

/// The paths of a `show bgp l2vpn evpn route detail json` (RD -> prefix -> paths, each
/// a list of lists); keys that are not RDs ("numPrefix") are skipped.
pub fn parse_routes(v: &Value) -> Vec<EvpnRoute> {
    let mut routes = Vec::new();
    let Some(rds) = v.as_object() else {
        return routes;
    };
    for (rd, prefixes) in rds {
        let Some(prefixes) = prefixes.as_object() else {
            continue;
        };
        for (prefix, p) in prefixes {
            let Some(paths) = p.get("paths").and_then(Value::as_array) else {
                continue;
            };
            let flat = paths
                .iter()
                .flat_map(|g| g.as_array().cloned().unwrap_or_else(|| vec![g.clone()]));
            for path in flat {
                routes.push(parse_path(rd, prefix, p, &path));
            }
        }
    }
    routes
}

fn parse_path(rd: &str, prefix: &str, p: &Value, path: &Value) -> EvpnRoute {
    let field = |k: &str| p.get(k).or_else(|| path.get(k));
    let ext_community = path
        .pointer("/extendedCommunity/string")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut route_targets = Vec::new();
    let mut encap = None;
    let mut mac_mobility_seq = None;
    for token in ext_community.split_whitespace() {
        if let Some(rt) = token.strip_prefix("RT:") {
            route_targets.push(rt.to_string());
        } else if let Some(et) = token.strip_prefix("ET:") {
            encap = et.parse().ok();
        } else if let Some(mm) = token.strip_prefix("MM:") {
            mac_mobility_seq = mm.trim_end_matches(',').parse().ok();
        }
    }
    let peer = path
        .pointer("/peer/peerId")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_unspecified() && !bool_at(path, "/local"));
    let best = bool_at(path, "/bestpath/overall") || bool_at(path, "/bestpath");
    EvpnRoute {
        rd: rd.to_string(),
        prefix: prefix.to_string(),
        route_type: field("routeType").and_then(as_u32).unwrap_or(0) as u8,
        eth_tag: field("ethTag").and_then(as_u32).unwrap_or(0),
        mac: field("mac").and_then(Value::as_str).map(str::to_string),
        ip: field("ip")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok()),
        next_hop: path
            .pointer("/nexthops/0/ip")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok()),
        vni: path
            .get("vni")
            .and_then(as_u32)
            .or_else(|| path.pointer("/pmsi/label").and_then(as_u32)),
        pmsi_tunnel: path
            .pointer("/pmsi/tunnelType")
            .and_then(Value::as_str)
            .map(str::to_string),
        route_targets,
        encap,
        mac_mobility_seq,
        sticky: ext_community.contains("sticky MAC"),
        ext_community,
        peer,
        best,
        valid: bool_at(path, "/valid"),
        stale: bool_at(path, "/stale"),
    }
}

fn bool_at(v: &Value, pointer: &str) -> bool {
    v.pointer(pointer).and_then(Value::as_bool).unwrap_or(false)
}

/// A number FRR prints as a number or as a string ("vni": "100").
fn as_u32(v: &Value) -> Option<u32> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// One BGP message of a capture, marker to end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpMessage {
    pub src: IpAddr,
    /// In the order its sender sent it.
    pub index: usize,
    pub bytes: Vec<u8>,
}

impl BgpMessage {
    /// 1 OPEN, 2 UPDATE, 3 NOTIFICATION, 4 KEEPALIVE, 5 ROUTE-REFRESH.
    pub fn kind(&self) -> u8 {
        self.bytes[18]
    }

    /// Lowercase hex, 16 bytes a line (the golden files' format).
    pub fn hex(&self) -> String {
        let mut s = String::new();
        for line in self.bytes.chunks(16) {
            let bytes: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
            s.push_str(&bytes.join(" "));
            s.push('\n');
        }
        s
    }
}

/// The BGP messages of every TCP port-179 stream in the pcap `file` (tcpdump -w, whole
/// packets), reassembled per direction (retransmitted bytes skipped) and split at each
/// message's length; in capture order per sender.
pub fn bgp_messages(file: &Path) -> Result<Vec<BgpMessage>> {
    let lines = crate::overlay::tshark_fields(
        file,
        "tcp.port == 179 && tcp.len > 0",
        &[
            "ip.src",
            "tcp.srcport",
            "tcp.dstport",
            "tcp.seq",
            "tcp.payload",
        ],
    )?;
    // Per direction (src, sport, dport): the next sequence number and the bytes not yet a
    // whole message.
    let mut streams: BTreeMap<(String, String, String), (u64, Vec<u8>)> = BTreeMap::new();
    let mut messages = Vec::new();
    let mut counts: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for f in &lines {
        if f.len() < 5 {
            continue;
        }
        let src: IpAddr = f[0].parse().with_context(|| format!("ip.src {}", f[0]))?;
        let seq: u64 = f[3].parse().with_context(|| format!("tcp.seq {}", f[3]))?;
        let payload = unhex(&f[4]).with_context(|| format!("tcp.payload of {f:?}"))?;
        let key = (f[0].to_string(), f[1].to_string(), f[2].to_string());
        let (next, buf) = streams.entry(key).or_insert((seq, Vec::new()));
        let end = seq + payload.len() as u64;
        if end <= *next {
            continue;
        }
        let skip = next.saturating_sub(seq) as usize;
        buf.extend_from_slice(&payload[skip..]);
        *next = end;
        while buf.len() >= 19 {
            if buf[..16] != [0xff; 16] {
                bail!(
                    "no BGP marker in the stream from {src}: {:02x?}",
                    &buf[..19]
                );
            }
            let len = usize::from(u16::from_be_bytes([buf[16], buf[17]]));
            if !(19..=65535).contains(&len) {
                bail!("BGP length {len} from {src}");
            }
            if buf.len() < len {
                break;
            }
            let bytes: Vec<u8> = buf.drain(..len).collect();
            let n = counts.entry(src).or_default();
            messages.push(BgpMessage {
                src,
                index: *n,
                bytes,
            });
            *n += 1;
        }
    }
    Ok(messages)
}

/// Bytes from hex, whitespace and colons ignored.
pub fn unhex(s: &str) -> Result<Vec<u8>> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b':')
        .collect();
    if !digits.len().is_multiple_of(2) {
        bail!("odd number of hex digits");
    }
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p)?, 16).context("not hex"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        overlay::{Capture, H1_VTEP, H2_VTEP, VM1_IP, VM1_MAC, VM2_IP, VM2_MAC},
        rig::{Vm, mac_str, require_root, veth},
    };

    const ASN: u32 = 65000;
    const VNI: u32 = 100;
    const H1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const H2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    /// The address h2's bridge gets (its SVI), so that FRR learns VM2's IP from ARP.
    const H2_SVI: &str = "192.168.10.254/24";
    const VM3_IP: &str = "192.168.10.3";
    /// `NVE_EVPN_GOLDEN=write` makes the pair test write tests/data/evpn/.
    const GOLDEN_ENV: &str = "NVE_EVPN_GOLDEN";

    /// A namespace named `frig-<pid>-<tag>`, outside the suite's `nvet-` prefix (which the
    /// suite sweeps), deleted on drop.
    fn frig_netns(tag: &str) -> Netns {
        let name = format!("frig-{}-{tag}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        crate::rig::run(&["ip", "netns", "add", &name]).unwrap();
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]).unwrap();
        ns
    }

    /// A VM without IPv6: its router solicitations, seconds after its link came up, would
    /// make the bridge learn its MAC again after a move and take the MAC back.
    fn vm(tag: &str, host: &Netns, port: &str, mac: [u8; 6], ip: &str) -> Vm {
        let ns = frig_netns(tag);
        ns.exec(&[
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ])
        .unwrap();
        Vm::in_ns(ns, host, port, mac, ip).unwrap()
    }

    /// iBGP in AS 65000 between `me` and `peer`, graceful restart on.
    fn config(me: Ipv4Addr, peer: Ipv4Addr) -> FrrConfig {
        let mut c = FrrConfig::new(ASN, me).neighbour(Neighbour::new(peer, ASN));
        c.graceful_restart = true;
        c
    }

    /// Hosts h1 and h2 over a veth `ul`, each with br100/vxlan100 and a VM port.
    fn hosts(tag: &str) -> (Netns, Netns) {
        let h1 = frig_netns(&format!("{tag}h1"));
        let h2 = frig_netns(&format!("{tag}h2"));
        veth(&h1, "ul", &h2, "ul", 1500).unwrap();
        h1.ip(&["addr", "add", &format!("{H1_VTEP}/24"), "dev", "ul"])
            .unwrap();
        h2.ip(&["addr", "add", &format!("{H2_VTEP}/24"), "dev", "ul"])
            .unwrap();
        (h1, h2)
    }

    /// What the pair test needs to know of an UPDATE.
    #[derive(Debug, Default)]
    struct Update {
        /// MP_REACH_NLRI's EVPN routes: (route type, route bytes).
        reach: Vec<(u8, Vec<u8>)>,
        unreach: Vec<(u8, Vec<u8>)>,
        /// An MP_UNREACH_NLRI with no route: End-of-RIB.
        eor: bool,
        ext_communities: Vec<[u8; 8]>,
    }

    impl Update {
        fn parse(b: &[u8]) -> Update {
            let mut u = Update::default();
            let wlen = usize::from(u16::from_be_bytes([b[19], b[20]]));
            let mut i = 21 + wlen + 2;
            while i < b.len() {
                let (flags, code) = (b[i], b[i + 1]);
                let (len, hdr) = if flags & 0x10 != 0 {
                    (usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]])), 4)
                } else {
                    (usize::from(b[i + 2]), 3)
                };
                let v = &b[i + hdr..i + hdr + len];
                match code {
                    14 => u.reach = routes(&v[5 + usize::from(v[3])..]),
                    15 => {
                        u.unreach = routes(&v[3..]);
                        u.eor = u.unreach.is_empty();
                    }
                    16 => u.ext_communities = v.chunks(8).map(|c| c.try_into().unwrap()).collect(),
                    _ => {}
                }
                i += hdr + len;
            }
            u
        }

        /// A type-2 route's MAC and IP length.
        fn macs(routes: &[(u8, Vec<u8>)]) -> Vec<([u8; 6], u8)> {
            routes
                .iter()
                .filter(|(t, _)| *t == 2)
                .map(|(_, r)| (r[23..29].try_into().unwrap(), r[29]))
                .collect()
        }

        fn mac_mobility(&self) -> bool {
            self.ext_communities.iter().any(|c| c[..2] == [0x06, 0x00])
        }
    }

    fn routes(mut nlri: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut v = Vec::new();
        while nlri.len() >= 2 {
            let len = usize::from(nlri[1]);
            v.push((nlri[0], nlri[2..2 + len].to_vec()));
            nlri = &nlri[2 + len..];
        }
        v
    }

    /// Two FRR speakers over a veth (iBGP, VNI 100 on both, a VM behind each bridge): the
    /// session, type-3 routes each way, the VMs talking through the kernel's vxlan devices,
    /// each side's MAC remote at the other. Then a MAC/IP route (h2's bridge gets an
    /// address), a withdrawal (vm1's port down) and a MAC move (vm2's MAC appears behind
    /// h1). The session is captured on h1's `ul`; with NVE_EVPN_GOLDEN=write the test writes
    /// the golden messages and vtysh outputs under tests/data/evpn/.
    #[test]
    #[ignore = "root and FRR: cargo test -p nve-tests --lib frr -- --ignored"]
    fn frr_evpn_pair() {
        require_root();
        let (h1, h2) = hosts("p");
        let vm1 = vm("pvm1", &h1, "vm1p", VM1_MAC, VM1_IP);
        let vm2 = vm("pvm2", &h2, "vm2p", VM2_MAC, VM2_IP);
        evpn_vni(&h1, VNI, H1_VTEP, "vm1p").unwrap();
        evpn_vni(&h2, VNI, H2_VTEP, "vm2p").unwrap();
        let cap = Capture::start_full(&h1, "ul", "tcp port 179").unwrap();

        let t0 = Instant::now();
        let f1 = Frr::new(&h1, config(H1, H2)).unwrap();
        let f2 = Frr::new(&h2, config(H2, H1)).unwrap();
        eprintln!("both FRR ready after {:?}", t0.elapsed());
        f1.wait_established(H2, Duration::from_secs(30)).unwrap();
        f2.wait_established(H1, Duration::from_secs(30)).unwrap();
        eprintln!("Established after {:?}", t0.elapsed());

        // Type 3 each way: the flood list.
        for (f, peer) in [(&f1, H2), (&f2, H1)] {
            let routes = f
                .wait_routes(Duration::from_secs(10), "type-3 route of the peer", |rs| {
                    rs.iter()
                        .any(|r| r.route_type == 3 && r.peer == Some(peer.into()))
                })
                .unwrap();
            let r = routes
                .iter()
                .find(|r| r.route_type == 3 && r.peer == Some(peer.into()))
                .unwrap();
            assert_eq!(r.ip, Some(peer.into()), "{r:?}");
            assert_eq!(r.next_hop, Some(peer.into()), "{r:?}");
            assert_eq!(r.vni, Some(VNI), "{r:?}");
            assert_eq!(
                r.pmsi_tunnel.as_deref(),
                Some("Ingress Replication"),
                "{r:?}"
            );
            assert_eq!(r.route_targets, ["65000:100"], "{r:?}");
            assert_eq!(r.encap, Some(8), "{r:?}");
        }
        eprintln!("type-3 routes both ways after {:?}", t0.elapsed());
        let (_, vx) = evpn_devices(VNI);
        let fdb = h1.exec(&["bridge", "fdb", "show", "dev", &vx]).unwrap();
        assert!(
            fdb.contains(&format!("00:00:00:00:00:00 dst {H2_VTEP}")),
            "{fdb}"
        );

        vm1.ping_until_reachable(VM2_IP, 10).unwrap();
        vm1.ping(VM2_IP, 3).unwrap();
        vm2.ping(VM1_IP, 3).unwrap();
        for (f, mac, vtep) in [(&f1, VM2_MAC, H2), (&f2, VM1_MAC, H1)] {
            let mac = mac_str(mac);
            let macs = f
                .wait_macs(VNI, Duration::from_secs(10), "remote VM MAC", |m| {
                    m.get(&mac).is_some_and(|m| m.kind == MacType::Remote)
                })
                .unwrap();
            assert_eq!(macs[&mac].remote_vtep, Some(vtep), "{macs:?}");
        }
        let own = f1.evpn_macs(VNI).unwrap();
        assert_eq!(own[&mac_str(VM1_MAC)].kind, MacType::Local, "{own:?}");
        assert_eq!(
            own[&mac_str(VM1_MAC)].intf.as_deref(),
            Some("vm1p"),
            "{own:?}"
        );
        let fdb = h1.exec(&["bridge", "fdb", "show", "dev", &vx]).unwrap();
        assert!(
            fdb.contains(&format!("{} dst {H2_VTEP}", mac_str(VM2_MAC))),
            "{fdb}"
        );
        let summary = f1.summary().unwrap();
        eprintln!("h1's summary: {summary:?}");
        assert!(summary[&IpAddr::from(H2)].pfx_rcd >= 2);
        let outputs = [
            (
                "route-detail",
                f1.vtysh(&["show bgp l2vpn evpn route detail json"])
                    .unwrap(),
            ),
            (
                "mac-vni",
                f1.vtysh(&["show evpn mac vni 100 json"]).unwrap(),
            ),
            (
                "summary",
                f1.vtysh(&["show bgp l2vpn evpn summary json"]).unwrap(),
            ),
        ];

        // A MAC/IP route: with an address on h2's bridge, zebra learns VM2's IP from ARP.
        let (br, _) = evpn_devices(VNI);
        h2.ip(&["addr", "add", H2_SVI, "dev", &br]).unwrap();
        h2.exec(&["ping", "-c", "1", "-W", "2", VM2_IP]).unwrap();
        let vm2_ip: IpAddr = VM2_IP.parse().unwrap();
        f1.wait_routes(Duration::from_secs(10), "VM2's MAC/IP route", |rs| {
            rs.iter()
                .any(|r| r.is_mac(&mac_str(VM2_MAC)) && r.ip == Some(vm2_ip))
        })
        .unwrap();

        // A withdrawal: vm1's port down flushes its MAC from h1's bridge.
        h1.ip(&["link", "set", "vm1p", "down"]).unwrap();
        f2.wait_macs(VNI, Duration::from_secs(10), "VM1's MAC gone", |m| {
            !m.contains_key(&mac_str(VM1_MAC))
        })
        .unwrap();
        f2.wait_routes(Duration::from_secs(10), "VM1's route withdrawn", |rs| {
            !rs.iter().any(|r| r.is_mac(&mac_str(VM1_MAC)))
        })
        .unwrap();

        // A move: VM2's MAC appears behind h1 while h2 still has it: h1 sends MAC mobility.
        let vm3 = vm("pvm3", &h1, "vm3p", VM2_MAC, VM3_IP);
        h1.ip(&["link", "set", "vm3p", "master", &br, "up"])
            .unwrap();
        let _ = vm3
            .ns
            .exec(&["ping", "-c", "1", "-W", "1", "192.168.10.254"]);
        let moved = f1
            .wait_routes(
                Duration::from_secs(10),
                "VM2's MAC local with MAC mobility",
                |rs| {
                    rs.iter().any(|r| {
                        r.is_mac(&mac_str(VM2_MAC)) && r.local() && r.mac_mobility_seq.is_some()
                    })
                },
            )
            .unwrap();
        eprintln!(
            "after the move: {:?}",
            moved
                .iter()
                .filter(|r| r.is_mac(&mac_str(VM2_MAC)))
                .collect::<Vec<_>>()
        );
        // h2 takes the move: the MAC is remote there now, behind h1, sequence 1.
        let there = f2
            .wait_macs(VNI, Duration::from_secs(10), "VM2's MAC moved to h1", |m| {
                m.get(&mac_str(VM2_MAC))
                    .is_some_and(|m| m.kind == MacType::Remote && m.remote_vtep == Some(H1))
            })
            .unwrap();
        assert_eq!(there[&mac_str(VM2_MAC)].remote_sequence, 1, "{there:?}");
        // Past the last UPDATE's way to the capture.
        thread::sleep(Duration::from_millis(500));
        let moved_detail = f1
            .vtysh(&["show bgp l2vpn evpn route detail json"])
            .unwrap();

        let pcap = PathBuf::from(format!("/tmp/{}-bgp.pcap", h1.name));
        cap.finish_pcap(&pcap).unwrap();
        let messages = bgp_messages(&pcap).unwrap();
        let h1_ip = IpAddr::from(H1);
        let h2_ip = IpAddr::from(H2);
        let find = |what: &str, src: IpAddr, pick: &dyn Fn(&Update) -> bool| -> BgpMessage {
            messages
                .iter()
                .find(|m| m.src == src && m.kind() == 2 && pick(&Update::parse(&m.bytes)))
                .cloned()
                .unwrap_or_else(|| panic!("no {what} from {src} among {} messages", messages.len()))
        };
        let vm1_mac_only = |r: &[(u8, Vec<u8>)]| Update::macs(r).contains(&(VM1_MAC, 0));
        let open = messages
            .iter()
            .find(|m| m.src == h1_ip && m.kind() == 1)
            .cloned()
            .expect("h1's OPEN");
        let golden = [
            ("open", open),
            (
                "update-type3-reach",
                find("type-3 MP_REACH", h1_ip, &|u| {
                    u.reach.iter().any(|(t, _)| *t == 3)
                }),
            ),
            (
                "update-type2-mac-reach",
                find("VM1's type-2 MP_REACH", h1_ip, &|u| vm1_mac_only(&u.reach)),
            ),
            ("update-eor", find("End-of-RIB", h1_ip, &|u| u.eor)),
            (
                "update-type2-macip-reach",
                find("VM2's MAC/IP MP_REACH", h2_ip, &|u| {
                    Update::macs(&u.reach).contains(&(VM2_MAC, 32))
                }),
            ),
            (
                "update-type2-unreach",
                find("VM1's type-2 MP_UNREACH", h1_ip, &|u| {
                    vm1_mac_only(&u.unreach)
                }),
            ),
            (
                "update-type2-mac-mobility",
                find("VM2's MAC from h1 with MAC mobility", h1_ip, &|u| {
                    u.mac_mobility() && Update::macs(&u.reach).iter().any(|(m, _)| *m == VM2_MAC)
                }),
            ),
        ];
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/evpn"));
        let write = std::env::var(GOLDEN_ENV).is_ok_and(|v| v == "write");
        for (name, m) in &golden {
            let file = dir.join(format!("{name}.hex"));
            if write {
                fs::create_dir_all(&dir).unwrap();
                fs::write(&file, m.hex()).unwrap();
            } else {
                let same = fs::read_to_string(&file)
                    .ok()
                    .and_then(|t| unhex(&t).ok())
                    .is_some_and(|b| b == m.bytes);
                eprintln!(
                    "{name}: {} bytes, {}",
                    m.bytes.len(),
                    if same {
                        "same as the golden file"
                    } else {
                        "NOT the golden file's bytes"
                    }
                );
            }
        }
        if write {
            fs::copy(&pcap, dir.join("session.pcap")).unwrap();
            fs::create_dir_all(dir.join("output")).unwrap();
            for (name, text) in &outputs {
                fs::write(dir.join(format!("output/{name}.json")), text).unwrap();
            }
            fs::write(dir.join("output/route-detail-moved.json"), &moved_detail).unwrap();
            eprintln!("golden files written to {}", dir.display());
        }
        let _ = fs::remove_file(&pcap);
    }

    /// Kill, pause, shutdown, stop and start. SIGKILL and SIGTERM both close the session
    /// at once without a NOTIFICATION (and, in FRR 8.4, the peer drops h2's EVPN routes
    /// with it, graceful restart or not); SIGSTOP leaves it to the hold timer; `neighbor
    /// shutdown` sends a Cease. bgpd comes back to Established each time.
    #[test]
    #[ignore = "root and FRR: cargo test -p nve-tests --lib frr -- --ignored"]
    fn frr_restart() {
        require_root();
        let (h1, h2) = hosts("r");
        let _vm1 = vm("rvm1", &h1, "vm1p", VM1_MAC, VM1_IP);
        let _vm2 = vm("rvm2", &h2, "vm2p", VM2_MAC, VM2_IP);
        evpn_vni(&h1, VNI, H1_VTEP, "vm1p").unwrap();
        evpn_vni(&h2, VNI, H2_VTEP, "vm2p").unwrap();
        let fast = |me, peer| {
            let mut c = config(me, peer);
            c.neighbours[0].timers = Timers {
                keepalive: 1,
                hold: 3,
                connect: 1,
            };
            c
        };
        let f1 = Frr::new(&h1, fast(H1, H2)).unwrap();
        let mut f2 = Frr::new(&h2, fast(H2, H1)).unwrap();
        let h2_ip = IpAddr::from(H2);
        let long = Duration::from_secs(30);
        let quick = Duration::from_secs(2);
        let down = |f: &Frr, within| {
            let t0 = Instant::now();
            f.wait_peer(h2_ip, within, "down", |p| !p.established())
                .unwrap();
            let reason = last_reset(f, H2);
            eprintln!("h1: h2 down after {:?}: {reason}", t0.elapsed());
            reason
        };
        let type3 = |rs: &[EvpnRoute]| {
            rs.iter()
                .any(|r| r.route_type == 3 && r.peer == Some(h2_ip))
        };
        let up_again = |f: &Frr, what: &str| {
            let t0 = Instant::now();
            f.wait_established(H2, long).unwrap();
            f.wait_routes(Duration::from_secs(10), "h2's type 3", type3)
                .unwrap();
            eprintln!(
                "h1: h2 Established with its type 3 {:?} after {what}",
                t0.elapsed()
            );
        };
        up_again(&f1, "start");
        let gr = f1.vtysh_json("show bgp neighbors 10.0.0.2").unwrap();
        let caps = &gr["10.0.0.2"]["neighborCapabilities"];
        assert_eq!(caps["gracefulRestart"], "advertisedAndReceived", "{caps}");

        // SIGKILL: the kernel closes the socket, h1 sees the session end at once. Graceful
        // restart was negotiated for L2VPN EVPN, yet FRR 8.4 keeps none of h2's EVPN routes
        // as stale (FRR issue #9749; EVPN graceful restart came in 2025, FRR PR #19778).
        f2.kill_bgpd();
        let reason = down(&f1, quick);
        assert!(reason.contains("Peer closed the session"), "{reason}");
        f1.wait_routes(quick, "end of h2's routes (FRR keeps them now?)", |rs| {
            !rs.iter().any(|r| r.peer == Some(h2_ip))
        })
        .unwrap();
        f2.start_bgpd().unwrap();
        up_again(&f1, "start_bgpd");

        // SIGSTOP: silence; h1's hold timer (3 s) ends it.
        f2.pause_bgpd().unwrap();
        thread::sleep(Duration::from_millis(1500));
        assert!(
            f1.summary().unwrap()[&h2_ip].established(),
            "down before the hold time"
        );
        let reason = down(&f1, Duration::from_secs(5));
        assert!(reason.contains("Hold"), "{reason}");
        f2.resume_bgpd().unwrap();
        up_again(&f1, "resume_bgpd");

        // neighbor shutdown: a Cease NOTIFICATION.
        f2.shutdown_neighbour(H1, true).unwrap();
        let reason = down(&f1, quick);
        assert!(reason.contains("Notification received"), "{reason}");
        f2.shutdown_neighbour(H1, false).unwrap();
        up_again(&f1, "no neighbor shutdown");

        // SIGTERM: no NOTIFICATION either.
        f2.stop().unwrap();
        let reason = down(&f1, quick);
        assert!(reason.contains("Peer closed the session"), "{reason}");
        f2.stop_all().unwrap();
        assert!(!f2.zebra_running() && !f2.bgpd_running());
        f2.start().unwrap();
        up_again(&f1, "start after stop_all");
        assert!(f2.vtysh(&["show nonsense"]).is_err());
    }

    /// Why bgpd last reset the session with `peer` (`show bgp neighbors PEER json`).
    fn last_reset(f: &Frr, peer: Ipv4Addr) -> String {
        let v = f.vtysh_json(&format!("show bgp neighbors {peer}")).unwrap();
        let n = &v[peer.to_string()];
        format!("{} {}", n["lastResetDueTo"], n["lastNotificationReason"])
    }

    #[test]
    fn bgpd_conf() {
        let mut c = config(H1, H2);
        c.dup_addr_detection = false;
        c.neighbours[0].route_reflector_client = true;
        c.vnis.push(VniConfig {
            vni: 100,
            rd: Some("10.0.0.1:100".into()),
            route_target: Some("65000:100".into()),
        });
        c.vnis.push(200.into());
        c.extra = "router bgp 65000\n neighbor 10.0.0.2 description h2".into();
        assert_eq!(
            c.render_bgpd(),
            "hostname frr-10-0-0-1\n\
             router bgp 65000\n \
             bgp router-id 10.0.0.1\n \
             no bgp default ipv4-unicast\n \
             no bgp ebgp-requires-policy\n \
             bgp log-neighbor-changes\n \
             bgp graceful-restart\n \
             neighbor 10.0.0.2 remote-as 65000\n \
             neighbor 10.0.0.2 timers 3 9\n \
             neighbor 10.0.0.2 timers connect 1\n \
             address-family l2vpn evpn\n  \
             neighbor 10.0.0.2 activate\n  \
             neighbor 10.0.0.2 route-reflector-client\n  \
             advertise-all-vni\n  \
             no dup-addr-detection\n  \
             vni 100\n   \
             rd 10.0.0.1:100\n   \
             route-target import 65000:100\n   \
             route-target export 65000:100\n  \
             exit-vni\n \
             exit-address-family\n\
             exit\n\
             router bgp 65000\n \
             neighbor 10.0.0.2 description h2\n"
        );
        assert_eq!(c.render_zebra(), "hostname frr-10-0-0-1\n");
    }

    fn output(name: &str) -> Value {
        let path = format!(
            "{}/data/evpn/output/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap()
    }

    fn golden(name: &str) -> Vec<u8> {
        let path = format!("{}/data/evpn/{name}.hex", env!("CARGO_MANIFEST_DIR"));
        let b =
            unhex(&fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap();
        assert_eq!(b[..16], [0xff; 16], "{name}: marker");
        assert_eq!(
            usize::from(u16::from_be_bytes([b[16], b[17]])),
            b.len(),
            "{name}: length"
        );
        b
    }

    #[test]
    fn summary_macs_routes() {
        let peers = parse_summary(&output("summary")).unwrap();
        let p = &peers[&IpAddr::from(H2)];
        assert!(p.established());
        assert_eq!(
            (p.remote_as, p.pfx_rcd, p.connections_established),
            (65000, 2, 1)
        );
        assert!(parse_summary(&serde_json::json!({})).unwrap().is_empty());

        let macs = parse_macs(&output("mac-vni")).unwrap();
        let remote = &macs[&mac_str(VM2_MAC)];
        assert_eq!(
            (remote.kind, remote.remote_vtep),
            (MacType::Remote, Some(H2))
        );
        let local = &macs[&mac_str(VM1_MAC)];
        assert_eq!(
            (local.kind, local.intf.as_deref()),
            (MacType::Local, Some("vm1p"))
        );
        assert_eq!(
            (
                local.local_sequence,
                local.remote_sequence,
                local.is_duplicate
            ),
            (0, 0, false)
        );

        let routes = parse_routes(&output("route-detail"));
        assert_eq!(routes.len(), 4, "{routes:#?}");
        let t3 = routes
            .iter()
            .find(|r| r.route_type == 3 && r.peer == Some(H2.into()))
            .unwrap();
        assert_eq!(t3.rd, "10.0.0.2:2");
        assert_eq!((t3.ip, t3.next_hop), (Some(H2.into()), Some(H2.into())));
        assert_eq!(
            (t3.vni, t3.pmsi_tunnel.as_deref()),
            (Some(100), Some("Ingress Replication"))
        );
        assert_eq!(
            (t3.route_targets.as_slice(), t3.encap),
            (&["65000:100".to_string()][..], Some(8))
        );
        assert!(t3.best && t3.valid && !t3.stale);
        let own = routes.iter().find(|r| r.is_mac(&mac_str(VM1_MAC))).unwrap();
        assert!(own.local());
        assert_eq!(
            (own.vni, own.ip, own.mac_mobility_seq),
            (Some(100), None, None)
        );

        let moved = parse_routes(&output("route-detail-moved"));
        let vm2 = mac_str(VM2_MAC);
        let mm = moved.iter().find(|r| r.is_mac(&vm2) && r.local()).unwrap();
        assert_eq!(
            (mm.rd.as_str(), mm.mac_mobility_seq),
            ("10.0.0.1:2", Some(1)),
            "{mm:?}"
        );
        // h2 took the move (sequence 1 over its 0) and withdrew its MAC and MAC/IP routes.
        assert!(
            !moved.iter().any(|r| r.is_mac(&vm2) && !r.local()),
            "{moved:#?}"
        );
    }

    /// The golden messages are whole BGP messages of what their names say.
    #[test]
    fn golden_messages() {
        let open = golden("open");
        assert_eq!(open[18], 1);
        let update = |name: &str| {
            let b = golden(name);
            assert_eq!(b[18], 2, "{name}");
            Update::parse(&b)
        };
        let t3 = update("update-type3-reach");
        assert_eq!(t3.reach.iter().map(|r| r.0).collect::<Vec<_>>(), [3]);
        assert_eq!(
            Update::macs(&update("update-type2-mac-reach").reach),
            [(VM1_MAC, 0)]
        );
        assert_eq!(
            Update::macs(&update("update-type2-macip-reach").reach),
            [(VM2_MAC, 32)]
        );
        assert_eq!(
            Update::macs(&update("update-type2-unreach").unreach),
            [(VM1_MAC, 0)]
        );
        let mm = update("update-type2-mac-mobility");
        assert!(mm.mac_mobility());
        assert_eq!(Update::macs(&mm.reach), [(VM2_MAC, 0)]);
        assert!(update("update-eor").eor);
    }
}
