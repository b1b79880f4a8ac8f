//! A VN's VTEPs inline in its value: when the VTEPs a VN decapsulates from are few and
//! IPv4, `VnInfo` lists them (`VN_F_VTEPS_INLINE`) and decapsulation checks a sender there
//! without a lookup in `VN_VTEPS_MAP`, which still holds them all.
use std::collections::HashMap;

use nve_common::maps::{VN_F_VTEPS_INLINE, VN_INLINE_VTEPS, VnInfo, VnVtepKey, vtep_ipv4};

/// Lists each VN's VTEPs (`vn_vteps`) in its value where they fit, and clears the list
/// where they do not.
pub(super) fn inline(vns: &mut HashMap<u32, VnInfo>, vn_vteps: &HashMap<VnVtepKey, u32>) {
    let mut lists: HashMap<u32, Option<Vec<u32>>> = HashMap::new();
    for key in vn_vteps.keys() {
        let list = lists.entry(key.vni).or_insert_with(|| Some(Vec::new()));
        match (list.as_mut(), vtep_ipv4(&key.vtep)) {
            (Some(l), Some(v4)) if l.len() < VN_INLINE_VTEPS => l.push(u32::from_ne_bytes(v4)),
            _ => *list = None,
        }
    }
    for (vni, info) in vns.iter_mut() {
        info.flags &= !VN_F_VTEPS_INLINE;
        info.vtep_count = 0;
        info.vteps = [0; VN_INLINE_VTEPS];
        let list = match lists.get(vni) {
            Some(Some(list)) => list.as_slice(),
            Some(None) => continue,
            // None at all: an empty list is complete too.
            None => &[],
        };
        let mut sorted = list.to_vec();
        // One order whatever the map's: an unchanged VN is not rewritten.
        sorted.sort_unstable();
        info.vteps[..sorted.len()].copy_from_slice(&sorted);
        info.vtep_count = sorted.len() as u16;
        info.flags |= VN_F_VTEPS_INLINE;
    }
}

#[cfg(test)]
mod tests {
    use nve_common::maps::{vtep_of, vtep_v4};

    use super::*;

    fn key(vni: u32, last: u8) -> VnVtepKey {
        VnVtepKey::new(vni, vtep_v4([10, 0, 0, last]))
    }

    #[test]
    fn few_ipv4_vteps_are_listed_many_or_ipv6_are_left_to_the_map() {
        let mut vns: HashMap<u32, VnInfo> = [100, 200, 300, 400]
            .into_iter()
            .map(|v| (v, VnInfo::default()))
            .collect();
        let mut vteps = HashMap::new();
        vteps.insert(key(100, 2), 0);
        vteps.insert(key(100, 3), 0);
        for last in 0..=VN_INLINE_VTEPS as u8 {
            vteps.insert(key(200, last), 0);
        }
        vteps.insert(VnVtepKey::new(300, vtep_of("fd00::2".parse().unwrap())), 0);
        inline(&mut vns, &vteps);
        let blue = vns[&100];
        assert!(blue.lists_vteps_inline());
        assert_eq!(blue.vtep_count, 2);
        assert_eq!(
            blue.vteps[..2],
            [
                u32::from_ne_bytes([10, 0, 0, 2]),
                u32::from_ne_bytes([10, 0, 0, 3])
            ]
        );
        assert!(!vns[&200].lists_vteps_inline(), "one more than fits");
        assert!(!vns[&300].lists_vteps_inline(), "IPv6");
        assert!(vns[&400].lists_vteps_inline());
        assert_eq!(vns[&400].vtep_count, 0);
    }
}
