//! The NVA's keys, and every NVE's publications indexed by what they claim: per MAC the
//! claims of each VTEP (so a change recomputes one MAC's winner, not all of them), and the
//! few membership and VN-definition keys.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use super::{Arriving, Entry, PREFIX};
use crate::{api::CreateVn, mac::MacAddr};

pub fn key(vni: u32, mac: MacAddr, vtep: IpAddr) -> String {
    format!("{PREFIX}{vni}/mac/{mac}/vtep/{vtep}")
}

pub fn vn_key(vni: u32, vtep: IpAddr) -> String {
    format!("{PREFIX}{vni}/vn/{vtep}")
}

pub fn member_key(vni: u32, vtep: IpAddr) -> String {
    format!("{PREFIX}{vni}/member/{vtep}")
}

/// The key of an intent, not a claim: `vtep` expects `mac` to arrive (its vNIC is
/// pre-associated there migrating in). It never wins a MAC; it tells the source where a
/// vNIC paused for its migration goes (`pause` with migrating-out 0.0.0.0).
pub fn arriving_key(vni: u32, mac: MacAddr, vtep: IpAddr) -> String {
    format!("{PREFIX}{vni}/arriving/{mac}/vtep/{vtep}")
}

/// What a key under the prefix names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Mac(u32, MacAddr, IpAddr),
    Arriving(u32, MacAddr, IpAddr),
    Member(u32, IpAddr),
    Vn(u32, IpAddr),
}

/// What `key` names, if it is one of the NVA's.
pub fn parse(key: &str) -> Option<Key> {
    let (vni, rest) = key.strip_prefix(PREFIX)?.split_once('/')?;
    let vni: u32 = vni.parse().ok()?;
    let (kind, rest) = rest.split_once('/')?;
    match kind {
        "mac" | "arriving" => {
            let (mac, vtep) = rest.split_once("/vtep/")?;
            let (mac, vtep) = (mac.parse().ok()?, vtep.parse().ok()?);
            Some(if kind == "mac" {
                Key::Mac(vni, mac, vtep)
            } else {
                Key::Arriving(vni, mac, vtep)
            })
        }
        "member" => Some(Key::Member(vni, rest.parse().ok()?)),
        "vn" => Some(Key::Vn(vni, rest.parse().ok()?)),
        _ => None,
    }
}

/// A MAC in a VN.
pub type MacId = (u32, MacAddr);

/// Every NVE's publications (this one's included), as etcd has them.
#[derive(Default)]
pub struct Claims {
    /// Per MAC, each VTEP's claim: almost always one, so a vector (a BTreeMap's first node
    /// holds room for eleven: at 100,000 MACs that was most of the daemon's memory).
    macs: HashMap<MacId, Vec<(IpAddr, Entry)>>,
    members: BTreeMap<(u32, IpAddr), ()>,
    /// Who expects which MAC (see [`arriving_key`]).
    arriving: BTreeSet<(MacId, IpAddr)>,
    vns: BTreeMap<(u32, IpAddr), CreateVn>,
}

impl Claims {
    /// Records a put (an entry as JSON); the MAC it concerns, if it is a MAC's claim.
    pub fn put(&mut self, key: &str, value: &[u8]) -> Option<MacId> {
        let entry: Entry = serde_json::from_slice(value).ok()?;
        self.put_entry(key, entry)
    }

    /// Records a put; the MAC it concerns, if it is a MAC's claim.
    pub fn put_entry(&mut self, key: &str, entry: Entry) -> Option<MacId> {
        match parse(key)? {
            Key::Mac(vni, mac, vtep) => {
                let claims = self.macs.entry((vni, mac)).or_default();
                match claims.iter_mut().find(|(v, _)| *v == vtep) {
                    Some((_, e)) => *e = entry,
                    None => claims.push((vtep, entry)),
                }
                Some((vni, mac))
            }
            Key::Member(vni, vtep) => {
                self.members.insert((vni, vtep), ());
                None
            }
            Key::Arriving(vni, mac, vtep) => {
                self.arriving.insert(((vni, mac), vtep));
                None
            }
            Key::Vn(vni, vtep) => {
                if let Some(def) = entry.vn {
                    self.vns.insert((vni, vtep), *def);
                }
                None
            }
        }
    }

    /// Records a delete; the MAC it concerns, if it was a MAC's claim.
    pub fn delete(&mut self, key: &str) -> Option<MacId> {
        match parse(key)? {
            Key::Mac(vni, mac, vtep) => {
                let id = (vni, mac);
                if let Some(claims) = self.macs.get_mut(&id) {
                    claims.retain(|(v, _)| *v != vtep);
                    if claims.is_empty() {
                        self.macs.remove(&id);
                    }
                }
                Some(id)
            }
            Key::Member(vni, vtep) => {
                self.members.remove(&(vni, vtep));
                None
            }
            Key::Arriving(vni, mac, vtep) => {
                self.arriving.remove(&((vni, mac), vtep));
                None
            }
            Key::Vn(vni, vtep) => {
                self.vns.remove(&(vni, vtep));
                None
            }
        }
    }

    /// Every MAC claimed.
    pub fn ids(&self) -> impl Iterator<Item = MacId> + '_ {
        self.macs.keys().copied()
    }

    /// The winning claim on `id` among VTEPs other than `except`: the highest sequence
    /// number, ties to the lowest VTEP address (RFC 7432 section 15).
    pub fn winner(&self, id: MacId, except: IpAddr) -> Option<&Entry> {
        self.macs
            .get(&id)?
            .iter()
            .map(|(_, e)| e)
            .filter(|e| e.vtep != except)
            .reduce(|a, b| if b.beats(a) { b } else { a })
    }

    /// The claim `vtep` (this NVE) has on `id`, as etcd has it.
    pub fn own(&self, id: MacId, vtep: IpAddr) -> Option<&Entry> {
        let claims = self.macs.get(&id)?;
        claims.iter().find(|(v, _)| *v == vtep).map(|(_, e)| e)
    }

    /// VNI -> the other VTEPs with a vNIC in it.
    pub fn members(&self, except: IpAddr) -> BTreeMap<u32, BTreeSet<IpAddr>> {
        let mut out: BTreeMap<u32, BTreeSet<IpAddr>> = BTreeMap::new();
        for &(vni, vtep) in self.members.keys().filter(|(_, v)| *v != except) {
            out.entry(vni).or_default().insert(vtep);
        }
        out
    }

    /// The MACs other NVEs expect to arrive, and where (the lowest VTEP, if several do).
    pub fn arriving(&self, except: IpAddr) -> Arriving {
        let mut out = Arriving::new();
        for &((vni, mac), vtep) in self.arriving.iter().filter(|(_, v)| *v != except) {
            out.entry(vni).or_default().entry(mac).or_insert(vtep);
        }
        out
    }

    /// The VNs other NVEs define, by name (the lowest VTEP's definition of a name).
    pub fn vns(&self, except: IpAddr) -> BTreeMap<String, CreateVn> {
        let mut out = BTreeMap::new();
        for ((_, vtep), def) in &self.vns {
            if *vtep != except {
                out.entry(def.name.clone()).or_insert_with(|| def.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back() {
        let mac: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(parse(&key(7, mac, v6)), Some(Key::Mac(7, mac, v6)));
        assert_eq!(parse(&member_key(7, v4)), Some(Key::Member(7, v4)));
        assert_eq!(parse(&vn_key(7, v4)), Some(Key::Vn(7, v4)));
        assert_eq!(
            parse(&arriving_key(7, mac, v4)),
            Some(Key::Arriving(7, mac, v4))
        );
        assert_eq!(parse("/nve/v1/vni/x/mac/y"), None);
    }

    #[test]
    fn an_arrival_expected_is_no_claim() {
        let mut c = Claims::default();
        let mac: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        let (me, h2): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let expected = serde_json::to_vec(&Entry::at(h2)).unwrap();
        assert_eq!(c.put(&arriving_key(7, mac, h2), &expected), None);
        assert!(c.winner((7, mac), me).is_none());
        assert_eq!(c.arriving(me)[&7][&mac], h2);
        assert!(c.arriving(h2).is_empty(), "its own intent is no news to h2");
        c.delete(&arriving_key(7, mac, h2));
        assert!(c.arriving(me).is_empty());
    }

    #[test]
    fn highest_sequence_wins_then_lowest_vtep() {
        let mut c = Claims::default();
        let mac: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        let claim = |c: &mut Claims, vtep: &str, seq: u64| {
            let e = serde_json::json!({"vtep": vtep, "seq": seq}).to_string();
            c.put(&key(1, mac, vtep.parse().unwrap()), e.as_bytes())
        };
        let me: IpAddr = "10.0.0.9".parse().unwrap();
        claim(&mut c, "10.0.0.3", 1);
        claim(&mut c, "10.0.0.2", 1);
        assert_eq!(c.winner((1, mac), me).unwrap().vtep.to_string(), "10.0.0.2");
        claim(&mut c, "10.0.0.3", 2);
        assert_eq!(c.winner((1, mac), me).unwrap().vtep.to_string(), "10.0.0.3");
        claim(&mut c, "10.0.0.9", 5);
        assert_eq!(c.winner((1, mac), me).unwrap().seq, 2, "own claim left out");
        c.delete(&key(1, mac, "10.0.0.3".parse().unwrap()));
        assert_eq!(c.winner((1, mac), me).unwrap().vtep.to_string(), "10.0.0.2");
    }
}
