//! A real hypervisor: a QEMU guest (TCG, Debian's kernel, busybox) on a tap in h1 live-migrates
//! to a QEMU on a tap in h2 with QEMU's own migration (over a unix socket, across the two
//! namespaces) while vm3 on h3 streams numbered UDP datagrams to it at about 10,000 a second;
//! three NVEs on a real etcd. h2 pre-associates the vNIC (`--migrating-in`); QEMU's RARPs
//! activate it there, nothing calls `associate`; once `query-migrate` says completed, h1
//! disassociates with `--migrating-out h2`, as libvirt's hook would. See
//! `nve_tests::qemu_stream`.
//!
//! The source's STOP is turned into `nve vm pause` on h1 at once, as a libvirt-events bridge
//! would (libvirt's suspended/migrated event); the test reports how long after STOP nve
//! answered.
//!
//! The network's responsibility ends at the tap: packet sockets on both taps record which
//! datagram reached which tap, and when (kernel timestamps, against QEMU's STOP and RESUME
//! events). A datagram the guest did not get (at h1's tap before STOP, or at h2's) is lost to
//! the pause if it was last seen between STOP and RESUME, else by the network: once the VM
//! runs on h2, a datagram delivered into the stopped source's tap, or nowhere, is the
//! network's loss. The network must lose none and deliver none twice.
use nve_tests::{qemu_stream, rig::require_root};
use nve_user::vnic::VnicState;

/// Datagrams a second; the stream runs until a second after the move, at most `MAX_SECONDS`.
const RATE: u32 = 10_000;
const MAX_SECONDS: u32 = 30;

#[test]
fn a_qemu_guest_migrates_under_a_stream_without_network_loss() {
    require_root();
    let f = qemu_stream::migrate_guest_under_stream("qm", RATE, MAX_SECONDS)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(f.dst_status_before, "inmigrate");
    assert_eq!(f.h2_state_pre_associated, Some(VnicState::PreAssociated));
    assert!(
        f.h2_activated_without_associate,
        "h2's vNIC active after QEMU's announcements: not within 10 s"
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
    // The migrated guest is alive: it answers vm3 from h2.
    if let Some(e) = &f.ping_error {
        panic!("the migrated guest does not answer: {e}");
    }
    // Everyone converged on h2, from the NVA.
    assert!(f.h3_converged, "h3 has the guest on h2: not within 10 s");
    assert!(f.h1_converged, "h1 has the guest on h2: not within 10 s");

    let after_resume_ms = |v: &[f64]| {
        let v: Vec<String> = v.iter().map(|t| format!("{t:+.0}")).collect();
        format!("{} [{}] ms", v.len(), v.join(", "))
    };
    println!(
        "QEMU guest: boot {:.1} s; migration {} ms (setup {} ms, {} KiB), QEMU downtime {} ms, \
         STOP -> RESUME {:.1} ms",
        f.boot_s, f.migration_ms, f.setup_ms, f.ram_kib, f.qemu_downtime_ms, f.stop_to_resume_ms,
    );
    println!(
        "stream: sent {} ({} send errors), reached h1's tap {}, h2's tap {}; {}",
        f.sent, f.send_errors, f.at_h1, f.at_h2, f.losses
    );
    println!(
        "STOP -> the bridge read it {}, -> nve's pause answered {}",
        f.stop_signal
            .map_or("?".into(), |s| format!("{:.2} ms", s.seen_ms)),
        f.stop_signal
            .map_or("?".into(), |s| format!("{:.2} ms", s.paused_ms)),
    );
    println!(
        "last frame at h1's tap {:.1} ms after RESUME; first at h2's tap {:.1} ms after RESUME \
         ({} before it)",
        f.last_at_h1_ms.unwrap_or(f64::NAN),
        f.first_at_h2_ms.unwrap_or(f64::NAN),
        f.early_at_h2,
    );
    println!(
        "migration completed (query-migrate) {:.1} ms after RESUME, h1 disassociated {:.1} ms \
         after RESUME; through h1's forwarding pointer: {} (counter), stream datagrams \
         leaving h1's underlay: {} ({}); dropped by the taps (guest queue full): h1 {}, h2 {}; \
         test {:.1} s",
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
        "announcements at h2's tap after RESUME: QEMU's RARPs {}, the guest's GARPs {}",
        after_resume_ms(&f.rarps_ms),
        after_resume_ms(&f.garps_ms),
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
    // The source paused toward h2 at STOP (as a libvirt-events bridge would): from then on
    // the guest's datagrams go to h2's tap and wait there for RESUME. What the pause still
    // loses is what reached h1's stopped tap before the pause message: at most the rate
    // times STOP -> pause answered (plus 5 ms for the stream's own pacing and capture).
    let signal = f
        .stop_signal
        .expect("the bridge turned STOP into nve's pause");
    // A pause answered before RESUME sends what follows to h2's tap to wait there.
    if signal.paused_ms + 1.0 < f.stop_to_resume_ms {
        assert!(
            f.early_at_h2 > 0,
            "nothing reached h2's tap while the guest was paused: the pause did not point at h2"
        );
    }
    let bound = (f64::from(RATE) * (signal.paused_ms + 5.0) / 1000.0).ceil() as usize;
    assert!(
        f.losses.in_pause.len() <= bound,
        "the pause lost {} datagrams, more than the rate allows in the {:.2} ms from STOP to          the pause ({bound})",
        f.losses.in_pause.len(),
        signal.paused_ms
    );
}
