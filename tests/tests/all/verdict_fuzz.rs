//! Randomized verdicts (`nve_tests::fuzz`): per program at least 100,000 generated and
//! mutated frames through BPF_PROG_TEST_RUN, each checked against the reference model and
//! the isolation invariants; and every outcome the configuration makes possible must come
//! up, so that a generator that stops producing some kind of frame fails.
//!
//! Deterministic: a fixed seed per program (`NVE_FUZZ_SEED` overrides it, `NVE_FUZZ_FRAMES`
//! the count).
use nve_common::metrics::{DropReason, Forward, Outcome};
use nve_tests::{fuzz, progtest::Program, rig::require_root};

const FRAMES: usize = 100_000;

#[test]
fn xdp_underlay_rx_matches_the_model() {
    fuzz(Program::XdpUnderlayRx, 0x6e76_6501);
}

#[test]
fn tc_underlay_rx_matches_the_model() {
    fuzz(Program::TcUnderlayRx, 0x6e76_6502);
}

#[test]
fn tc_vm_egress_matches_the_model() {
    fuzz(Program::TcVmEgress, 0x6e76_6503);
}

#[test]
fn tc_tunnel_rx_matches_the_model() {
    fuzz(Program::TcTunnelRx, 0x6e76_6504);
}

fn fuzz(program: Program, seed: u64) {
    require_root();
    let seed = env_or("NVE_FUZZ_SEED", seed);
    let frames = env_or("NVE_FUZZ_FRAMES", FRAMES as u64) as usize;
    let report = fuzz::run(program, seed, frames);
    println!("{}", report.summary());
    let min_hits = (MIN_HITS * frames / FRAMES).max(1);
    let unreached: Vec<&str> = must_reach(program)
        .iter()
        .map(|o| o.name())
        .filter(|name| report.predicted.get(name).copied().unwrap_or(0) < min_hits)
        .collect();
    assert!(
        report.mismatches == 0 && unreached.is_empty(),
        "{}: {} of {} frames disagree with the model; outcomes the model predicted fewer \
         than {min_hits} times: {unreached:?} (seed {seed:#x})",
        program.name(),
        report.mismatches,
        report.frames
    );
}

/// How often, per 100,000 frames, each outcome of [`must_reach`] must be predicted: a
/// generator that stops producing some kind of frame fails the test instead of quietly
/// testing less.
const MIN_HITS: usize = 20;

/// Every outcome the configuration makes possible for `program` in a test run.
fn must_reach(program: Program) -> Vec<Outcome> {
    use {DropReason as D, Forward as F};
    let (f, d) = (Outcome::Forward, Outcome::Drop);
    let decap = [
        f(F::PassedToHost),
        f(F::PassedFragment),
        d(D::VxlanInvalidHdr),
        d(D::InnerTruncated),
        d(D::VniNotFound),
        d(D::VtepNotInVn),
        d(D::FdbMiss),
        d(D::UnderlayHairpin),
        d(D::VnicInactive),
        f(F::Decapsulated),
    ];
    match program {
        Program::XdpUnderlayRx => [&decap[..], &[f(F::DeferredToTc)]].concat(),
        Program::TcUnderlayRx => [
            &decap[..],
            &[
                f(F::ToKernelVxlan),
                f(F::Flooded),
                f(F::ForwardedToVtep),
                d(D::FloodListEmpty),
                d(D::HeaderAdjustFailed),
                d(D::ForwardIpOptions),
            ],
        ]
        .concat(),
        Program::TcVmEgress => vec![
            d(D::PktTooSmall),
            d(D::VlanStacked),
            d(D::PortNotInVn),
            d(D::VnicInactive),
            d(D::SpoofedSrcMac),
            d(D::SpoofedSrcIp),
            f(F::ArpReplied),
            f(F::NdReplied),
            f(F::Flooded),
            d(D::FloodListEmpty),
            f(F::LocalSwitched),
            f(F::Encapsulated),
            f(F::IcmpTooBig),
            d(D::FdbMiss),
        ],
        Program::TcTunnelRx => vec![d(D::TunnelKeyMissing)],
        Program::XdpPass => vec![],
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={v}: not a number"))
        }
        Err(_) => default,
    }
}
