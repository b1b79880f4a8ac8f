//! BGP EVPN (RFC 7432, RFC 8365: AFI 25 / SAFI 70) as values and bytes, pure: `route` has the
//! routes and attributes nve sends and takes (types 2 and 3, route targets, the encapsulation,
//! MAC Mobility and PMSI), `wire` the BGP messages that carry them and the NOTIFICATION for
//! whatever a peer got wrong. The session (FSM, TCP) and the translation to the NVA's model
//! sit outside and use these.
//!
//! Hand-written for this subset rather than wrapping netgauze-bgp-pkt: its decode errors do
//! not map to the NOTIFICATIONs a speaker must send, and the encapsulation community and PMSI
//! are not typed there (the commit that added this module has the measurements).
pub mod route;
pub mod wire;

#[cfg(test)]
mod tests;
