//! The daemon's view of the host's links and neighbours.
use std::{ffi::CString, net::Ipv4Addr};

pub use crate::model::PortInfo;
use futures_util::TryStreamExt;
use nve_common::{
    maps::{NextHop, TUNNEL_DEV},
    wire::VXLAN_PORT,
};
use rtnetlink::{
    Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder,
    constants::{RTMGRP_IPV4_ROUTE, RTMGRP_LINK, RTMGRP_NEIGH},
    packet_route::{
        AddressFamily,
        link::{InfoKind, LinkAttribute, LinkInfo},
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourFlags,
            NeighbourMessage, NeighbourState,
        },
        route::{RouteAddress, RouteAttribute},
    },
};

/// The name of interface `ifindex` in this network namespace.
pub fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes the call may write.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the kernel wrote a NUL-terminated name into `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// The index of interface `name` in this network namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a NUL-terminated name; the call reads it only.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// Asks the kernel to keep `vtep`'s neighbour entry on `ifindex` resolved (a *managed*
/// neighbour, kernel >= 5.16), so the encapsulation path's FIB lookups find its MAC before
/// the first frame, including broadcast copies that cannot wait for resolution. Marked
/// externally learned, which keeps it from garbage collection. Replaces an unmanaged entry.
pub async fn keep_neighbour_resolved(
    handle: &Handle,
    ifindex: u32,
    vtep: Ipv4Addr,
) -> Result<(), rtnetlink::Error> {
    if is_managed(handle, ifindex, vtep).await? {
        // Ours already (a restarted daemon): replacing it would unresolve it for a moment.
        return Ok(());
    }
    let mut req = handle
        .neighbours()
        .add(ifindex, vtep.into())
        .state(NeighbourState::None)
        .flags(NeighbourFlags::ExtLearned)
        .replace();
    req.message_mut()
        .attributes
        .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
    req.execute().await
}

/// The underlay route to a remote VTEP: egress interface and the neighbour to send to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub oif: u32,
    /// The VTEP itself when on-link, else the route's gateway.
    pub hop: Ipv4Addr,
}

/// A neighbour entry as the daemon needs it.
struct Neighbour {
    state: NeighbourState,
    lladdr: Option<[u8; 6]>,
    managed: bool,
}

/// The neighbour entry of `ip` on `ifindex`, if any.
async fn neighbour(
    handle: &Handle,
    ifindex: u32,
    ip: Ipv4Addr,
) -> Result<Option<Neighbour>, rtnetlink::Error> {
    let mut neighbours = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute();
    while let Some(n) = neighbours.try_next().await? {
        if n.header.ifindex != ifindex {
            continue;
        }
        let mut found = Neighbour {
            state: n.header.state,
            lladdr: None,
            managed: false,
        };
        let mut dest = None;
        for attr in n.attributes {
            match attr {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => dest = Some(a),
                NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                    found.lladdr = l.try_into().ok()
                }
                NeighbourAttribute::ExtFlags(f) => {
                    found.managed = f.contains(NeighbourExtFlags::Managed)
                }
                _ => {}
            }
        }
        if dest == Some(ip) {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Whether the neighbour entry of `ip` on `ifindex` exists and is managed.
async fn is_managed(handle: &Handle, ifindex: u32, ip: Ipv4Addr) -> Result<bool, rtnetlink::Error> {
    Ok(neighbour(handle, ifindex, ip)
        .await?
        .is_some_and(|n| n.managed))
}

/// Looks up the kernel's route to `vtep` (as `ip route get` does).
pub async fn route_to(handle: &Handle, vtep: Ipv4Addr) -> Result<Option<Route>, rtnetlink::Error> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(vtep, 32)
        .build();
    let mut routes = handle.route().get(msg).execute();
    let Some(route) = routes.try_next().await? else {
        return Ok(None);
    };
    let mut oif = None;
    let mut gateway = None;
    for attr in route.attributes {
        match attr {
            RouteAttribute::Oif(i) => oif = Some(i),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(g),
            _ => {}
        }
    }
    Ok(oif.map(|oif| Route {
        oif,
        hop: gateway.unwrap_or(vtep),
    }))
}

/// The next hop to `route` if its neighbour is resolved: interface MAC and MTU, and the
/// neighbour's MAC.
pub async fn next_hop(handle: &Handle, route: Route) -> Result<Option<NextHop>, rtnetlink::Error> {
    let mut links = handle.link().get().match_index(route.oif).execute();
    let Some(link) = links.try_next().await? else {
        return Ok(None);
    };
    let mut smac = None;
    let mut mtu = None;
    for attr in link.attributes {
        match attr {
            LinkAttribute::Address(a) if a.len() == 6 => smac = a.try_into().ok(),
            LinkAttribute::Mtu(m) => mtu = Some(m),
            _ => {}
        }
    }
    let (Some(smac), Some(mtu)) = (smac, mtu) else {
        return Ok(None);
    };
    Ok(neighbour(handle, route.oif, route.hop)
        .await?
        .filter(|n| USABLE.contains(&n.state))
        .and_then(|n| n.lladdr)
        .map(|dmac| NextHop {
            ifindex: route.oif,
            mtu,
            smac,
            dmac,
        }))
}

/// Neighbour states whose link-layer address may be used.
const USABLE: [NeighbourState; 6] = [
    NeighbourState::Reachable,
    NeighbourState::Stale,
    NeighbourState::Delay,
    NeighbourState::Probe,
    NeighbourState::Permanent,
    NeighbourState::Noarp,
];

/// A connection that receives the kernel's link, neighbour and IPv4 route notifications:
/// each message is a hint that next hops may have changed.
pub fn watch_underlay() -> std::io::Result<(
    impl std::future::Future<Output = ()>,
    impl futures_util::Stream + Unpin,
)> {
    let (mut conn, _handle, messages) = rtnetlink::new_connection()?;
    let groups = RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE;
    use rtnetlink::sys::AsyncSocket;
    conn.socket_mut()
        .socket_mut()
        .bind(&rtnetlink::sys::SocketAddr::new(0, groups))?;
    Ok((conn, messages))
}

/// The interface `name` in this namespace, if it exists.
pub async fn port_info(handle: &Handle, name: &str) -> Result<Option<PortInfo>, rtnetlink::Error> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    let link = match links.try_next().await {
        Ok(Some(link)) => link,
        Ok(None) => return Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => return Ok(None),
        Err(e) => return Err(e),
    };
    let tap = link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Tun))),
        _ => false,
    });
    Ok(Some(PortInfo {
        ifindex: link.header.index,
        tap,
    }))
}

/// What `pick` finds among the attributes of interface `name`, if it exists.
async fn link_attribute<T>(
    handle: &Handle,
    name: &str,
    pick: impl Fn(&LinkAttribute) -> Option<T>,
) -> Option<T> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    let link = links.try_next().await.ok()??;
    link.attributes.iter().find_map(pick)
}

/// The MTU of interface `name`, if it exists.
pub async fn mtu(handle: &Handle, name: &str) -> Option<u32> {
    link_attribute(handle, name, |a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
    .await
}

/// The transmit queue length (packets) of interface `name`, if it exists.
pub async fn txqueuelen(handle: &Handle, name: &str) -> Option<u32> {
    link_attribute(handle, name, |a| match a {
        LinkAttribute::TxQueueLen(n) => Some(*n),
        _ => None,
    })
    .await
}

/// Sets interface `ifindex`'s transmit queue length to `len` packets (`ip link set ...
/// txqueuelen`).
pub async fn set_txqueuelen(
    handle: &Handle,
    ifindex: u32,
    len: u32,
) -> Result<(), rtnetlink::Error> {
    let msg = LinkUnspec::new_with_index(ifindex).txqueuelen(len).build();
    handle.link().set(msg).execute().await
}

/// The Ethernet address of interface `name`, if it exists and has one.
pub async fn mac(handle: &Handle, name: &str) -> Option<[u8; 6]> {
    link_attribute(handle, name, |a| match a {
        LinkAttribute::Address(m) => m.as_slice().try_into().ok(),
        _ => None,
    })
    .await
}

/// Creates the collect_md ("external") vxlan device, unless it exists, on UDP 4789 and brings it up. Its
/// socket is also what lets the underlay GRO VXLAN traffic.
pub async fn create_tunnel_device(handle: &Handle) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if port_info(handle, TUNNEL_DEV).await?.is_some() {
        // Left by a daemon that kept its dataplane: it carries traffic, keep it.
        return Ok(());
    }
    let msg = LinkVxlan::new(TUNNEL_DEV, 0)
        .collect_metadata(true)
        .port(VXLAN_PORT)
        .learning(false)
        .up()
        .build();
    handle
        .link()
        .add(msg)
        .execute()
        .await
        .with_context(|| format!("creating collect_md vxlan device {TUNNEL_DEV} on UDP {VXLAN_PORT} (is another VXLAN device using the port?)"))
}

/// Deletes interface `name` if it exists.
pub async fn delete_link(handle: &Handle, name: &str) -> anyhow::Result<()> {
    if let Some(info) = port_info(handle, name).await? {
        handle.link().del(info.ifindex).execute().await?;
    }
    Ok(())
}

/// Removes the managed neighbour entry of `route` that [`keep_neighbour_resolved`] made;
/// traffic resolves it again as an ordinary entry if the host still needs it.
pub async fn forget_neighbour(handle: &Handle, route: Route) -> Result<(), rtnetlink::Error> {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.ifindex = route.oif;
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            route.hop,
        )));
    handle.neighbours().del(msg).execute().await
}
