//! The peers-file port (`nve daemon --peers FILE`, the embedded NVA): reads the file
//! again when it changes (checked every second) and hands its table to the writer; a file
//! that does not parse or contradicts itself is refused with its reason in `nve status`,
//! and the last good one stays in force.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;

use crate::{api::NvaStatus, daemon::handle::Handle, model::Event, nva::peers};

/// What identifies a version of the file.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Installs `path` and follows its changes until the daemon stops.
pub async fn run(handle: Handle, path: PathBuf, own: Vec<IpAddr>) {
    let endpoint = format!("file:{}", path.display());
    let mut seen = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = stamp(&path);
        if now.is_some() && now == seen {
            continue;
        }
        seen = now;
        let loaded = tokio::fs::read_to_string(&path)
            .await
            .with_context(|| format!("reading {}", path.display()))
            .and_then(|text| {
                peers::parse(&text, &own).with_context(|| format!("{}", path.display()))
            });
        let result = match loaded {
            Ok(table) if handle.snapshot().model.nva() == &table => Ok(()),
            Ok(table) => handle
                .submit(Event::Nva(table))
                .await
                .map(drop)
                .map_err(|e| anyhow::anyhow!("installing the peers: {}", e.message)),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::warn!("peers file refused, the last one stays in force: {e:#}");
        }
        let status = NvaStatus {
            endpoint: endpoint.clone(),
            connected: result.is_ok(),
            entries: 0,
            last_error: result.err().map(|e| format!("{e:#}")),
            duplicate_macs: Vec::new(),
            neighbors: Vec::new(),
        };
        handle.nva_status(status).await;
    }
}
