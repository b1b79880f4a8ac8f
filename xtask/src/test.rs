//! `cargo xtask test`: formatting, clippy (host crates and the eBPF crate), unit tests, then
//! the integration tests, which need root: BPF_PROG_TEST_RUN tables and namespace rigs, run
//! one at a time against the freshly built `nve` binary (and the QEMU guest xtask builds).
use std::{path::PathBuf, process::Command};

use anyhow::{Result, bail};

use crate::{
    cmd::{self, cargo, step},
    guest, setup,
};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Only run integration tests whose name (`module::test`, the module named after its
    /// file in tests/tests/all) contains this.
    filter: Option<String>,
}

/// Crates built for the host (nve-ebpf is linted for the bpf target).
const HOST_CRATES: [&str; 4] = ["nve-common", "nve-user", "xtask", "nve-tests"];

pub fn require_root(what: &str) -> Result<()> {
    if !setup::is_root() {
        bail!("{what} needs root (network namespaces, BPF programs): run it as root");
    }
    Ok(())
}

/// `cargo xtask test`: everything `check` does, then the root-only tests.
pub fn run(args: &TestArgs) -> Result<()> {
    setup::all()?;
    require_root("the test suite")?;
    check_steps()?;
    integration(args)
}

/// `cargo xtask check`: formatting, clippy, the core lint and the unit tests; no root (a
/// contributor's laptop).
pub fn check() -> Result<()> {
    setup::toolchain()?;
    check_steps()
}

fn check_steps() -> Result<()> {
    step("cargo fmt --check");
    cargo(&["fmt", "--all", "--", "--check"])?;
    step("clippy (host crates)");
    let mut clippy = vec!["clippy"];
    clippy.extend(HOST_CRATES.iter().flat_map(|c| ["-p", c]));
    clippy.extend(["--all-targets", "--", "-D", "warnings"]);
    cargo(&clippy)?;
    step("clippy (nve-ebpf, bpf target)");
    cmd::run(
        Command::new(env!("CARGO"))
            .args([
                "clippy",
                "-p",
                "nve-ebpf",
                "--release",
                "--target",
                "bpfel-unknown-none",
            ])
            .args(["-Z", "build-std=core", "--", "-D", "warnings"])
            .env("RUSTC_BOOTSTRAP", "1"),
    )?;
    step("lint: the core of nve-user is pure");
    crate::lint::core_is_pure(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))?;
    step("unit tests");
    cargo(&["test", "-p", "nve-common", "-p", "nve-user", "-p", "xtask"])
}

/// The integration tests, which need root: BPF_PROG_TEST_RUN tables and namespace rigs.
fn integration(args: &TestArgs) -> Result<()> {
    step("building nve");
    cargo(&["build", "-p", "nve-user"])?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let nve = root.join("target/debug/nve");
    // The real-hypervisor tests boot it under QEMU (tests/tests/all/qemu_migration.rs).
    let guest = guest::build()?;
    step("integration tests (root: BPF_PROG_TEST_RUN, namespace rigs)");
    let mut c = Command::new(env!("CARGO"));
    c.args(["test", "-p", "nve-tests", "--tests", "--"]);
    if let Some(f) = &args.filter {
        c.arg(f);
    }
    c.args(["--test-threads=1"])
        .env("NVE_BIN", nve)
        .env("NVE_GUEST_DIR", &guest.dir);
    cmd::run(&mut c)
}
