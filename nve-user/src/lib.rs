//! The nve daemon and its clients. The core (pure: no tokio, aya, axum, hyper or
//! rtnetlink): `model` (VNs, vNICs, learning, the maps' desired contents), `nva` (the
//! control plane's table, claims and mobility), `vnic` (the state machine), `vid` (per-port
//! VID maps), `vdp` (VDP22's codecs), `evpn` (BGP EVPN's routes and
//! messages), `mac`, `addr`, `error`, and the wire types `api` and `monitor`.
//! Around it: `dataplane` (the eBPF
//! programs and maps), `store` (snapshot + journal), `netlink`, `daemon` (the writer, its
//! handle and the ports), `bpffs`, `paths`, and the clients `client`, `cli`, `libvirt`.

pub mod addr;
pub mod api;
pub mod bpffs;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod dataplane;
pub mod error;
pub mod evpn;
pub mod libvirt;
pub mod mac;
pub mod model;
pub mod monitor;
pub mod netlink;
pub mod nva;
pub mod paths;
pub mod store;
pub mod vdp;
pub mod vid;
pub mod vnic;
