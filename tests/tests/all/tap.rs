//! A VM on a real tap device (as QEMU runs them) behind nve, talking to a VM behind the
//! kernel's vxlan: ICMP and TCP both ways, and large TCP segments reach the tap as GSO
//! frames rather than re-segmented to the MTU.
use nve_tests::{
    overlay::{self, H1_VTEP, H2_VTEP, VM1_IP, VM1_MAC, VM2_IP, VM2_MAC, VN, VNI},
    rig::{Daemon, Netns, Vm, mac_str, require_root, veth},
    tap::TapVm,
};

#[test]
fn tap_vm_gets_gso_frames() {
    require_root();
    let h1 = Netns::new("tap-h1").unwrap();
    let h2 = Netns::new("tap-h2").unwrap();
    veth(&h1, "ul", &h2, "ul", 1500).unwrap();
    h1.ip(&["addr", "add", &format!("{H1_VTEP}/24"), "dev", "ul"])
        .unwrap();
    h2.ip(&["addr", "add", &format!("{H2_VTEP}/24"), "dev", "ul"])
        .unwrap();
    let vm1 = TapVm::new("tap-vm1", &h1, "tap1", VM1_MAC, VM1_IP).unwrap();
    let vm2 = Vm::new("tap-vm2", &h2, "vm2p", VM2_MAC, VM2_IP).unwrap();
    overlay::kernel_vxlan(&h2, H2_VTEP, H1_VTEP, "vm2p", &[VM1_MAC]).unwrap();
    let d = Daemon::start(&h1, "tap", H1_VTEP, "ul", &[]).unwrap();
    d.nve(&["vn", "add", VN, "--vni", &VNI.to_string()])
        .unwrap();
    d.nve(&["port", "attach", VN, "tap1", "--mac", &mac_str(VM1_MAC)])
        .unwrap();
    d.nve(&["fdb", "add", VN, &mac_str(VM2_MAC), "--vtep", H2_VTEP])
        .unwrap();
    d.nve(&["flood", "add", VN, H2_VTEP]).unwrap();
    d.wait_next_hop(H2_VTEP).unwrap();

    vm1.vm.ping_until_reachable(VM2_IP, 5).unwrap();
    vm1.vm.ping(VM2_IP, 3).expect("ICMP tap VM -> remote");
    vm2.ping(VM1_IP, 3).expect("ICMP remote -> tap VM");
    overlay::tcp_transfer(&vm2, &vm1.vm, 5201, "4M").expect("TCP tap VM -> remote");
    vm1.reset_delivered();
    overlay::tcp_transfer(&vm1.vm, &vm2, 5202, "20M").expect("TCP remote -> tap VM");
    let delivered = vm1.delivered();
    assert!(
        delivered.tcpv4_gso_frames > 0 && delivered.max_len > 1500,
        "no large TCP segments reached the tap whole: {delivered:?}"
    );
    // Unicast for the tap went through the kernel's collect_md vxlan device.
    assert!(d.counter("underlay_rx", "TO_KERNEL_VXLAN").unwrap() > 0);
    assert!(d.counter("tunnel_rx", "DECAPSULATED").unwrap() > 0);
}
