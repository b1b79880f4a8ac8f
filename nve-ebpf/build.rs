use which::which;

/// Rebuild the eBPF object when bpf-linker changes: it is the linker for the bpf target and
/// cargo cannot see it as a dependency.
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not on PATH: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
}
