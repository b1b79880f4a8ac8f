//! A migration cancelled after the pause: the source QEMU, with QEMU's
//! `pause-before-switchover` capability, stops the VM (STOP: the bridge pauses the vNIC
//! toward the destination, as for a migration that completes) and waits in
//! `pre-switchover`; the test cancels it there (`migrate_cancel`). The source VM runs again
//! (RESUME: the bridge sends `resume`, as on libvirt's resumed event); the incoming QEMU,
//! whose migration broke off, goes, and the destination disassociates its vNIC (libvirt's
//! `release` hook).
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
    qemu::{Guest, Qmp, tap_counters},
    stamped::ms,
    stream_losses::{self, Aborted},
};

/// The stretches of the stream [`AbortFigures::losses`] splits it into, by send time.
pub const PARTS: [&str; 6] = [
    "before STOP",
    "STOP -> pause answered",
    "pause answered -> migrate_cancel",
    "migrate_cancel -> source RESUME",
    "source RESUME -> resume answered",
    "after resume answered",
];

/// What a migration cancelled after the pause did. Times are ms after the source's STOP.
#[derive(Debug, serde::Serialize)]
pub struct AbortFigures {
    /// The VTEPs the guest was to move from and to.
    pub from: String,
    pub to: String,
    /// The destination QEMU's status before the migration (`inmigrate`), its vNIC's state
    /// after `pre-associate`.
    pub dst_status_before: String,
    pub dst_state_pre_associated: Option<VnicState>,
    /// The source's QMP events from the migration on, in order, and their times.
    pub src_events: Vec<(String, f64)>,
    /// `query-migrate`'s status once QEMU took the cancel (`cancelled`), and the source's
    /// `query-status` afterwards (`running`).
    pub migration_status: String,
    pub src_status: String,
    /// The incoming QEMU, its migration broken off, exited by itself (within a second after
    /// nve's resume; else the test quit it).
    pub dst_exited_by_itself: bool,
    /// The bridge's pause at STOP and resume at RESUME.
    pub stop_signal: Option<Signal>,
    pub resume_signal: Option<Signal>,
    /// Why a signal is missing.
    pub signal_error: Option<String>,
    /// `pre-switchover` reached, the cancel sent, QEMU's status `cancelled`, the
    /// destination disassociated: ms after STOP.
    pub pre_switchover_ms: f64,
    pub cancel_ms: f64,
    pub cancelled_ms: f64,
    pub dst_disassociated_ms: f64,
    /// The source's RESUME, and nve's answer to the bridge's resume: ms after STOP.
    pub resumed_ms: f64,
    pub resume_answered_ms: Option<f64>,
    /// Datagrams sent (without send errors), send errors, those that reached each tap.
    pub sent: usize,
    pub send_errors: usize,
    pub at_src: usize,
    pub at_dst: usize,
    /// Each stretch of [`PARTS`]: sent, given to the guest, lost at the destination's tap or
    /// at none; duplicates and out of order at the source's tap.
    pub losses: Aborted,
    /// When each datagram lost at no tap was sent, ms after `migrate_cancel` (the incoming
    /// QEMU exits after it, and its tap takes no more).
    pub at_no_tap_sent_ms: Vec<f64>,
    /// Dropped by the source's tap (its queue full while the VM was stopped).
    pub src_tap_drops: u64,
    /// Frames the packet sockets dropped (the source's tap, the destination's, the source's
    /// underlay): 0, or the counts are not trustworthy.
    pub packet_socket_drops: (u32, u32, u32),
    /// The stream's datagrams leaving the source's underlay (through its pointer).
    pub through_pointer: usize,
    /// FORWARDED_TO_VTEP counted by the source and by the destination.
    pub forwarded: (u64, u64),
    /// The vNIC's state at the source and at the destination afterwards (`associated`,
    /// gone).
    pub src_state_after: Option<VnicState>,
    pub dst_state_after: Option<VnicState>,
    /// h3 has the guest at the source from the NVA (within 10 s).
    pub h3_on_src: bool,
    /// vm3's ping of the guest afterwards: `None` if it answered, else the error.
    pub ping_error: Option<String>,
    /// The drops each NVE counted (`hook/REASON: packets`), h1, h2, h3.
    pub drops: [String; 3],
    #[serde(skip)]
    pub hooks: [String; 3],
    pub elapsed_s: f64,
}

/// How the cancelled migration ended, as the test drove it.
struct Cancelled {
    driven: Driven,
    /// The bridge's pause at STOP and resume at RESUME.
    signals: Result<Vec<Signal>>,
    dst_exited_by_itself: bool,
    dst_disassociated: SystemTime,
}

/// When the source's migration reached each step, as the test drove it.
struct Driven {
    pre_switchover: SystemTime,
    cancel: SystemTime,
    cancelled: SystemTime,
    status: String,
}

impl QemuRig {
    /// Starts a migration to the other host under `rate` datagrams a second from vm3 (as
    /// [`QemuRig::migrate`]) with `pause-before-switchover`, lets it wait `hold` in
    /// `pre-switchover` with the VM stopped and the vNIC paused toward the destination, then
    /// cancels it. The stream runs until a second after the destination disassociated, at
    /// most `seconds`; the guest stays where it was.
    pub fn abort_after_pause(
        &mut self,
        rate: u32,
        seconds: u32,
        hold: Duration,
    ) -> Result<AbortFigures> {
        let (mut u, stream) = self.start_move(rate, seconds, &["pause-before-switchover"])?;
        let reactions = [
            bridge::pause_toward(self.destination().vtep),
            bridge::resume(),
        ];
        let (driven, signals) = self.bridged(&mut u.src_qmp, &reactions, |q, socket| {
            cancel_in_pre_switchover(q, socket, hold)
        })?;
        // The incoming QEMU's migration broke off: it goes (libvirt kills it), its tap with
        // it, and the destination's vNIC is disassociated (libvirt's `release` hook).
        let dst_exited_by_itself = self.incoming.as_mut().is_some_and(exits_by_itself);
        if !dst_exited_by_itself {
            let _ = u.dst_qmp.execute("quit", serde_json::json!({}));
        }
        self.incoming = None;
        self.destination()
            .d
            .nve(&["vm", "disassociate", "--vm", GUEST])?;
        let ended = Cancelled {
            driven,
            signals,
            dst_exited_by_itself,
            dst_disassociated: SystemTime::now(),
        };
        thread::sleep(Duration::from_secs(1));
        let streamed = stream.finish()?;
        self.abort_figures(u, &streamed, ended)
    }

    /// What the cancelled migration did, from the source's events and status, the stream,
    /// and the NVEs.
    fn abort_figures(
        &self,
        mut u: Underway,
        streamed: &Streamed,
        ended: Cancelled,
    ) -> Result<AbortFigures> {
        let (src, dst) = (self.source(), self.destination());
        let src_tap_drops = (tap_counters(&src.ns, TAP) - u.tx_before.0).tx_dropped;
        let driven = &ended.driven;
        u.src_qmp.drain_events(Duration::from_millis(100))?;
        let stopped = u
            .src_qmp
            .event_time("STOP")
            .unwrap_or(driven.pre_switchover);
        let resumed = u.src_qmp.event_time("RESUME").unwrap_or(driven.cancelled);
        let (stop_signal, resume_signal, signal_error) = match &ended.signals {
            Ok(s) => (s.first().copied(), s.get(1).copied(), None),
            Err(e) => (None, None, Some(format!("{e:#}"))),
        };
        let Streamed {
            sent,
            send_errors,
            src: log_src,
            dst: log_dst,
            src_underlay,
        } = streamed;
        // Without a signal (the test fails on it) its stretch ends where the next begins.
        let marks = [
            stopped,
            stop_signal.map_or(stopped, |s| s.answered_at),
            driven.cancel,
            resumed,
            resume_signal.map_or(resumed, |s| s.answered_at),
        ];
        let losses =
            stream_losses::account_aborted(sent, &log_src.order, &log_dst.order, &marks, &PARTS);
        let sent_at: BTreeMap<u32, SystemTime> = sent.iter().copied().collect();
        let at_no_tap_sent_ms = losses
            .parts
            .iter()
            .flat_map(|p| &p.lost_at_no_tap)
            .filter_map(|seq| sent_at.get(seq))
            .map(|at| ms(driven.cancel, *at))
            .collect();
        Ok(AbortFigures {
            from: src.vtep.into(),
            to: dst.vtep.into(),
            dst_status_before: u.dst_status_before,
            dst_state_pre_associated: u.dst_state_pre_associated,
            src_events: event_times(&u.src_qmp, stopped),
            migration_status: driven.status.clone(),
            src_status: u.src_qmp.status()?,
            dst_exited_by_itself: ended.dst_exited_by_itself,
            stop_signal,
            resume_signal,
            signal_error,
            pre_switchover_ms: ms(stopped, driven.pre_switchover),
            cancel_ms: ms(stopped, driven.cancel),
            cancelled_ms: ms(stopped, driven.cancelled),
            dst_disassociated_ms: ms(stopped, ended.dst_disassociated),
            resumed_ms: ms(stopped, resumed),
            resume_answered_ms: resume_signal.map(|s| ms(stopped, s.answered_at)),
            sent: sent.len(),
            send_errors: *send_errors,
            at_src: log_src.arrivals.len(),
            at_dst: log_dst.arrivals.len(),
            losses,
            at_no_tap_sent_ms,
            src_tap_drops,
            packet_socket_drops: (log_src.drops, log_dst.drops, src_underlay.drops),
            through_pointer: src_underlay.arrivals.len(),
            forwarded: (
                src.d.counter("underlay_rx", "FORWARDED_TO_VTEP")?,
                dst.d.counter("underlay_rx", "FORWARDED_TO_VTEP")?,
            ),
            src_state_after: vnic_state(&src.d),
            dst_state_after: vnic_state(&dst.d),
            h3_on_src: poll(|| has_guest_at(&self.d3, src.vtep)),
            ping_error: self.vm3.ping(GUEST_IP, 3).err().map(|e| format!("{e:#}")),
            drops: self.drops(),
            hooks: self.hooks(),
            elapsed_s: u.started.elapsed().as_secs_f64(),
        })
    }
}

/// Migrates `src` to the QEMU listening on `socket` until QEMU waits in `pre-switchover`
/// (the VM stopped), holds it there for `hold`, cancels it and waits until QEMU says
/// `cancelled`.
fn cancel_in_pre_switchover(
    src: &mut Qmp,
    socket: &std::path::Path,
    hold: Duration,
) -> Result<Driven> {
    src.start_migration(socket)?;
    src.wait_migration("pre-switchover", MIGRATION_TIMEOUT)?;
    let pre_switchover = SystemTime::now();
    thread::sleep(hold);
    let cancel = SystemTime::now();
    src.execute("migrate_cancel", serde_json::json!({}))?;
    let r = src.wait_migration("cancelled", MIGRATION_TIMEOUT)?;
    Ok(Driven {
        pre_switchover,
        cancel,
        cancelled: SystemTime::now(),
        status: r["status"].as_str().unwrap_or_default().into(),
    })
}

/// Whether `incoming`, its migration broken off, exits by itself within a second.
fn exits_by_itself(incoming: &mut Guest) -> bool {
    for _ in 0..100 {
        if incoming.has_exited() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The events `q` has seen, by name, ms after `since`.
fn event_times(q: &Qmp, since: SystemTime) -> Vec<(String, f64)> {
    q.timed_events()
        .into_iter()
        .map(|(name, at)| (name, ms(since, at)))
        .collect()
}
