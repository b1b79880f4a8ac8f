//! libvirt's qemu hook convention through the real hook script (contrib/libvirt/qemu) and
//! the real daemon: prepare pre-associates before the tap exists, started associates and the
//! guest talks, stopped/release disassociate; an unknown VN fails the hook so libvirt aborts.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use nve_tests::{
    overlay::{self, H1_VTEP, H2_VTEP, TwoHosts, VM2_IP, VM2_MAC},
    rig::{Daemon, Vm, nve_bin, require_root},
};
use nve_user::vnic::VnicState;

const GUEST_MAC: [u8; 6] = [2, 0, 0, 0, 5, 1];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs the hook script as libvirt does: `qemu DOMAIN OP SUB EXTRA`, XML on stdin.
fn hook(d: &Daemon, xml: &str, op: &str, sub: &str) -> Output {
    let bin_dir = nve_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new(root().join("contrib/libvirt/qemu"))
        .args(["vm1", op, sub, "-"])
        .env("PATH", path)
        .env("NVE_SOCKET", &d.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(xml.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn states(d: &Daemon) -> Vec<(String, VnicState)> {
    d.vnics()
        .unwrap()
        .iter()
        .map(|n| (format!("{}/{}", n.vm, n.index), n.state))
        .collect()
}

#[test]
fn libvirt_hook_drives_the_vnic() {
    require_root();
    let xml = std::fs::read_to_string(root().join("tests/data/domain-vm1.xml")).unwrap();
    let rig = TwoHosts::new("lv").unwrap();
    overlay::kernel_vxlan(&rig.h2, H2_VTEP, H1_VTEP, "vm2p", &[GUEST_MAC]).unwrap();
    let d = Daemon::start(&rig.h1, "lv", H1_VTEP, "ul", &[]).unwrap();
    overlay::serve_vn(&d, H2_VTEP, VM2_MAC).unwrap();
    let vnic = "6f1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b/0".to_string();

    // prepare: before libvirt creates the tap.
    let out = hook(&d, &xml, "prepare", "begin");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(states(&d), [(vnic.clone(), VnicState::PreAssociated)]);
    // Operations nve does not act on change nothing.
    assert!(hook(&d, &xml, "start", "begin").status.success());
    // libvirt creates the tap (here: the host end of the guest's veth), then "started".
    let guest = Vm::new("lv-guest", &rig.h1, "vnet0", GUEST_MAC, "192.168.10.5").unwrap();
    let out = hook(&d, &xml, "started", "begin");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(states(&d), [(vnic.clone(), VnicState::Associated)]);
    guest
        .ping_until_reachable(VM2_IP, 5)
        .expect("guest behind the hook's vNIC cannot reach the remote VM");
    // reconnect (libvirtd restarted) is idempotent.
    assert!(hook(&d, &xml, "reconnect", "begin").status.success());
    assert_eq!(states(&d).len(), 1);

    // stopped, then release: disassociated, idempotently.
    assert!(hook(&d, &xml, "stopped", "end").status.success());
    assert!(states(&d).is_empty());
    assert!(hook(&d, &xml, "release", "end").status.success());
    assert!(
        guest
            .ns
            .exec(&["ping", "-c", "1", "-W", "1", VM2_IP])
            .is_err(),
        "stopped VM still forwarded"
    );

    // An unknown VN fails the hook (libvirt then aborts the start) and leaves nothing.
    let bad = std::fs::read_to_string(root().join("tests/data/domain-unknown-vn.xml")).unwrap();
    let out = hook(&d, &bad, "prepare", "begin");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("E_UNKNOWN_VN"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = hook(&d, "<domain><name>broken", "prepare", "begin");
    assert!(!out.status.success(), "malformed XML accepted");
    assert!(states(&d).is_empty());
}
