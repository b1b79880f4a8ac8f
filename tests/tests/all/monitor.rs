//! `nve monitor` shows the packets the dataplane drops as they happen, with their reasons
//! and decoded headers: a VM's frame with a spoofed source MAC (SPOOFED_SRC_MAC) and VXLAN
//! for a VNI nobody serves (VNI_NOT_FOUND, with the VXLAN header's VNI and the inner
//! frame). One monitor at a time; when it exits, reporting is off again in the dataplane's
//! config; `--sample N` reports about one packet in N.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use nve_tests::{
    overlay::{self, H1_VTEP, H2_VTEP, Side, TwoHosts, VM1_IP, VM1_MAC, VM2_IP, VM2_MAC, VN},
    packet::{Ipv4, eth, udp, vxlan_frame},
    rig::{Daemon, mac_str, nve_bin, require_root, send_frames, wait_until},
};
use nve_user::mac::MacAddr;
use serde_json::Value;

const SPOOFED: [u8; 6] = [2, 0, 0, 0, 1, 0x99];
const UNSERVED_VNI: u32 = 4242;

/// A running `nve monitor`, killed on drop; its lines as they come.
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Monitor {
    /// `nve monitor --json ARGS`.
    fn start(d: &Daemon, args: &[&str]) -> Monitor {
        Self::spawn(d, &[&["--json"], args].concat())
    }

    /// `nve monitor ARGS`.
    fn spawn(d: &Daemon, args: &[&str]) -> Monitor {
        let mut child = Command::new(nve_bin())
            .arg("--socket")
            .arg(&d.socket)
            .arg("monitor")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("running nve monitor");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Monitor { child, lines }
    }

    /// The first JSON line `ok` holds for, within 10 s.
    fn wait_for(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let line = self.wait_for_line(what, |l| ok(&json(l)));
        json(&line)
    }

    /// The first line `ok` holds for, within 10 s.
    fn wait_for_line(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if ok(&l) => return l,
                Ok(_) => {}
                Err(_) => panic!("nve monitor: no {what} within 10 s"),
            }
        }
    }

    /// How many JSON lines `ok` holds for until none came for a second.
    fn count(&self, ok: impl Fn(&Value) -> bool) -> usize {
        self.count_and_lost(ok, Duration::from_secs(1)).0
    }

    /// How many JSON lines `ok` holds for, and the last count of lost events, until no
    /// line came for `quiet`.
    fn count_and_lost(&self, ok: impl Fn(&Value) -> bool, quiet: Duration) -> (usize, u64) {
        let (mut n, mut lost) = (0, 0);
        while let Ok(l) = self.lines.recv_timeout(quiet) {
            let v = json(&l);
            n += usize::from(ok(&v));
            lost = v["lost"].as_u64().unwrap_or(lost);
        }
        (n, lost)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("nve monitor printed {line:?}: {e}"))
}

/// `monitor` of the dataplane's config entry, as `nve dump config` reads it from the pins.
fn monitor_mode(d: &Daemon) -> u64 {
    let out = Command::new(nve_bin())
        .args(["--instance", &d.instance, "dump", "config", "--json"])
        .output()
        .expect("running nve dump");
    let entries: Vec<Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("nve dump config: {e}: {out:?}"));
    entries[0]["value"]["monitor"]
        .as_u64()
        .expect("a monitor field")
}

/// A UDP datagram from VM1's address to VM2's, from `src` MAC.
fn from_vm1(src: [u8; 6]) -> Vec<u8> {
    let ip = Ipv4::new(VM1_IP.parse().unwrap(), VM2_IP.parse().unwrap(), 17);
    eth(
        VM2_MAC,
        src,
        0x0800,
        &ip.packet(&udp(40000, 5353, b"monitor")),
    )
}

fn is(v: &Value, reason: &str) -> bool {
    v["reason"] == reason
}

#[test]
fn monitor_shows_drops_with_their_reasons_and_headers() {
    require_root();
    let rig = TwoHosts::new("mo").unwrap();
    overlay::kernel_vxlan(&rig.h2, H2_VTEP, H1_VTEP, "vm2p", &[VM1_MAC]).unwrap();
    let d = overlay::nve(&rig, Side::H1, "mo", &[]).unwrap();
    assert_eq!(monitor_mode(&d), 0, "reporting is on without a monitor");

    let m = Monitor::start(&d, &[]);
    wait_until("the monitor turns reporting on", || monitor_mode(&d) == 1);

    send_frames(&rig.vm1.ns, "eth0", &[from_vm1(SPOOFED)]).unwrap();
    let v = m.wait_for("SPOOFED_SRC_MAC", |v| is(v, "SPOOFED_SRC_MAC"));
    assert_eq!(v["hook"], "vm_egress");
    assert_eq!(v["dropped"], true);
    assert_eq!(v["port"], "vm1p");
    assert_eq!(v["vn"], VN);
    assert_eq!(v["src_mac"], mac_str(SPOOFED));
    assert_eq!(v["dst_mac"], mac_str(VM2_MAC));
    assert_eq!(v["src_ip"], VM1_IP);
    assert_eq!(v["dst_ip"], VM2_IP);
    assert_eq!(
        (v["src_port"].clone(), v["dst_port"].clone()),
        (40000.into(), 5353.into())
    );

    let mac = |host: &nve_tests::rig::Netns| -> [u8; 6] {
        let text = host.exec(&["cat", "/sys/class/net/ul/address"]).unwrap();
        text.trim().parse::<MacAddr>().unwrap().0
    };
    let outer = Ipv4::new(H2_VTEP.parse().unwrap(), H1_VTEP.parse().unwrap(), 17);
    let inner = eth([0xff; 6], VM2_MAC, 0x0806, &[0; 28]);
    let frame = vxlan_frame(
        mac(&rig.h1),
        mac(&rig.h2),
        &outer,
        50000,
        UNSERVED_VNI,
        &inner,
    );
    send_frames(&rig.h2, "ul", &[frame]).unwrap();
    let v = m.wait_for("VNI_NOT_FOUND", |v| is(v, "VNI_NOT_FOUND"));
    assert_eq!(v["hook"], "underlay_rx");
    assert_eq!(v["port"], "ul");
    assert_eq!(v["src_ip"], H2_VTEP);
    assert_eq!(v["dst_ip"], H1_VTEP);
    assert_eq!(v["dst_port"], 4789);
    assert_eq!(v["vxlan_vni"], UNSERVED_VNI);
    assert_eq!(v["inner"]["src_mac"], mac_str(VM2_MAC));
    assert_eq!(v["inner"]["ether_type"], 0x0806);

    // One monitor at a time.
    let second = d.cli(&["monitor"]);
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second monitor attached");
    assert!(
        err.contains("E_BUSY") && err.contains("another monitor"),
        "{err}"
    );
    assert_eq!(
        monitor_mode(&d),
        1,
        "the refused monitor turned reporting off"
    );

    drop(m);
    wait_until("reporting off once the monitor is gone", || {
        monitor_mode(&d) == 0
    });
    // And a new one may attach; as table lines, forwards too.
    let m = Monitor::spawn(&d, &["--all", "--port", "vm1p"]);
    wait_until("the monitor turns reporting on for all", || {
        monitor_mode(&d) == 2
    });
    rig.vm1.ping(VM2_IP, 1).ok();
    // The frame as it left: encapsulated, VM1's frame inside.
    let line = m.wait_for_line("a forward", |l| l.contains(" FORWARD ENCAPSULATED "));
    let expected = format!("vm_egress FORWARD ENCAPSULATED port vm1p vn {VN} len 98 ");
    assert!(line.contains(&expected), "{line}");
    let inner = format!(
        "{H1_VTEP}:{port} > {H2_VTEP}:4789 udp [vni 100: {} > {} {VM1_IP} > {VM2_IP} icmp]",
        mac_str(VM1_MAC),
        mac_str(VM2_MAC),
        port = line
            .split(&format!("{H1_VTEP}:"))
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or("?"),
    );
    assert!(line.contains(&inner), "{line}\nwant {inner}");
}

#[test]
fn a_sampling_monitor_reports_fewer_packets() {
    require_root();
    let rig = TwoHosts::new("ms").unwrap();
    let d = overlay::nve(&rig, Side::H1, "ms", &[]).unwrap();
    let frames = vec![from_vm1(SPOOFED); 200];
    let spoofed = |v: &Value| is(v, "SPOOFED_SRC_MAC");

    let every = Monitor::start(&d, &[]);
    wait_until("reporting on", || monitor_mode(&d) == 1);
    send_frames(&rig.vm1.ns, "eth0", &frames).unwrap();
    assert_eq!(every.count(spoofed), 200);
    drop(every);
    wait_until("reporting off", || monitor_mode(&d) == 0);

    let sampled = Monitor::start(&d, &["--sample", "10"]);
    wait_until("reporting on", || monitor_mode(&d) == 1);
    send_frames(&rig.vm1.ns, "eth0", &frames).unwrap();
    let n = sampled.count(spoofed);
    // One in 10 per CPU: 20, one more for each CPU the frames were spread over.
    assert!(
        (18..=22).contains(&n),
        "{n} of 200 reported with --sample 10"
    );
    drop(sampled);
    wait_until("reporting off", || monitor_mode(&d) == 0);

    // A flood: whatever the ring buffer cannot take is counted lost, the rest reported.
    let flood = Monitor::start(&d, &[]);
    wait_until("reporting on", || monitor_mode(&d) == 1);
    const FLOOD: usize = 20_000;
    send_frames(&rig.vm1.ns, "eth0", &vec![from_vm1(SPOOFED); FLOOD]).unwrap();
    let (n, lost) = flood.count_and_lost(spoofed, Duration::from_millis(2500));
    assert_eq!(n as u64 + lost, FLOOD as u64, "{n} reported, {lost} lost");
}
