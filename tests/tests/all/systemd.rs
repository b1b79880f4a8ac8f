//! contrib/systemd/nve@.service: systemd's own analyzer accepts it (and
//! nve-libvirt-events@.service beside it), and the daemon started
//! as the unit starts it (only `--instance`, the settings from /etc/nve/<instance>.toml,
//! only the unit's capabilities, a notify socket in NOTIFY_SOCKET) says READY=1 once its
//! socket answers, RELOADING=1 and READY=1 around a SIGHUP, STOPPING=1 on SIGTERM.
use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use nve_tests::rig::{Daemon, TempFile, http, lone_host, nve_bin, require_root, run};

fn unit_file() -> PathBuf {
    contrib_unit("nve@.service")
}

/// `contrib/systemd/NAME`.
fn contrib_unit(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib/systemd")
        .join(name)
}

fn unit_text() -> String {
    std::fs::read_to_string(unit_file()).unwrap()
}

/// The unit's `CapabilityBoundingSet=` lines' capabilities, as setpriv names them
/// (`net_admin`).
fn unit_capabilities() -> Vec<String> {
    let caps: Vec<String> = unit_text()
        .lines()
        .filter_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .flat_map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect();
    assert!(!caps.is_empty(), "the unit names no capabilities");
    caps
}

/// setpriv's arguments that leave a root process only `caps`.
fn only(caps: &[String]) -> Vec<String> {
    let list = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    vec![
        "setpriv".into(),
        format!("--bounding-set={list}"),
        format!("--inh-caps={list}"),
    ]
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    require_root();
    verify(&["nve@.service"], "unit");
}

/// The libvirt events bridge's unit, beside the daemon's it requires.
#[test]
fn the_libvirt_events_unit_passes_systemd_analyze_verify() {
    require_root();
    verify(&["nve-libvirt-events@.service", "nve@.service"], "lvunit");
}

/// `systemd-analyze verify` on the first of `units` (contrib/systemd), the others beside
/// it, as installed but running the nve under test; `man:` references resolve against the
/// man pages `nve manpages` writes. `tag` names the scratch directory.
fn verify(units: &[&str], tag: &str) {
    let dir = PathBuf::from(format!("/tmp/nvet-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let installed: Vec<TempFile> = units
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(contrib_unit(name))
                .unwrap()
                .replace("/usr/local/bin/nve", nve_bin().to_str().unwrap());
            TempFile::write(dir.join(name), &text).unwrap()
        })
        .collect();
    let man = dir.join("man");
    run(&[
        nve_bin().to_str().unwrap(),
        "manpages",
        man.join("man1").to_str().unwrap(),
    ])
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", installed[0].path()])
        .env("MANPATH", &man)
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.display()))
        .output()
        .expect("systemd-analyze (Debian's systemd package; cargo xtask installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // It exits 0 on some warnings (an unknown Restart= value, say): none may be printed.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify {}: {}\n{stderr}",
        units[0],
        out.status
    );
    drop(installed);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The next notification on `socket` (10 s at most).
fn notification(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("no sd_notify datagram within 10 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn started_as_the_unit_does_it_says_ready_once_its_socket_answers() {
    require_root();
    let host = lone_host("sdready", "10.0.0.1/24").unwrap();
    let instance = Daemon::instance_name("sdready");
    let config = TempFile::write(
        format!("/etc/nve/{instance}.toml"),
        "vtep = \"10.0.0.1\"\nunderlay = \"ul\"\nteardown_on_exit = true\n\n[[vns]]\nname = \"blue\"\nvni = 100\n",
    )
    .unwrap();
    let notify_path = format!("/tmp/{instance}.notify");
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let _notify_file = TempFile(notify_path.clone().into());
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let wrapper = only(&unit_capabilities());
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let d = Daemon::spawn_in(
        &host,
        "sdready",
        &wrapper,
        &[],
        &[("NOTIFY_SOCKET", &notify_path)],
    )
    .unwrap();

    let first = notification(&notify);
    assert_eq!(first.trim(), "READY=1", "{}", d.log_text());
    // At READY the socket answers at once, with the dataplane up and the file's VN there.
    let (code, body) = http(&d.socket, "GET", "/v1/vns", b"").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"blue\""), "{body}");
    let status = d.status().unwrap();
    assert_eq!(status.pin_dir, d.pin_dir().display().to_string());
    assert!(d.pin_dir().exists(), "no pins under {}", status.pin_dir);

    // systemctl reload: SIGHUP; the file grew a VN.
    std::fs::write(
        &config.0,
        std::fs::read_to_string(&config.0).unwrap() + "\n[[vns]]\nname = \"green\"\nvni = 200\n",
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    let reloading = notification(&notify);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(notification(&notify).trim(), "READY=1");
    let (_, body) = http(&d.socket, "GET", "/v1/vns", b"").unwrap();
    assert!(body.contains("\"green\""), "{body}");

    let status = d.stop().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(notification(&notify).trim(), "STOPPING=1");
}

#[test]
fn each_of_the_units_three_core_capabilities_is_needed() {
    require_root();
    let host = lone_host("sdcaps", "10.0.0.1/24").unwrap();
    let unit = unit_capabilities();
    for (cap, refusal) in [
        ("net_admin", "nve-vxlan"),
        ("bpf", "failed to create map"),
        ("perfmon", "Permission denied"),
    ] {
        assert!(unit.iter().any(|c| c == cap), "the unit lacks {cap}");
        let fewer: Vec<String> = unit.iter().filter(|c| *c != cap).cloned().collect();
        let wrapper = only(&fewer);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let args = [
            "--vtep",
            "10.0.0.1",
            "--underlay",
            "ul",
            "--teardown-on-exit",
        ];
        let mut d = Daemon::spawn_in(&host, "sdcaps", &wrapper, &args, &[]).unwrap();
        let err = d.wait_ready().expect_err(&format!("started without {cap}"));
        assert!(
            format!("{err:#}").contains(refusal),
            "without {cap}: {err:#}"
        );
    }
}
