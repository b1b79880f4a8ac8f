//! The daemon's inputs, one file each. A port turns one protocol or source into commands
//! for the writer's handle and reads the snapshot the writer publishes; it imports the
//! core's types and the handle, nothing else of the daemon. Adding an input is adding a
//! file here and one line in [`spawn`].
pub mod announcements;
pub mod etcd;
pub mod expiry;
pub mod http;
pub mod nva_sync;
pub mod peers_file;
pub mod prometheus;
pub mod underlay_watch;

use std::net::IpAddr;

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::task::JoinSet;

use super::startup::DaemonArgs;
use crate::netlink;

/// Starts every port but the API (which `run` serves until the daemon stops).
pub async fn spawn(
    api: &http::Api,
    args: &DaemonArgs,
    nva_vtep: IpAddr,
    announcements: Option<RingBuf<MapData>>,
) -> anyhow::Result<JoinSet<()>> {
    let handle = &api.handle;
    let mut ports = JoinSet::new();
    let (watch_conn, events) = netlink::watch_underlay().context("watching the underlay")?;
    ports.spawn(watch_conn);
    ports.spawn(underlay_watch::follow(handle.clone(), events));
    ports.spawn(expiry::run(handle.clone()));
    if let Some(ring) = announcements {
        ports.spawn(announcements::learn(handle.clone(), ring));
    }
    let own_vteps: Vec<IpAddr> = std::iter::once(args.vtep.into())
        .chain(args.vtep6.map(Into::into))
        .collect();
    match (&args.nva, &args.peers) {
        (None, Some(path)) => {
            ports.spawn(peers_file::run(handle.clone(), path.clone(), own_vteps));
        }
        (Some(url), _) => {
            let client = etcd::Etcd::new(url)?;
            ports.spawn(nva_sync::run(handle.clone(), client, url.clone(), nva_vtep));
        }
        (None, None) => {}
    }
    if let Some(addr) = args.metrics_listen {
        ports.spawn(prometheus::serve(addr, api.clone()).await?);
    }
    Ok(ports)
}
