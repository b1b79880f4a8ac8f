//! The NVA on a real etcd (Debian's etcd-server, in h2's namespace on the underlay address):
//! two NVEs configured with nothing about each other (h2 not even the VN: it creates it from
//! the NVA's definition on its first vNIC) learn each other's vNICs from it (remote MACs,
//! their addresses for ARP suppression, the flood list), the VMs talk, a
//! disassociation withdraws the entry everywhere; with etcd killed forwarding goes on and
//! `nve status` says so; etcd back, the NVEs resync.
use std::{thread, time::Duration};

use nve_tests::{
    etcd::EtcdServer,
    overlay::{self, H1_VTEP, H2_VTEP, TwoHosts, VM1_IP, VM1_MAC, VM2_IP, VM2_MAC, VN, VNI},
    rig::{Daemon, Netns, mac_str, require_root, wait_until},
};

const VM1_UUID: &str = "00000000-0000-4000-8000-0000000000a1";
const VM2_UUID: &str = "00000000-0000-4000-8000-0000000000a2";

#[test]
fn nves_learn_each_other_from_etcd() {
    require_root();
    let rig = TwoHosts::new("nv").unwrap();
    let mut etcd = EtcdServer::start(&rig.h2, H2_VTEP).unwrap();
    let nva = ["--nva", etcd.url.as_str()];
    let d1 = Daemon::start(&rig.h1, "nv1", H1_VTEP, "ul", &nva).unwrap();
    let d2 = Daemon::start(&rig.h2, "nv2", H2_VTEP, "ul", &nva).unwrap();
    // Only h1 has the VN; h2 creates it from the NVA on its first vNIC.
    overlay::add_vn(&d1, false).unwrap();
    overlay::associate(&d1, VM1_UUID, "vm1p", VM1_MAC, Some(VM1_IP)).unwrap();
    wait_until("h2 associates in the VN h1 published", || {
        overlay::associate(&d2, VM2_UUID, "vm2p", VM2_MAC, Some(VM2_IP)).is_ok()
    });
    let vns: serde_json::Value =
        serde_json::from_str(&d2.nve(&["vn", "list", "--json"]).unwrap()).unwrap();
    assert_eq!(vns[0]["name"], VN, "{vns}");
    assert_eq!(vns[0]["flood_unknown"], false, "{vns}");
    // Neither knows this one: refused.
    let err = d2
        .nve(&[
            "vm",
            "associate",
            "--vm",
            VM2_UUID,
            "--vnic",
            "1",
            "--vn",
            "nosuch",
            "--port",
            "vm2p",
            "--mac",
            "02:00:00:00:02:02",
        ])
        .unwrap_err();
    assert!(format!("{err:#}").contains("E_UNKNOWN_VN"), "{err:#}");
    wait_until("h1 learns h2's vNIC from etcd", || {
        d1.has_from_nva(VM2_MAC, H2_VTEP).unwrap()
    });
    wait_until("h2 learns h1's vNIC from etcd", || {
        d2.has_from_nva(VM1_MAC, H1_VTEP).unwrap()
    });

    // Nothing configured about the other side, unknown unicast off: this works only with
    // the NVA's FDB entries, flood lists and addresses.
    rig.vm1.ping_until_reachable(VM2_IP, 5).unwrap();
    rig.vm2.ping(VM1_IP, 3).unwrap();
    assert!(d1.counter("vm_egress", "ARP_REPLIED").unwrap() >= 1);

    // etcd goes away: forwarding goes on with the last state, and status says so.
    etcd.kill();
    wait_until("h1 notices the NVA is gone", || {
        let s = d1.status().unwrap();
        s.nva.is_some_and(|n| !n.connected)
    });
    rig.vm1
        .ping(VM2_IP, 3)
        .expect("forwarding during the NVA outage");

    // A disassociation while etcd is down is published when it is back.
    d2.nve(&["vm", "disassociate", "--vm", VM2_UUID]).unwrap();
    // (A new, empty etcd: the NVEs republish what they have.)
    let _etcd = EtcdServer::start(&rig.h2, H2_VTEP).unwrap();
    wait_until("h1 resyncs and drops h2's withdrawn vNIC", || {
        let s = d1.status().unwrap();
        s.nva.is_some_and(|n| n.connected) && !d1.has_from_nva(VM2_MAC, H2_VTEP).unwrap()
    });
    wait_until("h2 has h1's vNIC again", || {
        d2.has_from_nva(VM1_MAC, H1_VTEP).unwrap()
    });
}

/// MAC mobility over the NVA (three NVEs): a MAC claimed on a second NVE while the first
/// still claims it wins everywhere by its higher sequence number; a MAC that keeps moving
/// (5 moves within 180 s) is a duplicate: frozen where it is, reported in `nve status`.
#[test]
fn the_highest_sequence_number_wins_and_flapping_macs_freeze() {
    use nve_tests::three_hosts::{H3_VTEP, ThreeHosts};
    require_root();
    let rig = ThreeHosts::new("mm").unwrap();
    let _etcd = EtcdServer::start(&rig.h3, H3_VTEP).unwrap();
    let url = _etcd.url.clone();
    let nva = ["--nva", url.as_str()];
    let d1 = Daemon::start(&rig.h1, "mm1", H1_VTEP, "ul", &nva).unwrap();
    let d2 = Daemon::start(&rig.h2, "mm2", H2_VTEP, "ul", &nva).unwrap();
    let metrics = [nva[0], nva[1], "--metrics-listen", "127.0.0.1:9464"];
    let d3 = Daemon::start(&rig.h3, "mm3", H3_VTEP, "ul", &metrics).unwrap();
    for d in [&d1, &d2, &d3] {
        d.nve(&["vn", "add", VN, "--vni", &VNI.to_string()])
            .unwrap();
    }
    // The same MAC on h2, as a VM arriving there would have it.
    let _twin = nve_tests::rig::Vm::new("mm-vmx", &rig.h2, "vmxp", VM1_MAC, VM1_IP).unwrap();
    let on = |d: &Daemon, port: &str| overlay::associate(d, VM1_UUID, port, VM1_MAC, None).unwrap();
    let off = |d: &Daemon| {
        d.nve(&["vm", "disassociate", "--vm", VM1_UUID]).unwrap();
    };

    on(&d1, "vm1p");
    wait_until("h3 sees the MAC on h1", || {
        d3.has_from_nva(VM1_MAC, H1_VTEP).unwrap()
    });
    // h2 claims it while h1 still does: sequence 1 beats 0 (and the lower VTEP address).
    on(&d2, "vmxp");
    wait_until("h3 follows the higher sequence to h2", || {
        d3.has_from_nva(VM1_MAC, H2_VTEP).unwrap()
    });

    // Flapping: each NVE takes the MAC back in turn; h3 counts the moves.
    let mut moves = 1;
    while moves < nve_user::nva::DUP_MOVES {
        let (d, port, there) = if moves % 2 == 1 {
            (&d1, "vm1p", H1_VTEP)
        } else {
            (&d2, "vmxp", H2_VTEP)
        };
        off(d);
        on(d, port);
        moves += 1;
        wait_until("h3 follows the move", || {
            d3.has_from_nva(VM1_MAC, there).unwrap()
        });
    }
    let frozen_at = if moves % 2 == 1 { H2_VTEP } else { H1_VTEP };
    assert_reported_duplicate(&rig.h3, &d3);
    // One more move: h3 keeps the frozen entry.
    let (d, port) = if moves % 2 == 1 {
        (&d1, "vm1p")
    } else {
        (&d2, "vmxp")
    };
    off(d);
    on(d, port);
    thread::sleep(Duration::from_millis(500));
    assert!(
        d3.has_from_nva(VM1_MAC, frozen_at).unwrap(),
        "{}",
        d3.nve(&["fdb"]).unwrap()
    );
}

/// The duplicate VM1_MAC is in `d3`'s status and on its Prometheus endpoint (in `h3`), with
/// the NVA connected and one entry from it.
fn assert_reported_duplicate(h3: &Netns, d3: &Daemon) {
    let s = d3.status().unwrap();
    let duplicates = s.nva.as_ref().map_or(&[][..], |n| &n.duplicate_macs);
    assert_eq!(
        duplicates.first(),
        Some(&format!("{VNI}/{}", mac_str(VM1_MAC))),
        "{s:?}"
    );
    let scraped = h3
        .exec(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "http://127.0.0.1:9464/metrics",
        ])
        .unwrap();
    for line in [
        "nve_nva_duplicate_macs 1",
        "nve_nva_connected 1",
        "nve_nva_entries 1",
    ] {
        assert!(
            scraped.lines().any(|l| l == line),
            "no {line:?} in:\n{scraped}"
        );
    }
}

/// NVEs that reach each other over IPv6 publish their IPv6 VTEPs (`--nva-vtep`): the
/// others' entries point there and the VMs talk over VXLAN over IPv6. A VTEP that is not
/// the NVE's own is refused before anything is set up.
#[test]
fn nves_publish_their_ipv6_vteps() {
    require_root();
    let rig = TwoHosts::new("n6").unwrap();
    let v6 = |n: u8| format!("fd00::{n}");
    for (h, n) in [(&rig.h1, 1), (&rig.h2, 2)] {
        let cidr = format!("{}/64", v6(n));
        h.ip(&["-6", "addr", "add", &cidr, "dev", "ul", "nodad"])
            .unwrap();
    }
    let etcd = EtcdServer::start(&rig.h2, H2_VTEP).unwrap();
    let refused = Daemon::start(
        &rig.h1,
        "n6x",
        H1_VTEP,
        "ul",
        &["--nva", &etcd.url, "--vtep6", &v6(1), "--nva-vtep", &v6(2)],
    );
    let e = format!(
        "{:#}",
        refused.err().expect("a foreign --nva-vtep was accepted")
    );
    assert!(e.contains("not one of this NVE's VTEPs"), "{e}");
    let start = |h, tag, vtep, n| {
        let args = ["--nva", &etcd.url, "--vtep6", &v6(n), "--nva-vtep", &v6(n)];
        Daemon::start(h, tag, vtep, "ul", &args).unwrap()
    };
    let d1 = start(&rig.h1, "n61", H1_VTEP, 1);
    let d2 = start(&rig.h2, "n62", H2_VTEP, 2);
    for d in [&d1, &d2] {
        overlay::add_vn(d, false).unwrap();
    }
    overlay::associate(&d1, VM1_UUID, "vm1p", VM1_MAC, Some(VM1_IP)).unwrap();
    overlay::associate(&d2, VM2_UUID, "vm2p", VM2_MAC, Some(VM2_IP)).unwrap();
    wait_until("h1 has vm2 behind h2's IPv6 VTEP", || {
        d1.has_from_nva(VM2_MAC, &v6(2)).unwrap()
    });
    wait_until("h2 has vm1 behind h1's IPv6 VTEP", || {
        d2.has_from_nva(VM1_MAC, &v6(1)).unwrap()
    });
    rig.vm1.ping_until_reachable(VM2_IP, 5).unwrap();
    let over_v6 = d1.counter("tunnel_rx", "DECAPSULATED").unwrap();
    assert!(over_v6 > 0, "h1 received nothing over IPv6");
}
