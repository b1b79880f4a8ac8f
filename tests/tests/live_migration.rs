//! A VM migrates h1 -> h2 while h3's VM streams numbered UDP datagrams to it at about
//! 10,000 a second, three NVEs on the NVA (a real etcd in h3): h2 pre-associates (nothing
//! published), the VM pauses on h1 (link down), h1 disassociates with `--migrating-out h2`
//! (forwarding pointer), the VM resumes on h2 and announces itself with a RARP, which
//! activates it and publishes the move (sequence + 1); h3 follows. Datagrams sent while the
//! VM was paused may be lost (reported); every other one must arrive, and frames that
//! reached h1 after the move went on through its forwarding pointer.
use std::{
    collections::BTreeSet,
    fs::File,
    net::UdpSocket,
    os::fd::AsRawFd,
    sync::{
        Arc, Barrier, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use nve_tests::{
    overlay::{H2_VTEP, VM1_IP, VM1_MAC},
    packet,
    rig::{Daemon, Netns, mac_str, require_root, send_frames},
    three_hosts::MigrationRig,
};

const VMX: &str = "00000000-0000-4000-8000-0000000000b1";
const VM3: &str = "00000000-0000-4000-8000-0000000000b3";
const PORT: u16 = 9999;
/// Datagrams a second, and for how long.
const RATE: u32 = 10_000;
const SECONDS: u32 = 3;
/// Datagrams in flight when the link goes down may die with it: this many before the
/// pause count as sent during it.
const IN_FLIGHT: u32 = 20;

/// Runs `f` on a thread inside `ns`.
fn in_ns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let path = ns.path();
    thread::spawn(move || {
        let target = File::open(path).expect("netns");
        // SAFETY: setns on this thread only.
        assert_eq!(
            unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
}

/// Collects the sequence numbers arriving on UDP `PORT` in `ns` until `stop`; waits on
/// `bound` once listening.
fn receiver(
    ns: &Netns,
    got: Arc<Mutex<BTreeSet<u32>>>,
    stop: Arc<AtomicBool>,
    bound: Arc<Barrier>,
) -> thread::JoinHandle<()> {
    in_ns(ns, move || {
        let socket = UdpSocket::bind(("0.0.0.0", PORT)).expect("bind");
        bound.wait();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok(n) = socket.recv(&mut buf)
                && n >= 4
            {
                let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
                got.lock().unwrap().insert(seq);
            }
        }
    })
}

#[test]
fn a_vm_migrates_under_a_stream_without_network_loss() {
    require_root();
    let r = MigrationRig::new("lm", VMX, VM3).unwrap();
    let (d1, d3, rig, new) = (&r.d1, &r.d3, &r.rig, &r.new);
    // The destination pre-associates the VM's new incarnation (not running yet).
    r.pre_associate_on_h2().unwrap();

    let got = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let bound = Arc::new(Barrier::new(3));
    let receivers = [
        receiver(&rig.vm1.ns, got.clone(), stop.clone(), bound.clone()),
        receiver(&new.ns, got.clone(), stop.clone(), bound.clone()),
    ];
    // Both listening before the first datagram leaves.
    bound.wait();
    let next = Arc::new(AtomicU32::new(0));
    let total = RATE * SECONDS;
    let sender = {
        let next = next.clone();
        in_ns(&rig.vm3.ns, move || {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            socket.connect((VM1_IP, PORT)).unwrap();
            let start = Instant::now();
            for seq in 0..total {
                // Paced: datagram `seq` leaves at seq / RATE seconds.
                let due = Duration::from_secs_f64(f64::from(seq) / f64::from(RATE));
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    thread::sleep(wait);
                }
                let _ = socket.send(&seq.to_be_bytes());
                next.store(seq + 1, Ordering::Relaxed);
            }
        })
    };

    // The move, a second into the stream.
    thread::sleep(Duration::from_secs(1));
    let paused_at = next.load(Ordering::Relaxed);
    rig.vm1.ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    d1.nve(&[
        "vm",
        "disassociate",
        "--vm",
        VMX,
        "--migrating-out",
        H2_VTEP,
    ])
    .unwrap();
    new.ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    send_frames(&new.ns, "eth0", &[packet::rarp(VM1_MAC)]).unwrap();
    let resumed_at = next.load(Ordering::Relaxed);

    sender.join().unwrap();
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for r in receivers {
        r.join().unwrap();
    }
    let got = got.lock().unwrap();
    let pause = paused_at.saturating_sub(IN_FLIGHT)..resumed_at;
    let lost: Vec<u32> = (0..total).filter(|s| !got.contains(s)).collect();
    let (during_pause, network): (Vec<u32>, Vec<u32>) =
        lost.iter().partition(|s| pause.contains(s));
    let forwarded = d1.counter("underlay_rx", "FORWARDED_TO_VTEP").unwrap();
    println!(
        "sent {total}, received {}, lost while the VM was paused (seq {}..{}): {}, lost otherwise: {}, \
         through h1's forwarding pointer: {forwarded}",
        got.len(),
        pause.start,
        pause.end,
        during_pause.len(),
        network.len()
    );
    assert!(
        network.is_empty(),
        "the network lost datagrams: {network:?}"
    );
    assert!(forwarded > 0, "no frame took the stale path through h1");
    // Everyone converged: h3 and h1 have the VM on h2 from the NVA.
    let on_h2 = |d: &Daemon| {
        let fdb: serde_json::Value =
            serde_json::from_str(&d.nve(&["fdb", "--json"]).unwrap()).unwrap();
        fdb.as_array().unwrap().iter().any(|e| {
            e["mac"] == mac_str(VM1_MAC) && e["vtep"]["vtep"] == H2_VTEP && e["from_nva"] == true
        })
    };
    assert!(on_h2(d3), "{}", d3.nve(&["fdb"]).unwrap());
    assert!(on_h2(d1), "{}", d1.nve(&["fdb"]).unwrap());
}
