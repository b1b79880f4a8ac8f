//! The daemon's inputs, one file each. A port turns one protocol or source into commands
//! for the writer's handle and reads the snapshot the writer publishes; it imports the
//! core's types and the handle, nothing else of the daemon. Adding an input is adding a
//! file here and one line in [`spawn`].
pub mod announcements;
pub mod etcd;
pub mod evpn;
pub mod expiry;
pub mod http;
pub mod nva_link;
pub mod nva_sync;
pub mod peers_file;
pub mod prometheus;
pub mod underlay_watch;
pub mod vdp;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::task::JoinSet;

use super::handle::Handle;
use crate::netlink;

/// Which optional ports run, and what they need (from the daemon's arguments).
pub struct Inputs {
    /// This NVE's VTEPs (a peers file lists them too; they are left out).
    pub own_vteps: Vec<IpAddr>,
    /// etcd's client URL, and the VTEP published there.
    pub nva: Option<(String, IpAddr)>,
    /// BGP EVPN's settings, and the VTEP advertised.
    pub bgp: Option<(crate::evpn::config::BgpConfig, std::net::Ipv4Addr)>,
    pub peers: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
    /// The dataplane's ring buffer of VM announcements.
    pub announcements: Option<RingBuf<MapData>>,
}

/// Starts every port but the API (which the daemon serves until it stops).
pub async fn spawn(handle: &Handle, inputs: Inputs) -> anyhow::Result<JoinSet<()>> {
    let mut ports = JoinSet::new();
    let (watch_conn, events) = netlink::watch_underlay().context("watching the underlay")?;
    ports.spawn(watch_conn);
    ports.spawn(underlay_watch::follow(handle.clone(), events));
    ports.spawn(expiry::run(handle.clone()));
    ports.spawn(vdp::run(handle.clone()));
    if let Some(ring) = inputs.announcements {
        ports.spawn(announcements::learn(handle.clone(), ring));
    }
    if let Some((cfg, vtep)) = inputs.bgp {
        ports.spawn(evpn::run(handle.clone(), cfg, vtep));
    }
    match (inputs.nva, inputs.peers) {
        (None, Some(path)) => {
            ports.spawn(peers_file::run(handle.clone(), path, inputs.own_vteps));
        }
        (Some((url, vtep)), _) => {
            let client = etcd::Etcd::new(&url)?;
            ports.spawn(nva_sync::run(handle.clone(), client, url, vtep));
        }
        (None, None) => {}
    }
    if let Some(addr) = inputs.metrics {
        ports.spawn(prometheus::serve(addr, handle.clone()).await?);
    }
    Ok(ports)
}
