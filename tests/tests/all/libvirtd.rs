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
    libvirt_events::{
        BridgeAnswer, EventsBridge, PacedPings, PingsAnswered, Swallowed, TapPingWatch, TapPings,
        journaled_signals,
    },
    overlay::{self, H1_VTEP, H2_VTEP, TwoHosts, VM2_IP, VM2_MAC},
    rig::{Daemon, Netns, TempFile, Vm, fdb_vtep, lone_host, require_root, wait_until},
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

/// Three NVEs on etcd (h1, h2, h3), vm3 on h3, a libvirtd in h1 and in h2, each with
/// nve's hook for its own NVE, and the guest booted on h1, reachable from vm3. Fields drop
/// in order: the libvirtds (and their QEMUs), the daemons, etcd, vm3, the namespaces.
struct LiveRig {
    src: Libvirtd,
    dst: Libvirtd,
    d1: Daemon,
    d2: Daemon,
    _d3: Daemon,
    _etcd: EtcdServer,
    vm3: Vm,
    guest: Domain,
    _serial: TempFile,
    h1: Netns,
    h2: Netns,
    _h3: Netns,
    _fabric: Netns,
}

/// A direction of a [`LiveRig`]'s migration.
#[derive(Clone, Copy)]
enum Way {
    /// h1 -> h2.
    Out,
    /// h2 -> h1.
    Back,
}

/// One `virsh migrate --live` under a stream of pings from vm3.
struct LiveMove<S> {
    migrate_s: f64,
    /// libvirt's "Total downtime", ms.
    downtime_ms: f64,
    /// What the stream saw.
    stream: S,
    /// The pings at the source's tap.
    at_source: TapPings,
}

impl LiveRig {
    fn new(tag: &str) -> Self {
        let (fabric, h1, h2, h3) = three_hosts::underlay(tag).unwrap();
        let vm3 = Vm::new(&format!("{tag}-vm3"), &h3, "vm3p", VM3_MAC, VM3_IP).unwrap();
        let etcd = EtcdServer::start(&h3, H3_VTEP).unwrap();
        let nva = ["--nva", etcd.url.as_str()];
        let d1 = Daemon::start(&h1, &format!("{tag}1"), H1_VTEP, "ul", &nva).unwrap();
        let d2 = Daemon::start(&h2, &format!("{tag}2"), H2_VTEP, "ul", &nva).unwrap();
        let d3 = Daemon::start(&h3, &format!("{tag}3"), H3_VTEP, "ul", &nva).unwrap();
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
            serial: format!("/tmp/{}-{tag}-guest.serial", h1.name).into(),
            ..guest(&format!("{tag}-guest"), UUID, overlay::VN)
        };
        let serial = TempFile(guest.serial.clone());
        src.define(&guest).unwrap();
        src.virsh_ok(&["start", &guest.name]).unwrap();
        guest
            .wait_console(&format!("NVE-GUEST-PING-OK {VM3_IP}"), BOOT)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", src.log()));
        vm3.ping_until_reachable(GUEST_IP, 5).unwrap();
        Self {
            src,
            dst,
            d1,
            d2,
            _d3: d3,
            _etcd: etcd,
            vm3,
            guest,
            _serial: serial,
            h1,
            h2,
            _h3: h3,
            _fabric: fabric,
        }
    }

    /// Live-migrates the guest `way` under the stream of pings `start` starts from vm3,
    /// from a second before until a second after the destination's vNIC is active, when
    /// `finish` ends it.
    fn migrate<S, F>(
        &self,
        way: Way,
        start: impl FnOnce(&Netns) -> S,
        finish: impl FnOnce(S) -> F,
    ) -> LiveMove<F> {
        let (from, to, from_host, to_host, to_nve) = match way {
            Way::Out => (&self.src, &self.dst, &self.h1, &self.h2, &self.d2),
            Way::Back => (&self.dst, &self.src, &self.h2, &self.h1, &self.d1),
        };
        let socket = TempFile(format!("/tmp/{}-migrate.sock", to_host.name).into());
        let watch = TapPingWatch::start(from_host, TAP, GUEST_IP.parse().unwrap()).unwrap();
        let stream = start(&self.vm3.ns);
        std::thread::sleep(Duration::from_secs(1));
        let started = std::time::Instant::now();
        let out = from.virsh(&[
            "migrate",
            "--live",
            &self.guest.name,
            &to.uri,
            "--migrateuri",
            &format!("unix://{}", socket.path()),
        ]);
        assert!(
            out.status.success(),
            "virsh migrate: {}\n{}\n{}",
            stderr(&out),
            from.log(),
            to.log()
        );
        let migrate_s = started.elapsed().as_secs_f64();
        wait_until("the destination's vNIC active", || {
            to_nve
                .vnics()
                .unwrap()
                .iter()
                .any(|v| v.vm == UUID && v.state == VnicState::Associated)
        });
        std::thread::sleep(Duration::from_secs(1));
        let stream = finish(stream);
        let at_source = watch.finish().unwrap();
        let job = to
            .virsh_ok(&["domjobinfo", "--completed", &self.guest.name])
            .unwrap();
        let downtime_ms = downtime_ms(&job).unwrap_or_else(|| panic!("no downtime in {job}"));
        LiveMove {
            migrate_s,
            downtime_ms,
            stream,
            at_source,
        }
    }
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
    let r = LiveRig::new("lm");
    let m = r.migrate(
        Way::Out,
        |ns| PingStream::start(ns, GUEST_IP).unwrap(),
        |s| s.finish().unwrap(),
    );
    let (ping, downtime) = (&m.stream, m.downtime_ms);

    let (h1_calls, h2_calls) = (hook_trace(&r.src), hook_trace(&r.dst));
    println!(
        "virsh migrate --live: {:.1} s, downtime {downtime} ms; ping stream: sent {}, \
         answered {}, longest silence {:.0} ms (after seq {}); hook calls on h1 {h1_calls:?}, \
         on h2 {h2_calls:?}",
        m.migrate_s, ping.sent, ping.received, ping.longest_gap_ms, ping.gap_between.0
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
    assert!(r.d1.vnics().unwrap().is_empty());
    assert_eq!(r.dst.state(&r.guest.name).unwrap(), "running");
    assert_eq!(r.src.state(&r.guest.name).unwrap(), "shut off");
    assert!(
        ping.received > 0 && ping.sent - ping.received <= 50,
        "{ping:?}"
    );
    assert!(
        ping.longest_gap_ms < downtime + 1000.0,
        "the guest was unreachable {:.0} ms, its downtime was {downtime} ms",
        ping.longest_gap_ms
    );
    r.vm3.ping_until_reachable(GUEST_IP, 5).unwrap();
}

/// The ping stream's rate in the events bridge's test: two requests a millisecond, so that
/// the bridge's signaling window (milliseconds) shows in what the stopped VM swallows (the
/// TCG guest answers them all while it runs).
const BRIDGE_RATE: u32 = 2000;

/// A [`PacedPings`] stream at [`BRIDGE_RATE`].
fn paced(ns: &Netns) -> PacedPings {
    PacedPings::start(ns, GUEST_IP.parse().unwrap(), BRIDGE_RATE).unwrap()
}

/// Ends a [`PacedPings`] stream, waiting 200 ms for the last replies.
fn finish_paced(p: PacedPings) -> PingsAnswered {
    p.finish(Duration::from_millis(200)).unwrap()
}

/// `nve libvirt-events` on both hosts (as its unit runs it: no capabilities) during `virsh
/// migrate --live` h1 -> h2 under 2000 pings a second from vm3: at libvirt's Suspended
/// Migrated on h1 it pauses the guest's vNIC toward 0.0.0.0, which h1's NVE sends to h2 (the
/// NVE that pre-associated it migrating in, through etcd). h1's journal has that pause
/// before the hook's disassociate, and h1 keeps the pointer to h2 (the hook's disassociate
/// names no VTEP: without the pause there is none). What the stream lost is only what h1's
/// stopped VM swallowed until the pause was answered: no request entered its tap after.
/// Back h2 -> h1 without the bridges, in the same run, for comparison: the tap swallows
/// until h3 follows the move. Then, on h1, a vNIC paused in nve resumes with the domain
/// (`virsh suspend`, `virsh resume`: Resumed Unpaused).
#[test]
fn the_events_bridge_pauses_the_source_at_the_switchover() {
    require_root();
    let r = LiveRig::new("le");
    let b1 = EventsBridge::start(&r.h1, "h1", &r.src, &r.d1).unwrap();
    let b2 = EventsBridge::start(&r.h2, "h2", &r.dst, &r.d2).unwrap();
    let with = r.migrate(Way::Out, paced, finish_paced);
    let (a1, a2) = (b1.answers(), b2.answers());
    let pause = a1
        .iter()
        .find(|a| a.what.starts_with("Suspended Migrated"))
        .unwrap_or_else(|| panic!("h1's bridge did not pause:\n{}", b1.log_text()));
    assert!(
        pause.ok && pause.line.contains(&format!("MigratingOut({H2_VTEP})")),
        "{pause:?}"
    );
    // h1 applied the bridge's pause, then the hook's disassociate.
    let signals = journaled_signals(&r.d1, UUID).unwrap();
    let ops: Vec<&str> = signals.iter().map(|s| s.0.as_str()).collect();
    let paused = ops.iter().rposition(|op| *op == "pause");
    let gone = ops.iter().rposition(|op| *op == "disassociate");
    assert!(
        paused.is_some() && paused < gone && !ops[paused.unwrap()..].contains(&"resume"),
        "h1's signaling for the guest: {signals:?}"
    );
    let pointer = r.d1.fdb_of(GUEST_MAC).unwrap();
    assert!(
        pointer
            .iter()
            .any(|e| fdb_vtep(e).as_deref() == Some(H2_VTEP) && e.moved_until.is_some()),
        "h1 has no pointer to h2 for the guest: {pointer:?}"
    );
    // Nothing entered h1's tap after the pause was answered (its log line's time; a frame
    // already past the program may still land within the millisecond).
    let answered = pause_answered_at(pause);
    let late: Vec<u16> = with
        .at_source
        .requests
        .iter()
        .filter(|(_, at)| **at > answered + Duration::from_millis(1))
        .map(|(s, _)| *s)
        .collect();
    assert!(
        late.is_empty(),
        "after the pause h1's tap still got {late:?}"
    );
    let swallowed = with.at_source.swallowed().expect("the guest replied on h1");
    let lost = with.stream.lost();
    let elsewhere: Vec<&u16> = lost
        .iter()
        .filter(|s| !swallowed.seqs.contains(s))
        .collect();
    assert!(
        elsewhere.is_empty(),
        "lost {lost:?}, of which not swallowed by h1's stopped VM: {elsewhere:?}"
    );
    assert_eq!(with.at_source.socket_drops, 0);
    let latencies = |a: &[BridgeAnswer]| {
        a.iter()
            .map(|a| {
                format!(
                    "{}: event -> answer {:?} ms, line read -> answer {:?} us",
                    a.what, a.event_to_answer_ms, a.handled_us
                )
            })
            .collect::<Vec<_>>()
    };
    println!(
        "with the bridge, h1 -> h2: {}; bridge on h1 {:?}, on h2 {:?}",
        figures(&with, &swallowed),
        latencies(&a1),
        latencies(&a2)
    );
    drop((b1, b2));

    r.vm3.ping_until_reachable(GUEST_IP, 5).unwrap();
    let without = r.migrate(Way::Back, paced, finish_paced);
    let swallowed_back = without
        .at_source
        .swallowed()
        .expect("the guest replied on h2");
    println!(
        "without it, h2 -> h1: {}",
        figures(&without, &swallowed_back)
    );

    // A vNIC paused in nve resumes with the domain.
    let b1 = EventsBridge::start(&r.h1, "h1-resume", &r.src, &r.d1).unwrap();
    r.src.virsh_ok(&["suspend", &r.guest.name]).unwrap();
    r.d1.nve(&["vm", "pause", "--vm", UUID]).unwrap();
    r.src.virsh_ok(&["resume", &r.guest.name]).unwrap();
    wait_until("h1's vNIC resumed by the bridge", || {
        r.d1.vnics()
            .unwrap()
            .iter()
            .any(|v| v.vm == UUID && v.state == VnicState::Associated)
    });
    let resumed = b1.answers();
    assert!(
        resumed
            .iter()
            .any(|a| a.ok && a.what == "Resumed Unpaused: resume"),
        "{resumed:?}"
    );
    r.vm3.ping_until_reachable(GUEST_IP, 5).unwrap();
}

/// When the bridge logged nve's answer to its pause (the log line's time).
fn pause_answered_at(a: &BridgeAnswer) -> std::time::SystemTime {
    let stamp = a.line.split_whitespace().next().unwrap_or_default();
    nve_user::libvirt::event_line::parse_stamp(stamp)
        .unwrap_or_else(|| panic!("no time on the bridge's line {:?}", a.line))
}

/// A migration's figures, one line.
fn figures(m: &LiveMove<PingsAnswered>, swallowed: &Swallowed) -> String {
    format!(
        "virsh migrate --live {:.1} s, downtime {} ms; pings {}/s: sent {}, lost {}; the \
         stopped source's tap swallowed {} requests in {:.1} ms after the guest's last reply",
        m.migrate_s,
        m.downtime_ms,
        BRIDGE_RATE,
        m.stream.sent,
        m.stream.lost().len(),
        swallowed.seqs.len(),
        swallowed.window_ms,
    )
}

/// The bridge outlives libvirtd: started before any libvirtd answers, it says it does not
/// follow libvirt's events and retries; once a libvirtd runs it follows its events (a
/// `virsh define`'s Defined Added); with libvirtd gone it says so and retries, and follows
/// the next one. It never exits.
#[test]
fn the_events_bridge_follows_libvirtd_as_it_comes_and_goes() {
    require_root();
    let host = lone_host("lf", "10.0.0.1/24").unwrap();
    let d = Daemon::start(&host, "lf", "10.0.0.1", "ul", &[]).unwrap();
    let uri = Libvirtd::uri_of(&host, "lf");
    let mut bridge = EventsBridge::spawn(&host, "lf", &uri, &d).unwrap();
    let away = "not following libvirt's events";
    bridge.wait_for(away, 1).unwrap();

    let libvirtd = Libvirtd::start(&host, "lf", 1, &d).unwrap();
    bridge.wait_for("cached the active domains", 1).unwrap();
    let guest = guest("lf-guest", UUID, overlay::VN);
    libvirtd.define(&guest).unwrap();
    bridge
        .wait_for("for domain 'lf-guest': Defined Added", 1)
        .unwrap();

    drop(libvirtd);
    let before = bridge
        .log_text()
        .lines()
        .filter(|l| l.contains(away))
        .count();
    bridge.wait_for(away, before + 1).unwrap();
    let _libvirtd = Libvirtd::start(&host, "lf", 1, &d).unwrap();
    bridge.wait_for("cached the active domains", 2).unwrap();
    println!(
        "bridge log:\n{}",
        bridge
            .log_text()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("INFO"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
