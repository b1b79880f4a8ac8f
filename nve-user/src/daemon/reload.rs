//! Re-reading the config file while the daemon runs (SIGHUP, `nve reload`): what it lists
//! and the state lacks is created through the writer like any other change; keys that
//! only take effect at start are named, not applied.
use std::sync::Arc;

use tokio::{signal::unix::Signal, sync::Mutex};

use super::{handle::Handle, ports::http::Reload, settings::Settings, startup::DaemonArgs};
use crate::{
    api::ReloadView,
    error::{Error, ErrorCode},
    model::Event,
    netlink,
    paths::Paths,
};

/// What a reload needs: the command line, and the settings the daemon started with.
pub struct Reloader {
    args: DaemonArgs,
    paths: Paths,
    handle: Handle,
    /// In force since the start; held while a reload runs, so reloads never interleave.
    started_with: Mutex<Settings>,
}

impl Reloader {
    pub fn new(args: DaemonArgs, paths: Paths, handle: Handle, started_with: Settings) -> Self {
        Self {
            args,
            paths,
            handle,
            started_with: Mutex::new(started_with),
        }
    }

    /// Reads the file again (the flags still over it), creates what it lists and the state
    /// lacks, and says which changed keys need a restart. A broken file changes nothing.
    pub async fn reload(&self) -> Result<ReloadView, Error> {
        let started_with = self.started_with.lock().await;
        let cfg = self
            .args
            .resolve(&self.paths)
            .map_err(|e| Error::new(ErrorCode::EFormat, format!("{e:#}")))?;
        let mut view = seed(&self.handle, &cfg.all).await;
        view.file = cfg.file.map(|f| f.display().to_string());
        view.restart_needed = started_with.restart_needed(&cfg.all);
        Ok(view)
    }

    /// The API's `POST /v1/reload`.
    pub fn as_api(self: &Arc<Self>) -> Reload {
        let me = self.clone();
        Arc::new(move || {
            let me = me.clone();
            Box::pin(async move { me.reload().await })
        })
    }
}

/// Creates what `settings` lists and the writer's state lacks, through the writer as the
/// API would; a VN whose port does not exist is not begun, one refused halfway is removed
/// again.
async fn seed(handle: &Handle, settings: &Settings) -> ReloadView {
    let (missing, kept) = settings.missing_in(&handle.snapshot().model);
    let mut view = ReloadView {
        kept,
        ..ReloadView::default()
    };
    for seed in missing {
        if let Some(why) = seed.absent_port(|p| netlink::ifindex(p).is_some()) {
            view.failed.push(why);
            continue;
        }
        match submit_all(handle, &seed.events).await {
            Ok(()) => view.created.push(seed.what),
            Err((applied, err)) => {
                if let (true, Some(undo)) = (applied > 0, seed.undo) {
                    let _ = handle.submit(undo).await;
                }
                view.failed.push(format!("{}: {err}", seed.what));
            }
        }
    }
    view
}

/// Submits `events` in order until one is refused: how many were applied, and why not.
async fn submit_all(handle: &Handle, events: &[Event]) -> Result<(), (usize, Error)> {
    for (i, e) in events.iter().enumerate() {
        handle.submit(e.clone()).await.map_err(|err| (i, err))?;
    }
    Ok(())
}

/// Logs what a start or a reload did with the file.
pub fn log(view: &ReloadView) {
    let file = view.file.as_deref().unwrap_or("(none: flags only)");
    tracing::info!(config = file, created = ?view.created, "config file read");
    for f in &view.failed {
        tracing::error!(config = file, "config file: not created: {f}");
    }
    for k in &view.kept {
        tracing::warn!(config = file, "config file: {k}");
    }
    if !view.restart_needed.is_empty() {
        tracing::warn!(config = file, keys = ?view.restart_needed, "config file: changed keys take effect at the next start (restart needed)");
    }
}

/// Reloads on each SIGHUP, telling systemd (RELOADING=1, then READY=1) when under it.
pub async fn on_sighup(reloader: Arc<Reloader>, mut hup: Signal) {
    while hup.recv().await.is_some() {
        if let Ok(usec) = sd_notify::NotifyState::monotonic_usec_now() {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading, usec]);
        }
        match reloader.reload().await {
            Ok(view) => log(&view),
            Err(e) => tracing::error!("SIGHUP: config file refused, nothing changed: {e}"),
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }
}
