//! nve on both hosts: ICMP and TCP both ways, decapsulation counted on each side.
use nve_tests::{
    overlay::{self, Side, TwoHosts, VM1_IP, VM2_IP},
    rig::require_root,
};

#[test]
fn nve_to_nve() {
    require_root();
    let rig = TwoHosts::new("nn").unwrap();
    let d1 = overlay::nve(&rig, Side::H1, "nn1", &[]).unwrap();
    let d2 = overlay::nve(&rig, Side::H2, "nn2", &[]).unwrap();

    rig.vm1.ping_until_reachable(VM2_IP, 5).unwrap();
    rig.vm1.ping(VM2_IP, 3).expect("ICMP h1 -> h2");
    rig.vm2.ping(VM1_IP, 3).expect("ICMP h2 -> h1");
    overlay::tcp_transfer(&rig.vm2, &rig.vm1, 5201, "4M").expect("TCP h1 -> h2");
    overlay::tcp_transfer(&rig.vm1, &rig.vm2, 5202, "4M").expect("TCP h2 -> h1");

    for d in [&d1, &d2] {
        assert!(d.counter("vm_egress", "ENCAPSULATED").unwrap() > 0);
        assert!(d.counter("underlay_rx", "DECAPSULATED").unwrap() > 0);
        // ARP reached the other side by flooding and was delivered there.
        assert!(d.counter("underlay_rx", "FLOODED").unwrap() > 0);
    }
    for d in [d1, d2] {
        let pins = d.pin_dir();
        assert!(pins.exists());
        assert!(d.stop().unwrap().success());
        assert!(!pins.exists(), "pins left behind at {}", pins.display());
    }
}
