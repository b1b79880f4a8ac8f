//! The timer port: every 200 ms, if a soft association or a forwarding pointer has run out
//! (as of the writer's last snapshot), asks the writer to expire what is due.
use std::time::Duration;

use crate::{
    daemon::{handle::Handle, writer::now},
    model::Event,
};

/// Runs until the daemon stops.
pub async fn run(handle: Handle) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let due = handle
            .snapshot()
            .model
            .next_expiry()
            .is_some_and(|t| t <= now());
        if due && let Err(e) = handle.submit(Event::Expire).await {
            tracing::warn!("expiring soft state: {e}");
        }
    }
}
