//! Real libvirt: `libvirtd` (Debian's, with its QEMU driver) in a host namespace, with nve's
//! hook (contrib/libvirt/qemu) installed as its qemu hook, driving TCG domains that boot the
//! guest `cargo xtask` builds (see [`crate::qemu`]).
//!
//! Each daemon is private to its test: it runs in a mount namespace of its own whose
//! /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt are
//! bind mounts of one directory under /tmp, so its config, hooks, sockets, state and logs are
//! its own and nothing else on the machine sees them. Its pid file is in that directory too
//! (libvirtd's default, /run/libvirtd.pid, is outside /run/libvirt). Clients reach it with
//! `qemu+unix:///system?socket=DIR/run/libvirt-sock`.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nve_user::api::VnicView;

use crate::{
    qemu::{GUEST_MTU, READY, guest_dir},
    rig::{Daemon, Netns, TempFile, mac_str, nve_bin, spawn_logged},
};

/// The system directories a private libvirtd gets its own copy of: (mount point, subdirectory).
const PRIVATE_DIRS: [(&str, &str); 5] = [
    ("/etc/libvirt", "etc"),
    ("/run/libvirt", "run"),
    ("/var/lib/libvirt", "lib"),
    ("/var/log/libvirt", "log"),
    ("/var/cache/libvirt", "cache"),
];

/// The QEMU driver's settings: QEMU runs as root (the guest lives under root's cache) without
/// a security driver, cgroups or a private /dev (there is no systemd here to delegate
/// cgroups, and the rig is the isolation); QEMU's output goes to a file, so no virtlogd.
const QEMU_CONF: &str = r#"user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"
"#;

/// A `libvirtd` in a host namespace, stopped on drop with every domain it runs (destroyed,
/// and any QEMU left killed by its pid file); its directory goes too unless the test failed.
pub struct Libvirtd {
    child: Child,
    pub dir: PathBuf,
    /// The URI clients connect with.
    pub uri: String,
}

impl Libvirtd {
    /// Starts libvirtd in `host`, named by `tag`, with nve's hook talking to `nve`. libvirt
    /// refuses to migrate between daemons with the same host UUID: `host_id` makes each
    /// daemon's distinct.
    pub fn start(host: &Netns, tag: &str, host_id: u8, nve: &Daemon) -> Result<Self> {
        let dir = Self::dir_of(host, tag);
        let _ = std::fs::remove_dir_all(&dir);
        for (_, sub) in PRIVATE_DIRS {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let etc = dir.join("etc");
        std::fs::write(etc.join("qemu.conf"), QEMU_CONF)?;
        std::fs::write(
            etc.join("libvirtd.conf"),
            format!("host_uuid = \"6a0e2f4c-1b2d-4c3e-9f40-0000000000{host_id:02x}\"\n"),
        )?;
        install_hook(&dir, nve)?;

        let mut script = String::from("set -e\n");
        for (target, sub) in PRIVATE_DIRS {
            // The package creates all but /run/libvirt (systemd's tmpfiles would).
            script.push_str(&format!(
                "mkdir -p {target}\nmount --bind {} {target}\n",
                dir.join(sub).display()
            ));
        }
        script.push_str(&format!(
            "exec libvirtd --pid-file {}\n",
            dir.join("libvirtd.pid").display()
        ));
        let log = std::fs::File::create(dir.join("libvirtd.log"))?;
        let mut c = host.command("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
        let child = spawn_logged(&mut c, log, "libvirtd (Debian's libvirt-daemon)")?;
        let uri = Self::uri_of(host, tag);
        let mut d = Self { child, dir, uri };
        d.wait_ready()?;
        Ok(d)
    }

    /// The directory of the libvirtd `start` would start in `host` as `tag`.
    fn dir_of(host: &Netns, tag: &str) -> PathBuf {
        PathBuf::from(format!("/tmp/{}-libvirt-{tag}", host.name))
    }

    /// The URI of the libvirtd `start` would start in `host` as `tag` (before it runs).
    pub fn uri_of(host: &Netns, tag: &str) -> String {
        format!(
            "qemu+unix:///system?socket={}",
            Self::dir_of(host, tag).join("run/libvirt-sock").display()
        )
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("libvirtd exited ({status}):\n{}", self.log());
            }
            if self.virsh(&["version"]).status.success() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(100));
        }
        bail!("libvirtd not answering after 30 s:\n{}", self.log())
    }

    /// `virsh -c URI ARGS`.
    pub fn virsh(&self, args: &[&str]) -> Output {
        Command::new("virsh")
            .args(["-q", "-c", &self.uri])
            .args(args)
            .output()
            .expect("running virsh (Debian's libvirt-clients)")
    }

    /// `virsh ARGS`: its stdout, or an error with its stderr.
    pub fn virsh_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.virsh(args);
        if !out.status.success() {
            bail!(
                "virsh {args:?}: {}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Defines `domain` (persistently).
    pub fn define(&self, domain: &Domain) -> Result<()> {
        let xml = self.dir.join(format!("{}.xml", domain.name));
        std::fs::write(&xml, domain.xml()?)?;
        self.virsh_ok(&["define", xml.to_str().context("path")?])?;
        Ok(())
    }

    /// `virsh domstate NAME` (`running`, `shut off`, ...).
    pub fn state(&self, name: &str) -> Result<String> {
        Ok(self.virsh_ok(&["domstate", name])?.trim().to_string())
    }

    /// libvirtd's own log and the QEMU logs it kept, for failure messages.
    pub fn log(&self) -> String {
        let mut s = format!(
            "--- libvirtd {}:\n{}",
            self.dir.display(),
            std::fs::read_to_string(self.dir.join("libvirtd.log")).unwrap_or_default()
        );
        for e in std::fs::read_dir(self.dir.join("log/qemu"))
            .into_iter()
            .flatten()
            .flatten()
        {
            s.push_str(&format!(
                "\n--- {}:\n{}",
                e.path().display(),
                std::fs::read_to_string(e.path()).unwrap_or_default()
            ));
        }
        s
    }
}

/// One call of the qemu hook as the recorder saw it: libvirt's operation and sub-operation,
/// and nve's vNICs right after nve's hook ran for it.
#[derive(Clone, Debug)]
pub struct HookCall {
    pub op: String,
    pub sub: String,
    pub vnics: Vec<VnicView>,
}

impl Libvirtd {
    /// The qemu hook calls so far, in order.
    pub fn hook_calls(&self) -> Result<Vec<HookCall>> {
        let text = std::fs::read_to_string(self.dir.join("hook-calls")).unwrap_or_default();
        text.lines()
            .map(|l| {
                let mut f = l.splitn(3, ' ');
                let (op, sub, json) = (f.next(), f.next(), f.next());
                Ok(HookCall {
                    op: op.unwrap_or_default().to_string(),
                    sub: sub.unwrap_or_default().to_string(),
                    vnics: serde_json::from_str(json.unwrap_or_default())
                        .with_context(|| format!("hook record {l:?}"))?,
                })
            })
            .collect()
    }
}

/// nve's hook script, unchanged, as `hooks/qemu`, and the file it reads its settings from
/// (`hooks/nve.env`: which nve, which daemon). libvirt runs the scripts in `hooks/qemu.d/`
/// after it, in the same call: `qemu.d/record` appends the operation and `nve vm list
/// --json` to `DIR/hook-calls`, what nve holds once its hook has run.
fn install_hook(dir: &Path, nve: &Daemon) -> Result<()> {
    let hooks = dir.join("etc/hooks");
    std::fs::create_dir_all(&hooks)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/libvirt/qemu");
    let hook = hooks.join("qemu");
    std::fs::copy(&script, &hook).with_context(|| format!("copying {}", script.display()))?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(
        hooks.join("nve.env"),
        format!(
            "NVE={}\nNVE_SOCKET={}\n",
            nve_bin().display(),
            nve.socket.display()
        ),
    )?;
    let record = hooks.join("qemu.d/record");
    std::fs::create_dir_all(record.parent().expect("has a parent"))?;
    std::fs::write(
        &record,
        format!(
            "#!/bin/sh\necho \"$2 $3 $({} --socket {} vm list --json | tr -d '\\n')\" >> {}\n",
            nve_bin().display(),
            nve.socket.display(),
            dir.join("hook-calls").display()
        ),
    )?;
    std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        if let Ok(names) = self.virsh_ok(&["list", "--name"]) {
            for name in names.lines().filter(|n| !n.is_empty()) {
                let _ = self.virsh(&["destroy", name]);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A QEMU libvirt could not destroy: by the pid file libvirt wrote for it.
        for e in std::fs::read_dir(self.dir.join("run/qemu"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.path().extension().is_some_and(|x| x == "pid")
                && let Some(pid) = std::fs::read_to_string(e.path())
                    .ok()
                    .and_then(|p| p.trim().parse::<i32>().ok())
            {
                // SAFETY: a plain kill(2) of the process libvirt started for this test.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if !thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A TCG domain booting the test guest with one `<interface type='ethernet'>` on tap `tap`
/// in VN `vn` (`<alias name='ua-nve-VN'/>`), its serial console in a file.
#[derive(Clone, Debug)]
pub struct Domain {
    pub name: String,
    pub uuid: String,
    pub mac: [u8; 6],
    pub tap: String,
    pub vn: String,
    /// The guest's address (CIDR).
    pub ip: String,
    /// An address the guest pings once it is up (`nve.ping`).
    pub ping: Option<String>,
    pub serial: PathBuf,
}

impl Domain {
    /// The domain XML.
    pub fn xml(&self) -> Result<String> {
        let dir = guest_dir();
        let ping = self
            .ping
            .as_ref()
            .map_or(String::new(), |p| format!(" nve.ping={p}"));
        Ok(format!(
            "<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 panic=1 nve.ip={ip}{ping}</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <interface type='ethernet'>
      <mac address='{mac}'/>
      <target dev='{tap}' managed='yes'/>
      <model type='virtio'/>
      <mtu size='{GUEST_MTU}'/>
      <rom enabled='no'/>
      <alias name='ua-nve-{vn}'/>
    </interface>
    <serial type='file'>
      <source path='{serial}'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
",
            name = self.name,
            uuid = self.uuid,
            kernel = dir.join("bzImage").display(),
            initrd = dir.join("initrd.cpio").display(),
            ip = self.ip,
            mac = mac_str(self.mac),
            tap = self.tap,
            vn = self.vn,
            serial = self.serial.display(),
        ))
    }

    /// Waits until the guest's console shows `what` (after [`READY`]), or fails with it.
    pub fn wait_console(&self, what: &str, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            let console = self.console();
            if console.contains(READY) && console.contains(what) {
                return Ok(start.elapsed());
            }
            if console.contains("NVE-GUEST-FAILED") || console.contains("Kernel panic") {
                bail!("the guest failed:\n{}", tail(&console));
            }
            thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the guest's console has no {what:?} after {} s:\n{}",
            timeout.as_secs(),
            tail(&self.console())
        )
    }

    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// `ping -D -i 0.01` (100 a second) from a namespace: a stream whose replies say, with their
/// times, when the guest was reachable. Its output goes to a file: into a pipe nobody reads
/// ping stops at 64 KiB of it (some 800 replies, 8 s).
pub struct PingStream {
    child: Child,
    output: TempFile,
}

/// What a [`PingStream`] saw.
#[derive(Clone, Debug)]
pub struct PingFigures {
    /// Requests sent (the last sequence number seen, or counted by ping).
    pub sent: u32,
    pub received: u32,
    /// The longest time without a reply, ms, and the sequence numbers it fell between.
    pub longest_gap_ms: f64,
    pub gap_between: (u32, u32),
}

impl PingStream {
    pub fn start(ns: &Netns, dst: &str) -> Result<Self> {
        let output = TempFile(format!("/tmp/{}-ping-{dst}.txt", ns.name).into());
        let child = ns
            .command("ping")
            .args(["-D", "-n", "-i", "0.01", "-W", "1", "-w", "120", dst])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&output.0)?)
            .stderr(Stdio::null())
            .spawn()
            .context("spawning ping")?;
        Ok(Self { child, output })
    }

    /// Stops the stream (SIGINT: ping prints its totals) and reads the replies.
    pub fn finish(mut self) -> Result<PingFigures> {
        // SAFETY: a plain kill(2) of the ping this stream started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait()?;
        let text = std::fs::read_to_string(&self.output.0)?;
        let replies: Vec<(f64, u32)> = text
            .lines()
            .filter_map(|l| {
                let ts = l.strip_prefix('[')?.split(']').next()?.parse().ok()?;
                let seq = l
                    .split("icmp_seq=")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()?;
                Some((ts, seq))
            })
            .collect();
        let sent = text
            .lines()
            .find_map(|l| l.split(" packets transmitted").next()?.parse().ok())
            .unwrap_or_else(|| replies.last().map_or(0, |r| r.1));
        let (mut longest_gap_ms, mut gap_between) = (0.0, (0, 0));
        for w in replies.windows(2) {
            let gap = (w[1].0 - w[0].0) * 1000.0;
            if gap > longest_gap_ms {
                (longest_gap_ms, gap_between) = (gap, (w[0].1, w[1].1));
            }
        }
        Ok(PingFigures {
            sent,
            received: replies.len() as u32,
            longest_gap_ms,
            gap_between,
        })
    }
}

impl Drop for PingStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
