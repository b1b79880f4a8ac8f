//! The dataplane entries a change of vNICs can touch, and their desired contents alone: an
//! associate then costs what it touches, not a recomputation of every entry. Each entry is
//! derived by the precedence [`Model::desired`] applies to all: a local vNIC over a static
//! binding, over a learned MAC, over a forwarding pointer, over a configured remote, over
//! the NVA.
use std::{
    collections::{BTreeSet, HashSet},
    net::IpAddr,
};

use nve_common::maps::{FdbEntry, FdbKey, LocalPort, PORT_F_TAP, PortKey, vtep_of};

use super::{
    Model, PortInfo, Vn, VnicId,
    desired::{Binding, Desired, Keys, LocalKeys},
    vnic_table::addresses,
};
use crate::mac::MacAddr;

/// What some vNICs put in the dataplane: their MACs' FDB entries, their addresses, their
/// (port, VID)s and their VNs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    pub keys: Keys,
    pub bindings: BTreeSet<(String, u16)>,
    pub vnis: BTreeSet<u32>,
}

impl Model {
    /// Adds to `t` the entries vNIC `id` (if present) has in the dataplane now.
    pub fn vnic_touches(&self, id: &VnicId, t: &mut Touched) {
        let Some(v) = self.vnics.get(id) else {
            return;
        };
        for mac in &v.params.macs {
            t.keys.fdb.insert(FdbKey::new(v.vni, mac.0));
        }
        for ip in addresses(v) {
            t.keys.address(v.vni, ip);
        }
        t.bindings.insert((v.params.port.clone(), v.vid));
        t.vnis.insert(v.vni);
    }

    /// The desired contents of the entries `t` names, as [`Model::desired`] has them, and
    /// nothing else (`scope` and `local` say which).
    pub fn desired_touched(&self, port: impl Fn(&str) -> Option<PortInfo>, t: &Touched) -> Desired {
        let local = |name: &str, vid: u16| {
            port(name).map(|p| {
                let flags = if p.tap { PORT_F_TAP } else { 0 };
                LocalPort::new(p.ifindex, vid).with_flags(flags)
            })
        };
        let mut d = Desired::default();
        for key in &t.keys.fdb {
            if let Some(e) = self.fdb_entry(*key, &local) {
                d.fdb.insert(*key, e);
            }
        }
        let addrs = t.keys.arp.iter().map(|k| (k.vni, IpAddr::from(k.ip)));
        for (vni, ip) in addrs.chain(t.keys.nd.iter().map(|k| (k.vni, IpAddr::from(k.ip)))) {
            if let Some(mac) = self.address_owner(vni, ip) {
                d.add_address(vni, ip, mac);
            }
        }
        let mut ports = HashSet::new();
        for (name, vid) in &t.bindings {
            let Some(lp) = local(name, *vid) else {
                continue;
            };
            ports.insert(PortKey::new(lp.ifindex, lp.vid));
            if let Some(b) = self.binding(name, *vid) {
                d.add_port(lp, &b);
            }
        }
        for vn in self.vns.values().filter(|vn| t.vnis.contains(&vn.vni)) {
            self.vn_settings(vn, &mut d);
            self.flood_ports(vn, &local, &mut d);
        }
        d.scope = Some(t.keys.clone());
        d.local = Some(LocalKeys {
            ports,
            vnis: t.vnis.iter().copied().collect(),
        });
        d
    }

    /// The FDB entry of `key`: the highest layer that has one.
    fn fdb_entry(
        &self,
        key: FdbKey,
        local: &impl Fn(&str, u16) -> Option<LocalPort>,
    ) -> Option<FdbEntry> {
        let (vni, mac) = (key.vni, MacAddr(key.mac));
        // The last vNIC (by id) with its port present wins, as in `vnic_entries`.
        for id in self.vnics.holding_mac(vni, mac).rev() {
            let v = self.vnics.get(id).expect("indexed");
            if let Some(lp) = local(&v.params.port, v.vid) {
                return Some(self.vnic_fdb(v, mac, lp));
            }
        }
        let vn = self.vn_of(vni)?;
        let bound = vn
            .ports
            .iter()
            .rev()
            .filter(|(_, macs)| macs.contains(&mac));
        let learned = vn.learned_macs.get(&mac).into_iter();
        let at_port = bound
            .map(|((name, vid), _)| (name, vid))
            .chain(learned.map(|(name, vid)| (name, vid)))
            .find_map(|(name, vid)| local(name, *vid));
        if let Some(lp) = at_port {
            return Some(FdbEntry::local(lp));
        }
        if let Some(m) = vn.moved.get(&mac) {
            return Some(FdbEntry::moved(vtep_of(m.vtep)));
        }
        if let Some(vtep) = vn.remote.get(&mac) {
            return Some(FdbEntry::remote(vtep_of(*vtep)));
        }
        let e = self.nva.get(vni, mac)?;
        Some(FdbEntry::remote(vtep_of(e.vtep)))
    }

    /// The MAC ARP or ND answers `ip` of `vni` with: a vNIC's (the last by id), a learned
    /// one, a configured remote's (the last by MAC), the NVA's.
    fn address_owner(&self, vni: u32, ip: IpAddr) -> Option<MacAddr> {
        if let Some(id) = self.vnics.holding_addr(vni, ip).next_back() {
            let v = self.vnics.get(id).expect("indexed");
            return v.params.macs.first().copied();
        }
        let vn = self.vn_of(vni)?;
        if let Some(mac) = vn.learned_ips.get(&ip) {
            return Some(*mac);
        }
        let remote = vn
            .remote_ips
            .iter()
            .rev()
            .find(|(_, ips)| ips.contains(&ip));
        if let Some((mac, _)) = remote {
            return Some(*mac);
        }
        self.nva.owner(vni, ip)
    }

    /// What (`port`, `vid`) carries, as `bindings` has it.
    fn binding(&self, port: &str, vid: u16) -> Option<Binding> {
        let key = (port.to_string(), vid);
        let mut b = self
            .vns
            .values()
            .rev()
            .find_map(|vn| vn.ports.get(&key).map(|macs| (vn.vni, macs)))
            .map(|(vni, macs)| Binding {
                vni,
                active: true,
                receives: true,
                check_src_mac: !macs.is_empty(),
            });
        // A (port, VID) carries one VNI (`vid.rs`): its vNICs are all of that VN.
        for (vni, u) in self.vnics.binding(port, vid) {
            let b = b.get_or_insert(Binding {
                vni,
                active: false,
                receives: false,
                check_src_mac: true,
            });
            b.active |= u.forwarding > 0;
            b.receives |= u.receiving > 0;
        }
        b
    }

    /// `vn`'s flooding ports: the first that forward, by (port, VID).
    fn flood_ports(
        &self,
        vn: &Vn,
        local: &impl Fn(&str, u16) -> Option<LocalPort>,
        d: &mut Desired,
    ) {
        let statics = vn.ports.keys().map(|(p, vid)| (p.as_str(), *vid));
        let candidates: BTreeSet<(&str, u16)> =
            statics.chain(self.vnics.bindings_of(vn.vni)).collect();
        for (name, vid) in candidates {
            if d.vns[&vn.vni].port_count as usize >= nve_common::maps::FLOOD_MAX_PORTS {
                break;
            }
            let b = self.binding(name, vid).filter(|b| b.vni == vn.vni);
            if let (Some(b), Some(lp)) = (b, local(name, vid)) {
                d.add_flood_port(lp, &b);
            }
        }
    }

    /// The VN of VNI `vni`.
    fn vn_of(&self, vni: u32) -> Option<&Vn> {
        self.vns.values().find(|vn| vn.vni == vni)
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, hash::Hash, net::Ipv4Addr};

    use proptest::prelude::*;

    use super::*;
    use crate::{
        api::{AttachPort, CreateVn, Migration, RemoteMac, VidRequest, VidWord, VnicRequest},
        model::{Announced, Event},
        vnic::Op,
    };

    const VMS: [&str; 3] = [
        "00000000-0000-4000-8000-000000000001",
        "00000000-0000-4000-8000-000000000002",
        "00000000-0000-4000-8000-000000000003",
    ];
    /// "gone" has no interface: its entries wait for it.
    const PORTS: [&str; 3] = ["tap0", "tap1", "gone"];
    const VNS: [(&str, u32); 2] = [("blue", 100), ("red", 200)];

    fn mac(i: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, i])
    }

    fn ip(i: u8) -> IpAddr {
        if i < 3 {
            IpAddr::V4(Ipv4Addr::new(192, 168, 0, i))
        } else {
            format!("fd00::{i}").parse().unwrap()
        }
    }

    fn v4(a: IpAddr) -> Option<Ipv4Addr> {
        match a {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }

    fn v6(a: IpAddr) -> Option<std::net::Ipv6Addr> {
        match a {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }
    }

    fn info(p: &str) -> Option<PortInfo> {
        let i = PORTS[..2].iter().position(|q| *q == p)?;
        Some(PortInfo {
            ifindex: 10 + i as u32,
            tap: i == 1,
        })
    }

    fn signal() -> impl Strategy<Value = Event> {
        let op = prop_oneof![
            3 => Just(Op::PreAssociate),
            4 => Just(Op::Associate),
            2 => Just(Op::Disassociate),
            2 => Just(Op::Pause),
            1 => Just(Op::Resume),
            1 => Just(Op::KeepAlive),
        ];
        let vid = prop_oneof![
            Just(VidRequest::Word(VidWord::Untagged)),
            Just(VidRequest::Word(VidWord::Assign)),
            (1..3u16).prop_map(VidRequest::Vid),
        ];
        // Migrating out: a pause's forwarding pointer (to a VTEP of the flood list or
        // not). Migrating in: a pre-associated vNIC that receives.
        let migration = prop_oneof![
            3 => Just(Migration::None),
            1 => Just(Migration::MigratingOut(Ipv4Addr::new(10, 0, 0, 9))),
            1 => Just(Migration::MigratingOut(Ipv4Addr::new(10, 0, 0, 2))),
            1 => Just(Migration::MigratingIn(Ipv4Addr::new(10, 0, 0, 9))),
        ];
        let macs = prop::collection::btree_set(0u8..5, 1..3);
        let ips = prop::collection::btree_set(0u8..6, 0..3);
        (
            (0..VMS.len(), op, 0..VNS.len(), 0..PORTS.len(), vid),
            (macs, ips, migration, 0..3u64, prop::option::of(1..100u64)),
        )
            .prop_map(
                |((vm, op, vn, port, vid), (macs, ips, migration, request_id, hold_time))| {
                    let ips: Vec<IpAddr> = ips.into_iter().map(ip).collect();
                    let req = VnicRequest {
                        op,
                        request_id,
                        vn: Some(VNS[vn].0.into()),
                        macs: macs.into_iter().map(mac).collect(),
                        ipv4: ips.iter().filter_map(|a| v4(*a)).collect(),
                        ipv6: ips.iter().filter_map(|a| v6(*a)).collect(),
                        port: Some(PORTS[port].into()),
                        vid,
                        migration,
                        reserve: false,
                        hold_time,
                    };
                    Event::Signal {
                        id: VnicId::new(VMS[vm], 0).unwrap(),
                        req,
                    }
                },
            )
    }

    /// Changes other than signaling: they put entries of every layer under the vNICs'.
    fn other() -> impl Strategy<Value = Event> {
        let vn = (0..VNS.len()).prop_map(|i| VNS[i].0.to_string());
        prop_oneof![
            (
                vn.clone(),
                0..PORTS.len(),
                0..3u16,
                prop::option::of(0u8..5)
            )
                .prop_map(|(vn, port, vid, m)| Event::AttachPort {
                    vn,
                    req: AttachPort {
                        port: PORTS[port].into(),
                        vid,
                        macs: m.into_iter().map(mac).collect(),
                    },
                }),
            (vn.clone(), 0..PORTS.len(), 0..3u16).prop_map(|(vn, port, vid)| {
                Event::DetachPort {
                    vn,
                    port: PORTS[port].into(),
                    vid,
                }
            }),
            (vn.clone(), 0u8..5, 0u8..6).prop_map(|(vn, m, a)| Event::AddRemote {
                vn,
                req: RemoteMac {
                    mac: mac(m),
                    vtep: [10, 0, 0, 2].into(),
                    ips: vec![ip(a)],
                },
            }),
            (vn.clone(), 0u8..5).prop_map(|(vn, m)| Event::DelRemote { vn, mac: mac(m) }),
            (
                0..VNS.len(),
                0..PORTS.len(),
                0..3u16,
                0u8..5,
                prop::option::of(0u8..6)
            )
                .prop_map(|(vn, port, vid, m, a)| Event::Learn(Announced {
                    vni: VNS[vn].1,
                    port: PORTS[port].into(),
                    vid,
                    mac: mac(m),
                    ip: a.map(ip),
                })),
            (
                0..VNS.len(),
                0u8..5,
                prop::option::of((0u8..6, any::<bool>()))
            )
                .prop_map(|(vn, m, e)| Event::NvaDelta(crate::nva::Delta {
                    macs: vec![crate::nva::MacChange {
                        vni: VNS[vn].1,
                        mac: mac(m),
                        entry: e.map(|(a, supersedes_local)| crate::nva::Entry {
                            ips: vec![ip(a)],
                            supersedes_local,
                            ..crate::nva::Entry::at([10, 0, 0, 3].into())
                        }),
                    }],
                    ..Default::default()
                })),
            Just(Event::Expire),
        ]
    }

    /// `m`'s entries of `d`'s scope replaced by `d`'s.
    fn merge<K: Hash + Eq + Copy, V: Copy>(
        m: &mut HashMap<K, V>,
        d: &HashMap<K, V>,
        in_scope: impl Fn(&K) -> bool,
    ) {
        m.retain(|k, _| !in_scope(k) || d.contains_key(k));
        m.extend(d);
    }

    /// What the maps hold after `d` is applied to `maps` (as `Dataplane::apply` does).
    fn apply(maps: &mut Desired, d: &Desired) {
        let (Some(keys), Some(local)) = (&d.scope, &d.local) else {
            panic!("a vNIC change is scoped");
        };
        merge(&mut maps.fdb, &d.fdb, |k| keys.fdb.contains(k));
        merge(&mut maps.arp, &d.arp, |k| keys.arp.contains(k));
        merge(&mut maps.nd, &d.nd, |k| keys.nd.contains(k));
        merge(&mut maps.ports, &d.ports, |k| local.ports.contains(k));
        merge(&mut maps.vns, &d.vns, |k| local.vnis.contains(k));
        merge(&mut maps.vn_vteps, &d.vn_vteps, |k| {
            local.vnis.contains(&k.vni)
        });
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![4 => signal(), 1 => other()]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Rewriting only the entries signaling touched leaves every map exactly as a full
        /// recomputation would, whatever the mix of vNICs (sharing MACs, addresses and
        /// ports, on ports present or not; paused with a forwarding pointer or pre-associated
        /// as migrating in), static bindings, learned MACs, forwarding pointers, configured
        /// remotes and NVA entries under them.
        #[test]
        fn touched_updates_match_a_full_rewrite(events in prop::collection::vec(event(), 1..80)) {
            let mut m = Model::default();
            for (name, vni) in VNS {
                m.create_vn(&CreateVn::new(name, vni)).unwrap();
            }
            let mut maps = m.desired(info);
            for (now, event) in events.iter().enumerate() {
                let now = now as u64 * 1000;
                let mut next = m.clone();
                let mut t = Touched::default();
                let Event::Signal { id, req } = event else {
                    if next.apply(event, now).is_ok() {
                        maps = next.desired(info);
                        m = next;
                    }
                    continue;
                };
                next.vnic_touches(id, &mut t);
                let before = next.signal_footprint(id, req);
                let result = next.signal(id, req, now);
                if result.is_err() {
                    prop_assert_eq!(&next, &m, "a refused message changes nothing");
                    continue;
                }
                prop_assert_eq!(next.signal_footprint(id, req) != before, next != m);
                next.vnic_touches(id, &mut t);
                apply(&mut maps, &next.desired_touched(info, &t));
                let full = next.desired(info);
                prop_assert_eq!(&maps.fdb, &full.fdb);
                prop_assert_eq!(&maps.arp, &full.arp);
                prop_assert_eq!(&maps.nd, &full.nd);
                prop_assert_eq!(&maps.ports, &full.ports);
                prop_assert_eq!(&maps.vns, &full.vns);
                prop_assert_eq!(&maps.vn_vteps, &full.vn_vteps);
                m = next;
            }
        }
    }
}
