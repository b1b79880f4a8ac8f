//! `nve completions bash|zsh|fish` and `nve manpages DIR`, from the binary under test:
//! every subcommand of the clap tree shows up in each script and has its page.
use std::process::Command;

use clap::CommandFactory as _;
use nve_tests::rig::nve_bin;
use nve_user::cli::Cli;

/// Every subcommand's path below `nve` (`["vm", "resume"]`), clap's `help` aside.
fn subcommands() -> Vec<Vec<String>> {
    fn walk(cmd: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let mut path = prefix.to_vec();
            path.push(sub.get_name().to_string());
            out.push(path.clone());
            walk(sub, &path, out);
        }
    }
    let mut out = Vec::new();
    walk(&Cli::command(), &[], &mut out);
    out
}

fn nve(args: &[&str]) -> String {
    let out = Command::new(nve_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "nve {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_name_every_subcommand() {
    let all = subcommands();
    assert!(all.iter().any(|p| p == &["vm", "resume"]), "{all:?}");
    for shell in ["bash", "zsh", "fish"] {
        let script = nve(&["completions", shell]);
        for path in &all {
            let leaf = path.last().unwrap();
            assert!(
                script.contains(leaf.as_str()),
                "{shell} completion lacks `nve {}`",
                path.join(" ")
            );
        }
        // The parents' words are what a shell completes a leaf after.
        assert!(script.contains("pre-associate") && script.contains("check-config"));
    }
    let bash = nve(&["completions", "bash"]);
    for path in &all {
        let words: Vec<String> = path.iter().map(|w| w.replace('-', "__subcmd__")).collect();
        let case = format!("nve__subcmd__{}", words.join("__subcmd__"));
        assert!(
            bash.contains(&case),
            "bash: no case for `nve {}`",
            path.join(" ")
        );
    }
}

#[test]
fn manpages_have_a_page_per_subcommand() {
    let dir = std::env::temp_dir().join(format!("nvet-{}-man", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    nve(&["manpages", dir.to_str().unwrap()]);
    assert!(dir.join("nve.1").exists());
    for path in subcommands() {
        let page = dir.join(format!("nve-{}.1", path.join("-")));
        let text =
            std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        assert!(text.contains(".TH"), "{} is not roff", page.display());
    }
    let resume = std::fs::read_to_string(dir.join("nve-vm-resume.1")).unwrap();
    assert!(resume.contains("Forward again after a pause"), "{resume}");
    let daemon = std::fs::read_to_string(dir.join("nve-daemon.1")).unwrap();
    assert!(
        daemon.contains("check\\-config"),
        "nve-daemon.1 lacks --check-config"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
