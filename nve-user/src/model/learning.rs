//! Learning from what VMs announce (gratuitous ARP, reverse ARP, unsolicited neighbour
//! advertisements), reported by the dataplane: where a MAC spoke up and which address it
//! claims. Signaled state always wins: an announcement never moves a MAC or an address
//! that a vNIC (or a static binding) holds elsewhere; such announcements are refused.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Model, Result};
use crate::{
    api::FdbTarget,
    error::{Error, ErrorCode},
    mac::MacAddr,
    vnic::VnicState,
};

/// One announcement as the daemon hands it to the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announced {
    pub vni: u32,
    pub port: String,
    pub vid: u16,
    pub mac: MacAddr,
    /// The address announced (GARP, NA); none for RARP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
}

impl Model {
    /// Learns from one announcement: activates a pre-associated vNIC that spoke up on its
    /// port, else learns the MAC (where no one holds it elsewhere) and the address (where
    /// no other vNIC holds it).
    pub fn learn(&mut self, a: &Announced) -> Result<()> {
        let name = self
            .vns
            .iter()
            .find(|(_, vn)| vn.vni == a.vni)
            .map(|(name, _)| name.clone())
            .ok_or_else(|| Error::new(ErrorCode::EUnknownVn, format!("VNI {}", a.vni)))?;
        if self.activate(a) {
            return Ok(());
        }
        let learn_mac = self.may_learn_mac(&name, a)?;
        if let Some(ip) = a.ip {
            self.check_address(&name, a.vni, ip, a.mac)?;
        }
        let vn = self.vn_mut(&name)?;
        if learn_mac {
            vn.learned_macs.insert(a.mac, (a.port.clone(), a.vid));
        }
        if let Some(ip) = a.ip {
            vn.learned_ips.insert(ip, a.mac);
        }
        Ok(())
    }

    /// A pre-associated vNIC speaking up on its own port is a VM that arrived (QEMU
    /// announces a migrated guest with RARPs after resuming it): it is activated, whichever
    /// comes first of this and the hypervisor's associate. Whether it was.
    fn activate(&mut self, a: &Announced) -> bool {
        let arrived = self.vnics.holding_mac(a.vni, a.mac).find(|id| {
            let v = self.vnics.get(id).expect("indexed");
            v.state == VnicState::PreAssociated
                && (v.params.port.as_str(), v.vid) == (a.port.as_str(), a.vid)
        });
        let Some(id) = arrived.cloned() else {
            return false;
        };
        tracing::info!(vnic = %id, mac = %a.mac, "activated by the VM's announcement");
        self.vnics.update(&id, |v| {
            v.state = VnicState::Associated;
            // Associated for good: the pre-association's expiry no longer applies.
            v.hold = None;
            v.expires_at = None;
        });
        true
    }

    /// Whether the announced MAC is learned at its port: not if a vNIC or a static binding
    /// holds it there already, refused if one holds it elsewhere.
    fn may_learn_mac(&self, name: &str, a: &Announced) -> Result<bool> {
        let here = |port: &str, vid: u16| (port, vid) == (a.port.as_str(), a.vid);
        let signaled = self
            .vnics
            .iter()
            .find(|(_, v)| v.vni == a.vni && v.params.macs.contains(&a.mac));
        let conflict = |holder: String| {
            let message = format!(
                "MAC {} in VN {name} announced on {} VID {} is {holder}",
                a.mac, a.port, a.vid
            );
            Err(Error::new(ErrorCode::EMacConflict, message))
        };
        match signaled {
            Some((id, v)) if !here(&v.params.port, v.vid) => {
                conflict(format!("vNIC {id}'s, on {}", v.params.port))
            }
            Some(_) => Ok(false),
            None => match self.vn(name)?.mac_owner(a.mac) {
                Some(FdbTarget::Port { port, vid }) if !here(&port, vid) => {
                    conflict(format!("bound to {port} VID {vid}"))
                }
                Some(FdbTarget::Port { .. }) => Ok(false),
                // Unknown, or known remote: the VM is here now.
                _ => Ok(true),
            },
        }
    }

    /// Refuses an address another vNIC than `mac`'s holds in `vni`.
    fn check_address(&self, name: &str, vni: u32, ip: IpAddr, mac: MacAddr) -> Result<()> {
        let holder = self.vnics.iter().find(|(_, v)| {
            v.vni == vni
                && match ip {
                    IpAddr::V4(x) => v.params.ipv4.contains(&x),
                    IpAddr::V6(x) => v.params.ipv6.contains(&x),
                }
        });
        match holder {
            Some((id, v)) if !v.params.macs.contains(&mac) => Err(Error::new(
                ErrorCode::EExists,
                format!("address {ip} in VN {name} announced by {mac} is vNIC {id}'s"),
            )),
            _ => Ok(()),
        }
    }
}
