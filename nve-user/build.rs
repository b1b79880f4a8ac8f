use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Builds nve-ebpf for the bpf target and leaves the object in OUT_DIR for `include_bytes_aligned!`.
///
/// The eBPF crate needs `-Z build-std=core`; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept
/// it for that inner build only (this build script's environment is its own).
fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "nve-ebpf")
        .ok_or_else(|| anyhow!("nve-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("nve-ebpf manifest has no parent"))?;
    // SAFETY: build scripts are single-threaded here; the variable is read by aya-build and
    // inherited by the cargo it spawns.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom("stable"),
    )
}
