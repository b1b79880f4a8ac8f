//! EVPN routes (RFC 7432 s.7.2, 7.3) and the path attributes that come with them, as values:
//! what the session and the NVA translate to and from. `wire` puts them on the wire.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use crate::mac::MacAddr;

/// PMSI tunnel type for ingress (head-end) replication (RFC 6514 s.5, RFC 8365 s.5.1.3).
pub const PMSI_INGRESS_REPLICATION: u8 = 6;
/// BGP tunnel encapsulation type for VXLAN (RFC 8365 s.5.1.3), in the encapsulation community.
pub const TUNNEL_VXLAN: u16 = 8;
/// The encapsulation extended community for VXLAN: transitive opaque (0x03), sub-type 0x0c.
pub const ENCAP_VXLAN: [u8; 8] = [0x03, 0x0c, 0, 0, 0, 0, 0, TUNNEL_VXLAN as u8];

/// A route distinguisher, raw (RFC 4364 s.4.2). nve never looks inside one a peer sent.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rd(pub [u8; 8]);

impl Rd {
    /// Type 1, `addr:index`: what FRR and nve use per VN (`VTEP:index`).
    pub fn ipv4(addr: Ipv4Addr, index: u16) -> Rd {
        let [a, b, c, d] = addr.octets();
        let [i, j] = index.to_be_bytes();
        Rd([0, 1, a, b, c, d, i, j])
    }

    /// Type 0, `asn:value`.
    pub fn as2(asn: u16, value: u32) -> Rd {
        let mut rd = [0u8; 8];
        rd[2..4].copy_from_slice(&asn.to_be_bytes());
        rd[4..].copy_from_slice(&value.to_be_bytes());
        Rd(rd)
    }
}

/// `asn:value`, `a.b.c.d:index`, `asn4:value` by type; an unknown type as 16 hex digits.
impl fmt::Display for Rd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.0;
        let u16_at = |i: usize| u16::from_be_bytes([r[i], r[i + 1]]);
        let u32_at = |i: usize| u32::from_be_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
        match u16_at(0) {
            0 => write!(f, "{}:{}", u16_at(2), u32_at(4)),
            1 => write!(f, "{}:{}", Ipv4Addr::from(u32_at(2)), u16_at(6)),
            2 => write!(f, "{}:{}", u32_at(2), u16_at(6)),
            _ => r.iter().try_for_each(|b| write!(f, "{b:02x}")),
        }
    }
}

impl fmt::Debug for Rd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A route distinguisher or route target that is not `ASN:N` or `IPv4:N` in range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {text:?}: expected ASN:N or IPv4:N")]
pub struct ParseError {
    what: &'static str,
    text: String,
}

/// The `(administrator, assigned)` halves of `ASN:N` / `IPv4:N`, as FRR's config writes them.
enum Admin {
    Asn(u32),
    Ipv4(Ipv4Addr),
}

fn split_admin(s: &str) -> Option<(Admin, u32)> {
    let (admin, value) = s.rsplit_once(':')?;
    let value = value.parse().ok()?;
    let admin = match admin.parse::<Ipv4Addr>() {
        Ok(ip) => Admin::Ipv4(ip),
        Err(_) => Admin::Asn(admin.parse().ok()?),
    };
    Some((admin, value))
}

impl FromStr for Rd {
    type Err = ParseError;
    /// `10.0.0.1:100` (type 1), `65000:100` (type 0), `4200000000:100` (type 2).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseError {
            what: "route distinguisher",
            text: s.to_string(),
        };
        match split_admin(s).ok_or_else(err)? {
            (Admin::Ipv4(ip), v) => Ok(Rd::ipv4(ip, u16::try_from(v).map_err(|_| err())?)),
            (Admin::Asn(asn), v) => match u16::try_from(asn) {
                Ok(asn) => Ok(Rd::as2(asn, v)),
                Err(_) => {
                    let v = u16::try_from(v).map_err(|_| err())?;
                    let mut rd = [0, 2, 0, 0, 0, 0, 0, 0];
                    rd[2..6].copy_from_slice(&asn.to_be_bytes());
                    rd[6..].copy_from_slice(&v.to_be_bytes());
                    Ok(Rd(rd))
                }
            },
        }
    }
}

/// A route target extended community, raw (RFC 4360 s.4, RFC 5668): transitive type 0x00
/// (2-octet AS), 0x01 (IPv4) or 0x02 (4-octet AS), sub-type 0x02.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteTarget(pub [u8; 8]);

impl RouteTarget {
    /// `asn:value` with a 2-octet ASN: FRR's auto RT is `(AS & 0xFFFF):VNI`.
    pub fn as2(asn: u16, value: u32) -> RouteTarget {
        let mut rt = [0x00, 0x02, 0, 0, 0, 0, 0, 0];
        rt[2..4].copy_from_slice(&asn.to_be_bytes());
        rt[4..].copy_from_slice(&value.to_be_bytes());
        RouteTarget(rt)
    }

    /// `asn:value` with a 4-octet ASN.
    pub fn as4(asn: u32, value: u16) -> RouteTarget {
        let mut rt = [0x02, 0x02, 0, 0, 0, 0, 0, 0];
        rt[2..6].copy_from_slice(&asn.to_be_bytes());
        rt[6..].copy_from_slice(&value.to_be_bytes());
        RouteTarget(rt)
    }

    /// `addr:value`.
    pub fn ipv4(addr: Ipv4Addr, value: u16) -> RouteTarget {
        let mut rt = [0x01, 0x02, 0, 0, 0, 0, 0, 0];
        rt[2..6].copy_from_slice(&addr.octets());
        rt[6..].copy_from_slice(&value.to_be_bytes());
        RouteTarget(rt)
    }

    /// Whether an extended community is a route target (of the three types above).
    pub fn is_route_target(community: &[u8; 8]) -> bool {
        matches!(community[0], 0x00..=0x02) && community[1] == 0x02
    }
}

impl fmt::Display for RouteTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.0;
        let u16_at = |i: usize| u16::from_be_bytes([r[i], r[i + 1]]);
        let u32_at = |i: usize| u32::from_be_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
        match (r[0], r[1]) {
            (0x00, 0x02) => write!(f, "{}:{}", u16_at(2), u32_at(4)),
            (0x01, 0x02) => write!(f, "{}:{}", Ipv4Addr::from(u32_at(2)), u16_at(6)),
            (0x02, 0x02) => write!(f, "{}:{}", u32_at(2), u16_at(6)),
            _ => r.iter().try_for_each(|b| write!(f, "{b:02x}")),
        }
    }
}

impl fmt::Debug for RouteTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for RouteTarget {
    type Err = ParseError;
    /// `65000:100` (2-octet AS), `4200000000:100` (4-octet AS), `10.0.0.1:100` (IPv4).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseError {
            what: "route target",
            text: s.to_string(),
        };
        match split_admin(s).ok_or_else(err)? {
            (Admin::Ipv4(ip), v) => Ok(RouteTarget::ipv4(ip, v.try_into().map_err(|_| err())?)),
            (Admin::Asn(asn), v) => match u16::try_from(asn) {
                Ok(asn) => Ok(RouteTarget::as2(asn, v)),
                Err(_) => Ok(RouteTarget::as4(asn, v.try_into().map_err(|_| err())?)),
            },
        }
    }
}

/// The NLRIs nve sends and takes (RFC 7432 s.7.2 and 7.3). The decoder skips (and counts)
/// the other route types; a type-2 route's second label (an L3 VNI, symmetric IRB) is not kept.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// Type 2, MAC/IP Advertisement: `label` is MPLS label 1, the VNI (RFC 8365 s.5.1.3: the
    /// 24 bits of the label field carry the VNI as they are, as FRR's `vni2label` writes it).
    MacIp {
        rd: Rd,
        esi: [u8; 10],
        tag: u32,
        mac: MacAddr,
        ip: Option<IpAddr>,
        label: u32,
    },
    /// Type 3, Inclusive Multicast Ethernet Tag. FRR 8.4 takes only an IPv4 originator: an
    /// IPv6 one makes it reset the session (`process_type3_route`).
    Imet {
        rd: Rd,
        tag: u32,
        originator: IpAddr,
    },
}

pub(crate) const TYPE_MAC_IP: u8 = 2;
pub(crate) const TYPE_IMET: u8 = 3;

/// What one NLRI of an MP_REACH/MP_UNREACH decodes to.
pub(crate) enum Nlri {
    Route(Route),
    /// A route type nve does not use (1, 4, 5, ...).
    Skipped,
    /// A route of type 2 or 3 whose length or fields are wrong (its frame is intact).
    Malformed,
}

fn ip_len(ip: &Option<IpAddr>) -> usize {
    match ip {
        None => 0,
        Some(IpAddr::V4(_)) => 4,
        Some(IpAddr::V6(_)) => 16,
    }
}

fn put_ip(out: &mut Vec<u8>, ip: &IpAddr) {
    match ip {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
}

/// An address of 4 or 16 bytes.
pub(crate) fn ip_from(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).ok()?,
        ))),
        _ => None,
    }
}

/// The 3 bytes of a label field as the VNI (raw 24 bits), and back.
pub(crate) fn label_from(b: &[u8]) -> u32 {
    b.iter().take(3).fold(0, |v, &x| v << 8 | u32::from(x))
}

pub(crate) fn put_label(out: &mut Vec<u8>, vni: u32) {
    out.extend_from_slice(&vni.to_be_bytes()[1..]);
}

impl Route {
    pub fn rd(&self) -> Rd {
        match self {
            Route::MacIp { rd, .. } | Route::Imet { rd, .. } => *rd,
        }
    }

    /// The route as BGP keys it (RFC 7432 s.7.2): a type-2 route's ESI and label are
    /// attributes, not prefix, and withdrawals need not carry them (FRR 8.4 withdraws with
    /// label 0). Compare `key()`s, not routes, to match a withdrawal to what was announced.
    pub fn key(&self) -> Route {
        match self {
            Route::MacIp {
                rd, tag, mac, ip, ..
            } => Route::MacIp {
                rd: *rd,
                esi: [0; 10],
                tag: *tag,
                mac: *mac,
                ip: *ip,
                label: 0,
            },
            imet => imet.clone(),
        }
    }

    /// Bytes the route takes in an MP_REACH/MP_UNREACH (type and length included): what a
    /// sender counts to keep an UPDATE within `wire::MAX_MESSAGE`.
    pub fn wire_len(&self) -> usize {
        2 + match self {
            Route::MacIp { ip, .. } => 33 + ip_len(ip),
            Route::Imet { originator, .. } => 13 + ip_len(&Some(*originator)),
        }
    }

    /// Appends the NLRI: route type, length, then the fields (RFC 7432 s.7.2, 7.3).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Route::MacIp {
                rd,
                esi,
                tag,
                mac,
                ip,
                label,
            } => {
                out.extend_from_slice(&[TYPE_MAC_IP, (33 + ip_len(ip)) as u8]);
                out.extend_from_slice(&rd.0);
                out.extend_from_slice(esi);
                out.extend_from_slice(&tag.to_be_bytes());
                out.push(48);
                out.extend_from_slice(&mac.0);
                out.push((ip_len(ip) * 8) as u8);
                if let Some(ip) = ip {
                    put_ip(out, ip);
                }
                put_label(out, *label);
            }
            Route::Imet {
                rd,
                tag,
                originator,
            } => {
                let len = ip_len(&Some(*originator));
                out.extend_from_slice(&[TYPE_IMET, (13 + len) as u8]);
                out.extend_from_slice(&rd.0);
                out.extend_from_slice(&tag.to_be_bytes());
                out.push((len * 8) as u8);
                put_ip(out, originator);
            }
        }
    }

    /// Decodes the body (after type and length) of one NLRI of route type `ty`.
    pub(crate) fn decode(ty: u8, b: &[u8]) -> Nlri {
        let parsed = match ty {
            TYPE_MAC_IP => Self::decode_mac_ip(b),
            TYPE_IMET => Self::decode_imet(b),
            _ => return Nlri::Skipped,
        };
        parsed.map_or(Nlri::Malformed, Nlri::Route)
    }

    /// RD 8, ESI 10, tag 4, MAC length 1 (48), MAC 6, IP length 1 (0/32/128), IP, label1 3,
    /// and an optional label2 3: FRR accepts exactly 33, 37, 49 bytes or those plus 3.
    fn decode_mac_ip(b: &[u8]) -> Option<Route> {
        if b.len() < 30 || b[22] != 48 {
            return None;
        }
        let ip_bytes = match b[29] {
            0 => 0,
            32 => 4,
            128 => 16,
            _ => return None,
        };
        let end = 30 + ip_bytes;
        if b.len() != end + 3 && b.len() != end + 6 {
            return None;
        }
        Some(Route::MacIp {
            rd: Rd(b[0..8].try_into().ok()?),
            esi: b[8..18].try_into().ok()?,
            tag: u32::from_be_bytes(b[18..22].try_into().ok()?),
            mac: MacAddr(b[23..29].try_into().ok()?),
            ip: if ip_bytes == 0 {
                None
            } else {
                Some(ip_from(&b[30..end])?)
            },
            label: label_from(&b[end..end + 3]),
        })
    }

    /// RD 8, tag 4, IP length 1 (32/128), originator IP: 17 or 29 bytes.
    fn decode_imet(b: &[u8]) -> Option<Route> {
        let ip_bytes = match (b.len(), b.get(12)?) {
            (17, 32) => 4,
            (29, 128) => 16,
            _ => return None,
        };
        Some(Route::Imet {
            rd: Rd(b[0..8].try_into().ok()?),
            tag: u32::from_be_bytes(b[8..12].try_into().ok()?),
            originator: ip_from(&b[13..13 + ip_bytes])?,
        })
    }
}

/// The MAC Mobility extended community (RFC 7432 s.7.7): type 0x06, sub-type 0x00.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacMobility {
    /// Flags bit 0: a static MAC that must not move.
    pub sticky: bool,
    pub seq: u32,
}

/// The PMSI Tunnel attribute (code 22, RFC 6514 s.5), as EVPN uses it for type-3 routes
/// (RFC 7432 s.11.2, RFC 8365 s.5.1.3): ingress replication, label = VNI, endpoint = VTEP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pmsi {
    pub flags: u8,
    pub tunnel_type: u8,
    /// The raw 24 bits of the label field: the VNI.
    pub label: u32,
    /// The tunnel identifier: for ingress replication the endpoint's address.
    pub endpoint: IpAddr,
}

impl Pmsi {
    /// What nve sends with its type-3 routes: flags 0, ingress replication.
    pub fn ingress_replication(vni: u32, endpoint: IpAddr) -> Pmsi {
        Pmsi {
            flags: 0,
            tunnel_type: PMSI_INGRESS_REPLICATION,
            label: vni,
            endpoint,
        }
    }
}

/// The path attributes of announced EVPN routes.
///
/// Not kept on decode: MED, NEXT_HOP (IPv4 unicast only), ATOMIC_AGGREGATE, AGGREGATOR,
/// communities, and unknown optional attributes. AS_SET and confederation segments are
/// flattened into `as_path` in order; `encode` writes one AS_SEQUENCE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    /// 0 IGP, 1 EGP, 2 INCOMPLETE.
    pub origin: u8,
    pub as_path: Vec<u32>,
    /// Required on iBGP (RFC 4271 s.5.1.5); the decoder cannot tell iBGP, the session checks.
    pub local_pref: Option<u32>,
    /// The MP_REACH_NLRI next hop (IPv4, or IPv6 global: a link-local second one is dropped).
    pub next_hop: IpAddr,
    pub route_targets: Vec<RouteTarget>,
    /// The encapsulation extended community (RFC 9012 s.4.1) with tunnel type VXLAN (8).
    pub vxlan: bool,
    /// The first MAC Mobility community (as FRR: RFC 7432 is silent on several; later ones go
    /// to `other_communities`).
    pub mac_mobility: Option<MacMobility>,
    pub pmsi: Option<Pmsi>,
    /// Route reflection (RFC 4456): kept and passed through as they came.
    pub originator_id: Option<Ipv4Addr>,
    pub cluster_list: Vec<Ipv4Addr>,
    /// Extended communities not typed above, kept in order.
    pub other_communities: Vec<[u8; 8]>,
}

impl Default for Attributes {
    /// ORIGIN IGP, an empty AS_PATH (iBGP), next hop 0.0.0.0, nothing else.
    fn default() -> Self {
        Attributes {
            origin: 0,
            as_path: Vec::new(),
            local_pref: None,
            next_hop: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            route_targets: Vec::new(),
            vxlan: false,
            mac_mobility: None,
            pmsi: None,
            originator_id: None,
            cluster_list: Vec::new(),
            other_communities: Vec::new(),
        }
    }
}

impl Attributes {
    /// Sorts one extended community into its field.
    pub(crate) fn take_community(&mut self, c: [u8; 8]) {
        if RouteTarget::is_route_target(&c) {
            self.route_targets.push(RouteTarget(c));
        } else if c == ENCAP_VXLAN {
            self.vxlan = true;
        } else if c[0] == 0x06 && c[1] == 0x00 && self.mac_mobility.is_none() {
            self.mac_mobility = Some(MacMobility {
                sticky: c[2] & 1 != 0,
                seq: u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
            });
        } else {
            self.other_communities.push(c);
        }
    }

    /// The extended communities to send: route targets, encapsulation, MAC Mobility, the rest.
    pub(crate) fn communities(&self) -> Vec<[u8; 8]> {
        let mut out: Vec<[u8; 8]> = self.route_targets.iter().map(|rt| rt.0).collect();
        if self.vxlan {
            out.push(ENCAP_VXLAN);
        }
        if let Some(MacMobility { sticky, seq }) = self.mac_mobility {
            let [a, b, c, d] = seq.to_be_bytes();
            out.push([0x06, 0x00, u8::from(sticky), 0, a, b, c, d]);
        }
        out.extend_from_slice(&self.other_communities);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rd_and_rt_print_and_parse_as_frr_writes_them() {
        let rd = Rd::ipv4("10.0.0.1".parse().unwrap(), 100);
        assert_eq!(rd.0, [0, 1, 10, 0, 0, 1, 0, 100]);
        assert_eq!(rd.to_string(), "10.0.0.1:100");
        assert_eq!("10.0.0.1:100".parse::<Rd>().unwrap(), rd);
        assert_eq!("65000:7".parse::<Rd>().unwrap().to_string(), "65000:7");
        assert_eq!(
            "4200000000:7".parse::<Rd>().unwrap().to_string(),
            "4200000000:7"
        );
        assert!("10.0.0.1:70000".parse::<Rd>().is_err());
        assert!("x:1".parse::<Rd>().is_err());

        let rt = RouteTarget::as2(65000, 100);
        assert_eq!(rt.0, [0x00, 0x02, 0xfd, 0xe8, 0, 0, 0, 100]);
        assert_eq!(rt.to_string(), "65000:100");
        assert_eq!("65000:100".parse::<RouteTarget>().unwrap(), rt);
        let rt4 = RouteTarget::as4(4_200_000_000, 100);
        assert_eq!(rt4.0[..2], [0x02, 0x02]);
        assert_eq!(rt4.to_string(), "4200000000:100");
        assert_eq!("4200000000:100".parse::<RouteTarget>().unwrap(), rt4);
        assert!(RouteTarget::is_route_target(&rt4.0));
        assert!(!RouteTarget::is_route_target(&ENCAP_VXLAN));
    }

    #[test]
    fn evpn_nlri_lengths_are_what_frr_accepts() {
        let rd = Rd::ipv4(Ipv4Addr::new(10, 0, 0, 1), 1);
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        for (ip, len) in [
            (None, 33),
            (Some("192.168.10.1".parse().unwrap()), 37),
            (Some("fd00::1".parse().unwrap()), 49),
        ] {
            let r = Route::MacIp {
                rd,
                esi: [0; 10],
                tag: 0,
                mac,
                ip,
                label: 100,
            };
            let mut out = Vec::new();
            r.encode(&mut out);
            assert_eq!(out[1] as usize, len);
            assert_eq!(out.len(), r.wire_len());
            assert!(matches!(Route::decode(out[0], &out[2..]), Nlri::Route(d) if d == r));
            // With a second label (FRR's L3 VNI) it still reads, the label dropped.
            out.extend_from_slice(&[0, 0, 9]);
            assert!(matches!(Route::decode(2, &out[2..]), Nlri::Route(d) if d == r));
        }
        let imet = Route::Imet {
            rd,
            tag: 0,
            originator: "10.0.0.1".parse().unwrap(),
        };
        let mut out = Vec::new();
        imet.encode(&mut out);
        assert_eq!(out[1], 17);
        assert!(matches!(Route::decode(3, &out[2..]), Nlri::Route(d) if d == imet));
        // IP length 128 in a 17-byte route, MAC length 47, a type nve does not use:
        out[14] = 128;
        assert!(matches!(Route::decode(3, &out[2..]), Nlri::Malformed));
        let mut mac_ip = vec![0u8; 33];
        mac_ip[22] = 47;
        assert!(matches!(Route::decode(2, &mac_ip), Nlri::Malformed));
        assert!(matches!(Route::decode(5, &mac_ip), Nlri::Skipped));

        // FRR withdraws a MAC with label 0: the key still matches.
        let announced = Route::MacIp {
            rd,
            esi: [1; 10],
            tag: 0,
            mac,
            ip: None,
            label: 100,
        };
        let withdrawn = Route::MacIp {
            rd,
            esi: [0; 10],
            tag: 0,
            mac,
            ip: None,
            label: 0,
        };
        assert_ne!(announced, withdrawn);
        assert_eq!(announced.key(), withdrawn.key());
        assert_eq!(imet.key(), imet);
    }
}
