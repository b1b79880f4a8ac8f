//! ARP and neighbour discovery suppression for addresses of remote MACs: nve answers on
//! the VM's port for an address no machine in the rig holds, so the answer can only come
//! from the dataplane, and the VM's neighbour table takes the MAC nve was told.
use nve_tests::{
    overlay::{self, H1_VTEP, H2_VTEP, Side, TwoHosts, VN},
    rig::{mac_str, require_root},
};

const GHOST_MAC: [u8; 6] = [2, 0, 0, 0, 0x0f, 0x0f];
const GHOST_IP: &str = "192.168.10.50";
const GHOST_IPV6: &str = "2001:db8:10::50";

#[test]
fn arp_and_nd_for_remote_addresses_are_answered_by_the_dataplane() {
    require_root();
    let rig = TwoHosts::new("nd").unwrap();
    overlay::kernel_vxlan(&rig.h2, H2_VTEP, H1_VTEP, "vm2p", &[]).unwrap();
    let d = overlay::nve(&rig, Side::H1, "nd", &[]).unwrap();
    d.nve(&[
        "fdb",
        "add",
        VN,
        &mac_str(GHOST_MAC),
        "--vtep",
        H2_VTEP,
        "--ip",
        GHOST_IP,
        "--ip",
        GHOST_IPV6,
    ])
    .unwrap();
    let ns = &rig.vm1.ns;
    rig.vm1.add_ipv6("2001:db8:10::1/64").unwrap();

    // Nobody holds the addresses: the pings go unanswered, the neighbour lookups do not.
    let _ = ns.exec(&["ping", "-c", "1", "-W", "1", GHOST_IP]);
    let _ = ns.exec(&["ping", "-6", "-c", "1", "-W", "1", GHOST_IPV6]);
    let want = mac_str(GHOST_MAC);
    let v4 = ns.ip(&["neigh", "show", GHOST_IP]).unwrap();
    assert!(
        v4.contains(&want),
        "ARP for {GHOST_IP} not answered: {v4:?}"
    );
    let v6 = ns.ip(&["-6", "neigh", "show", GHOST_IPV6]).unwrap();
    assert!(
        v6.contains(&want),
        "NS for {GHOST_IPV6} not answered: {v6:?}"
    );
    assert!(d.counter("vm_egress", "ARP_REPLIED").unwrap() >= 1);
    assert!(d.counter("vm_egress", "ND_REPLIED").unwrap() >= 1);

    // An address nve does not know is not answered: the question floods to h2, where
    // nobody has it either.
    let _ = ns.exec(&["ping", "-6", "-c", "1", "-W", "1", "2001:db8:10::51"]);
    let v6 = ns.ip(&["-6", "neigh", "show", "2001:db8:10::51"]).unwrap();
    assert!(!v6.contains("lladdr"), "{v6:?}");
}
