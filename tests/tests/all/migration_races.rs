//! Races of a migration (spec.md 5), three NVEs on the NVA (a real etcd in h3), h3's VM
//! talking to the migrating one: an aborted migration leaves the source in charge; A -> B
//! -> A in quick succession ends on A with no pointer left; with the NVA down during the
//! move, the forwarding pointer carries the traffic and the NVEs converge once it is back;
//! a source that lets go first keeps the others unicasting (to its pointer, or where the VM
//! is expected).
use std::{thread, time::Duration};

use nve_tests::{
    etcd::EtcdServer,
    overlay::{self, H1_VTEP, H2_VTEP, VM1_IP, VM1_MAC},
    packet,
    rig::{Daemon, fdb_vtep, require_root, send_frames, wait_until},
    three_hosts::{H3_VTEP, MigrationRig, VM3_IP, VM3_MAC},
};
use nve_user::mac::MacAddr;

const VMX: &str = "00000000-0000-4000-8000-0000000000c1";
const VM3: &str = "00000000-0000-4000-8000-0000000000c3";

type Rig = MigrationRig;

fn setup(tag: &str) -> Rig {
    require_root();
    MigrationRig::new(tag, VMX, VM3).unwrap()
}

/// The source's side of the move: the VM pauses on h1, which disassociates it leaving a
/// forwarding pointer to h2.
fn leave_h1(r: &Rig) {
    r.rig.vm1.ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    overlay::leave_for(&r.d1, VMX, H2_VTEP).unwrap();
}

/// The VM resumes on h2 and announces itself (as QEMU does, with a RARP).
fn resume_on_h2(r: &Rig) {
    r.new.ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    send_frames(&r.new.ns, "eth0", &[packet::rarp(VM1_MAC)]).unwrap();
}

/// vm3 sends the VM one unicast frame (an echo request to its MAC: a ping could be an ARP
/// broadcast first, flooded whatever h3 knows) and waits until h2 decapsulated it: the
/// frames h3 flooded meanwhile.
fn unicast_from_vm3(r: &Rig) -> u64 {
    let decapsulated = r.d2.counter("underlay_rx", "DECAPSULATED").unwrap();
    let flooded = r.d3.counter("vm_egress", "FLOODED").unwrap();
    let ip = packet::Ipv4::new(VM3_IP.parse().unwrap(), VM1_IP.parse().unwrap(), 1);
    let frame = packet::eth(
        VM1_MAC,
        VM3_MAC,
        0x0800,
        &ip.packet(&packet::icmp_echo(1, 1, 64)),
    );
    send_frames(&r.rig.vm3.ns, "eth0", &[frame]).unwrap();
    wait_until("h2 decapsulates vm3's frame", || {
        r.d2.counter("underlay_rx", "DECAPSULATED").unwrap() > decapsulated
    });
    r.d3.counter("vm_egress", "FLOODED").unwrap() - flooded
}

/// Where `d` has the VM from the NVA, if anywhere.
fn nva_location(d: &Daemon) -> Option<String> {
    d.fdb()
        .unwrap()
        .iter()
        .find(|e| e.mac == MacAddr(VM1_MAC) && e.from_nva)
        .and_then(fdb_vtep)
}

/// A VM migrated back and forth (h1 -> h2 -> h1 ...) more often than duplicate detection
/// allows unexplained moves: each move was signaled (pre-associate with a migrating-in
/// hint, then the VM's announcement), so h3 follows every one and nothing is frozen
/// (before: frozen on the fifth move, pointing at the old place).
#[test]
fn signaled_migrations_back_and_forth_are_never_a_duplicate() {
    let r = setup("rd");
    let ends = [
        (&r.d1, "vm1p", &r.rig.vm1.ns, H1_VTEP),
        (&r.d2, "vmxp", &r.new.ns, H2_VTEP),
    ];
    for i in 0..=nve_user::nva::DUP_MOVES {
        let ((src, _, src_vm, src_vtep), (dst, port, dst_vm, dst_vtep)) =
            (ends[i % 2], ends[(i + 1) % 2]);
        overlay::pre_associate_arriving(dst, VMX, port, (VM1_MAC, VM1_IP), src_vtep).unwrap();
        src_vm.ip(&["link", "set", "eth0", "down"]).unwrap();
        overlay::leave_for(src, VMX, dst_vtep).unwrap();
        dst_vm.ip(&["link", "set", "eth0", "up"]).unwrap();
        send_frames(dst_vm, "eth0", &[packet::rarp(VM1_MAC)]).unwrap();
        wait_until(
            &format!("move {}: h3 has the VM at {dst_vtep}", i + 1),
            || nva_location(&r.d3).as_deref() == Some(dst_vtep),
        );
    }
    r.rig
        .vm3
        .ping_until_reachable(VM1_IP, 5)
        .expect("vm3 -> the VM after its last move");
    let status = r.d3.nve(&["status", "--json"]).unwrap();
    assert!(!status.contains("duplicate_macs"), "{status}");
}

#[test]
fn an_aborted_migration_leaves_the_source_in_charge() {
    let r = setup("ra");
    r.pre_associate_on_h2().unwrap();
    // The hypervisor gives up: the destination disassociates, the VM never paused.
    r.d2.nve(&["vm", "disassociate", "--vm", VMX]).unwrap();
    thread::sleep(Duration::from_millis(300));
    assert_eq!(nva_location(&r.d3).as_deref(), Some(H1_VTEP));
    r.rig
        .vm3
        .ping(VM1_IP, 3)
        .expect("vm3 -> the VM, still on h1");
}

#[test]
fn there_and_back_again_ends_where_it_started() {
    let r = setup("rb");
    r.pre_associate_on_h2().unwrap();
    // h1 -> h2 ...
    leave_h1(&r);
    resume_on_h2(&r);
    // ... and straight back: h1 associates again, h2 lets go.
    r.new.ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    overlay::associate(&r.d1, VMX, "vm1p", VM1_MAC, Some(VM1_IP)).unwrap();
    r.rig.vm1.ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    r.d2.nve(&[
        "vm",
        "disassociate",
        "--vm",
        VMX,
        "--migrating-out",
        H1_VTEP,
    ])
    .unwrap();
    wait_until("h3 has the VM on h1 again", || {
        nva_location(&r.d3).as_deref() == Some(H1_VTEP)
    });
    r.rig
        .vm3
        .ping_until_reachable(VM1_IP, 5)
        .expect("vm3 -> the VM, back on h1");
    // h1 is the VM's home again: no forwarding pointer of its own left for it.
    let fdb = r.d1.nve(&["fdb", "--json"]).unwrap();
    assert!(!fdb.contains("moved_until"), "{fdb}");
}

#[test]
fn with_the_nva_down_the_pointer_carries_the_move_and_the_nves_converge_after() {
    let mut r = setup("rn");
    r.pre_associate_on_h2().unwrap();
    // The pre-association made h2 a member of the VN (nothing about the VM published):
    // h3 floods to it and accepts its VXLAN.
    r.d3.wait_next_hop(H2_VTEP).unwrap();
    r.etcd.as_mut().expect("etcd").kill();
    wait_until("h3 notices the NVA is gone", || {
        let s = r.d3.status().unwrap();
        s.nva.is_some_and(|n| !n.connected)
    });
    leave_h1(&r);
    resume_on_h2(&r);
    // h3 still has the VM on h1 (the NVA is down): h1's pointer carries the traffic.
    if let Err(e) = r.rig.vm3.ping_until_reachable(VM1_IP, 5) {
        let stats = |d: &Daemon| d.nve(&["stats"]).unwrap_or_default();
        panic!(
            "vm3 -> the VM on h2, via h1: {e:#}\nh1:\n{}\nh2:\n{}\nh3:\n{}\nh2 fdb:\n{}\nh2 vms:\n{}",
            stats(&r.d1),
            stats(&r.d2),
            stats(&r.d3),
            r.d2.nve(&["fdb"]).unwrap_or_default(),
            r.d2.nve(&["vm", "list"]).unwrap_or_default()
        );
    }
    assert_eq!(nva_location(&r.d3).as_deref(), Some(H1_VTEP));
    assert!(r.d1.counter("underlay_rx", "FORWARDED_TO_VTEP").unwrap() > 0);
    // The NVA back (empty): everyone republishes, h3 follows the VM to h2.
    let _etcd = EtcdServer::start(&r.rig.h3, H3_VTEP).unwrap();
    wait_until("h3 converges on h2", || {
        nva_location(&r.d3).as_deref() == Some(H2_VTEP)
    });
    r.rig
        .vm3
        .ping(VM1_IP, 3)
        .expect("vm3 -> the VM on h2, directly");
}

#[test]
fn the_source_lets_go_before_the_destination_takes_over() {
    let r = setup("rd");
    r.pre_associate_on_h2().unwrap();
    // The source disassociates first; the destination is not active yet.
    leave_h1(&r);
    // Meanwhile vm3's frames follow the pointer to h2, which delivers them into the port
    // of the vNIC pre-associated as migrating in (where a tap would hold them for the VM
    // until it resumes; this VM's link is still down), and does not drop them as inactive.
    // h1 keeps its claim while its pointer lives: h3 unicasts to it rather than flooding
    // to h1 and h2 (which with the pointer delivered each frame twice).
    assert_eq!(unicast_from_vm3(&r), 0, "h3 flooded vm3's frame");
    assert_eq!(r.d2.counter("underlay_rx", "VNIC_INACTIVE").unwrap(), 0);
    assert_eq!(nva_location(&r.d3).as_deref(), Some(H1_VTEP));
    // Then the hypervisor's associate at the destination (no announcement this time).
    r.new.ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    overlay::associate(&r.d2, VMX, "vmxp", VM1_MAC, Some(VM1_IP)).unwrap();
    wait_until("h3 follows the VM to h2", || {
        nva_location(&r.d3).as_deref() == Some(H2_VTEP)
    });
    r.rig
        .vm3
        .ping_until_reachable(VM1_IP, 5)
        .expect("vm3 -> the VM on h2");
}

/// The source lets go without naming the destination (no pointer: a plain disassociate):
/// the MAC nobody claims any more is where h2 expects it (its pre-association migrating
/// in, on the NVA), so h3 sends there instead of flooding it.
#[test]
fn without_a_pointer_the_others_send_where_the_vm_is_expected() {
    let r = setup("re");
    r.pre_associate_on_h2().unwrap();
    r.rig.vm1.ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    r.d1.nve(&["vm", "disassociate", "--vm", VMX]).unwrap();
    wait_until(
        "h3 sends the VM's frames to h2, where it is expected",
        || nva_location(&r.d3).as_deref() == Some(H2_VTEP),
    );
    assert_eq!(unicast_from_vm3(&r), 0, "h3 flooded vm3's frame");
    resume_on_h2(&r);
    r.rig
        .vm3
        .ping_until_reachable(VM1_IP, 5)
        .expect("vm3 -> the VM on h2");
}
