//! Path MTU through nve: a VM whose MTU is larger than the underlay leaves (1500 - 50) gets
//! ICMP fragmentation needed / ICMPv6 packet too big with the right MTU from the dataplane,
//! its stack learns the path MTU, and TCP then flows. The kernel's vxlan+bridge is the
//! peer.
use nve_tests::{
    overlay::{self, H1_VTEP, H2_VTEP, Side, TwoHosts, VM1_MAC, VM2_IP, VN},
    rig::require_root,
};

const VM2_IPV6: &str = "2001:db8:10::2";

#[test]
fn oversized_frames_get_icmp_and_tcp_finds_the_path_mtu() {
    require_root();
    let rig = TwoHosts::new("mt").unwrap();
    overlay::kernel_vxlan(&rig.h2, H2_VTEP, H1_VTEP, "vm2p", &[VM1_MAC]).unwrap();
    let d = overlay::nve(&rig, Side::H1, "mt", &[]).unwrap();
    // The VM believes in a 1500-byte link.
    for (ns, dev) in [(&rig.vm1.ns, "eth0"), (&rig.h1, "vm1p")] {
        ns.ip(&["link", "set", dev, "mtu", "1500"]).unwrap();
    }
    rig.vm1.add_ipv6("2001:db8:10::1/64").unwrap();
    rig.vm2.add_ipv6(&format!("{VM2_IPV6}/64")).unwrap();
    let status = d.status().unwrap();
    assert_eq!(status.vm_mtu, 1450, "{status:?}");
    let vns: serde_json::Value =
        serde_json::from_str(&d.nve(&["vn", "list", "--json"]).unwrap()).unwrap();
    assert_eq!(vns[0]["name"], VN);
    assert_eq!(vns[0]["mtu"], 1450, "{vns}");

    rig.vm1.ping_until_reachable(VM2_IP, 5).unwrap();
    // 1472 bytes of ICMP payload: a 1500-byte packet with DF, 50 bytes too many.
    let _ = rig.vm1.ns.exec(&[
        "ping", "-M", "do", "-s", "1472", "-c", "1", "-W", "1", VM2_IP,
    ]);
    let route = rig.vm1.ns.ip(&["route", "get", VM2_IP]).unwrap();
    assert!(route.contains("mtu 1450"), "no path MTU learned: {route}");
    let _ = rig.vm1.ns.exec(&[
        "ping", "-6", "-M", "do", "-s", "1452", "-c", "1", "-W", "1", VM2_IPV6,
    ]);
    let route6 = rig.vm1.ns.ip(&["-6", "route", "get", VM2_IPV6]).unwrap();
    assert!(
        route6.contains("mtu 1450"),
        "no IPv6 path MTU learned: {route6}"
    );
    assert!(d.counter("vm_egress", "ICMP_TOO_BIG").unwrap() >= 2);

    // TCP with segments sized for 1500 bytes: after the ICMP it settles on 1450.
    overlay::tcp_transfer(&rig.vm2, &rig.vm1, 5201, "4M").expect("TCP across the path MTU");
    // Nothing too big was sent on (the outer header's DF, checked byte for byte in the
    // test-run table, keeps the underlay from fragmenting).
    assert_eq!(d.counter("vm_egress", "UNDERLAY_MTU_EXCEEDED").unwrap(), 0);
}
