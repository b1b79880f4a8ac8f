//! Learning from announcements: a VM on a port that does not check MACs announces itself
//! with a gratuitous ARP and an unsolicited neighbour advertisement; nve learns its MAC
//! (unicast to it is delivered, not flooded) and its addresses (ARP and ND for them are
//! answered by the dataplane), where the kernel's own stack would ignore a GARP it has no
//! neighbour entry for. An announcement never takes a MAC or address a vNIC holds.
use std::net::{Ipv4Addr, Ipv6Addr};

use nve_tests::{
    overlay::{self, H1_VTEP, H2_VTEP, TwoHosts, VM1_IP, VM1_MAC, VM2_IP, VM2_MAC, VN},
    packet,
    rig::{Daemon, Vm, mac_str, require_root, send_frames},
};
use nve_user::{api::FdbTarget, mac::MacAddr, vnic::VnicState};

const VM1_IPV6: &str = "2001:db8:10::1";
const VM3_MAC: [u8; 6] = [2, 0, 0, 0, 3, 1];
const VM3_IP: &str = "192.168.10.3";

/// Whether `d` learned `mac` on `port`.
fn fdb_has(d: &Daemon, mac: [u8; 6], port: &str) -> bool {
    d.fdb().unwrap().iter().any(|e| {
        e.mac == MacAddr(mac)
            && matches!(&e.target, FdbTarget::Port { port: p, .. } if p == port)
            && e.learned
    })
}

#[test]
fn announcements_teach_macs_and_addresses_but_never_take_a_vnics() {
    require_root();
    let rig = TwoHosts::new("le").unwrap();
    overlay::kernel_vxlan(&rig.h2, H2_VTEP, H1_VTEP, "vm2p", &[VM1_MAC]).unwrap();
    let d = Daemon::start(&rig.h1, "le", H1_VTEP, "ul", &[]).unwrap();
    overlay::serve_vn(&d, H2_VTEP, VM2_MAC).unwrap();
    // vm1's port checks nothing: nve does not know who is behind it.
    d.nve(&["port", "attach", VN, "vm1p"]).unwrap();
    // vm3 is a signaled vNIC with its address.
    let vm3 = Vm::new("le-vm3", &rig.h1, "vm3p", VM3_MAC, VM3_IP).unwrap();
    overlay::associate(
        &d,
        "00000000-0000-4000-8000-000000000003",
        "vm3p",
        VM3_MAC,
        Some(VM3_IP),
    )
    .unwrap();

    let ip1: Ipv4Addr = VM1_IP.parse().unwrap();
    let ip1v6: Ipv6Addr = VM1_IPV6.parse().unwrap();
    send_frames(
        &rig.vm1.ns,
        "eth0",
        &[
            packet::arp_request(VM1_MAC, ip1, ip1),
            packet::unsolicited_na(VM1_MAC, "fe80::1".parse().unwrap(), ip1v6),
        ],
    )
    .unwrap();
    let mut learned = false;
    for _ in 0..50 {
        if fdb_has(&d, VM1_MAC, "vm1p") {
            learned = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        learned,
        "vm1's MAC not learned: {}",
        d.nve(&["fdb"]).unwrap()
    );

    // vm3 asks for vm1's addresses: the dataplane answers with the learned MAC.
    vm3.add_ipv6("2001:db8:10::3/64").unwrap();
    let _ = vm3.ns.exec(&["ping", "-c", "1", "-W", "1", VM1_IP]);
    let _ = vm3.ns.exec(&["ping", "-6", "-c", "1", "-W", "1", VM1_IPV6]);
    assert!(d.counter("vm_egress", "ARP_REPLIED").unwrap() >= 1);
    assert!(d.counter("vm_egress", "ND_REPLIED").unwrap() >= 1);
    let v6 = vm3.ns.ip(&["-6", "neigh", "show", VM1_IPV6]).unwrap();
    assert!(v6.contains(&mac_str(VM1_MAC)), "{v6:?}");

    // Unicast from the remote VM to vm1 is delivered to its port (DECAPSULATED), where
    // before the announcement it could only have been flooded as unknown unicast.
    rig.vm2.ping_until_reachable(VM1_IP, 5).unwrap();
    rig.vm2.ping(VM1_IP, 5).unwrap();
    assert!(d.counter("underlay_rx", "DECAPSULATED").unwrap() >= 5);

    // vm1 claims vm3's address, then vm3's MAC: both refused, vm3 keeps them.
    let ip3: Ipv4Addr = VM3_IP.parse().unwrap();
    send_frames(
        &rig.vm1.ns,
        "eth0",
        &[
            packet::arp_request(VM1_MAC, ip3, ip3),
            packet::rarp(VM3_MAC),
        ],
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let log = d.log_text();
    assert_eq!(log.matches("announcement not learned").count(), 2, "{log}");
    assert!(!fdb_has(&d, VM3_MAC, "vm1p"));
    rig.vm1.ns.ip(&["neigh", "flush", "dev", "eth0"]).unwrap();
    let _ = rig.vm1.ns.exec(&["ping", "-c", "1", "-W", "1", VM3_IP]);
    let n = rig.vm1.ns.ip(&["neigh", "show", VM3_IP]).unwrap();
    assert!(n.contains(&mac_str(VM3_MAC)), "{n:?}");
}

/// A migrated VM's first frames are its announcements (QEMU sends RARPs after resuming it):
/// a pre-associated vNIC is activated by them, before the hypervisor's associate arrives.
#[test]
fn an_announcement_activates_a_pre_associated_vnic() {
    require_root();
    let rig = TwoHosts::new("la").unwrap();
    overlay::kernel_vxlan(&rig.h2, H2_VTEP, H1_VTEP, "vm2p", &[VM1_MAC]).unwrap();
    let d = Daemon::start(&rig.h1, "la", H1_VTEP, "ul", &[]).unwrap();
    overlay::serve_vn(&d, H2_VTEP, VM2_MAC).unwrap();
    let vm = "00000000-0000-4000-8000-000000000001";
    d.nve(&[
        "vm",
        "pre-associate",
        "--vm",
        vm,
        "--vn",
        VN,
        "--port",
        "vm1p",
        "--mac",
        &mac_str(VM1_MAC),
    ])
    .unwrap();
    let state = |d: &Daemon| d.vnics().unwrap().first().map(|v| v.state);
    assert_eq!(state(&d), Some(VnicState::PreAssociated));
    assert!(
        rig.vm1.ping(VM2_IP, 1).is_err(),
        "a pre-associated vNIC forwarded"
    );

    send_frames(&rig.vm1.ns, "eth0", &[packet::rarp(VM1_MAC)]).unwrap();
    let mut active = false;
    for _ in 0..50 {
        if state(&d) == Some(VnicState::Associated) {
            active = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(active, "still {:?} after the RARP", state(&d));
    rig.vm1.ping_until_reachable(VM2_IP, 5).unwrap();
    // The hypervisor's associate, arriving later, changes nothing.
    overlay::associate(&d, vm, "vm1p", VM1_MAC, None).unwrap();
    assert_eq!(state(&d), Some(VnicState::Associated));
}
