//! One completed move of the guest to the other host under the stream, and what it did.
use std::{
    collections::BTreeMap,
    thread,
    time::{Duration, SystemTime},
};

use anyhow::Result;
use nve_user::vnic::VnicState;

use super::{
    GUEST, GUEST_IP, MIGRATION_TIMEOUT, QemuRig, TAP, Underway,
    bridge::{self, Signal},
    has_guest_at, poll,
    stream::Streamed,
    vnic_state,
};
use crate::{
    overlay,
    qemu::{Migration, tap_counters},
    stamped::ms,
    stream_losses::{self, Losses},
};

/// A run of sequence numbers and when its first and last datagram went by, ms after RESUME.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Window {
    pub first_seq: u32,
    pub last_seq: u32,
    pub first_ms: f64,
    pub last_ms: f64,
}

/// What one QEMU live migration under the stream did. Times "after RESUME" are ms from the
/// destination's RESUME event (negative: before it).
#[derive(Debug, serde::Serialize)]
pub struct QemuFigures {
    /// The VTEPs the guest moved from and to.
    pub from: String,
    pub to: String,
    /// The guest's boot, until it printed READY, s (on its first move only).
    pub boot_s: Option<f64>,
    /// The destination QEMU's status before the migration (`inmigrate`).
    pub dst_status_before: String,
    /// The destination's vNIC state right after `pre-associate` (`pre-associated`).
    pub dst_state_pre_associated: Option<VnicState>,
    /// `query-migrate`: total time, setup time, QEMU's downtime (ms), RAM transferred (KiB).
    pub migration_ms: u64,
    pub setup_ms: u64,
    pub ram_kib: u64,
    pub qemu_downtime_ms: u64,
    /// QEMU's RARPs activated the destination's vNIC (within 10 s), nothing called
    /// `associate`.
    pub dst_activated_without_associate: bool,
    /// Whether the source sent STOP and the destination RESUME (the times below need both).
    pub stop_event: bool,
    pub resume_event: bool,
    #[serde(skip)]
    pub src_events: String,
    #[serde(skip)]
    pub dst_events: String,
    /// Source STOP -> destination RESUME, ms.
    pub stop_to_resume_ms: f64,
    /// `query-status` after the move: `postmigrate`, `running`.
    pub src_status: String,
    pub dst_status: String,
    /// Datagrams sent (without send errors), send errors, and those that reached each tap.
    pub sent: usize,
    pub send_errors: usize,
    pub at_src: usize,
    pub at_dst: usize,
    /// Lost during the pause (STOP -> RESUME), lost by the network (before STOP, after
    /// RESUME), duplicated, out of order: see [`stream_losses`].
    pub losses: Losses,
    /// The source's STOP, as a libvirt-events bridge sees it, turned into nve's pause.
    pub stop_signal: Option<Signal>,
    /// Why there is no `stop_signal` (no STOP, or the pause failed).
    pub stop_signal_error: Option<String>,
    /// The last datagram at the source's tap, the first at the destination's, after
    /// RESUME, ms.
    pub last_at_src_ms: Option<f64>,
    pub first_at_dst_ms: Option<f64>,
    /// Datagrams at the destination's tap before RESUME (queued there for the guest).
    pub early_at_dst: usize,
    /// `query-migrate` said completed, the source disassociated: ms after RESUME.
    pub completed_ms: f64,
    pub disassociated_ms: f64,
    /// The source's FORWARDED_TO_VTEP counter: through its forwarding pointer (all moves
    /// from that NVE so far).
    pub forwarded: u64,
    /// The stream's datagrams leaving the source's underlay (re-encapsulated by the pointer).
    pub through_pointer: usize,
    pub through_pointer_window: Option<Window>,
    /// Dropped by the taps (guest queue full): source, destination.
    pub tap_drops: (u64, u64),
    /// Frames the packet sockets dropped (the source's tap, the destination's, the source's
    /// underlay): 0, or the counts are not trustworthy.
    pub packet_socket_drops: (u32, u32, u32),
    /// vm3's ping of the migrated guest: `None` if it answered, else the error.
    pub ping_error: Option<String>,
    /// h3 and the source have the guest on the destination from the NVA (within 10 s).
    pub h3_converged: bool,
    pub src_converged: bool,
    /// The drops each NVE counted (`hook/REASON: packets`), h1, h2, h3.
    pub drops: [String; 3],
    /// QEMU's RARPs and the guest's gratuitous ARPs at the destination's tap, ms after
    /// RESUME.
    pub rarps_ms: Vec<f64>,
    pub garps_ms: Vec<f64>,
    /// The NVEs' hook counters (h1, h2, h3) when the network lost datagrams (before STOP or
    /// after RESUME).
    #[serde(skip)]
    pub hooks_on_loss: Option<[String; 3]>,
    /// The move, the incoming QEMU's start to the figures, s.
    pub elapsed_s: f64,
}

/// How the migration ended, as the test drove it.
struct Ended {
    migration: Migration,
    /// The bridge's pause at STOP.
    signals: Result<Vec<Signal>>,
    /// `query-migrate` said completed, the source disassociated.
    completed: SystemTime,
    disassociated: SystemTime,
    dst_activated_without_associate: bool,
}

impl QemuRig {
    /// Moves the guest to the other host under `rate` datagrams a second from vm3, a second
    /// in: a new incoming QEMU there, the vNIC pre-associated migrating in, the source
    /// paused toward it at STOP and disassociated (`--migrating-out`) once QEMU says
    /// completed. The stream runs until a second after the destination's vNIC is active, at
    /// most `seconds`. The source QEMU goes afterwards: the guest runs on the other host.
    pub fn migrate(&mut self, rate: u32, seconds: u32) -> Result<QemuFigures> {
        let (mut u, stream) = self.start_move(rate, seconds, &[])?;
        // The move: QEMU's own live migration; the bridge turns the source's STOP into nve's
        // pause toward the destination.
        let reactions = [bridge::pause_toward(self.destination().vtep)];
        let (migration, signals) = self.bridged(&mut u.src_qmp, &reactions, |q, socket| {
            q.migrate(socket, MIGRATION_TIMEOUT)
        })?;
        let completed = SystemTime::now();
        // What libvirt's hook does once the migration is over: the source disassociates,
        // leaving a forwarding pointer to the destination.
        let (src, dst) = (self.source(), self.destination());
        overlay::leave_for(&src.d, GUEST, dst.vtep)?;
        let disassociated = SystemTime::now();
        // QEMU's RARPs activate the destination's vNIC by themselves.
        let dst_activated_without_associate =
            poll(|| vnic_state(&dst.d) == Some(VnicState::Associated));
        thread::sleep(Duration::from_secs(1));
        let streamed = stream.finish()?;
        let ended = Ended {
            migration,
            signals,
            completed,
            disassociated,
            dst_activated_without_associate,
        };
        let figures = self.move_figures(u, &streamed, ended)?;
        self.moved_over();
        Ok(figures)
    }

    /// What the move did, from QEMU's events and statuses, the stream, and the NVEs.
    fn move_figures(
        &self,
        mut u: Underway,
        streamed: &Streamed,
        ended: Ended,
    ) -> Result<QemuFigures> {
        let (src, dst) = (self.source(), self.destination());
        let tx_after = (tap_counters(&src.ns, TAP), tap_counters(&dst.ns, TAP));
        u.src_qmp.drain_events(Duration::from_millis(100))?;
        u.dst_qmp.drain_events(Duration::from_millis(100))?;
        let stop_event = u.src_qmp.event_time("STOP");
        let resume_event = u.dst_qmp.event_time("RESUME");
        // Without the events (the test fails on it) the figures are taken at completion.
        let stopped = stop_event.unwrap_or(ended.completed);
        let resumed = resume_event.unwrap_or(ended.completed);
        let Streamed {
            sent,
            send_errors,
            src: log_src,
            dst: log_dst,
            src_underlay,
        } = streamed;
        let losses = stream_losses::account(sent, &log_src.order, &log_dst.order, stopped, resumed);
        let after = |v: &[SystemTime]| v.iter().map(|t| ms(resumed, *t)).collect::<Vec<_>>();
        let stop_signal = ended.signals.map(|s| s[0]);
        Ok(QemuFigures {
            from: src.vtep.into(),
            to: dst.vtep.into(),
            boot_s: self.boot_s,
            dst_status_before: u.dst_status_before,
            dst_state_pre_associated: u.dst_state_pre_associated,
            migration_ms: ended.migration.total_ms,
            setup_ms: ended.migration.setup_ms,
            ram_kib: ended.migration.ram_transferred / 1024,
            qemu_downtime_ms: ended.migration.downtime_ms,
            dst_activated_without_associate: ended.dst_activated_without_associate,
            stop_event: stop_event.is_some(),
            resume_event: resume_event.is_some(),
            src_events: format!("{:?}", u.src_qmp.events),
            dst_events: format!("{:?}", u.dst_qmp.events),
            stop_to_resume_ms: ms(stopped, resumed),
            src_status: u.src_qmp.status()?,
            dst_status: u.dst_qmp.status()?,
            sent: sent.len(),
            send_errors: *send_errors,
            at_src: log_src.arrivals.len(),
            at_dst: log_dst.arrivals.len(),
            hooks_on_loss: (!losses.network().is_empty()).then(|| self.hooks()),
            losses,
            stop_signal: stop_signal.as_ref().ok().copied(),
            stop_signal_error: stop_signal.as_ref().err().map(|e| format!("{e:#}")),
            last_at_src_ms: log_src.arrivals.values().max().map(|t| ms(resumed, *t)),
            first_at_dst_ms: log_dst.arrivals.values().min().map(|t| ms(resumed, *t)),
            early_at_dst: log_dst.arrivals.values().filter(|t| **t < resumed).count(),
            completed_ms: ms(resumed, ended.completed),
            disassociated_ms: ms(resumed, ended.disassociated),
            forwarded: src.d.counter("underlay_rx", "FORWARDED_TO_VTEP")?,
            through_pointer: src_underlay.arrivals.len(),
            through_pointer_window: window(&src_underlay.arrivals, resumed),
            tap_drops: (
                (tx_after.0 - u.tx_before.0).tx_dropped,
                (tx_after.1 - u.tx_before.1).tx_dropped,
            ),
            packet_socket_drops: (log_src.drops, log_dst.drops, src_underlay.drops),
            // The migrated guest is alive: it answers vm3 from the destination.
            ping_error: self.vm3.ping(GUEST_IP, 3).err().map(|e| format!("{e:#}")),
            // Everyone converged on the destination, from the NVA.
            h3_converged: poll(|| has_guest_at(&self.d3, dst.vtep)),
            src_converged: poll(|| has_guest_at(&src.d, dst.vtep)),
            drops: self.drops(),
            rarps_ms: after(&log_dst.rarps),
            garps_ms: after(&log_dst.garps),
            elapsed_s: u.started.elapsed().as_secs_f64(),
        })
    }

    /// The guest runs on the other host now: the source QEMU (`postmigrate`) goes, and its
    /// tap with it.
    fn moved_over(&mut self) {
        if let Some(incoming) = self.incoming.take() {
            self.guest = incoming;
            self.at = 1 - self.at;
            self.boot_s = None;
        }
    }
}

/// The sequence numbers of `arrivals` and when the first and last went by, ms after
/// `resumed`.
fn window(arrivals: &BTreeMap<u32, SystemTime>, resumed: SystemTime) -> Option<Window> {
    Some(Window {
        first_seq: *arrivals.keys().next()?,
        last_seq: *arrivals.keys().last()?,
        first_ms: ms(resumed, *arrivals.values().min()?),
        last_ms: ms(resumed, *arrivals.values().max()?),
    })
}
