//! Fresh-machine bootstrap. Each check is cheap; each install happens once per machine and
//! lives outside the clone (rustup's components, cargo's bin dir, Debian's packages), so
//! fresh clones and CI reuse it.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, output, step};

/// The bpf-linker release that links for LLVM 22 (rustc 1.95's).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the rigs, tests, demo and bench use.
const PACKAGES: &[&str] = &[
    "iproute2",
    "bpftool",
    "ethtool",
    "iputils-ping",
    "iperf3",
    "tcpdump",
    "tshark",
    "netsniff-ng",
    "curl",
    "etcd-server",
];

pub fn all() -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    packages()
}

fn rust_src() -> Result<()> {
    let installed = output(
        "rustup",
        &["component", "list", "--installed", "--toolchain", "stable"],
    )
    .context("rustup not found: the stable toolchain comes from rustup")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        step("rust-src: present");
        return Ok(());
    }
    step("rust-src: installing for the stable toolchain");
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "stable"]))
}

fn home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")
}

/// bpf-linker built against the libLLVM that ships with rustc (no system LLVM needed), in
/// cargo's bin dir. A stamp records which rustc it was built for: a toolchain update with a
/// new LLVM rebuilds it.
fn bpf_linker() -> Result<()> {
    let sysroot = output("rustc", &["+stable", "--print", "sysroot"]).context("rustc +stable")?;
    let verbose = output("rustc", &["+stable", "-vV"]).context("rustc -vV")?;
    let llvm_major = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc -vV shows no LLVM version")?
        .to_string();
    let stamp_path = home()?.join(".cache/nve/bpf-linker.stamp");
    let stamp = format!("bpf-linker {BPF_LINKER_VERSION}\n{verbose}\n");
    let have = output("bpf-linker", &["--version"]).unwrap_or_default();
    if have.contains(BPF_LINKER_VERSION)
        && fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str())
    {
        step(&format!("bpf-linker {BPF_LINKER_VERSION}: present"));
        return Ok(());
    }
    step(&format!(
        "bpf-linker {BPF_LINKER_VERSION}: building against rustc's LLVM {llvm_major} (about a minute)"
    ));
    let lib = Path::new(&sysroot).join("lib");
    let so = fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {} (is this a rustup toolchain?)",
                lib.display()
            )
        })?;
    let prefix = home()?.join(format!(".cache/nve/llvm-prefix-{llvm_major}"));
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    // Both names are needed: the linker looks for libLLVM.so, the soname is the versioned one.
    for name in ["libLLVM.so", so.as_str()] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&so), &link)?;
    }
    cmd::run(
        Command::new("cargo")
            .args([
                "+stable",
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    if output("bpf-linker", &["--version"]).is_none() {
        bail!("bpf-linker installed but not on PATH: add cargo's bin dir (~/.cargo/bin) to PATH");
    }
    fs::create_dir_all(stamp_path.parent().expect("has a parent"))?;
    fs::write(&stamp_path, stamp)?;
    Ok(())
}

fn installed(package: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", package])
        .is_some_and(|s| s.ends_with("installed") && s.contains("ok"))
}

fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        step("Debian packages: present");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}: run as root, or `apt-get install {}`",
            missing.join(" ")
        );
    }
    step(&format!(
        "Debian packages: installing {}",
        missing.join(" ")
    ));
    cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    if missing.contains(&"etcd-server") {
        // The tests run their own etcd inside their namespaces; the package's system-wide
        // service is not wanted on a build machine (where there is no systemd, nothing runs).
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "etcd"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    Ok(())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: no arguments, no side effects.
    unsafe { libc::geteuid() == 0 }
}
