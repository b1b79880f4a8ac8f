//! Frames a VM sends (TC ingress on the host side of its tap or veth): port (+VID) -> VN;
//! (VN, destination MAC) -> a local port (switched as is) or a remote VTEP (encapsulated);
//! broadcast and multicast to the VN's other local ports and its flood list of VTEPs.
use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_SHOT},
    cty::c_void,
    helpers::bpf_loop,
    macros::classifier,
    programs::TcContext,
};
use network_types::eth::EthHdr;
use nve_common::{
    maps::{DataplaneConfig, FDB_LOCAL, FDB_REMOTE, FLOOD_MAX_REMOTES, LocalPort, VnInfo},
    metrics::{DropReason, Forward, Hook},
};

use crate::{
    announce, antispoof, arp, deliver, encap, maps,
    metrics::{self, Scope},
    nd,
    parse::{ETH_LEN, Frame, be16, is_multicast, is_vlan, require},
    pmtu,
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
    let cfg = maps::config().ok_or(DropReason::PortNotInVn)?;
    let eth = require::<EthHdr>(ctx, 0, DropReason::PktTooSmall)?;
    let dst = eth.dst_addr;
    let Tag { vid, tagged } = ingress_tag(ctx, eth)?;
    // SAFETY: reading a field of our own __sk_buff.
    let ingress = LocalPort::new(unsafe { (*ctx.skb.skb).ifindex }, vid);
    let port = maps::port(ingress.ifindex, vid).ok_or(DropReason::PortNotInVn)?;
    scope.set_port(ingress.ifindex);
    scope.set_vni(port.vni);
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
    if is_multicast(&dst) {
        if let Some(action) = arp::reply(ctx, vni, ingress)? {
            return Ok((action, Forward::ArpReplied));
        }
        if let Some(action) = nd::reply(ctx, vni, ingress)? {
            return Ok((action, Forward::NdReplied));
        }
        let vn = maps::vn(vni).ok_or(DropReason::FloodListEmpty)?;
        return flood(ctx, cfg, vni, vn, ingress);
    }
    let Some(entry) = maps::fdb(vni, dst) else {
        // Unknown unicast floods like broadcast, unless the VN says every MAC is known.
        let vn = maps::vn(vni).ok_or(DropReason::FdbMiss)?;
        if !vn.floods_unknown() {
            return Err(DropReason::FdbMiss);
        }
        return flood(ctx, cfg, vni, vn, ingress);
    };
    match entry.kind {
        FDB_LOCAL => {
            let to = deliver::forwarding(entry.port)?;
            Ok((deliver::to_port(ctx, vni, to)?, Forward::LocalSwitched))
        }
        FDB_REMOTE => {
            let remote = entry.remote;
            if let Some(action) = pmtu::check(ctx, vni, remote, ingress)? {
                return Ok((action, Forward::IcmpTooBig));
            }
            encap::encapsulate(ctx, cfg, vni, remote)?;
            Ok((
                encap::send(ctx, cfg, vni, remote, false)?,
                Forward::Encapsulated,
            ))
        }
        _ => Err(DropReason::FdbMiss),
    }
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
    // SAFETY: reading fields of our own __sk_buff.
    let (present, tci) = unsafe { ((*ctx.skb.skb).vlan_present, (*ctx.skb.skb).vlan_tci) };
    let ether_type = u16::from_be(eth.ether_type);
    let (tci, inner_type) = if present != 0 {
        (tci as u16, ether_type)
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

/// Head-end replication: a copy to each other local port of the VN, then one encapsulated
/// copy per remote VTEP of its flood list (encapsulated once, re-addressed per VTEP).
#[inline(always)]
fn flood(
    ctx: &TcContext,
    cfg: &DataplaneConfig,
    vni: u32,
    vn: &VnInfo,
    ingress: LocalPort,
) -> Result<(i32, Forward), DropReason> {
    let local = deliver::flood_ports(ctx, vni, vn, ingress)?;
    let remotes = vn.remote_count.min(FLOOD_MAX_REMOTES as u32);
    if remotes == 0 {
        if local == 0 {
            return Err(DropReason::FloodListEmpty);
        }
        return Ok((TC_ACT_SHOT, Forward::Flooded));
    }
    encap::encapsulate(ctx, cfg, vni, vn.remotes[0])?;
    let mut state = RemotesLoop {
        skb: ctx.skb.skb,
        cfg,
        vni,
        vn,
        error: None,
    };
    // SAFETY: the callback and its state live for the call; the state is ours.
    unsafe {
        bpf_loop(
            remotes,
            remote_copy as *mut c_void,
            &mut state as *mut _ as *mut c_void,
            0,
        )
    };
    match state.error {
        Some(reason) => Err(reason),
        None => Ok((TC_ACT_SHOT, Forward::Flooded)),
    }
}

struct RemotesLoop<'a> {
    skb: *mut __sk_buff,
    cfg: &'a DataplaneConfig,
    vni: u32,
    vn: &'a VnInfo,
    error: Option<DropReason>,
}

extern "C" fn remote_copy(index: u64, state: *mut c_void) -> i64 {
    // SAFETY: `state` is the `RemotesLoop` flood passed to bpf_loop.
    let state = unsafe { &mut *(state as *mut RemotesLoop) };
    let i = index as usize;
    if i >= FLOOD_MAX_REMOTES {
        return 1;
    }
    let ctx = TcContext::new(state.skb);
    let remote = state.vn.remotes[i];
    let sent = if i == 0 {
        Ok(())
    } else {
        encap::readdress(&ctx, state.cfg, remote)
    }
    .and_then(|()| encap::send(&ctx, state.cfg, state.vni, remote, true));
    match sent {
        Ok(_) => 0,
        Err(reason) => {
            state.error = Some(reason);
            1
        }
    }
}
