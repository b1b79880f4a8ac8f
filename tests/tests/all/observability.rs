//! Per-VN and per-port counters follow real traffic through nve (kernel vxlan+bridge as the
//! peer), in `nve stats --json` and on the Prometheus endpoint, which is off by default.
use nve_tests::{
    overlay::{self, H1_VTEP, H2_VTEP, Side, TwoHosts, VM1_MAC, VM2_IP, VNI},
    rig::require_root,
};

const METRICS: &str = "127.0.0.1:9464";

fn scrape(rig: &TwoHosts) -> anyhow::Result<String> {
    rig.h1.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        &format!("http://{METRICS}/metrics"),
    ])
}

/// The value of the sample `name{labels}` in exposition text.
fn sample(text: &str, name: &str, labels: &str) -> Option<u64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
}

#[test]
fn vn_and_port_counters_follow_traffic() {
    require_root();
    let rig = TwoHosts::new("ob").unwrap();
    overlay::kernel_vxlan(&rig.h2, H2_VTEP, H1_VTEP, "vm2p", &[VM1_MAC]).unwrap();
    let d = overlay::nve(&rig, Side::H1, "ob", &["--metrics-listen", METRICS]).unwrap();
    rig.vm1.ping_until_reachable(VM2_IP, 5).unwrap();
    rig.vm1.ping(VM2_IP, 20).expect("VM -> remote VM");

    let stats = d.stats().unwrap();
    let vn = &stats["vns"][VNI.to_string()];
    let port = &stats["ports"]["vm1p"];
    let packets = |v: &serde_json::Value, c: &str| v[c]["packets"].as_u64().unwrap_or(0);
    // 20 echo requests (plus ARP and the reachability probes) each way.
    for c in ["from_vms", "to_underlay", "from_underlay", "to_vms"] {
        assert!(packets(vn, c) >= 20, "VN counter {c}: {vn}");
    }
    assert!(packets(port, "from_vm") >= 20, "{port}");
    assert!(packets(port, "to_vm") >= 20, "{port}");
    // (The VN may have dropped a frame from h2 that came before its flood list was set:
    // VTEP_NOT_IN_VN. The port, nothing.)
    let vn_dropped_before = packets(vn, "dropped");
    assert_eq!(packets(port, "dropped"), 0, "{port}");
    // Per-VN bytes are the VMs' frames' (98 bytes an echo request), not the outer ones.
    let bytes = vn["to_underlay"]["bytes"].as_u64().unwrap();
    let packets_out = packets(vn, "to_underlay");
    assert!(bytes >= 20 * 98 && bytes < packets_out * 148, "{vn}");

    // The VM changes its MAC: its frames are dropped and counted on its port and VN.
    spoof(&rig);
    let stats = d.stats().unwrap();
    let dropped = packets(&stats["ports"]["vm1p"], "dropped");
    assert!(dropped > 0, "{}", stats["ports"]);
    assert_eq!(
        packets(&stats["vns"][VNI.to_string()], "dropped") - vn_dropped_before,
        dropped
    );

    // The same counters on the Prometheus endpoint.
    let text = scrape(&rig).expect("scraping /metrics");
    let vm_egress_spoofed = sample(
        &text,
        "nve_dropped_packets_total",
        "hook=\"vm_egress\",reason=\"SPOOFED_SRC_MAC\"",
    );
    assert_eq!(vm_egress_spoofed, Some(dropped), "{text}");
    let from_vms = sample(
        &text,
        "nve_vn_packets_total",
        &format!("vni=\"{VNI}\",counter=\"from_vms\""),
    )
    .unwrap_or(0);
    assert!(from_vms >= 20, "{text}");
    assert_eq!(
        sample(
            &text,
            "nve_port_packets_total",
            "port=\"vm1p\",counter=\"dropped\""
        ),
        Some(dropped),
        "{text}"
    );
    assert_eq!(sample(&text, "nve_vns", ""), None, "gauges carry no labels");
    assert!(text.contains("\nnve_vns 1\n"), "{text}");
    // Debug logging of drops is off by default.
    assert!(
        !d.log_text().contains("SPOOFED_SRC_MAC"),
        "{}",
        d.log_text()
    );
}

/// The VM's frames after it changed its MAC: dropped as spoofed.
fn spoof(rig: &TwoHosts) {
    rig.vm1
        .ns
        .ip(&["link", "set", "eth0", "address", "02:00:00:00:01:99"])
        .unwrap();
    rig.vm1.ns.ip(&["neigh", "flush", "dev", "eth0"]).unwrap();
    let _ = rig.vm1.ns.exec(&["ping", "-c", "2", "-W", "1", VM2_IP]);
    // Quiet from here on (no more router or listener reports), so counts read one after
    // the other agree.
    rig.vm1.ns.ip(&["link", "set", "eth0", "down"]).unwrap();
}

#[test]
fn debug_log_names_each_drop() {
    require_root();
    let rig = TwoHosts::new("dl").unwrap();
    let d = overlay::nve(&rig, Side::H1, "dl", &["--debug-log"]).unwrap();
    spoof(&rig);
    let dropped = d.counter("vm_egress", "SPOOFED_SRC_MAC").unwrap();
    assert!(dropped > 0);
    let logged = |log: &str| {
        log.lines()
            .filter(|l| l.contains("vm_egress drop SPOOFED_SRC_MAC: vni 100"))
            .count() as u64
    };
    // The daemon forwards the log records as the ring buffer wakes it: allow it a moment.
    for _ in 0..20 {
        if logged(&d.log_text()) >= dropped {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = d.log_text();
    assert_eq!(logged(&log), dropped, "{log}");
}

#[test]
fn metrics_endpoint_is_off_by_default() {
    require_root();
    let rig = TwoHosts::new("om").unwrap();
    let _d = overlay::nve(&rig, Side::H1, "om", &[]).unwrap();
    assert!(scrape(&rig).is_err(), "something listens on {METRICS}");
}
