//! What the model keeps of the other NVEs' publications, built to change one MAC at a time:
//! with 100,000 remote MACs a move must not cost a copy of all of them. The MACs are in
//! persistent maps ([`imbl`]: a clone shares the tree, a change copies one path), so the
//! daemon's apply-to-a-copy-then-commit costs O(log n) per changed MAC, and the indexes the
//! dataplane asks (a VN's VTEPs, who holds an address) are kept up to date as MACs change.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use serde::{Deserialize, Serialize};

use super::Entry;
use crate::{api::CreateVn, mac::MacAddr};

type Macs = imbl::OrdMap<u32, imbl::OrdMap<MacAddr, Entry>>;

/// VNI -> MAC -> the VTEP expecting it (its vNIC pre-associated there migrating in).
pub type Arriving = BTreeMap<u32, BTreeMap<MacAddr, IpAddr>>;

/// The other NVEs' MACs (the winning claim of each), VN memberships and VN definitions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Stored", into = "Stored")]
pub struct Table {
    /// VNI -> MAC -> where.
    macs: Macs,
    /// (VNI, address) -> the MACs claiming it, sorted (nearly always one); the highest
    /// answers.
    addrs: imbl::OrdMap<(u32, IpAddr), Vec<MacAddr>>,
    /// VNI -> VTEP -> how many of its MACs are behind it.
    vteps: BTreeMap<u32, BTreeMap<IpAddr, usize>>,
    /// VNI -> the other NVEs with a vNIC in the VN, pre-associated ones included: they join
    /// its flood list and decapsulation allow-list before a migration's first frame.
    pub members: BTreeMap<u32, BTreeSet<IpAddr>>,
    /// The MACs other NVEs expect to arrive: where a vNIC paused for its migration toward
    /// "wherever it is expected" (migrating-out 0.0.0.0) goes.
    pub arriving: Arriving,
    /// VN definitions other NVEs serve, by name: an associate in a VN this NVE does not
    /// have creates it from here.
    pub vns: BTreeMap<String, CreateVn>,
}

/// The table on disk: the indexes are rebuilt when it is read.
#[derive(Default, Serialize, Deserialize)]
struct Stored {
    #[serde(default)]
    macs: Macs,
    #[serde(default)]
    members: BTreeMap<u32, BTreeSet<IpAddr>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    arriving: Arriving,
    #[serde(default)]
    vns: BTreeMap<String, CreateVn>,
}

impl From<Stored> for Table {
    fn from(s: Stored) -> Self {
        let mut table = Table {
            members: s.members,
            arriving: s.arriving,
            vns: s.vns,
            ..Table::default()
        };
        for (vni, macs) in s.macs {
            for (mac, entry) in macs {
                table.set(vni, mac, Some(entry));
            }
        }
        table
    }
}

impl From<Table> for Stored {
    fn from(t: Table) -> Self {
        Stored {
            macs: t.macs,
            members: t.members,
            arriving: t.arriving,
            vns: t.vns,
        }
    }
}

/// One MAC's new winning claim, or its withdrawal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacChange {
    pub vni: u32,
    pub mac: MacAddr,
    pub entry: Option<Entry>,
}

/// What changed in the NVA since the table was last handed to the model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub macs: Vec<MacChange>,
    /// The memberships, when they changed (they are few: replaced whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<BTreeMap<u32, BTreeSet<IpAddr>>>,
    /// The MACs expected elsewhere, when they changed (few: replaced whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arriving: Option<Arriving>,
    /// The VN definitions, when they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vns: Option<BTreeMap<String, CreateVn>>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.macs.is_empty()
            && self.members.is_none()
            && self.arriving.is_none()
            && self.vns.is_none()
    }
}

impl Table {
    pub fn is_empty(&self) -> bool {
        self.macs.is_empty()
            && self.members.is_empty()
            && self.arriving.is_empty()
            && self.vns.is_empty()
    }

    /// MACs held, over all VNs.
    pub fn len(&self) -> usize {
        self.macs.values().map(imbl::OrdMap::len).sum()
    }

    /// The VTEP expecting `mac` of `vni`, if another NVE does.
    pub fn expected_at(&self, vni: u32, mac: MacAddr) -> Option<IpAddr> {
        self.arriving.get(&vni)?.get(&mac).copied()
    }

    pub fn get(&self, vni: u32, mac: MacAddr) -> Option<&Entry> {
        self.macs.get(&vni)?.get(&mac)
    }

    /// The MACs of `vni`.
    pub fn macs(&self, vni: u32) -> impl Iterator<Item = (&MacAddr, &Entry)> {
        self.macs.get(&vni).into_iter().flat_map(|m| m.iter())
    }

    /// The VTEPs with MACs of `vni` behind them, and its members.
    pub fn vteps(&self, vni: u32) -> impl Iterator<Item = IpAddr> + '_ {
        let behind = self.vteps.get(&vni).into_iter().flat_map(|v| v.keys());
        let members = self.members.get(&vni).into_iter().flatten();
        behind.chain(members).copied()
    }

    /// The MAC that answers for `ip` in `vni`, if one claims it.
    pub fn owner(&self, vni: u32, ip: IpAddr) -> Option<MacAddr> {
        self.addrs.get(&(vni, ip))?.last().copied()
    }

    /// Sets (or with `None` removes) `mac`'s claim in `vni`; returns the previous one.
    pub fn set(&mut self, vni: u32, mac: MacAddr, entry: Option<Entry>) -> Option<Entry> {
        let old = match &entry {
            Some(e) => self.macs.entry(vni).or_default().insert(mac, e.clone()),
            None => {
                let macs = self.macs.get_mut(&vni)?;
                let old = macs.remove(&mac);
                if macs.is_empty() {
                    self.macs.remove(&vni);
                }
                old
            }
        };
        if let Some(old) = &old {
            self.unindex(vni, mac, old);
        }
        if let Some(new) = &entry {
            for &ip in &new.ips {
                let owners = self.addrs.entry((vni, ip)).or_default();
                if let Err(at) = owners.binary_search(&mac) {
                    owners.insert(at, mac);
                }
            }
            *self
                .vteps
                .entry(vni)
                .or_default()
                .entry(new.vtep)
                .or_default() += 1;
        }
        old
    }

    fn unindex(&mut self, vni: u32, mac: MacAddr, old: &Entry) {
        for ip in &old.ips {
            if let Some(owners) = self.addrs.get_mut(&(vni, *ip)) {
                owners.retain(|m| *m != mac);
                if owners.is_empty() {
                    self.addrs.remove(&(vni, *ip));
                }
            }
        }
        if let Some(vteps) = self.vteps.get_mut(&vni) {
            if let Some(n) = vteps.get_mut(&old.vtep) {
                *n -= 1;
                if *n == 0 {
                    vteps.remove(&old.vtep);
                }
            }
            if vteps.is_empty() {
                self.vteps.remove(&vni);
            }
        }
    }

    pub fn apply(&mut self, delta: &Delta) {
        for c in &delta.macs {
            self.set(c.vni, c.mac, c.entry.clone());
        }
        if let Some(members) = &delta.members {
            self.members = members.clone();
        }
        if let Some(arriving) = &delta.arriving {
            self.arriving = arriving.clone();
        }
        if let Some(vns) = &delta.vns {
            self.vns = vns.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(vtep: &str, ips: &[&str]) -> Entry {
        Entry {
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            ..Entry::at(vtep.parse().unwrap())
        }
    }

    fn mac(last: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, last])
    }

    #[test]
    fn indexes_follow_changes_and_survive_a_round_trip() {
        let mut t = Table::default();
        t.set(100, mac(1), Some(entry("10.0.0.2", &["192.168.1.1"])));
        t.set(100, mac(2), Some(entry("10.0.0.2", &["192.168.1.1"])));
        t.set(100, mac(3), Some(entry("10.0.0.3", &[])));
        let vteps: Vec<IpAddr> = t.vteps(100).collect();
        assert_eq!(vteps.len(), 2);
        // Two MACs claim one address: the higher answers, the other once it is gone.
        assert_eq!(t.owner(100, "192.168.1.1".parse().unwrap()), Some(mac(2)));
        t.set(100, mac(2), None);
        assert_eq!(t.owner(100, "192.168.1.1".parse().unwrap()), Some(mac(1)));
        // A MAC moving from VTEP .3 to .2 leaves .3 without MACs.
        let old = t.set(100, mac(3), Some(entry("10.0.0.2", &[])));
        assert_eq!(old.unwrap().vtep, "10.0.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(t.vteps(100).count(), 1);
        let json = serde_json::to_string(&t).unwrap();
        let back: Table = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        t.set(100, mac(1), None);
        t.set(100, mac(3), None);
        assert!(t.is_empty(), "{t:?}");
        assert_eq!(t, Table::default());
    }
}
