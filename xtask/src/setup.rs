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
    // The vdp tests: the station (lldpad, vdptool, lldptool) and deterministic ECP loss
    // (nft, netdev egress: tc's gact is not in every kernel).
    "nftables",
    "lldpad",
    // The EVPN tests' BGP peer: FRR's zebra and bgpd over the kernel's bridge and vxlan.
    "frr",
    // The QEMU guests' userland (a static busybox in the initramfs).
    "busybox-static",
    // The unit file's check (`systemd-analyze verify`, which looks up its `man:` pages
    // with man) and the daemon run with the unit's capabilities only (util-linux's setpriv).
    "systemd",
    "man-db",
    "util-linux",
];

/// QEMU for the real-guest tests, from bookworm-backports: bookworm's 7.2 corrupted a migrated
/// guest under a TCP stream in about 1 run of 3 (docs: toolchain.md).
const QEMU_PACKAGE: &str = "qemu-system-x86";
const QEMU_MIN_MAJOR: u32 = 10;
const BACKPORTS: &str = "bookworm-backports";
/// Our deb822 source for bookworm-backports (Debian's archive, Debian's keyring).
const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/nve-bookworm-backports.sources";
/// Where the machine's own Debian source lives: the backports source copies its URI and keyring.
const DEBIAN_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";

pub fn all() -> Result<()> {
    toolchain()?;
    packages()?;
    qemu()
}

/// What building needs (rustup's rust-src, bpf-linker in cargo's bin dir): no root.
pub fn toolchain() -> Result<()> {
    rust_src()?;
    bpf_linker()
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
    for (package, service) in UNWANTED_SERVICES {
        if missing.contains(package) {
            let _ = Command::new("systemctl")
                .args(["disable", "--now", service])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
    Ok(())
}

/// Packages whose system-wide service is not wanted on a build machine: the tests run their
/// own etcd and FRR inside their namespaces (where there is no systemd, nothing runs).
const UNWANTED_SERVICES: &[(&str, &str)] = &[("etcd-server", "etcd"), ("frr", "frr")];

/// The installed version of `package` (`1:10.0.2+ds-2~bpo12+1`), if installed.
fn installed_version(package: &str) -> Option<String> {
    installed(package)
        .then(|| output("dpkg-query", &["-W", "-f=${Version}", package]))
        .flatten()
}

/// The upstream major version of a Debian version string: `1:10.0.2+ds-2` -> 10.
fn upstream_major(version: &str) -> Option<u32> {
    let upstream = version.split_once(':').map_or(version, |(_, v)| v);
    upstream.split(['.', '+', '-', '~']).next()?.parse().ok()
}

/// qemu-system-x86 >= 10. On bookworm it comes from bookworm-backports: the source is added
/// (once) and the package installed with `-t bookworm-backports`; a later release's own QEMU
/// is taken as it is if it is new enough.
fn qemu() -> Result<()> {
    let have = installed_version(QEMU_PACKAGE);
    if let Some(v) = &have
        && upstream_major(v).is_some_and(|m| m >= QEMU_MIN_MAJOR)
    {
        step(&format!("{QEMU_PACKAGE} {v}: present"));
        return Ok(());
    }
    let what = match &have {
        Some(v) => format!("{QEMU_PACKAGE} {v} is older than {QEMU_MIN_MAJOR}"),
        None => format!("{QEMU_PACKAGE} is missing"),
    };
    if !is_root() {
        bail!("{what}: run as root to install it from {BACKPORTS}");
    }
    let codename = fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .unwrap_or_default();
    let mut install = Command::new("apt-get");
    install.args(["install", "-y", "-q", "--no-install-recommends"]);
    if codename == "bookworm" {
        step(&format!("{what}: installing it from {BACKPORTS}"));
        backports_source()?;
        install.args(["-t", BACKPORTS]);
    } else {
        step(&format!("{what}: installing it ({codename})"));
    }
    cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
    cmd::run(
        install
            .arg(QEMU_PACKAGE)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    match installed_version(QEMU_PACKAGE) {
        Some(v) if upstream_major(&v).is_some_and(|m| m >= QEMU_MIN_MAJOR) => {
            step(&format!("{QEMU_PACKAGE} {v}: installed"));
            Ok(())
        }
        v => bail!(
            "{QEMU_PACKAGE} {} installed, the tests need >= {QEMU_MIN_MAJOR} \
             (`apt-cache policy {QEMU_PACKAGE}` shows what {BACKPORTS} offers)",
            v.unwrap_or_else(|| "not".into())
        ),
    }
}

/// Writes the bookworm-backports source, with the URI and keyring of the machine's own Debian
/// source (a mirror stays the mirror), unless it is already there.
fn backports_source() -> Result<()> {
    let (uri, keyring) = debian_archive(&fs::read_to_string(DEBIAN_SOURCES).unwrap_or_default());
    let text = format!(
        "# Added by nve's `cargo xtask setup`: QEMU >= {QEMU_MIN_MAJOR} for the real-guest tests.\n\
         Types: deb\nURIs: {uri}\nSuites: {BACKPORTS}\nComponents: main\nSigned-By: {keyring}\n"
    );
    if fs::read_to_string(BACKPORTS_SOURCES).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    step(&format!(
        "apt: adding {BACKPORTS} ({uri}) as {BACKPORTS_SOURCES}"
    ));
    fs::write(BACKPORTS_SOURCES, text).with_context(|| format!("writing {BACKPORTS_SOURCES}"))
}

/// The URI and keyring of the deb822 stanza that serves `bookworm` itself (not -security),
/// or Debian's defaults.
fn debian_archive(sources: &str) -> (String, String) {
    let mut uri = "http://deb.debian.org/debian".to_string();
    let mut keyring = "/usr/share/keyrings/debian-archive-keyring.gpg".to_string();
    for stanza in sources.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        let serves_bookworm =
            field("Suites:").is_some_and(|s| s.split_whitespace().any(|s| s == "bookworm"));
        if serves_bookworm && let Some(u) = field("URIs:") {
            uri = u.split_whitespace().next().unwrap_or(&u).to_string();
            if let Some(k) = field("Signed-By:") {
                keyring = k;
            }
            break;
        }
    }
    (uri, keyring)
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: no arguments, no side effects.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_major_of_debian_versions() {
        assert_eq!(upstream_major("1:10.0.2+ds-2+deb13u1~bpo12+1"), Some(10));
        assert_eq!(upstream_major("1:7.2+dfsg-7+deb12u18+b3"), Some(7));
        assert_eq!(upstream_major("10.1"), Some(10));
        assert_eq!(upstream_major("garbage"), None);
    }

    #[test]
    fn backports_take_the_machines_debian_uri_and_keyring() {
        let sources = "Types: deb\n# a comment\nURIs: http://mirror.example/debian\n\
                       Suites: bookworm bookworm-updates\nComponents: main\n\
                       Signed-By: /k.gpg\n\nTypes: deb\nURIs: http://x/debian-security\n\
                       Suites: bookworm-security\n";
        assert_eq!(
            debian_archive(sources),
            ("http://mirror.example/debian".into(), "/k.gpg".into())
        );
        assert_eq!(debian_archive("").0, "http://deb.debian.org/debian");
    }
}
