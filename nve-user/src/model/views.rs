//! The model as the API shows it: VNs and the FDB.
use crate::{
    api::{FdbTarget, FdbView, PortView, VnView},
    mac::MacAddr,
};

use super::{Model, Vn};

impl Model {
    pub fn vn_views(&self) -> Vec<VnView> {
        self.vns
            .iter()
            .map(|(name, vn)| VnView {
                name: name.clone(),
                vni: vn.vni,
                flood_unknown: vn.flood_unknown,
                any_vtep: vn.any_vtep,
                mtu: vn.mtu.unwrap_or(0),
                mtu_configured: vn.mtu.is_some(),
                ports: vn
                    .ports
                    .iter()
                    .map(|((port, vid), macs)| PortView {
                        port: port.clone(),
                        vid: *vid,
                        macs: macs.iter().copied().collect(),
                    })
                    .collect(),
                flood: vn.flood.iter().copied().collect(),
            })
            .collect()
    }

    /// The forwarding database as the API shows it; `only` keeps one MAC's entries (looked
    /// up, not filtered, where there may be many: the NVA's).
    pub fn fdb_views(&self, only: Option<MacAddr>) -> Vec<FdbView> {
        let mut out = Vec::new();
        for (name, vn) in &self.vns {
            for (key, macs) in &vn.ports {
                for &mac in macs {
                    out.push(FdbView {
                        vn: name.clone(),
                        vni: vn.vni,
                        mac,
                        target: FdbTarget::port(key),
                        learned: false,
                        moved_until: None,
                        from_nva: false,
                    });
                }
            }
            for (&mac, &vtep) in &vn.remote {
                out.push(FdbView {
                    vn: name.clone(),
                    vni: vn.vni,
                    mac,
                    target: FdbTarget::Vtep { vtep },
                    learned: false,
                    moved_until: None,
                    from_nva: false,
                });
            }
            let nva: Vec<(MacAddr, &crate::nva::Entry)> = match only {
                Some(mac) => self
                    .nva
                    .get(vn.vni, mac)
                    .map(|e| (mac, e))
                    .into_iter()
                    .collect(),
                None => self.nva.macs(vn.vni).map(|(m, e)| (*m, e)).collect(),
            };
            for (mac, e) in nva {
                out.push(FdbView {
                    vn: name.clone(),
                    vni: vn.vni,
                    mac,
                    target: FdbTarget::Vtep { vtep: e.vtep },
                    learned: false,
                    moved_until: None,
                    from_nva: true,
                });
            }
            for (&mac, moved) in &vn.moved {
                out.push(FdbView {
                    vn: name.clone(),
                    vni: vn.vni,
                    mac,
                    target: FdbTarget::Vtep { vtep: moved.vtep },
                    learned: false,
                    // A paused vNIC's pointer lasts while it is paused, not by time.
                    moved_until: (moved.until != super::vnics::WHILE_PAUSED).then_some(moved.until),
                    from_nva: false,
                });
            }
            for (&mac, key) in &vn.learned_macs {
                out.push(FdbView {
                    vn: name.clone(),
                    vni: vn.vni,
                    mac,
                    target: FdbTarget::port(key),
                    learned: true,
                    moved_until: None,
                    from_nva: false,
                });
            }
        }
        out.retain(|e| only.is_none_or(|m| e.mac == m));
        out
    }
}

impl Vn {
    pub(super) fn mac_owner(&self, mac: MacAddr) -> Option<FdbTarget> {
        if let Some(key) = self
            .ports
            .iter()
            .find(|(_, macs)| macs.contains(&mac))
            .map(|(k, _)| k)
        {
            return Some(FdbTarget::port(key));
        }
        self.remote.get(&mac).map(|&vtep| FdbTarget::Vtep { vtep })
    }
}

impl FdbTarget {
    pub(super) fn port((port, vid): &(String, u16)) -> Self {
        FdbTarget::Port {
            port: port.clone(),
            vid: *vid,
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            FdbTarget::Port { port, vid } => format!("port {port} VID {vid}"),
            FdbTarget::Vtep { vtep } => format!("VTEP {vtep}"),
        }
    }
}
