//! The embedded NVA: two NVEs, no etcd, one static peers file naming both hosts (each
//! leaves itself out). Unknown unicast does not flood, so the VMs talk only because each
//! NVE installed the other's MAC and address from the file; the file changes, the NVEs
//! follow; a broken file is refused with its reason in `nve status` and the last good one
//! stays in force.
use std::{fs, path::PathBuf};

use nve_tests::{
    overlay::{self, H1_VTEP, H2_VTEP, TwoHosts, VM1_IP, VM1_MAC, VM2_IP, VM2_MAC, VNI},
    rig::{Daemon, mac_str, require_root, wait_until},
};
use nve_user::api::NvaStatus;

/// The peers file: both hosts, each with its VM unless left out.
fn peers(with_vm2: bool) -> String {
    let vm = |mac, ip| serde_json::json!([{"vni": VNI, "mac": mac_str(mac), "ips": [ip]}]);
    let vm2 = if with_vm2 {
        vm(VM2_MAC, VM2_IP)
    } else {
        serde_json::json!([])
    };
    serde_json::json!({"peers": [
        {"vtep": H1_VTEP, "vnis": [VNI], "macs": vm(VM1_MAC, VM1_IP)},
        {"vtep": H2_VTEP, "vnis": [VNI], "macs": vm2},
    ]})
    .to_string()
}

/// Whether `d` has `mac` from the NVA (here: the file).
fn fdb_has(d: &Daemon, mac: [u8; 6]) -> bool {
    d.fdb_of(mac).unwrap().iter().any(|e| e.from_nva)
}

fn nva_status(d: &Daemon) -> Option<NvaStatus> {
    d.status().unwrap().nva
}

/// Removed on drop, also when the test fails.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[test]
fn a_static_peers_file_connects_nves_without_etcd() {
    require_root();
    let rig = TwoHosts::new("pf").unwrap();
    let file = TempFile(PathBuf::from(format!(
        "/tmp/nve-peers-{}.json",
        std::process::id()
    )));
    fs::write(&file.0, peers(true)).unwrap();
    let path = file.0.to_str().unwrap();
    let d1 = Daemon::start(&rig.h1, "pf1", H1_VTEP, "ul", &["--peers", path]).unwrap();
    let d2 = Daemon::start(&rig.h2, "pf2", H2_VTEP, "ul", &["--peers", path]).unwrap();
    for d in [&d1, &d2] {
        overlay::add_vn(d, false).unwrap();
    }
    overlay::associate(
        &d1,
        "00000000-0000-4000-8000-0000000000e1",
        "vm1p",
        VM1_MAC,
        Some(VM1_IP),
    )
    .unwrap();
    overlay::associate(
        &d2,
        "00000000-0000-4000-8000-0000000000e2",
        "vm2p",
        VM2_MAC,
        Some(VM2_IP),
    )
    .unwrap();
    wait_until("both NVEs installed the other's VM", || {
        fdb_has(&d1, VM2_MAC) && fdb_has(&d2, VM1_MAC)
    });
    assert!(
        !fdb_has(&d1, VM1_MAC),
        "h1 installed its own VM from the file"
    );
    rig.vm1.ping_until_reachable(VM2_IP, 5).unwrap();
    let status = nva_status(&d1).expect("an NVA status");
    assert_eq!(status.endpoint, format!("file:{path}"), "{status:?}");
    assert!(status.connected, "{status:?}");
    assert_eq!(status.entries, 1, "{status:?}");

    // A broken file: refused, the reason shown, forwarding goes on with the last good one.
    fs::write(
        &file.0,
        "{\"peers\": [{\"vtep\": \"10.0.0.2\", \"vni\": [100]}]}",
    )
    .unwrap();
    wait_until("the broken file is refused", || {
        nva_status(&d1).is_some_and(|s| !s.connected)
    });
    let error = nva_status(&d1)
        .and_then(|s| s.last_error)
        .unwrap_or_default();
    assert!(error.contains("unknown field `vni`"), "{error}");
    assert!(fdb_has(&d1, VM2_MAC));
    rig.vm1
        .ping(VM2_IP, 2)
        .expect("forwarding with the last good file");

    // vm2 leaves the file: both NVEs withdraw it (h2 still floods to h1 as a member).
    fs::write(&file.0, peers(false)).unwrap();
    wait_until("h1 withdrew vm2", || !fdb_has(&d1, VM2_MAC));
    assert!(nva_status(&d1).is_some_and(|s| s.connected));
    assert!(
        rig.vm1
            .ns
            .exec(&["ping", "-c", "2", "-W", "1", VM2_IP])
            .is_err(),
        "vm1 reached vm2 with unknown unicast off and vm2 unknown"
    );
}
