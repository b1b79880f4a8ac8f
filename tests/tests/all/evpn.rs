//! BGP EVPN (RFC 7432, RFC 8365) against FRR 8.4 on h2 with the kernel's vxlan+bridge:
//! routes both ways and VMs talking, what the wire carries (tshark), MAC mobility agreed on
//! both sides, withdrawals, a neighbour that dies or comes back, and peers that send
//! garbage.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener},
    thread,
    time::{Duration, Instant},
};

use nve_tests::{
    evpn_rig::{ASN, EvpnRig},
    frr::MacType,
    overlay::{self, Capture, H1_VTEP, H2_VTEP, VM1_IP, VM1_MAC, VM2_IP, VM2_MAC, VNI},
    rig::{Netns, Vm, mac_str, require_root, wait_until},
};
use serde_json::json;

const VM1: &str = "6f1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a01";
const WAIT: Duration = Duration::from_secs(20);

fn rig(tag: &str) -> EvpnRig {
    require_root();
    EvpnRig::new(tag, json!({}), |c| c).expect("EVPN rig")
}

fn h1() -> Ipv4Addr {
    H1_VTEP.parse().unwrap()
}

/// FRR has vm1's MAC behind h1 with MAC Mobility sequence `seq`.
fn frr_has_vm1(rig: &EvpnRig, seq: u32) {
    let mac = mac_str(VM1_MAC);
    rig.frr
        .wait_macs(VNI, WAIT, "vm1 remote behind h1", |m| {
            m.get(&mac).is_some_and(|e| {
                e.kind == MacType::Remote && e.remote_vtep == Some(h1()) && e.remote_sequence == seq
            })
        })
        .unwrap();
}

fn associate(rig: &EvpnRig) {
    overlay::associate(&rig.nve, VM1, "vm1p", VM1_MAC, Some(VM1_IP)).unwrap();
}

#[test]
fn evpn_routes_flow_both_ways_vms_talk_and_the_wire_carries_rfc_8365() {
    let rig = rig("evpna");
    let capture = Capture::start_full(&rig.hosts.h1, "ul", "tcp port 179").unwrap();
    // A vNIC here: nve joins the VN (type 3) and advertises the MAC (type 2).
    associate(&rig);
    frr_has_vm1(&rig, 0);
    let fdb = rig
        .hosts
        .h2
        .exec(&["bridge", "fdb", "show", "dev", "vxlan100"])
        .unwrap();
    assert!(
        fdb.contains(&format!("00:00:00:00:00:00 dst {H1_VTEP}")),
        "h2 floods to h1: {fdb}"
    );
    rig.hosts.vm1.ping_until_reachable(VM2_IP, 20).unwrap();
    rig.hosts.vm2.ping(VM1_IP, 3).unwrap();
    overlay::tcp_transfer(&rig.hosts.vm2, &rig.hosts.vm1, 5201, "2M").unwrap();
    // FRR learned vm2 on its bridge and advertised it: nve has it from the NVA.
    wait_until("vm2 behind h2 from FRR", || {
        rig.nve.has_from_nva(VM2_MAC, H2_VTEP).unwrap()
    });
    let n = rig.neighbor().unwrap();
    assert_eq!(n.state, "established");
    assert!(n.prefixes_received >= 2 && n.prefixes_sent >= 3, "{n:?}");
    // FRR's view of nve's routes: the VNI in the label, RT ASN:VNI, VXLAN.
    let routes = rig.frr.evpn_routes().unwrap();
    let from_nve: Vec<_> = routes
        .iter()
        .filter(|r| r.peer == Some(h1().into()))
        .collect();
    assert!(from_nve.iter().any(|r| r.route_type == 3), "{from_nve:?}");
    for r in &from_nve {
        assert_eq!((r.vni, r.encap), (Some(VNI), Some(8)), "{r:?}");
        assert_eq!(r.route_targets, vec![format!("{ASN}:{VNI}")], "{r:?}");
    }
    // tshark's view of what nve sent.
    let pcap = std::path::PathBuf::from(format!("/tmp/{}-evpn.pcap", rig.hosts.h1.name));
    capture.finish_pcap(&pcap).unwrap();
    let sent = format!("ip.src == {H1_VTEP} && bgp.evpn.nlri.rt");
    let imet = overlay::tshark_fields(
        &pcap,
        &format!("{sent} == 3"),
        &[
            "bgp.evpn.nlri.rd",
            "bgp.update.path_attribute.pmsi.tunnel.type",
            "bgp.update.path_attribute.pmsi.ingress_rep_ip",
            "bgp.ext_com.tunnel_type",
            "bgp.ext_com.value_as2",
            "bgp.ext_com.value_an4",
        ],
    )
    .unwrap();
    // RD type 1 (IPv4 address: h1's, index: the VNI), as tshark prints it: in hex.
    let o = h1().octets();
    let rd = format!(
        "0001{:02x}{:02x}{:02x}{:02x}{VNI:04x}",
        o[0], o[1], o[2], o[3]
    );
    let want = [
        rd.clone(),
        "6".into(),
        H1_VTEP.into(),
        "8".into(),
        ASN.to_string(),
        VNI.to_string(),
    ];
    assert_eq!(imet, vec![want.to_vec()]);
    let macs = overlay::tshark_fields(
        &pcap,
        &format!("{sent} == 2"),
        &["bgp.evpn.nlri.rd", "bgp.evpn.nlri.mac_addr"],
    )
    .unwrap();
    // MAC-only and MAC/IP, one UPDATE: tshark joins a packet's values with commas.
    let vm1 = mac_str(VM1_MAC);
    let right =
        |f: &Vec<String>| f[0].split(',').all(|r| r == rd) && f[1].split(',').all(|m| m == vm1);
    assert!(!macs.is_empty() && macs.iter().all(right), "{macs:?}");
    let _ = std::fs::remove_file(&pcap);
}

/// A VM with vm1's MAC on h2's bridge (`vm1bp` in br100), without IPv6 (its router
/// solicitations would teach h1 the MAC back).
fn vm1_at_h2(rig: &EvpnRig) -> Vm {
    let ns = Netns::new("evpnm-vm1b").unwrap();
    let vm = Vm::in_ns(ns, &rig.hosts.h2, "vm1bp", VM1_MAC, "192.168.10.11").unwrap();
    vm.ns
        .exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
        .unwrap();
    rig.hosts
        .h2
        .ip(&["link", "set", "vm1bp", "master", "br100", "up"])
        .unwrap();
    vm
}

#[test]
fn evpn_mac_mobility_agrees_with_frr() {
    let rig = rig("evpnm");
    for vm in [&rig.hosts.vm1, &rig.hosts.vm2] {
        vm.ns
            .exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
            .unwrap();
    }
    associate(&rig);
    frr_has_vm1(&rig, 0);
    // The MAC turns up behind h2: FRR advertises it with sequence 1; nve installs that
    // and withdraws its own route.
    let moved = vm1_at_h2(&rig);
    moved.ping_until_reachable(VM2_IP, 20).unwrap();
    wait_until("vm1's MAC behind h2 at nve", || {
        rig.nve.has_from_nva(VM1_MAC, H2_VTEP).unwrap()
    });
    let mac = mac_str(VM1_MAC);
    rig.frr
        .wait_routes(WAIT, "nve's route for vm1 withdrawn", |routes| {
            !routes
                .iter()
                .any(|r| r.peer == Some(h1().into()) && r.mac.as_deref() == Some(mac.as_str()))
        })
        .unwrap();
    let macs = rig.frr.evpn_macs(VNI).unwrap();
    assert_eq!(
        (macs[&mac].kind, macs[&mac].local_sequence),
        (MacType::Local, 1)
    );
    // The VM comes back to h1 (the hypervisor associates it again): nve claims it with
    // sequence 2, and FRR agrees.
    rig.nve
        .nve(&["vm", "disassociate", "--vm", VM1, "--vnic", "0"])
        .unwrap();
    associate(&rig);
    frr_has_vm1(&rig, 2);
    drop(moved);
    rig.hosts.vm1.ping_until_reachable(VM2_IP, 20).unwrap();
}

#[test]
fn evpn_withdrawals_and_a_dying_neighbour_lose_nothing() {
    let mut rig = rig("evpnw");
    associate(&rig);
    frr_has_vm1(&rig, 0);
    rig.hosts.vm1.ping_until_reachable(VM2_IP, 20).unwrap();
    wait_until("vm2 from FRR", || {
        rig.nve.has_from_nva(VM2_MAC, H2_VTEP).unwrap()
    });
    // Disassociated: withdrawn.
    rig.nve
        .nve(&["vm", "disassociate", "--vm", VM1, "--vnic", "0"])
        .unwrap();
    rig.frr
        .wait_macs(VNI, WAIT, "vm1 withdrawn", |m| {
            !m.contains_key(&mac_str(VM1_MAC))
        })
        .unwrap();
    associate(&rig);
    frr_has_vm1(&rig, 0);
    // bgpd killed and back within the stale time: vm2's entry never leaves nve's FDB.
    rig.frr.kill_bgpd();
    let gone = Instant::now();
    wait_until("nve sees the session down", || {
        rig.neighbor().unwrap().state != "established"
    });
    assert!(rig.neighbor().unwrap().stale > 0);
    rig.frr.start_bgpd().unwrap();
    rig.frr.wait_established(h1(), WAIT).unwrap();
    frr_has_vm1(&rig, 0);
    while gone.elapsed() < Duration::from_secs(4) {
        assert!(
            rig.nve.has_from_nva(VM2_MAC, H2_VTEP).unwrap(),
            "vm2 flapped"
        );
        thread::sleep(Duration::from_millis(100));
    }
    wait_until("stale routes refreshed", || {
        rig.neighbor().unwrap().stale == 0
    });
    assert!(rig.nve.has_from_nva(VM2_MAC, H2_VTEP).unwrap());
    // bgpd gone for good: after the stale time (10 s) its routes go.
    rig.frr.kill_bgpd();
    thread::sleep(Duration::from_secs(5));
    assert!(
        rig.nve.has_from_nva(VM2_MAC, H2_VTEP).unwrap(),
        "kept for the stale time"
    );
    for _ in 0..150 {
        if !rig.nve.has_from_nva(VM2_MAC, H2_VTEP).unwrap() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("vm2's route outlived the stale time");
}

/// Runs a fake BGP listener on h2's 10.0.0.2:179 that answers each connection with
/// `reply`, returning the first bytes nve sent after it (its NOTIFICATION).
fn hostile_peer(h2: &Netns, reply: Vec<u8>) -> thread::JoinHandle<Vec<u8>> {
    let path = h2.path();
    thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on this thread only.
        assert_eq!(
            unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) },
            0
        );
        let listener = TcpListener::bind((H2_VTEP, 179)).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut open = [0u8; 4096];
        let _ = conn.read(&mut open).unwrap();
        conn.write_all(&reply).unwrap();
        let mut got = Vec::new();
        let _ = conn.read_to_end(&mut got);
        got
    })
}

#[test]
fn evpn_garbage_and_a_wrong_as_get_their_notification() {
    require_root();
    let hosts = overlay::TwoHosts::new("evpng").unwrap();
    let config = format!("/tmp/{}-nve.json", hosts.h1.name);
    std::fs::write(
        &config,
        nve_tests::evpn_rig::nve_config(json!({})).to_string(),
    )
    .unwrap();
    // Garbage: not a BGP marker (1/1, message header error, connection not synchronized).
    let peer = hostile_peer(&hosts.h2, vec![0x42; 40]);
    let d = nve_tests::rig::Daemon::start(
        &hosts.h1,
        "evpng",
        H1_VTEP,
        "ul",
        &["--nva", "bgp", "--config", &config],
    )
    .unwrap();
    let got = peer.join().unwrap();
    assert!(
        got.len() >= 21 && got[..16] == [0xff; 16] && got[18] == 3,
        "a NOTIFICATION: {got:02x?}"
    );
    assert_eq!((got[19], got[20]), (1, 1));
    // An OPEN from another AS: 2/2 (bad peer AS).
    let open = nve_user::evpn::wire::encode(
        &nve_user::evpn::wire::Message::Open(nve_user::evpn::wire::Open {
            asn: 65099,
            hold_time: 9,
            router_id: "10.0.0.2".parse().unwrap(),
            caps: nve_user::evpn::wire::Capabilities {
                evpn: true,
                four_octet_asn: true,
                ..Default::default()
            },
        }),
        true,
    );
    let got = hostile_peer(&hosts.h2, open).join().unwrap();
    let at = got
        .windows(16)
        .position(|w| w == [0xff; 16])
        .expect("a message");
    let notification = &got[at..];
    assert_eq!(
        (notification[18], notification[19], notification[20]),
        (3, 2, 2),
        "{got:02x?}"
    );
    // The daemon is up and says why.
    let nva = d.status().unwrap().nva.unwrap();
    assert!(!nva.connected);
    assert!(
        nva.neighbors[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("NOTIFICATION"),
        "{nva:?}"
    );
    let _ = std::fs::remove_file(&config);
}
