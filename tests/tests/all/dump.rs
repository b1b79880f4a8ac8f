//! `nve dump MAP` decodes the pinned maps into named fields (the maps carry no key/value
//! BTF, so bpftool shows bytes): the FDB it reads is the daemon's (`nve fdb`), entry for
//! entry, local ports by ifindex and remote MACs by VTEP; the VN's flood list, the next hop
//! the daemon resolved and the instance's settings are there too. It reads the pins
//! themselves, so it still works once the daemon has stopped and left the dataplane.
use std::process::{Command, Output};

use nve_tests::{
    overlay::{self, H1_VTEP, H2_VTEP, Side, TwoHosts, VM1_MAC, VM2_MAC, VNI},
    rig::{Daemon, mac_str, nve_bin, require_root},
};
use nve_user::api::FdbTarget;
use serde_json::Value;

fn dump(instance: &str, args: &[&str]) -> Output {
    Command::new(nve_bin())
        .args(["--instance", instance, "dump"])
        .args(args)
        .output()
        .unwrap()
}

fn dump_json(d: &Daemon, map: &str) -> Vec<Value> {
    let out = dump(&d.instance, &[map, "--json"]);
    assert!(
        out.status.success(),
        "nve dump {map}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ifindex(rig: &TwoHosts, dev: &str) -> u64 {
    let out = rig.h1.ip(&["-j", "link", "show", dev]).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0]["ifindex"].as_u64().unwrap()
}

#[test]
fn dump_decodes_the_pinned_maps() {
    require_root();
    let rig = TwoHosts::new("dm").unwrap();
    overlay::kernel_vxlan(&rig.h2, H2_VTEP, H1_VTEP, "vm2p", &[VM1_MAC]).unwrap();
    let mut d = overlay::nve(&rig, Side::H1, "dm", &[]).unwrap();
    rig.vm1.ping_until_reachable(overlay::VM2_IP, 5).unwrap();

    // The FDB, as the daemon says it is and as the map holds it.
    let fdb = dump_json(&d, "fdb");
    let api = d.fdb().unwrap();
    assert_eq!(fdb.len(), api.len(), "map {fdb:?}\napi {api:?}");
    for e in &api {
        let entry = fdb
            .iter()
            .find(|m| m["key"]["mac"] == e.mac.to_string() && m["key"]["vni"] == e.vni)
            .unwrap_or_else(|| panic!("{e:?} not in the map: {fdb:?}"));
        match &e.target {
            FdbTarget::Vtep { vtep } => {
                assert_eq!(entry["value"]["kind"], "remote", "{entry}");
                assert_eq!(entry["value"]["vtep"], vtep.to_string(), "{entry}");
            }
            FdbTarget::Port { port, vid } => {
                assert_eq!(entry["value"]["kind"], "local", "{entry}");
                assert_eq!(entry["value"]["port"]["ifindex"], ifindex(&rig, port));
                assert_eq!(entry["value"]["port"]["vid"], *vid);
            }
        }
    }
    assert!(api.iter().any(|e| e.mac.0 == VM2_MAC), "{api:?}");

    let vns = dump_json(&d, "NVE_VNS");
    assert_eq!(vns.len(), 1, "{vns:?}");
    assert_eq!(vns[0]["key"], VNI);
    assert_eq!(vns[0]["value"]["remotes"], serde_json::json!([H2_VTEP]));
    assert_eq!(
        vns[0]["value"]["ports"][0]["ifindex"],
        ifindex(&rig, "vm1p")
    );
    let h2_ul_mac: Value =
        serde_json::from_str(&rig.h2.ip(&["-j", "link", "show", "ul"]).unwrap()).unwrap();
    let hops = dump_json(&d, "nexthops");
    assert_eq!(hops.len(), 1, "{hops:?}");
    assert_eq!(hops[0]["key"], H2_VTEP);
    assert_eq!(hops[0]["value"]["dmac"], h2_ul_mac[0]["address"]);
    let config = dump_json(&d, "config");
    assert_eq!(config[0]["value"]["vtep_ipv4"], H1_VTEP);
    assert_eq!(config[0]["value"]["underlay_ifindex"], ifindex(&rig, "ul"));

    // The table: one entry a line, named fields.
    let out = dump(&d.instance, &["fdb"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&format!("mac={}", mac_str(VM2_MAC)))
                && l.contains(&format!("vtep={H2_VTEP}"))
                && l.contains("kind=remote")),
        "{table}"
    );

    // The daemon stops and leaves the dataplane forwarding (SIGKILL): dump still reads it.
    d.kill();
    assert_eq!(dump_json(&d, "fdb").len(), api.len());
    d.teardown().unwrap();

    // What there is no such map or instance for says so.
    let out = dump(&d.instance, &["fdb"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("NVE_FDB") && err.contains(&d.instance),
        "{err}"
    );
    let out = dump(&d.instance, &["stats"]);
    assert!(!out.status.success(), "an unknown map was dumped");
}
