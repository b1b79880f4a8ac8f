//! `nve libvirt-events` in the libvirt rigs: the bridge itself, run for a host's libvirtd
//! and NVE as its unit runs it (no capabilities), with what it logged; and a watch on a
//! guest's tap that tells which ping requests its stopped VM swallowed.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Child,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Result, bail};

use crate::{
    libvirt::Libvirtd,
    rig::{Daemon, Netns, nve_bin, spawn_logged},
    stamped::{ms, recv_stamped, socket_drops, stamped_socket},
};

/// `nve --socket SOCKET libvirt-events --connect URI` in a host namespace, under setpriv
/// with no capabilities (contrib/systemd/nve-libvirt-events@.service grants none); stopped
/// (SIGTERM) on drop. Its log is kept if the test failed.
pub struct EventsBridge {
    child: Child,
    pub log: PathBuf,
}

/// One answer of nve the bridge logged.
#[derive(Clone, Debug, PartialEq)]
pub struct BridgeAnswer {
    /// libvirt's event and detail, and what the bridge asked (`pause toward the
    /// destination`, `resume`, `associate`), e.g. `Suspended Migrated: pause toward ...`.
    pub what: String,
    /// Whether nve answered OK (else it refused).
    pub ok: bool,
    /// The whole log line.
    pub line: String,
    /// virsh's stamp on the event -> nve's answer, ms (the stamp is in whole ms).
    pub event_to_answer_ms: Option<f64>,
    /// The bridge read the line -> nve's answer, us.
    pub handled_us: Option<f64>,
}

impl EventsBridge {
    /// Starts the bridge for `nve`'s daemon following `libvirtd`, named by `tag`; waits
    /// until it has cached the active domains (it follows the events from before that).
    pub fn start(host: &Netns, tag: &str, libvirtd: &Libvirtd, nve: &Daemon) -> Result<Self> {
        let log = PathBuf::from(format!("/tmp/{}-events-{tag}.log", host.name));
        let file = std::fs::File::create(&log)?;
        let mut c = host.command("setpriv");
        c.args(["--bounding-set=-all", "--inh-caps=-all"])
            .arg(nve_bin())
            .arg("--socket")
            .arg(&nve.socket)
            .args(["libvirt-events", "--connect", &libvirtd.uri])
            .env("NO_COLOR", "1");
        let child = spawn_logged(&mut c, file, "nve libvirt-events")?;
        let mut b = Self { child, log };
        b.wait_for("cached the active domains")?;
        Ok(b)
    }

    /// Waits (10 s at most) until the log has a line containing `what`.
    pub fn wait_for(&mut self, what: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log_text().contains(what) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("nve libvirt-events exited ({status}):\n{}", self.log_text());
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "nve libvirt-events logged no {what:?}:\n{}",
            self.log_text()
        )
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What nve answered it, in order.
    pub fn answers(&self) -> Vec<BridgeAnswer> {
        self.log_text()
            .lines()
            .filter_map(|line| {
                let (_, msg) = line.split_once("bridge: ")?;
                let (what, ok) = match msg.split_once(": nve answered") {
                    Some((what, _)) => (what, true),
                    None => (msg.split_once(": nve refused")?.0, false),
                };
                Some(BridgeAnswer {
                    what: what.to_string(),
                    ok,
                    line: line.to_string(),
                    event_to_answer_ms: field(line, "event_to_answer_ms"),
                    handled_us: field(line, "handled_us"),
                })
            })
            .collect()
    }
}

/// A numeric `name=value` field of a log line (tracing's format).
fn field(line: &str, name: &str) -> Option<f64> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    line[start..].split_whitespace().next()?.parse().ok()
}

impl Drop for EventsBridge {
    fn drop(&mut self) {
        // SAFETY: a plain kill(2) of the bridge this guard started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// The ping requests a guest's tap transmitted to it and the replies it sent, by sequence
/// number, with the kernel's times.
#[derive(Debug, Default)]
pub struct TapPings {
    pub requests: BTreeMap<u16, SystemTime>,
    pub replies: BTreeMap<u16, SystemTime>,
    /// Frames the packet socket itself dropped: 0, or the counts are not trustworthy.
    pub socket_drops: u32,
}

/// What a stopped VM swallowed: the requests its tap transmitted after its last reply.
#[derive(Debug)]
pub struct Swallowed {
    /// Their sequence numbers.
    pub seqs: Vec<u16>,
    /// The guest's last reply -> the last request it swallowed, ms: how long frames still
    /// went into the stopped VM's tap (the signaling window, from within a request
    /// interval after the VM stopped).
    pub window_ms: f64,
}

impl TapPings {
    /// The requests the tap transmitted after the guest's last reply (the VM stopped, it
    /// answers no more), if it replied at all.
    pub fn swallowed(&self) -> Option<Swallowed> {
        let (&last_answered, &last_reply) = self.replies.iter().max_by_key(|(_, at)| **at)?;
        let after: Vec<(u16, SystemTime)> = self
            .requests
            .iter()
            .filter(|(seq, _)| **seq > last_answered)
            .map(|(s, at)| (*s, *at))
            .collect();
        let window_ms = after
            .iter()
            .map(|(_, at)| ms(last_reply, *at))
            .fold(0.0, f64::max);
        Some(Swallowed {
            seqs: after.into_iter().map(|(s, _)| s).collect(),
            window_ms,
        })
    }
}

/// Watches `tap` in `ns` until stopped: the ICMP echo requests for `guest_ip` it
/// transmits, the replies it receives.
pub struct TapPingWatch {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<TapPings>>,
}

impl TapPingWatch {
    pub fn start(ns: &Netns, tap: &str, guest_ip: std::net::Ipv4Addr) -> Result<Self> {
        let fd = stamped_socket(ns, tap, libc::ETH_P_ALL as u16)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut pings = TapPings::default();
            let mut buf = [0u8; 2048];
            // Bounded: the test stops it; at worst ten minutes.
            let deadline = Instant::now() + Duration::from_secs(600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Some((n, kind, at)) = recv_stamped(&fd, &mut buf) else {
                    continue;
                };
                match echo(&buf[..n], guest_ip) {
                    Some((Echo::Request, seq)) if kind == libc::PACKET_OUTGOING => {
                        pings.requests.entry(seq).or_insert(at);
                    }
                    Some((Echo::Reply, seq)) if kind != libc::PACKET_OUTGOING => {
                        pings.replies.entry(seq).or_insert(at);
                    }
                    _ => {}
                }
            }
            pings.socket_drops = socket_drops(&fd);
            pings
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the watch: what it saw.
    pub fn finish(mut self) -> Result<TapPings> {
        self.stop.store(true, Ordering::Relaxed);
        let t = self.thread.take().expect("joined only here");
        t.join()
            .map_err(|_| anyhow::anyhow!("the tap watch panicked"))
    }
}

impl Drop for TapPingWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

enum Echo {
    Request,
    Reply,
}

/// An untagged IPv4 ICMP echo request to `guest` or reply from it: which, and its sequence
/// number.
fn echo(frame: &[u8], guest: std::net::Ipv4Addr) -> Option<(Echo, u16)> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [8, 0] || ip.get(9)? != &1 {
        return None;
    }
    let icmp = ip.get(usize::from(ip.first()? & 0x0f) * 4..)?;
    let seq = u16::from_be_bytes([*icmp.get(6)?, *icmp.get(7)?]);
    let guest = guest.octets();
    match icmp.first()? {
        8 if ip.get(16..20)? == guest => Some((Echo::Request, seq)),
        0 if ip.get(12..16)? == guest => Some((Echo::Reply, seq)),
        _ => None,
    }
}

/// The signaling requests `d` applied for VM `vm`, in order, from its journal (the state
/// dir's `journal.jsonl`: every applied change since the daemon started): each request's
/// op and migration hint as JSON.
pub fn journaled_signals(d: &Daemon, vm: &str) -> Result<Vec<(String, serde_json::Value)>> {
    let path = format!("/var/lib/nve/{}/journal.jsonl", d.instance);
    let text = std::fs::read_to_string(&path)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|l| l["event"].clone())
        .filter(|e| e["event"] == "signal" && e["id"]["vm"] == vm)
        .map(|e| {
            let op = e["req"]["op"].as_str().unwrap_or_default().to_string();
            (op, e["req"]["migration"].clone())
        })
        .collect())
}
