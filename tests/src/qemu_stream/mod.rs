//! A real hypervisor: a QEMU guest (TCG, Debian's kernel, busybox) on a tap in h1 or h2
//! live-migrates to a QEMU on a tap in the other host with QEMU's own migration (over a unix
//! socket, across the two namespaces) while vm3 on h3 streams numbered UDP datagrams to it;
//! three NVEs on a real etcd. The destination pre-associates the vNIC (`--migrating-in`);
//! QEMU's RARPs activate it there, nothing calls `associate`; the source's STOP becomes
//! `pause --migrating-out` at once (a libvirt-events bridge, [`bridge`]); once
//! `query-migrate` says completed, the source disassociates with `--migrating-out`, as
//! libvirt's hook would. The guest can move back and forth ([`QemuRig::migrate`], a new
//! incoming QEMU each time, the NVEs' roles swapping), or a migration can be cancelled
//! after the pause ([`QemuRig::abort_after_pause`]).
//!
//! The network's responsibility ends at the tap: packet sockets on both taps record which
//! datagram reached which tap, and when (kernel timestamps, against QEMU's STOP and RESUME
//! events). Those that reached the source's tap after its VM stopped are lost to the pause,
//! split at the destination's RESUME: before it, the VM's own downtime; after it, the time
//! h3 took to follow the move (the RARP's activation through etcd) or the source to
//! disassociate, whichever came first.
//!
//! Used by the QEMU migration tests (which assert on the figures) and the bench (which
//! reports them over several migrations). Errors are setup failures only; what the tests
//! check is in the figures.
mod aborted;
mod bridge;
mod capture;
mod moved;
mod stream;

use std::{
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use nve_common::metrics::DropReason;
use nve_user::vnic::VnicState;

pub use self::{
    aborted::AbortFigures,
    bridge::Signal,
    moved::{QemuFigures, Window},
};
use self::{bridge::Reaction, stream::Stream};
use crate::{
    etcd::EtcdServer,
    overlay::{self, H1_VTEP, H2_VTEP, VN, VNI},
    qemu::{Guest, Qmp, TapCounters, tap_counters},
    rig::{Daemon, Netns, Vm},
    three_hosts::{self, H3_VTEP, VM3_IP, VM3_MAC},
};

const GUEST: &str = "00000000-0000-4000-8000-0000000000c1";
const VM3: &str = "00000000-0000-4000-8000-0000000000c3";
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x4e, 0x56, 0x01];
const GUEST_IP: &str = "192.168.10.1";
const TAP: &str = "tap0";
const PORT: u16 = 9999;
/// How long the stream runs before the migration starts.
const LEAD: Duration = Duration::from_secs(1);
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds a rig (`tag` names its namespaces and daemons), boots the guest on h1, streams
/// `rate` datagrams a second from vm3 to it and live-migrates it to h2 a second in; the
/// stream runs until a second after h2's vNIC is active, at most `seconds`.
pub fn migrate_guest_under_stream(tag: &str, rate: u32, seconds: u32) -> Result<QemuFigures> {
    QemuRig::new(tag)?.migrate(rate, seconds)
}

/// One of the two hosts the guest moves between: its namespace and NVE (the daemon goes
/// first).
struct Host {
    d: Daemon,
    ns: Netns,
    vtep: &'static str,
}

/// Three hosts on a bridged underlay, vm3 (a veth VM) on h3, etcd in h3, one NVE a host, and
/// the guest running on h1 or h2; fields drop in order: QEMUs, daemons, etcd, then the
/// namespaces.
pub struct QemuRig {
    /// The running guest, on `hosts[at]`.
    guest: Guest,
    /// The incoming QEMU during a move, on the other host.
    incoming: Option<Guest>,
    at: usize,
    /// Moves so far (the incoming QEMUs' files are named after them).
    moves: u32,
    /// The guest's boot, s, until the first move reports it.
    boot_s: Option<f64>,
    hosts: [Host; 2],
    d3: Daemon,
    _etcd: EtcdServer,
    vm3: Vm,
    _h3: Netns,
    _fabric: Netns,
}

impl QemuRig {
    /// The rig, and the guest booted on h1 with its vNIC associated there (libvirt:
    /// `started`), reachable from vm3.
    pub fn new(tag: &str) -> Result<Self> {
        let (fabric, h1, h2, h3) = three_hosts::underlay(tag)?;
        let vm3 = Vm::new(&format!("{tag}-vm3"), &h3, "vm3p", VM3_MAC, VM3_IP)?;
        let etcd = EtcdServer::start(&h3, H3_VTEP)?;
        let nva = ["--nva", etcd.url.as_str()];
        let d1 = Daemon::start(&h1, &format!("{tag}1"), H1_VTEP, "ul", &nva)?;
        let d2 = Daemon::start(&h2, &format!("{tag}2"), H2_VTEP, "ul", &nva)?;
        let d3 = Daemon::start(&h3, &format!("{tag}3"), H3_VTEP, "ul", &nva)?;
        for d in [&d1, &d2, &d3] {
            d.nve(&["vn", "add", VN, "--vni", &VNI.to_string()])?;
        }
        overlay::associate(&d3, VM3, "vm3p", VM3_MAC, Some(VM3_IP))?;
        let mut guest = Guest::start(&h1, "g0", TAP, GUEST_MAC, &guest_cidr(), None)?;
        overlay::associate(&d1, GUEST, TAP, GUEST_MAC, Some(GUEST_IP))?;
        let boot = guest.wait_ready(BOOT_TIMEOUT)?;
        let r = Self {
            guest,
            incoming: None,
            at: 0,
            moves: 0,
            boot_s: Some(boot.as_secs_f64()),
            hosts: [
                Host {
                    d: d1,
                    ns: h1,
                    vtep: H1_VTEP,
                },
                Host {
                    d: d2,
                    ns: h2,
                    vtep: H2_VTEP,
                },
            ],
            d3,
            _etcd: etcd,
            vm3,
            _h3: h3,
            _fabric: fabric,
        };
        r.vm3.ping_until_reachable(GUEST_IP, 10)?;
        Ok(r)
    }

    /// The host the guest runs on and the other one.
    fn source(&self) -> &Host {
        &self.hosts[self.at]
    }

    fn destination(&self) -> &Host {
        &self.hosts[1 - self.at]
    }

    /// The destination's side before a move: a QEMU waiting for the migration on the other
    /// host (its own tap), the vNIC pre-associated there migrating in (libvirt:
    /// `migrate`/`prepare`), installed but not forwarding, nothing published. Its QMP
    /// session, its status (`inmigrate`), the vNIC's state.
    fn start_incoming(&mut self) -> Result<(Qmp, String, Option<VnicState>)> {
        self.moves += 1;
        let name = format!("g{}", self.moves);
        let dst = self.destination();
        let socket = PathBuf::from(format!("/tmp/{}-migrate.sock", dst.ns.name));
        let mut incoming =
            Guest::start(&dst.ns, &name, TAP, GUEST_MAC, &guest_cidr(), Some(&socket))?;
        let qmp = incoming.qmp();
        self.incoming = Some(incoming);
        let mut qmp = qmp?;
        let status = qmp.status()?;
        let (dst, src) = (self.destination(), self.source());
        let arriving = (GUEST_MAC, GUEST_IP);
        overlay::pre_associate_arriving(&dst.d, GUEST, TAP, arriving, src.vtep)?;
        Ok((qmp, status, vnic_state(&dst.d)))
    }

    /// Starts a move under `rate` datagrams a second from vm3 (for at most `seconds`): the
    /// incoming QEMU on the other host with the vNIC pre-associated there, the source's
    /// migration `capabilities` on, and the stream watched on both taps; returns once it
    /// has run for [`LEAD`].
    fn start_move(
        &mut self,
        rate: u32,
        seconds: u32,
        capabilities: &[&str],
    ) -> Result<(Underway, Stream)> {
        let started = Instant::now();
        let (dst_qmp, dst_status_before, dst_state_pre_associated) = self.start_incoming()?;
        let mut src_qmp = self.guest.qmp()?;
        for c in capabilities {
            src_qmp.set_migration_capability(c, true)?;
        }
        let (src, dst) = (self.source(), self.destination());
        let tx_before = (tap_counters(&src.ns, TAP), tap_counters(&dst.ns, TAP));
        let stream = Stream::start(&self.vm3, &src.ns, &dst.ns, rate, seconds)?;
        thread::sleep(LEAD);
        let u = Underway {
            started,
            src_qmp,
            dst_qmp,
            dst_status_before,
            dst_state_pre_associated,
            tx_before,
        };
        Ok((u, stream))
    }

    /// Drives the source's migration with `drive` (given the source's QMP session and the
    /// incoming QEMU's socket) while a bridge on the source's event monitor turns
    /// `reactions` into requests to the source's NVE: what `drive` returned (an error
    /// carries both QEMUs' logs) and the bridge's signals.
    fn bridged<T: Send>(
        &mut self,
        src_qmp: &mut Qmp,
        reactions: &[Reaction],
        drive: impl FnOnce(&mut Qmp, &Path) -> Result<T> + Send,
    ) -> Result<(T, Result<Vec<Signal>>)> {
        let events = self.guest.event_qmp()?;
        let socket = self.incoming_socket()?;
        let src = self.source();
        let (driven, signals) = thread::scope(|s| {
            let bridge = s.spawn(|| bridge::run(events, &src.d, reactions, MIGRATION_TIMEOUT));
            let driven = drive(src_qmp, &socket);
            let signals = bridge
                .join()
                .unwrap_or_else(|_| Err(anyhow!("the event bridge panicked")));
            (driven, signals)
        });
        let driven = driven.map_err(|e| anyhow!("{e:#}\n{}", self.logs()))?;
        Ok((driven, signals))
    }

    /// The incoming QEMU's migration socket.
    fn incoming_socket(&self) -> Result<PathBuf> {
        self.incoming
            .as_ref()
            .and_then(|g| g.incoming.clone())
            .context("no incoming QEMU")
    }

    /// Both QEMUs' logs, for a failed migration's error.
    fn logs(&self) -> String {
        format!(
            "source:\n{}\ndestination:\n{}",
            self.guest.logs(),
            self.incoming.as_ref().map(Guest::logs).unwrap_or_default()
        )
    }

    /// The drops each NVE counted (`hook/REASON: packets`), h1, h2, h3.
    fn drops(&self) -> [String; 3] {
        [&self.hosts[0].d, &self.hosts[1].d, &self.d3].map(drops)
    }

    /// The hook counters of each NVE (h1, h2, h3), for a failure's message.
    fn hooks(&self) -> [String; 3] {
        [&self.hosts[0].d, &self.hosts[1].d, &self.d3].map(|d| {
            d.stats()
                .map(|s| s["hooks"].to_string())
                .unwrap_or_default()
        })
    }
}

/// A move under way (see [`QemuRig::start_move`]), besides its stream.
struct Underway {
    started: Instant,
    src_qmp: Qmp,
    dst_qmp: Qmp,
    /// The incoming QEMU's status (`inmigrate`) and the destination's vNIC state right
    /// after `pre-associate`.
    dst_status_before: String,
    dst_state_pre_associated: Option<VnicState>,
    /// Both taps' counters before the stream: the source's, the destination's.
    tx_before: (TapCounters, TapCounters),
}

fn guest_cidr() -> String {
    format!("{GUEST_IP}/24")
}

/// `nve vm list --json`: the state of the guest's vNIC on `d`, if it has one.
fn vnic_state(d: &Daemon) -> Option<VnicState> {
    d.vnics()
        .ok()?
        .iter()
        .find(|n| n.vm == GUEST)
        .map(|n| n.state)
}

/// Whether `d` has the guest's MAC behind `vtep`, from the NVA.
fn has_guest_at(d: &Daemon, vtep: &str) -> bool {
    d.has_from_nva(GUEST_MAC, vtep).unwrap_or(false)
}

/// The drops `d` counted, as `hook/REASON: packets`.
fn drops(d: &Daemon) -> String {
    let Ok(stats) = d.stats_view() else {
        return "?".into();
    };
    let mut out = Vec::new();
    for (hook, outcomes) in &stats.hooks {
        for reason in DropReason::ALL {
            let n = outcomes.get(reason.name()).map_or(0, |c| c.packets);
            if n > 0 {
                out.push(format!("{hook}/{}: {n}", reason.name()));
            }
        }
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(", ")
    }
}

/// Polls `ok` every 100 ms for up to 10 s (as `rig::wait_until`, without panicking).
fn poll(mut ok: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if ok() {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    false
}
