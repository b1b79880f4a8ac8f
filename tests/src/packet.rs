//! A small frame builder for tests: Ethernet, 802.1Q, IPv4, IPv6, UDP, VXLAN, ARP, ICMP,
//! neighbour discovery.
use std::net::{Ipv4Addr, Ipv6Addr};

pub const BROADCAST: [u8; 6] = [0xff; 6];

pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An 802.1Q-tagged frame.
pub fn eth_tagged(dst: [u8; 6], src: [u8; 6], vid: u16, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut tag = Vec::with_capacity(4 + payload.len());
    tag.extend_from_slice(&vid.to_be_bytes());
    tag.extend_from_slice(&ethertype.to_be_bytes());
    tag.extend_from_slice(payload);
    eth(dst, src, 0x8100, &tag)
}

/// RFC 1071 checksum.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4 header fields a test may vary.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    /// Flags + fragment offset field (0x4000 = DF).
    pub frag: u16,
    /// Options (a multiple of 4 bytes).
    pub options: Vec<u8>,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        Self {
            src,
            dst,
            proto,
            ttl: 64,
            frag: 0x4000,
            options: Vec::new(),
        }
    }

    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let hlen = 20 + self.options.len();
        let mut h = vec![0u8; hlen];
        h[0] = 0x40 | (hlen / 4) as u8;
        h[2..4].copy_from_slice(&((hlen + payload.len()) as u16).to_be_bytes());
        h[6..8].copy_from_slice(&self.frag.to_be_bytes());
        h[8] = self.ttl;
        h[9] = self.proto;
        h[12..16].copy_from_slice(&self.src.octets());
        h[16..20].copy_from_slice(&self.dst.octets());
        h[20..].copy_from_slice(&self.options);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }
}

/// Recomputes the checksum of the IPv4 header at `at` in `frame` (after a test edited it).
pub fn refresh_ipv4_checksum(frame: &mut [u8], at: usize) {
    let ihl = usize::from(frame[at] & 0x0f) * 4;
    frame[at + 10..at + 12].fill(0);
    let c = checksum(&frame[at..at + ihl]);
    frame[at + 10..at + 12].copy_from_slice(&c.to_be_bytes());
}

/// A UDP datagram with a zero checksum.
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

pub fn vxlan(flags: u8, vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut v = vec![
        flags,
        0,
        0,
        0,
        (vni >> 16) as u8,
        (vni >> 8) as u8,
        vni as u8,
        0,
    ];
    v.extend_from_slice(inner);
    v
}

/// A complete VXLAN-in-IPv4 frame.
pub fn vxlan_frame(
    outer_dst_mac: [u8; 6],
    outer_src_mac: [u8; 6],
    ip: &Ipv4,
    sport: u16,
    vni: u32,
    inner: &[u8],
) -> Vec<u8> {
    eth(
        outer_dst_mac,
        outer_src_mac,
        0x0800,
        &ip.packet(&udp(sport, 4789, &vxlan(0x08, vni, inner))),
    )
}

/// An ICMP echo request with `len` bytes of payload.
pub fn icmp_echo(id: u16, seq: u16, len: usize) -> Vec<u8> {
    let mut p = vec![8, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend((0..len).map(|i| i as u8));
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// An inner IPv4 ICMP echo frame between two VMs.
pub fn inner_ping(dst: [u8; 6], src: [u8; 6], len: usize) -> Vec<u8> {
    let ip = Ipv4::new([192, 168, 10, 1].into(), [192, 168, 10, 2].into(), 1);
    eth(dst, src, 0x0800, &ip.packet(&icmp_echo(1, 1, len)))
}

/// An ARP request (who has `target`, tell `sender`), broadcast.
pub fn arp_request(src: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend_from_slice(&src);
    a.extend_from_slice(&sender.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target.octets());
    eth(BROADCAST, src, 0x0806, &a)
}

/// The ARP reply `owner` (at `owner_ip`) sends to `asker` (at `asker_ip`).
pub fn arp_reply(
    asker: [u8; 6],
    asker_ip: Ipv4Addr,
    owner: [u8; 6],
    owner_ip: Ipv4Addr,
) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 2];
    a.extend_from_slice(&owner);
    a.extend_from_slice(&owner_ip.octets());
    a.extend_from_slice(&asker);
    a.extend_from_slice(&asker_ip.octets());
    eth(asker, owner, 0x0806, &a)
}

/// An IPv6 packet (no extension headers, hop limit 64).
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    ipv6_hops(src, dst, next, 64, payload)
}

pub fn ipv6_hops(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hops: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(40 + payload.len());
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next, hops]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// An ICMPv6 message from `src` to `dst` with its checksum.
pub fn icmpv6(src: Ipv6Addr, dst: Ipv6Addr, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0];
    m.extend_from_slice(body);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(m.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&m);
    let c = checksum(&pseudo);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// A neighbour solicitation from `src` (MAC and address) for `target`, to its
/// solicited-node multicast group, with a source link-layer address option.
pub fn neighbour_solicit(src_mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let t = target.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | t[13] as u16,
        u16::from_be_bytes([t[14], t[15]]),
    );
    let mut body = vec![0, 0, 0, 0];
    body.extend_from_slice(&t);
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&src_mac);
    let g = group.octets();
    let dst_mac = [0x33, 0x33, g[12], g[13], g[14], g[15]];
    eth(
        dst_mac,
        src_mac,
        0x86dd,
        &ipv6_hops(src, group, 58, 255, &icmpv6(src, group, 135, &body)),
    )
}

/// The solicited advertisement `owner` sends to `asker` for `target`.
pub fn neighbour_reply(
    asker_mac: [u8; 6],
    asker: Ipv6Addr,
    owner_mac: [u8; 6],
    target: Ipv6Addr,
) -> Vec<u8> {
    let mut body = vec![0x60, 0, 0, 0];
    body.extend_from_slice(&target.octets());
    body.extend_from_slice(&[2, 1]);
    body.extend_from_slice(&owner_mac);
    let icmp = icmpv6(target, asker, 136, &body);
    eth(
        asker_mac,
        owner_mac,
        0x86dd,
        &ipv6_hops(target, asker, 58, 255, &icmp),
    )
}

/// An ICMPv6 neighbour advertisement for `target` (solicited, override; checksum left
/// zero: nothing on the path verifies it).
pub fn neighbour_advert(target: Ipv6Addr, mac: [u8; 6]) -> Vec<u8> {
    let mut p = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
    p.extend_from_slice(&target.octets());
    p.extend_from_slice(&[2, 1]);
    p.extend_from_slice(&mac);
    p
}

/// A reverse ARP request announcing `mac` (what QEMU sends after a migration).
pub fn rarp(mac: [u8; 6]) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4, 0, 3];
    a.extend_from_slice(&mac);
    a.extend_from_slice(&[0; 4]);
    a.extend_from_slice(&mac);
    a.extend_from_slice(&[0; 4]);
    eth(BROADCAST, mac, 0x8035, &a)
}

/// An unsolicited neighbour advertisement (override) of `target` by `mac`, from the
/// link-local `src` to all nodes.
pub fn unsolicited_na(mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let all_nodes: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut body = vec![0x20, 0, 0, 0];
    body.extend_from_slice(&target.octets());
    body.extend_from_slice(&[2, 1]);
    body.extend_from_slice(&mac);
    let icmp = icmpv6(src, all_nodes, 136, &body);
    eth(
        [0x33, 0x33, 0, 0, 0, 1],
        mac,
        0x86dd,
        &ipv6_hops(src, all_nodes, 58, 255, &icmp),
    )
}

/// The ICMP "fragmentation needed" nve answers an IPv4 `frame` too big for `mtu` with:
/// from the frame's destination to its source, quoting its IPv4 header and 8 bytes.
pub fn frag_needed(frame: &[u8], mtu: u16) -> Vec<u8> {
    let (dst, src) = (&frame[..6], &frame[6..12]);
    let ip = &frame[14..];
    let mut icmp = vec![3, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(&ip[..28]);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let to = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let from = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let mut reply = Ipv4::new(from, to, 1);
    reply.frag = 0;
    eth(
        src.try_into().unwrap(),
        dst.try_into().unwrap(),
        0x0800,
        &reply.packet(&icmp),
    )
}

/// The ICMPv6 "packet too big" nve answers an IPv6 `frame` too big for `mtu` with.
pub fn packet_too_big(frame: &[u8], mtu: u32) -> Vec<u8> {
    let (dst, src) = (&frame[..6], &frame[6..12]);
    let ip = &frame[14..];
    let to = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
    let from = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap());
    let mut body = mtu.to_be_bytes().to_vec();
    body.extend_from_slice(&ip[..48]);
    eth(
        src.try_into().unwrap(),
        dst.try_into().unwrap(),
        0x86dd,
        &ipv6_hops(from, to, 58, 64, &icmpv6(from, to, 2, &body)),
    )
}
