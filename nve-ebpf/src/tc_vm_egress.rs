//! Frames a VM sends (TC ingress on the host side of its tap or veth): port (+VID) -> VN;
//! (VN, destination MAC) -> a local port (switched as is) or a remote VTEP (encapsulated);
//! broadcast and multicast to the VN's other local ports and its flood list of VTEPs.
use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK, TC_ACT_SHOT},
    cty::c_void,
    macros::classifier,
    programs::TcContext,
};
use network_types::eth::EthHdr;
use nve_common::{
    maps::{
        DataplaneConfig, FDB_LOCAL, FDB_MOVED, FDB_REMOTE, FLOOD_MAX_REMOTES, LocalPort, VnInfo,
        vtep_ipv4,
    },
    metrics::{DropReason, Forward, Hook},
    wire::{ETH_LEN, ETH_P_ECP, ETH_P_LLDP, VXLAN_IPV4_OVERHEAD, VXLAN_IPV6_OVERHEAD},
};

use crate::{
    announce, antispoof, arp,
    deliver::{self, VmPort},
    encap, maps,
    metrics::{self, Scope},
    nd,
    parse::{Frame, SkbMeta, be16, is_multicast, is_vlan, require},
    pmtu, tunnel,
};

#[classifier]
pub fn tc_vm_egress(ctx: TcContext) -> i32 {
    let len = ctx.frame_len();
    let mut scope = Scope::default();
    let result = try_tc_vm_egress(&ctx, &mut scope);
    metrics::account(&ctx, Hook::VmEgress, len, scope, result, TC_ACT_SHOT)
}

#[inline(always)]
fn try_tc_vm_egress(ctx: &TcContext, scope: &mut Scope) -> Result<(i32, Forward), DropReason> {
    let cfg = maps::config().ok_or(DropReason::NoConfig)?;
    let eth = require::<EthHdr>(ctx, 0, DropReason::PktTooSmall)?;
    if is_link_control(u16::from_be(eth.ether_type)) {
        return Ok((TC_ACT_OK, Forward::LinkControl));
    }
    let Tag { vid, tagged } = ingress_tag(ctx, eth)?;
    let ingress = LocalPort::new(ctx.ifindex(), vid);
    let port = maps::port(ingress.ifindex, vid).ok_or(DropReason::PortNotInVn)?;
    scope.set_port(ingress.ifindex, port.counters);
    scope.set_vn(port.vni, port.vn_counters);
    let vni = port.vni;
    let sender = if port.checks_src_mac() {
        antispoof::mac(vni, eth.src_addr, ingress)?
    } else {
        0
    };
    if tagged {
        deliver::vlan_pop(ctx)?;
    }
    antispoof::ips(ctx, vni, ingress, sender)?;
    // Announcements are reported even from a vNIC not active yet: a migrated VM's first
    // frames are its announcements.
    announce::observe(ctx, vni, ingress);
    if !port.is_active() {
        return Err(DropReason::VnicInactive);
    }
    // Read here, not kept from above: six bytes held across the checks cost six spilled
    // registers, and the stack is shared with the replication callbacks.
    let dst = require::<EthHdr>(ctx, 0, DropReason::PktTooSmall)?.dst_addr;
    let asker = VmPort {
        at: ingress,
        counters: port.counters,
    };
    if is_multicast(&dst) {
        if let Some(action) = arp::reply(ctx, vni, asker)? {
            return Ok((action, Forward::ArpReplied));
        }
        if let Some(action) = nd::reply(ctx, vni, asker)? {
            return Ok((action, Forward::NdReplied));
        }
        let vn = maps::vn(vni).ok_or(DropReason::VniNotFound)?;
        return flood(ctx, cfg, vni, vn, ingress);
    }
    let Some(entry) = maps::fdb(vni, dst) else {
        // Unknown unicast floods like broadcast, unless the VN says every MAC is known.
        let vn = maps::vn(vni).ok_or(DropReason::VniNotFound)?;
        if !vn.floods_unknown() {
            return Err(DropReason::FdbMiss);
        }
        return flood(ctx, cfg, vni, vn, ingress);
    };
    match entry.kind {
        FDB_LOCAL => {
            let to = deliver::receiving(entry.port)?;
            // As a bridge: never back where it came from.
            if to.at.is(&ingress) {
                return Err(DropReason::Hairpin);
            }
            Ok((deliver::to_port(ctx, to)?, Forward::LocalSwitched))
        }
        FDB_REMOTE | FDB_MOVED => {
            let remote = entry.remote;
            match vtep_ipv4(&remote) {
                Some(v4) => {
                    // One lookup for the MTU check and the outer MACs; none yet: the
                    // kernel resolves (transmit).
                    let nh = maps::next_hop(v4);
                    let budget = nh.map(|nh| nh.mtu.saturating_sub(VXLAN_IPV4_OVERHEAD));
                    if let Some(action) = pmtu::check(ctx, vni, budget, asker)? {
                        return Ok((action, Forward::IcmpTooBig));
                    }
                    encap::encapsulate(ctx, cfg, vni, v4, nh)?;
                    let action = encap::transmit(ctx, cfg, nh, false)?;
                    Ok((action, Forward::Encapsulated))
                }
                None => {
                    let budget = cfg.underlay_mtu.saturating_sub(VXLAN_IPV6_OVERHEAD);
                    if let Some(action) = pmtu::check(ctx, vni, Some(budget), asker)? {
                        return Ok((action, Forward::IcmpTooBig));
                    }
                    let action = tunnel::send_v6(ctx, vni, &remote, false)?;
                    Ok((action, Forward::Encapsulated))
                }
            }
        }
        _ => Err(DropReason::FdbMiss),
    }
}

/// LLDP and ECP (VDP's transport): the link's own protocols, for the host, as a bridge
/// never forwards them.
#[inline(always)]
fn is_link_control(ether_type: u16) -> bool {
    matches!(ether_type, ETH_P_LLDP | ETH_P_ECP)
}

/// The port's VLAN as a frame names it.
struct Tag {
    /// 802.1Q VID; 0: untagged (or priority-tagged).
    vid: u16,
    /// The frame carries a tag (in the skb's metadata or still in the frame) to remove.
    tagged: bool,
}

/// The frame's VLAN tag: the offloaded one the stack has already taken out of the frame,
/// else one still in it. What the tag carries must be untagged: a VN carries plain
/// Ethernet frames. A stacked tag is a VLAN_STACKED drop: removing the port's tag would
/// move the next one into the skb's metadata, where encapsulation would carry it onto the
/// underlay. A priority tag (VID 0) is removed like any other.
#[inline(always)]
fn ingress_tag(ctx: &TcContext, eth: &EthHdr) -> Result<Tag, DropReason> {
    let ether_type = u16::from_be(eth.ether_type);
    let (tci, inner_type) = if let Some(tci) = ctx.offloaded_vlan_tci() {
        (tci, ether_type)
    } else if is_vlan(ether_type) {
        let tag = require::<[u8; 4]>(ctx, ETH_LEN, DropReason::PktTooSmall)?;
        (be16([tag[0], tag[1]]), be16([tag[2], tag[3]]))
    } else {
        return Ok(Tag {
            vid: 0,
            tagged: false,
        });
    };
    if is_vlan(inner_type) {
        return Err(DropReason::VlanStacked);
    }
    Ok(Tag {
        vid: tci & 0x0fff,
        tagged: true,
    })
}

/// Head-end replication: a copy to each other local port of the VN, then one copy per
/// remote VTEP of its flood list: first those over IPv6 (the kernel's vxlan device
/// encapsulates them from the frame as it is), then those over IPv4 (encapsulated once,
/// re-addressed per VTEP; the daemon puts them first in the list). A copy that fails is
/// the outcome only if no copy went anywhere: one unreachable VTEP does not cut the others
/// off.
#[inline(always)]
fn flood(
    ctx: &TcContext,
    cfg: &DataplaneConfig,
    vni: u32,
    vn: &VnInfo,
    ingress: LocalPort,
) -> Result<(i32, Forward), DropReason> {
    let local = deliver::flood_ports(ctx, vn, ingress)?;
    let remotes = vn.remote_count.min(FLOOD_MAX_REMOTES as u32);
    let v4 = vn.remote_v4_count.min(remotes);
    let mut state = RemotesLoop {
        skb: ctx.skb.skb,
        cfg,
        vni,
        vn,
        bytes: ctx.len(),
        first: v4,
        sent: 0,
        error: 0,
    };
    deliver::repeat(remotes - v4, remote_copy_v6, &mut state);
    if v4 > 0 {
        match vtep_ipv4(&vn.remotes[0]) {
            Some(first) => match encap::encapsulate(ctx, cfg, vni, first, None) {
                Ok(()) => {
                    state.first = 0;
                    deliver::repeat(v4, remote_copy_v4, &mut state);
                }
                Err(reason) => state.error = reason as u32,
            },
            None => state.error = DropReason::VtepNotIpv4 as u32,
        }
    }
    if local + state.sent > 0 {
        return Ok((TC_ACT_SHOT, Forward::Flooded));
    }
    match DropReason::from_u32(state.error) {
        Some(reason) => Err(reason),
        None => Err(DropReason::FloodListEmpty),
    }
}

struct RemotesLoop<'a> {
    skb: *mut __sk_buff,
    cfg: &'a DataplaneConfig,
    vni: u32,
    vn: &'a VnInfo,
    /// The VM's frame's length, for the per-VN counters.
    bytes: u32,
    /// Index in `vn.remotes` of the loop's first VTEP.
    first: u32,
    sent: u32,
    /// The first copy's failure (`DropReason` as a number; 0: none).
    error: u32,
}

impl RemotesLoop<'_> {
    fn record(&mut self, sent: Result<i32, DropReason>) {
        match sent {
            Ok(_) => {
                metrics::copied_to_underlay(self.vn.counters, self.bytes);
                self.sent += 1;
            }
            Err(reason) if self.error == 0 => self.error = reason as u32,
            Err(_) => {}
        }
    }
}

/// The `index`th VTEP of the loop, and the loop's state.
#[inline(always)]
fn remote_at<'a>(index: u64, state: *mut c_void) -> Option<(&'a mut RemotesLoop<'a>, [u8; 16])> {
    // SAFETY: `state` is the `RemotesLoop` flood passed to bpf_loop.
    let state = unsafe { &mut *(state as *mut RemotesLoop) };
    let i = state.first as usize + index as usize;
    let remote = *state.vn.remotes.get(i)?;
    Some((state, remote))
}

extern "C" fn remote_copy_v6(index: u64, state: *mut c_void) -> i64 {
    let Some((state, remote)) = remote_at(index, state) else {
        return 1;
    };
    let ctx = TcContext::new(state.skb);
    let sent = tunnel::send_v6(&ctx, state.vni, &remote, true);
    state.record(sent);
    0
}

extern "C" fn remote_copy_v4(index: u64, state: *mut c_void) -> i64 {
    let Some((state, remote)) = remote_at(index, state) else {
        return 1;
    };
    let Some(v4) = vtep_ipv4(&remote) else {
        return 0;
    };
    let ctx = TcContext::new(state.skb);
    // The first is addressed already.
    let addressed = if index == 0 {
        Ok(())
    } else {
        encap::readdress(&ctx, state.cfg, v4)
    };
    if let Err(reason) = addressed {
        // The frame is in no state for the next VTEP either.
        state.record(Err(reason));
        return 1;
    }
    let sent = encap::send(&ctx, state.cfg, v4, true);
    state.record(sent);
    0
}
