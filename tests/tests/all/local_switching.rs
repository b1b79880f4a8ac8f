//! Two VMs of one VN on the same host talk through nve without encapsulation: their ARP is
//! flooded to each other (and to the remote VTEP), their unicast is switched locally, and no
//! unicast between them appears on the underlay.
use nve_tests::{
    overlay::{self, Capture, H1_VTEP, H2_VTEP, Side, TwoHosts, VM1_IP},
    rig::{Vm, require_root},
};

#[test]
fn same_host_vms_are_switched_locally() {
    require_root();
    let rig = TwoHosts::new("ls").unwrap();
    overlay::kernel_vxlan(&rig.h2, H2_VTEP, H1_VTEP, "vm2p", &[]).unwrap();
    let d = overlay::nve(&rig, Side::H1, "ls", &[]).unwrap();
    let neighbour_mac = [2, 0, 0, 0, 3, 1];
    let neighbour = Vm::new("ls-vm3", &rig.h1, "vm3p", neighbour_mac, "192.168.10.3").unwrap();
    overlay::associate(
        &d,
        "00000000-0000-4000-8000-000000000003",
        "vm3p",
        neighbour_mac,
        Some("192.168.10.3"),
    )
    .unwrap();
    let capture = Capture::start(&rig.h2, "ul", "udp port 4789").unwrap();

    // vm1 asks first: its ARP for .3 is answered by the dataplane (the address was signaled).
    rig.vm1.ping_until_reachable("192.168.10.3", 5).unwrap();
    neighbour.ping_until_reachable(VM1_IP, 5).unwrap();
    rig.vm1
        .ping("192.168.10.3", 5)
        .expect("local VM -> local VM");
    overlay::tcp_transfer(&neighbour, &rig.vm1, 5201, "2M").expect("TCP between local VMs");

    assert!(d.counter("vm_egress", "LOCAL_SWITCHED").unwrap() >= 10);
    // vm1 asked for 192.168.10.3, signaled with the vNIC: the dataplane answered.
    assert!(d.counter("vm_egress", "ARP_REPLIED").unwrap() >= 1);
    let packets = capture.finish().unwrap();
    let local_unicast = packets
        .iter()
        .filter(|p| p.inner.contains(":ip:icmp") || p.inner.contains(":tcp"))
        .count();
    assert_eq!(
        local_unicast, 0,
        "local unicast was encapsulated: {packets:?}"
    );
    // Broadcast (ARP) still reaches the VN's remote VTEP.
    assert!(
        packets
            .iter()
            .any(|p| p.src == H1_VTEP && p.inner.contains(":arp")),
        "{packets:?}"
    );
}
