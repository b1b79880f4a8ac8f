//! What `nve monitor` shows: the dataplane's `MonitorEvent`s decoded (headers of the
//! frame's first bytes, VXLAN's VNI and inner frame included), one JSON line each, and the
//! table line the CLI prints. Pure: the daemon adds the names it knows (port, VN).
use std::net::IpAddr;

use etherparse::{LaxLinkExtSlice, LaxNetSlice, LaxSlicedPacket, LinkSlice, TransportSlice};
use nve_common::{
    maps::MonitorEvent,
    metrics::{DropReason, Forward, Hook},
    wire::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, VXLAN_PORT},
};
use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;

/// One line of `GET /v1/monitor`: a packet, or the count of events lost so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MonitorLine {
    /// Events the dataplane could not report since the monitor started (ring buffer full).
    Lost {
        lost: u64,
    },
    Packet(Box<MonitorRecord>),
}

/// A packet a program reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MonitorRecord {
    /// When the program saw it: nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// `underlay_rx`, `vm_egress`, `tunnel_rx`.
    pub hook: String,
    /// Whether it was dropped (`reason` is a drop reason) or forwarded (a forward outcome).
    pub dropped: bool,
    pub reason: String,
    /// The interface the program ran on, by name if it still exists.
    pub port: String,
    pub ifindex: u32,
    /// The VN's VNI once the program knew it.
    pub vni: Option<u32>,
    /// Its name.
    pub vn: Option<String>,
    /// The frame's length as it arrived.
    pub len: u32,
    /// The frame's headers as the program left it at its verdict (as it arrived, for most
    /// drops).
    #[serde(flatten)]
    pub headers: Headers,
}

/// The headers in the first bytes of a frame; what is cut off is absent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Headers {
    pub src_mac: Option<MacAddr>,
    pub dst_mac: Option<MacAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// The (innermost tag's) ethertype.
    pub ether_type: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_ip: Option<IpAddr>,
    /// IP protocol number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proto: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    /// VXLAN (UDP to 4789): the VXLAN header's VNI...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vxlan_vni: Option<u32>,
    /// ... and the frame it carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inner: Option<Box<Headers>>,
}

impl Headers {
    /// Decodes Ethernet, 802.1Q/802.1ad tags, IPv4/IPv6, TCP/UDP ports and VXLAN (with
    /// its inner frame) from `frame`, as far as it goes (etherparse's lax slicing: a frame
    /// cut off at the capture's end keeps the headers it has).
    pub fn decode(frame: &[u8]) -> Headers {
        let mut h = Headers::default();
        let Ok(p) = LaxSlicedPacket::from_ethernet(frame) else {
            return h;
        };
        if let Some(LinkSlice::Ethernet2(eth)) = &p.link {
            h.dst_mac = Some(MacAddr(eth.destination()));
            h.src_mac = Some(MacAddr(eth.source()));
            h.ether_type = Some(eth.ether_type().0);
        }
        for ext in &p.link_exts {
            if let LaxLinkExtSlice::Vlan(tag) = ext {
                h.vlan = h.vlan.or(Some(tag.vlan_identifier().value()));
                h.ether_type = Some(tag.ether_type().0);
            }
        }
        let (src, dst, proto) = match &p.net {
            Some(LaxNetSlice::Ipv4(ip)) => (
                IpAddr::V4(ip.header().source_addr()),
                IpAddr::V4(ip.header().destination_addr()),
                ip.payload().ip_number,
            ),
            Some(LaxNetSlice::Ipv6(ip)) => (
                IpAddr::V6(ip.header().source_addr()),
                IpAddr::V6(ip.header().destination_addr()),
                ip.payload().ip_number,
            ),
            _ => return h,
        };
        (h.src_ip, h.dst_ip, h.proto) = (Some(src), Some(dst), Some(proto.0));
        match &p.transport {
            Some(TransportSlice::Udp(udp)) => {
                (h.src_port, h.dst_port) = (Some(udp.source_port()), Some(udp.destination_port()));
                if udp.destination_port() == VXLAN_PORT {
                    h.vxlan(udp.payload());
                }
            }
            Some(TransportSlice::Tcp(tcp)) => {
                (h.src_port, h.dst_port) = (Some(tcp.source_port()), Some(tcp.destination_port()));
            }
            _ => {}
        }
        h
    }

    /// A VXLAN header and the frame behind it.
    fn vxlan(&mut self, payload: &[u8]) {
        let Some(vx) = payload.get(..8) else {
            return;
        };
        self.vxlan_vni = Some(u32::from_be_bytes([0, vx[4], vx[5], vx[6]]));
        let inner = Headers::decode(&payload[8..]);
        if inner.dst_mac.is_some() {
            self.inner = Some(Box::new(inner));
        }
    }

    /// `src > dst vlan V ip:port > ip:port proto [vni N: inner]`.
    pub fn line(&self) -> String {
        let mut s = String::new();
        let shown = |m: Option<MacAddr>| m.map_or("?".into(), |m| m.to_string());
        s.push_str(&format!(
            "{} > {}",
            shown(self.src_mac),
            shown(self.dst_mac)
        ));
        if let Some(vid) = self.vlan {
            s.push_str(&format!(" vlan {vid}"));
        }
        match (self.src_ip, self.dst_ip) {
            (Some(src), Some(dst)) => {
                let end = |ip: IpAddr, port: Option<u16>| match (ip, port) {
                    (IpAddr::V6(_), Some(p)) => format!("[{ip}]:{p}"),
                    (_, Some(p)) => format!("{ip}:{p}"),
                    _ => ip.to_string(),
                };
                s.push_str(&format!(
                    " {} > {} {}",
                    end(src, self.src_port),
                    end(dst, self.dst_port),
                    proto_name(self.proto)
                ));
            }
            _ => {
                if let Some(t) = self.ether_type {
                    s.push_str(&format!(" ethertype {t:#06x}"));
                }
            }
        }
        if let Some(vni) = self.vxlan_vni {
            s.push_str(&format!(" [vni {vni}"));
            if let Some(inner) = &self.inner {
                s.push_str(&format!(": {}", inner.line()));
            }
            s.push(']');
        }
        s
    }
}

fn proto_name(proto: Option<u8>) -> String {
    match proto {
        Some(IPPROTO_ICMP) => "icmp".into(),
        Some(IPPROTO_TCP) => "tcp".into(),
        Some(IPPROTO_UDP) => "udp".into(),
        Some(IPPROTO_ICMPV6) => "icmpv6".into(),
        Some(p) => format!("proto {p}"),
        None => "?".into(),
    }
}

impl MonitorRecord {
    /// The record of `event`, seen at `time_ns` since the epoch; `names` gives the port's
    /// and the VN's names.
    pub fn of(event: &MonitorEvent, time_ns: u64, port: String, vn: Option<String>) -> Self {
        let hook = Hook::ALL
            .into_iter()
            .find(|h| *h as u8 == event.hook)
            .map_or_else(|| format!("hook{}", event.hook), |h| h.name().into());
        let code = u32::from(event.code);
        let reason = if event.dropped != 0 {
            DropReason::from_u32(code).map(|d| d.name().to_string())
        } else {
            Forward::ALL
                .into_iter()
                .find(|f| *f as u32 == code)
                .map(|f| f.name().to_string())
        };
        let captured = usize::from(event.captured).min(event.head.len());
        MonitorRecord {
            time_ns,
            hook,
            dropped: event.dropped != 0,
            reason: reason.unwrap_or_else(|| code.to_string()),
            port,
            ifindex: event.ifindex,
            vni: (event.vni != 0).then_some(event.vni),
            vn,
            len: event.len,
            headers: Headers::decode(&event.head[..captured]),
        }
    }

    /// `time hook DROP reason port P vn V headers`, as `nve monitor` prints it.
    pub fn line(&self) -> String {
        let secs = self.time_ns / 1_000_000_000;
        let micros = (self.time_ns % 1_000_000_000) / 1000;
        let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
        let verdict = if self.dropped { "DROP" } else { "FORWARD" };
        let vn = match (&self.vn, self.vni) {
            (Some(name), _) => format!(" vn {name}"),
            (None, Some(vni)) => format!(" vni {vni}"),
            (None, None) => String::new(),
        };
        format!(
            "{h:02}:{m:02}:{s:02}.{micros:06} {} {verdict} {} port {}{vn} len {} {}",
            self.hook,
            self.reason,
            self.port,
            self.len,
            self.headers.line()
        )
    }

    /// Whether the packet is of VN `vn` (its name, or a VNI: the program's or the VXLAN
    /// header's).
    pub fn in_vn(&self, vn: &str) -> bool {
        if self.vn.as_deref() == Some(vn) {
            return true;
        }
        let Ok(vni) = vn.parse::<u32>() else {
            return false;
        };
        self.vni == Some(vni) || self.headers.vxlan_vni == Some(vni)
    }
}

#[cfg(test)]
mod tests {
    use nve_common::wire::ETH_P_IPV4;

    use super::*;

    #[test]
    fn decodes_vxlan_with_its_inner_frame() {
        let mut f = vec![0u8; 14 + 20 + 8 + 8 + 14 + 20 + 8];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
        f[14] = 0x45;
        let ip_len = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[14 + 9] = IPPROTO_UDP;
        f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
        f[26..30].copy_from_slice(&[10, 1, 0, 2]);
        f[30..34].copy_from_slice(&[10, 1, 0, 1]);
        f[36..38].copy_from_slice(&VXLAN_PORT.to_be_bytes());
        f[42] = 0x08;
        f[46..49].copy_from_slice(&[0, 0x13, 0x88]);
        let inner = 50;
        f[inner..inner + 6].copy_from_slice(&[0xff; 6]);
        f[inner + 6..inner + 12].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        f[inner + 12..inner + 14].copy_from_slice(&0x0806u16.to_be_bytes());
        let h = Headers::decode(&f);
        assert_eq!(h.src_ip, Some("10.1.0.2".parse().unwrap()));
        assert_eq!(h.dst_port, Some(VXLAN_PORT));
        assert_eq!(h.vxlan_vni, Some(5000));
        let inner = h.inner.as_ref().expect("inner frame");
        assert_eq!(inner.src_mac, Some(MacAddr([2, 0, 0, 0, 0, 9])));
        assert_eq!(inner.ether_type, Some(0x0806));
        assert!(
            h.line()
                .contains("[vni 5000: 02:00:00:00:00:09 > ff:ff:ff:ff:ff:ff")
        );
    }

    #[test]
    fn a_cut_frame_decodes_as_far_as_it_goes() {
        // A VLAN tag cut in half: the Ethernet header, no tag.
        let h = Headers::decode(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x81, 0, 0, 7]);
        assert_eq!(h.src_mac, Some(MacAddr([2, 0, 0, 0, 0, 2])));
        assert_eq!(h.vlan, None);
        // A tagged IPv4 header cut before its addresses: the tag, no IP.
        let mut tagged = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x81, 0, 0, 7, 0x08, 0];
        tagged.extend_from_slice(&[0x45, 0, 0, 40]);
        let h = Headers::decode(&tagged);
        assert_eq!((h.vlan, h.ether_type), (Some(7), Some(ETH_P_IPV4)));
        assert_eq!(h.src_ip, None);
        assert!(Headers::decode(&[1, 2, 3]).src_mac.is_none());
    }
}
