//! Decapsulation accepts a VN's VXLAN only from the VTEPs the VN knows (its flood list and
//! the VTEPs of its remote MACs): the kernel's vxlan sending from an address nve was not
//! told about is dropped (VTEP_NOT_IN_VN) until that VTEP joins the VN's flood list; a VN
//! created with --any-vtep accepts it from the start.
use nve_tests::{
    overlay::{self, H1_VTEP, TwoHosts, VM1_IP, VM1_MAC, VM2_MAC, VN, VNI},
    rig::{Daemon, mac_str, require_root},
};

/// A VTEP address of h2 nve on h1 has not heard of.
const STRANGER: &str = "10.0.0.3";

/// h2 runs the kernel's vxlan+bridge sending from STRANGER.
fn stranger_peer(rig: &TwoHosts) {
    rig.h2
        .ip(&["addr", "add", &format!("{STRANGER}/24"), "dev", "ul"])
        .unwrap();
    overlay::kernel_vxlan(&rig.h2, STRANGER, H1_VTEP, "vm2p", &[VM1_MAC]).unwrap();
}

fn serve(d: &Daemon, extra: &[&str]) {
    let vni = VNI.to_string();
    let mut args = vec!["vn", "add", VN, "--vni", &vni];
    args.extend_from_slice(extra);
    d.nve(&args).unwrap();
    d.nve(&["port", "attach", VN, "vm1p", "--mac", &mac_str(VM1_MAC)])
        .unwrap();
}

#[test]
fn vxlan_from_an_unknown_vtep_is_dropped_until_it_joins_the_vn() {
    require_root();
    let rig = TwoHosts::new("va").unwrap();
    stranger_peer(&rig);
    let d = Daemon::start(&rig.h1, "va", H1_VTEP, "ul", &[]).unwrap();
    serve(&d, &[]);
    assert!(
        rig.vm2.ping(VM1_IP, 2).is_err(),
        "stranger's VXLAN accepted"
    );
    assert!(d.counter("underlay_rx", "VTEP_NOT_IN_VN").unwrap() >= 2);
    assert_eq!(d.counter("underlay_rx", "DECAPSULATED").unwrap(), 0);

    d.nve(&["fdb", "add", VN, &mac_str(VM2_MAC), "--vtep", STRANGER])
        .unwrap();
    d.nve(&["flood", "add", VN, STRANGER]).unwrap();
    d.wait_next_hop(STRANGER).unwrap();
    let before = d.counter("underlay_rx", "VTEP_NOT_IN_VN").unwrap();
    rig.vm2.ping_until_reachable(VM1_IP, 5).unwrap();
    assert!(d.counter("underlay_rx", "DECAPSULATED").unwrap() > 0);
    assert_eq!(d.counter("underlay_rx", "VTEP_NOT_IN_VN").unwrap(), before);
}

#[test]
fn a_vn_that_accepts_any_vtep_decapsulates_from_a_stranger() {
    require_root();
    let rig = TwoHosts::new("vy").unwrap();
    stranger_peer(&rig);
    let d = Daemon::start(&rig.h1, "vy", H1_VTEP, "ul", &[]).unwrap();
    serve(&d, &["--any-vtep"]);
    // vm2's broadcast ARP is delivered though nve knows nothing of h2.
    let _ = rig.vm2.ping(VM1_IP, 1);
    assert!(d.counter("underlay_rx", "FLOODED").unwrap() >= 1);
    assert_eq!(d.counter("underlay_rx", "VTEP_NOT_IN_VN").unwrap(), 0);
}
