//! A libvirt-events bridge in miniature: it listens to a QEMU's events (a second QMP monitor,
//! as libvirt's event loop does) and turns each it waits for into a request on an NVE's
//! socket at once, as a resident bridge would: spawning the CLI for each event cost 5-15 ms
//! of start-up, every datagram of which the stopped VM's tap swallows.
use std::time::{Duration, SystemTime};

use anyhow::{Result, bail};

use super::GUEST;
use crate::{qemu::Qmp, rig::Daemon, stamped::ms};

/// On QMP event `event`, POST `body` to `path` on the NVE.
pub struct Reaction {
    pub event: &'static str,
    pub path: String,
    pub body: String,
}

/// What the source's bridge asks at its STOP (libvirt: the domain event
/// suspended/migrated): the pause toward the destination `vtep` (`nve vm pause
/// --migrating-out VTEP`).
pub fn pause_toward(vtep: &str) -> Reaction {
    Reaction {
        event: "STOP",
        path: format!("/v1/vnics/{GUEST}/0"),
        body: format!(r#"{{"op": "pause", "migration": {{"migrating-out": "{vtep}"}}}}"#),
    }
}

/// What the source's bridge asks when its VM runs again after a cancelled migration (QMP's
/// RESUME; libvirt: the domain event resumed): `nve vm resume`.
pub fn resume() -> Reaction {
    Reaction {
        event: "RESUME",
        path: format!("/v1/vnics/{GUEST}/0"),
        body: r#"{"op": "resume"}"#.into(),
    }
}

/// One event as the bridge saw it and nve's answer to its request.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Signal {
    /// The bridge read the event, ms after QEMU stamped it.
    pub seen_ms: f64,
    /// nve answered the request, ms after QEMU stamped the event.
    pub answered_ms: f64,
    /// When QEMU stamped the event and when nve answered.
    #[serde(skip)]
    pub event_at: SystemTime,
    #[serde(skip)]
    pub answered_at: SystemTime,
}

/// Waits on `events` for each reaction's event in turn (up to `timeout` each) and sends its
/// request to `d` at once: the signals, in the reactions' order.
pub fn run(
    mut events: Qmp,
    d: &Daemon,
    reactions: &[Reaction],
    timeout: Duration,
) -> Result<Vec<Signal>> {
    let mut signals = Vec::new();
    for r in reactions {
        let event_at = events.wait_event(r.event, timeout)?;
        let seen = SystemTime::now();
        let (status, answer) = d.http("POST", &r.path, r.body.as_bytes())?;
        if status != 200 {
            bail!("{} at {} was refused ({status}): {answer}", r.body, r.event);
        }
        let answered_at = SystemTime::now();
        signals.push(Signal {
            seen_ms: ms(event_at, seen),
            answered_ms: ms(event_at, answered_at),
            event_at,
            answered_at,
        });
    }
    Ok(signals)
}
