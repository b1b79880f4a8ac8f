//! The writer's reconciliation with the kernel: VM ports attached, maps brought to what the
//! model derives, underlay next hops resolved (see [`Writer::sync_with`]).
use std::collections::{BTreeSet, HashMap};

use crate::{
    dataplane::DataplaneError,
    error::{Error, ErrorCode},
    model::{Keys, Model, Recompute},
    netlink,
};

use super::{Change, Writer};

/// NVA entries from which a change recomputes only what it touched (`Recompute::Touched`):
/// below, the bookkeeping costs more than it saves (10,000 local associations measured
/// ~15% slower with it). Debug builds, which the integration tests run, always scope, so
/// the rigs exercise that path.
const SCOPED_FROM_NVA_ENTRIES: usize = if cfg!(debug_assertions) { 1 } else { 4096 };

fn host(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::EHost, e.to_string())
}

impl Writer {
    /// Brings VM port attachments, maps and underlay neighbours to `model`. With `strict`, a
    /// statically bound port that does not exist is an error (an API request named it);
    /// otherwise (a link event) it is left out like a vNIC's port that has not appeared
    /// yet, and bound when it does. `change`: what changed since the last sync, if known
    /// (see `Model::desired_in` and `Model::desired_touched`); `Any` rewrites what differs.
    pub async fn sync_with(
        &mut self,
        model: &Model,
        strict: bool,
        change: Change<'_>,
    ) -> Result<(), Error> {
        let infos = self.port_infos(model, strict).await?;
        self.dataplane
            .set_vm_ports(infos.keys().map(String::as_str))
            .map_err(DataplaneError::to_error)?;
        // A change resolves the next hops of VTEPs it adds or removes, before the entries
        // that send to them are written (a pause toward a VTEP new to the VN would otherwise
        // drop its first frames, UNDERLAY_NO_NEIGH, for the ~0.7 ms netlink takes); the
        // kernel's neighbour and route events (the underlay watch) refresh the others.
        let known = !matches!(change, Change::Any);
        if !(known && model.ipv4_vteps().eq(self.next_hop_vteps.iter().copied())) {
            self.refresh_next_hops(model)
                .await
                .map_err(|e| host(format!("{e:#}")))?;
        }
        // Known only once written: after a failed write the next change compares all.
        let synced_ports = self.synced_ports.take();
        match change {
            Change::Vnics(t) if synced_ports.as_ref() == Some(&infos) => {
                let above_nva = self.above_nva.take();
                let desired = model.desired_touched(|p| infos.get(p).copied(), t);
                self.dataplane
                    .apply(&desired)
                    .map_err(DataplaneError::to_error)?;
                // A superset of the keys above the NVA's layer is as good for `Touched`.
                self.above_nva = above_nva.map(|mut above| {
                    above.extend(&t.keys);
                    above
                });
            }
            Change::Vnics(_) => self.sync_maps(model, &infos, Some(&Keys::default()))?,
            Change::Nva(keys) => self.sync_maps(model, &infos, Some(keys))?,
            Change::Any => self.sync_maps(model, &infos, None)?,
        }
        self.size_arrival_queues(model, &infos, change).await;
        self.synced_ports = Some(infos);
        Ok(())
    }

    /// Brings the maps to what `model` derives, with `infos` the VM ports. `touched`: the
    /// NVA entries that changed since the last sync, if only those did (see
    /// `Model::desired_in`); `None` rewrites what differs.
    fn sync_maps(
        &mut self,
        model: &Model,
        infos: &HashMap<String, crate::model::PortInfo>,
        touched: Option<&Keys>,
    ) -> Result<(), Error> {
        // Scoping costs the above-NVA keys' bookkeeping on every change: worth it only when
        // the NVA's entries outnumber what a full comparison would cost.
        let large = model.nva().len() >= SCOPED_FROM_NVA_ENTRIES;
        let how = match (touched, self.above_nva.take()) {
            (Some(t), Some(mut above)) if large => {
                above.extend(t);
                Recompute::Touched(above)
            }
            _ if large => Recompute::AllKeepingAbove,
            _ => Recompute::All,
        };
        let (desired, above_nva) = model.desired_in(|p| infos.get(p).copied(), how);
        self.dataplane
            .apply(&desired)
            .map_err(DataplaneError::to_error)?;
        // Known only once written: after a failed write the next change compares all.
        self.above_nva = above_nva;
        Ok(())
    }

    /// The ports `model` names that exist now; with `strict`, a static port that does not
    /// is an error.
    async fn port_infos(
        &mut self,
        model: &Model,
        strict: bool,
    ) -> Result<HashMap<String, crate::model::PortInfo>, Error> {
        let static_ports: BTreeSet<&str> = model.ports().map(|(p, _)| p.as_str()).collect();
        let vnic_ports = model.vnic_ports();
        // A VDP trunk has the VM-side program from `vdp enable` on, not from its first VSI:
        // attaching it costs ~10 ms, which an association should not wait for.
        let vdp_ports = model.vdp().ports.keys().map(String::as_str);
        let ports: BTreeSet<&str> = static_ports
            .iter()
            .copied()
            .chain(vnic_ports)
            .chain(vdp_ports)
            .collect();
        let infos = match self.port_cache.get(&ports) {
            Some(infos) => infos.clone(),
            None => {
                let links = self.port_cache.links();
                let mut infos = HashMap::new();
                for &port in &ports {
                    match netlink::port_info(&self.netlink, port).await {
                        Ok(Some(info)) => {
                            infos.insert(port.to_string(), info);
                        }
                        Ok(None) => {}
                        Err(e) => return Err(host(format!("looking up port {port}: {e}"))),
                    }
                }
                self.port_cache.put(links, &ports, &infos);
                infos
            }
        };
        if let Some(port) = static_ports
            .iter()
            .find(|p| strict && !infos.contains_key(**p))
        {
            return Err(host(format!(
                "port {port}: no such interface in the daemon's network namespace"
            )));
        }
        Ok(infos)
    }

    /// Resolves the underlay next hop of every remote VTEP of `model` from the kernel's
    /// route and neighbour tables and mirrors them to the dataplane. A next hop seen for the
    /// first time becomes a managed neighbour, which the kernel keeps resolved.
    pub async fn refresh_next_hops(&mut self, model: &Model) -> anyhow::Result<()> {
        let mut next_hops = HashMap::new();
        self.next_hop_vteps = model.ipv4_vteps().collect();
        for vtep in model.ipv4_vteps() {
            let Some(route) = netlink::route_to(&self.netlink, vtep).await? else {
                tracing::warn!(%vtep, "no underlay route to VTEP");
                continue;
            };
            if self.managed_neighbours.insert(route) {
                netlink::keep_neighbour_resolved(&self.netlink, route.oif, route.hop).await?;
            }
            if let Some(nh) = netlink::next_hop(&self.netlink, route).await? {
                next_hops.insert(vtep.octets(), nh);
            }
        }
        if next_hops != self.next_hops {
            self.dataplane.set_next_hops(&next_hops)?;
            tracing::info!(resolved = next_hops.len(), "underlay next hops updated");
            self.next_hops = next_hops;
        }
        Ok(())
    }

    /// Follows a link, neighbour or route change: ports that came or went, next hops, the
    /// underlay's MAC and MTU. The NVA's entries did not change: they stay as written.
    pub async fn follow_underlay(&mut self) {
        let model = self.model.clone();
        let unchanged = Keys::default();
        if let Err(e) = self.sync_with(&model, false, Change::Nva(&unchanged)).await {
            tracing::warn!("following a link, neighbour or route change: {e}");
        }
        if let Err(e) = self.refresh_next_hops(&model).await {
            tracing::warn!("following a link, neighbour or route change: {e:#}");
        }
        if let Some(mac) = netlink::mac(&self.netlink, &self.status.underlay).await
            && let Err(e) = self.dataplane.set_underlay_mac(mac)
        {
            tracing::warn!("following the underlay's MAC: {e:#}");
        }
        self.underlay_mtu = netlink::mtu(&self.netlink, &self.status.underlay)
            .await
            .unwrap_or(0);
    }
}
