//! A VM port forwards only frames with the port's own source MACs, and with its vNICs'
//! source IPs where they were signaled: a VM that changes its MAC or its address is cut off
//! and the drops are counted (SPOOFED_SRC_MAC, SPOOFED_SRC_IP).
use nve_tests::{
    overlay::{self, H1_VTEP, H2_VTEP, Side, TwoHosts, VM1_IP, VM1_MAC, VM2_IP, VM2_MAC},
    rig::{Daemon, require_root},
};

#[test]
fn spoofed_source_macs_are_dropped() {
    require_root();
    let rig = TwoHosts::new("sp").unwrap();
    overlay::kernel_vxlan(&rig.h2, H2_VTEP, H1_VTEP, "vm2p", &[VM1_MAC]).unwrap();
    let d = overlay::nve(&rig, Side::H1, "sp", &[]).unwrap();
    rig.vm1.ping_until_reachable(VM2_IP, 5).unwrap();
    assert_eq!(d.counter("vm_egress", "SPOOFED_SRC_MAC").unwrap(), 0);

    rig.vm1
        .ns
        .ip(&["link", "set", "eth0", "address", "02:00:00:00:01:99"])
        .unwrap();
    rig.vm1.ns.ip(&["neigh", "flush", "dev", "eth0"]).unwrap();
    assert!(
        rig.vm1
            .ns
            .exec(&["ping", "-c", "2", "-W", "1", VM2_IP])
            .is_err(),
        "a spoofed MAC got through"
    );
    assert!(d.counter("vm_egress", "SPOOFED_SRC_MAC").unwrap() > 0);
}

/// A vNIC signaled with its IPv4 address sends only from it: after the VM takes another
/// address its ARP and IPv4 are dropped (SPOOFED_SRC_IP); DHCP-style 0.0.0.0 is not
/// needed here, and the MAC check still passes.
#[test]
fn spoofed_source_ips_are_dropped() {
    require_root();
    let rig = TwoHosts::new("si").unwrap();
    overlay::kernel_vxlan(&rig.h2, H2_VTEP, H1_VTEP, "vm2p", &[VM1_MAC]).unwrap();
    let d = Daemon::start(&rig.h1, "si", H1_VTEP, "ul", &[]).unwrap();
    overlay::serve_vn(&d, H2_VTEP, VM2_MAC).unwrap();
    overlay::associate(
        &d,
        "00000000-0000-4000-8000-000000000001",
        "vm1p",
        VM1_MAC,
        Some(VM1_IP),
    )
    .unwrap();
    rig.vm1.ping_until_reachable(VM2_IP, 5).unwrap();
    assert_eq!(d.counter("vm_egress", "SPOOFED_SRC_IP").unwrap(), 0);

    let ns = &rig.vm1.ns;
    ns.ip(&["addr", "flush", "dev", "eth0"]).unwrap();
    ns.ip(&["addr", "add", "192.168.10.99/24", "dev", "eth0"])
        .unwrap();
    ns.ip(&["neigh", "flush", "dev", "eth0"]).unwrap();
    assert!(
        ns.exec(&["ping", "-c", "2", "-W", "1", VM2_IP]).is_err(),
        "a spoofed source address got through"
    );
    assert!(d.counter("vm_egress", "SPOOFED_SRC_IP").unwrap() > 0);
    assert_eq!(d.counter("vm_egress", "SPOOFED_SRC_MAC").unwrap(), 0);

    // Back on its own address it is reachable again.
    ns.ip(&["addr", "flush", "dev", "eth0"]).unwrap();
    ns.ip(&["addr", "add", &format!("{VM1_IP}/24"), "dev", "eth0"])
        .unwrap();
    rig.vm1.ping_until_reachable(VM2_IP, 5).unwrap();
}
