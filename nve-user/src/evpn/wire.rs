//! BGP-4 messages (RFC 4271) for exactly what an EVPN speaker needs, on the wire: OPEN with
//! its capabilities, UPDATE with EVPN in MP_REACH/MP_UNREACH (RFC 4760), NOTIFICATION,
//! KEEPALIVE, ROUTE-REFRESH (RFC 2918).
//!
//! `decode` frames and checks; what is wrong becomes the NOTIFICATION to send (RFC 4271 s.6),
//! except where RFC 7606 allows treat-as-withdraw (a malformed EVPN NLRI in an intact frame,
//! malformed (extended) communities): then the UPDATE comes back with its announced routes in
//! `withdrawn` and `treat_as_withdraw` saying why. Checks that need the session's
//! configuration are the session's: the peer's AS against the configured one (2/2), LOCAL_PREF
//! present on iBGP (3/3), a hold time it will not take (2/6).
use std::net::{IpAddr, Ipv4Addr};

use super::route::{Attributes, Nlri, Pmsi, Route, ip_from, label_from, put_label};

/// The largest message without the extended message capability (RFC 8654), which nve does
/// not advertise.
pub const MAX_MESSAGE: usize = 4096;
/// Marker, length and type.
pub const HEADER_LEN: usize = 19;
pub const AFI_L2VPN: u16 = 25;
pub const SAFI_EVPN: u8 = 70;
/// The 2-octet AS a 4-octet ASN is sent as in the OPEN's My AS field (RFC 6793).
pub const AS_TRANS: u16 = 23456;

/// NOTIFICATION error codes (RFC 4271 s.4.5, RFC 7313).
pub mod code {
    pub const HEADER: u8 = 1;
    pub const OPEN: u8 = 2;
    pub const UPDATE: u8 = 3;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;
    pub const ROUTE_REFRESH: u8 = 7;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    /// A refresh request for one family; the RFC 7313 subtype byte is ignored (nve does not
    /// advertise enhanced route refresh, so peers send 0).
    RouteRefresh {
        afi: u16,
        safi: u8,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    /// The real ASN: the 4-octet capability's when it is there, else the My AS field.
    pub asn: u32,
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
    pub caps: Capabilities,
}

/// The capabilities (RFC 5492) nve reads; `encode` writes them in this order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Multiprotocol (RFC 4760) AFI 25 / SAFI 70.
    pub evpn: bool,
    /// Multiprotocol AFI 1 / SAFI 1. Other families a peer lists are not recorded.
    pub ipv4_unicast: bool,
    /// Code 65 (RFC 6793); its ASN is `Open::asn`.
    pub four_octet_asn: bool,
    /// Code 2 (RFC 2918). The pre-standard code 128 lands in `other`.
    pub route_refresh: bool,
    /// Code 64 (RFC 4724).
    pub graceful_restart: Option<GracefulRestart>,
    /// Codes of the other capabilities, in order (FRR: 128, 70, 69, 73, 71...). `encode`
    /// writes each with an empty value.
    pub other: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GracefulRestart {
    /// The R bit.
    pub restarting: bool,
    /// Seconds, 12 bits.
    pub restart_time: u16,
    /// The F bit of the AFI 25 / SAFI 70 entry; `None` without one (FRR's default helper
    /// mode lists no families). Entries for other families are not recorded.
    pub evpn_forwarding: Option<bool>,
}

/// One UPDATE's EVPN content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Update {
    /// MP_UNREACH_NLRI routes (and, on treat-as-withdraw, the ones that were announced).
    pub withdrawn: Vec<Route>,
    /// MP_REACH_NLRI routes, all with `attributes`.
    pub announced: Vec<Route>,
    /// `Some` exactly when `announced` is not empty (`encode` writes defaults if it is `None`).
    pub attributes: Option<Attributes>,
    /// End-of-RIB (RFC 4724 s.2): an UPDATE whose only attribute is an empty MP_UNREACH_NLRI
    /// for AFI 25 / SAFI 70. `encode` writes exactly that and ignores the other fields.
    pub end_of_rib: bool,
    /// Decoded only: NLRIs passed over: EVPN route types other than 2 and 3, and IPv4 unicast
    /// prefixes in the withdrawn and NLRI fields. Families other than EVPN in
    /// MP_REACH/MP_UNREACH are passed over without counting.
    pub skipped: u32,
    /// Decoded only: type-2/3 NLRIs whose content was wrong (their frame intact): they are in
    /// no list, and the UPDATE is treated as withdraw.
    pub malformed: u32,
    /// Decoded only: why the announced routes were moved to `withdrawn` (RFC 7606).
    pub treat_as_withdraw: Option<WithdrawReason>,
}

/// Why an UPDATE was treated as withdraw (RFC 7606 s.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WithdrawReason {
    #[error("a malformed EVPN NLRI")]
    MalformedNlri,
    #[error("a malformed EXTENDED_COMMUNITIES attribute (RFC 7606 s.7.14)")]
    MalformedExtCommunities,
    #[error("a malformed COMMUNITIES attribute (RFC 7606 s.7.8)")]
    MalformedCommunities,
}

/// A NOTIFICATION (RFC 4271 s.4.5): one received, or what `decode` says to send.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("BGP NOTIFICATION {code}/{subcode} ({})", self.name())]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    pub fn new(code: u8, subcode: u8, data: impl Into<Vec<u8>>) -> Notification {
        Notification {
            code,
            subcode,
            data: data.into(),
        }
    }

    /// RFC 4271's name of the error (RFC 4486 for Cease subcodes).
    pub fn name(&self) -> &'static str {
        match (self.code, self.subcode) {
            (1, 1) => "connection not synchronized",
            (1, 2) => "bad message length",
            (1, 3) => "bad message type",
            (1, _) => "message header error",
            (2, 1) => "unsupported version number",
            (2, 2) => "bad peer AS",
            (2, 3) => "bad BGP identifier",
            (2, 4) => "unsupported optional parameter",
            (2, 6) => "unacceptable hold time",
            (2, 7) => "unsupported capability",
            (2, _) => "OPEN message error",
            (3, 1) => "malformed attribute list",
            (3, 2) => "unrecognized well-known attribute",
            (3, 3) => "missing well-known attribute",
            (3, 4) => "attribute flags error",
            (3, 5) => "attribute length error",
            (3, 6) => "invalid ORIGIN attribute",
            (3, 8) => "invalid NEXT_HOP attribute",
            (3, 9) => "optional attribute error",
            (3, 10) => "invalid network field",
            (3, 11) => "malformed AS_PATH",
            (3, _) => "UPDATE message error",
            (4, _) => "hold timer expired",
            (5, _) => "finite state machine error",
            (6, 2) => "cease: administrative shutdown",
            (6, 3) => "cease: peer de-configured",
            (6, 4) => "cease: administrative reset",
            (6, 5) => "cease: connection rejected",
            (6, 7) => "cease: connection collision resolution",
            (6, _) => "cease",
            (7, _) => "ROUTE-REFRESH message error",
            _ => "unknown error code",
        }
    }
}

const OPEN: u8 = 1;
const UPDATE: u8 = 2;
const NOTIFICATION: u8 = 3;
const KEEPALIVE: u8 = 4;
const ROUTE_REFRESH: u8 = 5;

const FLAG_OPTIONAL: u8 = 0x80;
const FLAG_TRANSITIVE: u8 = 0x40;
const FLAG_PARTIAL: u8 = 0x20;
const FLAG_EXTENDED: u8 = 0x10;

const ATTR_ORIGIN: u8 = 1;
const ATTR_AS_PATH: u8 = 2;
const ATTR_NEXT_HOP: u8 = 3;
const ATTR_MED: u8 = 4;
const ATTR_LOCAL_PREF: u8 = 5;
const ATTR_ATOMIC_AGGREGATE: u8 = 6;
const ATTR_AGGREGATOR: u8 = 7;
const ATTR_COMMUNITIES: u8 = 8;
const ATTR_ORIGINATOR_ID: u8 = 9;
const ATTR_CLUSTER_LIST: u8 = 10;
const ATTR_MP_REACH: u8 = 14;
const ATTR_MP_UNREACH: u8 = 15;
const ATTR_EXT_COMMUNITIES: u8 = 16;
const ATTR_AS4_PATH: u8 = 17;
const ATTR_AS4_AGGREGATOR: u8 = 18;
const ATTR_PMSI: u8 = 22;
const ATTR_LARGE_COMMUNITIES: u8 = 32;

const CAP_MP: u8 = 1;
const CAP_ROUTE_REFRESH: u8 = 2;
const CAP_GRACEFUL_RESTART: u8 = 64;
const CAP_FOUR_OCTET_ASN: u8 = 65;

const AS_SEQUENCE: u8 = 2;

// ---------------------------------------------------------------------------------------
// Encoding

/// The whole message, marker and header included. `four_octet_asn` (negotiated) sets the
/// AS_PATH width; without it 4-octet ASNs go as AS_TRANS plus an AS4_PATH (RFC 6793). The
/// caller keeps an UPDATE within `MAX_MESSAGE` (`Route::wire_len`).
pub fn encode(msg: &Message, four_octet_asn: bool) -> Vec<u8> {
    let mut out = vec![0xff; 16];
    out.extend_from_slice(&[0, 0, 0]);
    let ty = match msg {
        Message::Open(open) => {
            encode_open(&mut out, open);
            OPEN
        }
        Message::Update(update) => {
            encode_update(&mut out, update, four_octet_asn);
            UPDATE
        }
        Message::Notification(n) => {
            out.extend_from_slice(&[n.code, n.subcode]);
            out.extend_from_slice(&n.data);
            NOTIFICATION
        }
        Message::Keepalive => KEEPALIVE,
        Message::RouteRefresh { afi, safi } => {
            out.extend_from_slice(&afi.to_be_bytes());
            out.extend_from_slice(&[0, *safi]);
            ROUTE_REFRESH
        }
    };
    out[18] = ty;
    let len = u16::try_from(out.len()).unwrap_or(u16::MAX);
    out[16..18].copy_from_slice(&len.to_be_bytes());
    out
}

fn encode_open(out: &mut Vec<u8>, open: &Open) {
    out.push(4);
    let my_as = u16::try_from(open.asn).unwrap_or(AS_TRANS);
    out.extend_from_slice(&my_as.to_be_bytes());
    out.extend_from_slice(&open.hold_time.to_be_bytes());
    out.extend_from_slice(&open.router_id.octets());
    let caps = encode_caps(&open.caps, open.asn);
    if caps.is_empty() {
        out.push(0);
    } else {
        // One Capabilities optional parameter (type 2) holding them all.
        out.push(caps.len().saturating_add(2).min(255) as u8);
        out.extend_from_slice(&[2, caps.len().min(255) as u8]);
        out.extend_from_slice(&caps);
    }
}

fn encode_caps(caps: &Capabilities, asn: u32) -> Vec<u8> {
    let mut out = Vec::new();
    if caps.evpn {
        out.extend_from_slice(&[CAP_MP, 4, 0, AFI_L2VPN as u8, 0, SAFI_EVPN]);
    }
    if caps.ipv4_unicast {
        out.extend_from_slice(&[CAP_MP, 4, 0, 1, 0, 1]);
    }
    if caps.route_refresh {
        out.extend_from_slice(&[CAP_ROUTE_REFRESH, 0]);
    }
    if caps.four_octet_asn {
        out.extend_from_slice(&[CAP_FOUR_OCTET_ASN, 4]);
        out.extend_from_slice(&asn.to_be_bytes());
    }
    if let Some(gr) = caps.graceful_restart {
        let families = if gr.evpn_forwarding.is_some() { 4 } else { 0 };
        out.extend_from_slice(&[CAP_GRACEFUL_RESTART, 2 + families]);
        let flags_time = (u16::from(gr.restarting) << 15) | (gr.restart_time & 0x0fff);
        out.extend_from_slice(&flags_time.to_be_bytes());
        if let Some(f) = gr.evpn_forwarding {
            out.extend_from_slice(&[0, AFI_L2VPN as u8, SAFI_EVPN, u8::from(f) << 7]);
        }
    }
    for &code in &caps.other {
        out.extend_from_slice(&[code, 0]);
    }
    out
}

/// Appends one path attribute, with the extended length flag when the value needs it.
fn put_attr(out: &mut Vec<u8>, flags: u8, ty: u8, value: &[u8]) {
    match u8::try_from(value.len()) {
        Ok(len) => out.extend_from_slice(&[flags, ty, len]),
        Err(_) => {
            let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&[flags | FLAG_EXTENDED, ty]);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out.extend_from_slice(value);
}

/// AS_SEQUENCE segments of at most 255 ASNs, `width` bytes each.
fn as_path_value(path: &[u32], width: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for seg in path.chunks(255) {
        v.extend_from_slice(&[AS_SEQUENCE, seg.len() as u8]);
        for &asn in seg {
            if width == 4 {
                v.extend_from_slice(&asn.to_be_bytes());
            } else {
                v.extend_from_slice(&u16::try_from(asn).unwrap_or(AS_TRANS).to_be_bytes());
            }
        }
    }
    v
}

fn put_ip(v: &mut Vec<u8>, ip: &IpAddr) {
    match ip {
        IpAddr::V4(a) => v.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => v.extend_from_slice(&a.octets()),
    }
}

fn encode_update(out: &mut Vec<u8>, u: &Update, four_octet_asn: bool) {
    let evpn = [0, AFI_L2VPN as u8, SAFI_EVPN];
    out.extend_from_slice(&[0, 0]); // no IPv4 withdrawn routes
    let mut attrs = Vec::new();
    if u.end_of_rib {
        // As FRR's bgp_update_packet_eor: flags 0x80, length 3.
        put_attr(&mut attrs, FLAG_OPTIONAL, ATTR_MP_UNREACH, &evpn);
    } else {
        let defaults;
        let a = match &u.attributes {
            Some(a) => a,
            None => {
                defaults = Attributes::default();
                &defaults
            }
        };
        let announce = !u.announced.is_empty();
        if announce {
            put_attr(&mut attrs, FLAG_TRANSITIVE, ATTR_ORIGIN, &[a.origin]);
            let width = if four_octet_asn { 4 } else { 2 };
            let path = as_path_value(&a.as_path, width);
            put_attr(&mut attrs, FLAG_TRANSITIVE, ATTR_AS_PATH, &path);
            if let Some(lp) = a.local_pref {
                put_attr(
                    &mut attrs,
                    FLAG_TRANSITIVE,
                    ATTR_LOCAL_PREF,
                    &lp.to_be_bytes(),
                );
            }
            if let Some(id) = a.originator_id {
                put_attr(&mut attrs, FLAG_OPTIONAL, ATTR_ORIGINATOR_ID, &id.octets());
            }
            if !a.cluster_list.is_empty() {
                let v: Vec<u8> = a.cluster_list.iter().flat_map(|c| c.octets()).collect();
                put_attr(&mut attrs, FLAG_OPTIONAL, ATTR_CLUSTER_LIST, &v);
            }
            let mut v = evpn.to_vec();
            v.push(match a.next_hop {
                IpAddr::V4(_) => 4,
                IpAddr::V6(_) => 16,
            });
            put_ip(&mut v, &a.next_hop);
            v.push(0); // reserved (SNPA count)
            for r in &u.announced {
                r.encode(&mut v);
            }
            put_attr(&mut attrs, FLAG_OPTIONAL, ATTR_MP_REACH, &v);
        }
        if !u.withdrawn.is_empty() {
            let mut v = evpn.to_vec();
            for r in &u.withdrawn {
                r.encode(&mut v);
            }
            put_attr(&mut attrs, FLAG_OPTIONAL, ATTR_MP_UNREACH, &v);
        }
        if announce {
            let communities = a.communities();
            if !communities.is_empty() {
                let v: Vec<u8> = communities.concat();
                let flags = FLAG_OPTIONAL | FLAG_TRANSITIVE;
                put_attr(&mut attrs, flags, ATTR_EXT_COMMUNITIES, &v);
            }
            if !four_octet_asn && a.as_path.iter().any(|&asn| asn > 0xffff) {
                let v = as_path_value(&a.as_path, 4);
                put_attr(
                    &mut attrs,
                    FLAG_OPTIONAL | FLAG_TRANSITIVE,
                    ATTR_AS4_PATH,
                    &v,
                );
            }
            if let Some(p) = &a.pmsi {
                let mut v = vec![p.flags, p.tunnel_type];
                put_label(&mut v, p.label);
                put_ip(&mut v, &p.endpoint);
                put_attr(&mut attrs, FLAG_OPTIONAL | FLAG_TRANSITIVE, ATTR_PMSI, &v);
            }
        }
    }
    let len = u16::try_from(attrs.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&attrs);
}

// ---------------------------------------------------------------------------------------
// Decoding

/// Frames and decodes the first message of `buf`: `Ok(None)` while it is incomplete,
/// `Ok(Some((message, bytes used)))`, or `Err` with the NOTIFICATION to send (RFC 4271 s.6)
/// for what is wrong: bad marker 1/1, bad length 1/2, bad type 1/3; OPEN 2/1 (version),
/// 2/2 (AS 0, RFC 7607), 2/3 (BGP id 0, RFC 6286), 2/6 (hold time 1 or 2), 2/4 (optional
/// parameter other than capabilities), 2/0 (a malformed one); UPDATE 3/1 (lengths past the
/// end, an attribute header cut off, an attribute twice), 3/2, 3/3 (ORIGIN, AS_PATH, and
/// NEXT_HOP for IPv4 NLRI), 3/4, 3/5, 3/6, 3/9 (MP_REACH/MP_UNREACH framing, RFC 4760 s.7),
/// 3/10 (IPv4 prefixes), 3/11. A bad marker is reported as soon as its bytes are in.
/// `four_octet_asn` is what the session negotiated. Never panics.
pub fn decode(buf: &[u8], four_octet_asn: bool) -> Result<Option<(Message, usize)>, Notification> {
    let marker = &buf[..buf.len().min(16)];
    if marker.iter().any(|&b| b != 0xff) {
        return Err(Notification::new(1, 1, []));
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len_field = [buf[16], buf[17]];
    let len = usize::from(u16::from_be_bytes(len_field));
    let ty = buf[18];
    let bad_length = || Notification::new(1, 2, len_field);
    if !(HEADER_LEN..=MAX_MESSAGE).contains(&len) {
        return Err(bad_length());
    }
    let min_ok = match ty {
        OPEN => len >= HEADER_LEN + 10,
        UPDATE => len >= HEADER_LEN + 4,
        NOTIFICATION => len >= HEADER_LEN + 2,
        KEEPALIVE => len == HEADER_LEN,
        // RFC 7313's 7/1 is for speakers of enhanced route refresh, which nve is not.
        ROUTE_REFRESH => len == HEADER_LEN + 4,
        _ => return Err(Notification::new(1, 3, [ty])),
    };
    if !min_ok {
        return Err(bad_length());
    }
    let Some(body) = buf.get(HEADER_LEN..len) else {
        return Ok(None);
    };
    let msg = match ty {
        OPEN => Message::Open(decode_open(body)?),
        UPDATE => Message::Update(decode_update(body, four_octet_asn)?),
        NOTIFICATION => Message::Notification(Notification::new(body[0], body[1], &body[2..])),
        KEEPALIVE => Message::Keepalive,
        _ => Message::RouteRefresh {
            afi: u16::from_be_bytes([body[0], body[1]]),
            safi: body[3],
        },
    };
    Ok(Some((msg, len)))
}

/// A bounds-checked reader: every read is `None` past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn decode_open(body: &[u8]) -> Result<Open, Notification> {
    let malformed = || Notification::new(2, 0, []);
    let mut r = Reader(body);
    let (version, my_as, hold_time, id) = (|| Some((r.u8()?, r.u16()?, r.u16()?, r.u32()?)))()
        .ok_or_else(|| Notification::new(1, 2, []))?;
    if version != 4 {
        // Data: the largest version supported (RFC 4271 s.6.2).
        return Err(Notification::new(2, 1, [0, 4]));
    }
    let opt_len = r.u8().ok_or_else(malformed)?;
    // Extended optional parameters (RFC 9072): length 255, type 255, then a 2-octet length.
    let extended = opt_len == 255 && r.0.first() == Some(&255);
    let params = if extended {
        r.u8();
        let len = r.u16().ok_or_else(malformed)?;
        r.take(usize::from(len)).ok_or_else(malformed)?
    } else {
        r.take(usize::from(opt_len)).ok_or_else(malformed)?
    };
    if !r.is_empty() {
        return Err(malformed());
    }
    let mut caps = Capabilities::default();
    let mut as4 = None;
    let mut p = Reader(params);
    while !p.is_empty() {
        let ty = p.u8().ok_or_else(malformed)?;
        let len = if extended {
            p.u16()
        } else {
            p.u8().map(u16::from)
        };
        let value = p.take(usize::from(len.ok_or_else(malformed)?));
        let value = value.ok_or_else(malformed)?;
        if ty != 2 {
            return Err(Notification::new(2, 4, []));
        }
        decode_caps(value, &mut caps, &mut as4).ok_or_else(malformed)?;
    }
    let asn = as4.unwrap_or(u32::from(my_as));
    if asn == 0 || my_as == 0 {
        return Err(Notification::new(2, 2, []));
    }
    if hold_time == 1 || hold_time == 2 {
        return Err(Notification::new(2, 6, []));
    }
    if id == 0 {
        return Err(Notification::new(2, 3, []));
    }
    Ok(Open {
        asn,
        hold_time,
        router_id: Ipv4Addr::from(id),
        caps,
    })
}

/// The capabilities of one optional parameter; `None` if one is malformed.
fn decode_caps(value: &[u8], caps: &mut Capabilities, as4: &mut Option<u32>) -> Option<()> {
    let mut c = Reader(value);
    while !c.is_empty() {
        let code = c.u8()?;
        let len = c.u8()?;
        let mut v = Reader(c.take(usize::from(len))?);
        match code {
            CAP_MP => {
                let (afi, _, safi) = (v.u16()?, v.u8()?, v.u8()?);
                if !v.is_empty() {
                    return None;
                }
                match (afi, safi) {
                    (AFI_L2VPN, SAFI_EVPN) => caps.evpn = true,
                    (1, 1) => caps.ipv4_unicast = true,
                    _ => {}
                }
            }
            CAP_ROUTE_REFRESH => caps.route_refresh = true,
            CAP_FOUR_OCTET_ASN => {
                *as4 = Some(v.u32()?);
                if !v.is_empty() {
                    return None;
                }
                caps.four_octet_asn = true;
            }
            CAP_GRACEFUL_RESTART => {
                let flags_time = v.u16()?;
                if v.0.len() % 4 != 0 {
                    return None;
                }
                let mut gr = GracefulRestart {
                    restarting: flags_time & 0x8000 != 0,
                    restart_time: flags_time & 0x0fff,
                    evpn_forwarding: None,
                };
                while !v.is_empty() {
                    let (afi, safi, flags) = (v.u16()?, v.u8()?, v.u8()?);
                    if (afi, safi) == (AFI_L2VPN, SAFI_EVPN) {
                        gr.evpn_forwarding = Some(flags & 0x80 != 0);
                    }
                }
                caps.graceful_restart = Some(gr);
            }
            _ => caps.other.push(code),
        }
    }
    Some(())
}

/// Skips the IPv4 prefixes of the withdrawn or NLRI field, counting them; 3/10 if one is
/// longer than 32 bits or cut off.
fn skip_ipv4_prefixes(field: &[u8]) -> Result<u32, Notification> {
    let mut r = Reader(field);
    let mut n = 0;
    while let Some(bits) = r.u8() {
        if bits > 32 || r.take(usize::from(bits).div_ceil(8)).is_none() {
            return Err(Notification::new(3, 10, []));
        }
        n += 1;
    }
    Ok(n)
}

/// The flags (optional, transitive, partial) a known attribute must have; `None` for
/// optional transitive ones, whose partial bit may be set, and for unknown ones.
fn required_flags(ty: u8) -> Option<u8> {
    match ty {
        ATTR_ORIGIN | ATTR_AS_PATH | ATTR_NEXT_HOP | ATTR_LOCAL_PREF | ATTR_ATOMIC_AGGREGATE => {
            Some(FLAG_TRANSITIVE)
        }
        ATTR_MED | ATTR_ORIGINATOR_ID | ATTR_CLUSTER_LIST | ATTR_MP_REACH | ATTR_MP_UNREACH => {
            Some(FLAG_OPTIONAL)
        }
        _ => None,
    }
}

fn optional_transitive(ty: u8) -> bool {
    matches!(
        ty,
        ATTR_AGGREGATOR
            | ATTR_COMMUNITIES
            | ATTR_EXT_COMMUNITIES
            | ATTR_AS4_PATH
            | ATTR_AS4_AGGREGATOR
            | ATTR_PMSI
            | ATTR_LARGE_COMMUNITIES
    )
}

/// An AS_PATH value, flattened; `None` if malformed (RFC 7606 s.7.2: a segment type other
/// than 1-4, a zero-length segment, a segment past the end).
fn as_path(value: &[u8], width: usize) -> Option<Vec<u32>> {
    let mut r = Reader(value);
    let mut path = Vec::new();
    while !r.is_empty() {
        let (ty, count) = (r.u8()?, r.u8()?);
        if !(1..=4).contains(&ty) || count == 0 {
            return None;
        }
        for _ in 0..count {
            path.push(if width == 4 {
                r.u32()?
            } else {
                u32::from(r.u16()?)
            });
        }
    }
    Some(path)
}

/// What the NLRIs of one MP_REACH/MP_UNREACH came to.
#[derive(Default)]
struct Nlris {
    routes: Vec<Route>,
    skipped: u32,
    malformed: u32,
}

/// EVPN NLRIs: route type, length, body. `None` if a frame runs past the end.
fn evpn_nlris(field: &[u8]) -> Option<Nlris> {
    let mut r = Reader(field);
    let mut out = Nlris::default();
    while !r.is_empty() {
        let ty = r.u8()?;
        let len = r.u8()?;
        match Route::decode(ty, r.take(usize::from(len))?) {
            Nlri::Route(route) => out.routes.push(route),
            Nlri::Skipped => out.skipped += 1,
            Nlri::Malformed => out.malformed += 1,
        }
    }
    Some(out)
}

fn decode_update(body: &[u8], four_octet_asn: bool) -> Result<Update, Notification> {
    let malformed_list = || Notification::new(3, 1, []);
    let mut r = Reader(body);
    let withdrawn_len = r.u16().ok_or_else(malformed_list)?;
    let withdrawn_v4 = r
        .take(usize::from(withdrawn_len))
        .ok_or_else(malformed_list)?;
    let attrs_len = r.u16().ok_or_else(malformed_list)?;
    let attrs = r.take(usize::from(attrs_len)).ok_or_else(malformed_list)?;
    let nlri_v4 = r.0;

    let mut u = Update {
        skipped: skip_ipv4_prefixes(withdrawn_v4)?,
        ..Update::default()
    };
    let mut a = Attributes::default();
    let mut seen = [false; 256];
    let mut as4_path = None;
    let mut evpn_reach = false;
    let mut evpn_eor = false;
    let width = if four_octet_asn { 4 } else { 2 };

    let mut r = Reader(attrs);
    while !r.is_empty() {
        let start = r.0;
        let header = r.take(2).ok_or_else(malformed_list)?;
        // The low four flag bits are unused and ignored (RFC 4271 s.4.3).
        let (flags, ty) = (header[0] & 0xf0, header[1]);
        let len = if flags & FLAG_EXTENDED != 0 {
            r.u16().ok_or_else(malformed_list)?
        } else {
            u16::from(r.u8().ok_or_else(malformed_list)?)
        };
        let header_len = start.len() - r.0.len();
        let Some(value) = r.take(usize::from(len)) else {
            return Err(Notification::new(3, 5, start));
        };
        // Data for the errors below: the whole attribute (flags, type, length, value).
        let raw = &start[..header_len + value.len()];
        if seen[usize::from(ty)] {
            return Err(malformed_list());
        }
        seen[usize::from(ty)] = true;
        let otp = flags & (FLAG_OPTIONAL | FLAG_TRANSITIVE | FLAG_PARTIAL);
        let flags_wrong = match required_flags(ty) {
            Some(required) => otp != required,
            None => optional_transitive(ty) && otp & (FLAG_OPTIONAL | FLAG_TRANSITIVE) != 0xc0,
        };
        if flags_wrong {
            return Err(Notification::new(3, 4, raw));
        }
        let length_error = || Notification::new(3, 5, raw);
        let fixed = |n: usize| {
            if value.len() == n {
                Ok(())
            } else {
                Err(length_error())
            }
        };
        let u32_of = |v: &[u8]| u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
        match ty {
            ATTR_ORIGIN => {
                fixed(1)?;
                if value[0] > 2 {
                    return Err(Notification::new(3, 6, raw));
                }
                a.origin = value[0];
            }
            ATTR_AS_PATH => {
                a.as_path = as_path(value, width).ok_or_else(|| Notification::new(3, 11, []))?;
            }
            ATTR_NEXT_HOP | ATTR_MED | ATTR_ORIGINATOR_ID => {
                fixed(4)?;
                if ty == ATTR_ORIGINATOR_ID {
                    a.originator_id = Some(Ipv4Addr::from(u32_of(value)));
                }
            }
            ATTR_LOCAL_PREF => {
                fixed(4)?;
                a.local_pref = Some(u32_of(value));
            }
            ATTR_ATOMIC_AGGREGATE => fixed(0)?,
            ATTR_AGGREGATOR => fixed(if four_octet_asn { 8 } else { 6 })?,
            ATTR_CLUSTER_LIST => {
                if value.is_empty() || value.len() % 4 != 0 {
                    return Err(length_error());
                }
                a.cluster_list = value.chunks(4).map(|c| Ipv4Addr::from(u32_of(c))).collect();
            }
            ATTR_COMMUNITIES if value.len() % 4 != 0 => {
                u.treat_as_withdraw = Some(WithdrawReason::MalformedCommunities);
            }
            ATTR_EXT_COMMUNITIES => {
                if value.len() % 8 != 0 {
                    u.treat_as_withdraw = Some(WithdrawReason::MalformedExtCommunities);
                } else {
                    for c in value.chunks_exact(8) {
                        let mut community = [0u8; 8];
                        community.copy_from_slice(c);
                        a.take_community(community);
                    }
                }
            }
            ATTR_AS4_PATH if !four_octet_asn => {
                // Malformed: discarded (RFC 6793 s.6).
                as4_path = as_path(value, 4);
            }
            ATTR_PMSI => {
                if value.len() < 5 {
                    return Err(length_error());
                }
                let (flags, tunnel_type) = (value[0], value[1]);
                let endpoint = ip_from(&value[5..]);
                if tunnel_type == super::route::PMSI_INGRESS_REPLICATION && endpoint.is_none() {
                    return Err(length_error());
                }
                // Other tunnel types: kept when their identifier is an address.
                a.pmsi = endpoint.map(|endpoint| Pmsi {
                    flags,
                    tunnel_type,
                    label: label_from(&value[2..5]),
                    endpoint,
                });
            }
            ATTR_MP_REACH => {
                let opt_error = || Notification::new(3, 9, raw);
                let mut v = Reader(value);
                let (afi, safi) = (v.u16(), v.u8());
                let nh_len = v.u8().ok_or_else(opt_error)?;
                let nh = v.take(usize::from(nh_len)).ok_or_else(opt_error)?;
                v.u8().ok_or_else(opt_error)?; // reserved
                if (afi, safi) == (Some(AFI_L2VPN), Some(SAFI_EVPN)) {
                    // IPv4, IPv6, or IPv6 global + link-local (RFC 2545).
                    let global = if nh.len() == 32 { &nh[..16] } else { nh };
                    a.next_hop = ip_from(global).ok_or_else(opt_error)?;
                    let n = evpn_nlris(v.0).ok_or_else(opt_error)?;
                    evpn_reach = true;
                    u.announced = n.routes;
                    u.skipped += n.skipped;
                    u.malformed += n.malformed;
                }
            }
            ATTR_MP_UNREACH => {
                let opt_error = || Notification::new(3, 9, raw);
                let mut v = Reader(value);
                let (afi, safi) = (v.u16(), v.u8().ok_or_else(opt_error)?);
                if (afi, safi) == (Some(AFI_L2VPN), SAFI_EVPN) {
                    evpn_eor = v.is_empty();
                    let n = evpn_nlris(v.0).ok_or_else(opt_error)?;
                    u.withdrawn = n.routes;
                    u.skipped += n.skipped;
                    u.malformed += n.malformed;
                }
            }
            _ if flags & FLAG_OPTIONAL == 0 && required_flags(ty).is_none() => {
                return Err(Notification::new(3, 2, raw));
            }
            _ => {} // optional attributes nve does not use
        }
    }

    let nlri_count = skip_ipv4_prefixes(nlri_v4)?;
    u.skipped += nlri_count;
    let mut mandatory = Vec::new();
    if evpn_reach || nlri_count > 0 {
        mandatory.extend_from_slice(&[ATTR_ORIGIN, ATTR_AS_PATH]);
    }
    if nlri_count > 0 {
        mandatory.push(ATTR_NEXT_HOP);
    }
    if let Some(&missing) = mandatory.iter().find(|&&ty| !seen[usize::from(ty)]) {
        return Err(Notification::new(3, 3, [missing]));
    }
    if let Some(as4) = as4_path.filter(|p| p.len() <= a.as_path.len()) {
        // RFC 6793 s.4.2.3: the leading ASNs of AS_PATH, then AS4_PATH.
        a.as_path.truncate(a.as_path.len() - as4.len());
        a.as_path.extend(as4);
    }
    if u.malformed > 0 {
        u.treat_as_withdraw = Some(WithdrawReason::MalformedNlri);
    }
    if u.treat_as_withdraw.is_some() {
        let announced = std::mem::take(&mut u.announced);
        u.withdrawn.extend(announced);
    } else if !u.announced.is_empty() {
        u.attributes = Some(a);
    }
    u.end_of_rib = evpn_eor && u.withdrawn.is_empty() && u.announced.is_empty() && !evpn_reach;
    Ok(u)
}
