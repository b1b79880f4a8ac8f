//! `nve completions SHELL` and `nve manpages DIR`: both rendered from the same clap
//! definition as `--help`, so they never drift from it.
use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory as _;

use super::Cli;

/// Prints SHELL's completion script for `nve` on stdout.
pub fn completions(shell: clap_complete::Shell) {
    clap_complete::generate(shell, &mut Cli::command(), "nve", &mut std::io::stdout());
}

/// Writes a man page per command (`nve.1`, `nve-vm.1`, `nve-vm-resume.1`, ...) into `dir`.
pub fn manpages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    println!("man pages written to {}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::super::Cli;

    /// Every subcommand's path from `nve` (`["vm", "resume"]`), depth first.
    fn paths(
        cmd: &clap::Command,
        prefix: Vec<String>,
        out: &mut Vec<(Vec<String>, clap::Command)>,
    ) {
        // clap's own `help` subcommand mirrors the tree; it is not ours to document.
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let mut path = prefix.clone();
            path.push(sub.get_name().to_string());
            out.push((path.clone(), sub.clone()));
            paths(sub, path, out);
        }
    }

    #[test]
    fn every_command_and_argument_has_help() {
        let mut cmd = Cli::command();
        cmd.build();
        let mut all = vec![(vec![], cmd.clone())];
        paths(&cmd, vec![], &mut all);
        let mut missing = Vec::new();
        for (path, c) in &all {
            let name = format!("nve {}", path.join(" "));
            if !path.is_empty() && c.get_about().is_none() {
                missing.push(format!("{name}: no about"));
            }
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if !["help", "version"].contains(&id) && a.get_help().is_none() {
                    missing.push(format!("{name}: argument {id} has no help"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "without help text:\n{}",
            missing.join("\n")
        );
        assert!(all.len() > 30, "only {} commands walked", all.len());
    }
}
