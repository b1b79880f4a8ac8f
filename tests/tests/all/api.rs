//! The daemon over its real socket: bad requests get specific errors, the daemon stays up
//! and its state is unchanged; one daemon per instance.
use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    time::Duration,
};

use nve_tests::rig::{Daemon, Netns, require_root, veth};
use serde_json::{Value, json};

fn code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    v["code"].as_str().unwrap_or_default().to_string()
}

#[test]
fn bad_requests_get_specific_errors_and_change_nothing() {
    require_root();
    let host = Netns::new("api-h").unwrap();
    let vm = Netns::new("api-vm").unwrap();
    veth(&host, "ul", &vm, "peer", 1500).unwrap();
    veth(&host, "tap1", &vm, "eth0", 1450).unwrap();
    host.ip(&["addr", "add", "10.0.0.1/24", "dev", "ul"])
        .unwrap();
    let d = Daemon::start(&host, "api", "10.0.0.1", "ul", &[]).unwrap();

    let ok = |method: &str, path: &str, body: Value| {
        let (status, text) = d.http(method, path, body.to_string().as_bytes()).unwrap();
        assert!(
            (200..300).contains(&status),
            "{method} {path} {body}: {status} {text}"
        );
    };
    ok("POST", "/v1/vns", json!({"name": "blue", "vni": 100}));
    ok(
        "PUT",
        "/v1/vns/blue/ports",
        json!({"port": "tap1", "macs": ["02:00:00:00:00:01"]}),
    );
    ok(
        "PUT",
        "/v1/vns/blue/fdb",
        json!({"mac": "02:00:00:00:00:02", "vtep": "10.0.0.2"}),
    );
    let state = |path: &str| d.http("GET", path, b"").unwrap().1;
    let before = (state("/v1/vns"), state("/v1/fdb"));

    let long = format!("{{\"name\": \"{}\", \"vni\": 5}}", "x".repeat(100 * 1024));
    const VNIC: &str = "/v1/vnics/6f1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b/0";
    let associate = |extra: &str| {
        format!(
            r#"{{"op": "associate", "vn": "blue", "port": "tap1", "macs": ["02:00:00:00:00:07"]{extra}}}"#
        )
    };
    let vnic_rows = [
        ("hold time 0", associate(r#", "hold_time": 0"#)),
        ("hold time over a day", associate(r#", "hold_time": 86401"#)),
        (
            "one MAC twice",
            associate(r#", "macs": ["02:00:00:00:00:07", "02:00:00:00:00:07"]"#).replacen(
                r#""macs": ["02:00:00:00:00:07"], "#,
                "",
                1,
            ),
        ),
        (
            "one address twice",
            associate(r#", "ipv4": ["192.168.1.7", "192.168.1.7"]"#),
        ),
        (
            "broadcast address",
            associate(r#", "ipv4": ["255.255.255.255"]"#),
        ),
        ("multicast address", associate(r#", "ipv4": ["224.0.0.1"]"#)),
        ("unspecified address", associate(r#", "ipv4": ["0.0.0.0"]"#)),
        ("loopback address", associate(r#", "ipv4": ["127.0.0.1"]"#)),
        (
            "IPv6 multicast address",
            associate(r#", "ipv6": ["ff02::1"]"#),
        ),
        ("IPv6 loopback address", associate(r#", "ipv6": ["::1"]"#)),
    ];
    let bad: &[(&str, &str, &str, u16, &str, &str)] = &[
        (
            "malformed JSON",
            "POST",
            "/v1/vns",
            400,
            "E_FORMAT",
            "{\"name\": \"red\",",
        ),
        (
            "not an object",
            "POST",
            "/v1/vns",
            400,
            "E_FORMAT",
            "[1, 2]",
        ),
        (
            "unknown field",
            "POST",
            "/v1/vns",
            400,
            "E_FORMAT",
            r#"{"name": "red", "vni": 7, "colour": "red"}"#,
        ),
        (
            "missing field",
            "POST",
            "/v1/vns",
            400,
            "E_FORMAT",
            r#"{"name": "red"}"#,
        ),
        (
            "VNI 0",
            "POST",
            "/v1/vns",
            400,
            "E_FORMAT",
            r#"{"name": "red", "vni": 0}"#,
        ),
        (
            "VNI over 24 bits",
            "POST",
            "/v1/vns",
            400,
            "E_FORMAT",
            r#"{"name": "red", "vni": 16777216}"#,
        ),
        (
            "bad VN name",
            "POST",
            "/v1/vns",
            400,
            "E_FORMAT",
            r#"{"name": "red net", "vni": 7}"#,
        ),
        (
            "duplicate VNI",
            "POST",
            "/v1/vns",
            409,
            "E_EXISTS",
            r#"{"name": "red", "vni": 100}"#,
        ),
        (
            "VN exists with another VNI",
            "POST",
            "/v1/vns",
            409,
            "E_EXISTS",
            r#"{"name": "blue", "vni": 101}"#,
        ),
        ("oversized body", "POST", "/v1/vns", 400, "E_FORMAT", &long),
        (
            "unknown VN",
            "PUT",
            "/v1/vns/green/ports",
            404,
            "E_UNKNOWN_VN",
            r#"{"port": "tap1"}"#,
        ),
        (
            "bad MAC",
            "PUT",
            "/v1/vns/blue/fdb",
            400,
            "E_FORMAT",
            r#"{"mac": "02:00:00:00:00:zz", "vtep": "10.0.0.2"}"#,
        ),
        (
            "multicast MAC",
            "PUT",
            "/v1/vns/blue/fdb",
            400,
            "E_FORMAT",
            r#"{"mac": "01:00:5e:00:00:01", "vtep": "10.0.0.2"}"#,
        ),
        (
            "bad IP",
            "PUT",
            "/v1/vns/blue/fdb",
            400,
            "E_FORMAT",
            r#"{"mac": "02:00:00:00:00:03", "vtep": "10.0.0.300"}"#,
        ),
        (
            "multicast VTEP",
            "PUT",
            "/v1/vns/blue/flood",
            400,
            "E_FORMAT",
            r#"{"vtep": "239.1.1.1"}"#,
        ),
        (
            "local MAC as remote",
            "PUT",
            "/v1/vns/blue/fdb",
            409,
            "E_MAC_CONFLICT",
            r#"{"mac": "02:00:00:00:00:01", "vtep": "10.0.0.2"}"#,
        ),
        (
            "MAC on two ports",
            "PUT",
            "/v1/vns/blue/ports",
            409,
            "E_MAC_CONFLICT",
            r#"{"port": "ul", "macs": ["02:00:00:00:00:02"]}"#,
        ),
        (
            "VID out of range",
            "PUT",
            "/v1/vns/blue/ports",
            400,
            "E_FORMAT",
            r#"{"port": "tap1", "vid": 4095}"#,
        ),
        (
            "no such interface",
            "PUT",
            "/v1/vns/blue/ports",
            422,
            "E_HOST",
            r#"{"port": "nosuch0"}"#,
        ),
        (
            "bad MAC in path",
            "DELETE",
            "/v1/vns/blue/fdb/not-a-mac",
            400,
            "E_FORMAT",
            "",
        ),
        (
            "bad VTEP in path",
            "DELETE",
            "/v1/vns/blue/flood/10.0.0",
            400,
            "E_FORMAT",
            "",
        ),
        (
            "unknown remote MAC",
            "DELETE",
            "/v1/vns/blue/fdb/02:00:00:00:00:09",
            404,
            "E_NOT_FOUND",
            "",
        ),
        ("unknown path", "GET", "/v2/vns", 404, "E_NOT_FOUND", ""),
        (
            "VN named \".\"",
            "POST",
            "/v1/vns",
            400,
            "E_FORMAT",
            r#"{"name": ".", "vni": 8}"#,
        ),
        (
            "VN named \"..\"",
            "POST",
            "/v1/vns",
            400,
            "E_FORMAT",
            r#"{"name": "..", "vni": 8}"#,
        ),
        (
            "VN name like a flag",
            "POST",
            "/v1/vns",
            400,
            "E_FORMAT",
            r#"{"name": "-x", "vni": 8}"#,
        ),
        ("wrong method", "PATCH", "/v1/vns", 405, "E_METHOD", ""),
        (
            "wrong method on a VN",
            "GET",
            "/v1/vns/blue",
            405,
            "E_METHOD",
            "",
        ),
        (
            "path not UTF-8",
            "DELETE",
            "/v1/vns/%ff%fe",
            400,
            "E_FORMAT",
            "",
        ),
        (
            "query not UTF-8",
            "GET",
            "/v1/fdb?mac=%ff",
            400,
            "E_FORMAT",
            "",
        ),
    ];
    let vnic_bad = vnic_rows
        .iter()
        .map(|(what, body)| (*what, "POST", VNIC, 400, "E_FORMAT", body.as_str()));
    for (what, method, path, want_status, want_code, body) in bad.iter().copied().chain(vnic_bad) {
        let (status, text) = d.http(method, path, body.as_bytes()).unwrap();
        assert_eq!(
            (status, code(&text).as_str()),
            (want_status, want_code),
            "{what}: {text}"
        );
        let message = serde_json::from_str::<Value>(&text).unwrap()["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!message.is_empty(), "{what}: no message");
    }
    assert_eq!(
        (state("/v1/vns"), state("/v1/fdb")),
        before,
        "a rejected request changed state"
    );
    assert_eq!(
        state("/v1/vnics"),
        "[]",
        "a rejected signal installed a vNIC"
    );

    // A repeat is idempotent; a repeat with another hold time needs a higher request_id.
    let held =
        |secs: u32, id: u32| associate(&format!(r#", "hold_time": {secs}, "request_id": {id}"#));
    for (body, want) in [
        (held(30, 1), 200),
        (held(30, 1), 200),
        (held(60, 1), 409),
        (held(60, 2), 200),
    ] {
        let (status, text) = d.http("POST", VNIC, body.as_bytes()).unwrap();
        assert_eq!(status, want, "{body}: {text}");
    }
    ok("POST", VNIC, json!({"op": "disassociate"}));

    // A burst of bad and good requests from several clients at once: all answered.
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let socket = d.socket.clone();
            std::thread::spawn(move || {
                let (s, _) = nve_tests::rig::http(&socket, "POST", "/v1/vns", b"{oops").unwrap();
                assert_eq!(s, 400);
                let body = json!({"name": format!("vn{i}"), "vni": 1000 + i}).to_string();
                let (s, t) =
                    nve_tests::rig::http(&socket, "POST", "/v1/vns", body.as_bytes()).unwrap();
                assert_eq!(s, 201, "{t}");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let vns: Value = serde_json::from_str(&state("/v1/vns")).unwrap();
    assert_eq!(vns.as_array().unwrap().len(), 9);

    // The CLI reports the daemon's error and fails.
    let out = d.cli(&["vn", "add", "red", "--vni", "100"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("E_EXISTS") && stderr.contains("VNI 100"),
        "{stderr}"
    );

    // A second daemon for the same instance refuses, and leaves the first one alone.
    let second = host
        .command(nve_tests::rig::nve_bin().to_str().unwrap())
        .args([
            "--instance",
            &d.instance,
            "daemon",
            "--vtep",
            "10.0.0.1",
            "--underlay",
            "ul",
        ])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("already running"), "{stderr}");
    assert_eq!(d.http("GET", "/v1/status", b"").unwrap().0, 200);

    let pins = d.pin_dir();
    assert!(d.stop().unwrap().success());
    assert!(!pins.exists(), "pins left at {}", pins.display());
}

/// Writes `request` (raw bytes, maybe half a request) on a new connection to the socket.
fn send_raw(d: &Daemon, request: &[u8]) -> UnixStream {
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(request).unwrap();
    s
}

/// Reads the answer on `s` to its end: (status, body).
fn answer(mut s: UnixStream) -> (u16, String) {
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (status.unwrap_or(0), body.unwrap_or(text))
}

#[test]
fn every_refusal_is_json_and_a_stuck_client_delays_nobody() {
    require_root();
    let host = Netns::new("apr-h").unwrap();
    let vm = Netns::new("apr-vm").unwrap();
    veth(&host, "ul", &vm, "peer", 1500).unwrap();
    host.ip(&["addr", "add", "10.0.0.1/24", "dev", "ul"])
        .unwrap();
    let d = Daemon::start(&host, "apr", "10.0.0.1", "ul", &[]).unwrap();

    // Half a request: the connection stays open, and others are served meanwhile.
    let stuck = send_raw(&d, b"GET /v1/status HTTP/1.1\r\nhost: nve\r\n");
    let long_uri = format!("GET /v1/{} HTTP/1.1\r\nhost: nve\r\n\r\n", "x".repeat(8000));
    let many_headers: String = (0..100).map(|i| format!("x-h{i}: v\r\n")).collect();
    let many_headers = format!("GET /v1/status HTTP/1.1\r\n{many_headers}\r\n");
    let huge_header = format!(
        "GET /v1/status HTTP/1.1\r\nx: {}\r\n\r\n",
        "y".repeat(20_000)
    );
    let raw: &[(&str, &[u8], u16, &str)] = &[
        ("not HTTP", b"hello there\r\n\r\n", 400, "E_FORMAT"),
        ("binary", b"\x00\x01\x02\xff\r\n\r\n", 400, "E_FORMAT"),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            400,
            "E_FORMAT",
        ),
        ("a URI over 4 KiB", long_uri.as_bytes(), 414, "E_FORMAT"),
        ("100 headers", many_headers.as_bytes(), 431, "E_FORMAT"),
        (
            "a head over 16 KiB",
            huge_header.as_bytes(),
            431,
            "E_FORMAT",
        ),
        (
            "two Content-Lengths",
            b"POST /v1/vns HTTP/1.1\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}",
            400,
            "E_FORMAT",
        ),
        (
            "a Transfer-Encoding hyper does not take",
            b"POST /v1/vns HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n",
            400,
            "E_FORMAT",
        ),
    ];
    for (what, request, want_status, want_code) in raw {
        let (status, body) = answer(send_raw(&d, request));
        assert_eq!(
            (status, code(&body).as_str()),
            (*want_status, *want_code),
            "{what}: {body}"
        );
    }
    let (status, _) = d.http("GET", "/v1/status", b"").unwrap();
    assert_eq!(status, 200, "served while a client is stuck half-way");
    // The stuck client is cut off, with a reason, once its time is up.
    let (status, body) = answer(stuck);
    assert_eq!((status, code(&body).as_str()), (408, "E_TIMEOUT"), "{body}");

    // Connections are bounded (64 at once): past the limit, an answer at once instead of
    // a wait. The daemon accepts in order, so the 65th is the one refused.
    let open: Vec<UnixStream> = (0..64)
        .map(|_| send_raw(&d, b"GET /v1/status HTTP/1.1\r\n"))
        .collect();
    let (status, body) = answer(send_raw(&d, b"GET /v1/status HTTP/1.1\r\n\r\n"));
    assert_eq!((status, code(&body).as_str()), (503, "E_BUSY"), "{body}");
    drop(open);
    nve_tests::rig::wait_until("connections freed", || {
        d.http("GET", "/v1/status", b"")
            .is_ok_and(|(s, _)| s == 200)
    });
}

/// Runs the CLI as `uid`/`gid` with no supplementary groups.
fn nve_as(
    uid: u32,
    gid: u32,
    nve: &std::path::Path,
    socket: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".into(),
        ])
        .arg(nve)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn only_root_and_the_group_may_use_the_socket() {
    require_root();
    let host = Netns::new("acl-h").unwrap();
    let peer = Netns::new("acl-p").unwrap();
    veth(&host, "ul", &peer, "x0", 1500).unwrap();
    host.ip(&["addr", "add", "10.0.0.1/24", "dev", "ul"])
        .unwrap();
    let d = Daemon::start(&host, "acl", "10.0.0.1", "ul", &["--group", "nogroup"]).unwrap();
    // A copy of the CLI any user can run, wherever the clone lives.
    let nve = std::path::PathBuf::from(format!("/tmp/nvet-{}-nve", std::process::id()));
    std::fs::copy(nve_tests::rig::nve_bin(), &nve).unwrap();
    let _cleanup = Remove(nve.clone());

    // Root and the group's members may; others are refused by the socket's mode...
    assert!(d.cli(&["status"]).status.success());
    let member = nve_as(65534, 65534, &nve, &d.socket, &["status"]);
    assert!(
        member.status.success(),
        "{}",
        String::from_utf8_lossy(&member.stderr)
    );
    let other = nve_as(1, 1, &nve, &d.socket, &["status"]);
    assert!(!other.status.success());
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("ermission denied"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    // ...and, should the mode be loosened, by the peer-credential check.
    std::fs::set_permissions(
        &d.socket,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let other = nve_as(1, 1, &nve, &d.socket, &["vn", "add", "x", "--vni", "5"]);
    assert!(!other.status.success());
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(
        stderr.contains("E_PERMISSION") && stderr.contains("uid 1"),
        "{stderr}"
    );
    assert_eq!(
        d.nve(&["vn", "list", "--json"]).unwrap().trim(),
        "[]",
        "a refused request changed state"
    );
}

struct Remove(std::path::PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn signaling_for_many_vnics_at_once() {
    require_root();
    let host = Netns::new("conc-h").unwrap();
    let peer = Netns::new("conc-p").unwrap();
    veth(&host, "ul", &peer, "x0", 1500).unwrap();
    host.ip(&["addr", "add", "10.0.0.1/24", "dev", "ul"])
        .unwrap();
    let d = Daemon::start(&host, "conc", "10.0.0.1", "ul", &[]).unwrap();
    assert!(
        d.http("POST", "/v1/vns", br#"{"name": "blue", "vni": 100}"#)
            .unwrap()
            .0
            == 201
    );
    let post = |vm: String, body: Value| {
        let socket = d.socket.clone();
        std::thread::spawn(move || {
            let (status, text) = nve_tests::rig::http(
                &socket,
                "POST",
                &format!("/v1/vnics/{vm}/0"),
                body.to_string().as_bytes(),
            )
            .unwrap();
            (status, code(&text))
        })
    };
    // 32 vNICs of 32 VMs at once: all associated.
    let all: Vec<_> = (0..32)
        .map(|i| {
            let vm = format!("00000000-0000-4000-8000-{i:012x}");
            post(vm, json!({"op": "associate", "vn": "blue", "port": format!("tap{i}"), "macs": [format!("02:00:00:00:01:{i:02x}")]}))
        })
        .collect();
    for t in all {
        assert_eq!(t.join().unwrap(), (200, "OK".to_string()));
    }
    let vnics: Value = serde_json::from_str(&d.http("GET", "/v1/vnics", b"").unwrap().1).unwrap();
    assert_eq!(vnics.as_array().unwrap().len(), 32);
    // One vNIC, two different associates at once: applied one after the other, so exactly
    // one wins and the other finds the vNIC associated with other parameters.
    let vm = "00000000-0000-4000-8000-0000000000ff".to_string();
    let a = post(
        vm.clone(),
        json!({"op": "associate", "vn": "blue", "port": "tapa", "macs": ["02:00:00:00:02:01"]}),
    );
    let b = post(
        vm,
        json!({"op": "associate", "vn": "blue", "port": "tapb", "macs": ["02:00:00:00:02:02"]}),
    );
    let mut outcomes = [a.join().unwrap(), b.join().unwrap()];
    outcomes.sort();
    assert_eq!(
        outcomes,
        [(200, "OK".to_string()), (409, "E_STATE".to_string())]
    );
}
