//! Real QEMU guests on tap devices: `qemu-system-x86_64 -accel tcg` inside a host namespace,
//! booting the guest `cargo xtask` builds (Debian's kernel, a busybox initramfs that brings up
//! virtio-net `eth0` and prints [`READY`] on the serial console), driven over QMP: live
//! migration between two namespaces over a unix socket, with QEMU's own announcements.
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::rig::{Netns, mac_str, spawn_logged};

/// What the guest's `/init` prints on the serial console once `eth0` has its address.
pub const READY: &str = "NVE-GUEST-READY";
/// What the guest's `/init` prints, with a count, when eth0 received packets
/// (`nve.rxreport`).
pub const RX_REPORT: &str = "NVE-GUEST-RX ";
/// The VMs' MTU behind nve on a 1500-byte underlay (the guest learns it from virtio-net).
pub const GUEST_MTU: u32 = 1450;

/// The guest's directory (`bzImage`, `initrd.cpio`): `NVE_GUEST_DIR`, which `cargo xtask test`
/// sets after building (or finding) it.
pub fn guest_dir() -> PathBuf {
    let dir = std::env::var_os("NVE_GUEST_DIR").map(PathBuf::from).expect(
        "NVE_GUEST_DIR is not set: run `cargo xtask test`, or `cargo xtask guest` (it builds the \
         guest and prints its directory) and export NVE_GUEST_DIR",
    );
    assert!(
        dir.join("bzImage").exists() && dir.join("initrd.cpio").exists(),
        "{} has no bzImage and initrd.cpio: run `cargo xtask guest`",
        dir.display()
    );
    dir
}

/// A QEMU process in a host namespace with one virtio-net NIC on tap `tap` (created here,
/// persistent and up, as libvirt does before it starts QEMU). Killed on drop; its tap, sockets
/// and logs go with it (the logs stay when the test failed).
pub struct Guest {
    child: Child,
    ns: String,
    pub tap: String,
    pub qmp_path: PathBuf,
    /// A second QMP monitor, for a client that only listens to events (as libvirt's event
    /// loop does) while the first one drives QEMU.
    pub events_path: PathBuf,
    pub serial_log: PathBuf,
    pub qemu_log: PathBuf,
    /// The migration socket this QEMU listens on (`-incoming`), if it is a destination.
    pub incoming: Option<PathBuf>,
    started: Instant,
}

impl Guest {
    /// Starts QEMU in `ns` (`tag` names its files) with NIC `mac` on `tap`; the guest takes
    /// `ip` (CIDR) from its command line. With `incoming`, QEMU waits for a migration on that
    /// unix socket instead of booting.
    pub fn start(
        ns: &Netns,
        tag: &str,
        tap: &str,
        mac: [u8; 6],
        ip: &str,
        incoming: Option<&Path>,
    ) -> Result<Self> {
        Self::start_with(ns, tag, tap, mac, ip, incoming, "")
    }

    /// As [`Guest::start`], with more options for the guest's init on its kernel command line
    /// (`nve.rxreport`: see [`Guest::rx_packets`]).
    pub fn start_with(
        ns: &Netns,
        tag: &str,
        tap: &str,
        mac: [u8; 6],
        ip: &str,
        incoming: Option<&Path>,
        init_options: &str,
    ) -> Result<Self> {
        let dir = guest_dir();
        let base = format!("/tmp/{}-{tag}", ns.name);
        let qmp_path = PathBuf::from(format!("{base}.qmp"));
        let events_path = PathBuf::from(format!("{base}.events.qmp"));
        let serial_log = PathBuf::from(format!("{base}.serial"));
        let qemu_log = PathBuf::from(format!("{base}.qemu.log"));
        for f in [&qmp_path, &events_path, &serial_log, &qemu_log] {
            let _ = std::fs::remove_file(f);
        }
        if let Some(sock) = incoming {
            let _ = std::fs::remove_file(sock);
        }
        ns.ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
        ns.ip(&["link", "set", tap, "mtu", &GUEST_MTU.to_string(), "up"])?;
        let log = std::fs::File::create(&qemu_log)?;
        let mut c = ns.command("qemu-system-x86_64");
        c.args(["-accel", "tcg", "-m", "256", "-smp", "1"])
            .args(["-display", "none", "-nodefaults", "-no-reboot"])
            .arg("-kernel")
            .arg(dir.join("bzImage"))
            .arg("-initrd")
            .arg(dir.join("initrd.cpio"))
            .args([
                "-append",
                &format!("console=ttyS0 panic=1 nve.ip={ip} {init_options}"),
                "-netdev",
                &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
                // No option ROM: the kernel is loaded directly, nothing boots from the network.
                "-device",
                &format!(
                    "virtio-net-pci,netdev=n0,mac={},host_mtu={GUEST_MTU},romfile=",
                    mac_str(mac)
                ),
                "-qmp",
                &format!("unix:{},server=on,wait=off", qmp_path.display()),
                "-qmp",
                &format!("unix:{},server=on,wait=off", events_path.display()),
                "-serial",
                &format!("file:{}", serial_log.display()),
            ]);
        if let Some(sock) = incoming {
            c.args(["-incoming", &format!("unix:{}", sock.display())]);
        }
        let child = spawn_logged(&mut c, log, "qemu-system-x86_64 (Debian's qemu-system-x86)")?;
        Ok(Self {
            child,
            ns: ns.name.clone(),
            tap: tap.to_string(),
            qmp_path,
            events_path,
            serial_log,
            qemu_log,
            incoming: incoming.map(Path::to_path_buf),
            started: Instant::now(),
        })
    }

    /// Waits until the guest prints [`READY`]; the time since QEMU started (its boot).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        while self.started.elapsed() < timeout {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "QEMU exited ({status}) before the guest was ready:\n{}",
                    self.logs()
                );
            }
            let serial = std::fs::read_to_string(&self.serial_log).unwrap_or_default();
            if serial.contains(READY) {
                return Ok(self.started.elapsed());
            }
            if serial.contains("NVE-GUEST-FAILED") || serial.contains("Kernel panic") {
                bail!("the guest failed to come up:\n{}", self.logs());
            }
            thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "guest not ready after {} s:\n{}",
            timeout.as_secs(),
            self.logs()
        )
    }

    /// A QMP session (capabilities negotiated), waiting up to 10 s for QEMU's socket.
    pub fn qmp(&mut self) -> Result<Qmp> {
        let path = self.qmp_path.clone();
        self.qmp_at(&path)
    }

    /// A session on the second monitor, for events only (see [`Qmp::wait_event`]).
    pub fn event_qmp(&mut self) -> Result<Qmp> {
        let path = self.events_path.clone();
        self.qmp_at(&path)
    }

    fn qmp_at(&mut self, path: &Path) -> Result<Qmp> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match UnixStream::connect(path) {
                Ok(s) => return Qmp::new(s),
                Err(e) if Instant::now() > deadline => {
                    bail!("QMP {}: {e}\n{}", path.display(), self.logs())
                }
                Err(_) => {
                    if let Some(status) = self.child.try_wait()? {
                        bail!("QEMU exited ({status}):\n{}", self.logs());
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// The guest's eth0 received-packet counter, as it last said on its console (started
    /// with `nve.rxreport`; it says so within 0.1 s of a change, while it runs).
    pub fn rx_packets(&self) -> Option<u64> {
        let serial = std::fs::read_to_string(&self.serial_log).ok()?;
        serial
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(RX_REPORT)?.trim().parse().ok())
    }

    /// Whether QEMU has exited (as an incoming QEMU does when its migration is cancelled).
    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// The serial console and QEMU's own output, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- serial {}:\n{}\n--- qemu {}:\n{}",
            self.serial_log.display(),
            tail(&std::fs::read_to_string(&self.serial_log).unwrap_or_default()),
            self.qemu_log.display(),
            tail(&std::fs::read_to_string(&self.qemu_log).unwrap_or_default()),
        )
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::process::Command::new("ip")
            .args(["-n", &self.ns, "link", "del", &self.tap])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_file(&self.qmp_path);
        let _ = std::fs::remove_file(&self.events_path);
        if let Some(sock) = &self.incoming {
            let _ = std::fs::remove_file(sock);
        }
        if !thread::panicking() {
            let _ = std::fs::remove_file(&self.serial_log);
            let _ = std::fs::remove_file(&self.qemu_log);
        }
    }
}

/// A QMP client: one JSON object a line; the events QEMU sends in between are kept, with
/// their timestamps (wall clock, as QEMU stamps them).
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    pub events: Vec<Value>,
}

impl Qmp {
    fn new(stream: UnixStream) -> Result<Self> {
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut q = Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            events: Vec::new(),
        };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            bail!("not a QMP greeting: {greeting}");
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("QMP connection closed");
        }
        Ok(serde_json::from_str(&line)?)
    }

    /// Runs `command` with `arguments`; its `return` value, or an error with QEMU's.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if arguments.as_object().is_some_and(|a| !a.is_empty()) {
            msg["arguments"] = arguments;
        }
        writeln!(self.writer, "{msg}")?;
        loop {
            let v = self.read()?;
            if v.get("event").is_some() {
                self.events.push(v);
            } else if let Some(r) = v.get("return") {
                return Ok(r.clone());
            } else if let Some(e) = v.get("error") {
                bail!("QMP {command}: {e}");
            }
        }
    }

    /// Reads the events QEMU has sent so far (waits up to `wait` for a first one).
    pub fn drain_events(&mut self, wait: Duration) -> Result<()> {
        self.writer.set_read_timeout(Some(wait))?;
        let mut line = String::new();
        loop {
            line.clear();
            match self.reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {
                    let v: Value = serde_json::from_str(&line)?;
                    if v.get("event").is_some() {
                        self.events.push(v);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => return Err(e.into()),
            }
            self.writer
                .set_read_timeout(Some(Duration::from_millis(1)))?;
        }
        self.writer
            .set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(())
    }

    /// Waits up to `timeout` for the event `name` (kept with the others); when QEMU stamped
    /// it.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<SystemTime> {
        let deadline = Instant::now() + timeout;
        while self.event_time(name).is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no {name} event within {timeout:?}: {:?}", self.events);
            }
            self.writer.set_read_timeout(Some(left))?;
            let v = self.read()?;
            if v.get("event").is_some() {
                self.events.push(v);
            }
        }
        self.writer
            .set_read_timeout(Some(Duration::from_secs(30)))?;
        self.event_time(name)
            .ok_or_else(|| anyhow::anyhow!("{name} without a timestamp"))
    }

    /// When QEMU sent the first event named `name` (`STOP`, `RESUME`, ...), if it did.
    pub fn event_time(&self, name: &str) -> Option<SystemTime> {
        stamp(self.events.iter().find(|e| e["event"] == name)?)
    }

    /// Every event so far, in order: its name and when QEMU sent it.
    pub fn timed_events(&self) -> Vec<(String, SystemTime)> {
        self.events
            .iter()
            .filter_map(|e| Some((e["event"].as_str()?.to_string(), stamp(e)?)))
            .collect()
    }

    /// `query-status`'s `status` (`running`, `inmigrate`, `postmigrate`, ...).
    pub fn status(&mut self) -> Result<String> {
        let r = self.execute("query-status", json!({}))?;
        Ok(r["status"].as_str().unwrap_or_default().to_string())
    }
}

/// When QEMU stamped event `e` (wall clock).
fn stamp(e: &Value) -> Option<SystemTime> {
    let ts = &e["timestamp"];
    let secs = ts["seconds"].as_u64()?;
    let micros = ts["microseconds"].as_u64()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros))
}

/// A tap's counters: what it transmitted towards its guest (read by QEMU), dropped because
/// its queue was full (QEMU not reading it fast enough, or at all), and received from it.
#[derive(Clone, Copy, Debug, Default)]
pub struct TapCounters {
    pub tx: u64,
    pub tx_dropped: u64,
    pub rx: u64,
}

impl std::ops::Sub for TapCounters {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self {
            tx: self.tx - o.tx,
            tx_dropped: self.tx_dropped - o.tx_dropped,
            rx: self.rx - o.rx,
        }
    }
}

/// `tap`'s counters in `ns` (zeros if `ip` cannot say).
pub fn tap_counters(ns: &Netns, tap: &str) -> TapCounters {
    let Ok(out) = ns.ip(&["-j", "-s", "link", "show", tap]) else {
        return TapCounters::default();
    };
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let stats = &v[0]["stats64"];
    let n = |dir: &str, what: &str| stats[dir][what].as_u64().unwrap_or(0);
    TapCounters {
        tx: n("tx", "packets"),
        tx_dropped: n("tx", "dropped"),
        rx: n("rx", "packets"),
    }
}

/// What `query-migrate` said when the migration completed.
#[derive(Clone, Debug)]
pub struct Migration {
    /// Milliseconds from `migrate` to completion.
    pub total_ms: u64,
    /// Milliseconds the VM was stopped (QEMU's own figure).
    pub downtime_ms: u64,
    /// Milliseconds of setup.
    pub setup_ms: u64,
    pub ram_transferred: u64,
}

impl Qmp {
    /// Migrates this (source) QEMU to the destination listening on `socket`, polling
    /// `query-migrate` until it completes (or fails, or `timeout` passes).
    pub fn migrate(&mut self, socket: &Path, timeout: Duration) -> Result<Migration> {
        self.start_migration(socket)?;
        let r = self.wait_migration("completed", timeout)?;
        Ok(Migration {
            total_ms: r["total-time"].as_u64().unwrap_or(0),
            downtime_ms: r["downtime"].as_u64().unwrap_or(0),
            setup_ms: r["setup-time"].as_u64().unwrap_or(0),
            ram_transferred: r["ram"]["transferred"].as_u64().unwrap_or(0),
        })
    }

    /// Starts migrating this (source) QEMU to the destination listening on `socket`; QMP's
    /// `migrate` returns at once, the migration goes on in QEMU.
    pub fn start_migration(&mut self, socket: &Path) -> Result<()> {
        self.execute(
            "migrate",
            json!({ "uri": format!("unix:{}", socket.display()) }),
        )?;
        Ok(())
    }

    /// Turns migration capability `name` (`pause-before-switchover`, ...) on or off; before
    /// a migration starts.
    pub fn set_migration_capability(&mut self, name: &str, on: bool) -> Result<()> {
        self.execute(
            "migrate-set-capabilities",
            json!({ "capabilities": [{ "capability": name, "state": on }] }),
        )?;
        Ok(())
    }

    /// Polls `query-migrate` every 20 ms until its status is `status` (`completed`,
    /// `pre-switchover`, `cancelled`, ...): its answer. Fails on another final status, or
    /// after `timeout` (cancelling the migration then).
    pub fn wait_migration(&mut self, status: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.execute("query-migrate", json!({}))?;
            match r["status"].as_str().unwrap_or_default() {
                s if s == status => return Ok(r),
                "completed" | "failed" | "cancelled" => bail!("migration {r}"),
                _ if Instant::now() > deadline => {
                    let _ = self.execute("migrate_cancel", json!({}));
                    bail!("migration not {status} within {timeout:?}: {r}")
                }
                _ => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}
