//! `cargo xtask bench [--quick]`: what nve costs, as ratios to baselines measured in the same
//! run (../shared/docs/bench.md):
//! - ns per packet of each program through BPF_PROG_TEST_RUN, against a trivial XDP program;
//! - VM-to-VM TCP (1 and 4 streams) and 60-byte UDP frames per second between two hosts,
//!   through nve (tc and xdp modes), the kernel's vxlan+bridge, and a plain veth+bridge
//!   without encapsulation (the ceiling). Configurations alternate within each round; each
//!   figure is the median of the rounds, with min and max.
//!
//! Writes a table to stdout, and `target/bench/bench.json` and `target/bench/ratios.svg`.
use std::{
    collections::BTreeMap, fmt::Write as _, fs, os::unix::process::CommandExt, path::PathBuf,
    thread, time::Duration,
};

use anyhow::{Context as _, Result};
use aya::programs::{Xdp, XdpMode};
use nve_tests::{
    overlay::{self, H1_VTEP, H2_VTEP, Side, TwoHosts, VM1_MAC, VM2_IP, VM2_MAC},
    packet::{self, Ipv4},
    progtest::{self, Loaded, Program, profile},
    rig::{Daemon, Netns, Vm, require_root},
};
use serde_json::{Value, json};

struct Settings {
    rounds: usize,
    seconds: u32,
    runs: u32,
}

fn main() -> Result<()> {
    require_root();
    let quick = std::env::args().any(|a| a == "--quick");
    let s = if quick {
        Settings {
            rounds: 1,
            seconds: 1,
            runs: 2_000,
        }
    } else {
        Settings {
            rounds: 3,
            seconds: 5,
            runs: 100_000,
        }
    };
    let (associations, scale, large) = if quick {
        (100, 1_000, 10_000)
    } else {
        (1_000, 10_000, 100_000)
    };
    let nva_macs = std::env::args()
        .skip_while(|a| a != "--nva-macs")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(if quick { 10_000 } else { 100_000 });
    if std::env::args().any(|a| a == "--only-signaling") {
        return signaling(associations, scale, large);
    }
    let vsis = if quick { 10 } else { 50 };
    if std::env::args().any(|a| a == "--only-vdp") {
        return vdp(vsis);
    }
    let evpn_runs = if quick { 5 } else { 30 };
    let evpn_routes = std::env::args()
        .skip_while(|a| a != "--evpn-routes")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    if std::env::args().any(|a| a == "--only-evpn") {
        return evpn(evpn_runs, evpn_routes);
    }
    let migrations = if quick { 1 } else { 5 };
    if std::env::args().any(|a| a == "--only-migration") {
        return migration(migrations);
    }
    // Fresh guests, and moves of one guest back and forth: 10 migrations, 3 when quick.
    let qemu_migrations = if quick { (1, 2) } else { (5, 5) };
    if std::env::args().any(|a| a == "--only-qemu") {
        return qemu_migration(qemu_migrations.0, qemu_migrations.1);
    }
    if std::env::args().any(|a| a == "--only-nva") {
        return nva(if quick { 20 } else { 200 }, nva_macs);
    }
    if std::env::args().any(|a| a == "--only-traffic") {
        return report(&Samples::new(), &traffic(&s)?, quick);
    }
    let programs = program_costs(&s)?;
    if std::env::args().any(|a| a == "--only-programs") {
        return report(&programs, &Traffic::default(), quick);
    }
    let traffic = traffic(&s)?;
    report(&programs, &traffic, quick)?;
    signaling(associations, scale, large)?;
    vdp(vsis)?;
    evpn(evpn_runs, evpn_routes)?;
    nva(if quick { 20 } else { 200 }, nva_macs)?;
    migration(migrations)?;
    qemu_migration(qemu_migrations.0, qemu_migrations.1)
}

/// `runs` live migrations on the three-host rig under a 10,000 datagrams/s stream: what the
/// VM's pause cost, what the network lost (0 is the aim), the longest gap the receiver saw.
fn migration(runs: u32) -> Result<()> {
    eprintln!("==> live migration under a stream, {runs} runs");
    let mut figures = Vec::new();
    for i in 0..runs {
        let rig = nve_tests::three_hosts::MigrationRig::new(
            &format!("bm{i}"),
            "00000000-0000-4000-8000-0000000000c1",
            "00000000-0000-4000-8000-0000000000c3",
        )?;
        figures.push(nve_tests::live_stream::migrate_under_stream(
            &rig, 10_000, 3,
        )?);
    }
    println!(
        "\nLive migration (rig: veth VM paused = link down on h1, link up + RARP on h2), 10,000 datagrams/s:"
    );
    for (i, f) in figures.iter().enumerate() {
        println!(
            "  run {}: VM paused {:.0} ms, lost during the pause {}, lost by the network {} \
             (outside the pause, after the RARP included), duplicates {}, out of order {}, \
             longest gap {:.1} ms, through the forwarding pointer {}",
            i + 1,
            f.pause_ms,
            f.lost_in_pause,
            f.lost_otherwise.len(),
            f.duplicates,
            f.out_of_order,
            f.longest_gap_ms,
            f.forwarded
        );
    }
    merge_json("migration.json", "rig", serde_json::to_value(&figures)?)
}

/// Sets `key` in `target/bench/<file>` to `value`, keeping the file's other keys (the rig
/// and QEMU migrations write one file).
fn merge_json(file: &str, key: &str, value: Value) -> Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    fs::create_dir_all(&dir)?;
    let path = dir.join(file);
    let mut all = fs::read_to_string(&path)
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    all[key] = value;
    fs::write(path, serde_json::to_string_pretty(&all)?)?;
    Ok(())
}

/// QEMU live migrations (a real guest, QEMU's own migration) under a 10,000 datagrams/s
/// stream: `fresh` guests each booted on h1 and moved to h2, and one guest moved `moves`
/// times back and forth (a new incoming QEMU each time, the NVEs' roles swapping). Per
/// migration: all it lost (the pause included), duplicates, out of order, STOP -> `nve vm
/// pause` answered, the frames the destination's tap queued before RESUME; then the sum and
/// the max of each. Merged into `target/bench/migration.json` under "qemu".
fn qemu_migration(fresh: u32, moves: u32) -> Result<()> {
    const RATE: u32 = 10_000;
    eprintln!(
        "==> QEMU live migration under a stream: {fresh} fresh guests, one guest moved {moves} \
         times"
    );
    let mut figures = Vec::new();
    let mut labels = Vec::new();
    for i in 0..fresh {
        figures.push(nve_tests::qemu_stream::migrate_guest_under_stream(
            &format!("qb{i}"),
            RATE,
            30,
        )?);
        labels.push(format!("fresh guest {}", i + 1));
    }
    let mut rig = nve_tests::qemu_stream::QemuRig::new("qd")?;
    for i in 0..moves {
        figures.push(rig.migrate(RATE, 30)?);
        labels.push(format!("one guest, move {}", i + 1));
    }
    drop(rig);
    println!("\nLive migration (QEMU guest, QEMU's own migration), {RATE} datagrams/s:");
    for (f, label) in figures.iter().zip(&labels) {
        println!(
            "  {label:<18} {} -> {}: migration {} ms, QEMU downtime {} ms, STOP -> RESUME \
             {:.1} ms, STOP -> pause answered {}; lost {} in all ({} in the pause, {} by the \
             network), duplicates {}, out of order {}, queued at the destination's tap before \
             RESUME {}",
            f.from,
            f.to,
            f.migration_ms,
            f.qemu_downtime_ms,
            f.stop_to_resume_ms,
            f.stop_signal.map_or_else(
                || f.stop_signal_error.clone().unwrap_or_default(),
                |s| format!("{:.2} ms", s.answered_ms)
            ),
            f.losses.lost(),
            f.losses.in_pause.len(),
            f.losses.network().len(),
            f.losses.duplicates,
            f.losses.out_of_order,
            f.early_at_dst,
        );
    }
    let column = |v: &dyn Fn(&nve_tests::qemu_stream::QemuFigures) -> f64| {
        let v: Vec<f64> = figures.iter().map(v).collect();
        (v.iter().sum::<f64>(), v.iter().copied().fold(0.0, f64::max))
    };
    let lost = column(&|f| f.losses.lost() as f64);
    let network = column(&|f| f.losses.network().len() as f64);
    let duplicates = column(&|f| f.losses.duplicates as f64);
    let out_of_order = column(&|f| f.losses.out_of_order as f64);
    let queued = column(&|f| f.early_at_dst as f64);
    let mut paused: Vec<f64> = figures
        .iter()
        .filter_map(|f| f.stop_signal.map(|s| s.answered_ms))
        .collect();
    let (paused_p50, _, paused_max) = if paused.is_empty() {
        (f64::NAN, f64::NAN, f64::NAN)
    } else {
        percentiles(&mut paused)
    };
    println!(
        "  {} migrations: lost {} in all (max {}), by the network {} (max {}), duplicates {} \
         (max {}), out of order {} (max {}); STOP -> pause answered p50 {paused_p50:.2} ms, \
         max {paused_max:.2} ms ({} answered); queued at the destination's tap before RESUME \
         {} (max {})",
        figures.len(),
        lost.0,
        lost.1,
        network.0,
        network.1,
        duplicates.0,
        duplicates.1,
        out_of_order.0,
        out_of_order.1,
        paused.len(),
        queued.0,
        queued.1,
    );
    let mut runs = Vec::new();
    for (f, label) in figures.iter().zip(labels) {
        let mut v = serde_json::to_value(f)?;
        v["label"] = label.into();
        runs.push(v);
    }
    merge_json("migration.json", "qemu", Value::Array(runs))
}

/// p50, p99 and max of `samples` (sorted here).
fn percentiles(samples: &mut [f64]) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    (pct(0.50), pct(0.99), samples[samples.len() - 1])
}

/// Associate on one NVE -> the MAC in another NVE's FDB through etcd (p50/p99), then one
/// NVE holding `macs` remote MACs from etcd (install time, entries, RSS, the same latency
/// at that scale, restart).
fn nva(runs: u32, macs: u32) -> Result<()> {
    eprintln!("==> NVA: {runs} associations, each until the other NVE has it");
    let mut lat = nve_tests::nva_bench::move_visible(runs)?;
    let (p50, p99, max) = percentiles(&mut lat);
    println!(
        "\nNVA (etcd): associate -> MAC in the other NVE's FDB, {} runs: p50 {p50:.0} us, p99 {p99:.0} us, max {max:.0} us",
        lat.len()
    );
    eprintln!("==> NVA: {macs} remote MACs published in etcd, held by one NVE");
    let mut s = nve_tests::nva_bench::at_scale(macs, runs.min(50))?;
    let (s50, s99, smax) = percentiles(&mut s.move_visible_us);
    println!(
        "NVA at scale: {} remote MACs installed in {:.1} s ({:.1} s of it writing them to etcd; FDB map {} entries, ARP map {}), \
         RSS {} -> {} MiB; associate -> visible with them installed p50 {s50:.0} us, p99 {s99:.0} us, \
         max {smax:.0} us; restart -> all back in {:.1} s",
        s.macs,
        s.install_s,
        s.written_s,
        s.fdb_entries,
        s.arp_entries,
        s.rss_before_kib / 1024,
        s.rss_kib / 1024,
        s.restart_s
    );
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    fs::create_dir_all(&dir)?;
    fs::write(
        dir.join("nva.json"),
        serde_json::to_string_pretty(&json!({
            "move_visible_us": {"p50": p50, "p99": p99, "max": max, "runs": lat.len()},
            "at_scale": s,
            "at_scale_move_visible_us": {"p50": s50, "p99": s99, "max": smax},
        }))?,
    )?;
    Ok(())
}

/// Associate -> first frame at the remote VM (p50/p99), the cost of `scale` associations
/// with the daemon's RSS after them, then on to `large` vNICs in bounded steps and a
/// restart on them.
fn signaling(associations: u32, scale: u32, large: u32) -> Result<()> {
    eprintln!(
        "==> signaling: {associations} associations timed, then {scale} at once, then on to {large}"
    );
    let f = nve_tests::signal_bench::run(associations, scale, large)?;
    let mut lat = f.first_frame_us.clone();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let (p50, p99) = (pct(0.50), pct(0.99));
    println!("\nSignaling (absolute: no baseline)");
    println!(
        "  associate -> first frame at the remote VM, {} runs: p50 {p50:.0} us, p99 {p99:.0} us, max {:.0} us",
        lat.len(),
        lat[lat.len() - 1]
    );
    println!(
        "  {} associations from {} concurrent clients: {:.2} s ({:.0} us each), daemon RSS {} KiB",
        f.scale_n,
        nve_tests::signal_bench::CLIENTS,
        f.scale_secs,
        f.scale_secs * 1e6 / f64::from(f.scale_n),
        f.rss_kib
    );
    merge_json(
        "signaling.json",
        "first_frame_us",
        json!({"p50": p50, "p99": p99, "max": lat[lat.len() - 1], "runs": lat.len()}),
    )?;
    for step in &f.large.steps {
        println!(
            "  on to {} vNICs (8 clients): {:.2} s for this step, daemon RSS {} KiB, {} FDB entries",
            step.vnics, step.secs, step.rss_kib, step.fdb_entries
        );
    }
    if let Some(why) = &f.large.skipped {
        println!("  skipped: {why}");
    }
    if let Some(s) = f.large.restart_s {
        println!(
            "  restart on them (SIGKILL -> answering, dataplane applied): {s:.2} s, {} FDB entries, RSS {} KiB",
            f.large.restart_fdb_entries, f.large.restart_rss_kib
        );
    }
    merge_json(
        "signaling.json",
        "scale",
        json!({"associations": f.scale_n, "seconds": f.scale_secs, "rss_kib": f.rss_kib}),
    )?;
    merge_json("signaling.json", "large", serde_json::to_value(&f.large)?)
}

/// VDP on a trunk port, lldpad the station, timed on the wire: its Assoc request -> nve's
/// answer, and the answer -> the VSI's first tagged frame at the remote VM (p50/p99/max),
/// with the port's first VSI apart. Merged into `target/bench/signaling.json` as "vdp".
fn vdp(associations: u8) -> Result<()> {
    eprintln!("==> VDP: {associations} associations by lldpad (vdptool), each de-associated after");
    let mut f = nve_tests::vdp_bench::run(associations)?;
    let (r50, r99, rmax) = percentiles(&mut f.request_reply_us);
    let (f50, f99, fmax) = percentiles(&mut f.reply_first_frame_us);
    let (first_rr, first_rf) = f.first_on_port_us;
    let gap = nve_tests::vdp_bench::PROBE_GAP.as_micros();
    println!(
        "\nVDP (absolute: no baseline; kernel timestamps on the station's vst0 and at the VM)"
    );
    println!(
        "  Assoc request -> nve's answer, {associations} runs: p50 {r50:.0} us, p99 {r99:.0} us, max {rmax:.0} us"
    );
    println!(
        "  answer -> first tagged frame at the remote VM (one every {gap} us): p50 {f50:.0} us, p99 {f99:.0} us, max {fmax:.0} us"
    );
    println!(
        "  the port's first VSI (kept through \
         the runs): request -> answer {first_rr:.0} us, answer -> first frame {first_rf:.0} us"
    );
    merge_json(
        "signaling.json",
        "vdp",
        json!({
            "request_reply_us": {"p50": r50, "p99": r99, "max": rmax, "runs": associations},
            "reply_first_frame_us": {"p50": f50, "p99": f99, "max": fmax, "runs": associations, "probe_gap_us": gap},
            "first_on_port_us": {"request_reply": first_rr, "reply_first_frame": first_rf},
        }),
    )
}

/// How long the EVPN scale steps may take together.
const EVPN_SCALE_BUDGET: Duration = Duration::from_secs(150);

/// BGP EVPN against FRR (`runs` vNICs associated on nve until FRR has each, `runs` MACs
/// learned by FRR until nve forwards to each), then `routes` type-2 routes from a minimal
/// speaker (in steps, within `EVPN_SCALE_BUDGET`).
fn evpn(runs: u32, routes: u32) -> Result<()> {
    eprintln!(
        "==> EVPN: {runs} associations until FRR has each, {runs} MACs FRR learns until nve forwards to each"
    );
    let mut f = nve_tests::evpn_bench::against_frr(runs)?;
    let figure = |name: &str, v: &mut Vec<f64>| {
        let (p50, p99, max) = percentiles(v);
        (
            name.to_string(),
            json!({"p50": p50, "p99": p99, "max": max, "runs": v.len()}),
        )
    };
    let rows = [
        figure("associate_to_update_us", &mut f.associate_to_update_us),
        figure("associate_to_frr_fdb_us", &mut f.associate_to_frr_fdb_us),
        figure("associate_answer_us", &mut f.associate_answer_us),
        figure("learned_to_update_us", &mut f.learned_to_update_us),
        figure("update_to_dataplane_us", &mut f.update_to_dataplane_us),
        figure("learned_to_dataplane_us", &mut f.learned_to_dataplane_us),
    ];
    let gap = nve_tests::evpn_bench::PROBE_GAP.as_micros();
    let line = |i: usize| {
        let v = &rows[i].1;
        format!(
            "p50 {:.0} us, p99 {:.0} us, max {:.0} us",
            v["p50"].as_f64().unwrap_or(f64::NAN),
            v["p99"].as_f64().unwrap_or(f64::NAN),
            v["max"].as_f64().unwrap_or(f64::NAN)
        )
    };
    println!("
BGP EVPN against FRR 8.4 (absolute: no baseline; kernel timestamps on the underlay, {runs} runs each)");
    println!(
        "  associate on nve -> its UPDATE at FRR (h2's ul):          {}",
        line(0)
    );
    println!(
        "  associate on nve -> zebra's FDB entry (netlink on h2):    {}",
        line(1)
    );
    println!(
        "  (nve's API answer:                                        {})",
        line(2)
    );
    println!(
        "  new MAC on FRR's bridge -> FRR's UPDATE at nve (h1's ul): {}",
        line(3)
    );
    println!(
        "  that UPDATE -> first frame to it encapsulated by nve:     {} (a probe every {gap} us)",
        line(4)
    );
    println!(
        "  new MAC on FRR's bridge -> nve forwards to it:            {}",
        line(5)
    );
    println!(
        "  not counted above: the VN's first vNIC -> UPDATE {:.0} us, -> zebra {:.0} us; the first learned MAC -> UPDATE {:.0} us, -> forwarded {:.0} us",
        f.first_associate_us.0, f.first_associate_us.1, f.first_learned_us.0, f.first_learned_us.1
    );
    let mut frr: serde_json::Map<String, Value> = rows.into_iter().collect();
    frr.insert("probe_gap_us".into(), json!(gap));
    frr.insert(
        "first".into(),
        json!({"associate_to_update_us": f.first_associate_us.0, "associate_to_frr_fdb_us": f.first_associate_us.1,
               "learned_to_update_us": f.first_learned_us.0, "learned_to_dataplane_us": f.first_learned_us.1}),
    );
    merge_json("evpn.json", "frr", Value::Object(frr))?;

    eprintln!("==> EVPN: {routes} type-2 routes from a minimal BGP speaker, in steps");
    let steps = nve_tests::evpn_bench::at_scale(routes, EVPN_SCALE_BUDGET)?;
    println!(
        "  type-2 routes received from a minimal speaker (first UPDATE sent -> nve's status counts them; fresh nve each):"
    );
    for s in &steps {
        let secs =
            |v: Option<f64>| v.map_or("not within the budget".into(), |t| format!("{t:.1} s"));
        println!(
            "    {:>7} routes in {} UPDATEs: written {:.1} s, all in nve's RIB {}, installed {} \
             ({} entries, FDB map {}), RSS {} -> {} MiB, nve's CPU {:.1} s{}",
            s.routes,
            s.updates,
            s.sent_s,
            secs(s.received_s),
            secs(s.installed_s),
            s.entries,
            s.fdb_entries,
            s.rss_before_kib / 1024,
            s.rss_kib / 1024,
            s.cpu_s,
            s.session_error
                .as_ref()
                .map_or(String::new(), |e| format!(", session: {e}"))
        );
    }
    if steps
        .last()
        .is_none_or(|s| s.routes < routes || s.installed_s.is_none())
    {
        println!(
            "    ({routes} not reached within {} s)",
            EVPN_SCALE_BUDGET.as_secs()
        );
    }
    merge_json("evpn.json", "routes", serde_json::to_value(&steps)?)
}

/// VM frame sizes: the smallest, and the largest a 1450-byte VM MTU allows.
const FRAME_SIZES: [usize; 2] = [64, 1464];

/// What classifying an underlay frame costs, without the kernel timer's share: VXLAN for a
/// VNI nobody serves passes every check of its outer headers and is dropped unchanged at
/// the VN lookup, so the kernel can rerun it on the same frame; ns per run (the kernel's
/// average over the repeats), median of 5 calls, beside xdp_pass rerun the same way.
fn classify_costs(l: &Loaded) -> Result<()> {
    const REPEATS: u32 = 1_000_000;
    let ip = Ipv4::new(progtest::REMOTE, progtest::VTEP, 17);
    let inner = packet::inner_ping(progtest::VM1, progtest::VM2, 64 - 42);
    let frame = packet::vxlan_frame(
        progtest::UNDERLAY_MAC,
        progtest::NEXT_HOP_MAC,
        &ip,
        50000,
        0xfffffe,
        &inner,
    );
    eprintln!("classify only (VXLAN to an unserved VNI, {REPEATS} kernel repeats per call):");
    for program in [
        Program::XdpPass,
        Program::XdpUnderlayRx,
        Program::TcUnderlayRx,
    ] {
        let mut runs = Vec::new();
        for _ in 0..5 {
            runs.push(l.run(program, &frame, REPEATS)?.2);
        }
        eprintln!("  {:<16} {:>6.1} ns/run", program.name(), stats(&runs).0);
    }
    Ok(())
}

/// (name, frame bytes) -> ns per run, per round.
type Samples = BTreeMap<(String, usize), Vec<f64>>;

fn program_costs(s: &Settings) -> Result<Samples> {
    eprintln!(
        "==> per-program cost: {} rounds of {} BPF_PROG_TEST_RUNs per program",
        s.rounds, s.runs
    );
    let l = Loaded::new("bench")?;
    classify_costs(&l)?;
    let mut samples = Samples::new();
    let ip = Ipv4::new(progtest::REMOTE, progtest::VTEP, 17);
    for size in FRAME_SIZES {
        // `size` is the VM's frame; decapsulation sees it plus 50 bytes of outer headers.
        let vm_frame = |dst, src| packet::inner_ping(dst, src, size - 42);
        let decap_frame = packet::vxlan_frame(
            progtest::UNDERLAY_MAC,
            progtest::NEXT_HOP_MAC,
            &ip,
            50000,
            progtest::VNI,
            &vm_frame(progtest::VM1, progtest::VM2),
        );
        let to_remote = vm_frame(progtest::VM2, progtest::VM1);
        let to_local = vm_frame(progtest::VM3, progtest::VM1);
        // Asked on the untagged test port (VNI), where VM7's address is known.
        let arp_request =
            packet::arp_request(progtest::VM1, [192, 168, 10, 1].into(), progtest::VM7_IP);
        let rows: [(&str, Program, &[u8]); 6] = [
            ("xdp_pass (baseline)", Program::XdpPass, &decap_frame),
            (
                "decap xdp_underlay_rx",
                Program::XdpUnderlayRx,
                &decap_frame,
            ),
            ("decap tc_underlay_rx", Program::TcUnderlayRx, &decap_frame),
            ("encap tc_vm_egress", Program::TcVmEgress, &to_remote),
            ("local switch tc_vm_egress", Program::TcVmEgress, &to_local),
            ("ARP reply tc_vm_egress", Program::TcVmEgress, &arp_request),
        ];
        // One run per call: with `repeat`, the kernel reruns the program on the frame the
        // previous run left (already encapsulated or decapsulated), which measures another
        // path. Rows alternate; each sample is the median of a batch of single runs.
        for _ in 0..s.rounds {
            for (name, program, frame) in rows {
                let mut batch = Vec::with_capacity(s.runs as usize);
                for _ in 0..s.runs {
                    batch.push(l.run(program, frame, 1)?.2);
                }
                samples
                    .entry((name.to_string(), size))
                    .or_default()
                    .push(stats(&batch).0);
            }
        }
        if size == FRAME_SIZES[0] {
            profile_programs(&l, &rows, &samples, s.runs)?;
        }
    }
    Ok(samples)
}

/// Where each program's nanoseconds (over xdp_pass, 64-byte frames) go, from perf samples
/// taken while it runs alone: `target/bench/ns-by-program.svg`. Skipped, said so, without
/// perf.
fn profile_programs(
    l: &Loaded,
    rows: &[(&str, Program, &[u8])],
    samples: &Samples,
    runs: u32,
) -> Result<()> {
    let size = FRAME_SIZES[0];
    let base = stats(&samples[&("xdp_pass (baseline)".to_string(), size)]).0;
    let mut bars = Vec::new();
    println!(
        "
Where the ns go (64 B; perf samples inside each program, share of its ns over xdp_pass)"
    );
    for &(name, program, frame) in rows.iter().skip(1) {
        let recording = match profile::Recording::start(&program.name().replace('_', "")) {
            Ok(r) => r,
            Err(e) => {
                println!("  skipped: {e:#}");
                return Ok(());
            }
        };
        for _ in 0..runs.max(50_000) {
            l.run(program, frame, 1)?;
        }
        let shares = recording.classes(program.name())?;
        let ns = stats(&samples[&(name.to_string(), size)]).0 - base;
        let parts: Vec<String> = profile::CLASSES
            .iter()
            .filter_map(|c| shares.get(c).map(|s| format!("{c} {:.0}", s * ns)))
            .collect();
        println!("  {name:<28} +{ns:>4.0} ns: {}", parts.join(", "));
        bars.push((name.to_string(), ns, shares));
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("ns-by-program.svg"), profile::svg(&bars))?;
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Config {
    Raw,
    Kernel,
    /// The kernel's vxlan+bridge with a trivial XDP program on the underlay veth: what
    /// attaching XDP to a veth costs by itself (its peer loses TSO), apart from nve.
    KernelXdpPass,
    NveTc,
    NveXdp,
}

impl Config {
    const ALL: [Config; 5] = [
        Config::Raw,
        Config::Kernel,
        Config::KernelXdpPass,
        Config::NveTc,
        Config::NveXdp,
    ];

    fn name(self) -> &'static str {
        match self {
            Config::Raw => "veth+bridge (no VXLAN, ceiling)",
            Config::Kernel => "kernel vxlan+bridge",
            Config::KernelXdpPass => "kernel vxlan+bridge, xdp_pass on ul",
            Config::NveTc => "nve tc",
            Config::NveXdp => "nve xdp",
        }
    }
}

/// A two-host rig in one configuration; its daemons (and XDP programs) go before its
/// namespaces.
struct Setup {
    _daemons: Vec<Daemon>,
    _xdp: Vec<Loaded>,
    rig: TwoHosts,
}

fn build(config: Config, round: usize) -> Result<Setup> {
    let tag = format!("b{round}{}", config as u8);
    let rig = TwoHosts::new(&tag)?;
    let mut daemons = Vec::new();
    let mut xdp = Vec::new();
    match config {
        Config::Raw => {
            for (host, port) in [(&rig.h1, "vm1p"), (&rig.h2, "vm2p")] {
                host.ip(&["link", "add", "br0", "type", "bridge"])?;
                host.ip(&["link", "set", "ul", "master", "br0"])?;
                host.ip(&["link", "set", port, "master", "br0"])?;
                host.ip(&["link", "set", "br0", "up"])?;
            }
        }
        Config::Kernel | Config::KernelXdpPass => {
            overlay::kernel_vxlan(&rig.h1, H1_VTEP, H2_VTEP, "vm1p", &[VM2_MAC])?;
            overlay::kernel_vxlan(&rig.h2, H2_VTEP, H1_VTEP, "vm2p", &[VM1_MAC])?;
            if config == Config::KernelXdpPass {
                for host in [&rig.h1, &rig.h2] {
                    xdp.push(xdp_pass_on_underlay(host)?);
                }
            }
        }
        Config::NveTc | Config::NveXdp => {
            let mode = if config == Config::NveXdp {
                "xdp"
            } else {
                "tc"
            };
            if config == Config::NveXdp {
                // veth leaves inner checksums to be filled (CHECKSUM_PARTIAL), which XDP
                // cannot see: senders finish them (this also turns their TSO off), and the
                // VMs' veths need GRO to take XDP redirects.
                for (host, vm) in [(&rig.h1, &rig.vm1), (&rig.h2, &rig.vm2)] {
                    host.exec(&["ethtool", "-K", "ul", "tx", "off"])?;
                    vm.ns.exec(&["ethtool", "-K", "eth0", "gro", "on"])?;
                }
            }
            for side in [Side::H1, Side::H2] {
                daemons.push(overlay::nve(
                    &rig,
                    side,
                    &format!("{tag}{side:?}"),
                    &["--underlay-mode", mode],
                )?);
            }
        }
    }
    rig.vm1.ping_until_reachable(VM2_IP, 5)?;
    Ok(Setup {
        _daemons: daemons,
        _xdp: xdp,
        rig,
    })
}

/// The trivial XDP program attached to `host`'s underlay veth (detached when dropped).
fn xdp_pass_on_underlay(host: &Netns) -> Result<Loaded> {
    let tag = format!("xp-{}", host.name);
    nve_tests::rig::in_netns(host, move || {
        let mut l = Loaded::new(&tag)?;
        let p: &mut Xdp = l
            .ebpf
            .program_mut("xdp_pass")
            .context("xdp_pass")?
            .try_into()?;
        p.attach("ul", XdpMode::default())?;
        Ok(l)
    })
}

/// Figure name -> config -> samples; plus what bounded each sample.
#[derive(Default)]
struct Traffic {
    samples: BTreeMap<String, BTreeMap<Config, Vec<f64>>>,
    notes: BTreeMap<String, BTreeMap<Config, Vec<String>>>,
}

impl Traffic {
    fn add(&mut self, figure: &str, config: Config, value: f64, note: String) {
        self.samples
            .entry(figure.into())
            .or_default()
            .entry(config)
            .or_default()
            .push(value);
        self.notes
            .entry(figure.into())
            .or_default()
            .entry(config)
            .or_default()
            .push(note);
    }
}

fn traffic(s: &Settings) -> Result<Traffic> {
    let mut t = Traffic::default();
    for round in 0..s.rounds {
        for config in Config::ALL {
            eprintln!("==> round {}/{}: {}", round + 1, s.rounds, config.name());
            let setup = build(config, round).with_context(|| config.name())?;
            for streams in [1u32, 4] {
                let (gbps, retrans) = tcp(&setup.rig, streams, s.seconds)?;
                t.add(
                    &format!("TCP {streams} stream(s), Gbit/s"),
                    config,
                    gbps,
                    retrans.to_string(),
                );
            }
            let (kpps, sent) = small_packets(&setup.rig, s.seconds)?;
            let loss = if sent > 0.0 {
                (100.0 * (1.0 - kpps * 1000.0 * s.seconds as f64 / sent)).max(0.0)
            } else {
                0.0
            };
            t.add(
                "60-byte frames, kpps at the far VM",
                config,
                kpps,
                format!("{loss:.0}%"),
            );
        }
    }
    Ok(t)
}

fn tcp(rig: &TwoHosts, streams: u32, seconds: u32) -> Result<(f64, u64)> {
    rig.vm2
        .ns
        .exec(&["iperf3", "-s", "-1", "-D", "-p", "5201"])?;
    thread::sleep(Duration::from_millis(300));
    let out = rig.vm1.ns.exec(&[
        "timeout",
        &(seconds + 20).to_string(),
        "iperf3",
        "-c",
        VM2_IP,
        "-p",
        "5201",
        "-t",
        &seconds.to_string(),
        "-P",
        &streams.to_string(),
        "-J",
    ])?;
    let v: Value = serde_json::from_str(&out)?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON")?;
    let retrans = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    Ok((bps / 1e9, retrans))
}

fn link_packets(ns: &Netns, dir: &str) -> Result<u64> {
    let v: Value = serde_json::from_str(&ns.ip(&["-s", "-j", "link", "show", "eth0"])?)?;
    v[0]["stats64"][dir]["packets"]
        .as_u64()
        .context("ip -s -j link")
}

/// 60-byte UDP frames from vm1 to vm2 with trafgen (one process per CPU): (kpps received by
/// vm2, frames vm1 sent) over a `seconds` window after a warm-up. trafgen is bounded by a
/// frame count and killed after the window.
fn small_packets(rig: &TwoHosts, seconds: u32) -> Result<(f64, f64)> {
    let frame = small_frame(&rig.vm1, &rig.vm2);
    let bytes: Vec<String> = frame.iter().map(|b| format!("0x{b:02x}")).collect();
    let conf = PathBuf::from(format!("/tmp/{}-trafgen.cfg", rig.vm1.ns.name));
    fs::write(&conf, format!("{{ {} }}\n", bytes.join(", ")))?;
    let limit = (2_000_000 * (seconds + 2)).to_string();
    let mut child = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &rig.vm1.ns.name,
            "trafgen",
            "--dev",
            "eth0",
            "-q",
            "-n",
            &limit,
            "--conf",
        ])
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()?;
    thread::sleep(Duration::from_millis(500));
    let (rx0, tx0) = (
        link_packets(&rig.vm2.ns, "rx")?,
        link_packets(&rig.vm1.ns, "tx")?,
    );
    thread::sleep(Duration::from_secs(seconds.into()));
    let (rx1, tx1) = (
        link_packets(&rig.vm2.ns, "rx")?,
        link_packets(&rig.vm1.ns, "tx")?,
    );
    // SAFETY: killing the process group we created.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
    let _ = fs::remove_file(&conf);
    Ok((
        (rx1 - rx0) as f64 / seconds as f64 / 1000.0,
        (tx1 - tx0) as f64,
    ))
}

fn small_frame(from: &Vm, to: &Vm) -> Vec<u8> {
    let ip = Ipv4::new([192, 168, 10, 1].into(), to.ip.parse().expect("VM IP"), 17);
    let frame = packet::eth(
        to.mac,
        from.mac,
        0x0800,
        &ip.packet(&packet::udp(9, 9, &[0; 18])),
    );
    debug_assert_eq!(frame.len(), 60);
    frame
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn report(programs: &Samples, traffic: &Traffic, quick: bool) -> Result<()> {
    let mut out = String::new();
    let mut json_programs = Vec::new();
    out.push_str(
        "\nPer-program cost (BPF_PROG_TEST_RUN, one run per call; its timing of a single run\n\
         includes the kernel's timer, about 60 ns here. VM frame size; median [min-max] ns;\n\
         ratio to xdp_pass; ns added over xdp_pass)\n",
    );
    for size in FRAME_SIZES {
        // Absent with --only-traffic.
        let Some(base) = programs.get(&("xdp_pass (baseline)".to_string(), size)) else {
            continue;
        };
        let base = stats(base).0;
        for ((name, sz), v) in programs.iter().filter(|((_, sz), _)| *sz == size) {
            let (med, min, max) = stats(v);
            writeln!(
                out,
                "  {name:<28} {sz:>5} B  {med:>7.1} [{min:.1}-{max:.1}]  x{:.2}  +{:.0} ns",
                med / base,
                med - base
            )?;
            json_programs.push(json!({"program": name, "frame_bytes": sz, "ns_median": med, "ns_min": min, "ns_max": max, "ratio_to_xdp_pass": med / base, "ns_over_xdp_pass": med - base}));
        }
    }
    let mut json_traffic = Vec::new();
    let mut plot = Vec::new();
    writeln!(
        out,
        "\nVM to VM across two hosts (median [min-max]; ratio to kernel vxlan+bridge)"
    )?;
    for (figure, configs) in &traffic.samples {
        writeln!(out, "  {figure}")?;
        let kernel = configs
            .get(&Config::Kernel)
            .map(|v| stats(v).0)
            .unwrap_or(f64::NAN);
        for (config, v) in configs {
            let (med, min, max) = stats(v);
            let what = if figure.starts_with("TCP") {
                "retransmits"
            } else {
                "sent, not received"
            };
            let notes = format!("{what}: {}", traffic.notes[figure][config].join(", "));
            writeln!(
                out,
                "    {:<34} {med:>8.2} [{min:.2}-{max:.2}]  x{:.2}  ({notes})",
                config.name(),
                med / kernel
            )?;
            json_traffic.push(json!({"figure": figure, "config": config.name(), "median": med, "min": min, "max": max, "ratio_to_kernel_vxlan": med / kernel, "bounded_by": notes}));
            plot.push((format!("{figure}: {}", config.name()), med / kernel));
        }
    }
    if quick {
        writeln!(
            out,
            "\n(--quick: one short round, a smoke run, not a measurement)"
        )?;
    }
    print!("{out}");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    fs::create_dir_all(&dir)?;
    fs::write(
        dir.join("bench.json"),
        serde_json::to_string_pretty(
            &json!({"quick": quick, "programs": json_programs, "traffic": json_traffic}),
        )?,
    )?;
    fs::write(dir.join("ratios.svg"), svg(&plot))?;
    eprintln!("wrote {}/bench.json and ratios.svg", dir.display());
    Ok(())
}

/// A horizontal bar chart of ratios to the kernel's vxlan+bridge (1.0 marked).
fn svg(bars: &[(String, f64)]) -> String {
    let (w, row, left) = (900.0, 22.0, 430.0);
    let max = bars
        .iter()
        .map(|b| b.1)
        .filter(|r| r.is_finite())
        .fold(1.5f64, f64::max);
    let scale = (w - left - 60.0) / max;
    let h = row * bars.len() as f64 + 40.0;
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n"
    );
    for (i, (label, r)) in bars.iter().enumerate() {
        let y = 20.0 + i as f64 * row;
        let r = if r.is_finite() { *r } else { 0.0 };
        let _ = writeln!(
            s,
            "<text x='{}' y='{}' text-anchor='end'>{label}</text>",
            left - 6.0,
            y + 14.0
        );
        let _ = writeln!(
            s,
            "<rect x='{left}' y='{}' width='{:.1}' height='{}' fill='#4a7ab5'/>",
            y + 3.0,
            r * scale,
            row - 6.0
        );
        let _ = writeln!(
            s,
            "<text x='{:.1}' y='{}'>x{r:.2}</text>",
            left + r * scale + 4.0,
            y + 14.0
        );
    }
    let x1 = left + scale;
    let _ = writeln!(
        s,
        "<line x1='{x1:.1}' y1='10' x2='{x1:.1}' y2='{}' stroke='#c33' stroke-dasharray='4'/>",
        h - 10.0
    );
    s + "</svg>\n"
}
