//! `cargo xtask`: what cargo alone cannot do. Installs what a fresh machine lacks (rust-src,
//! bpf-linker, the rigs' Debian packages), runs the privileged test suite, the demo and the
//! bench. Every verb sets the machine up first; a second run finds everything in place.
use clap::{Parser, Subcommand};

mod cmd;
mod guest;
mod lint;
mod setup;
mod test;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Build the `nve` binary (release).
    Build,
    /// Lint, unit tests, then the root-only BPF and namespace tests.
    Test(test::TestArgs),
    /// Formatting, clippy, the core lint and unit tests: what needs no root.
    Check,
    /// Two hosts, one VM each, one VN: watch them talk over VXLAN.
    Demo,
    /// Build (or find cached) the QEMU guest of the real-hypervisor tests; prints its directory
    /// (the tests' `NVE_GUEST_DIR`).
    Guest,
    /// Per-program cost and VM-to-VM throughput against the kernel's vxlan+bridge.
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// One short round of everything (a smoke run, not a measurement).
    #[arg(long)]
    quick: bool,
}

/// Builds `nve` (release) and runs one of the rig binaries of nve-tests against it; `guest`:
/// with the QEMU guest too (built or found as for the tests), in `NVE_GUEST_DIR`.
fn run_bin(what: &str, bin: &str, args: &[&str], guest: bool) -> anyhow::Result<()> {
    setup::all()?;
    test::require_root(what)?;
    cmd::cargo(&["build", "--release", "-p", "nve-user"])?;
    let nve = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/nve");
    let mut c = std::process::Command::new(env!("CARGO"));
    if guest {
        c.env("NVE_GUEST_DIR", guest::build()?.dir);
    }
    cmd::run(
        c.args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "nve-tests",
            "--bin",
            bin,
            "--",
        ])
        .args(args)
        .env("NVE_BIN", nve),
    )
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Setup => setup::all(),
        Command::Build => {
            setup::all().and_then(|()| cmd::cargo(&["build", "--release", "-p", "nve-user"]))
        }
        Command::Test(args) => test::run(&args),
        Command::Check => test::check(),
        Command::Guest => setup::all()
            .and_then(|()| guest::build())
            .map(|g| println!("{}", g.dir.display())),
        Command::Demo => run_bin("the demo", "nve-demo", &[], false),
        Command::Bench(args) => {
            let quick: &[&str] = if args.quick { &["--quick"] } else { &[] };
            run_bin("the bench", "nve-bench", quick, true)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
