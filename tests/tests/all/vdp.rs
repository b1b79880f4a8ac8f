//! VDP (IEEE 802.1Qbg) against lldpad, the station, driven by its own vdptool: VSIs
//! associated with VNs by GroupID (the VNI) get VIDs nve assigns, their tagged frames reach
//! the VN's VMs behind the kernel's vxlan and the answers come back tagged the same; keep-
//! alives hold them, silence ends them with an unsolicited DeAssoc; refusals carry VDP's
//! status; lost ECP frames are retransmitted and delivered once.
use std::{net::Ipv4Addr, thread, time::Duration};

use nve_tests::{
    lldpad::{self, VdpError},
    overlay::{Capture, VNI},
    packet,
    rig::{require_root, send_frames, wait_until},
    vdp_rig::{RED_VNI, STATION_MAC, VdpRig, vsi},
};
use nve_user::vnic::VnicState;

/// nve's timers matching the station's short ones (each side takes the larger).
const SHORT: &[&str] = &["--rwd", "16", "--rka", "16"];

fn rig(tag: &str) -> VdpRig {
    require_root();
    VdpRig::new(tag, SHORT, lldpad::Config::default()).expect("VDP rig")
}

fn assigned(rig: &VdpRig, v: &lldpad::Vsi) -> u16 {
    let answer = rig.station.associate(v).expect("associate");
    let vid = answer.vid().expect("a filter in the answer");
    assert!((2..=4094).contains(&vid), "nve assigns 2-4094: {answer:?}");
    vid
}

#[test]
fn vdp_associates_vsis_with_vns_and_their_traffic_flows_tagged() {
    let rig = rig("vdpa");
    let (blue, red) = (vsi(1, VNI), vsi(2, RED_VNI));
    let (blue_vid, red_vid) = (assigned(&rig, &blue), assigned(&rig, &red));
    assert_ne!(blue_vid, red_vid, "two VNs, two VIDs on one port");
    let vnics = rig.nve.vnics().unwrap();
    for (v, vid, vn) in [(&blue, blue_vid, "blue"), (&red, red_vid, "red")] {
        let vnic = vnics
            .iter()
            .find(|n| n.vm == v.uuid)
            .expect("nve vm list shows it");
        assert_eq!(
            (vnic.vn.as_str(), vnic.vid, vnic.state),
            (vn, vid, VnicState::Associated)
        );
        assert_eq!(vnic.port, "trunk0");
    }
    let blue_ip = Ipv4Addr::new(192, 168, 10, 50);
    let red_ip = Ipv4Addr::new(192, 168, 20, 50);
    // Each VSI reaches its VN's VM, and the answers come back with its VID.
    let replies = rig.ping(blue.mac, blue_ip, blue_vid, &rig.vm2).unwrap();
    assert!(
        !replies.is_empty() && replies.iter().all(|&v| v == blue_vid),
        "{replies:?}"
    );
    let replies = rig.ping(red.mac, red_ip, red_vid, &rig.vm3).unwrap();
    assert!(
        !replies.is_empty() && replies.iter().all(|&v| v == red_vid),
        "{replies:?}"
    );
    // Isolated: red's VSI does not reach blue's VM, nor blue's MAC through red's VID.
    assert!(
        rig.ping(red.mac, red_ip, red_vid, &rig.vm2)
            .unwrap()
            .is_empty()
    );
    assert!(
        rig.ping(blue.mac, blue_ip, red_vid, &rig.vm3)
            .unwrap()
            .is_empty()
    );
    // De-associated (with the VID nve gave): gone, and its frames go nowhere.
    rig.station
        .deassociate(&blue.with_vid(blue_vid))
        .expect("deassociate");
    assert!(rig.nve.vnics().unwrap().iter().all(|n| n.vm != blue.uuid));
    assert!(
        rig.ping(blue.mac, blue_ip, blue_vid, &rig.vm2)
            .unwrap()
            .is_empty()
    );
    // Pre-associate with resource reservation: installed with its VID, not forwarding;
    // then associate, the same VID.
    let next = vsi(11, VNI);
    let pre = rig.station.preassociate_rr(&next).expect("preassociate-rr");
    let vid = pre.vid().expect("a VID");
    let state = |uuid: &str| {
        let vnics = rig.nve.vnics().unwrap();
        vnics
            .iter()
            .find(|n| n.vm == uuid)
            .map(|n| (n.state, n.vid))
    };
    assert_eq!(state(&next.uuid), Some((VnicState::PreAssociated, vid)));
    let assoc = rig
        .station
        .associate(&next.with_vid(vid))
        .expect("associate");
    assert_eq!(assoc.vid(), Some(vid));
    assert_eq!(state(&next.uuid), Some((VnicState::Associated, vid)));
    let status = rig.status().unwrap();
    let counters = status.session.expect("a session").counters;
    assert!(
        counters.ecp_acked >= 3 && counters.vsi_refused == 0,
        "{counters:?}"
    );
    assert_eq!(
        status.vsis.len(),
        2,
        "red's and the last: {:?}",
        status.vsis
    );
    // The link's own frames went to nve's session, never into a VN.
    assert!(rig.nve.counter("vm_egress", "LINK_CONTROL").unwrap() > 0);
}

#[test]
fn vdp_keep_alives_hold_silence_ends_with_an_unsolicited_deassoc() {
    let mut rig = rig("vdpk");
    let v = vsi(3, VNI);
    let vid = assigned(&rig, &v);
    let expires = |rig: &VdpRig| {
        let vnics = rig.nve.vnics().unwrap();
        vnics
            .iter()
            .find(|n| n.vm == v.uuid)
            .and_then(|n| n.expires_at)
    };
    let first = expires(&rig).expect("soft state: keep-alives hold it");
    // Keep-alives every 655 ms renew it past its first hold time (2 s).
    thread::sleep(Duration::from_millis(2_500));
    assert!(expires(&rig).expect("still associated") > first + 1_000);
    // lldpad gone without a word: the association ends after the hold time, and nve owes
    // the station a DeAssoc it cannot deliver yet.
    rig.station.kill();
    wait_until("the silent VSI de-associated", || expires(&rig).is_none());
    wait_until("the DeAssoc given up on", || {
        let s = rig.status().unwrap();
        s.session.is_some_and(|s| s.counters.ecp_given_up > 0) && s.vsis.len() == 1
    });
    assert_eq!(rig.status().unwrap().vsis[0].state, None, "owed a DeAssoc");
    // lldpad back: told, and nve forgets the VSI once it acknowledges.
    let tap = rig.ecp_tap().unwrap();
    rig.station.start().unwrap();
    wait_until("the DeAssoc acknowledged", || {
        rig.status().unwrap().vsis.is_empty()
    });
    let frames = tap.frames();
    let uuid = uuid_bytes(&v.uuid);
    let deassoc = frames.iter().any(|f| {
        // ECP request, Manager ID TLV (18 bytes), then a DeAssoc TLV (type 4) with status 0
        // (no ACK bit: unsolicited) naming the VSI, with the VID nve had given.
        f.len() >= 14 + 4 + 18 + 2 + 37 + 2
            && f[14..16] == [0x10, 0x01]
            && f[36] >> 1 == 4
            && f[38] == 0
            && f[44..60] == uuid
            && u16::from_be_bytes([f[f.len() - 4], f[f.len() - 3]]) & 0x0fff == vid
    });
    assert!(
        deassoc,
        "no unsolicited DeAssoc among {} ECP frames",
        frames.len()
    );
}

/// A UUID's 16 bytes.
fn uuid_bytes(uuid: &str) -> Vec<u8> {
    let hex: String = uuid.chars().filter(|c| *c != '-').collect();
    (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn vdp_refusals_answer_the_right_status_and_change_nothing() {
    let rig = rig("vdpr");
    let blue = vsi(4, VNI);
    let blue_vid = assigned(&rig, &blue);
    let before = rig.nve.vnics().unwrap();
    let status = |v: &lldpad::Vsi| match rig.station.associate(v) {
        Err(VdpError::Bridge(e, _)) => e.code,
        other => panic!("expected an error status for {v:?}, got {other:?}"),
    };
    // An unknown VNI: 5 (invalid GroupID).
    assert_eq!(status(&vsi(5, 4242)), 5);
    // Red asks for blue's VID on this port: 5 (invalid VID).
    assert_eq!(status(&vsi(6, RED_VNI).with_vid(blue_vid)), 5);
    // Another VSI with blue's MAC: 5 (invalid MAC).
    let thief = lldpad::Vsi {
        mac: blue.mac,
        ..vsi(7, VNI)
    };
    assert_eq!(status(&thief), 5);
    assert_eq!(rig.nve.vnics().unwrap(), before, "nothing changed");
    let counters = rig.status().unwrap().session.unwrap().counters;
    assert!(counters.vsi_refused >= 3, "{counters:?}");
}

#[test]
fn vdp_lost_ecp_frames_are_resent_and_delivered_once() {
    let rig = rig("vdpl");
    // Every second ACK nve sends is lost (the station resends its request) and every
    // second ACK the station sends is lost (nve resends its answer).
    for (ns, dev) in [(&rig.h1, "trunk0"), (&rig.st, "vst0")] {
        let chain = format!("{{ type filter hook egress device {dev} priority 0 ; }}");
        for rule in [
            "add table netdev loss",
            &format!("add chain netdev loss out {chain}"),
            "add rule netdev loss out ether type 0x8940 @nh,0,16 0x1401 numgen inc mod 2 0 drop",
        ] {
            let mut args = vec!["nft"];
            args.extend(rule.split(' '));
            ns.exec(&args).unwrap();
        }
    }
    let vsis: Vec<_> = (0x20..0x24).map(|n| vsi(n, VNI)).collect();
    for v in &vsis {
        assigned(&rig, v);
    }
    let vnics = rig.nve.vnics().unwrap();
    assert_eq!(vnics.len(), vsis.len(), "each associated once: {vnics:?}");
    let c = rig.status().unwrap().session.unwrap().counters;
    assert!(c.ecp_duplicates > 0, "the station resent: {c:?}");
    assert!(c.ecp_retransmitted > 0, "nve resent: {c:?}");
    assert_eq!(c.vsi_refused, 0, "{c:?}");
}

#[test]
fn vdp_associations_survive_kill_9_and_the_session_resumes() {
    require_root();
    // Keep-alives every 5.2 s (RKA 19): the restart falls between two of them.
    let station = lldpad::Config {
        timers: lldpad::Timers {
            vdprka: 19,
            ..lldpad::Timers::default()
        },
        ..lldpad::Config::default()
    };
    let mut rig = VdpRig::new("vdps", &["--rwd", "16", "--rka", "19"], station).expect("rig");
    let v = vsi(8, VNI);
    let vid = assigned(&rig, &v);
    let ip = Ipv4Addr::new(192, 168, 10, 51);
    assert!(!rig.ping(v.mac, ip, vid, &rig.vm2).unwrap().is_empty());
    // Right after a keep-alive was answered, kill -9: the pinned dataplane forwards on.
    let expires = |rig: &VdpRig| rig.nve.vnics().unwrap().first().and_then(|n| n.expires_at);
    let first = expires(&rig);
    wait_until("a keep-alive", || expires(&rig) != first);
    rig.nve.kill();
    let replies = rig.ping(v.mac, ip, vid, &rig.vm2).unwrap();
    assert!(
        !replies.is_empty() && replies.iter().all(|&r| r == vid),
        "{replies:?}"
    );
    rig.nve.respawn().unwrap();
    // The association came back from the state dir, and the next keep-alive is answered
    // by the new daemon: the station keeps the VSI.
    let vnic = rig.nve.vnics().unwrap().pop().expect("restored");
    assert_eq!((vnic.vid, vnic.state), (vid, VnicState::Associated));
    let answered = |rig: &VdpRig| {
        let s = rig.status().unwrap().session;
        s.is_some_and(|s| s.counters.vsi_requests > 0)
    };
    for _ in 0..80 {
        if answered(&rig) {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        answered(&rig),
        "no keep-alive reached the new daemon within 8 s"
    );
    let listed = rig.station.list().unwrap();
    assert!(
        listed
            .iter()
            .any(|r| r.uuid == v.uuid && r.vid() == Some(vid)),
        "{listed:?}"
    );
    assert!(!rig.ping(v.mac, ip, vid, &rig.vm2).unwrap().is_empty());
}

/// An ECP request from the station's MAC with sequence number `seq`.
fn ecp(seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut pdu = vec![0x10, 0x01];
    pdu.extend_from_slice(&seq.to_be_bytes());
    pdu.extend_from_slice(payload);
    packet::eth(NEAREST_BRIDGE, STATION_MAC, 0x8940, &pdu)
}

const NEAREST_BRIDGE: [u8; 6] = [0x01, 0x80, 0xc2, 0, 0, 0];

/// A TLV header: 7-bit type, 9-bit length.
fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut t = ((u16::from(kind) << 9) | value.len() as u16)
        .to_be_bytes()
        .to_vec();
    t.extend_from_slice(value);
    t
}

/// Manager ID TLV, then an Assoc TLV for VSI `n` with filter format `fif`, `count` and
/// `entries` as given (GroupID/MAC/VID entries are 12 bytes each).
fn assoc(n: u8, fif: u8, count: u16, entries: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 0, 1, 1, 5];
    v.extend_from_slice(&[n; 16]);
    v.push(fif);
    v.extend_from_slice(&count.to_be_bytes());
    v.extend_from_slice(entries);
    [tlv(5, b"fuzzfuzzfuzzfuzz"), tlv(3, &v)].concat()
}

fn entry(vni: u32, n: u8) -> Vec<u8> {
    [vni.to_be_bytes().to_vec(), vec![2, 0, 0, 0, 0x30, n, 0, 0]].concat()
}

#[test]
fn vdp_malformed_and_flooding_stations_are_counted_and_change_nothing() {
    let rig = rig("vdpm");
    let v = vsi(9, VNI);
    assigned(&rig, &v);
    let before = rig.nve.vnics().unwrap();
    let leak = Capture::start(
        &rig.vm2.ns,
        "eth0",
        "ether proto 0x8940 or ether proto 0x88cc",
    )
    .unwrap();
    let good = assoc(0x40, 4, 1, &entry(VNI, 1));
    let mut frames = vec![
        // Dropped, counted as malformed: ECP header cut short, ECP version 2, no Manager
        // ID first, a TLV running past the frame, a second Manager ID, an unknown type.
        packet::eth(NEAREST_BRIDGE, STATION_MAC, 0x8940, &[0x10, 0x01]),
        packet::eth(NEAREST_BRIDGE, STATION_MAC, 0x8940, &[0x20, 0x01, 0xf0, 1]),
        ecp(0xf002, &good[18..]),
        ecp(0xf003, &good[..good.len() - 4]),
        ecp(0xf004, &[&good[..18], &good[..]].concat()),
        ecp(0xf005, &[&good[..18], &tlv(6, &[0; 4])[..]].concat()),
        // Answered with status 1 (invalid format): filter format 9, a count that is not
        // the entries'.
        ecp(0xf006, &assoc(0x41, 9, 1, &entry(VNI, 2))),
        ecp(0xf007, &assoc(0x42, 4, 2, &entry(VNI, 3))),
        // LLDP cut short.
        packet::eth(NEAREST_BRIDGE, STATION_MAC, 0x88cc, &[0x02, 0x07, 0x04]),
    ];
    // A flood: 2,000 requests at once for VSIs of a VNI nobody serves (status 5 each).
    frames.extend(
        (0..2_000u16).map(|i| ecp(0xf100 + i, &assoc(i as u8, 4, 1, &entry(4242, i as u8)))),
    );
    send_frames(&rig.st, "vst0", &frames).unwrap();
    wait_until("the flood answered", || {
        let c = rig.status().unwrap().session.unwrap().counters;
        c.vsi_refused + c.kernel_drops >= 2_002
    });
    let c = rig.status().unwrap().session.unwrap().counters;
    assert!(c.malformed >= 6, "{c:?}");
    assert!(c.lldp_malformed >= 1, "{c:?}");
    // What the socket's buffer held was answered (status 5), the rest counted as dropped.
    assert!(c.vsi_refused >= 2 + 100 && c.kernel_drops > 0, "{c:?}");
    assert_eq!(rig.nve.vnics().unwrap(), before, "state unchanged");
    // Still serving: a real station's request goes through, and none of it leaked into
    // the VN.
    assigned(&rig, &vsi(10, VNI));
    assert_eq!(
        leak.finish_field("eth", "eth.type").unwrap(),
        Vec::<String>::new()
    );
}
