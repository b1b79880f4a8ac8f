//! The underlay port: the kernel's link, neighbour and route events (a VM's tap appearing
//! or going, a next hop changing), coalesced into one command for the writer per burst.
use std::time::Duration;

use futures_util::{FutureExt as _, Stream, StreamExt as _};

use crate::daemon::handle::Handle;

/// Runs until the event stream ends. Each event is counted at once (the writer's port
/// lookups before it no longer hold; none holds before the watch runs), the burst is
/// told to the writer after it.
pub async fn follow(handle: Handle, mut events: impl Stream + Unpin) {
    handle.link_event();
    while events.next().await.is_some() {
        handle.link_event();
        tokio::time::sleep(Duration::from_millis(5)).await;
        while let Some(Some(_)) = events.next().now_or_never() {
            handle.link_event();
        }
        handle.underlay_changed().await;
    }
}
