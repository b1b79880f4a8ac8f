//! The other half of a migration that loses nothing: a QEMU whose VM is not running (here a
//! running guest stopped with QMP `stop`, as a destination started with `-incoming` is until
//! RESUME) keeps its tap open but does not read it, so frames written into the tap queue there
//! (up to its txqueuelen); the test checks that the guest gets every queued frame once the VM
//! runs again (QMP `cont`).
//!
//! The frames are numbered ICMP echo requests from the tap's host side. The tap's transmit
//! counters say how many QEMU read (one while stopped, held in QEMU's own queue) and how many
//! the tap dropped; the guest's own receive counter (its init reports it, `nve.rxreport`) says
//! how many it got; its echo replies, seen on the tap with kernel timestamps, say when the
//! first arrived after `cont` (not all are answered: the guest's ICMP socket has a send buffer
//! of some 100 replies in flight, and drops the replies beyond it).
use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    time::{Duration, Instant, SystemTime},
};

use nve_tests::{
    packet::{self, Ipv4},
    qemu::{Guest, tap_counters},
    rig::{self, Netns, require_root, send_frames},
    stamped::{ms, recv_stamped, socket_drops, stamped_socket},
};
use serde_json::json;

const TAP: &str = "tap0";
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x4e, 0x56, 0x71];
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 71, 1);
const HOST_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 71, 2);
/// Frames written into the tap while the VM is stopped, and the tap's queue (room for all).
const FRAMES: u16 = 1000;
const TXQUEUELEN: &str = "2000";
/// The echo requests' identifier: the guest's replies carry it back.
const ECHO_ID: u16 = 0x4e56;
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// The sequence number of the guest's echo reply in `frame`, if it is one of ours.
fn echo_reply_seq(frame: &[u8]) -> Option<u16> {
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    let icmp = ip.get(ihl..)?;
    let ours = frame.get(12..14)? == [8, 0]
        && ip.get(9)? == &1
        && ip.get(12..16)? == GUEST_IP.octets()
        && icmp.first()? == &0
        && icmp.get(4..6)? == ECHO_ID.to_be_bytes();
    ours.then(|| u16::from_be_bytes([icmp[6], icmp[7]]))
}

#[test]
fn a_stopped_qemu_delivers_the_frames_queued_in_its_tap_when_it_runs_again() {
    require_root();
    let started = Instant::now();
    let h = Netns::new("qtq").unwrap();
    let ip = format!("{GUEST_IP}/24");
    let mut guest = Guest::start_with(&h, "q", TAP, GUEST_MAC, &ip, None, "nve.rxreport").unwrap();
    let boot = guest.wait_ready(BOOT_TIMEOUT).unwrap();
    let mut qmp = guest.qmp().unwrap();
    h.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP])
        .unwrap();
    h.ip(&["link", "set", TAP, "txqueuelen", TXQUEUELEN])
        .unwrap();
    // Both sides know each other's MAC before the VM stops.
    h.exec(&["ping", "-c", "1", "-W", "5", &GUEST_IP.to_string()])
        .unwrap_or_else(|e| panic!("the guest does not answer: {e:#}\n{}", guest.logs()));
    let host_mac = h
        .exec(&["cat", &format!("/sys/class/net/{TAP}/address")])
        .unwrap();
    let host_mac: Vec<u8> = host_mac
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    let host_mac: [u8; 6] = host_mac.try_into().unwrap();
    let replies = stamped_socket(&h, TAP, libc::ETH_P_IP as u16).unwrap();

    // The guest's count settled (it says it within 0.1 s), then the VM stops.
    std::thread::sleep(Duration::from_millis(500));
    let rx_before = guest
        .rx_packets()
        .expect("the guest reports its receive counter");
    qmp.execute("stop", json!({})).unwrap();
    qmp.wait_event("STOP", Duration::from_secs(10)).unwrap();
    let before = tap_counters(&h, TAP);
    let ip = Ipv4::new(HOST_IP, GUEST_IP, 1);
    let frames: Vec<Vec<u8>> = (0..FRAMES)
        .map(|seq| {
            let echo = packet::icmp_echo(ECHO_ID, seq, 32);
            packet::eth(GUEST_MAC, host_mac, 0x0800, &ip.packet(&echo))
        })
        .collect();
    send_frames(&h, TAP, &frames).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let stopped = tap_counters(&h, TAP) - before;
    let mut buf = [0u8; 2048];
    let mut answered_while_stopped = 0;
    while let Some((n, _, _)) = recv_stamped(&replies, &mut buf) {
        answered_while_stopped += usize::from(echo_reply_seq(&buf[..n]).is_some());
    }

    let cont = SystemTime::now();
    qmp.execute("cont", json!({})).unwrap();
    let resumed = qmp.wait_event("RESUME", Duration::from_secs(10)).unwrap();
    let (mut got, mut first, mut last, mut repeats) = (BTreeSet::new(), None, None, 0);
    let deadline = Instant::now() + Duration::from_secs(3);
    while got.len() < usize::from(FRAMES) && Instant::now() < deadline {
        let Some((n, _, at)) = recv_stamped(&replies, &mut buf) else {
            continue;
        };
        if let Some(seq) = echo_reply_seq(&buf[..n]) {
            repeats += usize::from(!got.insert(seq));
            first.get_or_insert(at);
            last = Some(at);
        }
    }
    let running = tap_counters(&h, TAP) - before - stopped;
    let read = stopped.tx + running.tx;
    let mut rx = 0;
    rig::wait_until("the guest reports what QEMU read from its tap", || {
        rx = guest.rx_packets().unwrap_or(0) - rx_before;
        rx >= read
    });
    let span = |t: Option<SystemTime>| t.map_or("-".into(), |t| format!("{:.1} ms", ms(cont, t)));
    println!(
        "stopped QEMU (boot {:.1} s): {FRAMES} echo requests written into its tap (txqueuelen \
         {TXQUEUELEN}); the tap dropped {}, QEMU read {} while stopped ({} answered); after \
         `cont` (RESUME {:.1} ms later) QEMU read {}, the guest received {} (its counter) and \
         answered {} ({} twice; the capture dropped {}), the first {} after `cont`, the last \
         {}; test {:.1} s",
        boot.as_secs_f64(),
        stopped.tx_dropped,
        stopped.tx,
        answered_while_stopped,
        ms(cont, resumed),
        running.tx,
        rx,
        got.len(),
        repeats,
        socket_drops(&replies),
        span(first),
        span(last),
        started.elapsed().as_secs_f64(),
    );
    assert_eq!(stopped.tx_dropped, 0, "the tap dropped frames: its queue");
    // QEMU reads one frame, finds its NIC cannot take it, keeps it in its own queue and stops
    // reading the tap until the VM runs (net/tap.c, tap_send): one frame read, none answered.
    assert!(
        stopped.tx <= 1,
        "QEMU read {} frames from its tap while stopped",
        stopped.tx
    );
    assert_eq!(answered_while_stopped, 0, "the stopped guest answered");
    assert!(
        read >= u64::from(FRAMES),
        "QEMU read {read} frames from its tap, {FRAMES} were queued"
    );
    assert_eq!(rx, read, "the guest received other than what QEMU read");
    assert!(first.is_some(), "the guest answered none after `cont`");
}
