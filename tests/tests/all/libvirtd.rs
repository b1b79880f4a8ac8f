//! libvirt itself drives nve: a private libvirtd in h1 with nve's hook (contrib/libvirt/qemu,
//! unchanged) as its qemu hook starts a TCG domain with `<interface type='ethernet'>` (tap
//! `target dev`, `<alias name='ua-nve-blue'/>`) booting the test guest. `virsh start` runs
//! the hook at prepare (pre-associate, before the tap exists) and started (associate); the
//! guest pings vm2 behind the kernel's vxlan on h2. `virsh destroy` runs it at stopped and
//! release: nothing is left in nve. A domain in a VN nve does not serve does not start, and
//! virsh says why in nve's words.
use std::time::Duration;

use nve_tests::{
    libvirt::{Domain, Libvirtd},
    overlay::{self, H1_VTEP, H2_VTEP, TwoHosts, VM2_IP, VM2_MAC},
    rig::{Daemon, require_root, wait_until},
};
use nve_user::vnic::VnicState;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x4e, 0x56, 0x05];
const GUEST_IP: &str = "192.168.10.5";
const UUID: &str = "6f1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a05";
const TAP: &str = "lvtap0";
const BOOT: Duration = Duration::from_secs(90);

fn domain(rig: &TwoHosts, name: &str, uuid: &str, vn: &str) -> Domain {
    Domain {
        name: name.to_string(),
        uuid: uuid.to_string(),
        mac: GUEST_MAC,
        tap: TAP.to_string(),
        vn: vn.to_string(),
        ip: format!("{GUEST_IP}/24"),
        ping: Some(VM2_IP.to_string()),
        serial: format!("/tmp/{}-{name}.serial", rig.h1.name).into(),
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
    let _serial = nve_tests::rig::TempFile(guest.serial.clone());
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
    let _stray_serial = nve_tests::rig::TempFile(stray.serial.clone());
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
