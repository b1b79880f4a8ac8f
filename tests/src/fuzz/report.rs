//! What a fuzzing run reports: counts per outcome and the mismatches, described.
use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use crate::{
    progtest::Program,
    reference::{Output, Prediction},
};

/// What a run of one program over generated frames found.
pub struct Report {
    pub program: Program,
    pub seed: u64,
    /// Frames run (those BPF_PROG_TEST_RUN refused not counted).
    pub frames: usize,
    pub refused: usize,
    pub mutated: usize,
    pub elapsed: Duration,
    /// Frames per observed outcome.
    pub outcomes: BTreeMap<String, usize>,
    /// Frames per outcome the model predicted.
    pub predicted: BTreeMap<&'static str, usize>,
    pub mismatches: usize,
    /// The first mismatches, described.
    pub shown: Vec<String>,
}

impl Report {
    pub fn new(program: Program, seed: u64) -> Self {
        Self {
            program,
            seed,
            frames: 0,
            refused: 0,
            mutated: 0,
            elapsed: Duration::ZERO,
            outcomes: BTreeMap::new(),
            predicted: BTreeMap::new(),
            mismatches: 0,
            shown: Vec::new(),
        }
    }

    /// Counts, outcomes and the first mismatches, for the test's output.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}: {} frames ({} mutated) in {:.1?} ({:.1} us/frame), seed {:#x}; {} more \
             refused by BPF_PROG_TEST_RUN (too short for their ethertype)\n  outcomes: {:?}\n",
            self.program.name(),
            self.frames,
            self.mutated,
            self.elapsed,
            self.elapsed.as_secs_f64() * 1e6 / self.frames.max(1) as f64,
            self.seed,
            self.refused,
            self.outcomes,
        );
        if self.mismatches == 0 {
            s.push_str("  no mismatch\n");
            return s;
        }
        let _ = writeln!(s, "  {} mismatches:", self.mismatches);
        for m in &self.shown {
            s.push_str(m);
        }
        s
    }
}

/// A mismatch: the frame, what the model said and what the program did.
pub(super) fn describe(
    program: Program,
    frame: &[u8],
    want: &Prediction,
    rc: u32,
    out: &[u8],
    problems: &[String],
) -> String {
    let mut s = format!(
        "  - {} frame ({} bytes) {}\n      model: {} {:?} (rc {}) {}\n      got:   rc {rc}\n",
        program.name(),
        frame.len(),
        hex(frame),
        want.outcome.name(),
        want.verdict,
        want.code(program),
        output_summary(&want.output),
    );
    let _ = writeln!(s, "      out:   {}", short_hex(out));
    for problem in problems {
        let _ = writeln!(s, "      {problem}");
    }
    s
}

fn output_summary(o: &Output) -> String {
    match o {
        Output::Unchanged => "unchanged".into(),
        Output::Dropped => "dropped".into(),
        Output::Delivered { vni, port, frame } => {
            format!("to {port:?} of VNI {vni}: {}", short_hex(frame))
        }
        Output::Encapsulated { vni, vtep, inner } => {
            format!("VNI {vni} to {vtep}: inner {}", short_hex(inner))
        }
        Output::Forwarded(frame) => format!("sent on: {}", short_hex(frame)),
        Output::Flooded {
            vni, ports, vteps, ..
        } => format!("VNI {vni} to {ports:?} and {vteps:?}"),
    }
}

/// The first 96 bytes of a long frame are enough to read its headers.
pub(super) fn short_hex(b: &[u8]) -> String {
    const SHOWN: usize = 96;
    if b.len() <= SHOWN {
        return hex(b);
    }
    format!("{}... ({} bytes)", hex(&b[..SHOWN]), b.len())
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}
