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
    os::fd::{AsRawFd, OwnedFd},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use nve_common::metrics::DropReason;
use nve_user::vnic::VnicState;

use crate::{
    etcd::EtcdServer,
    live_stream::in_ns,
    overlay::{self, H1_VTEP, H2_VTEP, VN, VNI},
    qemu::Guest,
    rig::{Daemon, Netns, Vm, mac_str, packet_socket},
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
    /// Frames the packet socket itself dropped (then the counts are not trustworthy).
    drops: u32,
}

const SOL_PACKET: i32 = 263;
const PACKET_STATISTICS: i32 = 6;

/// Records what `tap` (in `ns`) transmits to its guest and the guest's announcements, until
/// `stop`. Frames the kernel hands the tap are seen as PACKET_OUTGOING before the tap queues
/// them for QEMU (or drops them, its queue full): the network's side of the tap.
fn tap_capture(ns: &Netns, tap: &str, stop: Arc<AtomicBool>) -> Result<thread::JoinHandle<TapLog>> {
    // ETH_P_ALL: outgoing frames reach only the packet sockets of every protocol.
    let fd = packet_socket(ns, tap, libc::ETH_P_ALL as u16)?;
    let raw = fd.as_raw_fd();
    let set = |level: i32, name: i32, value: i32| -> Result<()> {
        // SAFETY: setsockopt with an int on a socket we own.
        let rc = unsafe {
            libc::setsockopt(
                raw,
                level,
                name,
                (&raw const value).cast(),
                size_of::<i32>() as u32,
            )
        };
        anyhow::ensure!(rc == 0, "setsockopt: {}", std::io::Error::last_os_error());
        Ok(())
    };
    set(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 64 << 20)?;
    set(libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
    crate::rig::recv_timeout(&fd, Duration::from_millis(50))?;
    Ok(thread::spawn(move || capture_loop(&fd, &stop)))
}

fn capture_loop(fd: &OwnedFd, stop: &AtomicBool) -> TapLog {
    let mut log = TapLog::default();
    let mut buf = [0u8; 2048];
    let mut control = [0u64; 16];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: zeroed plain-data structs, then pointed at buffers that outlive the call.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&raw mut sll).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        // SAFETY: recvmsg into the buffers above.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &raw mut msg, 0) };
        if n <= 0 {
            continue;
        }
        let frame = &buf[..n as usize];
        let mut at = SystemTime::now();
        // SAFETY: walking the control messages recvmsg filled in.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    at =
                        SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
                }
                c = libc::CMSG_NXTHDR(&raw const msg, c);
            }
        }
        if sll.sll_pkttype == libc::PACKET_OUTGOING {
            if let Some(seq) = stream_seq(frame).or_else(|| vxlan_inner(frame).and_then(stream_seq))
            {
                log.arrivals.entry(seq).or_insert(at);
            }
        } else if frame.get(6..12) == Some(&GUEST_MAC[..]) {
            match announcement(frame) {
                Some(Announcement::Rarp) => log.rarps.push(at),
                Some(Announcement::Garp) => log.garps.push(at),
                None => {}
            }
        }
    }
    let mut stats = [0u32; 2];
    let mut len = size_of_val(&stats) as u32;
    // SAFETY: PACKET_STATISTICS fills struct tpacket_stats { packets, drops }.
    unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            SOL_PACKET,
            PACKET_STATISTICS,
            stats.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    log.drops = stats[1];
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

/// A tap's transmit counters: (packets, dropped because the guest's queue was full).
fn tap_tx(ns: &Netns) -> (u64, u64) {
    let Ok(out) = ns.ip(&["-j", "-s", "link", "show", TAP]) else {
        return (0, 0);
    };
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let tx = &v[0]["stats64"]["tx"];
    (
        tx["packets"].as_u64().unwrap_or(0),
        tx["dropped"].as_u64().unwrap_or(0),
    )
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

/// Milliseconds from `a` to `b` (negative if `b` is earlier).
fn ms(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -e.duration().as_secs_f64() * 1000.0,
    }
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
    /// Sent but reached neither tap: what the network lost.
    pub network_lost: Vec<u32>,
    /// Reached h1's tap after the source stopped: during QEMU's downtime (before RESUME) and
    /// after the destination resumed; first and last sequence number of each.
    pub lost_to_pause: usize,
    pub in_downtime: usize,
    pub in_downtime_seqs: Option<(u32, u32)>,
    pub after_resume: usize,
    pub after_resume_seqs: Option<(u32, u32)>,
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
    /// The NVEs' hook counters (h1, h2, h3) when the network lost datagrams.
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
    let tx_before = (tap_tx(&r.h1), tap_tx(&r.h2));

    // Both taps watched before the first datagram leaves.
    let stop_capture = Arc::new(AtomicBool::new(false));
    let stop_stream = Arc::new(AtomicBool::new(false));
    let _stop_on_return = StopOnDrop(vec![stop_stream.clone(), stop_capture.clone()]);
    let cap1 = tap_capture(&r.h1, TAP, stop_capture.clone())?;
    let cap2 = tap_capture(&r.h2, TAP, stop_capture.clone())?;
    // What leaves h1 for the underlay carrying the stream: re-encapsulated by its pointer.
    let cap_ul = tap_capture(&r.h1, "ul", stop_capture.clone())?;
    let next = Arc::new(AtomicU32::new(0));
    let failed_sends = Arc::new(Mutex::new(Vec::new()));
    let sender = {
        let (stop, next, failed) = (stop_stream.clone(), next.clone(), failed_sends.clone());
        in_ns(&r.vm3.ns, move || {
            // Not connected: the guest's port unreachables must not fail the next send.
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            let start = Instant::now();
            for seq in 0..rate * seconds {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // Paced: datagram `seq` leaves at seq / rate seconds.
                let due = Duration::from_secs_f64(f64::from(seq) / f64::from(rate));
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    thread::sleep(wait);
                }
                if socket
                    .send_to(&seq.to_be_bytes(), (GUEST_IP, PORT))
                    .is_err()
                {
                    failed.lock().unwrap().push(seq);
                }
                next.store(seq + 1, Ordering::Relaxed);
            }
        })
    };

    // The move: QEMU's own live migration, source h1 -> destination h2.
    thread::sleep(LEAD);
    let migration = src_qmp
        .migrate(&migration_socket, MIGRATION_TIMEOUT)
        .map_err(|e| {
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
    sender
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
    let tx_after = (tap_tx(&r.h1), tap_tx(&r.h2));

    src_qmp.drain_events(Duration::from_millis(100))?;
    dst_qmp.drain_events(Duration::from_millis(100))?;
    let stop_event = src_qmp.event_time("STOP");
    let resume_event = dst_qmp.event_time("RESUME");
    // Without the events (the test fails on it) the figures are taken at completion.
    let stopped = stop_event.unwrap_or(completed_at);
    let resumed = resume_event.unwrap_or(completed_at);
    let src_status = src_qmp.status()?;
    let dst_status = dst_qmp.status()?;

    let total = next.load(Ordering::Relaxed);
    let failed = failed_sends.lock().unwrap().clone();
    let sent: Vec<u32> = (0..total)
        .filter(|s| failed.binary_search(s).is_err())
        .collect();
    let network_lost: Vec<u32> = sent
        .iter()
        .copied()
        .filter(|s| !at_h1.contains_key(s) && !at_h2.contains_key(s))
        .collect();
    let paused: Vec<(u32, SystemTime)> = at_h1
        .iter()
        .filter(|(_, at)| **at >= stopped)
        .map(|(s, at)| (*s, *at))
        .collect();
    let (in_downtime, after_resume): (Vec<_>, Vec<_>) =
        paused.iter().partition(|(_, at)| *at < resumed);
    let seqs = |v: &[&(u32, SystemTime)]| v.first().zip(v.last()).map(|(a, b)| (a.0, b.0));
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
        (!network_lost.is_empty()).then(|| [hooks(&r.d1), hooks(&r.d2), hooks(&r.d3)]);

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
        send_errors: failed.len(),
        at_h1: at_h1.len(),
        at_h2: at_h2.len(),
        network_lost,
        lost_to_pause: paused.len(),
        in_downtime: in_downtime.len(),
        in_downtime_seqs: seqs(&in_downtime),
        after_resume: after_resume.len(),
        after_resume_seqs: seqs(&after_resume),
        last_at_h1_ms: at_h1.values().max().map(|t| ms(resumed, *t)),
        first_at_h2_ms: at_h2.values().min().map(|t| ms(resumed, *t)),
        early_at_h2: at_h2.values().filter(|at| **at < resumed).count(),
        completed_ms: ms(resumed, completed_at),
        disassociated_ms: ms(resumed, disassociated_at),
        forwarded,
        through_pointer: log_ul.arrivals.len(),
        through_pointer_window: window(&log_ul.arrivals),
        tap_drops: (tx_after.0.1 - tx_before.0.1, tx_after.1.1 - tx_before.1.1),
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
