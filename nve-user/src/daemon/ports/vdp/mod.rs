//! The VDP port: one session per trunk port VDP is on (`nve vdp enable PORT`), started
//! and ended as the model's VDP ports come and go. A session speaks LLDP (the EVB TLV),
//! ECP and VDP on its interface and turns each VSI request into an `Event::VdpRequest`
//! for the writer, like any other input.
mod session;
mod socket;

use std::collections::BTreeMap;

use tokio::task::JoinSet;

use crate::daemon::handle::Handle;

/// Runs until the daemon stops.
pub async fn run(handle: Handle) {
    let mut snapshots = handle.subscribe();
    // Task ID -> the port its session serves.
    let mut running: BTreeMap<tokio::task::Id, String> = BTreeMap::new();
    let mut sessions = JoinSet::new();
    loop {
        let wanted = snapshots.borrow_and_update().model.vdp().ports.clone();
        for (port, timers) in wanted {
            if running.values().any(|p| *p == port) {
                continue;
            }
            let task = sessions.spawn(session::run(handle.clone(), port.clone(), timers));
            running.insert(task.id(), port);
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            // A session ends when its port is turned off or its timers change: started
            // again above if it is still wanted.
            Some(done) = sessions.join_next_with_id() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => {
                        tracing::error!("a VDP session failed: {e}");
                        e.id()
                    }
                };
                if let Some(port) = running.remove(&id) {
                    handle.vdp_session(&port, None);
                }
            }
        }
    }
}
