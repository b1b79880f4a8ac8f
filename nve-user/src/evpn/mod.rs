//! BGP EVPN (RFC 7432, RFC 8365: AFI 25 / SAFI 70) as values and bytes, pure: `route` has the
//! routes and attributes nve sends and takes (types 2 and 3, route targets, the encapsulation,
//! MAC Mobility and PMSI), `wire` the BGP messages that carry them and the NOTIFICATION for
//! whatever a peer got wrong, `config` the BGP settings (AS, neighbours, per-VN RD and route
//! targets), `translate` between the NVA's claims and routes. The session (FSM, TCP) is the
//! daemon's port (`daemon/ports/evpn`).
//!
//! Hand-written for this subset rather than wrapping netgauze-bgp-pkt: its decode errors do
//! not map to the NOTIFICATIONs a speaker must send, and the encapsulation community and PMSI
//! are not typed there (the commit that added this module has the measurements).
pub mod config;
pub mod rib;
pub mod route;
pub mod translate;
pub mod wire;

#[cfg(test)]
mod tests;
