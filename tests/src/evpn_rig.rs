//! The EVPN rig: the two-host overlay with nve on h1 (`--nva bgp`) and FRR on h2 (zebra +
//! bgpd, iBGP AS 65000) over the kernel's vxlan+bridge for VNI 100 with vm2 behind it.
use std::{fs, net::Ipv4Addr, path::PathBuf, time::Duration};

use anyhow::Result;
use serde_json::{Value, json};

use crate::{
    frr::{self, Frr, FrrConfig, Neighbour},
    overlay::{H1_VTEP, H2_VTEP, TwoHosts, VN, VNI},
    rig::Daemon,
};

pub const ASN: u32 = 65000;

/// Declared in drop order: FRR, nve, the hosts and VMs.
pub struct EvpnRig {
    pub frr: Frr,
    pub nve: Daemon,
    pub hosts: TwoHosts,
    config: PathBuf,
}

/// nve's config file: VN blue, and `bgp` with FRR on h2 as neighbour (`extra` merged in).
pub fn nve_config(extra: Value) -> Value {
    let mut bgp = json!({
        "asn": ASN,
        "neighbors": [{"address": H2_VTEP, "remote_as": ASN}],
        "stale_time": 10,
    });
    if let (Some(b), Some(e)) = (bgp.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    json!({"vns": [{"name": VN, "vni": VNI}], "bgp": bgp})
}

impl EvpnRig {
    /// The rig, once FRR reports nve's session Established; `bgp` is merged into nve's
    /// "bgp" section, `frr` adjusts FRR's config.
    pub fn new(tag: &str, bgp: Value, frr: impl FnOnce(FrrConfig) -> FrrConfig) -> Result<Self> {
        Self::with_config(tag, nve_config(bgp), frr)
    }

    /// As [`EvpnRig::new`] with nve's whole config file given (a VN with other settings,
    /// say: start from [`nve_config`]).
    pub fn with_config(
        tag: &str,
        contents: Value,
        frr: impl FnOnce(FrrConfig) -> FrrConfig,
    ) -> Result<Self> {
        let hosts = TwoHosts::new(tag)?;
        frr::evpn_vni(&hosts.h2, VNI, H2_VTEP, "vm2p")?;
        let h1: Ipv4Addr = H1_VTEP.parse()?;
        let h2: Ipv4Addr = H2_VTEP.parse()?;
        let config = PathBuf::from(format!("/tmp/{}-nve.json", hosts.h1.name));
        fs::write(&config, contents.to_string())?;
        let path = config.to_str().unwrap_or_default().to_string();
        let started = (|| {
            let cfg = frr(FrrConfig::new(ASN, h2).neighbour(Neighbour::new(h1, ASN)));
            let frr = Frr::new(&hosts.h2, cfg)?;
            let nve = Daemon::start(
                &hosts.h1,
                tag,
                H1_VTEP,
                "ul",
                &["--nva", "bgp", "--config", &path],
            )?;
            frr.wait_established(h1, Duration::from_secs(20))?;
            Ok((frr, nve))
        })();
        match started {
            Ok((frr, nve)) => Ok(Self {
                frr,
                nve,
                hosts,
                config,
            }),
            Err(e) => {
                let _ = fs::remove_file(&config);
                Err(e)
            }
        }
    }

    /// nve's BGP neighbour (FRR) as `nve status` has it.
    pub fn neighbor(&self) -> Result<nve_user::api::NvaNeighbor> {
        let nva = self
            .nve
            .status()?
            .nva
            .ok_or_else(|| anyhow::anyhow!("no NVA in status"))?;
        nva.neighbors
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no BGP neighbour in status"))
    }
}

impl Drop for EvpnRig {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.config);
    }
}
