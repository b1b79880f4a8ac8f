//! The nve daemon and its clients: the model of VNs and ports, the dataplane it derives,
//! the local API over a Unix socket, and the CLI on top of it.

pub mod access;
pub mod announcements;
pub mod api;
pub mod bpffs;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod dataplane;
pub mod http_conn;
pub mod libvirt;
pub mod mac;
pub mod model;
pub mod netlink;
pub mod nva;
pub mod paths;
pub mod prometheus;
pub mod server;
pub mod store;
pub mod vid;
pub mod vnic;
