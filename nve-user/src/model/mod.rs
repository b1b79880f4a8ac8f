//! The daemon's truth: VNs, the ports bound to them, remote MACs and flood lists. Pure:
//! requests are validated and applied here, and the dataplane's map contents are derived
//! from it by [`Model::desired`]. A rejected request leaves the model unchanged.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use nve_common::maps::FdbKey;
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, ErrorCode},
    mac::MacAddr,
    vid::PortVids,
};

mod desired;
mod events;
mod learning;
mod touched;
mod vdp;
mod views;
mod vnic_table;
mod vnics;
mod vns;
pub use desired::{Desired, Keys, LocalKeys, Recompute};
pub use events::Event;
pub use learning::Announced;
pub use touched::Touched;
pub use vdp::{Vdp, VsiRecord, vnic_of};
pub use vnic_table::VnicTable;
pub use vnics::{Vnic, VnicId};

pub type Result<T> = std::result::Result<T, Error>;

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

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    vns: BTreeMap<String, Vn>,
    /// vNICs the server signaled (see `vnics.rs`), indexed (`vnic_table.rs`).
    vnics: VnicTable,
    /// Per port: which VN each VID (0: untagged) carries, reference-counted by the static
    /// bindings and vNICs using it.
    port_vids: BTreeMap<String, PortVids>,
    /// The other NVEs' MACs as the NVA has them (`nva.rs`); kept across restarts and NVA
    /// outages: forwarding goes on with the last state.
    #[serde(default, skip_serializing_if = "crate::nva::Table::is_empty")]
    pub(crate) nva: crate::nva::Table,
    /// VDP's trunk ports and VSIs (`vdp.rs`).
    #[serde(default, skip_serializing_if = "Vdp::is_empty")]
    vdp: Vdp,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vn {
    pub vni: u32,
    /// Unknown unicast floods (see `CreateVn::flood_unknown`).
    #[serde(default = "crate::api::yes")]
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

fn format_err(message: String) -> Error {
    Error::new(ErrorCode::EFormat, message)
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
}

fn unknown_vn(name: &str) -> Error {
    Error::new(ErrorCode::EUnknownVn, format!("no VN named {name:?}"))
}

fn not_found(message: String) -> Error {
    Error::new(ErrorCode::ENotFound, message)
}

#[cfg(test)]
mod tests {
    use nve_common::maps::{
        FdbEntry, LocalPort, PORT_ACTIVE, PORT_CHECK_SRC_MAC, PORT_F_TAP, PORT_RECEIVES, PortKey,
        PortValue, vtep_v4,
    };

    use super::*;
    use crate::api::{AttachPort, CreateVn, RemoteMac};

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
                flags: PORT_ACTIVE | PORT_RECEIVES | PORT_CHECK_SRC_MAC,
                ..PortValue::default()
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
