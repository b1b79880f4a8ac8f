//! VDP (IEEE 802.1Qbg) against lldpad, the station, driven by its own vdptool: VSIs
//! associated with VNs by GroupID (the VNI) get VIDs nve assigns, their tagged frames reach
//! the VN's VMs behind the kernel's vxlan and the answers come back tagged the same; keep-
//! alives hold them, silence ends them with an unsolicited DeAssoc; refusals carry VDP's
//! status; lost ECP frames are retransmitted and delivered once.
use std::{net::Ipv4Addr, thread, time::Duration};

use nve_tests::{
    lldpad::{self, VdpError},
    overlay::VNI,
    rig::{require_root, wait_until},
    vdp_rig::{RED_VNI, VdpRig, vsi},
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
    let status = rig.status().unwrap();
    let counters = status.session.expect("a session").counters;
    assert!(
        counters.ecp_acked >= 3 && counters.vsi_refused == 0,
        "{counters:?}"
    );
    assert_eq!(status.vsis.len(), 1, "red's VSI only: {:?}", status.vsis);
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
