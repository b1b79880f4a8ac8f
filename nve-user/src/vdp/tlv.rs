//! VDP22's TLVs, the payload of an ECPDU: a Manager ID TLV first, then VSI TLVs (one per
//! VSI; lldpad sends one). A TLV header is `type(7) | length(9)`. A VSI TLV is
//! `mode | status | type id (3) | type version | VSIID format | VSIID (16) | filter format |
//! count (2) | count filter entries`; an entry is some of GroupID (4), MAC (6) and VID (2)
//! by the filter format.
use serde::{Deserialize, Serialize};

use super::Id16;
use crate::mac::MacAddr;

const TLV_END: u8 = 0;
const TLV_MGR_ID: u8 = 5;
const TLV_OUI: u8 = 0x7f;
/// The Manager ID TLV's value: 16 bytes.
const MGR_ID_LEN: usize = 16;
/// A VSI TLV's value before its filter entries.
pub const VSI_FIXED_LEN: usize = 25;

/// What a VSI TLV asks (its TLV type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    PreAssoc = 1,
    PreAssocRr = 2,
    Assoc = 3,
    DeAssoc = 4,
}

impl Mode {
    fn from_type(t: u8) -> Option<Self> {
        Some(match t {
            1 => Mode::PreAssoc,
            2 => Mode::PreAssocRr,
            3 => Mode::Assoc,
            4 => Mode::DeAssoc,
            _ => return None,
        })
    }
}

/// Request status bits (the station's hints).
pub const HINT_MIGRATE_TO: u8 = 0x10;
pub const HINT_MIGRATE_FROM: u8 = 0x20;
/// Response status bits.
pub const ACK: u8 = 0x40;
pub const KEEP: u8 = 0x20;
pub const HARD: u8 = 0x10;

/// A response's error (the status's low nibble).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Success = 0,
    InvalidFormat = 1,
    InsufficientResources = 2,
    NoVsiManager = 3,
    OtherFailure = 4,
    /// Invalid VID, GroupID or MAC address.
    InvalidFilter = 5,
}

/// VSIID formats.
pub const VSIID_UUID: u8 = 5;

/// Filter formats: which fields each entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FilterFormat {
    Vid = 1,
    MacVid = 2,
    GroupVid = 3,
    GroupMacVid = 4,
}

impl FilterFormat {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => FilterFormat::Vid,
            2 => FilterFormat::MacVid,
            3 => FilterFormat::GroupVid,
            4 => FilterFormat::GroupMacVid,
            _ => return None,
        })
    }

    pub fn has_group(self) -> bool {
        matches!(self, FilterFormat::GroupVid | FilterFormat::GroupMacVid)
    }

    pub fn has_mac(self) -> bool {
        matches!(self, FilterFormat::MacVid | FilterFormat::GroupMacVid)
    }

    /// One entry's length.
    pub fn entry_len(self) -> usize {
        2 + if self.has_group() { 4 } else { 0 } + if self.has_mac() { 6 } else { 0 }
    }
}

/// One filter entry. `vid` is the whole 16 bits: PS(1) | PCP(3) | VID(12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    pub vid: u16,
}

pub const VID_MASK: u16 = 0x0fff;

impl Filter {
    /// The 12-bit VID (0: null, the bridge picks).
    pub fn vid(&self) -> u16 {
        self.vid & VID_MASK
    }

    /// The same entry with VID `vid`, its PS and PCP bits kept.
    pub fn with_vid(self, vid: u16) -> Self {
        Self {
            vid: (self.vid & !VID_MASK) | (vid & VID_MASK),
            ..self
        }
    }
}

/// A VSI TLV.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vsi {
    pub mode: Mode,
    /// Request: hints; response: ACK, KEEP, HARD and the error.
    pub status: u8,
    /// VSI type id (24 bits) and version, as the VSI manager defines them.
    pub type_id: u32,
    pub type_version: u8,
    pub vsiid_format: u8,
    pub vsiid: Id16,
    pub filter_format: FilterFormat,
    pub filters: Vec<Filter>,
}

/// An ECPDU's VDP payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pdu {
    pub manager: Id16,
    pub vsis: Vec<Vsi>,
}

/// A VDP payload that cannot be read: counted and dropped (there is no VSI to answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlvError {
    #[error("a TLV runs past the end of the ECPDU")]
    Truncated,
    #[error("the first TLV is type {0}, not Manager ID (5)")]
    NoManagerId(u8),
    #[error("a second Manager ID TLV")]
    SecondManagerId,
    #[error("TLV type {kind} with length {len}")]
    BadLength { kind: u8, len: usize },
    #[error("unknown TLV type {0}")]
    UnknownType(u8),
    #[error("no VSI TLV")]
    NoVsi,
}

/// A VSI TLV that can be read far enough to answer it, but not taken: answered with
/// `status` (what the station sent, echoed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub vsi: Vsi,
    pub status: Status,
    pub why: String,
}

/// Each VSI of a payload: readable (to handle) or refused (to answer as such).
pub type Entry = Result<Vsi, Refused>;

fn tlv_header(kind: u8, len: usize) -> [u8; 2] {
    ((u16::from(kind) << 9) | (len as u16 & 0x1ff)).to_be_bytes()
}

/// Reads a payload: a Manager ID, then VSI TLVs; OUI TLVs (extensions of the VSI before
/// them) are skipped, an End TLV or padding ends it.
pub fn parse(payload: &[u8]) -> Result<(Id16, Vec<Entry>), TlvError> {
    let mut rest = payload;
    let mut manager = None;
    let mut vsis = Vec::new();
    while let Some((&[hi, lo], after)) = rest.split_first_chunk::<2>() {
        let kind = hi >> 1;
        let len = (usize::from(hi & 1) << 8) | usize::from(lo);
        if kind == TLV_END {
            break;
        }
        let value = after.get(..len).ok_or(TlvError::Truncated)?;
        rest = &after[len..];
        match (kind, manager) {
            (TLV_MGR_ID, None) => {
                let id: [u8; MGR_ID_LEN] = value
                    .try_into()
                    .map_err(|_| TlvError::BadLength { kind, len })?;
                manager = Some(Id16(id));
            }
            (TLV_MGR_ID, Some(_)) => return Err(TlvError::SecondManagerId),
            (_, None) => return Err(TlvError::NoManagerId(kind)),
            (TLV_OUI, Some(_)) => {}
            (kind, Some(_)) => {
                let mode = Mode::from_type(kind).ok_or(TlvError::UnknownType(kind))?;
                vsis.push(parse_vsi(mode, value)?);
            }
        }
    }
    if rest.len() == 1 && rest[0] != 0 {
        return Err(TlvError::Truncated);
    }
    let manager = manager.ok_or(TlvError::NoManagerId(TLV_END))?;
    if vsis.is_empty() {
        return Err(TlvError::NoVsi);
    }
    Ok((manager, vsis))
}

fn parse_vsi(mode: Mode, v: &[u8]) -> Result<Entry, TlvError> {
    let len = v.len();
    if len < VSI_FIXED_LEN {
        return Err(TlvError::BadLength {
            kind: mode as u8,
            len,
        });
    }
    let type_id = u32::from_be_bytes([0, v[1], v[2], v[3]]);
    let vsiid = Id16(v[6..22].try_into().expect("16 bytes"));
    let count = usize::from(u16::from_be_bytes([v[23], v[24]]));
    let refuse = |vsi: Vsi, status, why: String| Ok(Err(Refused { vsi, status, why }));
    let mut vsi = Vsi {
        mode,
        status: v[0],
        type_id,
        type_version: v[4],
        vsiid_format: v[5],
        vsiid,
        filter_format: FilterFormat::MacVid,
        filters: Vec::new(),
    };
    let Some(format) = FilterFormat::from_byte(v[22]) else {
        return refuse(
            vsi,
            Status::InvalidFormat,
            format!("filter format {}", v[22]),
        );
    };
    vsi.filter_format = format;
    let entries = &v[VSI_FIXED_LEN..];
    if entries.len() != count * format.entry_len() {
        return refuse(
            vsi,
            Status::InvalidFormat,
            format!(
                "{count} entries of format {} need {} bytes, the TLV has {}",
                format as u8,
                count * format.entry_len(),
                entries.len()
            ),
        );
    }
    vsi.filters = entries
        .chunks_exact(format.entry_len())
        .map(|e| read_filter(format, e))
        .collect();
    if vsi.vsiid_format != VSIID_UUID {
        return refuse(
            vsi,
            Status::InvalidFormat,
            "VSIID format is not a UUID (5)".into(),
        );
    }
    if count == 0 {
        return refuse(vsi, Status::InvalidFormat, "no filter entry".into());
    }
    Ok(Ok(vsi))
}

fn read_filter(format: FilterFormat, mut e: &[u8]) -> Filter {
    let mut take = |n: usize| {
        let (head, tail) = e.split_at(n);
        e = tail;
        head
    };
    let group = format
        .has_group()
        .then(|| u32::from_be_bytes(take(4).try_into().expect("4 bytes")));
    let mac = format
        .has_mac()
        .then(|| MacAddr(take(6).try_into().expect("6 bytes")));
    let vid = u16::from_be_bytes(take(2).try_into().expect("2 bytes"));
    Filter { group, mac, vid }
}

impl Vsi {
    /// Appends this VSI's TLV to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        let len = VSI_FIXED_LEN + self.filters.len() * self.filter_format.entry_len();
        out.extend_from_slice(&tlv_header(self.mode as u8, len));
        out.push(self.status);
        out.extend_from_slice(&self.type_id.to_be_bytes()[1..]);
        out.push(self.type_version);
        out.push(self.vsiid_format);
        out.extend_from_slice(&self.vsiid.0);
        out.push(self.filter_format as u8);
        out.extend_from_slice(&(self.filters.len() as u16).to_be_bytes());
        for f in &self.filters {
            if let Some(g) = f.group.filter(|_| self.filter_format.has_group()) {
                out.extend_from_slice(&g.to_be_bytes());
            }
            if let Some(m) = f.mac.filter(|_| self.filter_format.has_mac()) {
                out.extend_from_slice(&m.0);
            }
            out.extend_from_slice(&f.vid.to_be_bytes());
        }
    }

    /// The response to this request: the same VSI, `status` with the ACK bit.
    pub fn response(&self, status: Status, filters: Vec<Filter>) -> Vsi {
        Vsi {
            status: ACK | status as u8,
            filters,
            ..self.clone()
        }
    }
}

/// A payload: the Manager ID TLV, `vsis` and an End TLV (lldpad reads TLVs up to an End,
/// not up to the frame's length).
pub fn write(manager: Id16, vsis: &[Vsi]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&tlv_header(TLV_MGR_ID, MGR_ID_LEN));
    out.extend_from_slice(&manager.0);
    for v in vsis {
        v.write(&mut out);
    }
    out.extend_from_slice(&tlv_header(TLV_END, 0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// vdp.md's example: associate, GroupID/MAC/VID, VNI 10000, null VID.
    fn example() -> Vec<u8> {
        let mut p = vec![0x0a, 0x10];
        p.extend_from_slice(b"blue\0\0\0\0\0\0\0\0\0\0\0\0");
        p.extend_from_slice(&[0x06, 0x25, 0x00, 0x00, 0x00, 0x05, 0x01, 0x05]);
        p.extend_from_slice(&[0xab; 16]);
        p.extend_from_slice(&[0x04, 0x00, 0x01, 0x00, 0x00, 0x27, 0x10]);
        p.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x10, 0x00, 0x00]);
        p
    }

    #[test]
    fn reads_and_writes_an_associate() {
        let (manager, vsis) = parse(&example()).unwrap();
        assert_eq!(&manager.0[..4], b"blue");
        let vsi = vsis[0].clone().unwrap();
        assert_eq!(vsi.mode, Mode::Assoc);
        assert_eq!((vsi.type_id, vsi.type_version), (5, 1));
        assert_eq!(vsi.filter_format, FilterFormat::GroupMacVid);
        assert_eq!(
            vsi.filters,
            vec![Filter {
                group: Some(10000),
                mac: Some(MacAddr([2, 0, 0, 0, 0, 0x10])),
                vid: 0
            }]
        );
        let mut ended = example();
        ended.extend_from_slice(&[0, 0]);
        assert_eq!(write(manager, std::slice::from_ref(&vsi)), ended);
        let reply = vsi.response(Status::Success, vec![vsi.filters[0].with_vid(7)]);
        let bytes = write(manager, &[reply]);
        assert_eq!(bytes[20], ACK);
        assert_eq!(&bytes[bytes.len() - 4..], &[0, 7, 0, 0]);
    }

    #[test]
    fn padding_ends_a_payload() {
        let mut p = example();
        p.extend_from_slice(&[0; 9]);
        assert!(parse(&p).is_ok());
    }

    #[test]
    fn what_is_dropped_and_what_is_refused() {
        let ex = example();
        assert_eq!(parse(&ex[..ex.len() - 1]), Err(TlvError::Truncated));
        assert_eq!(parse(&ex[18..]), Err(TlvError::NoManagerId(3)));
        let mut two = ex[..18].to_vec();
        two.extend_from_slice(&ex);
        assert_eq!(parse(&two), Err(TlvError::SecondManagerId));
        let mut unknown = ex.clone();
        unknown[18] = 0x0c; // type 6
        assert_eq!(parse(&unknown), Err(TlvError::UnknownType(6)));
        let mut short = ex[..18].to_vec();
        short.extend_from_slice(&[0x06, 0x02, 0, 0]);
        assert!(matches!(parse(&short), Err(TlvError::BadLength { .. })));
        assert_eq!(parse(&ex[..18]), Err(TlvError::NoVsi));
        // Readable but wrong: answered.
        let mut count = ex.clone();
        count[44] = 2;
        let (_, vsis) = parse(&count).unwrap();
        let refused = vsis[0].clone().unwrap_err();
        assert_eq!(refused.status, Status::InvalidFormat);
        let mut fif = ex.clone();
        fif[42] = 9;
        assert_eq!(
            parse(&fif).unwrap().1[0].clone().unwrap_err().status,
            Status::InvalidFormat
        );
    }
}
