//! The events bridge's cache of domains: name -> UUID and nve interfaces (read with
//! [`super::parse_domain`] from `virsh dumpxml`), so the switchover's event costs no virsh
//! call. Filled for the active domains when the bridge (re)connects and refreshed on
//! Started, Defined and Resumed, in the background; a domain missing from it is read on
//! the spot (slower, and logged).
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;

use super::{Interface, parse_domain, virsh::Virsh};

/// What the bridge needs of a domain.
#[derive(Debug)]
pub struct Domain {
    pub uuid: String,
    /// Its interfaces nve serves (none: not nve's domain, nothing to signal).
    pub interfaces: Vec<Interface>,
}

/// Domains by name, shared by the event loop and its background refreshes.
#[derive(Clone, Default)]
pub struct Domains {
    by_name: Arc<Mutex<HashMap<String, Arc<Domain>>>>,
}

impl Domains {
    /// The cached domain `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Domain>> {
        self.lock().get(name).cloned()
    }

    /// Drops `name` (stopped or undefined).
    pub fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    /// Reads `name` from libvirt now and caches it.
    pub async fn refresh(&self, virsh: &Virsh, name: &str) -> anyhow::Result<Arc<Domain>> {
        let xml = virsh.dumpxml(name).await?;
        let (uuid, interfaces) =
            parse_domain(&xml).with_context(|| format!("the XML of domain {name:?}"))?;
        let domain = Arc::new(Domain { uuid, interfaces });
        self.lock().insert(name.to_string(), domain.clone());
        Ok(domain)
    }

    /// Reads every active domain (what was cached of the others goes): (domains, nve
    /// interfaces).
    pub async fn fill(&self, virsh: &Virsh) -> anyhow::Result<(usize, usize)> {
        let names = virsh.active_domains().await?;
        self.lock().retain(|name, _| names.contains(name));
        let (mut domains, mut interfaces) = (0, 0);
        for name in names {
            match self.refresh(virsh, &name).await {
                Ok(d) => (domains, interfaces) = (domains + 1, interfaces + d.interfaces.len()),
                // Gone since the list, or XML nve cannot read: logged, the others cached.
                Err(e) => tracing::warn!(domain = %name, "not cached: {e:#}"),
            }
        }
        Ok((domains, interfaces))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Domain>>> {
        // A panic while holding it leaves a map that is still whole: keep using it.
        self.by_name
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
