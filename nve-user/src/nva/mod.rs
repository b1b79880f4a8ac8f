//! The network-wide control plane (the NVA, spec.md 3), with two backends: embedded (the
//! default: one host needs nothing, several list each other in a static peers file, see
//! `peers.rs`) and etcd. Both hand the model the same [`Table`].
//!
//! On etcd: with `nve daemon --nva
//! http://HOST:2379` each NVE publishes the vNICs associated on it (VN, MAC, addresses ->
//! its VTEP, sequence number) under `/nve/v1/vni/<vni>/mac/<mac>/vtep/<vtep>`, tied to a
//! lease (an NVE that dies drops out), and watches that prefix: the other NVEs' entries
//! become remote FDB entries, ARP/ND answers and flood-list VTEPs of the VNs this NVE
//! serves. Each (re)connection starts with a full sync, then watches from that revision.
//! While etcd is unreachable forwarding goes on with the last state (it is in the model),
//! retries back off, and `nve status` says so.
//!
//! This module is the control plane's pure part: the keys and what they hold (`claims`),
//! the table the model installs (`table`), MAC mobility (`mobility`) and the peers file's
//! parsing (`peers`); the etcd session is a port of the daemon (`daemon/ports/nva_sync.rs`).
//!
//! MAC mobility (RFC 7432 section 15): every NVE claims a MAC under its own key, so claims
//! never overwrite each other; an NVE that starts to claim a MAC others claim takes their
//! highest sequence number plus one; everyone installs the claim with the highest sequence
//! number, ties to the lowest VTEP address. A MAC whose winning VTEP changes `DUP_MOVES`
//! times within `DUP_WINDOW` is a duplicate (two VMs with one MAC, or a loop): its entry is
//! frozen where it is and reported in `nve status`.
pub mod claims;
pub mod mobility;
pub mod peers;
mod table;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use mobility::{DUP_MOVES, DUP_WINDOW, Mobility};
pub use table::{Arriving, Delta, MacChange, Table};

use crate::api::CreateVn;

/// Where NVEs publish.
pub const PREFIX: &str = "/nve/v1/vni/";

/// What an NVE publishes per MAC, and what the model keeps of the others'.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub vtep: IpAddr,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
    /// Incremented by each NVE that takes the MAC over (RFC 7432 section 15).
    #[serde(default)]
    pub seq: u64,
    /// In a VN definition's entry: the VN (boxed: MAC entries, by far the most, have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vn: Option<Box<CreateVn>>,
    /// Never published: set by the NVE installing the entry when the claim beats its own
    /// on the same MAC (the VM moved on, and this NVE has not been told yet): its local
    /// vNIC's MAC then forwards to the claim's VTEP, as a forwarding pointer does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub supersedes_local: bool,
    /// The hypervisor signaled this MAC's arrival at `vtep` (its vNIC was (pre-)associated
    /// there with a migrating-in hint): a move to it is a migration, never counted towards
    /// duplicate detection, and it thaws a MAC frozen elsewhere.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub migrated: bool,
}

impl Entry {
    /// An entry for `vtep` with nothing else set.
    pub fn at(vtep: IpAddr) -> Self {
        Self {
            vtep,
            ips: Vec::new(),
            seq: 0,
            vn: None,
            supersedes_local: false,
            migrated: false,
        }
    }

    /// Whether this claim wins over `other` (RFC 7432 section 15: the higher sequence
    /// number; equal ones, the lower VTEP address).
    pub fn beats(&self, other: &Entry) -> bool {
        (self.seq, std::cmp::Reverse(self.vtep)) > (other.seq, std::cmp::Reverse(other.vtep))
    }
}
