//! nve on h1, the kernel's vxlan+bridge on h2: ICMP and TCP in both directions, and a
//! capture on the underlay decoded by tshark shows valid VXLAN from nve.
use std::collections::BTreeSet;

use nve_tests::{
    overlay::{self, Capture, H1_VTEP, H2_VTEP, Side, TwoHosts, VM1_IP, VM1_MAC, VM2_IP, VNI},
    rig::require_root,
};

fn interop(tag: &str, mode: &str) {
    require_root();
    let rig = TwoHosts::new(tag).unwrap();
    overlay::kernel_vxlan(&rig.h2, H2_VTEP, H1_VTEP, "vm2p", &[VM1_MAC]).unwrap();
    if mode == "xdp" {
        // veth hands XDP inner TCP checksums still to be filled (CHECKSUM_PARTIAL), which a
        // real NIC never does; have the peer finish them before sending. The VM's veth needs
        // GRO to take XDP redirects.
        rig.h2.exec(&["ethtool", "-K", "ul", "tx", "off"]).unwrap();
        rig.vm1
            .ns
            .exec(&["ethtool", "-K", "eth0", "gro", "on"])
            .unwrap();
    }
    let nve = overlay::nve(&rig, Side::H1, tag, &["--underlay-mode", mode]).unwrap();
    let capture = Capture::start(&rig.h2, "ul", "udp port 4789").unwrap();

    rig.vm1.ping_until_reachable(VM2_IP, 5).unwrap();
    rig.vm1.ping(VM2_IP, 3).expect("ICMP nve -> kernel vxlan");
    rig.vm2.ping(VM1_IP, 3).expect("ICMP kernel vxlan -> nve");
    overlay::tcp_transfer(&rig.vm2, &rig.vm1, 5201, "4M").expect("TCP nve -> kernel vxlan");
    overlay::tcp_transfer(&rig.vm1, &rig.vm2, 5202, "4M").expect("TCP kernel vxlan -> nve");
    overlay::tcp_transfer(&rig.vm2, &rig.vm1, 5203, "1M").expect("second TCP flow");

    let packets = capture.finish().unwrap();
    let from_nve: Vec<_> = packets.iter().filter(|p| p.src == H1_VTEP).collect();
    let from_kernel: Vec<_> = packets.iter().filter(|p| p.src == H2_VTEP).collect();
    assert!(
        from_nve.len() > 20,
        "only {} VXLAN packets from nve captured",
        from_nve.len()
    );
    assert!(
        !from_kernel.is_empty(),
        "no VXLAN packets from the kernel captured"
    );
    for p in &from_nve {
        assert_eq!(p.dst, H2_VTEP, "{p:?}");
        assert_eq!(p.dport, 4789, "{p:?}");
        assert_eq!(p.vni, VNI, "{p:?}");
        assert_eq!(p.flags & 0x0800, 0x0800, "I flag missing: {p:?}");
        assert!(p.sport >= 49152, "source port out of range: {p:?}");
        assert!(
            p.inner.starts_with("eth:ethertype:"),
            "inner frame not Ethernet: {p:?}"
        );
    }
    assert!(
        from_nve.iter().any(|p| p.inner.contains(":arp")),
        "nve's ARP was not flooded"
    );
    assert!(
        from_nve.iter().any(|p| p.inner.contains(":icmp")),
        "no ICMP from nve"
    );
    assert!(
        from_nve.iter().any(|p| p.inner.contains(":tcp")),
        "no TCP from nve"
    );
    let sports: BTreeSet<u16> = from_nve.iter().map(|p| p.sport).collect();
    assert!(sports.len() >= 3, "flows share source ports: {sports:?}");

    assert!(nve.counter("vm_egress", "ENCAPSULATED").unwrap() > 0);
    assert!(nve.counter("underlay_rx", "DECAPSULATED").unwrap() > 0);
    assert!(nve.counter("vm_egress", "FLOODED").unwrap() > 0);
    let status = nve.stop().unwrap();
    assert!(status.success(), "daemon exit {status}");
}

#[test]
fn interop_with_kernel_vxlan_tc() {
    interop("itc", "tc");
}

#[test]
fn interop_with_kernel_vxlan_xdp() {
    interop("ixdp", "xdp");
}
