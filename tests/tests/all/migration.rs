//! A VM ("vmx": vm1's MAC and IP) moves from h1 to h2, nve on both. h3 runs the kernel's
//! vxlan+bridge whose static FDB still puts vmx behind h1, as a remote NVE has it until it
//! hears of the move. Disassociated with `--migrating-out`, h1 keeps a forwarding pointer:
//! VXLAN that still arrives for vmx is re-addressed to h2, so vm3 reaches vmx through h1.
//! Without it (the control), h1 drops those frames and vm3's pings fail.
use nve_tests::{
    overlay::{self, H1_VTEP, H2_VTEP, VM1_IP, VM1_MAC, VN, VNI},
    rig::{Daemon, Vm, mac_str, require_root},
    three_hosts::{H3_VTEP, ThreeHosts, VM3_MAC},
};

const VM_UUID: &str = "0b7e3c1a-5d2f-4a6b-9c8d-7e6f5a4b3c2d";

/// The rig with nve on h1 and h2; fields drop in order, daemons before their hosts.
struct Hosts {
    d1: Daemon,
    d2: Daemon,
    rig: ThreeHosts,
}

/// vmx runs on h1 (associated there; h2 has its MAC behind h1) and vm3 reaches it.
fn before_move(tag: &str) -> Hosts {
    require_root();
    let rig = ThreeHosts::new(tag).unwrap();
    // The kernel's flood entry goes to one VTEP; broadcast from vm3 goes to both NVEs.
    overlay::kernel_vxlan(&rig.h3, H3_VTEP, H1_VTEP, "vm3p", &[VM1_MAC]).unwrap();
    rig.h3
        .exec(&[
            "bridge",
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            &format!("vx{VNI}"),
            "dst",
            H2_VTEP,
        ])
        .unwrap();
    let d1 = Daemon::start(&rig.h1, &format!("{tag}1"), H1_VTEP, "ul", &[]).unwrap();
    let d2 = Daemon::start(&rig.h2, &format!("{tag}2"), H2_VTEP, "ul", &[]).unwrap();
    for (d, others) in [(&d1, [H2_VTEP, H3_VTEP]), (&d2, [H1_VTEP, H3_VTEP])] {
        d.nve(&["vn", "add", VN, "--vni", &VNI.to_string()])
            .unwrap();
        d.nve(&["fdb", "add", VN, &mac_str(VM3_MAC), "--vtep", H3_VTEP])
            .unwrap();
        for vtep in others {
            d.nve(&["flood", "add", VN, vtep]).unwrap();
        }
        for vtep in others {
            d.wait_next_hop(vtep).unwrap();
        }
    }
    overlay::associate(&d1, VM_UUID, "vm1p", VM1_MAC, Some(VM1_IP)).unwrap();
    d2.nve(&["fdb", "add", VN, &mac_str(VM1_MAC), "--vtep", H1_VTEP])
        .unwrap();

    rig.vm3.ping_until_reachable(VM1_IP, 5).unwrap();
    rig.vm3.ping(VM1_IP, 3).expect("vm3 -> vmx on h1");
    Hosts { d1, d2, rig }
}

/// The move: vmx's new incarnation on h2 (port vmxp), associated there; the old one gone
/// from h1, whose vNIC is disassociated, with `--migrating-out` h2 or without. h3's FDB
/// stays stale.
fn move_to_h2(h: &Hosts, tag: &str, migrating_out: bool) -> Vm {
    let vmx = Vm::new(&format!("{tag}-vmx"), &h.rig.h2, "vmxp", VM1_MAC, VM1_IP).unwrap();
    h.d2.nve(&["fdb", "del", VN, &mac_str(VM1_MAC)]).unwrap();
    overlay::associate(&h.d2, VM_UUID, "vmxp", VM1_MAC, Some(VM1_IP)).unwrap();
    h.rig.vm1.ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    let mut args = vec!["vm", "disassociate", "--vm", VM_UUID];
    if migrating_out {
        args.extend(["--migrating-out", H2_VTEP]);
    }
    h.d1.nve(&args).unwrap();
    vmx
}

/// h3's kernel FDB entry for vmx (the vxlan device's, with its `dst`).
fn h3_fdb_entry(h: &Hosts) -> String {
    let fdb = h
        .rig
        .h3
        .exec(&["bridge", "fdb", "show", "dev", &format!("vx{VNI}")])
        .unwrap();
    let mac = mac_str(VM1_MAC);
    fdb.lines()
        .filter(|l| l.starts_with(&mac) && l.contains(" dst "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn forwarding_pointer_carries_stale_senders_to_the_new_host() {
    let h = before_move("mi");
    let _vmx = move_to_h2(&h, "mi", true);
    let decapsulated = h.d2.counter("underlay_rx", "DECAPSULATED").unwrap();

    h.rig
        .vm3
        .ping_until_reachable(VM1_IP, 5)
        .expect("vm3 -> vmx on h2 through h1's forwarding pointer");
    h.rig.vm3.ping(VM1_IP, 3).expect("vm3 -> vmx, repeated");

    let entry = h3_fdb_entry(&h);
    assert!(
        entry.contains(&format!("dst {H1_VTEP}")),
        "h3's FDB no longer stale, the test proves nothing: {entry:?}"
    );
    let forwarded = h.d1.counter("underlay_rx", "FORWARDED_TO_VTEP").unwrap();
    assert!(forwarded > 0, "h1 forwarded nothing to h2");
    let delivered = h.d2.counter("underlay_rx", "DECAPSULATED").unwrap();
    assert!(
        delivered > decapsulated,
        "h2 delivered nothing to vmx ({decapsulated} -> {delivered})"
    );
}

/// The control: without `--migrating-out`, h1 forgets vmx and vm3's frames die there.
#[test]
fn without_migrating_out_stale_senders_lose_the_vm() {
    let h = before_move("mc");
    let _vmx = move_to_h2(&h, "mc", false);

    assert!(
        h.rig
            .vm3
            .ns
            .exec(&["ping", "-c", "2", "-W", "1", VM1_IP])
            .is_err(),
        "vm3 reached vmx through a stale FDB without a forwarding pointer"
    );
    assert_eq!(h.d1.counter("underlay_rx", "FORWARDED_TO_VTEP").unwrap(), 0);
    // The stale entry was the only fault: corrected, vm3 reaches vmx on h2 directly.
    h.rig
        .h3
        .exec(&[
            "bridge",
            "fdb",
            "replace",
            &mac_str(VM1_MAC),
            "dev",
            &format!("vx{VNI}"),
            "dst",
            H2_VTEP,
        ])
        .unwrap();
    h.rig
        .vm3
        .ping_until_reachable(VM1_IP, 5)
        .expect("vm3 -> vmx on h2 once h3 knows");
}

/// The pointer on the kernel-device path: h3's kernel vxlan speaks IPv6 to h1, so its
/// VXLAN reaches h1's dataplane through nve's collect_md device (tc_tunnel_rx), already
/// decapsulated; h1 sends it on to h2 over IPv4 with a new tunnel key.
#[test]
fn the_pointer_also_carries_vxlan_the_kernel_decapsulated() {
    require_root();
    let tag = "m6";
    let rig = ThreeHosts::new(tag).unwrap();
    let v6 = |h: u8| format!("fd00::{h}");
    for (h, n) in [(&rig.h1, 1), (&rig.h2, 2), (&rig.h3, 3)] {
        let cidr = format!("{}/64", v6(n));
        h.ip(&["-6", "addr", "add", &cidr, "dev", "ul", "nodad"])
            .unwrap();
    }
    overlay::kernel_vxlan(&rig.h3, &v6(3), &v6(1), "vm3p", &[VM1_MAC]).unwrap();
    let d1 = Daemon::start(
        &rig.h1,
        &format!("{tag}1"),
        H1_VTEP,
        "ul",
        &["--vtep6", &v6(1)],
    )
    .unwrap();
    let d2 = Daemon::start(
        &rig.h2,
        &format!("{tag}2"),
        H2_VTEP,
        "ul",
        &["--vtep6", &v6(2)],
    )
    .unwrap();
    for (d, other) in [(&d1, H2_VTEP), (&d2, H1_VTEP)] {
        d.nve(&["vn", "add", VN, "--vni", &VNI.to_string()])
            .unwrap();
        d.nve(&["fdb", "add", VN, &mac_str(VM3_MAC), "--vtep", &v6(3)])
            .unwrap();
        d.nve(&["flood", "add", VN, &v6(3)]).unwrap();
        d.nve(&["flood", "add", VN, other]).unwrap();
    }
    d1.wait_next_hop(H2_VTEP).unwrap();
    overlay::associate(&d1, VM_UUID, "vm1p", VM1_MAC, Some(VM1_IP)).unwrap();
    d2.nve(&["fdb", "add", VN, &mac_str(VM1_MAC), "--vtep", H1_VTEP])
        .unwrap();
    rig.vm3.ping_until_reachable(VM1_IP, 5).unwrap();

    let h = Hosts { d1, d2, rig };
    let _vmx = move_to_h2(&h, tag, true);
    h.rig
        .vm3
        .ping_until_reachable(VM1_IP, 5)
        .expect("vm3 -> vmx on h2 through h1's pointer on the tunnel path");
    let entry = h3_fdb_entry(&h);
    assert!(
        entry.contains(&format!("dst {}", v6(1))),
        "h3's FDB no longer stale, the test proves nothing: {entry:?}"
    );
    let forwarded = h.d1.counter("tunnel_rx", "FORWARDED_TO_VTEP").unwrap();
    assert!(forwarded > 0, "h1 forwarded nothing from its tunnel device");
}

/// On the NVA, the source need not wait for the disassociate: the destination's claim
/// (sequence + 1) beats the source's own, and the source forwards the VM's frames to the
/// destination from then on (RFC 7432 section 15: the older route withdraws). h3's kernel
/// FDB stays stale; h1 is never told the VM left (the paused source, before libvirt's hook
/// runs): vm3 still reaches the VM on h2, through h1.
/// nve on h1 and h2 sharing a real etcd (in h3), the VM associated on h1 (its only vNIC in
/// the VN there) and reached by vm3 on h3, whose kernel vxlan has it behind h1 for good;
/// the VM's next incarnation ready on h2 (port vmxp). Fields drop in order.
struct OnNva {
    vmx: Vm,
    d1: Daemon,
    d2: Daemon,
    _etcd: nve_tests::etcd::EtcdServer,
    rig: ThreeHosts,
}

fn on_nva(tag: &str) -> OnNva {
    require_root();
    let rig = ThreeHosts::new(tag).unwrap();
    overlay::kernel_vxlan(&rig.h3, H3_VTEP, H1_VTEP, "vm3p", &[VM1_MAC]).unwrap();
    let etcd = nve_tests::etcd::EtcdServer::start(&rig.h3, H3_VTEP).unwrap();
    let nva = ["--nva", etcd.url.as_str()];
    let d1 = Daemon::start(&rig.h1, &format!("{tag}1"), H1_VTEP, "ul", &nva).unwrap();
    let d2 = Daemon::start(&rig.h2, &format!("{tag}2"), H2_VTEP, "ul", &nva).unwrap();
    for d in [&d1, &d2] {
        d.nve(&["vn", "add", VN, "--vni", &VNI.to_string()])
            .unwrap();
        d.nve(&["fdb", "add", VN, &mac_str(VM3_MAC), "--vtep", H3_VTEP])
            .unwrap();
        d.nve(&["flood", "add", VN, H3_VTEP]).unwrap();
    }
    overlay::associate(&d1, VM_UUID, "vm1p", VM1_MAC, Some(VM1_IP)).unwrap();
    rig.vm3.ping_until_reachable(VM1_IP, 5).unwrap();
    let vmx = Vm::new(&format!("{tag}-vmx"), &rig.h2, "vmxp", VM1_MAC, VM1_IP).unwrap();
    vmx.ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    OnNva {
        vmx,
        d1,
        d2,
        _etcd: etcd,
        rig,
    }
}

/// On the NVA, the source need not wait for the disassociate: the destination's claim
/// (sequence + 1) beats the source's own, and the source forwards the VM's frames to the
/// destination from then on (RFC 7432 section 15: the older route withdraws). h3's kernel
/// FDB stays stale; h1 is never told the VM left (the paused source, before libvirt's hook
/// runs): vm3 still reaches the VM on h2, through h1.
#[test]
fn a_newer_claim_elsewhere_turns_the_source_into_a_pointer() {
    let r = on_nva("mn");
    let (vmx, d1, d2, rig) = (&r.vmx, &r.d1, &r.d2, &r.rig);
    // The VM stops on h1 and runs on h2, which associates it; h1 hears nothing but the NVA.
    rig.vm1.ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    vmx.ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    overlay::associate(d2, VM_UUID, "vmxp", VM1_MAC, Some(VM1_IP)).unwrap();
    nve_tests::rig::wait_until("h1 sees h2's claim on the VM", || {
        let fdb = d1
            .nve(&["fdb", "--mac", &mac_str(VM1_MAC), "--json"])
            .unwrap();
        fdb.contains(H2_VTEP)
    });
    rig.vm3
        .ping_until_reachable(VM1_IP, 5)
        .expect("vm3 -> the VM on h2, through h1 (never told it left)");
    let forwarded = d1.counter("underlay_rx", "FORWARDED_TO_VTEP").unwrap();
    assert!(forwarded > 0, "h1 forwarded nothing to h2");
    let vnics = d1.nve(&["vm", "list", "--json"]).unwrap();
    assert!(
        vnics.contains(VM_UUID),
        "h1's vNIC is still associated: {vnics}"
    );
}

/// The common case of one VM of a tenant per host: the VM was h1's last vNIC in the VN.
/// Disassociated there with `--migrating-out`, h1 keeps its VN membership on the NVA while
/// its pointer lives, so h2 still accepts the VXLAN h1 sends on to it (before: h2 dropped
/// all of it as VTEP_NOT_IN_VN, the VM unreachable from h3's stale FDB).
#[test]
fn the_destination_accepts_a_pointer_from_a_source_left_without_vnics() {
    let r = on_nva("mp");
    let (vmx, d1, d2, rig) = (&r.vmx, &r.d1, &r.d2, &r.rig);
    overlay::pre_associate_arriving(d2, VM_UUID, "vmxp", (VM1_MAC, VM1_IP), H1_VTEP).unwrap();
    rig.vm1.ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    overlay::leave_for(d1, VM_UUID, H2_VTEP).unwrap();
    vmx.ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    overlay::associate(d2, VM_UUID, "vmxp", VM1_MAC, Some(VM1_IP)).unwrap();
    rig.vm3
        .ping_until_reachable(VM1_IP, 5)
        .expect("vm3 -> the VM on h2, through h1's pointer");
    assert!(d1.counter("underlay_rx", "FORWARDED_TO_VTEP").unwrap() > 0);
    assert_eq!(d2.counter("underlay_rx", "VTEP_NOT_IN_VN").unwrap(), 0);
    assert!(
        d1.nve(&["vm", "list", "--json"]).unwrap().trim() == "[]",
        "h1 has no vNIC left"
    );
}
