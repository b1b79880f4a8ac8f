//! IEEE 802.1Qbg-2012 VDP ("VDP22") on nve's side, the bridge's: a station (lldpad, driven
//! by vdptool or libvirt) asks on a trunk port to associate a VSI (a vNIC: UUID, MACs, VID)
//! with a GroupID (the VN's VNI) and nve answers with the local VID to use. Pure: the wire
//! codecs ([`ecp`] for the transport, [`tlv`] for VDP's TLVs, [`lldp`] for the EVB TLV that
//! carries the timers) and [`status_for`]. The model turns a VSI request into the signaling
//! the REST API would send (`model/vdp.rs`); the daemon's `ports::vdp` owns the sockets and
//! timers.
pub mod ecp;
#[cfg(test)]
mod golden;
pub mod lldp;
pub mod outbox;
pub mod tlv;

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::error::ErrorCode;

/// The nearest-customer-bridge group address both ECP and the station's LLDP agent use.
pub const GROUP_MAC: [u8; 6] = [0x01, 0x80, 0xc2, 0x00, 0x00, 0x00];
pub use nve_common::wire::{ETH_LEN as ETH_HLEN, ETH_P_ECP, ETH_P_LLDP};
/// Frames shorter than this are padded (the minimum Ethernet frame less its FCS).
pub const ETH_ZLEN: usize = 60;

/// A 16-byte identifier: a VSI's UUID, a VSI manager's ID. Written as a UUID
/// (8-4-4-4-12 hex digits).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Id16(pub [u8; 16]);

impl fmt::Display for Id16 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Id16 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Id16 {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex: String = s.chars().filter(|&c| c != '-').collect();
        let mut out = [0u8; 16];
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{s:?}: not 16 bytes in hex (a UUID)"));
        }
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(Id16(out))
    }
}

impl Serialize for Id16 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Id16 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// A frame to `GROUP_MAC` from `src`: Ethernet header, `payload`, padded to `ETH_ZLEN`
/// unless `unpadded` (ECP's ACKs go as lldpad sends them: 18 bytes).
pub fn frame(src: [u8; 6], ethertype: u16, payload: &[u8], unpadded: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(ETH_ZLEN.max(ETH_HLEN + payload.len()));
    out.extend_from_slice(&GROUP_MAC);
    out.extend_from_slice(&src);
    out.extend_from_slice(&ethertype.to_be_bytes());
    out.extend_from_slice(payload);
    if !unpadded && out.len() < ETH_ZLEN {
        out.resize(ETH_ZLEN, 0);
    }
    out
}

/// The VDP status that answers a refusal with `code`.
pub fn status_for(code: ErrorCode) -> tlv::Status {
    use tlv::Status::*;
    match code {
        ErrorCode::EFormat => InvalidFormat,
        ErrorCode::EUnknownVn | ErrorCode::EVidConflict | ErrorCode::EMacConflict => InvalidFilter,
        ErrorCode::EResources | ErrorCode::EBusy => InsufficientResources,
        _ => OtherFailure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_as_uuids() {
        let id: Id16 = "6F1C7A2E-3B4D-4E5F-8A9B-0C1D2E3F4A5B".parse().unwrap();
        assert_eq!(id.to_string(), "6f1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b");
        assert_eq!(id.0[0], 0x6f);
        assert!("6f1c".parse::<Id16>().is_err());
        assert!(
            "zz1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"
                .parse::<Id16>()
                .is_err()
        );
    }
}
