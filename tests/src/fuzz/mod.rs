//! Randomized verdicts: generated and mutated frames through BPF_PROG_TEST_RUN, each
//! checked against the reference model (`crate::reference`): return code, the one outcome
//! counter it moves, and the output bytes; and against the isolation invariants, which do
//! not trust the model: an encapsulated frame carries the VNI of the VN its port (VID)
//! belongs to, to a VTEP of that VN; a decapsulated frame comes from a VNI this NVE serves
//! and goes to a MAC that VN places on a forwarding local port.
//!
//! Deterministic: the same seed gives the same frames. Each program runs in a network
//! namespace of its own thread, where the VM ports of the configuration exist (veth), so
//! broadcast copies (`bpf_clone_redirect`) can be made; the namespace goes with the thread.
//! `tests/tests/all/verdict_fuzz.rs` runs it.
mod check;
mod counters;
mod generate;
mod mutate;
mod report;
mod rng;
mod run;
mod underlay;
mod vm;

pub use check::{isolation_problems, output_problems};
pub use counters::Counters;
pub use generate::Generator;
pub use report::Report;
pub use rng::Rng;
pub use run::run;
