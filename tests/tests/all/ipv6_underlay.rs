//! An IPv6 underlay, mixed with IPv4 in one VN: h2 runs the kernel's vxlan+bridge twice,
//! one VM behind VXLAN over IPv6 (fd00::2) and one behind VXLAN over IPv4 (10.0.0.2). nve
//! on h1 reaches both from one VN, broadcast included, and its VXLAN over IPv6 carries a
//! UDP checksum (a zero one is refused over IPv6 by default).
use nve_tests::{
    overlay::{self, Capture, H1_VTEP, H2_VTEP, TwoHosts, VM1_IP, VM1_MAC, VM2_IP, VM2_MAC, VN},
    rig::{Daemon, Netns, Vm, mac_str, require_root},
};

const H1_VTEP6: &str = "fd00::1";
const H2_VTEP6: &str = "fd00::2";
const VM4_MAC: [u8; 6] = [2, 0, 0, 0, 4, 1];
const VM4_IP: &str = "192.168.10.4";

/// The kernel's vxlan (VNI 100) from `local` to h1 with its own bridge and `port`.
fn kernel_peer(h2: &Netns, bridge: &str, dev: &str, local: &str, remote: &str, port: &str) {
    overlay::kernel_vxlan_bridge(h2, 100, bridge, dev, local, port).unwrap();
    h2.exec(&[
        "bridge",
        "fdb",
        "append",
        "00:00:00:00:00:00",
        "dev",
        dev,
        "dst",
        remote,
    ])
    .unwrap();
}

#[test]
fn one_vn_over_ipv6_and_ipv4_underlays() {
    require_root();
    let rig = TwoHosts::new("u6").unwrap();
    let vm4 = Vm::new("u6-vm4", &rig.h2, "vm4p", VM4_MAC, VM4_IP).unwrap();
    rig.h1
        .ip(&[
            "-6",
            "addr",
            "add",
            &format!("{H1_VTEP6}/64"),
            "dev",
            "ul",
            "nodad",
        ])
        .unwrap();
    rig.h2
        .ip(&[
            "-6",
            "addr",
            "add",
            &format!("{H2_VTEP6}/64"),
            "dev",
            "ul",
            "nodad",
        ])
        .unwrap();
    kernel_peer(&rig.h2, "br6", "vx6", H2_VTEP6, H1_VTEP6, "vm2p");
    kernel_peer(&rig.h2, "br4", "vx4", H2_VTEP, H1_VTEP, "vm4p");

    let d = Daemon::start(&rig.h1, "u6", H1_VTEP, "ul", &["--vtep6", H1_VTEP6]).unwrap();
    d.nve(&["vn", "add", VN, "--vni", "100"]).unwrap();
    d.nve(&["fdb", "add", VN, &mac_str(VM2_MAC), "--vtep", H2_VTEP6])
        .unwrap();
    d.nve(&["fdb", "add", VN, &mac_str(VM4_MAC), "--vtep", H2_VTEP])
        .unwrap();
    for vtep in [H2_VTEP6, H2_VTEP] {
        d.nve(&["flood", "add", VN, vtep]).unwrap();
    }
    d.nve(&["port", "attach", VN, "vm1p", "--mac", &mac_str(VM1_MAC)])
        .unwrap();
    d.wait_next_hop(H2_VTEP).unwrap();

    let capture = Capture::start(&rig.h2, "ul", "udp port 4789").unwrap();
    // ARP floods to both VTEPs; each VM answers over its own underlay.
    rig.vm1.ping_until_reachable(VM2_IP, 5).unwrap();
    rig.vm1.ping_until_reachable(VM4_IP, 5).unwrap();
    rig.vm2
        .ping(VM1_IP, 3)
        .expect("IPv6 underlay, from the kernel's side");
    vm4.ping(VM1_IP, 3)
        .expect("IPv4 underlay, from the kernel's side");
    overlay::tcp_transfer(&rig.vm2, &rig.vm1, 5201, "4M").expect("TCP over the IPv6 underlay");

    let checksums = capture
        .finish_field(&format!("vxlan && ipv6.src == {H1_VTEP6}"), "udp.checksum")
        .unwrap();
    assert!(checksums.len() >= 5, "{checksums:?}");
    assert!(
        checksums.iter().all(|c| c != "0x0000"),
        "VXLAN over IPv6 without a UDP checksum: {checksums:?}"
    );
    assert!(d.counter("underlay_rx", "TO_KERNEL_VXLAN").unwrap() > 0);
    assert!(d.counter("tunnel_rx", "DECAPSULATED").unwrap() > 0);
    assert!(d.counter("underlay_rx", "DECAPSULATED").unwrap() > 0);
}
