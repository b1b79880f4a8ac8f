//! Classification of underlay frames, shared by `xdp_underlay_rx` and `tc_underlay_rx`.
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
    vxlan::VxlanHdr,
};
use nve_common::{
    maps::{
        DataplaneConfig, FDB_LOCAL, FDB_MOVED, FDB_REMOTE, VN_INLINE_VTEPS, VnInfo, Vtep,
        vtep_ipv4, vtep_v4,
    },
    metrics::{DropReason, Forward},
    wire::{ETH_LEN, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_UDP, VXLAN_FLAG_I, VXLAN_PORT},
};

use crate::{
    csum,
    deliver::{self, VmPort},
    maps,
    metrics::Scope,
    parse::{Frame, be16, header, ipv4_proto, ipv6_next_hdr, is_multicast, require},
};

/// Where a decapsulated frame goes.
pub enum Target {
    /// One local port (known unicast).
    Port(VmPort),
    /// Every local port of the VN (broadcast, multicast).
    Flood(&'static VnInfo),
    /// A MAC that moved to this VTEP: the frame is re-addressed there.
    Moved(Vtep),
}

/// A VXLAN frame for this VTEP and a VN it serves.
pub struct Decap {
    /// Offset of the inner Ethernet header: the bytes decapsulation removes.
    pub inner_offset: usize,
    pub target: Target,
}

/// What an underlay frame is.
pub enum Underlay {
    /// Not nve's: the host's stack gets it untouched.
    Host(Forward),
    Vxlan(Decap),
}

/// Classifies an underlay frame. Only UDP/4789 to this VTEP is nve's; anything else,
/// including frames too short to tell, goes to the host. A frame that is nve's but invalid,
/// or for a VN or MAC this NVE does not serve, is an `Err` with its drop reason.
#[inline(always)]
pub fn classify(
    f: &impl Frame,
    cfg: &DataplaneConfig,
    scope: &mut Scope,
) -> Result<Underlay, DropReason> {
    let host = Ok(Underlay::Host(Forward::PassedToHost));
    let Some(eth) = header::<EthHdr>(f, 0) else {
        return host;
    };
    match u16::from_be(eth.ether_type) {
        ETH_P_IPV4 => {}
        ETH_P_IPV6 if vxlan_over_ipv6(f, cfg) => {
            return Ok(Underlay::Host(Forward::ToKernelVxlan));
        }
        _ => return host,
    }
    let Some(ip) = header::<Ipv4Hdr>(f, ETH_LEN) else {
        return host;
    };
    let ihl = ip.ihl() as usize;
    if ip.version() != 4 || ihl < Ipv4Hdr::LEN || ip.dst_addr != cfg.vtep_ipv4 {
        return host;
    }
    if ipv4_proto(ip) != IPPROTO_UDP {
        return host;
    }
    if be16(ip.frags) & 0x3fff != 0 {
        return Ok(Underlay::Host(Forward::PassedFragment));
    }
    let udp_offset = ETH_LEN + ihl;
    let Some(udp) = header::<UdpHdr>(f, udp_offset) else {
        return host;
    };
    if be16(udp.dst) != VXLAN_PORT {
        return host;
    }
    check_outer(f, cfg, eth, ip, udp)?;
    let vxlan_offset = udp_offset + UdpHdr::LEN;
    let vxlan = require::<VxlanHdr>(f, vxlan_offset, DropReason::VxlanInvalidHdr)?;
    if vxlan.flags & VXLAN_FLAG_I == 0 {
        return Err(DropReason::VxlanInvalidHdr);
    }
    let vni = (vxlan.vni[0] as u32) << 16 | (vxlan.vni[1] as u32) << 8 | vxlan.vni[2] as u32;
    let inner_offset = vxlan_offset + VxlanHdr::LEN;
    let inner = require::<EthHdr>(f, inner_offset, DropReason::InnerTruncated)?;
    let target = target(vni, inner.dst_addr, vtep_v4(ip.src_addr), scope)?;
    Ok(Underlay::Vxlan(Decap {
        inner_offset,
        target,
    }))
}

/// What the kernel's stack checks of a frame before its UDP socket sees it (ip_rcv,
/// udp_rcv), on VXLAN to this VTEP: addressed to this host at L2, a valid header checksum,
/// and the IPv4 and UDP lengths those of the frame. Whatever the stack would drop is a
/// drop here too, never decapsulated.
#[inline(always)]
fn check_outer(
    f: &impl Frame,
    cfg: &DataplaneConfig,
    eth: &EthHdr,
    ip: &Ipv4Hdr,
    udp: &UdpHdr,
) -> Result<(), DropReason> {
    if f.for_other_host(&eth.dst_addr, &cfg.underlay_mac) {
        return Err(DropReason::OtherHost);
    }
    if !ipv4_csum_ok(f, ip.ihl() as usize) {
        return Err(DropReason::IpCsum);
    }
    let ip_len = be16(ip.tot_len) as u32;
    if ip_len + ETH_LEN as u32 != f.frame_len() {
        return Err(DropReason::IpTotLen);
    }
    if be16(udp.len) as u32 + ip.ihl() as u32 != ip_len {
        return Err(DropReason::UdpLen);
    }
    Ok(())
}

/// Whether the outer IPv4 header (`ihl` bytes, options included) sums to its checksum.
#[inline(always)]
fn ipv4_csum_ok(f: &impl Frame, ihl: usize) -> bool {
    let Some(fixed) = header::<[u8; Ipv4Hdr::LEN]>(f, ETH_LEN) else {
        return false;
    };
    let mut sum = csum::add(0, fixed);
    // Options (rare), a 32-bit word at a time: at most 40 bytes.
    let mut off = Ipv4Hdr::LEN;
    while off < 60 && off < ihl {
        let Some(word) = f.load_word(ETH_LEN + off) else {
            return false;
        };
        sum = csum::add(sum, &word);
        off += 4;
    }
    csum::finish(sum) == 0
}

/// Where a decapsulated frame of `vni` to `dst` from VTEP `src` goes; shared by every
/// decapsulation path. Only VTEPs the VN knows may send to it, unless the VN accepts any.
/// Unknown unicast floods to the VN's local ports unless the VN says otherwise. Puts a
/// served VN in `scope`.
#[inline(always)]
pub fn target(vni: u32, dst: [u8; 6], src: Vtep, scope: &mut Scope) -> Result<Target, DropReason> {
    let vn = maps::vn(vni).ok_or(DropReason::VniNotFound)?;
    scope.set_vn(vni, vn.counters);
    if !vn.accepts_any_vtep() && !knows_vtep(vni, vn, src) {
        return Err(DropReason::VtepNotInVn);
    }
    if is_multicast(&dst) {
        return Ok(Target::Flood(vn));
    }
    match maps::fdb(vni, dst) {
        Some(entry) if entry.kind == FDB_LOCAL => Ok(Target::Port(deliver::receiving(entry.port)?)),
        Some(entry) if entry.kind == FDB_MOVED => Ok(Target::Moved(entry.remote)),
        Some(entry) if entry.kind == FDB_REMOTE => Err(DropReason::UnderlayHairpin),
        Some(_) => Err(DropReason::FdbMiss),
        None if vn.floods_unknown() => Ok(Target::Flood(vn)),
        None => Err(DropReason::FdbMiss),
    }
}

/// Whether VN `vni` decapsulates from `src`: by its own list when it has one inline (no
/// lookup), else by `VN_VTEPS_MAP`.
#[inline(always)]
fn knows_vtep(vni: u32, vn: &VnInfo, src: Vtep) -> bool {
    if !vn.lists_vteps_inline() {
        return maps::vn_knows_vtep(vni, src);
    }
    let Some(src) = vtep_ipv4(&src) else {
        return false;
    };
    let (src, count) = (u32::from_ne_bytes(src), vn.vtep_count as usize);
    let mut i = 0;
    while i < VN_INLINE_VTEPS && i < count {
        if vn.vteps[i] == src {
            return true;
        }
        i += 1;
    }
    false
}

/// Whether the frame is UDP to the VXLAN port of this NVE's IPv6 VTEP: the kernel's
/// collect_md vxlan device decapsulates it (checking its UDP checksum) and `tc_tunnel_rx`
/// delivers it.
#[inline(always)]
fn vxlan_over_ipv6(f: &impl Frame, cfg: &DataplaneConfig) -> bool {
    let Some(ip) = header::<Ipv6Hdr>(f, ETH_LEN) else {
        return false;
    };
    if cfg.vtep_ipv6 == [0; 16] || ip.dst_addr != cfg.vtep_ipv6 || ipv6_next_hdr(ip) != IPPROTO_UDP
    {
        return false;
    }
    header::<UdpHdr>(f, ETH_LEN + Ipv6Hdr::LEN).is_some_and(|udp| be16(udp.dst) == VXLAN_PORT)
}
