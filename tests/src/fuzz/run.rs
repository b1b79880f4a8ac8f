//! One program over generated frames, each checked as it comes back.
use std::time::Instant;

use super::{
    check::{isolation_problems, output_problems},
    counters::Counters,
    generate::Generator,
    report::{Report, describe},
};
use crate::{
    progtest::{Loaded, Program},
    reference::{self, Config},
    rig::run as run_command,
};

/// Mismatches printed in full (the rest are counted).
const SHOWN: usize = 20;

/// Runs `frames` frames from a generator seeded with `seed` through `program`, in a network
/// namespace of a thread of its own (it goes with the thread). Needs root.
pub fn run(program: Program, seed: u64, frames: usize) -> Report {
    std::thread::spawn(move || {
        // SAFETY: unshare on this thread only; it leaves the namespace when it ends.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        }
        run_here(program, seed, frames)
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// [`run`] in this thread's network namespace, where it creates the VM ports.
fn run_here(program: Program, seed: u64, frames: usize) -> Report {
    let cfg = Config::progtest();
    for ifindex in cfg.ifindexes() {
        if ifindex != cfg.ingress_ifindex {
            vm_port(ifindex);
        }
    }
    let loaded = Loaded::new(&format!("fuzz{}", program as u32)).expect("loading the dataplane");
    let mut counters = Counters::new(&loaded, program.hook());
    let mut generator = Generator::new(seed);
    let mut report = Report::new(program, seed);
    let start = Instant::now();
    while report.frames < frames {
        let (frame, mutated) = generator.frame(program);
        let (rc, out) = match loaded.run(program, &frame, 1) {
            Ok((rc, out, _)) => (rc, out),
            Err(_) => {
                report.refused += 1;
                continue;
            }
        };
        report.frames += 1;
        report.mutated += usize::from(mutated);
        check_frame(&cfg, &mut counters, &mut report, &frame, rc, &out);
    }
    report.elapsed = start.elapsed();
    let stray = counters.counted_since_last();
    if !stray.is_empty() {
        report.mismatches += 1;
        report.shown.push(format!(
            "  counters moved without a frame to account for them: {:?}\n",
            stray
                .iter()
                .map(|(s, n)| format!("{} +{n}", counters.name(*s)))
                .collect::<Vec<_>>()
        ));
    }
    report
}

/// Checks what the program did with `frame` (returned `rc`, put out `out`) against the
/// model and the isolation invariants, and counts it in `report`.
fn check_frame(
    cfg: &Config,
    counters: &mut Counters,
    report: &mut Report,
    frame: &[u8],
    rc: u32,
    out: &[u8],
) {
    let program = report.program;
    let want = reference::predict(cfg, program, frame);
    *report.predicted.entry(want.outcome.name()).or_default() += 1;
    let counted = counters.counted(want.outcome);
    let observed = match counted.as_slice() {
        [(slot, 1)] => Some(*slot),
        _ => None,
    };
    *report
        .outcomes
        .entry(observed.map_or("(several)".into(), |s| counters.name(s)))
        .or_default() += 1;
    let mut problems = Vec::new();
    if rc != want.code(program) {
        problems.push(format!(
            "returned {rc}, model: {:?} ({})",
            want.verdict,
            want.code(program)
        ));
    }
    if observed != Some(want.outcome.slot(program.hook())) {
        let got: Vec<String> = counted
            .iter()
            .map(|(s, n)| format!("{} +{n}", counters.name(*s)))
            .collect();
        problems.push(format!(
            "counted {}, model: {}",
            got.join(", "),
            want.outcome.name()
        ));
    }
    if rc == want.code(program) && observed == Some(want.outcome.slot(program.hook())) {
        output_problems(cfg, frame, &want, out, &mut problems);
    }
    let observed = observed.and_then(|s| counters.outcome(s));
    isolation_problems(cfg, program, frame, observed, out, &mut problems);
    if problems.is_empty() {
        return;
    }
    report.mismatches += 1;
    if report.shown.len() < SHOWN {
        report
            .shown
            .push(describe(program, frame, &want, rc, out, &problems));
    }
}

/// A device at `ifindex` in this thread's namespace, so clones to it succeed.
fn vm_port(ifindex: u32) {
    let (name, peer) = (format!("vmp{ifindex}"), format!("vmq{ifindex}"));
    let (index, peer_index) = (ifindex.to_string(), (ifindex + 1000).to_string());
    // A jumbo MTU: the model does not know port MTUs, and a clone of a frame over the MTU
    // fails (REDIRECT_FAILED).
    #[rustfmt::skip]
    run_command(&[
        "ip", "link", "add", &name, "index", &index, "mtu", "9000", "type", "veth",
        "peer", "name", &peer, "index", &peer_index, "mtu", "9000",
    ])
    .expect("creating a VM port");
    for dev in [&name, &peer] {
        run_command(&["ip", "link", "set", dev, "up"]).expect("setting a VM port up");
    }
}
