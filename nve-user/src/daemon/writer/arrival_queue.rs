//! The queue a migrating-in VM's frames wait in: a tap whose vNIC is pre-associated as
//! migrating in gets frames before the VM runs (`PORT_RECEIVES`), and QEMU reads the tap
//! only once the VM resumes, so they queue in the tap's transmit queue until then. The
//! kernel's default (1,000 packets) holds 0.1 s at 10,000 frames/s; what overflows is
//! dropped by the tap and counted in its TX drops (`ip -s link show TAP`).
use std::collections::{BTreeSet, HashMap};

use crate::{
    model::{Model, PortInfo},
    netlink,
};

use super::{Change, Writer};

/// The transmit queue a tap migrating in gets, packets: the VM's pause (about a second at
/// most) at 10,000 frames/s, and the bound (each queued packet holds its buffer). A longer
/// queue set by the operator is kept.
pub const ARRIVAL_TXQUEUELEN: u32 = 10_000;

impl Writer {
    /// Lengthens the transmit queue of the taps (among those `change` touched) whose
    /// vNIC is pre-associated as migrating in, to `ARRIVAL_TXQUEUELEN`. A failure is
    /// logged: the vNIC works, with a shorter queue.
    pub(super) async fn size_arrival_queues(
        &self,
        model: &Model,
        infos: &HashMap<String, PortInfo>,
        change: Change<'_>,
    ) {
        let ports: BTreeSet<&str> = match change {
            Change::Vnics(t) => t.bindings.iter().map(|(p, _)| p.as_str()).collect(),
            _ => model.vnic_ports().collect(),
        };
        let taps = ports
            .into_iter()
            .filter(|p| infos.get(*p).is_some_and(|i| i.tap) && model.awaits_arrival(p));
        for port in taps {
            let current = netlink::txqueuelen(&self.netlink, port).await.unwrap_or(0);
            if current >= ARRIVAL_TXQUEUELEN {
                continue;
            }
            let ifindex = infos[port].ifindex;
            match netlink::set_txqueuelen(&self.netlink, ifindex, ARRIVAL_TXQUEUELEN).await {
                Ok(()) => tracing::info!(
                    port,
                    from = current,
                    to = ARRIVAL_TXQUEUELEN,
                    "tap queue sized for a migrating-in VM"
                ),
                Err(e) => tracing::warn!(port, "sizing the tap's queue: {e}"),
            }
        }
    }
}
