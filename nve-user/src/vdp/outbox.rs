//! What the bridge has to tell the station, waiting for ECP's one outstanding request:
//! answers and unsolicited DeAssocs, packed so that each ECPDU carries as many VSI TLVs of
//! one Manager ID as fit (lldpad reads them all, in order). One ECPDU leaves at most every 5 ms
//! (`ecp::REQUEST_GAP_US`); packed, a burst of requests is answered in a few ECPDUs rather than queued
//! behind itself.
use std::collections::VecDeque;

use super::{
    Id16, ecp,
    tlv::{self, Vsi},
};

/// What waits, with the sender's tag for each VSI.
#[derive(Clone, Debug)]
pub struct Outbox<T> {
    queue: VecDeque<(Id16, Vsi, T)>,
    limit: usize,
}

impl<T> Outbox<T> {
    /// An outbox holding at most `limit` VSIs.
    pub fn new(limit: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            limit,
        }
    }

    /// Queues `vsi`; false if the outbox is full (it is dropped).
    pub fn push(&mut self, manager: Id16, vsi: Vsi, tag: T) -> bool {
        if self.queue.len() >= self.limit {
            return false;
        }
        self.queue.push_back((manager, vsi, tag));
        true
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The next ECPDU's payload: the first VSI's Manager ID and the VSIs after it with the
    /// same one, as many as fit; with their tags.
    pub fn next_payload(&mut self) -> Option<(Vec<u8>, Vec<T>)> {
        let manager = self.queue.front()?.0;
        let mut vsis = Vec::new();
        let mut tags = Vec::new();
        // Manager ID TLV and End TLV around the VSIs.
        let mut size = 2 + 16 + 2;
        while let Some((m, vsi, _)) = self.queue.front() {
            let len = 2 + tlv::VSI_FIXED_LEN + vsi.filters.len() * vsi.filter_format.entry_len();
            if *m != manager || (!vsis.is_empty() && size + len > ecp::MAX_PAYLOAD) {
                break;
            }
            size += len;
            let (_, vsi, tag) = self.queue.pop_front().expect("front");
            vsis.push(vsi);
            tags.push(tag);
        }
        Some((tlv::write(manager, &vsis), tags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        mac::MacAddr,
        vdp::tlv::{Filter, FilterFormat, Mode, VSIID_UUID},
    };

    fn vsi(n: u8) -> Vsi {
        Vsi {
            mode: Mode::Assoc,
            status: tlv::ACK,
            type_id: 1,
            type_version: 1,
            vsiid_format: VSIID_UUID,
            vsiid: Id16([n; 16]),
            filter_format: FilterFormat::GroupMacVid,
            filters: vec![Filter {
                group: Some(100),
                mac: Some(MacAddr([2, 0, 0, 0, 0, n])),
                vid: 2,
            }],
        }
    }

    #[test]
    fn packs_by_manager_up_to_the_ecpdu_size() {
        let (a, b) = (Id16([1; 16]), Id16([2; 16]));
        let mut out = Outbox::new(100);
        for n in 0..40 {
            assert!(out.push(a, vsi(n), n));
        }
        out.push(b, vsi(40), 40);
        out.push(a, vsi(41), 41);
        // 39 bytes a VSI: 37 of 40 fit in 1,494 with the Manager ID and End TLVs.
        let (payload, tags) = out.next_payload().unwrap();
        assert_eq!(tags, (0..37).collect::<Vec<_>>());
        assert!(payload.len() <= ecp::MAX_PAYLOAD);
        let (manager, entries) = tlv::parse(&payload).unwrap();
        assert_eq!((manager, entries.len()), (a, 37));
        assert_eq!(out.next_payload().unwrap().1, (37..40).collect::<Vec<_>>());
        assert_eq!(
            out.next_payload().unwrap().1,
            vec![40],
            "another manager, its own"
        );
        assert_eq!(out.next_payload().unwrap().1, vec![41]);
        assert!(out.next_payload().is_none());
        let mut small = Outbox::new(1);
        assert!(small.push(a, vsi(0), 0));
        assert!(!small.push(a, vsi(1), 1), "full");
    }
}
