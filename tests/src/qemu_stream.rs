//! A real hypervisor: a QEMU guest (TCG, Debian's kernel, busybox) on a tap in h1 live-migrates
//! to a QEMU on a tap in h2 with QEMU's own migration (over a unix socket, across the two
//! namespaces) while vm3 on h3 streams numbered UDP datagrams to it; three NVEs on a real
//! etcd. h2 pre-associates the vNIC (`--migrating-in`); QEMU's RARPs activate it there,
//! nothing calls `associate`; once `query-migrate` says completed, h1 disassociates with
//! `--migrating-out h2`, as libvirt's hook would.
//!
//! The network's responsibility ends at the tap: packet sockets on both taps record which
//! datagram reached which tap, and when (kernel timestamps, against QEMU's STOP and RESUME
//! events). Those that reached h1's tap after the source VM stopped are lost to the pause,
//! split at the destination's RESUME: before it, the VM's own downtime; after it, the time h3
//! took to follow the move (the RARP's activation through etcd) or h1 to disassociate,
//! whichever came first.
//!
//! Used by the QEMU migration test (which asserts on the [`QemuFigures`]) and the bench
//! (which reports them over several migrations). Errors are setup failures only; what the
//! test checks is in the figures.
use std::{
    collections::BTreeMap,
    net::UdpSocket,
    os::fd::OwnedFd,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Result, bail};
use nve_common::metrics::DropReason;
use nve_user::vnic::VnicState;

use crate::{
    etcd::EtcdServer,
    live_stream::in_ns,
    overlay::{self, H1_VTEP, H2_VTEP, VN, VNI},
    qemu::{Guest, Qmp, tap_counters},
    rig::{Daemon, Netns, Vm, mac_str},
    stamped::{ms, recv_stamped, socket_drops, stamped_socket},
    stream_losses::{self, Losses},
    three_hosts::{self, H3_VTEP, VM3_IP, VM3_MAC},
};

const GUEST: &str = "00000000-0000-4000-8000-0000000000c1";
const VM3: &str = "00000000-0000-4000-8000-0000000000c3";
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x4e, 0x56, 0x01];
const GUEST_IP: &str = "192.168.10.1";
const TAP: &str = "tap0";
const PORT: u16 = 9999;
/// How long the stream runs before the migration starts.
const LEAD: Duration = Duration::from_secs(1);
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);
/// What the hypervisor's bridge asks of the source's NVE at its STOP (libvirt: the domain
/// event suspended/migrated): the pause toward the destination (`nve vm pause
/// --migrating-out`), sent on the daemon's socket as a resident bridge would: spawning the
/// CLI for each event cost 5-15 ms of start-up, every datagram of which the stopped VM's tap
/// swallows.
fn pause_on_stop_request() -> (String, String) {
    (
        format!("/v1/vnics/{GUEST}/0"),
        format!(r#"{{"op": "pause", "migration": {{"migrating-out": "{H2_VTEP}"}}}}"#),
    )
}

/// Three hosts on a bridged underlay, vm3 (a veth VM) on h3, etcd in h3, one NVE a host, the
/// guests; fields drop in order: QEMUs, daemons, etcd, then the namespaces.
struct Rig {
    src: Option<Guest>,
    dst: Option<Guest>,
    d1: Daemon,
    d2: Daemon,
    d3: Daemon,
    _etcd: EtcdServer,
    vm3: Vm,
    h1: Netns,
    h2: Netns,
    _h3: Netns,
    _fabric: Netns,
}

impl Rig {
    fn new(tag: &str) -> Result<Self> {
        let (fabric, h1, h2, h3) = three_hosts::underlay(tag)?;
        let vm3 = Vm::new(&format!("{tag}-vm3"), &h3, "vm3p", VM3_MAC, VM3_IP)?;
        let etcd = EtcdServer::start(&h3, H3_VTEP)?;
        let nva = ["--nva", etcd.url.as_str()];
        let d1 = Daemon::start(&h1, &format!("{tag}1"), H1_VTEP, "ul", &nva)?;
        let d2 = Daemon::start(&h2, &format!("{tag}2"), H2_VTEP, "ul", &nva)?;
        let d3 = Daemon::start(&h3, &format!("{tag}3"), H3_VTEP, "ul", &nva)?;
        for d in [&d1, &d2, &d3] {
            d.nve(&["vn", "add", VN, "--vni", &VNI.to_string()])?;
        }
        overlay::associate(&d3, VM3, "vm3p", VM3_MAC, Some(VM3_IP))?;
        Ok(Self {
            src: None,
            dst: None,
            d1,
            d2,
            d3,
            _etcd: etcd,
            vm3,
            h1,
            h2,
            _h3: h3,
            _fabric: fabric,
        })
    }
}

/// Raises its flags when dropped: the stream and the captures stop also on an early return.
struct StopOnDrop(Vec<Arc<AtomicBool>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        for f in &self.0 {
            f.store(true, Ordering::Relaxed);
        }
    }
}

/// `nve vm list --json`: the state of the guest's vNIC on `d`, if it has one.
fn vnic_state(d: &Daemon) -> Option<VnicState> {
    d.vnics()
        .ok()?
        .iter()
        .find(|n| n.vm == GUEST)
        .map(|n| n.state)
}

/// Whether `d` has the guest's MAC behind h2's VTEP, from the NVA.
fn on_h2(d: &Daemon) -> bool {
    d.has_from_nva(GUEST_MAC, H2_VTEP).unwrap_or(false)
}

/// What a packet socket on a guest's tap saw, with kernel timestamps.
#[derive(Default)]
struct TapLog {
    /// The stream's datagrams the device transmitted (a tap: to its guest; the underlay:
    /// re-encapsulated, as through the forwarding pointer): sequence number -> when.
    arrivals: BTreeMap<u32, SystemTime>,
    /// QEMU's RARPs from the guest's MAC.
    rarps: Vec<SystemTime>,
    /// The guest's gratuitous ARPs.
    garps: Vec<SystemTime>,
    /// The stream's sequence numbers in the order the device transmitted them, repeats
    /// included, with when.
    order: Vec<(u32, SystemTime)>,
    /// Frames the packet socket itself dropped (then the counts are not trustworthy).
    drops: u32,
}

/// Records what `tap` (in `ns`) transmits to its guest and the guest's announcements, until
/// `stop`. Frames the kernel hands the tap are seen as PACKET_OUTGOING before the tap queues
/// them for QEMU (or drops them, its queue full): the network's side of the tap.
fn tap_capture(ns: &Netns, tap: &str, stop: Arc<AtomicBool>) -> Result<thread::JoinHandle<TapLog>> {
    // ETH_P_ALL: outgoing frames reach only the packet sockets of every protocol.
    let fd = stamped_socket(ns, tap, libc::ETH_P_ALL as u16)?;
    Ok(thread::spawn(move || capture_loop(&fd, &stop)))
}

fn capture_loop(fd: &OwnedFd, stop: &AtomicBool) -> TapLog {
    let mut log = TapLog::default();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Some((n, kind, at)) = recv_stamped(fd, &mut buf) else {
            continue;
        };
        let frame = &buf[..n];
        if kind == libc::PACKET_OUTGOING {
            if let Some(seq) = stream_seq(frame).or_else(|| vxlan_inner(frame).and_then(stream_seq))
            {
                log.arrivals.entry(seq).or_insert(at);
                log.order.push((seq, at));
            }
        } else if frame.get(6..12) == Some(&GUEST_MAC[..]) {
            match announcement(frame) {
                Some(Announcement::Rarp) => log.rarps.push(at),
                Some(Announcement::Garp) => log.garps.push(at),
                None => {}
            }
        }
    }
    log.drops = socket_drops(fd);
    log
}

enum Announcement {
    Rarp,
    Garp,
}

/// A RARP, or an ARP whose sender and target address are both the guest's.
fn announcement(frame: &[u8]) -> Option<Announcement> {
    match frame.get(12..14)? {
        [0x80, 0x35] => Some(Announcement::Rarp),
        [0x08, 0x06] => {
            let guest = GUEST_IP.parse::<std::net::Ipv4Addr>().ok()?.octets();
            (frame.get(28..32)? == guest && frame.get(38..42)? == guest)
                .then_some(Announcement::Garp)
        }
        _ => None,
    }
}

/// The inner frame of a VXLAN packet (IPv4, UDP 4789).
fn vxlan_inner(frame: &[u8]) -> Option<&[u8]> {
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    let udp = ip.get(ihl..)?;
    (frame.get(12..14)? == [8, 0] && ip.get(9)? == &17 && udp.get(2..4)? == 4789u16.to_be_bytes())
        .then(|| udp.get(16..))
        .flatten()
}

/// The sequence number of a datagram of the stream (IPv4/UDP to the guest's `PORT`).
fn stream_seq(frame: &[u8]) -> Option<u32> {
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if frame.get(12..14)? != [8, 0]
        || ip.get(9)? != &17
        || ip.get(16..20)? != GUEST_IP.parse::<std::net::Ipv4Addr>().ok()?.octets()
    {
        return None;
    }
    let udp = ip.get(ihl..)?;
    if u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]) != PORT {
        return None;
    }
    Some(u32::from_be_bytes(udp.get(8..12)?.try_into().ok()?))
}

/// The drops `d` counted, as `hook/REASON: packets`.
fn drops(d: &Daemon) -> String {
    let Ok(stats) = d.stats_view() else {
        return "?".into();
    };
    let mut out = Vec::new();
    for (hook, outcomes) in &stats.hooks {
        for reason in DropReason::ALL {
            let n = outcomes.get(reason.name()).map_or(0, |c| c.packets);
            if n > 0 {
                out.push(format!("{hook}/{}: {n}", reason.name()));
            }
        }
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(", ")
    }
}

/// The source's STOP, as the hypervisor's event bridge saw it, and nve's answer to the pause
/// it turned it into: ms after QEMU stamped the event.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct StopSignal {
    /// The bridge read the event.
    pub seen_ms: f64,
    /// `nve vm pause` (the CLI, over the daemon's socket) answered.
    pub paused_ms: f64,
}

/// A libvirt-events bridge in miniature: waits on `events` (the source's second QMP monitor)
/// for STOP and sends [`pause_on_stop_request`] to `d1` at once.
fn pause_on_stop(mut events: Qmp, d1: &Daemon) -> Result<StopSignal> {
    let (path, body) = pause_on_stop_request();
    let stop = events.wait_event("STOP", MIGRATION_TIMEOUT)?;
    let seen = SystemTime::now();
    let (status, answer) = d1.http("POST", &path, body.as_bytes())?;
    if status != 200 {
        bail!("the pause at STOP was refused ({status}): {answer}");
    }
    Ok(StopSignal {
        seen_ms: ms(stop, seen),
        paused_ms: ms(stop, SystemTime::now()),
    })
}

/// Polls `ok` every 100 ms for up to 10 s (as `rig::wait_until`, without panicking).
fn poll(mut ok: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if ok() {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A run of sequence numbers and when its first and last datagram went by, ms after RESUME.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Window {
    pub first_seq: u32,
    pub last_seq: u32,
    pub first_ms: f64,
    pub last_ms: f64,
}

/// What one QEMU live migration under the stream did. Times "after RESUME" are ms from the
/// destination's RESUME event (negative: before it).
#[derive(Debug, serde::Serialize)]
pub struct QemuFigures {
    /// The guest's boot on h1, until it printed READY, s.
    pub boot_s: f64,
    /// The destination QEMU's status before the migration (`inmigrate`).
    pub dst_status_before: String,
    /// h2's vNIC state right after `pre-associate` (`pre-associated`).
    pub h2_state_pre_associated: Option<VnicState>,
    /// `query-migrate`: total time, setup time, QEMU's downtime (ms), RAM transferred (KiB).
    pub migration_ms: u64,
    pub setup_ms: u64,
    pub ram_kib: u64,
    pub qemu_downtime_ms: u64,
    /// QEMU's RARPs activated h2's vNIC (within 10 s), nothing called `associate`.
    pub h2_activated_without_associate: bool,
    /// Whether the source sent STOP and the destination RESUME (the times below need both).
    pub stop_event: bool,
    pub resume_event: bool,
    #[serde(skip)]
    pub src_events: String,
    #[serde(skip)]
    pub dst_events: String,
    /// Source STOP -> destination RESUME, ms.
    pub stop_to_resume_ms: f64,
    /// `query-status` after the move: `postmigrate`, `running`.
    pub src_status: String,
    pub dst_status: String,
    /// Datagrams sent (without send errors), send errors, and those that reached each tap.
    pub sent: usize,
    pub send_errors: usize,
    pub at_h1: usize,
    pub at_h2: usize,
    /// Lost during the pause (STOP -> RESUME), lost by the network (before STOP, after
    /// RESUME), duplicated, out of order: see [`stream_losses`].
    pub losses: Losses,
    /// The source's STOP, as a libvirt-events bridge sees it, turned into nve's pause on h1.
    pub stop_signal: Option<StopSignal>,
    /// Why there is no `stop_signal` (no STOP, or the pause failed).
    pub stop_signal_error: Option<String>,
    /// The last datagram at h1's tap, the first at h2's, after RESUME, ms.
    pub last_at_h1_ms: Option<f64>,
    pub first_at_h2_ms: Option<f64>,
    /// Datagrams at h2's tap before RESUME.
    pub early_at_h2: usize,
    /// `query-migrate` said completed, h1 disassociated: ms after RESUME.
    pub completed_ms: f64,
    pub disassociated_ms: f64,
    /// h1's FORWARDED_TO_VTEP counter: through its forwarding pointer.
    pub forwarded: u64,
    /// The stream's datagrams leaving h1's underlay (re-encapsulated by the pointer).
    pub through_pointer: usize,
    pub through_pointer_window: Option<Window>,
    /// Dropped by the taps (guest queue full): h1, h2.
    pub tap_drops: (u64, u64),
    /// Frames the packet sockets dropped (h1's tap, h2's tap, h1's underlay): 0, or the
    /// counts are not trustworthy.
    pub packet_socket_drops: (u32, u32, u32),
    /// vm3's ping of the migrated guest: `None` if it answered, else the error.
    pub ping_error: Option<String>,
    /// h3 and h1 have the guest on h2 from the NVA (within 10 s).
    pub h3_converged: bool,
    pub h1_converged: bool,
    /// The drops each NVE counted (`hook/REASON: packets`), h1, h2, h3.
    pub drops: [String; 3],
    /// QEMU's RARPs and the guest's gratuitous ARPs at h2's tap, ms after RESUME.
    pub rarps_ms: Vec<f64>,
    pub garps_ms: Vec<f64>,
    /// The NVEs' hook counters (h1, h2, h3) when the network lost datagrams (before STOP or
    /// after RESUME).
    #[serde(skip)]
    pub hooks_on_loss: Option<[String; 3]>,
    /// The whole run, rig included, s.
    pub elapsed_s: f64,
}

/// Builds the rig (`tag` names its namespaces and daemons), boots the guest on h1, streams
/// `rate` datagrams a second from vm3 to it and live-migrates it to h2 a second in; the
/// stream runs until a second after h2's vNIC is active, at most `seconds`.
pub fn migrate_guest_under_stream(tag: &str, rate: u32, seconds: u32) -> Result<QemuFigures> {
    let start = Instant::now();
    let mut r = Rig::new(tag)?;
    let migration_socket = PathBuf::from(format!("/tmp/{}-migrate.sock", r.h2.name));

    // The guest boots on h1; its vNIC is associated there (libvirt: `started`).
    let mut src = Guest::start(
        &r.h1,
        "src",
        TAP,
        GUEST_MAC,
        &format!("{GUEST_IP}/24"),
        None,
    )?;
    overlay::associate(&r.d1, GUEST, TAP, GUEST_MAC, Some(GUEST_IP))?;
    let boot = src.wait_ready(BOOT_TIMEOUT);
    let src_qmp = src.qmp();
    r.src = Some(src);
    let boot = boot?;
    let mut src_qmp = src_qmp?;
    r.vm3.ping_until_reachable(GUEST_IP, 10)?;

    // The destination: QEMU waiting for the migration on h2, the vNIC pre-associated there
    // (libvirt: `migrate`/`prepare`), installed but not forwarding, nothing published.
    let mut dst = Guest::start(
        &r.h2,
        "dst",
        TAP,
        GUEST_MAC,
        &format!("{GUEST_IP}/24"),
        Some(&migration_socket),
    )?;
    let dst_qmp = dst.qmp();
    r.dst = Some(dst);
    let mut dst_qmp = dst_qmp?;
    let dst_status_before = dst_qmp.status()?;
    r.d2.nve(&[
        "vm",
        "pre-associate",
        "--vm",
        GUEST,
        "--vn",
        VN,
        "--port",
        TAP,
        "--mac",
        &mac_str(GUEST_MAC),
        "--ip",
        GUEST_IP,
        "--migrating-in",
        H1_VTEP,
    ])?;
    let h2_state_pre_associated = vnic_state(&r.d2);
    let tx_before = (tap_counters(&r.h1, TAP), tap_counters(&r.h2, TAP));

    // Both taps watched before the first datagram leaves.
    let stop_capture = Arc::new(AtomicBool::new(false));
    let stop_stream = Arc::new(AtomicBool::new(false));
    let _stop_on_return = StopOnDrop(vec![stop_stream.clone(), stop_capture.clone()]);
    let cap1 = tap_capture(&r.h1, TAP, stop_capture.clone())?;
    let cap2 = tap_capture(&r.h2, TAP, stop_capture.clone())?;
    // What leaves h1 for the underlay carrying the stream: re-encapsulated by its pointer.
    let cap_ul = tap_capture(&r.h1, "ul", stop_capture.clone())?;
    let next = Arc::new(AtomicU32::new(0));
    let sender = {
        let (stop, next) = (stop_stream.clone(), next.clone());
        in_ns(&r.vm3.ns, move || {
            // Not connected: the guest's port unreachables must not fail the next send.
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            let start = Instant::now();
            // When each datagram left, `None` for a send error.
            let mut sent = Vec::new();
            for seq in 0..rate * seconds {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // Paced: datagram `seq` leaves at seq / rate seconds.
                let due = Duration::from_secs_f64(f64::from(seq) / f64::from(rate));
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    thread::sleep(wait);
                }
                let ok = socket.send_to(&seq.to_be_bytes(), (GUEST_IP, PORT)).is_ok();
                sent.push(ok.then(SystemTime::now));
                next.store(seq + 1, Ordering::Relaxed);
            }
            sent
        })
    };

    // The move: QEMU's own live migration, source h1 -> destination h2; the bridge turns the
    // source's STOP into nve's pause.
    let src_events = r.src.as_mut().expect("started above").event_qmp()?;
    thread::sleep(LEAD);
    let (migration, stop_signal) = thread::scope(|s| {
        let bridge = s.spawn(|| pause_on_stop(src_events, &r.d1));
        let migration = src_qmp.migrate(&migration_socket, MIGRATION_TIMEOUT);
        let signal = bridge
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the STOP bridge panicked")));
        (migration, signal)
    });
    let migration = migration.map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\nsource:\n{}\ndestination:\n{}",
            r.src.as_ref().map(Guest::logs).unwrap_or_default(),
            r.dst.as_ref().map(Guest::logs).unwrap_or_default()
        )
    })?;
    let completed_at = SystemTime::now();
    // What libvirt's hook does once the migration is over: the source disassociates, leaving
    // a forwarding pointer to h2.
    r.d1.nve(&[
        "vm",
        "disassociate",
        "--vm",
        GUEST,
        "--migrating-out",
        H2_VTEP,
    ])?;
    let disassociated_at = SystemTime::now();
    // QEMU's RARPs activate the destination's vNIC by themselves.
    let h2_activated_without_associate = poll(|| vnic_state(&r.d2) == Some(VnicState::Associated));
    thread::sleep(Duration::from_secs(1));
    stop_stream.store(true, Ordering::Relaxed);
    let sent_at = sender
        .join()
        .map_err(|_| anyhow::anyhow!("the sender failed"))?;
    thread::sleep(Duration::from_millis(300));
    stop_capture.store(true, Ordering::Relaxed);
    let join = |h: thread::JoinHandle<TapLog>| {
        h.join()
            .map_err(|_| anyhow::anyhow!("a packet capture failed"))
    };
    let (log1, log2, log_ul) = (join(cap1)?, join(cap2)?, join(cap_ul)?);
    let (at_h1, at_h2) = (&log1.arrivals, &log2.arrivals);
    let tx_after = (tap_counters(&r.h1, TAP), tap_counters(&r.h2, TAP));

    src_qmp.drain_events(Duration::from_millis(100))?;
    dst_qmp.drain_events(Duration::from_millis(100))?;
    let stop_event = src_qmp.event_time("STOP");
    let resume_event = dst_qmp.event_time("RESUME");
    // Without the events (the test fails on it) the figures are taken at completion.
    let stopped = stop_event.unwrap_or(completed_at);
    let resumed = resume_event.unwrap_or(completed_at);
    let src_status = src_qmp.status()?;
    let dst_status = dst_qmp.status()?;

    let sent: Vec<(u32, SystemTime)> = (0..)
        .zip(&sent_at)
        .filter_map(|(seq, at)| Some((seq, (*at)?)))
        .collect();
    let losses = stream_losses::account(&sent, &log1.order, &log2.order, stopped, resumed);
    let window = |m: &BTreeMap<u32, SystemTime>| match (
        m.keys().next(),
        m.keys().last(),
        m.values().min(),
        m.values().max(),
    ) {
        (Some(a), Some(b), Some(first), Some(last)) => Some(Window {
            first_seq: *a,
            last_seq: *b,
            first_ms: ms(resumed, *first),
            last_ms: ms(resumed, *last),
        }),
        _ => None,
    };
    let after = |v: &[SystemTime]| v.iter().map(|t| ms(resumed, *t)).collect::<Vec<_>>();
    let forwarded = r.d1.counter("underlay_rx", "FORWARDED_TO_VTEP")?;
    let hooks = |d: &Daemon| {
        d.stats()
            .map(|s| s["hooks"].to_string())
            .unwrap_or_default()
    };
    let hooks_on_loss =
        (!losses.network().is_empty()).then(|| [hooks(&r.d1), hooks(&r.d2), hooks(&r.d3)]);

    // The migrated guest is alive: it answers vm3 from h2.
    let ping_error = r.vm3.ping(GUEST_IP, 3).err().map(|e| format!("{e:#}"));
    // Everyone converged on h2, from the NVA.
    let h3_converged = poll(|| on_h2(&r.d3));
    let h1_converged = poll(|| on_h2(&r.d1));

    Ok(QemuFigures {
        boot_s: boot.as_secs_f64(),
        dst_status_before,
        h2_state_pre_associated,
        migration_ms: migration.total_ms,
        setup_ms: migration.setup_ms,
        ram_kib: migration.ram_transferred / 1024,
        qemu_downtime_ms: migration.downtime_ms,
        h2_activated_without_associate,
        stop_event: stop_event.is_some(),
        resume_event: resume_event.is_some(),
        src_events: format!("{:?}", src_qmp.events),
        dst_events: format!("{:?}", dst_qmp.events),
        stop_to_resume_ms: ms(stopped, resumed),
        src_status,
        dst_status,
        sent: sent.len(),
        send_errors: sent_at.len() - sent.len(),
        at_h1: at_h1.len(),
        at_h2: at_h2.len(),
        losses,
        stop_signal: stop_signal.as_ref().ok().copied(),
        stop_signal_error: stop_signal.as_ref().err().map(|e| format!("{e:#}")),
        last_at_h1_ms: at_h1.values().max().map(|t| ms(resumed, *t)),
        first_at_h2_ms: at_h2.values().min().map(|t| ms(resumed, *t)),
        early_at_h2: at_h2.values().filter(|at| **at < resumed).count(),
        completed_ms: ms(resumed, completed_at),
        disassociated_ms: ms(resumed, disassociated_at),
        forwarded,
        through_pointer: log_ul.arrivals.len(),
        through_pointer_window: window(&log_ul.arrivals),
        tap_drops: (
            (tx_after.0 - tx_before.0).tx_dropped,
            (tx_after.1 - tx_before.1).tx_dropped,
        ),
        packet_socket_drops: (log1.drops, log2.drops, log_ul.drops),
        ping_error,
        h3_converged,
        h1_converged,
        drops: [drops(&r.d1), drops(&r.d2), drops(&r.d3)],
        rarps_ms: after(&log2.rarps),
        garps_ms: after(&log2.garps),
        hooks_on_loss,
        elapsed_s: start.elapsed().as_secs_f64(),
    })
}
