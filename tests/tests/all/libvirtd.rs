//! libvirt itself drives nve: a private libvirtd in h1 with nve's hook (contrib/libvirt/qemu,
//! unchanged) as its qemu hook starts a TCG domain with `<interface type='ethernet'>` (tap
//! `target dev`, `<alias name='ua-nve-blue'/>`) booting the test guest. `virsh start` runs
//! the hook at prepare (pre-associate, before the tap exists) and started (associate); the
//! guest pings vm2 behind the kernel's vxlan on h2. `virsh destroy` runs it at stopped and
//! release: nothing is left in nve. A domain in a VN nve does not serve does not start, and
//! virsh says why in nve's words. Two libvirtds live-migrate the guest under a ping stream
//! (`virsh migrate --live` over a unix socket), each hook driving its own NVE.
use std::time::Duration;

use nve_tests::{
    etcd::EtcdServer,
    libvirt::{Domain, Libvirtd, PingStream},
    overlay::{self, H1_VTEP, H2_VTEP, TwoHosts, VM2_IP, VM2_MAC},
    rig::{Daemon, TempFile, Vm, require_root, wait_until},
    three_hosts::{self, H3_VTEP, VM3_IP, VM3_MAC},
};
use nve_user::vnic::VnicState;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x4e, 0x56, 0x05];
const GUEST_IP: &str = "192.168.10.5";
const UUID: &str = "6f1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a05";
const TAP: &str = "lvtap0";
const BOOT: Duration = Duration::from_secs(90);

fn domain(rig: &TwoHosts, name: &str, uuid: &str, vn: &str) -> Domain {
    Domain {
        ping: Some(VM2_IP.to_string()),
        serial: format!("/tmp/{}-{name}.serial", rig.h1.name).into(),
        ..guest(name, uuid, vn)
    }
}

/// The test guest (`GUEST_MAC`, `GUEST_IP` on `TAP`) as domain `name` in VN `vn`.
fn guest(name: &str, uuid: &str, vn: &str) -> Domain {
    Domain {
        name: name.to_string(),
        uuid: uuid.to_string(),
        mac: GUEST_MAC,
        tap: TAP.to_string(),
        vn: vn.to_string(),
        ip: format!("{GUEST_IP}/24"),
        ping: None,
        serial: format!("/tmp/{name}.serial").into(),
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn virsh_start_and_destroy_drive_the_vnic_through_the_hook() {
    require_root();
    let rig = TwoHosts::new("lv").unwrap();
    overlay::kernel_vxlan(&rig.h2, H2_VTEP, H1_VTEP, "vm2p", &[GUEST_MAC]).unwrap();
    let d = Daemon::start(&rig.h1, "lv", H1_VTEP, "ul", &[]).unwrap();
    overlay::serve_vn(&d, H2_VTEP, VM2_MAC).unwrap();
    let libvirtd = Libvirtd::start(&rig.h1, "h1", 1, &d).unwrap();
    let guest = domain(&rig, "lv-guest", UUID, overlay::VN);
    let _serial = TempFile(guest.serial.clone());
    libvirtd.define(&guest).unwrap();

    // virsh start: prepare (pre-associate) then started (associate), both through the hook.
    let out = libvirtd.virsh(&["start", &guest.name]);
    assert!(
        out.status.success(),
        "virsh start: {}\n{}",
        stderr(&out),
        libvirtd.log()
    );
    let vnics = d.vnics().unwrap();
    assert_eq!(vnics.len(), 1, "{vnics:?}");
    let v = &vnics[0];
    assert_eq!(
        (
            v.vm.as_str(),
            v.index,
            v.state,
            v.vn.as_str(),
            v.port.as_str()
        ),
        (UUID, 0, VnicState::Associated, overlay::VN, TAP)
    );
    // What nve held after each hook call: pre-associated from prepare on, associated once
    // started.
    let calls = libvirtd.hook_calls().unwrap();
    let state_after = |op: &str, sub: &str| {
        let call = calls
            .iter()
            .find(|c| c.op == op && c.sub == sub)
            .unwrap_or_else(|| panic!("libvirt did not call the hook at {op} {sub}: {calls:?}"));
        call.vnics.iter().map(|v| v.state).collect::<Vec<_>>()
    };
    assert_eq!(state_after("prepare", "begin"), [VnicState::PreAssociated]);
    assert_eq!(state_after("start", "begin"), [VnicState::PreAssociated]);
    assert_eq!(state_after("started", "begin"), [VnicState::Associated]);
    // The guest boots and reaches vm2 across nve and the kernel's vxlan; vm2 reaches it back.
    let boot = guest
        .wait_console(&format!("NVE-GUEST-PING-OK {VM2_IP}"), BOOT)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", libvirtd.log()));
    rig.vm2.ping_until_reachable(GUEST_IP, 5).unwrap();
    println!(
        "libvirt guest: up and reached vm2 {:.1} s after virsh start",
        boot.as_secs_f64()
    );

    // virsh destroy: stopped and release disassociate; the tap is gone with QEMU.
    libvirtd.virsh_ok(&["destroy", &guest.name]).unwrap();
    assert_eq!(libvirtd.state(&guest.name).unwrap(), "shut off");
    assert!(d.vnics().unwrap().is_empty(), "{:?}", d.vnics().unwrap());
    let calls = libvirtd.hook_calls().unwrap();
    let stopped = calls
        .iter()
        .position(|c| (c.op.as_str(), c.sub.as_str()) == ("stopped", "end"));
    assert!(
        stopped.is_some_and(|i| calls[i].vnics.is_empty()),
        "no vNIC-free stopped end call: {calls:?}"
    );
    println!(
        "hook calls: {}",
        calls
            .iter()
            .map(|c| format!("{} {}", c.op, c.sub))
            .collect::<Vec<_>>()
            .join(", ")
    );
    wait_until("the tap is gone", || {
        rig.h1.ip(&["link", "show", TAP]).is_err()
    });
    assert!(
        rig.vm2.ping(GUEST_IP, 1).is_err(),
        "the destroyed guest still answers"
    );

    // A VN nve does not serve: the hook fails at prepare and libvirt does not start the domain;
    // virsh says what nve said.
    let stray = domain(
        &rig,
        "lv-stray",
        "6f1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a06",
        "nosuch",
    );
    let _stray_serial = TempFile(stray.serial.clone());
    libvirtd.define(&stray).unwrap();
    let out = libvirtd.virsh(&["start", &stray.name]);
    assert!(!out.status.success(), "a domain in an unknown VN started");
    let err = stderr(&out);
    assert!(
        err.contains("E_UNKNOWN_VN") && err.contains("nosuch"),
        "virsh start: {err}"
    );
    assert_eq!(libvirtd.state(&stray.name).unwrap(), "shut off");
    assert!(d.vnics().unwrap().is_empty(), "{:?}", d.vnics().unwrap());
    assert!(rig.h1.ip(&["link", "show", TAP]).is_err(), "a tap was left");
}

/// `virsh domjobinfo --completed`'s "Total downtime", ms.
fn downtime_ms(job: &str) -> Option<f64> {
    job.lines()
        .find_map(|l| l.strip_prefix("Total downtime:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The states nve held after each of `l`'s hook calls, as `op sub [states]`.
fn hook_trace(l: &Libvirtd) -> Vec<(String, Vec<VnicState>)> {
    l.hook_calls()
        .unwrap()
        .into_iter()
        .map(|c| {
            (
                format!("{} {}", c.op, c.sub),
                c.vnics.iter().map(|v| v.state).collect(),
            )
        })
        .collect()
}

/// Two libvirtds, in h1 and h2, each with nve's hook for its own NVE (three NVEs on etcd;
/// vm3 on h3 pings the guest 100 times a second throughout): `virsh migrate --live` over a
/// unix socket moves the guest from h1 to h2. On h2 libvirt calls the hook at migrate,
/// prepare, start and started, all before the guest's memory moves: the vNIC stays
/// pre-associated through them (associating at started would draw the guest's traffic to h2
/// while it still runs on h1) and QEMU's RARPs activate it once the guest runs there. h1's
/// stopped and release disassociate. The stream's longest silence is the migration's downtime
/// plus the time the NVA took to follow the RARP.
#[test]
fn virsh_migrate_live_moves_the_vnic_under_a_stream() {
    require_root();
    let (_fabric, h1, h2, h3) = three_hosts::underlay("lm").unwrap();
    let vm3 = Vm::new("lm-vm3", &h3, "vm3p", VM3_MAC, VM3_IP).unwrap();
    let etcd = EtcdServer::start(&h3, H3_VTEP).unwrap();
    let nva = ["--nva", etcd.url.as_str()];
    let d1 = Daemon::start(&h1, "lm1", H1_VTEP, "ul", &nva).unwrap();
    let d2 = Daemon::start(&h2, "lm2", H2_VTEP, "ul", &nva).unwrap();
    let d3 = Daemon::start(&h3, "lm3", H3_VTEP, "ul", &nva).unwrap();
    for d in [&d1, &d2, &d3] {
        d.nve(&["vn", "add", overlay::VN, "--vni", &overlay::VNI.to_string()])
            .unwrap();
    }
    let vm3_uuid = "00000000-0000-4000-8000-0000000000c3";
    overlay::associate(&d3, vm3_uuid, "vm3p", VM3_MAC, Some(VM3_IP)).unwrap();
    let src = Libvirtd::start(&h1, "h1", 1, &d1).unwrap();
    let dst = Libvirtd::start(&h2, "h2", 2, &d2).unwrap();
    let guest = Domain {
        ping: Some(VM3_IP.into()),
        serial: format!("/tmp/{}-lm-guest.serial", h1.name).into(),
        ..guest("lm-guest", UUID, overlay::VN)
    };
    let _serial = TempFile(guest.serial.clone());
    src.define(&guest).unwrap();
    src.virsh_ok(&["start", &guest.name]).unwrap();
    guest
        .wait_console(&format!("NVE-GUEST-PING-OK {VM3_IP}"), BOOT)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", src.log()));
    vm3.ping_until_reachable(GUEST_IP, 5).unwrap();

    let socket = TempFile(format!("/tmp/{}-migrate.sock", h2.name).into());
    let stream = PingStream::start(&vm3.ns, GUEST_IP).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let started = std::time::Instant::now();
    let out = src.virsh(&[
        "migrate",
        "--live",
        &guest.name,
        &dst.uri,
        "--migrateuri",
        &format!("unix://{}", socket.path()),
    ]);
    assert!(
        out.status.success(),
        "virsh migrate: {}\n{}\n{}",
        stderr(&out),
        src.log(),
        dst.log()
    );
    let migrate_s = started.elapsed().as_secs_f64();
    wait_until("h2's vNIC activated by the guest's announcements", || {
        d2.vnics()
            .unwrap()
            .iter()
            .any(|v| v.state == VnicState::Associated)
    });
    std::thread::sleep(Duration::from_secs(1));
    let ping = stream.finish().unwrap();
    let job = dst
        .virsh_ok(&["domjobinfo", "--completed", &guest.name])
        .unwrap();
    let downtime = downtime_ms(&job).unwrap_or_else(|| panic!("no downtime in {job}"));

    let (h1_calls, h2_calls) = (hook_trace(&src), hook_trace(&dst));
    println!(
        "virsh migrate --live: {migrate_s:.1} s, downtime {downtime} ms; ping stream: sent {}, \
         answered {}, longest silence {:.0} ms (after seq {}); hook calls on h1 {h1_calls:?}, \
         on h2 {h2_calls:?}",
        ping.sent, ping.received, ping.longest_gap_ms, ping.gap_between.0
    );
    let pre = vec![VnicState::PreAssociated];
    let at = |calls: &[(String, Vec<VnicState>)], call: &str| {
        calls
            .iter()
            .find(|c| c.0 == call)
            .map(|c| c.1.clone())
            .unwrap_or_else(|| panic!("no {call} call in {calls:?}"))
    };
    for call in [
        "migrate begin",
        "prepare begin",
        "start begin",
        "started begin",
    ] {
        assert_eq!(at(&h2_calls, call), pre, "h2 after {call}: {h2_calls:?}");
    }
    assert_eq!(at(&h1_calls, "stopped end"), vec![], "{h1_calls:?}");
    assert!(d1.vnics().unwrap().is_empty());
    assert_eq!(dst.state(&guest.name).unwrap(), "running");
    assert_eq!(src.state(&guest.name).unwrap(), "shut off");
    assert!(
        ping.received > 0 && ping.sent - ping.received <= 50,
        "{ping:?}"
    );
    assert!(
        ping.longest_gap_ms < downtime + 1000.0,
        "the guest was unreachable {:.0} ms, its downtime was {downtime} ms",
        ping.longest_gap_ms
    );
    vm3.ping_until_reachable(GUEST_IP, 5).unwrap();
}
