//! The daemon's view of the host's links and neighbours.
use std::{ffi::CString, net::Ipv4Addr};

use rtnetlink::{
    Handle,
    packet_route::neighbour::{NeighbourAttribute, NeighbourExtFlags, NeighbourFlags, NeighbourState},
};

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
