//! Test rigs: network namespaces as hosts and VMs, veth underlays, nve daemons and the
//! kernel's own vxlan as the peer. Every object is named from a per-process prefix and
//! removed on drop, also when the test fails; namespaces of dead test processes are swept.
use std::{
    fs::File,
    io::{Read, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::{net::UnixStream, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::Once,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nve_user::{
    api::{FdbTarget, FdbView, StatsView, StatusView, VnicView},
    mac::MacAddr,
};

/// Every namespace a test creates starts with this.
pub const NS_PREFIX: &str = "nvet";

/// Fails the test with a clear message when not root.
pub fn require_root() {
    // SAFETY: no arguments, no side effects.
    if unsafe { libc::geteuid() } != 0 {
        panic!("nve integration tests need root (namespaces, BPF): run `cargo xtask test` as root");
    }
    static SWEEP: Once = Once::new();
    SWEEP.call_once(sweep_stale);
}

/// Removes namespaces left by test processes that no longer run.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(&format!("{NS_PREFIX}-")) else {
            continue;
        };
        let pid: u32 = rest
            .split('-')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if pid != 0 && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Runs a command; its stdout, or an error with its stderr.
pub fn run(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("spawning {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes the process `c` spawns die (SIGKILL) with the thread that spawned it: a test process
/// that dies without dropping its guards (SIGKILL) takes QEMU or libvirtd with it. Spawn
/// from the test's own thread, which drops the guard itself.
pub fn die_with_test(c: &mut Command) {
    // SAFETY: prctl only, between fork and exec.
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Spawns `c` (say, "QEMU" or "libvirtd" for the error) with no input and its output to
/// `log`, to die with the test ([`die_with_test`]).
pub fn spawn_logged(c: &mut Command, log: File, what: &str) -> Result<Child> {
    die_with_test(c);
    c.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawning {what}"))
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `nvet-<pid>-<tag>`.
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!("{NS_PREFIX}-{}-{tag}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run(&["ip", "netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    /// A command to spawn inside the namespace (network only: mounts stay the host's, so
    /// bpffs pins are the host's).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name))
            .arg(program);
        c
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A file the test wrote, removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    /// Writes `contents` to `path` (its directory created if missing).
    pub fn write(path: impl Into<PathBuf>, contents: &str) -> Result<Self> {
        let path = path.into();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A host alone: namespace `tag` whose underlay `ul` (a veth to `ulp`, both in it, up)
/// has address `cidr`. For tests of the daemon itself, where no packet needs to go far.
pub fn lone_host(tag: &str, cidr: &str) -> Result<Netns> {
    let ns = Netns::new(tag)?;
    ns.ip(&["link", "add", "ul", "type", "veth", "peer", "name", "ulp"])?;
    ns.ip(&["link", "set", "ul", "up"])?;
    ns.ip(&["link", "set", "ulp", "up"])?;
    ns.ip(&["addr", "add", cidr, "dev", "ul"])?;
    Ok(ns)
}

/// A veth pair from `a`/`a_if` to `b`/`b_if`, both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str, mtu: u32) -> Result<()> {
    let mtu = mtu.to_string();
    run(&[
        "ip", "link", "add", a_if, "netns", &a.name, "mtu", &mtu, "type", "veth", "peer", "name",
        b_if, "netns", &b.name, "mtu", &mtu,
    ])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// A VM: a namespace with `eth0` (MAC, IPv4/24, MTU 1450) whose peer `port` is in `host`.
pub struct Vm {
    pub ns: Netns,
    pub mac: [u8; 6],
    pub ip: String,
}

impl Vm {
    pub fn new(tag: &str, host: &Netns, port: &str, mac: [u8; 6], ip: &str) -> Result<Self> {
        Self::in_ns(Netns::new(tag)?, host, port, mac, ip)
    }

    /// The same VM in `ns`, a namespace the caller made (one named outside the suite's
    /// prefix, say).
    pub fn in_ns(ns: Netns, host: &Netns, port: &str, mac: [u8; 6], ip: &str) -> Result<Self> {
        veth(&ns, "eth0", host, port, 1450)?;
        let mac_s = mac_str(mac);
        ns.ip(&["link", "set", "eth0", "address", &mac_s])?;
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        Ok(Self {
            ns,
            mac,
            ip: ip.to_string(),
        })
    }

    pub fn mac_str(&self) -> String {
        mac_str(self.mac)
    }

    /// Turns IPv6 off on the VM's `eth0`: its kernel's own router solicitations, MLD
    /// reports and duplicate address probes are multicast, flooded by the NVE, and would
    /// count in a test that counts what the NVE floods.
    pub fn without_ipv6(self) -> Result<Self> {
        self.ns
            .exec(&["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"])?;
        Ok(self)
    }

    /// Gives the VM IPv6 address `cidr` (no duplicate address detection: usable at once).
    pub fn add_ipv6(&self, cidr: &str) -> Result<String> {
        self.ns
            .ip(&["-6", "addr", "add", cidr, "dev", "eth0", "nodad"])
    }

    /// `ping -c count` to `dst`; Ok when every reply came back.
    pub fn ping(&self, dst: &str, count: u32) -> Result<String> {
        self.ns.exec(&[
            "ping",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            dst,
        ])
    }

    /// Pings until one reply comes back (ARP resolution), at most `tries` times.
    pub fn ping_until_reachable(&self, dst: &str, tries: u32) -> Result<()> {
        for _ in 0..tries {
            if self.ns.exec(&["ping", "-c", "1", "-W", "1", dst]).is_ok() {
                return Ok(());
            }
        }
        bail!(
            "{dst} unreachable from {} after {tries} pings",
            self.ns.name
        )
    }
}

/// The VTEP an FDB entry points at, as `nve` writes it (`None`: a local port).
pub fn fdb_vtep(e: &FdbView) -> Option<String> {
    match &e.target {
        FdbTarget::Vtep { vtep } => Some(vtep.to_string()),
        FdbTarget::Port { .. } => None,
    }
}

pub fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The `nve` binary under test: `NVE_BIN`, else the workspace's debug build.
pub fn nve_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NVE_BIN") {
        return p.into();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/nve")
}

/// How a program is started in a host's network namespace: the ways people do it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launch {
    /// `nsenter --net=/run/netns/NS`: the caller's mount namespace.
    Nsenter,
    /// `ip netns exec NS`: a private mount namespace with a fresh /sys.
    IpNetnsExec,
}

impl Launch {
    /// The command line that runs a program in namespace `ns`, before the program.
    fn prefix(self, ns: &str) -> Vec<String> {
        match self {
            Launch::Nsenter => vec!["nsenter".into(), format!("--net=/run/netns/{ns}")],
            Launch::IpNetnsExec => ["ip", "netns", "exec", ns].map(String::from).to_vec(),
        }
    }
}

/// An `nve daemon` in a host namespace. Stopped on drop, and everything of its instance
/// (dataplane, state dir) removed.
pub struct Daemon {
    child: Child,
    pub instance: String,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// What runs `nve` in the host's namespace (see [`Launch`]).
    launcher: Vec<String>,
    /// The command line and its environment, for respawning.
    command: Vec<String>,
    env: Vec<(String, String)>,
}

impl Daemon {
    /// Starts `nve daemon --teardown-on-exit` in `host` and waits for its socket.
    pub fn start(
        host: &Netns,
        tag: &str,
        vtep: &str,
        underlay: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let mut args = vec!["--teardown-on-exit"];
        args.extend_from_slice(extra);
        Self::start_keeping(host, tag, vtep, underlay, &args)
    }

    /// Starts `nve daemon` (which keeps its dataplane when it stops) and waits for it.
    pub fn start_keeping(
        host: &Netns,
        tag: &str,
        vtep: &str,
        underlay: &str,
        extra: &[&str],
    ) -> Result<Self> {
        Self::start_keeping_by(Launch::Nsenter, host, tag, vtep, underlay, extra)
    }

    /// As [`Daemon::start_keeping`], started the way `launch` says.
    pub fn start_keeping_by(
        launch: Launch,
        host: &Netns,
        tag: &str,
        vtep: &str,
        underlay: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let mut args = vec!["--vtep", vtep, "--underlay", underlay];
        args.extend_from_slice(extra);
        let mut d = Self::spawn(launch.prefix(&host.name), tag, &args, &[])?;
        d.wait_ready()?;
        Ok(d)
    }

    /// The name of test instance `tag` (what `--instance` says).
    pub fn instance_name(tag: &str) -> String {
        format!("{NS_PREFIX}{}{tag}", std::process::id())
    }

    /// Spawns `nve --instance <instance> daemon ARGS` with `env` in `host`, behind `wrapper`
    /// (e.g. `setpriv ...`), the settings from `args` and whatever config file they (or the
    /// instance's default) name; does not wait for it.
    pub fn spawn_in(
        host: &Netns,
        tag: &str,
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let mut launcher = Launch::Nsenter.prefix(&host.name);
        launcher.extend(wrapper.iter().map(|s| s.to_string()));
        Self::spawn(launcher, tag, args, env)
    }

    /// As [`Daemon::spawn_in`] without a wrapper, and waits for the socket.
    pub fn start_in(host: &Netns, tag: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let mut d = Self::spawn_in(host, tag, &[], args, env)?;
        d.wait_ready()?;
        Ok(d)
    }

    fn spawn(
        launcher: Vec<String>,
        tag: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let instance = Self::instance_name(tag);
        let socket = PathBuf::from(format!("/run/nve/{instance}.sock"));
        let log = PathBuf::from(format!("/tmp/{instance}.log"));
        let _ = std::fs::remove_file(&log);
        let mut command = launcher.clone();
        command.push(nve_bin().to_str().context("nve path")?.to_string());
        command.extend(
            ["--instance", &instance, "daemon"]
                .iter()
                .chain(args)
                .map(|s| s.to_string()),
        );
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let child = spawn(&command, &env, &log)?;
        Ok(Self {
            child,
            instance,
            socket,
            log,
            launcher,
            command,
            env,
        })
    }

    /// The daemon's process id (nsenter and ip netns exec exec it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the daemon with SIGKILL (no cleanup of any kind) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the daemon again with the same command line and waits for it.
    pub fn respawn(&mut self) -> Result<()> {
        self.child = spawn(&self.command, &self.env, &self.log)?;
        self.wait_ready()
    }

    /// Runs `nve teardown` for this instance (the daemon must be stopped).
    pub fn teardown(&self) -> Result<String> {
        let nve = nve_bin();
        let mut args: Vec<&str> = self.launcher.iter().map(String::as_str).collect();
        args.extend([
            nve.to_str().context("nve path")?,
            "--instance",
            &self.instance,
            "teardown",
        ]);
        run(&args)
    }

    /// Waits until the daemon's socket accepts a connection (or it exited: an error with
    /// its log).
    pub fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "nve daemon exited ({status}) before ready:\n{}",
                    self.log_text()
                );
            }
            if UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!("nve daemon not ready after 30 s:\n{}", self.log_text())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the `nve` CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(nve_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running nve CLI")
    }

    /// Runs the CLI; its stdout, or an error with its stderr.
    pub fn nve(&self, args: &[&str]) -> Result<String> {
        let out = self.cli(args);
        if !out.status.success() {
            bail!("nve {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `nve stats --json`, as JSON.
    pub fn stats(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.nve(&["stats", "--json"])?)?)
    }

    /// `nve stats --json`, as nve-user's own type.
    pub fn stats_view(&self) -> Result<StatsView> {
        self.json(&["stats", "--json"])
    }

    /// Packets counted for `outcome` at `hook`.
    pub fn counter(&self, hook: &str, outcome: &str) -> Result<u64> {
        let stats = self.stats_view()?;
        let counted = stats.hooks.get(hook).and_then(|h| h.get(outcome));
        Ok(counted.map_or(0, |c| c.packets))
    }

    /// `nve status --json`.
    pub fn status(&self) -> Result<StatusView> {
        self.json(&["status", "--json"])
    }

    /// `nve fdb --json`: every entry.
    pub fn fdb(&self) -> Result<Vec<FdbView>> {
        self.json(&["fdb", "--json"])
    }

    /// `nve fdb --mac MAC --json`: the entries for `mac`.
    pub fn fdb_of(&self, mac: [u8; 6]) -> Result<Vec<FdbView>> {
        self.json(&["fdb", "--mac", &mac_str(mac), "--json"])
    }

    /// Whether the FDB has `mac` behind `vtep` (an address as `nve` writes it), installed
    /// from the NVA.
    pub fn has_from_nva(&self, mac: [u8; 6], vtep: &str) -> Result<bool> {
        Ok(self
            .fdb()?
            .iter()
            .any(|e| e.mac == MacAddr(mac) && fdb_vtep(e).as_deref() == Some(vtep) && e.from_nva))
    }

    /// `nve vm list --json`: every vNIC.
    pub fn vnics(&self) -> Result<Vec<VnicView>> {
        self.json(&["vm", "list", "--json"])
    }

    /// Runs the CLI (`args` ask for `--json`) and reads what it prints as a `T`.
    fn json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> Result<T> {
        let out = self.nve(args)?;
        serde_json::from_str(&out).with_context(|| format!("nve {args:?} printed {out}"))
    }

    /// Waits until the daemon has resolved the underlay next hop of `vtep`.
    pub fn wait_next_hop(&self, vtep: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let s = self.status()?;
            if s.next_hops.iter().any(|n| n.vtep.to_string() == vtep) {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!("next hop of {vtep} not resolved after 10 s")
    }

    /// One raw HTTP/1.1 request on the API socket: (status, body).
    pub fn http(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, String)> {
        http(&self.socket, method, path, body)
    }

    /// Stops the daemon with SIGTERM and returns its exit status.
    pub fn stop(mut self) -> Result<std::process::ExitStatus> {
        self.terminate()
    }

    /// Stops the daemon with SIGTERM, keeping the guard (to respawn it).
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        bail!("nve daemon ignored SIGTERM for 10 s")
    }

    /// Sends the daemon `signal` (e.g. libc::SIGHUP).
    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/nve/{}", self.instance))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.terminate();
        }
        let _ = self.child.wait();
        let _ = self.teardown();
        let _ = std::fs::remove_dir_all(format!("/var/lib/nve/{}", self.instance));
        // The log is kept when the test failed, for reading.
        if !thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
        let _ = std::fs::remove_dir_all(self.pin_dir());
        let _ = std::fs::remove_dir("/sys/fs/bpf/nve");
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(format!("/run/nve/{}.lock", self.instance));
    }
}

fn spawn(command: &[String], env: &[(String, String)], log: &Path) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Command::new(&command[0])
        .args(&command[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("spawning nve daemon")
}

/// One raw HTTP/1.1 request on a Unix socket: (status, body).
pub fn http(socket: &Path, method: &str, path: &str, body: &[u8]) -> Result<(u16, String)> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: nve\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad HTTP response {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Makes reads on `fd` give up after `timeout` (SO_RCVTIMEO), so a receiving loop stays
/// bounded.
pub fn recv_timeout(fd: &impl AsRawFd, timeout: Duration) -> Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt with a timeval of the size given, on a descriptor the caller owns.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as u32,
        )
    };
    if rc != 0 {
        bail!("SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// An ethertype for local experiments (IEEE 802): frames nothing else sends.
pub const PROBE_ETHERTYPE: u16 = 0x88b5;

/// Runs `f` on a thread of its own inside `ns`'s network namespace: the sockets it opens
/// stay in `ns` wherever they are used.
pub fn in_netns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns_path = ns.path();
    thread::spawn(move || -> Result<T> {
        let target = File::open(&ns_path)?;
        // SAFETY: setns on this thread only.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

/// An AF_PACKET socket on `iface` inside `ns`, receiving `ethertype` (it sends any frame).
pub fn packet_socket(ns: &Netns, iface: &str, ethertype: u16) -> Result<OwnedFd> {
    let iface = iface.to_string();
    in_netns(ns, move || -> Result<OwnedFd> {
        let proto = ethertype.to_be() as i32;
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor we just opened.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(iface)?;
        // SAFETY: NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        // SAFETY: zeroed sockaddr_ll, then filled.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ethertype.to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: bind with a sockaddr_ll of the right size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            bail!("bind: {}", std::io::Error::last_os_error());
        }
        Ok(fd)
    })
}

/// Sends `frames` as they are on `iface` inside `ns` (a VM's announcements, say).
pub fn send_frames(ns: &Netns, iface: &str, frames: &[Vec<u8>]) -> Result<()> {
    let fd = packet_socket(ns, iface, PROBE_ETHERTYPE)?;
    for frame in frames {
        // SAFETY: send(2) of a buffer we own on a descriptor we own.
        let sent = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if sent < 0 {
            bail!("send: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Polls `ok` every 100 ms for up to 10 s; panics naming `what` if it never holds.
pub fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..100 {
        if ok() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within 10 s");
}
