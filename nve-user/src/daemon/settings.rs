//! The daemon's settings: `/etc/nve/<instance>.toml` (or `--config FILE`, TOML, or JSON if
//! its name ends in `.json`) holds every one of them, and a flag given on the command line
//! overrides the file's key of the same name. The file is read at every start and on
//! SIGHUP (`nve reload`): VNs and VDP ports it lists are created when missing (at start
//! into the stored model, at a reload through the writer); the other keys take effect at
//! the next start.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::{
    api::{AttachPort, CreateVn, ReloadView, RemoteMac},
    dataplane::UnderlayMode,
    evpn::config::BgpConfig,
    model::{Event, Model},
    vdp::lldp::Timers,
};

/// Every daemon setting: the flags of `nve daemon` and the keys of its config file are
/// the same fields (a flag's `--some-name` is the key `some_name`).
#[derive(Clone, Debug, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// This NVE's VTEP address (an address of the underlay interface). Required, here or
    /// in the config file.
    #[arg(long)]
    pub vtep: Option<Ipv4Addr>,
    /// Its IPv6 VTEP address, for peers over an IPv6 underlay (VXLAN over IPv6 goes
    /// through the kernel's collect_md vxlan device, with the outer UDP checksum).
    #[arg(long)]
    pub vtep6: Option<Ipv6Addr>,
    /// The underlay interface VXLAN arrives on and leaves by. Required, here or in the
    /// config file.
    #[arg(long)]
    pub underlay: Option<String>,
    /// Decapsulation hook on the underlay [default: tc].
    #[arg(long, value_enum)]
    pub underlay_mode: Option<UnderlayMode>,
    /// Outer IPv4 TTL [default: 64].
    #[arg(long)]
    pub ttl: Option<u8>,
    /// On SIGTERM/SIGINT remove the dataplane (programs, pins, nve-vxlan, managed
    /// neighbours). Without it the dataplane keeps forwarding with the last state, and a
    /// restarted daemon takes it over without losing a packet; `nve teardown` removes it.
    #[arg(long)]
    #[serde(default)]
    pub teardown_on_exit: bool,
    /// Group whose members may use the API socket besides root.
    #[arg(long)]
    pub group: Option<String>,
    /// Serve Prometheus metrics on http://ADDR/metrics (for example 127.0.0.1:9464). Off
    /// unless given.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log every packet the dataplane drops (aya-log, debug level, in the daemon's log).
    /// Off by default: the programs are loaded with logging disabled and the verifier
    /// removes it.
    #[arg(long)]
    #[serde(default)]
    pub debug_log: bool,
    /// The network-wide control plane: etcd's client URL (http://HOST:2379), or `bgp` for
    /// BGP EVPN with the neighbours and AS of the config file's `bgp` section (see README).
    /// Each NVE publishes its associated vNICs there and installs the others'. Without it,
    /// remote MACs and flood lists are configured (`nve fdb`, `nve flood`).
    #[arg(long, value_name = "URL|bgp")]
    pub nva: Option<String>,
    /// The embedded NVA's static peers file (JSON: the other NVEs' VTEPs, VNIs and MACs;
    /// see README), followed as it changes. Instead of --nva, for hosts without etcd.
    #[arg(long, value_name = "FILE", conflicts_with = "nva")]
    pub peers: Option<PathBuf>,
    /// The VTEP the NVA publishes for this NVE's vNICs: --vtep (the default) or, where the
    /// NVEs reach each other over IPv6, the --vtep6 address.
    #[arg(long, value_name = "ADDR")]
    pub nva_vtep: Option<IpAddr>,
    /// BGP EVPN (`nva = "bgp"`): the file's `bgp` section.
    #[arg(skip)]
    #[serde(default)]
    pub bgp: Option<BgpConfig>,
    /// VNs created when missing, at every start and reload.
    #[arg(skip)]
    #[serde(default)]
    pub vns: Vec<ConfigVn>,
    /// Trunk ports to speak VDP on (`nve vdp enable`), enabled when missing.
    #[arg(skip)]
    #[serde(default)]
    pub vdp: Vec<ConfigVdp>,
}

/// A trunk port VDP is on for, with this bridge's timers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigVdp {
    pub port: String,
    #[serde(default)]
    pub timers: Timers,
}

/// A VN the file creates (what `nve vn add`, `port attach`, `fdb add` and `flood add`
/// would), when no VN of its name exists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigVn {
    pub name: String,
    pub vni: u32,
    #[serde(default = "crate::api::yes")]
    pub flood_unknown: bool,
    #[serde(default)]
    pub any_vtep: bool,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub ports: Vec<AttachPort>,
    #[serde(default)]
    pub remote: Vec<RemoteMac>,
    #[serde(default)]
    pub flood: Vec<IpAddr>,
}

impl ConfigVn {
    /// The events that create this VN with everything listed under it.
    fn events(&self) -> Vec<Event> {
        let vn = || self.name.clone();
        let create = CreateVn {
            flood_unknown: self.flood_unknown,
            any_vtep: self.any_vtep,
            mtu: self.mtu,
            ..CreateVn::new(vn(), self.vni)
        };
        std::iter::once(Event::CreateVn(create))
            .chain(self.ports.iter().map(|p| Event::AttachPort {
                vn: vn(),
                req: p.clone(),
            }))
            .chain(self.remote.iter().map(|r| Event::AddRemote {
                vn: vn(),
                req: r.clone(),
            }))
            .chain(
                self.flood
                    .iter()
                    .map(|&vtep| Event::AddFlood { vn: vn(), vtep }),
            )
            .collect()
    }
}

/// The settings in force: the flags over the file, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub vtep: Ipv4Addr,
    pub underlay: String,
    pub underlay_mode: UnderlayMode,
    pub ttl: u8,
    /// Every setting as merged (the fields above included, as given).
    pub all: Settings,
    /// The file read, if any.
    pub file: Option<PathBuf>,
}

/// Something the file lists and the state lacks: the events that create it, in order, and
/// the one that removes it again if a later one is refused.
#[derive(Debug, PartialEq)]
pub struct Seed {
    pub what: String,
    pub events: Vec<Event>,
    pub undo: Option<Event>,
}

impl Seed {
    /// Why not to begin it: a port it attaches does not exist (`has_port`), which the
    /// writer would refuse; it is created at the first reload or start that finds it.
    pub fn absent_port(&self, has_port: impl Fn(&str) -> bool) -> Option<String> {
        self.events.iter().find_map(|e| match e {
            Event::AttachPort { req, .. } if !has_port(&req.port) => Some(format!(
                "{}: port {}: no such interface (created at the first reload or start that finds it)",
                self.what, req.port
            )),
            _ => None,
        })
    }
}

/// Keys that change at run time (on SIGHUP or `nve reload`); any other changed key
/// needs a restart.
pub const RELOADABLE: [&str; 2] = ["vns", "vdp"];

impl Settings {
    /// The file at `path`: TOML, or JSON if its name ends in `.json`. Errors name the
    /// file, and the key and line at fault.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text, is_json(path)).with_context(|| format!("config {}", path.display()))
    }

    /// Parses a config file's text.
    pub fn parse(text: &str, json: bool) -> anyhow::Result<Self> {
        let s: Self = if json {
            serde_json::from_str(text).context("JSON")?
        } else {
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?
        };
        s.check()?;
        Ok(s)
    }

    /// What is wrong with the file's sections beyond their syntax (each error names the
    /// key: `bgp`, `vns[N]`, `vdp[N]`).
    fn check(&self) -> anyhow::Result<()> {
        if let Some(bgp) = &self.bgp {
            bgp.check().map_err(|e| anyhow::anyhow!("bgp: {e}"))?;
        }
        let mut m = Model::default();
        for (i, vn) in self.vns.iter().enumerate() {
            for e in vn.events() {
                m.apply(&e, 0)
                    .map_err(|e| anyhow::anyhow!("vns[{i}] ({:?}): {e}", vn.name))?;
            }
        }
        for (i, v) in self.vdp.iter().enumerate() {
            m.vdp_enable(&v.port, v.timers)
                .map_err(|e| anyhow::anyhow!("vdp[{i}] ({:?}): {e}", v.port))?;
        }
        Ok(())
    }

    /// These flags over `file`'s keys: a flag given wins, a switch is on if either says.
    pub fn over(self, file: Self) -> Self {
        Self {
            vtep: self.vtep.or(file.vtep),
            vtep6: self.vtep6.or(file.vtep6),
            underlay: self.underlay.or(file.underlay),
            underlay_mode: self.underlay_mode.or(file.underlay_mode),
            ttl: self.ttl.or(file.ttl),
            teardown_on_exit: self.teardown_on_exit || file.teardown_on_exit,
            group: self.group.or(file.group),
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            debug_log: self.debug_log || file.debug_log,
            nva: self.nva.or(file.nva),
            peers: self.peers.or(file.peers),
            nva_vtep: self.nva_vtep.or(file.nva_vtep),
            bgp: file.bgp,
            vns: file.vns,
            vdp: file.vdp,
        }
    }

    /// The settings in force, or what is missing or contradictory.
    pub fn resolve(self, file: Option<PathBuf>) -> anyhow::Result<Resolved> {
        let from = file
            .as_ref()
            .map_or("no config file".to_string(), |f| f.display().to_string());
        let Some(vtep) = self.vtep else {
            bail!("vtep: not set (--vtep, or `vtep` in the config file; {from})");
        };
        let Some(underlay) = self.underlay.clone() else {
            bail!("underlay: not set (--underlay, or `underlay` in the config file; {from})");
        };
        if self.peers.is_some() && self.nva.is_some() {
            bail!("peers and nva: one or the other (the peers file is the embedded NVA's)");
        }
        if let Some(v) = self.nva_vtep {
            if self.nva.is_none() {
                bail!("nva_vtep {v}: only with nva");
            }
            if v != IpAddr::V4(vtep) && self.vtep6.map(IpAddr::V6) != Some(v) {
                bail!(
                    "nva_vtep {v}: not one of this NVE's VTEPs (vtep {vtep}, vtep6 {})",
                    self.vtep6.map_or("unset".to_string(), |a| a.to_string())
                );
            }
        }
        if self.nva.as_deref() == Some("bgp") && self.bgp.is_none() {
            bail!(
                "nva = \"bgp\" reads its neighbours and AS from the config file's `bgp` section, and {from} has none"
            );
        }
        Ok(Resolved {
            vtep,
            underlay,
            underlay_mode: self.underlay_mode.unwrap_or_default(),
            ttl: self.ttl.unwrap_or(nve_common::wire::DEFAULT_TTL),
            all: self,
            file,
        })
    }

    /// What the file lists and `model` lacks (VNs by name, VDP ports), as the events that
    /// create each; VNs and ports in `model` the file does not list are kept, and a VN of
    /// the file's name is left as it is. Also a note for each VN whose VNI differs.
    pub fn missing_in(&self, model: &Model) -> (Vec<Seed>, Vec<String>) {
        let mut create = Vec::new();
        let mut notes = Vec::new();
        for vn in &self.vns {
            match model.vn(&vn.name) {
                Err(_) => create.push(Seed {
                    what: format!("vn {}", vn.name),
                    events: vn.events(),
                    undo: Some(Event::DeleteVn {
                        vn: vn.name.clone(),
                    }),
                }),
                Ok(have) if have.vni != vn.vni => notes.push(format!(
                    "vn {}: VNI {} in the config file, {} in the state (kept; delete the VN to have it created from the file)",
                    vn.name, vn.vni, have.vni
                )),
                Ok(_) => {}
            }
        }
        for v in &self.vdp {
            if !model.vdp().ports.contains_key(&v.port) {
                create.push(Seed {
                    what: format!("vdp {}", v.port),
                    events: vec![Event::VdpEnable {
                        port: v.port.clone(),
                        timers: v.timers,
                    }],
                    undo: None,
                });
            }
        }
        (create, notes)
    }

    /// `model` with what the file lists and it lacks (see [`Settings::missing_in`]) put
    /// in, each seed whole or not at all: what a start begins from. A VN whose port does
    /// not exist (`has_port`) is left out, as a reload and the API refuse it.
    pub fn seeded(
        &self,
        mut model: Model,
        now: u64,
        has_port: impl Fn(&str) -> bool,
    ) -> (Model, ReloadView) {
        let (missing, kept) = self.missing_in(&model);
        let mut view = ReloadView {
            kept,
            ..ReloadView::default()
        };
        for seed in missing {
            if let Some(why) = seed.absent_port(&has_port) {
                view.failed.push(why);
                continue;
            }
            let mut m = model.clone();
            match seed
                .events
                .iter()
                .try_for_each(|e| m.apply(e, now).map(drop))
            {
                Ok(()) => {
                    model = m;
                    view.created.push(seed.what);
                }
                Err(e) => view.failed.push(format!("{}: {e}", seed.what)),
            }
        }
        (model, view)
    }

    /// The keys whose value differs between `self` and `new` and only change at the next
    /// start, named as in the file.
    pub fn restart_needed(&self, new: &Self) -> Vec<String> {
        let (Ok(serde_json::Value::Object(old)), Ok(serde_json::Value::Object(new))) =
            (serde_json::to_value(self), serde_json::to_value(new))
        else {
            return Vec::new();
        };
        old.iter()
            .filter(|(k, v)| !RELOADABLE.contains(&k.as_str()) && new.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

fn is_json(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "json")
}

/// The file the daemon reads: `--config` (or NVE_CONFIG) if given, which must exist; else
/// the instance's default, if it exists.
pub fn config_path(given: Option<&Path>, default: &Path) -> anyhow::Result<Option<PathBuf>> {
    match given {
        Some(p) if p.exists() => Ok(Some(p.to_path_buf())),
        Some(p) => bail!("config {}: no such file", p.display()),
        None => Ok(default.exists().then(|| default.to_path_buf())),
    }
}

/// `flags` over the file at `path` (if any), resolved.
pub fn load(flags: &Settings, path: Option<PathBuf>) -> anyhow::Result<Resolved> {
    let file = match &path {
        Some(p) => Settings::read(p)?,
        None => Settings::default(),
    };
    flags.clone().over(file).resolve(path)
}

#[cfg(test)]
mod tests;
