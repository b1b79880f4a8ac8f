//! LLDP as far as VDP needs it: the bridge's LLDPDU (chassis ID, port ID, TTL, the EVB TLV,
//! end) and the station's EVB TLV read from its own. The EVB TLV (802.1Qbg, OUI 00-80-c2
//! subtype 0x0d) carries each side's status bits — the bridge's BGID is what lets a station
//! use GroupID filters — and timers; each side uses the larger of the two exponents.
use serde::{Deserialize, Serialize};

const TLV_END: u8 = 0;
const TLV_CHASSIS_ID: u8 = 1;
const TLV_PORT_ID: u8 = 2;
const TLV_TTL: u8 = 3;
const TLV_ORG: u8 = 127;
/// Chassis ID subtype: a MAC address; port ID subtype: an interface name.
const CHASSIS_MAC: u8 = 4;
const PORT_IFNAME: u8 = 5;
const EVB_OUI: [u8; 4] = [0x00, 0x80, 0xc2, 0x0d];
const EVB_LEN: usize = 9;

/// Bridge status: group IDs supported (GroupID filters), reflective relay capable.
pub const BRIDGE_BGID: u8 = 0x04;
/// Station status: the station uses group IDs.
pub const STATION_SGID: u8 = 0x08;
/// The EVB mode field: a bridge.
const MODE_BRIDGE: u8 = 1;
/// The "remote or local" bit: the value is the peer's.
const ROL: u8 = 0x20;

/// ECP's and VDP's timers as 802.1Qbg exponents (a time is `10 us x 2^exp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timers {
    /// ECP retransmissions (0-7).
    #[serde(default = "defaults::retries")]
    pub retries: u8,
    /// ECP retransmission time (0-31; 8: 2.56 ms).
    #[serde(default = "defaults::rte")]
    pub rte: u8,
    /// VDP resource wait delay (0-31; 20: 10.5 s).
    #[serde(default = "defaults::rwd")]
    pub rwd: u8,
    /// VDP re-init keep-alive (0-31; 20: 10.5 s): how often the station repeats each
    /// association, so how soon a silent one is noticed.
    #[serde(default = "defaults::rka")]
    pub rka: u8,
}

mod defaults {
    pub fn retries() -> u8 {
        3
    }
    pub fn rte() -> u8 {
        8
    }
    pub fn rwd() -> u8 {
        20
    }
    pub fn rka() -> u8 {
        20
    }
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            retries: defaults::retries(),
            rte: defaults::rte(),
            rwd: defaults::rwd(),
            rka: defaults::rka(),
        }
    }
}

/// An exponent's time in microseconds.
pub fn exp_us(exp: u8) -> u64 {
    10u64 << exp.min(40)
}

impl Timers {
    /// What is wrong with these timers, if anything.
    pub fn check(&self) -> Result<(), String> {
        if self.retries > 7 {
            return Err(format!("retries {}: 0 to 7", self.retries));
        }
        for (name, v) in [("rte", self.rte), ("rwd", self.rwd), ("rka", self.rka)] {
            if v > 31 {
                return Err(format!("{name} {v}: an exponent of 0 to 31"));
            }
        }
        Ok(())
    }

    /// The larger of each exponent (what both sides then use).
    pub fn max(self, other: Timers) -> Timers {
        Timers {
            retries: self.retries.max(other.retries),
            rte: self.rte.max(other.rte),
            rwd: self.rwd.max(other.rwd),
            rka: self.rka.max(other.rka),
        }
    }

    /// How long the bridge waits for a keep-alive before it de-associates a VSI, µs:
    /// 1.5 x ((1 + 2R) x 2^RTE + 2^RKA) x 10 µs.
    pub fn keep_alive_timeout_us(self) -> u64 {
        let ecp = (1 + 2 * u64::from(self.retries)) * exp_us(self.rte);
        (ecp + exp_us(self.rka)) * 3 / 2
    }
}

/// The station's EVB TLV.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StationEvb {
    pub status: u8,
    pub timers: Timers,
}

impl StationEvb {
    pub fn uses_group_ids(&self) -> bool {
        self.status & STATION_SGID != 0
    }
}

/// What a received LLDPDU says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Neighbour {
    pub chassis: Vec<u8>,
    pub port: Vec<u8>,
    pub ttl: u16,
    pub evb: Option<StationEvb>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LldpError {
    #[error("a TLV runs past the end of the LLDPDU")]
    Truncated,
    #[error("the LLDPDU does not start with chassis ID, port ID and TTL")]
    Mandatory,
}

fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.extend_from_slice(&((u16::from(kind) << 9) | value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// Reads an LLDPDU (after the Ethernet header).
pub fn parse(mut rest: &[u8]) -> Result<Neighbour, LldpError> {
    let mut n = Neighbour::default();
    let mut index = 0;
    while let Some((&[hi, lo], after)) = rest.split_first_chunk::<2>() {
        let kind = hi >> 1;
        let len = (usize::from(hi & 1) << 8) | usize::from(lo);
        let value = after.get(..len).ok_or(LldpError::Truncated)?;
        rest = &after[len..];
        match (index, kind) {
            (0, TLV_CHASSIS_ID) => n.chassis = value.to_vec(),
            (1, TLV_PORT_ID) => n.port = value.to_vec(),
            (2, TLV_TTL) if len == 2 => n.ttl = u16::from_be_bytes([value[0], value[1]]),
            (0..=2, _) => return Err(LldpError::Mandatory),
            (_, TLV_END) => break,
            (_, TLV_ORG) if len == EVB_LEN && value[..4] == EVB_OUI => {
                n.evb = Some(StationEvb {
                    status: value[5],
                    timers: Timers {
                        retries: (value[6] >> 5) & 7,
                        rte: value[6] & 0x1f,
                        rwd: value[7] & 0x1f,
                        rka: value[8] & 0x1f,
                    },
                });
            }
            _ => {}
        }
        index += 1;
    }
    if index < 3 {
        return Err(LldpError::Mandatory);
    }
    Ok(n)
}

/// The bridge's LLDPDU: `mac` as chassis ID, `port` as port ID, `ttl` seconds, and the EVB
/// TLV with BGID, the station's status echoed and the timers both sides then use.
pub fn bridge_pdu(
    mac: [u8; 6],
    port: &str,
    ttl: u16,
    ours: Timers,
    station: Option<&StationEvb>,
) -> Vec<u8> {
    let theirs = station.map(|s| s.timers);
    let used = theirs.map_or(ours, |t| ours.max(t));
    let rol = |mine: u8, peer: Option<u8>| {
        if peer.is_some_and(|p| p >= mine) {
            ROL
        } else {
            0
        }
    };
    let evb = [
        EVB_OUI[0],
        EVB_OUI[1],
        EVB_OUI[2],
        EVB_OUI[3],
        BRIDGE_BGID,
        station.map_or(0, |s| s.status),
        (used.retries << 5) | used.rte,
        (MODE_BRIDGE << 6) | rol(ours.rwd, theirs.map(|t| t.rwd)) | used.rwd,
        rol(ours.rka, theirs.map(|t| t.rka)) | used.rka,
    ];
    let mut out = Vec::with_capacity(64);
    let mut chassis = vec![CHASSIS_MAC];
    chassis.extend_from_slice(&mac);
    tlv(&mut out, TLV_CHASSIS_ID, &chassis);
    let mut port_id = vec![PORT_IFNAME];
    port_id.extend_from_slice(port.as_bytes());
    tlv(&mut out, TLV_PORT_ID, &port_id);
    tlv(&mut out, TLV_TTL, &ttl.to_be_bytes());
    tlv(&mut out, TLV_ORG, &evb);
    tlv(&mut out, TLV_END, &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bridge_pdu_reads_back() {
        let station = StationEvb {
            status: STATION_SGID,
            timers: Timers {
                retries: 2,
                rte: 10,
                rwd: 12,
                rka: 25,
            },
        };
        let ours = Timers::default();
        let pdu = bridge_pdu([2, 0, 0, 0, 0, 1], "trunk0", 120, ours, Some(&station));
        let n = parse(&pdu).unwrap();
        assert_eq!(n.chassis, [4, 2, 0, 0, 0, 0, 1]);
        assert_eq!(&n.port[1..], b"trunk0");
        assert_eq!(n.ttl, 120);
        let evb = n.evb.unwrap();
        assert_eq!(evb.status, STATION_SGID, "the station's status echoed");
        assert_eq!(
            evb.timers,
            Timers {
                retries: 3,
                rte: 10,
                rwd: 20,
                rka: 25
            }
        );
        // The EVB TLV's bytes: BGID, mode bridge, ROL where the station's value won.
        let at = pdu.len() - 2 - EVB_LEN;
        assert_eq!(&pdu[at..at + 4], &EVB_OUI);
        assert_eq!(pdu[at + 4], BRIDGE_BGID);
        assert_eq!(pdu[at + 6], (3 << 5) | 10);
        assert_eq!(pdu[at + 7], 0x40 | 20);
        assert_eq!(pdu[at + 8], ROL | 25);
    }

    #[test]
    fn malformed_lldpdus() {
        let pdu = bridge_pdu([2, 0, 0, 0, 0, 1], "t", 120, Timers::default(), None);
        assert_eq!(parse(&pdu[..pdu.len() - 5]), Err(LldpError::Truncated));
        assert_eq!(parse(&pdu[9..]), Err(LldpError::Mandatory));
        assert_eq!(parse(&[]), Err(LldpError::Mandatory));
    }

    #[test]
    fn keep_alive_timeout() {
        // Defaults: 1.5 x (7 x 2.56 ms + 10.49 s) = 15.75 s.
        assert_eq!(Timers::default().keep_alive_timeout_us(), 15_755_520);
        assert!(
            Timers {
                rka: 32,
                ..Default::default()
            }
            .check()
            .is_err()
        );
        assert!(
            Timers {
                retries: 8,
                ..Default::default()
            }
            .check()
            .is_err()
        );
    }
}
