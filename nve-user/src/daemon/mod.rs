//! `nve daemon`: one NVE instance. The shape (docs/architecture.md): ports turn each input
//! into commands for the writer's [`handle::Handle`]; the [`writer::Writer`] owns the
//! state and is the only code that changes the model, the dataplane and the store; ports
//! read the snapshot it publishes.
pub mod handle;
pub mod ports;
pub mod reload;
pub mod settings;
pub mod startup;
pub mod writer;

use std::{path::PathBuf, sync::Arc};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};

pub use settings::{Resolved, Settings};
pub use startup::{DaemonArgs, teardown};

use crate::paths::Paths;

/// Runs the instance until SIGTERM or SIGINT with the settings `cfg` (`args` over the
/// config file); then stops the ports and the writer and keeps the dataplane forwarding
/// (or removes it, with `--teardown-on-exit`).
pub async fn run(
    paths: Paths,
    socket: PathBuf,
    args: DaemonArgs,
    cfg: Resolved,
) -> anyhow::Result<()> {
    let mut started = startup::start(&paths, &socket, &cfg).await?;
    let counters = started.writer.dataplane.counters()?;
    let inputs = ports::Inputs {
        own_vteps: std::iter::once(cfg.vtep.into())
            .chain(cfg.all.vtep6.map(Into::into))
            .collect(),
        nva: (started.bgp.is_none())
            .then(|| cfg.all.nva.clone().map(|url| (url, started.nva_vtep)))
            .flatten(),
        bgp: started.bgp.take().map(|bgp| (bgp, cfg.vtep)),
        peers: cfg.all.peers.clone(),
        metrics: cfg.all.metrics_listen,
        announcements: started.writer.dataplane.take_announcements(),
    };
    let (commands, queue) = mpsc::channel(handle::QUEUE);
    let (published, snapshots) = watch::channel(started.writer.snapshot());
    let link_events = started.writer.link_events();
    let monitor = started.writer.dataplane.take_monitor();
    let handle = handle::Handle::new(commands, snapshots, counters, link_events, monitor);
    let writer = tokio::spawn(started.writer.run(queue, published));
    reload::log(&started.seeded);
    let mut running = ports::spawn(&handle, inputs).await?;
    let reloader = Arc::new(reload::Reloader::new(
        args,
        paths.clone(),
        handle.clone(),
        cfg.all.clone(),
    ));
    let router = ports::http::router(handle, started.allowed, reloader.as_api());
    // The reloader's handle goes with the ports' (the writer ends when the last does).
    let hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    running.spawn(reload::on_sighup(reloader, hup));
    tracing::info!(instance = %paths.instance, socket = %socket.display(), vtep = %cfg.vtep, underlay = %cfg.underlay, mode = %cfg.underlay_mode, "nve daemon ready");
    // The dataplane is taken over and the socket listens (it answers once `serve` runs,
    // next): systemd's Type=notify may go on.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!("telling systemd READY=1 on $NOTIFY_SOCKET: {e}");
    }
    ports::http::serve(started.listener, router, shutdown_signal()).await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let _ = std::fs::remove_file(&socket);
    running.shutdown().await;
    // Every handle is gone with the ports: the writer finishes its queue and hands back
    // the state.
    let state = writer.await.context("the writer task failed")?;
    if cfg.all.teardown_on_exit {
        state.teardown().await;
        tracing::info!(instance = %paths.instance, "nve daemon stopped; dataplane removed");
    } else {
        tracing::info!(instance = %paths.instance, "nve daemon stopped; the dataplane keeps forwarding (`nve teardown` removes it)");
    }
    drop(started.lock);
    Ok(())
}

async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
