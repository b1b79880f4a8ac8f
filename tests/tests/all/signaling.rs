//! The VM lifecycle over the daemon's socket, with packets: pre-associate installs but does
//! not forward, associate forwards, pause/resume and disassociate stop it; repeats are
//! idempotent; conflicts get their codes; a port that appears later is bound then.
use nve_tests::{
    overlay::{self, H1_VTEP, H2_VTEP, TwoHosts, VM1_MAC, VM2_IP, VM2_MAC, VN},
    rig::{Daemon, Vm, mac_str, require_root},
};
use nve_user::{api::VnicView, vnic::VnicState};
use serde_json::{Value, json};

const VM_UUID: &str = "6f1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b";
const OTHER_UUID: &str = "00000000-0000-4000-8000-000000000002";
const LATE_UUID: &str = "00000000-0000-4000-8000-000000000003";
const VM3_MAC: [u8; 6] = [2, 0, 0, 0, 3, 1];

fn signal(d: &Daemon, vm: &str, body: Value) -> (u16, Value) {
    let (status, text) = d
        .http(
            "POST",
            &format!("/v1/vnics/{vm}/0"),
            body.to_string().as_bytes(),
        )
        .unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

fn vnics(d: &Daemon) -> Vec<VnicView> {
    d.vnics().unwrap()
}

fn reaches(vm: &Vm, ip: &str) -> bool {
    vm.ns
        .exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", ip])
        .is_ok()
}

#[test]
fn vm_lifecycle_drives_the_dataplane() {
    require_root();
    let rig = TwoHosts::new("sig").unwrap();
    overlay::kernel_vxlan(&rig.h2, H2_VTEP, H1_VTEP, "vm2p", &[VM1_MAC, VM3_MAC]).unwrap();
    let d = Daemon::start(&rig.h1, "sig", H1_VTEP, "ul", &[]).unwrap();
    overlay::serve_vn(&d, H2_VTEP, VM2_MAC).unwrap();
    let assoc = |op: &str| {
        vec![
            "vm",
            op,
            "--vm",
            VM_UUID,
            "--vn",
            VN,
            "--port",
            "vm1p",
            "--mac",
            &mac_str(VM1_MAC),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| d.nve(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // Pre-associated: installed, not forwarding.
    run(assoc("pre-associate")).unwrap();
    assert_eq!(vnics(&d)[0].state, VnicState::PreAssociated);
    assert!(
        !reaches(&rig.vm1, VM2_IP),
        "a pre-associated vNIC forwarded"
    );
    assert!(d.counter("vm_egress", "VNIC_INACTIVE").unwrap() > 0);

    // Associate: one flip, and the VM talks.
    run(assoc("associate")).unwrap();
    rig.vm1.ping_until_reachable(VM2_IP, 5).unwrap();
    rig.vm2
        .ping(overlay::VM1_IP, 2)
        .expect("remote -> associated vNIC");

    // Idempotent: the same associate again changes nothing.
    run(assoc("associate")).unwrap();
    assert_eq!(vnics(&d).len(), 1);
    assert_eq!(vnics(&d)[0].state, VnicState::Associated);

    // Other parameters need a higher request id.
    let other_mac =
        json!({"op": "associate", "vn": VN, "port": "vm1p", "macs": ["02:00:00:00:01:02"]});
    let (status, reply) = signal(&d, VM_UUID, other_mac.clone());
    assert_eq!(
        (status, reply["code"].as_str()),
        (409, Some("E_STATE")),
        "{reply}"
    );
    let mut update = other_mac;
    update["request_id"] = json!(5);
    update["macs"] = json!([mac_str(VM1_MAC), "02:00:00:00:01:02"]);
    let (status, reply) = signal(&d, VM_UUID, update);
    assert_eq!(
        (status, reply["code"].as_str()),
        (200, Some("OK")),
        "{reply}"
    );
    assert_eq!(reply["vnic"]["macs"].as_array().unwrap().len(), 2);

    // Conflicts and unknowns: specific codes, nothing changes.
    let before = vnics(&d);
    let cases = [
        (
            json!({"op": "associate", "vn": VN, "port": "vm1p", "macs": [mac_str(VM1_MAC)]}),
            OTHER_UUID,
            409,
            "E_MAC_CONFLICT",
        ),
        (
            json!({"op": "associate", "vn": "nosuch", "port": "x0", "macs": ["02:00:00:00:09:01"]}),
            OTHER_UUID,
            404,
            "E_UNKNOWN_VN",
        ),
        (
            json!({"op": "associate", "vn": VN, "port": "x0"}),
            OTHER_UUID,
            400,
            "E_FORMAT",
        ),
        (json!({"op": "pause"}), OTHER_UUID, 409, "E_STATE"),
        (
            json!({"op": "pre-associate", "vn": VN, "port": "vm1p", "macs": [mac_str(VM1_MAC), "02:00:00:00:01:02"], "request_id": 5}),
            VM_UUID,
            409,
            "E_STATE",
        ),
        (
            json!({"op": "associate", "vn": VN, "port": "vm1p", "macs": ["02:00:00:00:09:02"], "vid": 0}),
            OTHER_UUID,
            400,
            "E_FORMAT",
        ),
        (json!({"op": "teleport"}), OTHER_UUID, 400, "E_FORMAT"),
    ];
    for (body, vm, want_status, want_code) in cases {
        let (status, reply) = signal(&d, vm, body.clone());
        assert_eq!(
            (status, reply["code"].as_str()),
            (want_status, Some(want_code)),
            "{body}: {reply}"
        );
    }
    let (status, text) = d
        .http(
            "POST",
            "/v1/vnics/not-a-uuid/0",
            br#"{"op": "disassociate"}"#,
        )
        .unwrap();
    assert_eq!(status, 400, "{text}");
    assert_eq!(vnics(&d), before);

    // VIDs on one port: one VN per VID; "assign" picks a free one.
    d.nve(&["vn", "add", "red", "--vni", "200"]).unwrap();
    let (status, reply) = signal(
        &d,
        OTHER_UUID,
        json!({"op": "pre-associate", "vn": "red", "port": "vm1p", "macs": ["02:00:00:00:0a:01"], "vid": "assign"}),
    );
    assert_eq!(status, 200, "{reply}");
    let assigned = reply["vnic"]["vid"].as_u64().unwrap();
    assert!((1..=4094).contains(&assigned));
    d.nve(&["vn", "add", "green", "--vni", "300"]).unwrap();
    let (status, reply) = signal(
        &d,
        LATE_UUID,
        json!({"op": "pre-associate", "vn": "green", "port": "vm1p", "macs": ["02:00:00:00:0b:01"], "vid": assigned}),
    );
    assert_eq!(
        (status, reply["code"].as_str()),
        (409, Some("E_VID_CONFLICT")),
        "{reply}"
    );
    assert!(
        reply["message"].as_str().unwrap().contains("is free"),
        "{reply}"
    );
    d.nve(&["vm", "disassociate", "--vm", OTHER_UUID]).unwrap();

    // Pause stops forwarding, resume brings it back.
    d.nve(&["vm", "pause", "--vm", VM_UUID]).unwrap();
    assert!(!reaches(&rig.vm1, VM2_IP), "a paused vNIC forwarded");
    d.nve(&["vm", "resume", "--vm", VM_UUID]).unwrap();
    rig.vm1.ping_until_reachable(VM2_IP, 5).unwrap();

    // Disassociate removes it; a repeat is OK.
    d.nve(&["vm", "disassociate", "--vm", VM_UUID]).unwrap();
    d.nve(&["vm", "disassociate", "--vm", VM_UUID]).unwrap();
    assert!(vnics(&d).is_empty());
    assert!(!reaches(&rig.vm1, VM2_IP), "a disassociated vNIC forwarded");
    let fdb = d.nve(&["fdb", "--json"]).unwrap();
    assert!(
        !fdb.contains(&mac_str(VM1_MAC)),
        "FDB keeps a disassociated MAC: {fdb}"
    );

    // A port that does not exist yet is bound when it appears.
    d.nve(&[
        "vm",
        "associate",
        "--vm",
        LATE_UUID,
        "--vn",
        VN,
        "--port",
        "vm3p",
        "--mac",
        &mac_str(VM3_MAC),
    ])
    .unwrap();
    let vm3 = Vm::new("sig-vm3", &rig.h1, "vm3p", VM3_MAC, "192.168.10.3").unwrap();
    vm3.ping_until_reachable(VM2_IP, 10)
        .expect("a late port was not bound");
    assert!(vnics(&d)[0].port_present);
    drop(vm3);
    // It disappears (the kernel removes a deleted namespace's veth peer a little later):
    // the vNIC stays, not forwarding until the port is back.
    let gone = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        !vnics(&d)[0].port_present
    });
    assert!(
        gone,
        "port still present 5 s after its namespace was deleted"
    );
    assert_eq!(vnics(&d).len(), 1);

    // Soft state: a 2 s hold time, refreshed once by a keep-alive, then left to run out.
    let soft = "00000000-0000-4000-8000-000000000004";
    let (status, reply) = signal(
        &d,
        soft,
        json!({"op": "associate", "vn": VN, "port": "vm1p", "macs": ["02:00:00:00:0c:01"], "hold_time": 2}),
    );
    assert_eq!(status, 200, "{reply}");
    assert!(reply["vnic"]["expires_at"].is_u64(), "{reply}");
    std::thread::sleep(std::time::Duration::from_millis(1300));
    d.nve(&["vm", "keep-alive", "--vm", soft]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1300));
    assert_eq!(vnics(&d).len(), 2, "expired although refreshed");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(
        vnics(&d).len(),
        1,
        "a soft association outlived its hold time"
    );
    assert!(d.stop().unwrap().success());
}
