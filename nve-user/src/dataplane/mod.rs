//! The only code that touches the eBPF programs and maps: loads and pins them, attaches
//! them to the underlay and VM ports, and reconciles map contents with the model's
//! [`Desired`] state by difference, so entries traffic uses are never cleared and refilled.
mod counters;
pub mod dump;
mod layout;
mod mirrored;
mod monitor;
mod slots;
mod vteps;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, RingBuf},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use nve_common::maps::{
    ARP_MAP, ArpEntry, ArpKey, CONFIG_MAP, DataplaneConfig, EVENTS_MAP, FDB_MAP, FdbEntry, FdbKey,
    MONITOR_MAP, MONITOR_STATE_MAP, ND_MAP, NEXTHOPS_MAP, NdKey, NextHop, PORT_STATS_MAP,
    PORTS_MAP, PortKey, PortValue, TUNNEL_DEV, VN_STATS_MAP, VN_VTEPS_MAP, VNS_MAP, VnInfo,
    VnVtepKey,
};
use serde::{Deserialize, Serialize};

pub use counters::Counters;
use mirrored::Mirrored;
pub use monitor::MonitorRing;
use slots::CounterSlots;

use crate::model::Desired;

/// The compiled nve-ebpf object, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nve"));

/// The eBPF object the daemon loads (tests and the bench load it too).
pub fn ebpf_object() -> &'static [u8] {
    EBPF_OBJECT
}

/// How the underlay decapsulates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UnderlayMode {
    /// TC ingress: keeps GSO/GRO skbs whole; the peer of a veth underlay keeps TSO.
    #[default]
    Tc,
    /// XDP for known unicast (TC behind it for broadcast and tagged ports). Attaching XDP
    /// to a veth turns TSO off on its peer.
    Xdp,
}

impl std::fmt::Display for UnderlayMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UnderlayMode::Tc => "tc",
            UnderlayMode::Xdp => "xdp",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("creating pin directory {0}")]
    PinDir(PathBuf, #[source] std::io::Error),
    #[error("loading the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching {name} to {iface}")]
    Attach {
        name: &'static str,
        iface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("link {0} cannot be pinned (not a bpf_link)")]
    Link(String, #[source] aya::programs::links::LinkError),
    #[error("pinning link {0}")]
    PinLink(String, #[source] aya::pin::PinError),
    #[error("reading the programs' logs")]
    Logger(#[source] aya_log::Error),
    #[error("polling the programs' log buffer")]
    LoggerPoll(#[source] std::io::Error),
    #[error("map {name} is full")]
    MapFull { name: &'static str },
    #[error("counting the possible CPUs")]
    Cpus(#[source] std::io::Error),
}

type Result<T> = std::result::Result<T, DataplaneError>;

impl DataplaneError {
    /// The error as a reply reports it: E_RESOURCES for a full map, else E_HOST, with its
    /// causes (the errno, the verifier's log).
    pub fn to_error(self) -> crate::error::Error {
        use crate::error::{Error, ErrorCode};
        let code = match self {
            DataplaneError::MapFull { .. } => ErrorCode::EResources,
            _ => ErrorCode::EHost,
        };
        Error::new(code, format!("{:#}", anyhow::Error::from(self)))
    }
}

const TC_UNDERLAY_RX: &str = "tc_underlay_rx";
const XDP_UNDERLAY_RX: &str = "xdp_underlay_rx";
const TC_VM_EGRESS: &str = "tc_vm_egress";
const TC_TUNNEL_RX: &str = "tc_tunnel_rx";

pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    /// `CONFIG_MAP`'s one entry, as written.
    cfg: Array<MapData, DataplaneConfig>,
    config: DataplaneConfig,
    ports: Mirrored<PortKey, PortValue>,
    vns: Mirrored<u32, VnInfo>,
    fdb: Mirrored<FdbKey, FdbEntry>,
    next_hops: Mirrored<[u8; 4], NextHop>,
    arp: Mirrored<ArpKey, ArpEntry>,
    nd: Mirrored<NdKey, ArpEntry>,
    vn_vteps: Mirrored<VnVtepKey, u32>,
    /// Where each VN's and port's counters are.
    slots: CounterSlots,
    /// Every attachment, pinned in `pin_dir` as `link_<program>@<iface>`.
    links: BTreeMap<String, PinnedLink>,
    /// VM ports with `tc_vm_egress` attached.
    vm_ports: BTreeSet<String>,
    /// The VMs' announcements, until the daemon takes them (`take_announcements`).
    announcements: Option<RingBuf<MapData>>,
    /// The monitor's ring buffer, until the daemon takes it (`take_monitor`).
    monitor: Option<MonitorRing>,
    /// Forwards the programs' aya-log records to the daemon's log (`--debug-log`).
    logger: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if let Some(logger) = self.logger.take() {
            logger.abort();
        }
    }
}

/// File name of a pinned link in the pin dir.
fn link_key(program: &str, iface: &str) -> String {
    format!("link_{program}@{iface}")
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

impl Dataplane {
    /// Loads the programs with their maps pinned under `pin_dir`, writes the configuration
    /// and attaches decapsulation to the underlay and to `TUNNEL_DEV` (which must exist).
    /// `debug_log`: the programs log every drop (else their logging is compiled out at
    /// load).
    pub fn load(
        pin_dir: &Path,
        underlay: &str,
        mode: UnderlayMode,
        config: DataplaneConfig,
        debug_log: bool,
    ) -> Result<Self> {
        fs::create_dir_all(pin_dir).map_err(|e| DataplaneError::PinDir(pin_dir.into(), e))?;
        layout::remove_stale_pins(pin_dir, EBPF_OBJECT);
        let level: u8 = if debug_log {
            aya_log::Level::Debug as u8
        } else {
            0
        };
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .override_global(aya_log::LEVEL, &level, true)
            .load(EBPF_OBJECT)
            .map_err(DataplaneError::Load)?;
        let announcements = take_map(&mut ebpf, EVENTS_MAP)?;
        let monitor = MonitorRing::new(
            take_map(&mut ebpf, MONITOR_MAP)?,
            take_map(&mut ebpf, MONITOR_STATE_MAP)?,
        );
        let logger = if debug_log {
            Some(forward_logs(&mut ebpf)?)
        } else {
            None
        };
        let mut cfg: Array<_, DataplaneConfig> = take_map(&mut ebpf, CONFIG_MAP)?;
        cfg.set(0, config, 0).map_err(map_err(CONFIG_MAP))?;
        let ports = Mirrored::new(take_map(&mut ebpf, PORTS_MAP)?, PORTS_MAP)?;
        let vns = Mirrored::new(take_map(&mut ebpf, VNS_MAP)?, VNS_MAP)?;
        let slots = CounterSlots::new(
            take_map(&mut ebpf, VN_STATS_MAP)?,
            take_map(&mut ebpf, PORT_STATS_MAP)?,
            ports.current(),
            vns.current(),
        );
        let mut dp = Self {
            cfg,
            config,
            ports,
            vns,
            slots,
            fdb: Mirrored::new(take_map(&mut ebpf, FDB_MAP)?, FDB_MAP)?,
            next_hops: Mirrored::new(take_map(&mut ebpf, NEXTHOPS_MAP)?, NEXTHOPS_MAP)?,
            arp: Mirrored::new(take_map(&mut ebpf, ARP_MAP)?, ARP_MAP)?,
            nd: Mirrored::new(take_map(&mut ebpf, ND_MAP)?, ND_MAP)?,
            vn_vteps: Mirrored::new(take_map(&mut ebpf, VN_VTEPS_MAP)?, VN_VTEPS_MAP)?,
            ebpf,
            pin_dir: pin_dir.into(),
            links: BTreeMap::new(),
            vm_ports: BTreeSet::new(),
            announcements: Some(announcements),
            monitor: Some(monitor),
            logger,
        };

        dp.attach_tc(TC_UNDERLAY_RX, underlay)?;
        if mode == UnderlayMode::Xdp {
            dp.attach_xdp(XDP_UNDERLAY_RX, underlay)?;
        }
        dp.attach_tc(TC_TUNNEL_RX, TUNNEL_DEV)?;
        dp.classifier(TC_VM_EGRESS)?;
        Ok(dp)
    }

    /// Attaches classifier `name` at TC ingress of `iface` and pins the link. A link a
    /// previous daemon pinned there is taken over: the new program replaces the old one in
    /// it atomically (bpf_link_update), so not a packet misses a program.
    fn attach_tc(&mut self, name: &'static str, iface: &str) -> Result<()> {
        let attach_err = |source| DataplaneError::Attach {
            name,
            iface: iface.into(),
            source,
        };
        let key = link_key(name, iface);
        if let Some(old) = self.pinned(&key) {
            let old = SchedClassifierLink::try_from(old)
                .map_err(|e| DataplaneError::Link(key.clone(), e))?;
            self.classifier(name)?
                .attach_to_link(old)
                .map_err(attach_err)?;
            return self.keep_pinned(key);
        }
        let prog = self.classifier(name)?;
        let id = prog
            .attach(iface, TcAttachType::Ingress)
            .map_err(attach_err)?;
        let link = prog.take_link(id).map_err(attach_err)?;
        let link = FdLink::try_from(link)
            .map_err(|e| DataplaneError::Link(format!("{name}@{iface}"), e))?;
        self.pin_link(name, iface, link)
    }

    /// Attaches XDP program `name` to `iface` and pins the link.
    fn attach_xdp(&mut self, name: &'static str, iface: &str) -> Result<()> {
        let attach_err = |source| DataplaneError::Attach {
            name,
            iface: iface.into(),
            source,
        };
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })?;
        prog.load()
            .map_err(|source| DataplaneError::Program { name, source })?;
        let key = link_key(name, iface);
        if let Some(old) = self.pinned(&key) {
            let old = XdpLink::try_from(old).map_err(|e| DataplaneError::Link(key.clone(), e))?;
            let prog: &mut Xdp = self
                .ebpf
                .program_mut(name)
                .expect("loaded above")
                .try_into()
                .expect("an XDP program");
            prog.attach_to_link(old).map_err(attach_err)?;
            return self.keep_pinned(key);
        }
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .expect("loaded above")
            .try_into()
            .expect("an XDP program");
        let id = prog.attach(iface, XdpMode::Default).map_err(attach_err)?;
        let link = prog.take_link(id).map_err(attach_err)?;
        let link = FdLink::try_from(link)
            .map_err(|e| DataplaneError::Link(format!("{name}@{iface}"), e))?;
        self.pin_link(name, iface, link)
    }

    /// Detaches links an earlier daemon pinned that this one did not take over (a port that
    /// is gone, XDP when the mode changed). Call once the dataplane is brought to the model.
    pub fn drop_unclaimed_links(&mut self) -> Result<()> {
        let entries = fs::read_dir(&self.pin_dir)
            .map_err(|e| DataplaneError::PinDir(self.pin_dir.clone(), e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("link_") && !self.links.contains_key(&name) {
                tracing::info!(link = %name, "detaching a link no longer wanted");
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// The link pinned as `key` by an earlier daemon, if any.
    fn pinned(&self, key: &str) -> Option<FdLink> {
        PinnedLink::from_pin(self.pin_dir.join(key))
            .ok()
            .map(FdLink::from)
    }

    /// Records the pinned link `key` (already pinned) as this daemon's.
    fn keep_pinned(&mut self, key: String) -> Result<()> {
        let pinned = PinnedLink::from_pin(self.pin_dir.join(&key))
            .map_err(|e| DataplaneError::Link(key.clone(), e))?;
        tracing::info!(link = %key, "took over a pinned link");
        self.links.insert(key, pinned);
        Ok(())
    }

    /// Pins `link` as `link_<program>@<iface>` in the pin dir, so the attachment outlives a
    /// daemon that dies, and keeps it.
    fn pin_link(&mut self, name: &str, iface: &str, link: FdLink) -> Result<()> {
        let key = link_key(name, iface);
        let pinned = link
            .pin(self.pin_dir.join(&key))
            .map_err(|e| DataplaneError::PinLink(key.clone(), e))?;
        self.links.insert(key, pinned);
        Ok(())
    }

    /// Unpins and detaches the link of `name` on `iface`, if any.
    fn detach(&mut self, name: &str, iface: &str) {
        if let Some(pinned) = self.links.remove(&link_key(name, iface)) {
            // Dropping the unpinned link closes its last reference: the kernel detaches it.
            // An interface that is gone took the attachment with it already.
            drop(pinned.unpin());
        }
    }

    /// The named classifier, loaded.
    fn classifier(&mut self, name: &'static str) -> Result<&mut SchedClassifier> {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })?;
        if prog.fd().is_err() {
            prog.load()
                .map_err(|source| DataplaneError::Program { name, source })?;
        }
        Ok(prog)
    }

    /// The ring buffer of the VMs' announcements (once).
    pub fn take_announcements(&mut self) -> Option<RingBuf<MapData>> {
        self.announcements.take()
    }

    /// The monitor's ring buffer (once).
    pub fn take_monitor(&mut self) -> Option<MonitorRing> {
        self.monitor.take()
    }

    /// Makes the VM ports with `tc_vm_egress` attached exactly `ports` (those that exist).
    pub fn set_vm_ports<'a>(&mut self, ports: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let wanted: BTreeSet<String> = ports.into_iter().map(str::to_string).collect();
        let stale: Vec<String> = self.vm_ports.difference(&wanted).cloned().collect();
        for port in stale {
            self.detach(TC_VM_EGRESS, &port);
            self.vm_ports.remove(&port);
        }
        for port in wanted {
            if !self.vm_ports.contains(&port) {
                self.attach_tc(TC_VM_EGRESS, &port)?;
                self.vm_ports.insert(port);
            }
        }
        Ok(())
    }

    /// Brings the maps to `desired`, touching only entries that differ. FDB entries are
    /// rewritten before ports go, so a MAC leaving a port (a VM migrating out: its entry
    /// becomes the forwarding pointer) is never looked up to a port already removed; ports
    /// are added last, so a port is never active before its VN and FDB are in place; a VN's
    /// VTEPs are written before the VN, so it never checks against a list not yet there.
    /// VNs and ports get counter slots here, VNs their VTEPs inline where they fit.
    pub fn apply(&mut self, desired: &Desired) -> Result<()> {
        let scope = desired.scope.as_ref();
        let local = desired.local.as_ref();
        // Out of a scoped change's reach, VNs and ports keep their slots.
        let vn_kept = |vni: u32| local.is_some_and(|l| !l.vnis.contains(&vni));
        let ports_kept: HashSet<u32> = local.map_or_else(HashSet::new, |l| {
            self.ports
                .current()
                .filter(|(k, _)| !l.ports.contains(k))
                .map(|(k, _)| k.ifindex)
                .collect()
        });
        let (ports, mut vns) = self
            .slots
            .stamp(&desired.ports, &desired.vns, vn_kept, |i| {
                ports_kept.contains(&i)
            })?;
        vteps::inline(&mut vns, &desired.vn_vteps);
        self.arp
            .remove_absent(&desired.arp, scope.map(|s| &s.arp))?;
        self.nd.remove_absent(&desired.nd, scope.map(|s| &s.nd))?;
        self.arp.upsert_changed(&desired.arp)?;
        self.nd.upsert_changed(&desired.nd)?;
        self.vn_vteps.upsert_changed(&desired.vn_vteps)?;
        self.vns.upsert_changed(&vns)?;
        self.fdb.upsert_changed(&desired.fdb)?;
        self.ports.remove_absent(&ports, local.map(|l| &l.ports))?;
        self.fdb
            .remove_absent(&desired.fdb, scope.map(|s| &s.fdb))?;
        self.vns.remove_absent(&vns, local.map(|l| &l.vnis))?;
        let vn_in_scope = |k: &VnVtepKey| local.is_none_or(|l| l.vnis.contains(&k.vni));
        self.vn_vteps
            .remove_absent_where(&desired.vn_vteps, vn_in_scope)?;
        self.ports.upsert_changed(&ports)
    }

    /// Follows a change of the underlay interface's MAC (what XDP takes for this host's).
    pub fn set_underlay_mac(&mut self, mac: [u8; 6]) -> Result<()> {
        if mac == self.config.underlay_mac {
            return Ok(());
        }
        let config = DataplaneConfig {
            underlay_mac: mac,
            ..self.config
        };
        self.cfg.set(0, config, 0).map_err(map_err(CONFIG_MAP))?;
        self.config = config;
        Ok(())
    }

    /// Turns the programs' reports to the monitor on (`MONITOR_DROPS`, `MONITOR_ALL`, one
    /// packet in `sample` per CPU) or off (0).
    pub fn set_monitor(&mut self, monitor: u32, sample: u32) -> Result<()> {
        let config = DataplaneConfig {
            monitor,
            monitor_sample: sample,
            ..self.config
        };
        self.cfg.set(0, config, 0).map_err(map_err(CONFIG_MAP))?;
        self.config = config;
        Ok(())
    }

    /// Makes the underlay next hops (remote VTEP -> egress and MACs) exactly `next_hops`.
    pub fn set_next_hops(&mut self, next_hops: &HashMap<[u8; 4], NextHop>) -> Result<()> {
        self.next_hops.remove_absent(next_hops, None)?;
        self.next_hops.upsert_changed(next_hops)
    }

    /// A reader of the counters, on descriptors of its own (the pinned maps opened
    /// again), for the ports to read without the writer.
    pub fn counters(&self) -> Result<Counters> {
        Counters::open(&self.pin_dir)
    }

    /// Detaches everything and removes the pins (maps and links): nothing of the instance
    /// is left.
    pub fn teardown(self) {
        let pin_dir = self.pin_dir.clone();
        drop(self);
        if let Err(e) = fs::remove_dir_all(&pin_dir) {
            tracing::warn!(pin_dir = %pin_dir.display(), "removing pins: {e}");
        }
        // The shared parent goes with the last instance (fails harmlessly otherwise).
        if let Some(parent) = pin_dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// Reads the programs' log ring buffer as it fills and logs each record (through the
/// `log` facade, which the daemon's tracing subscriber receives).
fn forward_logs(ebpf: &mut Ebpf) -> Result<tokio::task::JoinHandle<()>> {
    let logger = aya_log::EbpfLogger::init(ebpf).map_err(DataplaneError::Logger)?;
    // SAFETY: the logger owns its ring buffer's fd and keeps that same fd open for as long
    // as it lives, which is as long as the AsyncFd that owns it.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut logger = registered.map_err(|e| DataplaneError::LoggerPoll(e.into()))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = logger.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}

/// Takes map `name` out of the object, typed.
fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::MissingMap(name))?;
    T::try_from(map).map_err(map_err(name))
}
