//! VNs, and what is bound to them without signaling: static ports, remote MACs, flood
//! lists. Each operation validates everything before it changes anything.
use std::net::IpAddr;

use nve_common::{
    maps::{FLOOD_MAX_PORTS, FLOOD_MAX_REMOTES},
    wire::{MAX_VN_MTU, MIN_VN_MTU, VNI_MAX},
};

use super::{
    IFNAME_MAX, Model, Result, Vn, check_name, check_unicast, check_vtep, format_err, not_found,
};
use crate::{
    api::{AttachPort, CreateVn, FdbTarget, RemoteMac},
    error::{Error, ErrorCode},
    mac::MacAddr,
    vid::VID_MAX,
};

impl Model {
    pub fn create_vn(&mut self, req: &CreateVn) -> Result<()> {
        check_name(&req.name)?;
        if req.vni == 0 || req.vni > VNI_MAX {
            return Err(format_err(format!(
                "VNI {}: must be 1 to {VNI_MAX}",
                req.vni
            )));
        }
        if let Some(mtu) = req.mtu
            && !(MIN_VN_MTU..=MAX_VN_MTU).contains(&mtu)
        {
            return Err(format_err(format!(
                "MTU {mtu}: must be {MIN_VN_MTU} to {MAX_VN_MTU}"
            )));
        }
        if let Some(vn) = self.vns.get(&req.name) {
            if vn.vni == req.vni
                && vn.flood_unknown == req.flood_unknown
                && vn.any_vtep == req.any_vtep
                && vn.mtu == req.mtu
            {
                return Ok(());
            }
            return Err(Error::new(
                ErrorCode::EExists,
                format!(
                    "VN {} exists with VNI {}, flood_unknown {} and any_vtep {}",
                    req.name, vn.vni, vn.flood_unknown, vn.any_vtep
                ),
            ));
        }
        if let Some((other, _)) = self.vns.iter().find(|(_, vn)| vn.vni == req.vni) {
            return Err(Error::new(
                ErrorCode::EExists,
                format!("VNI {} is already VN {other}", req.vni),
            ));
        }
        self.vns.insert(
            req.name.clone(),
            Vn {
                vni: req.vni,
                flood_unknown: req.flood_unknown,
                any_vtep: req.any_vtep,
                mtu: req.mtu,
                ..Vn::default()
            },
        );
        Ok(())
    }

    /// Deletes a VN and its static port bindings; refused while vNICs use it.
    pub fn delete_vn(&mut self, name: &str, now: u64) -> Result<()> {
        let vn = self.vn(name)?;
        let vni = vn.vni;
        if let Some(id) = self
            .vnics
            .iter()
            .find(|(_, v)| v.vni == vni)
            .map(|(id, _)| id)
        {
            return Err(Error::new(
                ErrorCode::EState,
                format!("VN {name} still has vNICs (e.g. {id}): disassociate them first"),
            ));
        }
        let vn = self.vns.remove(name).expect("looked up above");
        for (port, _) in vn.ports.keys() {
            self.release_vid(port, vni, now);
        }
        Ok(())
    }

    /// Binds (port, VID) to the VN with the MACs behind it; a repeat replaces the MACs.
    pub fn attach_port(&mut self, vn_name: &str, req: &AttachPort, now: u64) -> Result<()> {
        self.vn(vn_name)?;
        if req.port.is_empty() || req.port.len() > IFNAME_MAX || req.port.contains(['/', ' ']) {
            return Err(format_err(format!(
                "port {:?}: an interface name of 1 to {IFNAME_MAX} bytes",
                req.port
            )));
        }
        if req.vid > VID_MAX {
            return Err(format_err(format!(
                "VID {}: must be 0 (untagged) to {VID_MAX}",
                req.vid
            )));
        }
        for &mac in &req.macs {
            check_unicast(mac)?;
        }
        let key = (req.port.clone(), req.vid);
        let vn = self.vn(vn_name)?;
        if !vn.ports.contains_key(&key) && vn.ports.len() >= FLOOD_MAX_PORTS {
            return Err(Error::new(
                ErrorCode::EResources,
                format!("VN {vn_name} has the maximum of {FLOOD_MAX_PORTS} ports"),
            ));
        }
        for &mac in &req.macs {
            if let Some(owner) = vn.mac_owner(mac).filter(|o| *o != FdbTarget::port(&key)) {
                return Err(Error::new(
                    ErrorCode::EMacConflict,
                    format!(
                        "MAC {mac} in VN {vn_name} is already at {}",
                        owner.describe()
                    ),
                ));
            }
        }
        for &mac in &req.macs {
            if let Some(holder) = self.vnic_holding(self.vn(vn_name)?.vni, mac, None) {
                return Err(Error::new(
                    ErrorCode::EMacConflict,
                    format!("MAC {mac} in VN {vn_name} is held by vNIC {holder}"),
                ));
            }
        }
        if !self.vn(vn_name)?.ports.contains_key(&key) {
            let vni = self.vn(vn_name)?.vni;
            self.acquire_vid(&req.port, vni, Some(req.vid), now)?;
        }
        let vn = self.vn_mut(vn_name)?;
        vn.ports.insert(key, req.macs.iter().copied().collect());
        Ok(())
    }

    pub fn detach_port(&mut self, vn_name: &str, port: &str, vid: u16, now: u64) -> Result<()> {
        let vn = self.vn_mut(vn_name)?;
        let vni = vn.vni;
        vn.ports
            .remove(&(port.to_string(), vid))
            .ok_or_else(|| not_found(format!("port {port} VID {vid} is not in VN {vn_name}")))?;
        vn.learned_macs
            .retain(|_, at| (at.0.as_str(), at.1) != (port, vid));
        self.release_vid(port, vni, now);
        Ok(())
    }

    pub fn add_remote(&mut self, vn_name: &str, req: &RemoteMac) -> Result<()> {
        check_unicast(req.mac)?;
        check_vtep(req.vtep)?;
        for &ip in &req.ips {
            crate::addr::check_host_ip("ips", ip)?;
        }
        let vn = self.vn(vn_name)?;
        if let Some(owner @ FdbTarget::Port { .. }) = vn.mac_owner(req.mac) {
            return Err(Error::new(
                ErrorCode::EMacConflict,
                format!(
                    "MAC {} in VN {vn_name} is local, at {}",
                    req.mac,
                    owner.describe()
                ),
            ));
        }
        let vni = vn.vni;
        for ip in &req.ips {
            if let Some((holder, _)) = self.vnics.iter().find(|(_, v)| {
                v.vni == vni
                    && match ip {
                        IpAddr::V4(a) => v.params.ipv4.contains(a),
                        IpAddr::V6(a) => v.params.ipv6.contains(a),
                    }
            }) {
                return Err(Error::new(
                    ErrorCode::EExists,
                    format!("address {ip} in VN {vn_name} is held by local vNIC {holder}"),
                ));
            }
        }
        let vn = self.vn_mut(vn_name)?;
        // The control plane's word replaces a forwarding pointer.
        vn.moved.remove(&req.mac);
        vn.remote.insert(req.mac, req.vtep);
        if req.ips.is_empty() {
            vn.remote_ips.remove(&req.mac);
        } else {
            vn.remote_ips
                .insert(req.mac, req.ips.iter().copied().collect());
        }
        Ok(())
    }

    pub fn del_remote(&mut self, vn_name: &str, mac: MacAddr) -> Result<()> {
        let vn = self.vn_mut(vn_name)?;
        vn.remote_ips.remove(&mac);
        vn.remote
            .remove(&mac)
            .map(|_| ())
            .ok_or_else(|| not_found(format!("no remote MAC {mac} in VN {vn_name}")))
    }

    pub fn add_flood(&mut self, vn_name: &str, vtep: IpAddr) -> Result<()> {
        check_vtep(vtep)?;
        let vn = self.vn_mut(vn_name)?;
        if !vn.flood.contains(&vtep) && vn.flood.len() >= FLOOD_MAX_REMOTES {
            return Err(Error::new(
                ErrorCode::EResources,
                format!("VN {vn_name} floods to the maximum of {FLOOD_MAX_REMOTES} VTEPs"),
            ));
        }
        vn.flood.insert(vtep);
        Ok(())
    }

    pub fn del_flood(&mut self, vn_name: &str, vtep: IpAddr) -> Result<()> {
        let vn = self.vn_mut(vn_name)?;
        if !vn.flood.remove(&vtep) {
            return Err(not_found(format!(
                "VTEP {vtep} is not in VN {vn_name}'s flood list"
            )));
        }
        Ok(())
    }
}
