//! MAC mobility (RFC 7432 section 15) as one NVE sees it: where each MAC is installed,
//! how often it moved lately, and what is frozen as a duplicate.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::IpAddr,
    time::{Duration, Instant},
};

use super::{
    Entry,
    claims::{Claims, MacId},
};
use crate::mac::MacAddr;

/// Duplicate-MAC detection: this many unexplained moves within `DUP_WINDOW` freeze the MAC.
pub const DUP_MOVES: usize = 5;
pub const DUP_WINDOW: Duration = Duration::from_secs(180);

/// Where each MAC was installed, and when it moved lately (duplicate detection).
#[derive(Default)]
pub struct Mobility {
    at: HashMap<(u32, MacAddr), IpAddr>,
    moves: HashMap<(u32, MacAddr), VecDeque<Instant>>,
    frozen: BTreeMap<(u32, MacAddr), Entry>,
}

impl Mobility {
    /// `winner` is where (`vni`, `mac`) is now: records a move; the entry to install (the
    /// frozen one for a duplicate).
    pub fn follow(&mut self, vni: u32, mac: MacAddr, winner: &Entry) -> Entry {
        let id = (vni, mac);
        if let Some(frozen) = self.frozen.get(&id) {
            // A VM the hypervisor says it moved is where it says, frozen or not.
            if !(winner.migrated && winner.vtep != frozen.vtep) {
                return frozen.clone();
            }
            tracing::info!(vni, %mac, vtep = %winner.vtep, "duplicate MAC thawed: a signaled migration");
            self.frozen.remove(&id);
            self.moves.remove(&id);
        }
        let moved = self
            .at
            .insert(id, winner.vtep)
            .is_some_and(|was| was != winner.vtep);
        // Only unexplained moves count: learned, or claimed without a signaled migration.
        if moved && !winner.migrated {
            let now = Instant::now();
            let moves = self.moves.entry(id).or_default();
            moves.push_back(now);
            while moves
                .front()
                .is_some_and(|t| now.duration_since(*t) > DUP_WINDOW)
            {
                moves.pop_front();
            }
            if moves.len() >= DUP_MOVES {
                tracing::warn!(vni, %mac, vtep = %winner.vtep, "duplicate MAC: {DUP_MOVES} moves within {DUP_WINDOW:?}; frozen");
                self.frozen.insert(id, winner.clone());
            }
        }
        winner.clone()
    }
}

/// The entry to install for `id`: the winning claim of another NVE (highest sequence
/// number, then lowest VTEP), or where a duplicate froze. A MAC nobody claims but another
/// NVE expects (its vNIC pre-associated there migrating in) is installed there: its VM left
/// its last VTEP and is on its way (a signaled migration), so frames for it go where they
/// will be delivered, rather than flooded to every VTEP (the destination among them, which
/// the source's forwarding pointer reaches too: twice).
pub fn installed(
    claims: &Claims,
    id: MacId,
    vtep: IpAddr,
    mobility: &mut Mobility,
) -> Option<Entry> {
    let Some(winner) = claims.winner(id, vtep) else {
        let at = claims.expected_at(id, vtep)?;
        let arriving = Entry {
            migrated: true,
            ..Entry::at(at)
        };
        return Some(mobility.follow(id.0, id.1, &arriving));
    };
    let mut entry = mobility.follow(id.0, id.1, winner);
    entry.supersedes_local = claims.own(id, vtep).is_some_and(|own| entry.beats(own));
    Some(entry)
}

impl Mobility {
    /// The MACs frozen as duplicates, as `nve status` names them ("VNI/MAC").
    pub fn duplicates(&self) -> Vec<String> {
        self.frozen
            .keys()
            .map(|(vni, mac)| format!("{vni}/{mac}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(vtep: &str, migrated: bool) -> Entry {
        Entry {
            migrated,
            ..Entry::at(vtep.parse().unwrap())
        }
    }

    #[test]
    fn a_mac_nobody_claims_goes_where_it_is_expected() {
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let vtep = |s: &str| -> IpAddr { s.parse().unwrap() };
        let (h1, h2, h3) = (vtep("10.0.0.1"), vtep("10.0.0.2"), vtep("10.0.0.3"));
        let mut claims = Claims::default();
        let key = super::super::claims::key(7, mac, h1);
        claims.put_entry(&key, Entry::at(h1));
        claims.put_entry(
            &super::super::claims::arriving_key(7, mac, h2),
            Entry::at(h2),
        );
        let mut m = Mobility::default();
        let at = |c: &Claims, m: &mut Mobility, me| installed(c, (7, mac), me, m).map(|e| e.vtep);
        let before = at(&claims, &mut m, h3);
        assert_eq!(before, Some(h1), "a claim beats an expectation");
        claims.delete(&key);
        let after = at(&claims, &mut m, h3);
        assert_eq!(after, Some(h2), "the source withdrew: h2 expects it");
        assert!(m.moves.is_empty(), "a signaled migration");
        let own = at(&claims, &mut m, h2);
        assert_eq!(own, None, "h2's own expectation is its vNIC's");
    }

    #[test]
    fn only_unexplained_moves_count_towards_duplicates() {
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let mut m = Mobility::default();
        let back_and_forth = |i: usize| {
            if i.is_multiple_of(2) {
                "10.0.0.1"
            } else {
                "10.0.0.2"
            }
        };
        // Signaled migrations, twice as many as would freeze: each followed.
        for i in 0..2 * DUP_MOVES {
            let to = back_and_forth(i);
            assert_eq!(m.follow(7, mac, &claim(to, true)).vtep.to_string(), to);
        }
        assert!(m.frozen.is_empty());
        // Unexplained moves (claims without a signaled migration) freeze it.
        for i in 0..=DUP_MOVES {
            m.follow(7, mac, &claim(back_and_forth(i), false));
        }
        let frozen = m.frozen.get(&(7, mac)).expect("frozen").vtep;
        let other = if frozen.to_string() == "10.0.0.1" {
            "10.0.0.2"
        } else {
            "10.0.0.1"
        };
        assert_eq!(m.follow(7, mac, &claim(other, false)).vtep, frozen);
        // A signaled migration thaws it: the VM is where the hypervisor put it.
        assert_eq!(
            m.follow(7, mac, &claim("10.0.0.3", true)).vtep.to_string(),
            "10.0.0.3"
        );
        assert!(m.frozen.is_empty());
    }
}
