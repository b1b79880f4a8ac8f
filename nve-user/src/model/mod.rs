//! The daemon's truth: VNs, the ports bound to them, remote MACs and flood lists. Pure:
//! requests are validated and applied here, and the dataplane's map contents are derived
//! from it by [`Model::desired`]. A rejected request leaves the model unchanged.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr},
};

use serde::{Deserialize, Serialize};

use nve_common::{
    maps::{
        ArpEntry, ArpKey, FLOOD_MAX_PORTS, FLOOD_MAX_REMOTES, FdbEntry, FdbKey, LocalPort, NdKey,
        PORT_ACTIVE, PORT_CHECK_SRC_MAC, PORT_F_CHECK_IPV4, PORT_F_CHECK_IPV6, PORT_F_TAP, PortKey,
        PortValue, VN_F_ANY_VTEP, VN_F_NO_UNKNOWN_FLOOD, VnInfo, VnVtepKey, vtep_of,
    },
    wire::{MAX_VN_MTU, MIN_VN_MTU, VNI_MAX},
};

use crate::{
    api::{
        AttachPort, CreateVn, ErrorBody, ErrorCode, FdbTarget, FdbView, PortView, RemoteMac, VnView,
    },
    mac::MacAddr,
    vid::PortVids,
};

mod events;
mod learning;
mod vnics;
pub use events::Event;
pub use learning::Announced;
pub use vnics::{Vnic, VnicId};

pub type Result<T> = std::result::Result<T, ErrorBody>;

fn yes() -> bool {
    true
}

/// Maps with keys JSON cannot name (tuples, structs), stored as lists of pairs.
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

/// Longest interface name Linux accepts.
pub const IFNAME_MAX: usize = 15;
pub const VID_MAX: u16 = 4094;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    vns: BTreeMap<String, Vn>,
    /// vNICs the server signaled (see `vnics.rs`).
    #[serde(with = "pairs")]
    vnics: BTreeMap<VnicId, Vnic>,
    /// Per port: which VN each VID (0: untagged) carries, reference-counted by the static
    /// bindings and vNICs using it.
    port_vids: BTreeMap<String, PortVids>,
    /// The other NVEs' MACs as the NVA has them (`nva.rs`); kept across restarts and NVA
    /// outages: forwarding goes on with the last state.
    #[serde(default, skip_serializing_if = "crate::nva::Table::is_empty")]
    pub(crate) nva: crate::nva::Table,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vn {
    pub vni: u32,
    /// Unknown unicast floods (see `CreateVn::flood_unknown`).
    #[serde(default = "yes")]
    pub flood_unknown: bool,
    /// VXLAN accepted from any VTEP (see `CreateVn::any_vtep`).
    #[serde(default)]
    pub any_vtep: bool,
    /// The VMs' configured MTU (see `CreateVn::mtu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// (interface, VID) -> MACs behind it.
    #[serde(with = "pairs")]
    pub ports: BTreeMap<(String, u16), BTreeSet<MacAddr>>,
    pub remote: BTreeMap<MacAddr, IpAddr>,
    /// Addresses of remote MACs, answered for by ARP/ND suppression.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub remote_ips: BTreeMap<MacAddr, BTreeSet<IpAddr>>,
    /// MACs learned from announcements on ports that do not check source MACs: MAC ->
    /// (port, VID).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub learned_macs: BTreeMap<MacAddr, (String, u16)>,
    /// Addresses learned from announcements -> the MAC that announced them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub learned_ips: BTreeMap<IpAddr, MacAddr>,
    /// MACs of vNICs that migrated away (disassociated with a migrating-out hint) -> where
    /// they went and until when (ms): the forwarding pointer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub moved: BTreeMap<MacAddr, Moved>,
    pub flood: BTreeSet<IpAddr>,
}

/// Where a MAC that migrated away went, and until when the NVE forwards to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    pub vtep: IpAddr,
    /// Milliseconds since the epoch.
    pub until: u64,
}

/// A VM port as the host has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortInfo {
    pub ifindex: u32,
    /// A tun/tap device (what QEMU uses), as opposed to a veth.
    pub tap: bool,
}

/// Map contents the dataplane should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub ports: HashMap<PortKey, PortValue>,
    pub vns: HashMap<u32, VnInfo>,
    pub fdb: HashMap<FdbKey, FdbEntry>,
    /// Addresses the dataplane answers ARP for (from the vNICs' signaled IPv4 addresses).
    pub arp: HashMap<ArpKey, ArpEntry>,
    /// The vNICs' signaled IPv6 addresses.
    pub nd: HashMap<NdKey, ArpEntry>,
    /// The VTEPs each VN decapsulates from: its flood list and its remote MACs' VTEPs.
    pub vn_vteps: HashMap<VnVtepKey, u32>,
    /// `None`: `fdb`, `arp` and `nd` are complete. Otherwise they hold what the keys here
    /// should map to (a key they lack: no entry), and entries not named are left as they are.
    pub scope: Option<Keys>,
}

/// How much of the dataplane a change recomputes.
pub enum Recompute {
    /// Every entry.
    All,
    /// Every entry, and the keys of those above the NVA's layer, for a later `Touched`.
    AllKeepingAbove,
    /// The entries above the NVA's layer, and the NVA's entries of these keys: the NVA
    /// entries a change touched and the keys that were above the NVA's layer before it
    /// (one of them may have left it). With 100,000 NVA entries a change then costs what it
    /// touches.
    Touched(Keys),
}

/// Keys of FDB, ARP and ND entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keys {
    pub fdb: HashSet<FdbKey>,
    pub arp: HashSet<ArpKey>,
    pub nd: HashSet<NdKey>,
}

impl Keys {
    fn of(d: &Desired) -> Self {
        Keys {
            fdb: d.fdb.keys().copied().collect(),
            arp: d.arp.keys().copied().collect(),
            nd: d.nd.keys().copied().collect(),
        }
    }

    pub fn extend(&mut self, other: &Keys) {
        self.fdb.extend(&other.fdb);
        self.arp.extend(&other.arp);
        self.nd.extend(&other.nd);
    }

    fn address(&mut self, vni: u32, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => self.arp.insert(ArpKey::new(vni, a.octets())),
            IpAddr::V6(a) => self.nd.insert(NdKey::new(vni, a.octets())),
        };
    }
}

impl Desired {
    /// `ip` of `vni` is answered for with `mac` (ARP or ND).
    fn add_address(&mut self, vni: u32, ip: IpAddr, mac: MacAddr) {
        match ip {
            IpAddr::V4(a) => self
                .arp
                .insert(ArpKey::new(vni, a.octets()), ArpEntry::new(mac.0)),
            IpAddr::V6(a) => self
                .nd
                .insert(NdKey::new(vni, a.octets()), ArpEntry::new(mac.0)),
        };
    }

    /// `ip` of `vni` is answered for with `mac` unless an entry answers already.
    fn add_address_below(&mut self, vni: u32, ip: IpAddr, mac: MacAddr) {
        let entry = ArpEntry::new(mac.0);
        match ip {
            IpAddr::V4(a) => self
                .arp
                .entry(ArpKey::new(vni, a.octets()))
                .or_insert(entry),
            IpAddr::V6(a) => self.nd.entry(NdKey::new(vni, a.octets())).or_insert(entry),
        };
    }
}

fn format_err(message: String) -> ErrorBody {
    ErrorBody::new(ErrorCode::EFormat, message)
}

/// A VN name: 1 to 64 characters of [A-Za-z0-9._-], the first a letter or digit (so no
/// "." or "..", which URL-normalising clients cannot address, and nothing a CLI takes for
/// a flag).
fn check_name(name: &str) -> Result<()> {
    let ok = name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        return Err(format_err(format!(
            "VN name {name:?}: 1 to 64 characters of [A-Za-z0-9._-], starting with a letter or digit"
        )));
    }
    Ok(())
}

fn check_unicast(mac: MacAddr) -> Result<()> {
    if mac.is_multicast() || mac.0 == [0; 6] {
        return Err(format_err(format!(
            "MAC {mac}: must be a unicast, non-zero address"
        )));
    }
    Ok(())
}

fn check_vtep(vtep: IpAddr) -> Result<()> {
    let broadcast = matches!(vtep, IpAddr::V4(a) if a.is_broadcast());
    if vtep.is_unspecified() || vtep.is_multicast() || broadcast {
        return Err(format_err(format!(
            "VTEP {vtep}: must be a unicast address"
        )));
    }
    Ok(())
}

impl Model {
    pub fn vn(&self, name: &str) -> Result<&Vn> {
        self.vns.get(name).ok_or_else(|| unknown_vn(name))
    }

    fn vn_mut(&mut self, name: &str) -> Result<&mut Vn> {
        self.vns.get_mut(name).ok_or_else(|| unknown_vn(name))
    }

    pub fn vns(&self) -> impl Iterator<Item = (&String, &Vn)> {
        self.vns.iter()
    }

    /// Every (interface, VID) bound to some VN.
    pub fn ports(&self) -> impl Iterator<Item = &(String, u16)> {
        self.vns.values().flat_map(|vn| vn.ports.keys())
    }

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
            return Err(ErrorBody::new(
                ErrorCode::EExists,
                format!(
                    "VN {} exists with VNI {}, flood_unknown {} and any_vtep {}",
                    req.name, vn.vni, vn.flood_unknown, vn.any_vtep
                ),
            ));
        }
        if let Some((other, _)) = self.vns.iter().find(|(_, vn)| vn.vni == req.vni) {
            return Err(ErrorBody::new(
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
            return Err(ErrorBody::new(
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
            return Err(ErrorBody::new(
                ErrorCode::EResources,
                format!("VN {vn_name} has the maximum of {FLOOD_MAX_PORTS} ports"),
            ));
        }
        for &mac in &req.macs {
            if let Some(owner) = vn.mac_owner(mac).filter(|o| *o != FdbTarget::port(&key)) {
                return Err(ErrorBody::new(
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
                return Err(ErrorBody::new(
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
            return Err(ErrorBody::new(
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
                return Err(ErrorBody::new(
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
            return Err(ErrorBody::new(
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

    /// Every remote VTEP some VN sends to.
    pub fn vteps(&self) -> BTreeSet<IpAddr> {
        let nva = self.vns.values().flat_map(|vn| self.nva_vteps(vn.vni));
        self.vns
            .values()
            .flat_map(|vn| {
                let moved = vn.moved.values().map(|m| m.vtep);
                let fixed = vn.flood.iter().chain(vn.remote.values()).copied();
                fixed.chain(moved)
            })
            .chain(nva)
            .collect()
    }

    /// The other NVEs' entries (from the NVA).
    pub fn nva(&self) -> &crate::nva::Table {
        &self.nva
    }

    /// The VTEPs the NVA has MACs of `vni` behind, or members of it.
    fn nva_vteps(&self, vni: u32) -> BTreeSet<IpAddr> {
        self.nva.vteps(vni).collect()
    }

    /// Adds to `keys` the dataplane entries applying `delta` changes: each MAC's FDB entry
    /// and its addresses before and after.
    pub fn nva_keys(&self, delta: &crate::nva::Delta, keys: &mut Keys) {
        for c in &delta.macs {
            keys.fdb.insert(FdbKey::new(c.vni, c.mac.0));
            let old = self.nva.get(c.vni, c.mac).into_iter();
            for e in old.chain(c.entry.as_ref()) {
                for &ip in &e.ips {
                    keys.address(c.vni, ip);
                }
            }
        }
    }

    /// The VNIs of the VNs (the NVA's entries of a VN come and go with it).
    pub fn vnis(&self) -> BTreeSet<u32> {
        self.vns.values().map(|v| v.vni).collect()
    }

    /// The remote VTEPs over IPv4: the dataplane encapsulates for them itself, by the
    /// next hops the daemon mirrors (over IPv6 the kernel's vxlan device routes).
    pub fn ipv4_vteps(&self) -> impl Iterator<Item = Ipv4Addr> {
        self.vteps().into_iter().filter_map(|v| match v {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        })
    }

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
                    moved_until: Some(moved.until),
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

    /// The dataplane's map contents. Ports whose interface does not exist (`port` gives
    /// `None`) are left out until it appears. A (port, VID) forwards if a static binding or
    /// an associated vNIC uses it; pre-associated and paused vNICs are installed but inactive.
    pub fn desired(&self, port: impl Fn(&str) -> Option<PortInfo>) -> Desired {
        self.desired_in(port, Recompute::All).0
    }

    /// As [`Model::desired`], for as much as `how` asks (see [`Recompute`]); with
    /// `AllKeepingAbove` and `Touched`, also the keys of the entries above the NVA's, which
    /// the caller keeps for the next `Touched`. The NVA's entries are the lowest layer:
    /// configured, moved, learned and local entries win over them.
    pub fn desired_in(
        &self,
        port: impl Fn(&str) -> Option<PortInfo>,
        how: Recompute,
    ) -> (Desired, Option<Keys>) {
        let mut d = self.desired_above_nva(port);
        let above = match how {
            Recompute::All => None,
            _ => Some(Keys::of(&d)),
        };
        let vnis = self.vnis();
        match how {
            Recompute::All | Recompute::AllKeepingAbove => {
                for &vni in &vnis {
                    for (mac, e) in self.nva.macs(vni) {
                        let key = FdbKey::new(vni, mac.0);
                        d.fdb
                            .entry(key)
                            .or_insert(FdbEntry::remote(vtep_of(e.vtep)));
                        for &ip in &e.ips {
                            if self.nva.owner(vni, ip) == Some(*mac) {
                                d.add_address_below(vni, ip, *mac);
                            }
                        }
                    }
                }
            }
            Recompute::Touched(keys) => {
                for key in keys.fdb.iter().filter(|k| vnis.contains(&k.vni)) {
                    if let Some(e) = self.nva.get(key.vni, MacAddr(key.mac)) {
                        d.fdb
                            .entry(*key)
                            .or_insert(FdbEntry::remote(vtep_of(e.vtep)));
                    }
                }
                let addrs = keys.arp.iter().map(|k| (k.vni, IpAddr::from(k.ip)));
                let addrs = addrs.chain(keys.nd.iter().map(|k| (k.vni, IpAddr::from(k.ip))));
                for (vni, ip) in addrs.filter(|(vni, _)| vnis.contains(vni)) {
                    if let Some(mac) = self.nva.owner(vni, ip) {
                        d.add_address_below(vni, ip, mac);
                    }
                }
                // The entries above the NVA's are all in `d`: only these may have to go.
                d.scope = Some(keys);
            }
        }
        (d, above)
    }

    /// Every entry but the NVA's MACs and addresses.
    fn desired_above_nva(&self, port: impl Fn(&str) -> Option<PortInfo>) -> Desired {
        let mut d = Desired::default();
        // (port, VID) -> (VNI, active)
        // (port, VID) -> (VNI, active, every MAC behind it known: check source MACs)
        let mut bindings: BTreeMap<(&str, u16), (u32, bool, bool)> = BTreeMap::new();
        for vn in self.vns.values() {
            let mut info = VnInfo::default();
            if !vn.flood_unknown {
                info.flags |= VN_F_NO_UNKNOWN_FLOOD;
            }
            if vn.any_vtep {
                info.flags |= VN_F_ANY_VTEP;
            }
            info.mtu = vn.mtu.unwrap_or(0);
            // The flood list: configured, and every VTEP the NVA has a MAC of the VN behind.
            let flood: BTreeSet<IpAddr> = vn
                .flood
                .iter()
                .copied()
                .chain(self.nva_vteps(vn.vni))
                .collect();
            for vtep in flood.iter().chain(vn.remote.values()) {
                d.vn_vteps.insert(VnVtepKey::new(vn.vni, vtep_of(*vtep)), 0);
            }
            // IPv4 VTEPs first: the dataplane encapsulates once for all of them.
            let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = flood.iter().partition(|v| v.is_ipv4());
            info.remote_v4_count = v4.len().min(FLOOD_MAX_REMOTES) as u32;
            for (i, vtep) in v4.iter().chain(&v6).take(FLOOD_MAX_REMOTES).enumerate() {
                info.remotes[i] = vtep_of(*vtep);
                info.remote_count += 1;
            }
            d.vns.insert(vn.vni, info);
            for (mac, vtep) in &vn.remote {
                d.fdb
                    .insert(FdbKey::new(vn.vni, mac.0), FdbEntry::remote(vtep_of(*vtep)));
            }
            for (mac, moved) in &vn.moved {
                let vtep = vtep_of(moved.vtep);
                d.fdb
                    .insert(FdbKey::new(vn.vni, mac.0), FdbEntry::moved(vtep));
                d.vn_vteps.insert(VnVtepKey::new(vn.vni, vtep), 0);
            }
            // Learned addresses take precedence over remote ones, local vNICs' own
            // addresses (below) over both.
            let remote_ips = vn
                .remote_ips
                .iter()
                .flat_map(|(mac, ips)| ips.iter().map(move |ip| (ip, mac)));
            for (ip, mac) in remote_ips.chain(&vn.learned_ips) {
                d.add_address(vn.vni, *ip, *mac);
            }
            for ((p, vid), macs) in &vn.ports {
                bindings.insert((p, *vid), (vn.vni, true, !macs.is_empty()));
            }
        }
        for v in self.vnics.values() {
            let b = bindings
                .entry((&v.params.port, v.vid))
                .or_insert((v.vni, false, true));
            b.1 |= v.state.forwards();
        }
        let local = |name: &str, vid: u16| {
            port(name).map(|p| {
                let flags = if p.tap { PORT_F_TAP } else { 0 };
                LocalPort::new(p.ifindex, vid).with_flags(flags)
            })
        };
        for (&(name, vid), &(vni, active, check)) in &bindings {
            let Some(lp) = local(name, vid) else { continue };
            let flags =
                if active { PORT_ACTIVE } else { 0 } | if check { PORT_CHECK_SRC_MAC } else { 0 };
            d.ports
                .insert(PortKey::new(lp.ifindex, vid), PortValue { vni, flags });
            let info = d.vns.get_mut(&vni).expect("bindings name existing VNs");
            if active && (info.port_count as usize) < FLOOD_MAX_PORTS {
                info.ports[info.port_count as usize] = lp;
                info.port_count += 1;
            }
        }
        for vn in self.vns.values() {
            for (mac, (name, vid)) in &vn.learned_macs {
                if let Some(lp) = local(name, *vid) {
                    d.fdb
                        .insert(FdbKey::new(vn.vni, mac.0), FdbEntry::local(lp));
                }
            }
            for ((name, vid), macs) in &vn.ports {
                let Some(lp) = local(name, *vid) else {
                    continue;
                };
                for mac in macs {
                    d.fdb
                        .insert(FdbKey::new(vn.vni, mac.0), FdbEntry::local(lp));
                }
            }
        }
        for v in self.vnics.values() {
            if let Some(mac) = v.params.macs.first() {
                let ips = v.params.ipv4.iter().map(|&a| IpAddr::V4(a));
                for ip in ips.chain(v.params.ipv6.iter().map(|&a| IpAddr::V6(a))) {
                    d.add_address(v.vni, ip, *mac);
                }
            }
            let Some(lp) = local(&v.params.port, v.vid) else {
                continue;
            };
            // Where the vNIC's addresses are known, its frames must come from them.
            let checks = if v.params.ipv4.is_empty() {
                0
            } else {
                PORT_F_CHECK_IPV4
            } | if v.params.ipv6.is_empty() {
                0
            } else {
                PORT_F_CHECK_IPV6
            };
            let lp = lp.with_flags(lp.flags | checks);
            for mac in &v.params.macs {
                // A newer claim elsewhere (the VM moved on, the disassociate has not come
                // yet): frames for it follow the move instead of going to the old port.
                let entry = match self.nva.get(v.vni, *mac) {
                    Some(e) if e.supersedes_local => FdbEntry::moved(vtep_of(e.vtep)),
                    _ => FdbEntry::local(lp),
                };
                d.fdb.insert(FdbKey::new(v.vni, mac.0), entry);
            }
        }
        d
    }
}

impl Vn {
    fn mac_owner(&self, mac: MacAddr) -> Option<FdbTarget> {
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
    fn port((port, vid): &(String, u16)) -> Self {
        FdbTarget::Port {
            port: port.clone(),
            vid: *vid,
        }
    }

    fn describe(&self) -> String {
        match self {
            FdbTarget::Port { port, vid } => format!("port {port} VID {vid}"),
            FdbTarget::Vtep { vtep } => format!("VTEP {vtep}"),
        }
    }
}

fn unknown_vn(name: &str) -> ErrorBody {
    ErrorBody::new(ErrorCode::EUnknownVn, format!("no VN named {name:?}"))
}

fn not_found(message: String) -> ErrorBody {
    ErrorBody::new(ErrorCode::ENotFound, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nve_common::maps::vtep_v4;

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn model() -> Model {
        let mut m = Model::default();
        m.create_vn(&CreateVn::new("blue", 100)).unwrap();
        m
    }

    fn attach(port: &str, vid: u16, macs: &[&str]) -> AttachPort {
        AttachPort {
            port: port.into(),
            vid,
            macs: macs.iter().map(|m| mac(m)).collect(),
        }
    }

    #[test]
    fn create_is_idempotent_and_rejects_conflicts() {
        let mut m = model();
        m.create_vn(&CreateVn::new("blue", 100)).unwrap();
        let before = m.clone();
        let e = m.create_vn(&CreateVn::new("blue", 101)).unwrap_err();
        assert_eq!(e.code, ErrorCode::EExists);
        let e = m.create_vn(&CreateVn::new("red", 100)).unwrap_err();
        assert_eq!(e.code, ErrorCode::EExists);
        let e = m.create_vn(&CreateVn::new("red", 1 << 24)).unwrap_err();
        assert_eq!(e.code, ErrorCode::EFormat);
        let e = m.create_vn(&CreateVn::new("a b", 5)).unwrap_err();
        assert_eq!(e.code, ErrorCode::EFormat);
        assert_eq!(m, before);
    }

    #[test]
    fn a_port_vid_is_in_one_vn_and_a_mac_in_one_place() {
        let mut m = model();
        m.create_vn(&CreateVn::new("red", 200)).unwrap();
        m.attach_port("blue", &attach("tap1", 0, &["02:00:00:00:00:01"]), 0)
            .unwrap();
        let before = m.clone();
        let e = m
            .attach_port("red", &attach("tap1", 0, &[]), 0)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::EVidConflict);
        let e = m
            .attach_port("blue", &attach("tap2", 0, &["02:00:00:00:00:01"]), 0)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::EMacConflict);
        let e = m
            .add_remote(
                "blue",
                &RemoteMac {
                    mac: mac("02:00:00:00:00:01"),
                    vtep: [10, 0, 0, 2].into(),
                    ips: Vec::new(),
                },
            )
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::EMacConflict);
        let e = m
            .attach_port("blue", &attach("tap2", 4095, &[]), 0)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::EFormat);
        let e = m
            .attach_port("blue", &attach("tap2", 0, &["01:00:5e:00:00:01"]), 0)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::EFormat);
        assert_eq!(m, before);
        // Same port on another VID of another VN is fine; same MAC in another VN too.
        m.attach_port("red", &attach("tap1", 20, &["02:00:00:00:00:01"]), 0)
            .unwrap();
    }

    #[test]
    fn desired_maps_follow_the_model() {
        let mut m = model();
        m.attach_port("blue", &attach("tap1", 0, &["02:00:00:00:00:01"]), 0)
            .unwrap();
        m.attach_port("blue", &attach("gone", 0, &["02:00:00:00:00:03"]), 0)
            .unwrap();
        m.add_remote(
            "blue",
            &RemoteMac {
                mac: mac("02:00:00:00:00:02"),
                vtep: [10, 0, 0, 2].into(),
                ips: Vec::new(),
            },
        )
        .unwrap();
        m.add_flood("blue", [10, 0, 0, 2].into()).unwrap();
        m.attach_port("blue", &attach("qemu0", 0, &["02:00:00:00:00:04"]), 0)
            .unwrap();
        let d = m.desired(|name| match name {
            "tap1" => Some(PortInfo {
                ifindex: 7,
                tap: false,
            }),
            "qemu0" => Some(PortInfo {
                ifindex: 8,
                tap: true,
            }),
            _ => None,
        });
        assert_eq!(
            d.fdb[&FdbKey::new(100, mac("02:00:00:00:00:04").0)],
            FdbEntry::local(LocalPort::new(8, 0).with_flags(PORT_F_TAP))
        );
        assert_eq!(d.ports.len(), 2);
        assert_eq!(
            d.ports[&PortKey::new(7, 0)],
            PortValue {
                vni: 100,
                flags: PORT_ACTIVE | PORT_CHECK_SRC_MAC
            }
        );
        assert_eq!(d.fdb.len(), 3);
        assert_eq!(
            d.fdb[&FdbKey::new(100, mac("02:00:00:00:00:01").0)],
            FdbEntry::local(LocalPort::new(7, 0))
        );
        assert_eq!(
            d.fdb[&FdbKey::new(100, mac("02:00:00:00:00:02").0)],
            FdbEntry::remote(vtep_v4([10, 0, 0, 2]))
        );
        let vn = d.vns[&100];
        assert_eq!((vn.remote_count, vn.port_count), (1, 2));
        assert_eq!(vn.remotes[0], vtep_v4([10, 0, 0, 2]));
        m.delete_vn("blue", 0).unwrap();
        assert_eq!(
            m.desired(|_| Some(PortInfo {
                ifindex: 7,
                tap: false
            })),
            Desired::default()
        );
    }

    /// A step of `scoped_updates_match_a_full_rewrite`: an NVA change or a local one.
    #[derive(Clone, Debug)]
    enum Step {
        /// MAC (pool index) -> VTEP index and addresses (pool indexes), or withdrawn.
        Nva(u8, Option<(u8, Vec<u8>)>),
        /// A configured remote MAC with an address, or removed.
        Remote(u8, Option<u8>),
        /// A static port binding with a MAC, or unbound.
        Port(Option<u8>),
        /// The VN deleted and created again (its NVA entries go and come back).
        Recreate,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        let addrs = prop::collection::vec(0u8..6, 0..3);
        prop_oneof![
            6 => (0u8..6, prop::option::of((0u8..3, addrs))).prop_map(|(m, e)| Step::Nva(m, e)),
            2 => (0u8..6, prop::option::of(0u8..6)).prop_map(|(m, a)| Step::Remote(m, a)),
            2 => prop::option::of(0u8..6).prop_map(Step::Port),
            1 => Just(Step::Recreate),
        ]
    }

    proptest::proptest! {
        /// Rewriting only the entries a change touched (and those above the NVA's) leaves
        /// the FDB, ARP and ND maps exactly as a full rewrite would, whatever the mix of NVA
        /// entries, configured remotes and local ports claiming the same MACs and addresses.
        #[test]
        fn scoped_updates_match_a_full_rewrite(steps in proptest::collection::vec(step(), 1..60)) {
            let macs: Vec<MacAddr> = (0..6).map(|i| MacAddr([2, 0, 0, 0, 0, i])).collect();
            let addr = |i: u8| -> IpAddr {
                if i < 4 { format!("192.168.0.{i}").parse().unwrap() } else { format!("fd00::{i}").parse().unwrap() }
            };
            let vtep = |i: u8| -> IpAddr { format!("10.0.0.{}", 10 + i).parse().unwrap() };
            let info = |p: &str| (p == "tap1").then_some(PortInfo { ifindex: 7, tap: true });
            let mut m = model();
            let (full, above) = m.desired_in(info, Recompute::AllKeepingAbove);
            let mut above = above.unwrap();
            let (mut fdb, mut arp, mut nd) = (full.fdb, full.arp, full.nd);
            for step in steps {
                let event = match step {
                    Step::Nva(i, e) => Event::NvaDelta(crate::nva::Delta {
                        macs: vec![crate::nva::MacChange {
                            vni: 100,
                            mac: macs[i as usize],
                            entry: e.map(|(v, a)| crate::nva::Entry {
                                ips: a.into_iter().map(addr).collect(),
                                ..crate::nva::Entry::at(vtep(v))
                            }),
                        }],
                        ..Default::default()
                    }),
                    Step::Remote(i, Some(a)) => Event::AddRemote {
                        vn: "blue".into(),
                        req: RemoteMac { mac: macs[i as usize], vtep: vtep(2), ips: vec![addr(a)] },
                    },
                    Step::Remote(i, None) => Event::DelRemote { vn: "blue".into(), mac: macs[i as usize] },
                    Step::Port(Some(i)) => Event::AttachPort {
                        vn: "blue".into(),
                        req: AttachPort { port: "tap1".into(), vid: 0, macs: vec![macs[i as usize]] },
                    },
                    Step::Port(None) => Event::DetachPort { vn: "blue".into(), port: "tap1".into(), vid: 0 },
                    Step::Recreate => Event::DeleteVn { vn: "blue".into() },
                };
                let mut touched = Keys::default();
                if let Event::NvaDelta(d) = &event {
                    m.nva_keys(d, &mut touched);
                }
                let vnis = m.vnis();
                let mut next = m.clone();
                if next.apply(&event, 0).is_err() {
                    continue;
                }
                if matches!(event, Event::DeleteVn { .. }) {
                    next.create_vn(&CreateVn::new("blue", 100)).unwrap();
                }
                let how = if next.vnis() == vnis && !matches!(event, Event::DeleteVn { .. }) {
                    touched.extend(&above);
                    Recompute::Touched(touched)
                } else {
                    Recompute::AllKeepingAbove
                };
                let (d, now_above) = next.desired_in(info, how);
                above = now_above.unwrap();
                match &d.scope {
                    None => (fdb, arp, nd) = (d.fdb.clone(), d.arp.clone(), d.nd.clone()),
                    Some(keys) => {
                        for k in &keys.fdb { fdb.remove(k); }
                        for k in &keys.arp { arp.remove(k); }
                        for k in &keys.nd { nd.remove(k); }
                        fdb.extend(d.fdb.clone());
                        arp.extend(d.arp.clone());
                        nd.extend(d.nd.clone());
                    }
                }
                let full = next.desired(info);
                proptest::prop_assert_eq!(&fdb, &full.fdb);
                proptest::prop_assert_eq!(&arp, &full.arp);
                proptest::prop_assert_eq!(&nd, &full.nd);
                m = next;
            }
        }
    }
}
