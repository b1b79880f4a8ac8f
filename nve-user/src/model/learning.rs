//! Learning from what VMs announce (gratuitous ARP, reverse ARP, unsolicited neighbour
//! advertisements), reported by the dataplane: where a MAC spoke up and which address it
//! claims. Signaled state always wins: an announcement never moves a MAC or an address
//! that a vNIC (or a static binding) holds elsewhere; such announcements are refused.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Model, Result};
use crate::{
    api::{ErrorBody, ErrorCode, FdbTarget},
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
    pub fn learn(&mut self, a: &Announced) -> Result<()> {
        let at = (a.port.clone(), a.vid);
        let (name, vn) = self
            .vns
            .iter()
            .find(|(_, vn)| vn.vni == a.vni)
            .ok_or_else(|| ErrorBody::new(ErrorCode::EUnknownVn, format!("VNI {}", a.vni)))?;
        let name = name.clone();
        let signaled = self
            .vnics
            .iter()
            .find(|(_, v)| v.vni == a.vni && v.params.macs.contains(&a.mac));
        // A pre-associated vNIC speaking up on its own port is a VM that arrived (QEMU
        // announces a migrated guest with RARPs after resuming it): it is activated, whichever
        // comes first of this and the hypervisor's associate.
        if let Some((id, v)) = signaled
            && v.state == VnicState::PreAssociated
            && (v.params.port.as_str(), v.vid) == (a.port.as_str(), a.vid)
        {
            let id = id.clone();
            tracing::info!(vnic = %id, mac = %a.mac, "activated by the VM's announcement");
            let v = self.vnics.get_mut(&id).expect("found above");
            v.state = VnicState::Associated;
            // Associated for good: the pre-association's expiry no longer applies.
            v.hold = None;
            v.expires_at = None;
            return Ok(());
        }
        let learn_mac = match signaled {
            Some((id, v)) if (v.params.port.as_str(), v.vid) != (a.port.as_str(), a.vid) => {
                return Err(ErrorBody::new(
                    ErrorCode::EMacConflict,
                    format!(
                        "MAC {} in VN {name} announced on {} VID {} is vNIC {id}'s, on {}",
                        a.mac, a.port, a.vid, v.params.port
                    ),
                ));
            }
            Some(_) => false,
            None => match vn.mac_owner(a.mac) {
                Some(FdbTarget::Port { port, vid })
                    if (port.as_str(), vid) != (a.port.as_str(), a.vid) =>
                {
                    return Err(ErrorBody::new(
                        ErrorCode::EMacConflict,
                        format!(
                            "MAC {} in VN {name} announced on {} VID {} is bound to {port} VID {vid}",
                            a.mac, a.port, a.vid
                        ),
                    ));
                }
                Some(FdbTarget::Port { .. }) => false,
                // Unknown, or known remote: the VM is here now.
                _ => true,
            },
        };
        if let Some(ip) = a.ip {
            let holder = self.vnics.iter().find(|(_, v)| {
                v.vni == a.vni
                    && match ip {
                        IpAddr::V4(x) => v.params.ipv4.contains(&x),
                        IpAddr::V6(x) => v.params.ipv6.contains(&x),
                    }
            });
            if let Some((id, v)) = holder
                && !v.params.macs.contains(&a.mac)
            {
                return Err(ErrorBody::new(
                    ErrorCode::EExists,
                    format!(
                        "address {ip} in VN {name} announced by {} is vNIC {id}'s",
                        a.mac
                    ),
                ));
            }
        }
        let vn = self.vn_mut(&name)?;
        if learn_mac {
            vn.learned_macs.insert(a.mac, at);
        }
        if let Some(ip) = a.ip {
            vn.learned_ips.insert(ip, a.mac);
        }
        Ok(())
    }
}
