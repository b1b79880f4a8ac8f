//! What the dataplane's maps should hold, derived from the model: one builder per kind of
//! entry. The NVA's entries are the lowest layer; configured, moved, learned and local
//! entries win over them.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use nve_common::maps::{
    ArpEntry, ArpKey, FLOOD_MAX_PORTS, FLOOD_MAX_REMOTES, FdbEntry, FdbKey, LocalPort, NdKey,
    PORT_ACTIVE, PORT_CHECK_SRC_MAC, PORT_F_CHECK_IPV4, PORT_F_CHECK_IPV6, PORT_F_TAP,
    PORT_RECEIVES, PortKey, PortValue, VN_F_ANY_VTEP, VN_F_NO_UNKNOWN_FLOOD, VnInfo, VnVtepKey,
    vtep_of,
};

use super::{Model, PortInfo};
use crate::mac::MacAddr;

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
    /// `None`: `ports`, `vns` and `vn_vteps` are complete. Otherwise, as `scope`, for these
    /// ports and the VNs (and their VTEPs) of these VNIs.
    pub local: Option<LocalKeys>,
}

/// Keys of port entries, and VNIs of VN entries (with their VTEPs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalKeys {
    pub ports: HashSet<PortKey>,
    pub vnis: HashSet<u32>,
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
    pub(super) fn of(d: &Desired) -> Self {
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

    pub(super) fn address(&mut self, vni: u32, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => self.arp.insert(ArpKey::new(vni, a.octets())),
            IpAddr::V6(a) => self.nd.insert(NdKey::new(vni, a.octets())),
        };
    }
}

impl Desired {
    /// `ip` of `vni` is answered for with `mac` (ARP or ND).
    pub(super) fn add_address(&mut self, vni: u32, ip: IpAddr, mac: MacAddr) {
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
    pub(super) fn add_address_below(&mut self, vni: u32, ip: IpAddr, mac: MacAddr) {
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

impl Model {
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
        for vn in self.vns.values() {
            self.vn_entries(vn, &mut d);
        }
        let local = |name: &str, vid: u16| {
            port(name).map(|p| {
                let flags = if p.tap { PORT_F_TAP } else { 0 };
                LocalPort::new(p.ifindex, vid).with_flags(flags)
            })
        };
        for (&(name, vid), binding) in &self.bindings() {
            if let Some(lp) = local(name, vid) {
                d.add_binding(lp, binding);
            }
        }
        self.static_entries(&local, &mut d);
        self.vnic_entries(&local, &mut d);
        d
    }

    /// A VN's settings, flood list, allow-list, remote and moved MACs and the addresses it
    /// answers for.
    fn vn_entries(&self, vn: &super::Vn, d: &mut Desired) {
        self.vn_settings(vn, d);
        for (mac, vtep) in &vn.remote {
            d.fdb
                .insert(FdbKey::new(vn.vni, mac.0), FdbEntry::remote(vtep_of(*vtep)));
        }
        for (mac, moved) in &vn.moved {
            d.fdb.insert(
                FdbKey::new(vn.vni, mac.0),
                FdbEntry::moved(vtep_of(moved.vtep)),
            );
        }
        // Learned addresses take precedence over remote ones, local vNICs' own addresses
        // (`vnic_entries`) over both.
        let remote_ips = vn
            .remote_ips
            .iter()
            .flat_map(|(mac, ips)| ips.iter().map(move |ip| (ip, mac)));
        for (ip, mac) in remote_ips.chain(&vn.learned_ips) {
            d.add_address(vn.vni, *ip, *mac);
        }
    }

    /// A VN's settings, flood list of remote VTEPs (its ports come with the bindings) and
    /// allow-list.
    pub(super) fn vn_settings(&self, vn: &super::Vn, d: &mut Desired) {
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
        for moved in vn.moved.values() {
            d.vn_vteps
                .insert(VnVtepKey::new(vn.vni, vtep_of(moved.vtep)), 0);
        }
    }

    /// Every (port, VID) a static binding or a vNIC uses, and what it carries.
    pub(super) fn bindings(&self) -> BTreeMap<(&str, u16), Binding> {
        let mut bindings = BTreeMap::new();
        for vn in self.vns.values() {
            for ((p, vid), macs) in &vn.ports {
                let binding = Binding {
                    vni: vn.vni,
                    active: true,
                    receives: true,
                    check_src_mac: !macs.is_empty(),
                };
                bindings.insert((p.as_str(), *vid), binding);
            }
        }
        for v in self.vnics.values() {
            let b = bindings
                .entry((v.params.port.as_str(), v.vid))
                .or_insert(Binding {
                    vni: v.vni,
                    active: false,
                    receives: false,
                    check_src_mac: true,
                });
            b.active |= v.state.forwards();
            b.receives |= v.receives();
        }
        bindings
    }

    /// The FDB entries of statically bound and learned MACs.
    fn static_entries(&self, local: &impl Fn(&str, u16) -> Option<LocalPort>, d: &mut Desired) {
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
    }

    /// The vNICs' addresses and MACs (with the source checks their addresses ask for).
    fn vnic_entries(&self, local: &impl Fn(&str, u16) -> Option<LocalPort>, d: &mut Desired) {
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
            for mac in &v.params.macs {
                d.fdb
                    .insert(FdbKey::new(v.vni, mac.0), self.vnic_fdb(v, *mac, lp));
            }
        }
    }

    /// The FDB entry of MAC `mac` of vNIC `v`, on its port `lp`.
    pub(super) fn vnic_fdb(&self, v: &super::Vnic, mac: MacAddr, lp: LocalPort) -> FdbEntry {
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
        // Paused for a migration: frames for it go on to the destination, where its port
        // holds them until the VM resumes (the stopped VM here never reads them).
        if let Some(vtep) = v.paused_toward() {
            return FdbEntry::moved(vtep_of(vtep.into()));
        }
        // A newer claim elsewhere (the VM moved on, the disassociate has not come yet):
        // frames for it follow the move instead of going to the old port.
        match self.nva.get(v.vni, mac) {
            Some(e) if e.supersedes_local => FdbEntry::moved(vtep_of(e.vtep)),
            _ => FdbEntry::local(lp.with_flags(lp.flags | checks)),
        }
    }
}

/// What a (port, VID) carries.
pub(super) struct Binding {
    pub vni: u32,
    /// A static binding or an associated vNIC uses it: it forwards.
    pub active: bool,
    /// It forwards, or a vNIC pre-associated as migrating in uses it: frames for it are
    /// delivered (`PORT_RECEIVES`).
    pub receives: bool,
    /// Every MAC behind it is known: source MACs are checked.
    pub check_src_mac: bool,
}

impl Desired {
    /// The port entry of `lp`, and its place among its VN's flooding ports if it forwards.
    fn add_binding(&mut self, lp: LocalPort, b: &Binding) {
        self.add_port(lp, b);
        self.add_flood_port(lp, b);
    }

    /// The port entry of `lp`.
    pub(super) fn add_port(&mut self, lp: LocalPort, b: &Binding) {
        let flags = if b.active { PORT_ACTIVE } else { 0 }
            | if b.receives { PORT_RECEIVES } else { 0 }
            | if b.check_src_mac {
                PORT_CHECK_SRC_MAC
            } else {
                0
            };
        self.ports.insert(
            PortKey::new(lp.ifindex, lp.vid),
            PortValue {
                vni: b.vni,
                flags,
                ..PortValue::default()
            },
        );
    }

    /// `lp` among its VN's flooding ports if it forwards (and the list has room).
    pub(super) fn add_flood_port(&mut self, lp: LocalPort, b: &Binding) {
        let info = self
            .vns
            .get_mut(&b.vni)
            .expect("bindings name existing VNs");
        if b.active && (info.port_count as usize) < FLOOD_MAX_PORTS {
            info.ports[info.port_count as usize] = lp;
            info.port_count += 1;
        }
    }
}
