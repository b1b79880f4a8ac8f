//! The vNICs, built to change one at a time: with 100,000 of them an associate must not
//! cost a copy or a scan of all. They are in persistent maps ([`imbl`]: a clone shares the
//! tree, a change copies one path), so the writer's apply-to-a-copy-then-commit costs
//! O(log n) per vNIC, and the indexes a change asks (who holds a MAC or an address, which
//! VNs a (port, VID) carries and whether it forwards) are kept up to date as vNICs change.
use std::net::IpAddr;

use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

use super::{Vnic, VnicId};
use crate::mac::MacAddr;

/// The smallest `VnicId`: the start of a range over (…, vNIC) keys.
fn first_id() -> VnicId {
    VnicId {
        vm: String::new(),
        index: 0,
    }
}

/// How many vNICs of a VN use a (port, VID), how many of them forward, and how many
/// receive (those forwarding, and those pre-associated as migrating in).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Use {
    pub vnics: u32,
    pub forwarding: u32,
    pub receiving: u32,
}

/// The vNICs by id, with their indexes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "Stored")]
pub struct VnicTable {
    all: OrdMap<VnicId, Vnic>,
    /// (VNI, MAC, vNIC holding it).
    macs: OrdSet<(u32, MacAddr, VnicId)>,
    /// (VNI, address, vNIC holding it): what ARP and ND answer for (vNICs with a MAC).
    addrs: OrdSet<(u32, IpAddr, VnicId)>,
    /// (port, VID, VNI) -> its vNICs there.
    bindings: OrdMap<(String, u16, u32), Use>,
    /// (VNI, port, VID): the (port, VID)s a VN's vNICs use.
    vn_bindings: OrdSet<(u32, String, u16)>,
}

/// The table on disk, as the model had it before the indexes: a list of (id, vNIC) pairs.
#[derive(Deserialize)]
#[serde(transparent)]
struct Stored(Vec<(VnicId, Vnic)>);

/// Written as [`Stored`] is read, straight from the tree (a snapshot copies nothing).
impl Serialize for VnicTable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.all.iter())
    }
}

impl From<Stored> for VnicTable {
    fn from(s: Stored) -> Self {
        let mut t = VnicTable::default();
        for (id, v) in s.0 {
            t.insert(id, v);
        }
        t
    }
}

impl VnicTable {
    pub fn get(&self, id: &VnicId) -> Option<&Vnic> {
        self.all.get(id)
    }

    pub fn contains_key(&self, id: &VnicId) -> bool {
        self.all.contains_key(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&VnicId, &Vnic)> {
        self.all.iter()
    }

    pub fn keys(&self) -> impl Iterator<Item = &VnicId> {
        self.all.keys()
    }

    pub fn values(&self) -> impl Iterator<Item = &Vnic> {
        self.all.values()
    }

    /// Adds or replaces vNIC `id`; the one it replaces.
    pub fn insert(&mut self, id: VnicId, v: Vnic) -> Option<Vnic> {
        let old = self.remove(&id);
        self.index(&id, &v, true);
        self.all.insert(id, v);
        old
    }

    pub fn remove(&mut self, id: &VnicId) -> Option<Vnic> {
        let v = self.all.remove(id)?;
        self.index(id, &v, false);
        Some(v)
    }

    /// Changes vNIC `id` (if present) by `f`, indexes kept in step.
    pub fn update<T>(&mut self, id: &VnicId, f: impl FnOnce(&mut Vnic) -> T) -> Option<T> {
        let mut v = self.remove(id)?;
        let out = f(&mut v);
        self.insert(id.clone(), v);
        Some(out)
    }

    /// Enters (`add`) or takes out `v`'s index entries.
    fn index(&mut self, id: &VnicId, v: &Vnic, add: bool) {
        for &mac in &v.params.macs {
            set(&mut self.macs, (v.vni, mac, id.clone()), add);
        }
        if !v.params.macs.is_empty() {
            for ip in addresses(v) {
                set(&mut self.addrs, (v.vni, ip, id.clone()), add);
            }
        }
        let key = (v.params.port.clone(), v.vid, v.vni);
        let mut u = self.bindings.get(&key).copied().unwrap_or_default();
        let forwards = u32::from(v.state.forwards());
        let receives = u32::from(v.receives());
        if add {
            u.vnics += 1;
            u.forwarding += forwards;
            u.receiving += receives;
        } else {
            u.vnics -= 1;
            u.forwarding -= forwards;
            u.receiving -= receives;
        }
        let vn_key = (v.vni, v.params.port.clone(), v.vid);
        if u.vnics == 0 {
            self.bindings.remove(&key);
            self.vn_bindings.remove(&vn_key);
        } else {
            self.bindings.insert(key, u);
            self.vn_bindings.insert(vn_key);
        }
    }

    /// The vNICs holding `mac` in `vni`, by id.
    pub fn holding_mac(&self, vni: u32, mac: MacAddr) -> impl DoubleEndedIterator<Item = &VnicId> {
        holders(&self.macs, vni, mac)
    }

    /// The vNICs (with a MAC) holding address `ip` in `vni`, by id.
    pub fn holding_addr(&self, vni: u32, ip: IpAddr) -> impl DoubleEndedIterator<Item = &VnicId> {
        holders(&self.addrs, vni, ip)
    }

    /// The VNIs whose vNICs use (`port`, `vid`), with how.
    pub fn binding(&self, port: &str, vid: u16) -> impl Iterator<Item = (u32, Use)> + '_ {
        let port = port.to_string();
        self.bindings
            .range((port.clone(), vid, 0)..)
            .take_while(move |((p, v, _), _)| (p.as_str(), *v) == (port.as_str(), vid))
            .map(|((_, _, vni), u)| (*vni, *u))
    }

    /// Whether a vNIC pre-associated as migrating in uses `port` (any VID): one that
    /// receives and does not forward yet.
    pub fn awaits_arrival(&self, port: &str) -> bool {
        let port = port.to_string();
        self.bindings
            .range((port.clone(), 0, 0)..)
            .take_while(|((p, _, _), _)| *p == port)
            .any(|(_, u)| u.receiving > u.forwarding)
    }

    /// The ports the vNICs use, each once.
    pub fn ports(&self) -> impl Iterator<Item = &str> {
        let mut last = None;
        self.bindings.keys().filter_map(move |(p, _, _)| {
            let new = last != Some(p.as_str());
            last = Some(p.as_str());
            new.then_some(p.as_str())
        })
    }

    /// The (port, VID)s the vNICs of `vni` use, in order.
    pub fn bindings_of(&self, vni: u32) -> impl Iterator<Item = (&str, u16)> {
        self.vn_bindings
            .range((vni, String::new(), 0)..)
            .take_while(move |(n, _, _)| *n == vni)
            .map(|(_, p, v)| (p.as_str(), *v))
    }
}

/// A vNIC's signaled addresses.
pub fn addresses(v: &Vnic) -> impl Iterator<Item = IpAddr> + '_ {
    let v4 = v.params.ipv4.iter().map(|&a| IpAddr::V4(a));
    v4.chain(v.params.ipv6.iter().map(|&a| IpAddr::V6(a)))
}

/// The vNICs under (`vni`, `key`) in `index`, by id.
fn holders<T: Ord + Clone>(
    index: &OrdSet<(u32, T, VnicId)>,
    vni: u32,
    key: T,
) -> impl DoubleEndedIterator<Item = &VnicId> {
    index
        .range((vni, key.clone(), first_id())..)
        .take_while(move |(n, k, _)| (*n, k) == (vni, &key))
        .map(|(_, _, id)| id)
        .collect::<Vec<_>>()
        .into_iter()
}

fn set<T: Ord + Clone>(s: &mut OrdSet<T>, value: T, add: bool) {
    if add {
        s.insert(value);
    } else {
        s.remove(&value);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::{
        api::{Migration, VidRequest},
        model::vnics::VnicParams,
        vnic::VnicState,
    };

    /// A change of the table: vNIC `id` (re)placed with its (MACs, address, port, VID,
    /// VNI, state and migration hint), removed, or its state changed.
    #[derive(Clone, Debug)]
    enum Step {
        Insert(u8, (Vec<u8>, Option<u8>, u8, u16, u32, u8)),
        Remove(u8),
        SetState(u8, u8),
    }

    fn state(i: u8) -> VnicState {
        [
            VnicState::PreAssociated,
            VnicState::Associated,
            VnicState::Inactive,
        ][usize::from(i % 3)]
    }

    fn vnic((macs, ip, port, vid, vni, s): (Vec<u8>, Option<u8>, u8, u16, u32, u8)) -> Vnic {
        Vnic {
            params: VnicParams {
                vn: format!("vn{vni}"),
                macs: macs
                    .into_iter()
                    .map(|m| MacAddr([2, 0, 0, 0, 0, m]))
                    .collect(),
                ipv4: ip.map(|i| [192, 168, 0, i].into()).into_iter().collect(),
                ipv6: BTreeSet::new(),
                port: format!("tap{port}"),
                vid: VidRequest::default(),
            },
            vni,
            state: state(s),
            vid,
            migration: if s >= 3 {
                Migration::MigratingIn([10, 0, 0, 2].into())
            } else {
                Migration::None
            },
            request_id: 0,
            hold: None,
            expires_at: None,
            migrated_in: false,
        }
    }

    fn step() -> impl Strategy<Value = Step> {
        let v = (
            prop::collection::vec(0u8..4, 0..3),
            prop::option::of(0u8..3),
            0u8..3,
            0u16..3,
            1u32..3,
            0u8..6,
        );
        prop_oneof![
            3 => (0u8..5, v).prop_map(|(id, v)| Step::Insert(id, v)),
            1 => (0u8..5).prop_map(Step::Remove),
            1 => (0u8..5, 0u8..3).prop_map(|(id, s)| Step::SetState(id, s)),
        ]
    }

    fn id(i: u8) -> VnicId {
        VnicId {
            vm: format!("00000000-0000-4000-8000-00000000000{i}"),
            index: 0,
        }
    }

    proptest! {
        /// Whatever the changes, the indexes are what the vNICs say: the table equals one
        /// built afresh from its vNICs (as the store reads it), and each index answers as a
        /// scan of the vNICs would.
        #[test]
        fn indexes_follow_the_vnics(steps in prop::collection::vec(step(), 1..60)) {
            let mut t = VnicTable::default();
            for step in steps {
                match step {
                    Step::Insert(i, v) => {
                        t.insert(id(i), vnic(v));
                    }
                    Step::Remove(i) => {
                        t.remove(&id(i));
                    }
                    Step::SetState(i, s) => {
                        t.update(&id(i), |v| v.state = state(s));
                    }
                }
            }
            let rebuilt: VnicTable =
                serde_json::from_value(serde_json::to_value(&t).unwrap()).unwrap();
            prop_assert_eq!(&rebuilt, &t);
            for vni in 1..3 {
                for m in 0..4 {
                    let mac = MacAddr([2, 0, 0, 0, 0, m]);
                    let scan: Vec<&VnicId> = t
                        .iter()
                        .filter(|(_, v)| v.vni == vni && v.params.macs.contains(&mac))
                        .map(|(id, _)| id)
                        .collect();
                    prop_assert_eq!(t.holding_mac(vni, mac).collect::<Vec<_>>(), scan);
                }
                let used: BTreeSet<(&str, u16)> = t
                    .values()
                    .filter(|v| v.vni == vni)
                    .map(|v| (v.params.port.as_str(), v.vid))
                    .collect();
                prop_assert_eq!(t.bindings_of(vni).collect::<BTreeSet<_>>(), used);
            }
            let ports: BTreeSet<&str> = t.values().map(|v| v.params.port.as_str()).collect();
            prop_assert_eq!(t.ports().collect::<BTreeSet<_>>(), ports);
            for port in ["tap0", "tap1", "tap2"] {
                let arriving = t.values().any(|v| {
                    v.params.port == port && v.receives() && !v.state.forwards()
                });
                prop_assert_eq!(t.awaits_arrival(port), arriving, "{}", port);
            }
        }
    }
}
