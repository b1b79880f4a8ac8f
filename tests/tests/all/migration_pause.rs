//! A migration whose source pauses toward the destination (`nve vm pause --migrating-out`;
//! 0.0.0.0: wherever the NVA says the vNIC is expected) at the instant the VM stops, under a stream from h3 (see `nve_tests::pause_stream`). The
//! rig's VM "stops" when its link goes down on h1; its new incarnation on h2 has its port
//! open (link up, as QEMU's `-incoming` has its tap) but has not spoken yet, so h2's vNIC
//! is only pre-associated (migrating in) until the RARP.
use std::{thread, time::Duration};

use nve_tests::{
    overlay::{self, H1_VTEP, H2_VTEP, VM1_IP, VM1_MAC, VM2_MAC, VN, VNI},
    packet,
    pause_stream::Stream,
    rig::{Daemon, Netns, lone_host, mac_str, require_root, send_frames},
    tap::open_tap,
    three_hosts::MigrationRig,
};
use nve_user::{api::Migration, vnic::VnicState};

const VMX: &str = "00000000-0000-4000-8000-0000000000c1";
const VM3: &str = "00000000-0000-4000-8000-0000000000c3";
const RATE: u32 = 2_000;

/// `d`'s one vNIC of the migrating VM: its state and migration hint.
fn vnic(d: &Daemon) -> (VnicState, Migration) {
    let vnics = d.vnics().unwrap();
    let v = vnics.iter().find(|v| v.vm == VMX).expect("the VM's vNIC");
    (v.state, v.migration)
}

#[test]
fn a_paused_vm_s_frames_wait_at_the_destination_and_none_is_lost() {
    require_root();
    let r = MigrationRig::new("mp", VMX, VM3).unwrap();
    r.pre_associate_on_h2().unwrap();
    r.new.ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    let decapsulated = || r.d2.counter("underlay_rx", "DECAPSULATED").unwrap();
    let stream = Stream::start(&r, RATE, 3);
    thread::sleep(Duration::from_secs(1));
    // The VM stops on h1; the hypervisor signals the pause with its destination.
    r.rig.vm1.ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    let (before, decap_before) = (stream.sent(), decapsulated());
    let flooded = || r.d3.counter("vm_egress", "FLOODED").unwrap();
    let flooded_before = flooded();
    // Toward "where it is expected": h2's pre-association, as the NVA (etcd) told h1.
    r.d1.nve(&["vm", "pause", "--vm", VMX, "--migrating-out", "0.0.0.0"])
        .unwrap();
    let paused_at = stream.sent();
    assert_eq!(
        vnic(&r.d1),
        (
            VnicState::Inactive,
            Migration::MigratingOut(H2_VTEP.parse().unwrap())
        )
    );
    thread::sleep(Duration::from_millis(300));
    // Before activation: what h1 got since went on to h2, into the new VM's port.
    let arrived = stream.at_destination_count();
    let decap = decapsulated() - decap_before;
    // h1 keeps the VM's MAC published while paused toward h2: h3 goes on unicasting to h1
    // (whose pointer sends it on) rather than flooding it to h2 as well (twice delivered).
    assert_eq!(flooded(), flooded_before, "h3 flooded the VM's unicast");
    assert!(
        decap as usize <= arrived + 60,
        "h2 decapsulated {decap} for {arrived} datagrams: duplicates"
    );
    assert_eq!(
        vnic(&r.d2),
        (
            VnicState::PreAssociated,
            Migration::MigratingIn(H1_VTEP.parse().unwrap())
        ),
        "h2's vNIC was activated before the VM spoke"
    );
    println!(
        "paused at seq {paused_at} ({} sent between link down and the pause); before \
         activation h2 decapsulated {decap} and the new VM received {arrived}",
        paused_at - before
    );
    assert!(
        arrived > 0,
        "nothing reached the destination before activation"
    );
    assert!(
        decap as usize >= arrived,
        "h2 decapsulated {decap} < {arrived}"
    );
    // The VM resumes on h2: its RARP activates it; the source disassociates (the pause
    // gave the destination, so the pointer stays for its hold time).
    send_frames(&r.new.ns, "eth0", &[packet::rarp(VM1_MAC)]).unwrap();
    r.d1.nve(&["vm", "disassociate", "--vm", VMX]).unwrap();
    let fdb = r.d1.fdb().unwrap();
    let pointer = fdb
        .iter()
        .find(|e| e.mac.0 == VM1_MAC && e.moved_until.is_some());
    assert!(pointer.is_some(), "no forwarding pointer on h1: {fdb:?}");
    let lost = stream.finish(paused_at).unwrap();
    assert!(lost.is_empty(), "lost after the pause: {lost:?}");
    assert!(r.d1.counter("underlay_rx", "FORWARDED_TO_VTEP").unwrap() > 0);
}

#[test]
fn an_aborted_migration_resumes_at_the_source_and_loses_nothing_after() {
    require_root();
    let r = MigrationRig::new("mpa", VMX, VM3).unwrap();
    r.pre_associate_on_h2().unwrap();
    let forwarded = || r.d1.counter("underlay_rx", "FORWARDED_TO_VTEP").unwrap();
    let stream = Stream::start(&r, RATE, 3);
    thread::sleep(Duration::from_secs(1));
    r.rig.vm1.ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    let out = ["--migrating-out", H2_VTEP];
    r.d1.nve(&["vm", "pause", "--vm", VMX, out[0], out[1]])
        .unwrap();
    let forwarded_at_pause = forwarded();
    thread::sleep(Duration::from_millis(200));
    assert!(
        forwarded() > forwarded_at_pause,
        "nothing went to h2 while paused"
    );
    // The destination never resumes: the source VM runs again, and is resumed.
    r.rig.vm1.ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    r.d1.nve(&["vm", "resume", "--vm", VMX]).unwrap();
    let resumed_at = stream.sent();
    assert_eq!(vnic(&r.d1), (VnicState::Associated, Migration::None));
    thread::sleep(Duration::from_millis(200));
    let at_source = stream.at_source_from(resumed_at);
    r.d2.nve(&["vm", "disassociate", "--vm", VMX]).unwrap();
    let lost = stream.finish(resumed_at).unwrap();
    println!("resumed at seq {resumed_at}; at the source after: {at_source}; lost after: {lost:?}");
    assert!(at_source > 0, "the source received nothing after resume");
    assert!(lost.is_empty(), "lost after resume: {lost:?}");
}

/// `ip`'s transmit queue length of `dev` in `ns`.
fn txqueuelen(ns: &Netns, dev: &str) -> u64 {
    let out = ns.ip(&["-j", "link", "show", dev]).unwrap();
    let links: serde_json::Value = serde_json::from_str(&out).unwrap();
    links[0]["txqlen"].as_u64().expect("txqlen")
}

#[test]
fn a_tap_migrating_in_gets_a_queue_for_the_pause() {
    require_root();
    let host = lone_host("mpq", &format!("{H2_VTEP}/24")).unwrap();
    // Both taps open and unread, as QEMU's with `-incoming` are.
    let _arriving = open_tap(&host, "tapin").unwrap();
    let _plain = open_tap(&host, "tapplain").unwrap();
    let d = Daemon::start(&host, "mpq", H2_VTEP, "ul", &[]).unwrap();
    d.nve(&["vn", "add", VN, "--vni", &VNI.to_string()])
        .unwrap();
    let arriving = (VM1_MAC, VM1_IP);
    overlay::pre_associate_arriving(&d, VMX, "tapin", arriving, H1_VTEP).unwrap();
    let plain = [
        "--vm",
        VM3,
        "--vn",
        VN,
        "--port",
        "tapplain",
        "--mac",
        &mac_str(VM2_MAC),
    ];
    d.nve(&[&["vm", "pre-associate"], &plain[..]].concat())
        .unwrap();
    assert_eq!(txqueuelen(&host, "tapin"), 10_000);
    assert_eq!(
        txqueuelen(&host, "tapplain"),
        1_000,
        "a tap not migrating in is left alone"
    );
}
