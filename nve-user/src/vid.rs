//! VN <-> local VID mapping on one port (spec.md section 4). A VID names a VN on one
//! server-to-NVE link only; each port keeps its own map. Every binding is reference-counted
//! (a pre-association holds a reference); the last release unbinds the VID and quarantines it
//! so late frames tagged with it are not delivered into another VN. VID 0 means untagged:
//! bound only on request, never assigned, never quarantined. Pure: time (milliseconds) is
//! passed in.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const VID_MAX: u16 = 4094;
/// The lowest VID the allocator assigns: VID 1 is 802.1Q's default VLAN, which bridges
/// carry untagged and lldpad's VDP station refuses (qbg/vdp22.c, `check_vid`).
pub const VID_FIRST_ASSIGNED: u16 = 2;
/// Milliseconds a released VID stays out of reach of other VNs.
pub const QUARANTINE_MS: u64 = 30_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Binding {
    vid: u16,
    refs: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Quarantined {
    vni: u32,
    until: u64,
}

/// One port's VID map.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortVids {
    by_vni: BTreeMap<u32, Binding>,
    by_vid: BTreeMap<u16, u32>,
    quarantine: BTreeMap<u16, Quarantined>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VidError {
    #[error("VID {vid} is bound to VNI {bound_to} on this port{}", free.map(|f| format!("; VID {f} is free")).unwrap_or_default())]
    Conflict {
        vid: u16,
        bound_to: u32,
        free: Option<u16>,
    },
    #[error("VNI {vni} already uses VID {vid} on this port")]
    OtherVid { vni: u32, vid: u16 },
    #[error("no free VID on this port")]
    Exhausted,
}

impl PortVids {
    /// Takes a reference on `vni`'s binding, creating it with `requested` (Some(0):
    /// untagged) or, with `None`, the lowest free VID. Returns the VID.
    pub fn acquire(&mut self, vni: u32, requested: Option<u16>, now: u64) -> Result<u16, VidError> {
        if let Some(b) = self.by_vni.get_mut(&vni) {
            if requested.is_some_and(|v| v != b.vid) {
                return Err(VidError::OtherVid { vni, vid: b.vid });
            }
            b.refs += 1;
            return Ok(b.vid);
        }
        let vid = match requested {
            Some(vid) => {
                if let Some(&other) = self.by_vid.get(&vid) {
                    return Err(VidError::Conflict {
                        vid,
                        bound_to: other,
                        free: self.free_vid(now),
                    });
                }
                if let Some(q) = self
                    .quarantine
                    .get(&vid)
                    .filter(|q| q.vni != vni && q.until > now)
                {
                    return Err(VidError::Conflict {
                        vid,
                        bound_to: q.vni,
                        free: self.free_vid(now),
                    });
                }
                vid
            }
            None => self.free_vid(now).ok_or(VidError::Exhausted)?,
        };
        self.quarantine.remove(&vid);
        self.by_vni.insert(vni, Binding { vid, refs: 1 });
        self.by_vid.insert(vid, vni);
        Ok(vid)
    }

    /// Drops a reference on `vni`'s binding; the last one unbinds (and quarantines) its VID.
    pub fn release(&mut self, vni: u32, now: u64) {
        let Some(b) = self.by_vni.get_mut(&vni) else {
            return;
        };
        b.refs -= 1;
        if b.refs > 0 {
            return;
        }
        let vid = b.vid;
        self.by_vni.remove(&vni);
        self.by_vid.remove(&vid);
        if vid != 0 {
            self.quarantine.insert(
                vid,
                Quarantined {
                    vni,
                    until: now + QUARANTINE_MS,
                },
            );
        }
    }

    /// Forgets quarantines that have ended.
    pub fn expire(&mut self, now: u64) {
        self.quarantine.retain(|_, q| q.until > now);
    }

    pub fn vid_of(&self, vni: u32) -> Option<u16> {
        self.by_vni.get(&vni).map(|b| b.vid)
    }

    pub fn refs(&self, vni: u32) -> u32 {
        self.by_vni.get(&vni).map_or(0, |b| b.refs)
    }

    /// (VID, VNI) of every binding.
    pub fn bindings(&self) -> impl Iterator<Item = (u16, u32)> + '_ {
        self.by_vid.iter().map(|(&vid, &vni)| (vid, vni))
    }

    pub fn is_empty(&self) -> bool {
        self.by_vni.is_empty()
    }

    /// The lowest VID neither bound nor quarantined.
    fn free_vid(&self, now: u64) -> Option<u16> {
        (VID_FIRST_ASSIGNED..=VID_MAX).find(|v| {
            !self.by_vid.contains_key(v) && self.quarantine.get(v).is_none_or(|q| q.until <= now)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Acquire { vni: u32, vid: Option<u16> },
        Release { vni: u32 },
        Wait(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1..5u32, prop::option::of(prop_oneof![Just(0u16), 1..6u16]))
                .prop_map(|(vni, vid)| Op::Acquire { vni, vid }),
            (1..5u32).prop_map(|vni| Op::Release { vni }),
            (0..40_000u64).prop_map(Op::Wait),
        ]
    }

    proptest! {
        #[test]
        fn bindings_stay_consistent(ops in prop::collection::vec(op(), 1..200)) {
            let mut p = PortVids::default();
            let mut held: BTreeMap<u32, u32> = BTreeMap::new();
            let mut now = 0;
            for op in ops {
                match op {
                    Op::Acquire { vni, vid } => {
                        if let Ok(got) = p.acquire(vni, vid, now) {
                            *held.entry(vni).or_default() += 1;
                            if let Some(v) = vid { prop_assert_eq!(got, v); }
                        }
                    }
                    Op::Release { vni } => {
                        if held.get(&vni).copied().unwrap_or(0) > 0 {
                            p.release(vni, now);
                            *held.get_mut(&vni).unwrap() -= 1;
                        }
                    }
                    Op::Wait(s) => { now += s; p.expire(now); }
                }
                // No VID maps two VNs; the two indexes are inverse.
                let by_vid: Vec<(u16, u32)> = p.bindings().collect();
                prop_assert_eq!(by_vid.len(), p.by_vni.len());
                for (vid, vni) in by_vid {
                    prop_assert_eq!(p.vid_of(vni), Some(vid));
                }
                // A binding's refcount is the number of references held.
                for (&vni, &n) in &held {
                    prop_assert_eq!(p.refs(vni), n);
                }
            }
            // Releasing everything leaves nothing bound.
            for (vni, n) in held {
                for _ in 0..n { p.release(vni, now); }
            }
            prop_assert!(p.is_empty());
        }
    }

    #[test]
    fn conflicts_propose_a_free_vid_and_quarantine_holds() {
        let mut p = PortVids::default();
        assert_eq!(p.acquire(100, Some(10), 0), Ok(10));
        assert_eq!(
            p.acquire(200, None, 0),
            Ok(VID_FIRST_ASSIGNED),
            "never VID 1"
        );
        assert_eq!(
            p.acquire(300, Some(10), 0),
            Err(VidError::Conflict {
                vid: 10,
                bound_to: 100,
                free: Some(3)
            })
        );
        assert_eq!(
            p.acquire(700, Some(1), 0),
            Ok(1),
            "asked for, VID 1 is given"
        );
        assert_eq!(
            p.acquire(100, Some(11), 0),
            Err(VidError::OtherVid { vni: 100, vid: 10 })
        );
        p.release(100, 5);
        // Quarantined for another VN, not for its own.
        assert!(matches!(
            p.acquire(300, Some(10), 10),
            Err(VidError::Conflict { .. })
        ));
        assert_ne!(p.acquire(300, None, 10), Ok(10));
        assert_eq!(p.acquire(100, Some(10), 10), Ok(10));
        p.release(100, 10);
        assert_eq!(p.acquire(400, Some(10), 10 + QUARANTINE_MS), Ok(10));
        // Untagged is explicit only and never quarantined.
        assert_eq!(p.acquire(500, Some(0), 0), Ok(0));
        p.release(500, 0);
        assert_eq!(p.acquire(600, Some(0), 0), Ok(0));
    }
}
