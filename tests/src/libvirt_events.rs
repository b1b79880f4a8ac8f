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
        let mut b = Self::spawn(host, tag, &libvirtd.uri, nve)?;
        b.wait_for("cached the active domains", 1)?;
        Ok(b)
    }

    /// Starts the bridge for `nve`'s daemon following libvirt at `uri` (which may not
    /// answer yet), named by `tag`; its debug log has every line virsh printed.
    pub fn spawn(host: &Netns, tag: &str, uri: &str, nve: &Daemon) -> Result<Self> {
        let log = PathBuf::from(format!("/tmp/{}-events-{tag}.log", host.name));
        let file = std::fs::File::create(&log)?;
        let mut c = host.command("setpriv");
        c.args(["--bounding-set=-all", "--inh-caps=-all"])
            .arg(nve_bin())
            .arg("--socket")
            .arg(&nve.socket)
            .args(["libvirt-events", "--connect", uri])
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info,nve_user::libvirt=debug");
        let child = spawn_logged(&mut c, file, "nve libvirt-events")?;
        Ok(Self { child, log })
    }

    /// Waits (30 s at most) until the log has `times` lines containing `what`; fails if the
    /// bridge exited.
    pub fn wait_for(&mut self, what: &str, times: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("nve libvirt-events exited ({status}):\n{}", self.log_text());
            }
            if self.log_text().lines().filter(|l| l.contains(what)).count() >= times {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "nve libvirt-events logged {what:?} fewer than {times} times:\n{}",
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

/// ICMP echo requests from a namespace to a guest, paced (`rate` a second, request `seq`
/// leaving at `seq / rate` s: ping paces only to 10 ms bursts and slows while requests go
/// unanswered), numbered from 0, and the replies that came back, until stopped (at most
/// 65,536 requests).
pub struct PacedPings {
    /// Stops the sender, then the receiver.
    stop: [Arc<AtomicBool>; 2],
    sender: Option<thread::JoinHandle<Result<u32>>>,
    receiver: Option<thread::JoinHandle<Result<std::collections::BTreeSet<u16>>>>,
}

/// What a [`PacedPings`] stream did.
#[derive(Debug)]
pub struct PingsAnswered {
    pub sent: u32,
    pub answered: std::collections::BTreeSet<u16>,
}

impl PingsAnswered {
    /// The requests never answered.
    pub fn lost(&self) -> Vec<u16> {
        (0..self.sent)
            .map(|s| s as u16)
            .filter(|s| !self.answered.contains(s))
            .collect()
    }
}

/// The echo identifier of [`PacedPings`].
const PACED_ID: u16 = 0x4e56;

impl PacedPings {
    /// Starts the stream; the replies are watched before the first request leaves.
    pub fn start(ns: &Netns, guest: std::net::Ipv4Addr, rate: u32) -> Result<Self> {
        let (tx, rx) = crate::rig::in_netns(ns, || Ok((icmp_socket()?, icmp_socket()?)))?;
        crate::rig::recv_timeout(&rx, Duration::from_millis(50))?;
        let stop = [(); 2].map(|()| Arc::new(AtomicBool::new(false)));
        let flag = stop[1].clone();
        let receiver = thread::spawn(move || replies(&rx, &flag));
        let (flag, rate) = (stop[0].clone(), rate.max(1));
        let sender = thread::spawn(move || send_paced(&tx, guest, rate, &flag));
        Ok(Self {
            stop,
            sender: Some(sender),
            receiver: Some(receiver),
        })
    }

    /// Stops sending, waits `linger` for the last replies, and says what came back.
    pub fn finish(mut self, linger: Duration) -> Result<PingsAnswered> {
        let sender = self.sender.take().expect("joined only here");
        let receiver = self.receiver.take().expect("joined only here");
        self.stop[0].store(true, Ordering::Relaxed);
        let sent = sender
            .join()
            .map_err(|_| anyhow::anyhow!("the sender panicked"))??;
        thread::sleep(linger);
        self.stop[1].store(true, Ordering::Relaxed);
        let answered = receiver
            .join()
            .map_err(|_| anyhow::anyhow!("the receiver panicked"))??;
        Ok(PingsAnswered { sent, answered })
    }
}

impl Drop for PacedPings {
    fn drop(&mut self) {
        for flag in &self.stop {
            flag.store(true, Ordering::Relaxed);
        }
        if let Some(t) = self.sender.take() {
            let _ = t.join();
        }
        if let Some(t) = self.receiver.take() {
            let _ = t.join();
        }
    }
}

/// Sends echo requests `0..` on `fd` to `guest`, `rate` a second, until `stop` (or 65,536
/// of them): how many.
fn send_paced(
    fd: &std::os::fd::OwnedFd,
    guest: std::net::Ipv4Addr,
    rate: u32,
    stop: &AtomicBool,
) -> Result<u32> {
    let dst = sockaddr(guest);
    let start = Instant::now();
    let mut seq = 0u32;
    while seq <= u32::from(u16::MAX) && !stop.load(Ordering::Relaxed) {
        let due = Duration::from_secs_f64(f64::from(seq) / f64::from(rate));
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            thread::sleep(wait);
        }
        let echo = crate::packet::icmp_echo(PACED_ID, seq as u16, 8);
        // SAFETY: sendto(2) of a buffer we own to a sockaddr_in we built.
        let rc = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(fd),
                echo.as_ptr().cast(),
                echo.len(),
                0,
                (&raw const dst).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if rc < 0 {
            bail!("sending echo {seq}: {}", std::io::Error::last_os_error());
        }
        seq += 1;
    }
    Ok(seq)
}

/// The sequence numbers of the [`PACED_ID`] echo replies `fd` receives until `stop` (ten
/// minutes at most).
fn replies(
    fd: &std::os::fd::OwnedFd,
    stop: &AtomicBool,
) -> Result<std::collections::BTreeSet<u16>> {
    let mut answered = std::collections::BTreeSet::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(600);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        // SAFETY: recv(2) into a buffer we own.
        let n = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(fd),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
            )
        };
        let Some(icmp) = usize::try_from(n).ok().and_then(|n| {
            let ihl = usize::from(buf.first()? & 0x0f) * 4;
            buf.get(ihl..n)
        }) else {
            continue;
        };
        if icmp.first() == Some(&0) && icmp.get(4..6) == Some(&PACED_ID.to_be_bytes()[..]) {
            answered.insert(u16::from_be_bytes([icmp[6], icmp[7]]));
        }
    }
    Ok(answered)
}

/// A raw ICMP socket (IPv4): sends echo requests, receives every ICMP message, its IP
/// header first; a large receive buffer, so a stream's replies wait for the reader.
fn icmp_socket() -> Result<std::os::fd::OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if fd < 0 {
        bail!("raw ICMP socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just opened.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let size: i32 = 16 << 20;
    // SAFETY: setsockopt with an int on a socket we own.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const size).cast(),
            size_of::<i32>() as u32,
        )
    };
    Ok(fd)
}

fn sockaddr(ip: std::net::Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    }
}
