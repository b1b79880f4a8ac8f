//! A VM port forwards only frames with the port's own source MACs: a VM that changes its
//! MAC is cut off and the drops are counted (SPOOFED_SRC_MAC).
use nve_tests::{
    overlay::{self, H1_VTEP, H2_VTEP, Side, TwoHosts, VM1_MAC, VM2_IP},
    rig::require_root,
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
