//! The underlay port: the kernel's link, neighbour and route events (a VM's tap appearing
//! or going, a next hop changing), coalesced into one command for the writer per burst.
use std::time::Duration;

use futures_util::{FutureExt as _, Stream, StreamExt as _};

use crate::daemon::handle::Handle;

/// Runs until the event stream ends.
pub async fn follow(handle: Handle, mut events: impl Stream + Unpin) {
    while events.next().await.is_some() {
        tokio::time::sleep(Duration::from_millis(5)).await;
        while let Some(Some(_)) = events.next().now_or_never() {}
        handle.underlay_changed().await;
    }
}
