//! `nve daemon`: one NVE instance. The shape (docs/architecture.md): ports turn each input
//! into commands for the writer's [`handle::Handle`]; the [`writer::Writer`] owns the
//! state and is the only code that changes the model, the dataplane and the store; ports
//! read the snapshot it publishes.
pub mod handle;
pub mod ports;
pub mod startup;
pub mod writer;

use std::path::PathBuf;

use anyhow::Context as _;
use tokio::{
    signal::unix::SignalKind,
    sync::{mpsc, watch},
};

pub use startup::{ConfigFile, DaemonArgs, teardown};

use crate::paths::Paths;

/// Runs the instance until SIGTERM or SIGINT; then stops the ports and the writer and
/// keeps the dataplane forwarding (or removes it, with `--teardown-on-exit`).
pub async fn run(paths: Paths, socket: PathBuf, args: DaemonArgs) -> anyhow::Result<()> {
    let mut started = startup::start(&paths, &socket, &args).await?;
    let counters = started.writer.dataplane.counters()?;
    let inputs = ports::Inputs {
        own_vteps: std::iter::once(args.vtep.into())
            .chain(args.vtep6.map(Into::into))
            .collect(),
        nva: (started.bgp.is_none())
            .then(|| args.nva.clone().map(|url| (url, started.nva_vtep)))
            .flatten(),
        bgp: started.bgp.take().map(|cfg| (cfg, args.vtep)),
        peers: args.peers.clone(),
        metrics: args.metrics_listen,
        announcements: started.writer.dataplane.take_announcements(),
    };
    let (commands, queue) = mpsc::channel(handle::QUEUE);
    let (published, snapshots) = watch::channel(started.writer.snapshot());
    let link_events = started.writer.link_events();
    let handle = handle::Handle::new(commands, snapshots, counters, link_events);
    let writer = tokio::spawn(started.writer.run(queue, published));
    let mut running = ports::spawn(&handle, inputs).await?;
    tracing::info!(instance = %paths.instance, socket = %socket.display(), vtep = %args.vtep, underlay = %args.underlay, mode = %args.underlay_mode, "nve daemon ready");

    let router = ports::http::router(handle, started.allowed);
    ports::http::serve(started.listener, router, shutdown_signal()).await;
    let _ = std::fs::remove_file(&socket);
    running.shutdown().await;
    // Every handle is gone with the ports: the writer finishes its queue and hands back
    // the state.
    let state = writer.await.context("the writer task failed")?;
    if args.teardown_on_exit {
        state.teardown().await;
        tracing::info!(instance = %paths.instance, "nve daemon stopped; dataplane removed");
    } else {
        tracing::info!(instance = %paths.instance, "nve daemon stopped; the dataplane keeps forwarding (`nve teardown` removes it)");
    }
    drop(started.lock);
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
