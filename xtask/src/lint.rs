//! The project's own lints, beside clippy: the core of nve-user stays pure. Its modules
//! (`CORE`) may not name tokio, aya, axum, hyper or rtnetlink, nor anyhow (its errors are
//! `error::Error`, with a code), nor the daemon's adapters (`ADAPTERS`): every arrow points
//! from the daemon to the core, never back.
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// nve-user's pure modules: directories and files under nve-user/src.
const CORE: [&str; 11] = [
    "model",
    "nva",
    "vdp",
    "evpn",
    "vnic.rs",
    "vid.rs",
    "mac.rs",
    "addr.rs",
    "error.rs",
    "api.rs",
    "monitor.rs",
];
/// Crates the core may not use.
const IO_CRATES: [&str; 8] = [
    "anyhow",
    "tokio",
    "aya",
    "aya_log",
    "axum",
    "hyper",
    "hyper_util",
    "rtnetlink",
];
/// nve-user modules outside the core.
const ADAPTERS: [&str; 9] = [
    "daemon",
    "dataplane",
    "netlink",
    "store",
    "cli",
    "client",
    "bpffs",
    "paths",
    "libvirt",
];

/// Fails naming every line of the core that reaches outside it.
pub fn core_is_pure(root: &Path) -> Result<()> {
    let src = root.join("nve-user/src");
    let mut files = Vec::new();
    for entry in CORE {
        collect(&src.join(entry), &mut files)?;
    }
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            if let Some(what) = forbidden(code) {
                found.push(format!(
                    "{}:{}: {what}: {}",
                    file.display(),
                    n + 1,
                    line.trim()
                ));
            }
        }
        for what in forbidden_uses(&text) {
            found.push(format!("{}: uses {what}", file.display()));
        }
    }
    if !found.is_empty() {
        bail!(
            "the core of nve-user ({}) must not reach outside it:\n{}",
            CORE.join(", "),
            found.join("\n")
        );
    }
    Ok(())
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            collect(&entry?.path(), files)?;
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        files.push(path.to_path_buf());
    }
    Ok(())
}

/// A path in `code` to an I/O crate (`tokio::...`) or an adapter (`crate::daemon...`).
fn forbidden(code: &str) -> Option<String> {
    let starts = |at: usize| {
        at == 0
            || !code.as_bytes()[at - 1].is_ascii_alphanumeric() && code.as_bytes()[at - 1] != b'_'
    };
    for name in IO_CRATES {
        let pat = format!("{name}::");
        if let Some(at) = code.find(&pat).filter(|&at| starts(at)) {
            return Some(format!("the crate {}", &code[at..at + name.len()]));
        }
    }
    ADAPTERS
        .iter()
        .find(|m| code.contains(&format!("crate::{m}::")) || code.contains(&format!("crate::{m};")))
        .map(|m| format!("the module crate::{m}"))
}

/// Adapters named inside `use crate::{...}` groups, which span lines.
fn forbidden_uses(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("use crate::{") {
        let group = &rest[at + "use crate::{".len()..];
        let end = group.find("};").unwrap_or(group.len());
        let mut depth = 0;
        let mut item = String::new();
        for c in group[..end].chars().chain([',']) {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    let first = item
                        .trim()
                        .split("::")
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    if ADAPTERS.contains(&first.as_str()) {
                        found.push(format!("crate::{first}"));
                    }
                    item.clear();
                    continue;
                }
                _ => {}
            }
            item.push(c);
        }
        rest = &group[end..];
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_the_core_may_not_use() {
        assert!(forbidden("use tokio::sync::Mutex;").is_some());
        assert!(forbidden("    let x = aya::maps::Array::new();").is_some());
        assert!(forbidden("use crate::daemon::handle::Handle;").is_some());
        assert!(forbidden("/// the hypervisor says").is_none());
        assert!(forbidden("use crate::nva::Table;").is_none());
        let grouped = "use crate::{\n    api::X,\n    netlink,\n    store::{A, B},\n};";
        assert_eq!(forbidden_uses(grouped), ["crate::netlink", "crate::store"]);
    }
}
