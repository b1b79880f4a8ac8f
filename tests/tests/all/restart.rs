//! Restart without loss: steady UDP both ways through nve (about 10,000 packets/s each way,
//! numbered by iperf3), the daemon killed with SIGKILL, or stopped with SIGTERM, and started
//! again in the middle: iperf3 counts zero lost datagrams, and the state read back is
//! identical. Then a daemon started with no dataplane left (as after a reboot) rebuilds it
//! from the stored state. All of it with the daemon started by `nsenter --net=...` and by
//! `ip netns exec` (a private mount namespace, whose own /sys/fs/bpf would die with it).
use std::{thread, time::Duration};

use nve_tests::{
    overlay::{self, H1_VTEP, H2_VTEP, TwoHosts, VM1_MAC, VM2_IP, VM2_MAC},
    rig::{Daemon, Launch, Vm, require_root},
};
use serde_json::Value;

const VM_UUID: &str = "6f1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b";

/// A UDP stream of 64-byte datagrams at `pps` for `secs` from `from` to an iperf3 server in
/// `to`: (datagrams sent, lost by the network). Datagrams the network delivered but the
/// receiving socket had no room for (the server starved of CPU on a loaded machine:
/// UdpRcvbufErrors in its namespace) are not the network's loss and are left out.
fn udp_stream(from: &Vm, to: &Vm, port: u16, secs: u32) -> (u64, u64) {
    let port = port.to_string();
    to.ns
        .exec(&["iperf3", "-s", "-1", "-D", "-p", &port])
        .unwrap();
    thread::sleep(Duration::from_millis(300));
    let overflowed_before = rcvbuf_errors(to);
    let out = from
        .ns
        .exec(&[
            "timeout",
            "60",
            "iperf3",
            "-c",
            &to.ip,
            "-p",
            &port,
            "-u",
            "-l",
            "64",
            "-b",
            "5120k",
            "-t",
            &secs.to_string(),
            "-J",
        ])
        .unwrap();
    let overflowed = rcvbuf_errors(to) - overflowed_before;
    let v: Value = serde_json::from_str(&out).unwrap();
    let sum = &v["end"]["sum"];
    let lost = sum["lost_packets"].as_u64().unwrap();
    if overflowed > 0 {
        eprintln!("{overflowed} of {lost} lost datagrams overflowed the receiving socket");
    }
    (
        sum["packets"].as_u64().unwrap(),
        lost.saturating_sub(overflowed),
    )
}

/// UDP datagrams `vm`'s sockets had to drop for want of buffer space, since its namespace
/// was made.
fn rcvbuf_errors(vm: &Vm) -> u64 {
    let out = vm
        .ns
        .exec(&["nstat", "-asz", "--json", "UdpRcvbufErrors"])
        .unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    v["kernel"]["UdpRcvbufErrors"].as_u64().unwrap()
}

fn state(d: &Daemon) -> (String, String, String) {
    let get = |p: &str| d.http("GET", p, b"").unwrap().1;
    (get("/v1/vns"), get("/v1/fdb"), get("/v1/vnics"))
}

#[test]
fn restart_under_nsenter_loses_nothing() {
    restart_loses_nothing(Launch::Nsenter, "rst");
}

#[test]
fn restart_under_ip_netns_exec_loses_nothing() {
    restart_loses_nothing(Launch::IpNetnsExec, "rsi");
}

/// Both streams across one restart (`stop`: SIGKILL or SIGTERM); the state read back after.
fn across_restart(
    rig: &TwoHosts,
    d: &mut Daemon,
    ports: (u16, u16),
    stop: impl FnOnce(&mut Daemon),
) -> (String, String, String) {
    let (vm1, vm2) = (&rig.vm1, &rig.vm2);
    let ((out_sent, out_lost), (in_sent, in_lost), after) = thread::scope(|s| {
        let out = s.spawn(|| udp_stream(vm1, vm2, ports.0, 4));
        let inbound = s.spawn(|| udp_stream(vm2, vm1, ports.1, 4));
        thread::sleep(Duration::from_millis(1500));
        stop(d);
        thread::sleep(Duration::from_millis(200));
        d.respawn().unwrap();
        let after = state(d);
        (out.join().unwrap(), inbound.join().unwrap(), after)
    });
    eprintln!(
        "restart under traffic: vm1->vm2 {out_sent} sent, {out_lost} lost; vm2->vm1 {in_sent} sent, {in_lost} lost"
    );
    assert!(
        out_sent > 30_000 && in_sent > 30_000,
        "streams too short: {out_sent} / {in_sent}"
    );
    assert_eq!(
        (out_lost, in_lost),
        (0, 0),
        "lost across a restart ({out_sent} / {in_sent} sent):\n{}",
        d.log_text()
    );
    after
}

fn restart_loses_nothing(launch: Launch, tag: &str) {
    require_root();
    let rig = TwoHosts::new(tag).unwrap();
    overlay::kernel_vxlan(&rig.h2, H2_VTEP, H1_VTEP, "vm2p", &[VM1_MAC]).unwrap();
    let mut d = Daemon::start_keeping_by(launch, &rig.h1, tag, H1_VTEP, "ul", &[]).unwrap();
    overlay::serve_vn(&d, H2_VTEP, VM2_MAC).unwrap();
    overlay::associate(&d, VM_UUID, "vm1p", VM1_MAC, None).unwrap();
    rig.vm1.ping_until_reachable(VM2_IP, 5).unwrap();
    rig.vm2.ping_until_reachable(overlay::VM1_IP, 5).unwrap();
    let before = state(&d);

    // Control: the measurement sees loss when forwarding does stop (a pause of 300 ms).
    let (vm1, vm2) = (&rig.vm1, &rig.vm2);
    let (_, control_lost) = thread::scope(|s| {
        let stream = s.spawn(|| udp_stream(vm2, vm1, 5300, 2));
        thread::sleep(Duration::from_millis(700));
        d.nve(&["vm", "pause", "--vm", VM_UUID]).unwrap();
        thread::sleep(Duration::from_millis(300));
        d.nve(&["vm", "resume", "--vm", VM_UUID]).unwrap();
        stream.join().unwrap()
    });
    assert!(
        control_lost > 1000,
        "a 300 ms pause lost only {control_lost} datagrams"
    );

    let after = across_restart(&rig, &mut d, (5301, 5302), Daemon::kill);
    assert_eq!(after, before, "state read back differs after kill -9");
    let after = across_restart(&rig, &mut d, (5303, 5304), |d| {
        assert!(d.terminate().unwrap().success());
    });
    assert_eq!(after, before, "state read back differs after SIGTERM");
    assert!(
        d.log_text().contains("took over a pinned link"),
        "{}",
        d.log_text()
    );

    // As after a reboot: no dataplane, only the state dir. The daemon rebuilds it.
    assert!(d.terminate().unwrap().success());
    rig.vm1
        .ping(VM2_IP, 1)
        .expect("a stopped daemon keeps its dataplane forwarding");
    d.teardown().unwrap();
    assert!(!d.pin_dir().exists());
    assert!(
        rig.vm1
            .ns
            .exec(&["ping", "-c", "1", "-W", "1", VM2_IP])
            .is_err(),
        "torn down, yet forwarding"
    );
    d.respawn().unwrap();
    assert_eq!(state(&d), before, "state rebuilt after a reboot differs");
    d.wait_next_hop(H2_VTEP).unwrap();
    rig.vm1
        .ping_until_reachable(VM2_IP, 5)
        .expect("dataplane not rebuilt from the stored state");
}

/// A daemon started in the background under `ip netns exec` (its starter gone, the daemon
/// handed to init, so no parent to tell the host's mount namespace by) still pins into the
/// host's bpffs: killed, a new one takes the pins over.
#[test]
fn a_backgrounded_daemon_under_ip_netns_exec_pins_into_the_host() {
    require_root();
    let rig = TwoHosts::new("rsb").unwrap();
    let instance = format!("{}{}rsb", nve_tests::rig::NS_PREFIX, std::process::id());
    let log = format!("/tmp/{instance}.log");
    let daemon = format!(
        "ip netns exec {} {} --instance {instance} daemon --vtep {H1_VTEP} --underlay ul >>{log} 2>&1 &",
        rig.h1.name,
        nve_tests::rig::nve_bin().display()
    );
    let pins = std::path::PathBuf::from(format!("/sys/fs/bpf/nve/{instance}"));
    let socket = format!("/run/nve/{instance}.sock");
    let stop = |signal: &str| {
        let _ = nve_tests::rig::run(&[
            "pkill",
            signal,
            "-f",
            &format!("instance {instance} daemon"),
        ]);
        nve_tests::rig::wait_until("the daemon gone", || {
            nve_tests::rig::run(&["pgrep", "-f", &format!("instance {instance} daemon")]).is_err()
        });
    };
    let up = || {
        nve_tests::rig::wait_until("the daemon ready", || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        })
    };
    let cleanup = || {
        stop("-TERM");
        let ns = format!("--net=/run/netns/{}", rig.h1.name);
        let nve = nve_tests::rig::nve_bin();
        let _ = nve_tests::rig::run(&[
            "nsenter",
            &ns,
            nve.to_str().unwrap(),
            "--instance",
            &instance,
            "teardown",
        ]);
        let _ = std::fs::remove_dir_all(format!("/var/lib/nve/{instance}"));
        let _ = std::fs::remove_file(&log);
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        nve_tests::rig::run(&["sh", "-c", &daemon]).unwrap();
        up();
        assert!(
            pins.exists(),
            "no pins in the host's bpffs at {}",
            pins.display()
        );
        stop("-KILL");
        assert!(pins.exists(), "the pins died with the daemon");
        nve_tests::rig::run(&["sh", "-c", &daemon]).unwrap();
        up();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(text.contains("joined the mount namespace"), "{text}");
        assert!(text.contains("took over a pinned link"), "{text}");
    }));
    cleanup();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// An upgrade whose maps changed layout: the new daemon finds a pinned map an older build
/// made with other value sizes (here 8-byte port values, as before counter slots). It
/// creates that map anew, refills it from its state and forwards again, rather than fail to
/// load its programs against the old map.
#[test]
fn a_pinned_map_of_another_layout_is_made_anew() {
    require_root();
    let rig = TwoHosts::new("rsl").unwrap();
    overlay::kernel_vxlan(&rig.h2, H2_VTEP, H1_VTEP, "vm2p", &[VM1_MAC]).unwrap();
    let mut d = Daemon::start_keeping(&rig.h1, "rsl", H1_VTEP, "ul", &[]).unwrap();
    overlay::serve_vn(&d, H2_VTEP, VM2_MAC).unwrap();
    overlay::associate(&d, VM_UUID, "vm1p", VM1_MAC, None).unwrap();
    rig.vm1.ping_until_reachable(VM2_IP, 5).unwrap();
    d.kill();
    let pin = d.pin_dir().join(nve_common::maps::PORTS_MAP);
    std::fs::remove_file(&pin).unwrap();
    let pin = pin.to_str().unwrap();
    let old = [
        "bpftool",
        "map",
        "create",
        pin,
        "type",
        "hash",
        "key",
        "8",
        "value",
        "8",
        "entries",
        "4096",
        "name",
        "NVE_PORTS",
    ];
    nve_tests::rig::run(&old).unwrap();
    d.respawn().unwrap();
    assert!(d.log_text().contains("another layout"), "{}", d.log_text());
    rig.vm1
        .ping_until_reachable(VM2_IP, 5)
        .expect("not forwarding with the map made anew");
    let shown: Value = serde_json::from_str(
        &nve_tests::rig::run(&["bpftool", "-j", "map", "show", "pinned", pin]).unwrap(),
    )
    .unwrap();
    assert_eq!(
        shown["bytes_value"].as_u64(),
        Some(size_of::<nve_common::maps::PortValue>() as u64)
    );
}
