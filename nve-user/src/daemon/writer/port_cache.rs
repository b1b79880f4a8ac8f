//! The VM ports' interfaces as last looked up, kept while the kernel reports no link
//! change: a change on known ports then costs no netlink round trip per port (the largest
//! stage of an associate: ~60-100 us of ~250 us in the daemon).
use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::model::PortInfo;

/// Ports -> their interfaces, valid for one count of link events.
#[derive(Default)]
pub struct PortCache {
    /// Link events seen by the underlay watch (0: it is not watching yet).
    links: Arc<AtomicU64>,
    seen: Option<Seen>,
}

struct Seen {
    links: u64,
    ports: BTreeSet<String>,
    infos: HashMap<String, PortInfo>,
}

impl PortCache {
    /// The counter the underlay watch bumps on every link event (and once when it starts).
    pub fn link_events(&self) -> Arc<AtomicU64> {
        self.links.clone()
    }

    /// The link events so far: read before looking up, handed to [`PortCache::put`].
    pub fn links(&self) -> u64 {
        self.links.load(Ordering::Acquire)
    }

    /// What `ports` were found to be, if no link event came since they were looked up.
    pub fn get(&self, ports: &BTreeSet<&str>) -> Option<&HashMap<String, PortInfo>> {
        let seen = self.seen.as_ref()?;
        let same = seen
            .ports
            .iter()
            .map(String::as_str)
            .eq(ports.iter().copied());
        (seen.links != 0 && seen.links == self.links() && same).then_some(&seen.infos)
    }

    /// Keeps what `ports` were found to be after `links` link events.
    pub fn put(&mut self, links: u64, ports: &BTreeSet<&str>, infos: &HashMap<String, PortInfo>) {
        self.seen = Some(Seen {
            links,
            ports: ports.iter().map(|p| p.to_string()).collect(),
            infos: infos.clone(),
        });
    }
}
