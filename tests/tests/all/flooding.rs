//! Unknown unicast floods to the VN's VTEPs like broadcast, so a VM reaches a remote VM whose
//! MAC nve was never told; a VN created with --no-flood-unknown drops it instead (FDB_MISS).
use nve_tests::{
    overlay::{self, H1_VTEP, H2_VTEP, TwoHosts, VM1_MAC, VM2_IP, VN, VNI},
    rig::{Daemon, mac_str, require_root},
};

#[test]
fn unknown_unicast_floods_unless_switched_off() {
    require_root();
    let rig = TwoHosts::new("fl").unwrap();
    overlay::kernel_vxlan(&rig.h2, H2_VTEP, H1_VTEP, "vm2p", &[VM1_MAC]).unwrap();
    let d = Daemon::start(&rig.h1, "fl", H1_VTEP, "ul", &[]).unwrap();
    let setup = |extra: &[&str]| {
        let mut add = vec!["vn", "add", VN, "--vni"];
        let vni = VNI.to_string();
        add.push(&vni);
        add.extend_from_slice(extra);
        d.nve(&add).unwrap();
        d.nve(&["port", "attach", VN, "vm1p", "--mac", &mac_str(VM1_MAC)])
            .unwrap();
        d.nve(&["flood", "add", VN, H2_VTEP]).unwrap();
        d.wait_next_hop(H2_VTEP).unwrap();
    };

    // No FDB entry for vm2: its unicast is flooded to h2, whose kernel vxlan delivers it.
    setup(&[]);
    rig.vm1.ping_until_reachable(VM2_IP, 5).unwrap();
    rig.vm1
        .ping(VM2_IP, 3)
        .expect("unknown unicast was not flooded");
    let flooded = d.counter("vm_egress", "FLOODED").unwrap();
    assert!(flooded >= 4, "only {flooded} frames flooded");
    assert_eq!(d.counter("vm_egress", "FDB_MISS").unwrap(), 0);

    // Switched off: ARP still floods, unicast to the unknown MAC is dropped and counted.
    d.nve(&["vn", "del", VN]).unwrap();
    setup(&["--no-flood-unknown"]);
    assert!(
        rig.vm1
            .ns
            .exec(&["ping", "-c", "2", "-W", "1", VM2_IP])
            .is_err(),
        "unknown unicast flooded although off"
    );
    assert!(d.counter("vm_egress", "FDB_MISS").unwrap() > 0);
}
