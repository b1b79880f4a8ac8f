//! The daemon's config file (`/etc/nve/<instance>.toml`, or `--config` / NVE_CONFIG):
//! it drives a daemon whose command line names nothing else, flags override it, an
//! unknown key is refused with its line, SIGHUP and `nve reload` create the VNs added to
//! it and name the changed keys that need a restart.
use std::path::Path;

use nve_tests::{
    overlay::{self, H1_VTEP, H2_VTEP, TwoHosts, VM1_MAC, VM2_IP, VM2_MAC, VN, VNI},
    rig::{Daemon, Netns, TempFile, lone_host, mac_str, nve_bin, require_root, wait_until},
};
use nve_user::api::{ReloadView, VnView};

/// h1's settings, and VN blue serving vm1 with vm2 behind h2.
fn h1_config() -> String {
    format!(
        r#"vtep = "{H1_VTEP}"
underlay = "ul"
teardown_on_exit = true

[[vns]]
name = "{VN}"
vni = {VNI}
ports = [{{ port = "vm1p", macs = ["{vm1}"] }}]
remote = [{{ mac = "{vm2}", vtep = "{H2_VTEP}" }}]
flood = ["{H2_VTEP}"]
"#,
        vm1 = mac_str(VM1_MAC),
        vm2 = mac_str(VM2_MAC),
    )
}

/// The VM port the file attaches: a VN is created only with its ports.
fn vm_port(host: &Netns) {
    host.ip(&[
        "link", "add", "vm1p", "type", "veth", "peer", "name", "vm1x",
    ])
    .unwrap();
}

fn config_path(host: &Netns) -> String {
    format!("/tmp/{}-nve.toml", host.name)
}

fn vns(d: &Daemon) -> Vec<VnView> {
    serde_json::from_str(&d.nve(&["vn", "list", "--json"]).unwrap()).unwrap()
}

fn vn_names(d: &Daemon) -> Vec<String> {
    vns(d).into_iter().map(|v| v.name).collect()
}

/// `nve daemon --check-config ...`: (success, stdout + stderr).
fn check_config(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(nve_bin())
        .args(["daemon", "--check-config"])
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_config_file_alone_drives_the_daemon() {
    require_root();
    let rig = TwoHosts::new("cfgrun").unwrap();
    overlay::kernel_vxlan(&rig.h2, H2_VTEP, H1_VTEP, "vm2p", &[VM1_MAC]).unwrap();
    let file = TempFile::write(config_path(&rig.h1), &h1_config()).unwrap();
    // Only the instance on the command line; the file named by NVE_CONFIG.
    let mut d = Daemon::start_in(&rig.h1, "cfgrun", &[], &[("NVE_CONFIG", file.path())]).unwrap();
    let status = d.status().unwrap();
    assert_eq!(status.vtep.to_string(), H1_VTEP);
    assert_eq!(status.underlay, "ul");
    assert_eq!(vn_names(&d), [VN]);
    d.wait_next_hop(H2_VTEP).unwrap();
    rig.vm1.ping_until_reachable(VM2_IP, 5).unwrap();
    rig.vm1
        .ping(VM2_IP, 3)
        .expect("vm1 -> vm2 through a VN from the file");

    // Read again at the next start: the VN is there already and stays as it is; a VN made
    // by the API, which the file does not list, is kept.
    d.nve(&["vn", "add", "red", "--vni", "300"]).unwrap();
    d.terminate().unwrap();
    d.respawn().unwrap();
    assert_eq!(vn_names(&d), [VN, "red"]);
    rig.vm1.ping(VM2_IP, 3).expect("after the restart");
    assert!(!d.log_text().contains("not created"), "{}", d.log_text());
}

#[test]
fn an_unknown_key_is_refused_naming_it_and_its_line() {
    require_root();
    let host = Netns::new("cfgbad").unwrap();
    let text = h1_config().replace("flood = [", "flod = [");
    let line = text.lines().position(|l| l.starts_with("flod")).unwrap() + 1;
    let file = TempFile::write(config_path(&host), &text).unwrap();
    let (ok, out) = check_config(&[file.path()]);
    assert!(!ok, "--check-config accepted an unknown key:\n{out}");
    assert!(
        out.contains("unknown field `flod`") && out.contains(&format!("line {line}")),
        "--check-config did not name the key and line {line}:\n{out}"
    );
    let err = Daemon::start_in(&host, "cfgbad", &["--config", file.path()], &[])
        .err()
        .expect("the daemon started with an unknown key in its config file");
    assert!(
        format!("{err:#}").contains("unknown field `flod`"),
        "{err:#}"
    );

    // JSON (the older --config) alike, and a file that is fine passes.
    let json = TempFile::write(
        format!("/tmp/{}-nve.json", host.name),
        "{\"vtep\": \"10.0.0.1\",\n \"underlay\": \"ul\",\n \"vns\": [{\"name\": \"blue\", \"vni\": 100, \"flod\": []}]}",
    )
    .unwrap();
    let (ok, out) = check_config(&[json.path()]);
    assert!(
        !ok && out.contains("`flod`") && out.contains("line 3"),
        "{out}"
    );
    let good = TempFile::write(config_path(&host), &h1_config()).unwrap();
    let (ok, out) = check_config(&[good.path()]);
    assert!(ok && out.contains(": ok"), "{out}");
}

#[test]
fn the_example_config_passes_check_config() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/nve.toml");
    let (ok, out) = check_config(&[example.to_str().unwrap()]);
    assert!(ok, "contrib/nve.toml: {out}");
}

#[test]
fn flags_override_the_file() {
    require_root();
    let host = lone_host("cfgflag", "10.0.0.1/24").unwrap();
    vm_port(&host);
    let text = h1_config()
        .replace("underlay = \"ul\"", "underlay = \"nosuch0\"")
        .replace(H1_VTEP, "10.0.0.9");
    let file = TempFile::write(config_path(&host), &text).unwrap();
    // The file alone names an interface that does not exist.
    let err = Daemon::start_in(&host, "cfgflag", &["--config", file.path()], &[])
        .err()
        .expect("started with underlay nosuch0");
    assert!(format!("{err:#}").contains("nosuch0"), "{err:#}");
    let d = Daemon::start_in(
        &host,
        "cfgflag",
        &[
            "--config",
            file.path(),
            "--underlay",
            "ul",
            "--vtep",
            "10.0.0.1",
        ],
        &[],
    )
    .unwrap();
    let status = d.status().unwrap();
    assert_eq!(status.underlay, "ul");
    assert_eq!(status.vtep.to_string(), "10.0.0.1");
    assert_eq!(vn_names(&d), [VN], "the file's VNs, under the flags");
}

#[test]
fn sighup_creates_added_vns_and_names_the_keys_that_need_a_restart() {
    require_root();
    let host = lone_host("cfghup", "10.0.0.1/24").unwrap();
    vm_port(&host);
    let file = TempFile::write(config_path(&host), &h1_config()).unwrap();
    let d = Daemon::start_in(&host, "cfghup", &["--config", file.path()], &[]).unwrap();
    assert_eq!(vn_names(&d), [VN]);
    d.nve(&["vn", "add", "red", "--vni", "300"]).unwrap();

    let edited = h1_config().replace(
        "teardown_on_exit = true",
        "teardown_on_exit = true\nttl = 32",
    ) + "\n[[vns]]\nname = \"green\"\nvni = 200\nflood_unknown = false\n"
        // Refused whole at a reload, as by the API: its port does not exist.
        + "\n[[vns]]\nname = \"orange\"\nvni = 400\nports = [{ port = \"nosuch9\" }]\n";
    std::fs::write(&file.0, &edited).unwrap();
    d.signal(libc::SIGHUP);
    wait_until("VN green created on SIGHUP", || {
        vn_names(&d).contains(&"green".to_string())
    });
    let green = vns(&d).into_iter().find(|v| v.name == "green").unwrap();
    assert_eq!(green.vni, 200);
    assert_eq!(vn_names(&d), [VN, "green", "red"], "red (the API's) kept");
    wait_until("the restart-needed key logged", || {
        d.log_text().contains("restart needed")
    });
    let log = d.log_text();
    let line = log.lines().find(|l| l.contains("restart needed")).unwrap();
    assert!(line.contains("ttl"), "{line}");

    // `nve reload` answers the same: nothing left to create, ttl needs a restart.
    let reply: ReloadView = serde_json::from_str(&d.nve(&["reload", "--json"]).unwrap()).unwrap();
    assert_eq!(reply.file.as_deref(), Some(file.path()));
    assert!(reply.created.is_empty(), "{reply:?}");
    assert!(
        reply.failed.len() == 1
            && reply.failed[0].starts_with("vn orange: ")
            && reply.failed[0].contains("nosuch9"),
        "{reply:?}"
    );
    assert_eq!(reply.restart_needed, ["ttl"]);
    assert_eq!(d.status().unwrap().vns, 3);
    // Once its port exists, the next reload creates it.
    host.ip(&[
        "link", "add", "nosuch9", "type", "veth", "peer", "name", "nosuch9x",
    ])
    .unwrap();
    let reply: ReloadView = serde_json::from_str(&d.nve(&["reload", "--json"]).unwrap()).unwrap();
    assert_eq!(reply.created, ["vn orange"], "{reply:?}");
    assert_eq!(vn_names(&d), [VN, "green", "orange", "red"]);

    // A broken file changes nothing and says why.
    std::fs::write(&file.0, edited.replace("vni = 200", "vni = \"x\"")).unwrap();
    let out = d.cli(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("E_FORMAT") && err.contains("line"),
        "{err}"
    );
    assert_eq!(vn_names(&d), [VN, "green", "orange", "red"]);
}
