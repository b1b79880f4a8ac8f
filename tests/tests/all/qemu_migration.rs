//! A real hypervisor: a QEMU guest (TCG, Debian's kernel, busybox) on a tap in h1 live-migrates
//! to a QEMU on a tap in h2 with QEMU's own migration (over a unix socket, across the two
//! namespaces) while vm3 on h3 streams numbered UDP datagrams to it at about 10,000 a second;
//! three NVEs on a real etcd. The destination pre-associates the vNIC (`--migrating-in`);
//! QEMU's RARPs activate it there, nothing calls `associate`; once `query-migrate` says
//! completed, the source disassociates with `--migrating-out`, as libvirt's hook would. Then
//! the guest moves back to h1 (a new incoming QEMU there, the NVEs' roles swapped). See
//! `nve_tests::qemu_stream`.
//!
//! The source's STOP is turned into `nve vm pause --migrating-out` at once, as a
//! libvirt-events bridge would (libvirt's suspended/migrated event); the test reports how
//! long after STOP nve answered.
//!
//! The network's responsibility ends at the tap: packet sockets on both taps record which
//! datagram reached which tap, and when (kernel timestamps, against QEMU's STOP and RESUME
//! events). A datagram the guest did not get (at the source's tap before STOP, or at the
//! destination's) is lost to the pause if it was last seen between STOP and RESUME, else by
//! the network: once the VM runs on the destination, a datagram delivered into the stopped
//! source's tap, or nowhere, is the network's loss. The network must lose none and deliver
//! none twice.
//!
//! A migration can also fail after the pause: with QEMU's `pause-before-switchover` the
//! source stops the VM (STOP: nve's pause toward h2) and waits in `pre-switchover`, where the
//! test cancels it; QEMU runs the source VM again (RESUME: the bridge sends `resume`, as on
//! libvirt's resumed event), the incoming QEMU exits, h2 disassociates. What h2's tap queued
//! in between is lost with the incoming QEMU; nothing else may be.
use std::time::Duration;

use nve_tests::{
    qemu_stream::{AbortFigures, QemuFigures, QemuRig},
    rig::require_root,
};
use nve_user::vnic::VnicState;

/// Datagrams a second; the stream runs until a second after the move, at most `MAX_SECONDS`.
const RATE: u32 = 10_000;
const MAX_SECONDS: u32 = 30;
/// How long the cancelled migration waits in `pre-switchover`, the VM stopped.
const HOLD: Duration = Duration::from_millis(200);

#[test]
fn a_qemu_guest_migrates_there_and_back_under_a_stream_without_network_loss() {
    require_root();
    let mut rig = QemuRig::new("qc").unwrap_or_else(|e| panic!("{e:#}"));
    // h1 -> h2, then back with a new incoming QEMU on h1: the NVEs' roles swap.
    for _ in 0..2 {
        let f = rig
            .migrate(RATE, MAX_SECONDS)
            .unwrap_or_else(|e| panic!("{e:#}"));
        print_move(&f);
        assert_lossless(&f);
    }
}

/// What one move did, printed: QEMU's figures, where the stream went, the signals.
fn print_move(f: &QemuFigures) {
    let after_resume_ms = |v: &[f64]| {
        let v: Vec<String> = v.iter().map(|t| format!("{t:+.0}")).collect();
        format!("{} [{}] ms", v.len(), v.join(", "))
    };
    println!(
        "QEMU guest {} -> {}: boot {}; migration {} ms (setup {} ms, {} KiB), QEMU downtime {} \
         ms, STOP -> RESUME {:.1} ms",
        f.from,
        f.to,
        f.boot_s.map_or("-".into(), |s| format!("{s:.1} s")),
        f.migration_ms,
        f.setup_ms,
        f.ram_kib,
        f.qemu_downtime_ms,
        f.stop_to_resume_ms,
    );
    println!(
        "stream: sent {} ({} send errors), reached the source's tap {}, the destination's {}; {}",
        f.sent, f.send_errors, f.at_src, f.at_dst, f.losses
    );
    println!(
        "STOP -> the bridge read it {}, -> nve's pause answered {}",
        f.stop_signal
            .map_or("?".into(), |s| format!("{:.2} ms", s.seen_ms)),
        f.stop_signal
            .map_or("?".into(), |s| format!("{:.2} ms", s.answered_ms)),
    );
    println!(
        "last frame at the source's tap {:.1} ms after RESUME; first at the destination's \
         {:.1} ms after RESUME ({} before it)",
        f.last_at_src_ms.unwrap_or(f64::NAN),
        f.first_at_dst_ms.unwrap_or(f64::NAN),
        f.early_at_dst,
    );
    println!(
        "migration completed (query-migrate) {:.1} ms after RESUME, the source disassociated \
         {:.1} ms after RESUME; through its forwarding pointer: {} (counter), stream datagrams \
         leaving its underlay: {} ({}); dropped by the taps (guest queue full): source {}, \
         destination {}; move {:.1} s",
        f.completed_ms,
        f.disassociated_ms,
        f.forwarded,
        f.through_pointer,
        f.through_pointer_window.map_or("none".into(), |w| format!(
            "seq {}..={}, {:+.1}..{:+.1} ms after RESUME",
            w.first_seq, w.last_seq, w.first_ms, w.last_ms
        )),
        f.tap_drops.0,
        f.tap_drops.1,
        f.elapsed_s,
    );
    println!(
        "drops counted: h1 {}; h2 {}; h3 {}",
        f.drops[0], f.drops[1], f.drops[2]
    );
    println!(
        "announcements at the destination's tap after RESUME: QEMU's RARPs {}, the guest's \
         GARPs {}",
        after_resume_ms(&f.rarps_ms),
        after_resume_ms(&f.garps_ms),
    );
}

/// A move that loses nothing outside the VM's own pause: QEMU and nve did their part, the
/// network lost and duplicated nothing, and the pause lost at most what reached the stopped
/// source's tap before nve's pause answered.
fn assert_lossless(f: &QemuFigures) {
    assert_eq!(f.dst_status_before, "inmigrate");
    assert_eq!(f.dst_state_pre_associated, Some(VnicState::PreAssociated));
    assert!(
        f.dst_activated_without_associate,
        "the destination's vNIC active after QEMU's announcements: not within 10 s"
    );
    assert!(
        f.stop_event,
        "no STOP event from the source: {}",
        f.src_events
    );
    assert!(
        f.resume_event,
        "no RESUME event from the destination: {}",
        f.dst_events
    );
    if let Some(e) = &f.stop_signal_error {
        panic!("the source's STOP did not become nve's pause: {e}");
    }
    assert_eq!(f.src_status, "postmigrate");
    assert_eq!(f.dst_status, "running");
    if let Some(e) = &f.ping_error {
        panic!("the migrated guest does not answer: {e}");
    }
    assert!(
        f.h3_converged,
        "h3 has the guest on {}: not within 10 s",
        f.to
    );
    assert!(
        f.src_converged,
        "the source has the guest on {}: not within 10 s",
        f.to
    );
    assert_eq!(
        f.packet_socket_drops,
        (0, 0, 0),
        "the packet sockets dropped frames: the count is not trustworthy"
    );
    let [h1, h2, h3] = f.hooks_on_loss.clone().unwrap_or_default();
    let network = f.losses.network();
    assert!(
        network.is_empty(),
        "the network lost {} datagrams ({} before STOP, {} after RESUME; {} reached no tap): \
         {:?}\nh1's counters: {h1}\nh2's counters: {h2}\nh3's counters: {h3}",
        network.len(),
        f.losses.before_stop.len(),
        f.losses.after_resume.len(),
        f.losses.at_no_tap.len(),
        &network[..network.len().min(50)],
    );
    assert_eq!(f.losses.duplicates, 0, "datagrams delivered twice");
    // The source paused toward the destination at STOP (as a libvirt-events bridge would):
    // from then on the guest's datagrams go to the destination's tap and wait there for
    // RESUME. What the pause still loses is what reached the source's stopped tap before
    // the pause message: at most the rate times STOP -> pause answered (plus 5 ms for the
    // stream's own pacing and capture).
    let signal = f
        .stop_signal
        .expect("the bridge turned STOP into nve's pause");
    // A pause answered before RESUME sends what follows to the destination's tap.
    if signal.answered_ms + 1.0 < f.stop_to_resume_ms {
        assert!(
            f.early_at_dst > 0,
            "nothing reached the destination's tap while the guest was paused: the pause did \
             not point at {}",
            f.to
        );
    }
    let bound = within(signal.answered_ms);
    assert!(
        f.losses.in_pause.len() <= bound,
        "the pause lost {} datagrams, more than the rate allows in the {:.2} ms from STOP to \
         the pause ({bound})",
        f.losses.in_pause.len(),
        signal.answered_ms
    );
}

/// Datagrams the stream sends in `ms` milliseconds, plus 5 ms for its own pacing and the
/// capture.
fn within(ms: f64) -> usize {
    (f64::from(RATE) * (ms + 5.0) / 1000.0).ceil() as usize
}

#[test]
fn a_migration_cancelled_after_the_pause_resumes_at_the_source_and_loses_nothing_after() {
    require_root();
    let mut rig = QemuRig::new("qa").unwrap_or_else(|e| panic!("{e:#}"));
    let f = rig
        .abort_after_pause(RATE, MAX_SECONDS, HOLD)
        .unwrap_or_else(|e| panic!("{e:#}"));
    print_abort(&f);
    assert_abort(&f);
}

/// What the cancelled migration did, printed: QEMU's events, the signals, each stretch of
/// the stream.
fn print_abort(f: &AbortFigures) {
    let events: Vec<String> = f
        .src_events
        .iter()
        .map(|(e, at)| format!("{e} {at:+.1}"))
        .collect();
    println!(
        "cancelled migration {} -> {}: source events (ms after STOP): {}; pre-switchover \
         {:+.1} ms, migrate_cancel {:+.1} ms, {} {:+.1} ms; the source is {}; the incoming \
         QEMU {}; {} disassociated {:+.1} ms",
        f.from,
        f.to,
        events.join(", "),
        f.pre_switchover_ms,
        f.cancel_ms,
        f.migration_status,
        f.cancelled_ms,
        f.src_status,
        if f.dst_exited_by_itself {
            "had exited by itself"
        } else {
            "was quit"
        },
        f.to,
        f.dst_disassociated_ms,
    );
    let signal = |s: Option<nve_tests::qemu_stream::Signal>| {
        s.map_or("?".into(), |s| {
            format!("read {:.2} ms, answered {:.2} ms", s.seen_ms, s.answered_ms)
        })
    };
    println!(
        "bridge: STOP -> pause {}; RESUME -> resume {}",
        signal(f.stop_signal),
        signal(f.resume_signal)
    );
    println!(
        "stream: sent {} ({} send errors), reached the source's tap {}, the destination's {}; \
         lost {} in all; duplicates {}, out of order {}; the source's tap dropped {}; through \
         the source's pointer {} (FORWARDED_TO_VTEP: source {}, destination {})",
        f.sent,
        f.send_errors,
        f.at_src,
        f.at_dst,
        f.losses.lost(),
        f.losses.duplicates,
        f.losses.out_of_order,
        f.src_tap_drops,
        f.through_pointer,
        f.forwarded.0,
        f.forwarded.1,
    );
    for p in &f.losses.parts {
        println!(
            "  {:<34} sent {:>6}, to the guest {:>6}, lost {:>5} ({} queued at the \
             destination's tap, {} at no tap)",
            p.name,
            p.sent,
            p.at_src,
            p.lost(),
            p.lost_at_dst.len(),
            p.lost_at_no_tap.len(),
        );
    }
    println!(
        "drops counted: h1 {}; h2 {}; h3 {}",
        f.drops[0], f.drops[1], f.drops[2]
    );
}

/// A cancelled migration: QEMU stopped and ran the source VM again, nve resumed it there and
/// lost nothing after, nothing before STOP, and in between no more than what the
/// destination queued for a guest that never ran plus what the signaling windows allow.
fn assert_abort(f: &AbortFigures) {
    assert_eq!(f.dst_status_before, "inmigrate");
    assert_eq!(f.dst_state_pre_associated, Some(VnicState::PreAssociated));
    if let Some(e) = &f.signal_error {
        panic!("the source's STOP and RESUME did not become nve's pause and resume: {e}");
    }
    assert_eq!(f.migration_status, "cancelled");
    assert_eq!(f.src_status, "running");
    assert_eq!(f.src_state_after, Some(VnicState::Associated));
    assert_eq!(f.dst_state_after, None, "the destination's vNIC is gone");
    assert!(
        f.h3_on_src,
        "h3 has the guest on {}: not within 10 s",
        f.from
    );
    if let Some(e) = &f.ping_error {
        panic!("the guest does not answer at the source: {e}");
    }
    assert_eq!(
        f.packet_socket_drops,
        (0, 0, 0),
        "the packet sockets dropped frames: the count is not trustworthy"
    );
    assert_eq!(f.src_tap_drops, 0, "the stopped source's tap overflowed");
    let [h1, h2, h3] = &f.hooks;
    let counters = format!("h1's counters: {h1}\nh2's counters: {h2}\nh3's counters: {h3}");
    let parts = &f.losses.parts;
    let (Some(before), Some(paused), Some(after)) = (parts.first(), parts.get(2), parts.last())
    else {
        panic!("{} stretches", parts.len());
    };
    assert_eq!(before.lost(), 0, "lost before STOP: {before:?}\n{counters}");
    assert!(
        after.sent > 0 && after.lost() == 0,
        "sent after {}'s resume answered: {} of {} reached no guest (queued at the \
         destination's tap: {:?}; at no tap: {:?})\n{counters}",
        f.from,
        after.lost(),
        after.sent,
        &after.lost_at_dst[..after.lost_at_dst.len().min(20)],
        &after.lost_at_no_tap[..after.lost_at_no_tap.len().min(20)],
    );
    assert_eq!(f.losses.duplicates, 0, "datagrams delivered twice");
    // From the pause to nve's resume the pointer sends the guest's datagrams on to the
    // destination, whose tap queues them for a guest that never runs there: lost with it,
    // but none in the network until the cancel (then the incoming QEMU, its migration
    // broken off, exits and its tap takes no more; 5 ms of slack for datagrams in flight).
    // By send time, a stretch's last datagrams, in flight at its end, meet the next
    // stretch's forwarding: the STOP stretch loses some too.
    let early: Vec<f64> = f
        .at_no_tap_sent_ms
        .iter()
        .copied()
        .filter(|ms| *ms < -5.0)
        .collect();
    assert!(
        early.is_empty(),
        "lost in the network (at no tap), sent more than 5 ms before the cancel: {} (sent \
         at {:?} ms after it)\n{counters}",
        early.len(),
        &early[..early.len().min(20)]
    );
    assert!(
        !paused.lost_at_dst.is_empty(),
        "nothing reached the destination's tap during the pause: the pause did not point at {}",
        f.to
    );
    // No more than the stream sends from STOP until nve's resume answered: the pause
    // itself and its two signaling windows (STOP -> pause, RESUME -> resume).
    let stop_to_resumed = f.resume_answered_ms.unwrap_or(f64::NAN);
    assert!(
        f.losses.lost() <= within(stop_to_resumed),
        "lost {}, more than the rate allows in the {stop_to_resumed:.2} ms from STOP to nve's \
         resume",
        f.losses.lost()
    );
}
