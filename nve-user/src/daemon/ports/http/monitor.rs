//! `GET /v1/monitor`: streams the packets the dataplane reports while a monitor is
//! attached, one JSON line each (`MonitorLine`). The first request takes the monitor's ring
//! buffer (a second one at the same time is E_BUSY) and has the writer turn reporting on;
//! when the client goes, [`Session`]'s drop has it turned off again, so a killed monitor
//! leaves no cost behind. Once a second a line: the events lost so far when that grew,
//! else an empty line (which is how a client that left is noticed while nothing happens).
use std::{
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{Query, State, rejection::QueryRejection},
    http::header::CONTENT_TYPE,
    response::{IntoResponse, Response},
};
use futures_util::{Stream, StreamExt};
use nve_common::maps::{MONITOR_ALL, MONITOR_DROPS, MonitorEvent};
use serde::Deserialize;
use tokio::io::{Interest, unix::AsyncFd};

use super::{ApiError, ApiResult};
use crate::{
    api::{ErrorBody, ErrorCode},
    daemon::handle::Handle,
    dataplane::MonitorRing,
    monitor::{MonitorLine, MonitorRecord},
    netlink,
};

/// How often the lost count is checked (and an idle client is written to).
const TICK: Duration = Duration::from_secs(1);
/// Records read into one chunk at the most: a flood is sent on as it is read, and the
/// lost count still gets its turn.
const BATCH: usize = 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorQuery {
    /// Forwarded packets too, not only drops.
    #[serde(default)]
    all: bool,
    /// Report one packet in this many per CPU (0, 1: every one).
    #[serde(default)]
    sample: u32,
}

pub async fn monitor(
    State(s): State<Handle>,
    q: Result<Query<MonitorQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| ErrorBody::new(ErrorCode::EFormat, e.body_text()))?;
    let mode = if q.all { MONITOR_ALL } else { MONITOR_DROPS };
    let session = Session::start(s, mode, q.sample).await?;
    let body = Body::from_stream(session.lines());
    Ok(([(CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// An attached monitor: the ring buffer it reads, given back (and reporting turned off)
/// when it is dropped.
struct Session {
    handle: Handle,
    ring: Option<AsyncFd<MonitorRing>>,
    /// Events lost before the session started.
    lost_before: u64,
    lost_shown: u64,
    /// Wall clock less the monotonic clock the programs stamp events with, in ns.
    clock_offset: u64,
    tick: tokio::time::Interval,
}

impl Session {
    async fn start(handle: Handle, mode: u32, sample: u32) -> Result<Self, ApiError> {
        let mut ring = handle.take_monitor()?;
        // Records a previous session left unread are not this one's.
        while ring.ring.next().is_some() {}
        let lost_before = ring.lost();
        // SAFETY: the ring buffer owns its map fd and keeps it open as long as it lives,
        // which is as long as the AsyncFd that owns it.
        let ring = match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) } {
            Ok(r) => r,
            Err(e) => {
                return Err(
                    ErrorBody::new(ErrorCode::EHost, format!("polling the monitor: {e}")).into(),
                );
            }
        };
        let session = Session {
            handle,
            ring: Some(ring),
            lost_before,
            lost_shown: 0,
            clock_offset: clock_ns(libc::CLOCK_REALTIME)
                .saturating_sub(clock_ns(libc::CLOCK_MONOTONIC)),
            tick: tokio::time::interval(TICK),
        };
        // Dropped on failure: the ring goes back.
        session.handle.monitor(mode, sample).await?;
        Ok(session)
    }

    /// The lines to send, as they come.
    fn lines(mut self) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> {
        futures_util::stream::poll_fn(move |cx| self.poll_lines(cx).map(|b| Some(Ok(b)))).boxed()
    }

    /// What is there to send: the records the ring holds, and on each tick the lost
    /// count (or, if nothing else, an empty line).
    fn poll_lines(&mut self, cx: &mut Context<'_>) -> Poll<Bytes> {
        let mut out = Vec::new();
        self.read_records(cx, &mut out);
        if self.tick.poll_tick(cx).is_ready() {
            let lost = self.ring.as_ref().map_or(0, |r| r.get_ref().lost());
            let lost = lost.saturating_sub(self.lost_before);
            if lost > self.lost_shown {
                self.lost_shown = lost;
                line(&mut out, &MonitorLine::Lost { lost });
            } else if out.is_empty() {
                out.push(b'\n');
            }
        }
        if out.is_empty() {
            return Poll::Pending;
        }
        Poll::Ready(out.into())
    }

    /// Appends a line for each record in the ring buffer to `out`.
    fn read_records(&mut self, cx: &mut Context<'_>, out: &mut Vec<u8>) {
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        let Poll::Ready(Ok(mut guard)) = ring.poll_read_ready_mut(cx) else {
            return;
        };
        let snapshot = self.handle.snapshot();
        let inner = guard.get_inner_mut();
        for _ in 0..BATCH {
            let Some(item) = inner.ring.next() else {
                guard.clear_ready();
                return;
            };
            if item.len() < size_of::<MonitorEvent>() {
                continue;
            }
            // SAFETY: the record holds a MonitorEvent the dataplane wrote; any bit pattern
            // is a valid MonitorEvent.
            let event: MonitorEvent =
                unsafe { std::ptr::read_unaligned(item.as_ptr() as *const MonitorEvent) };
            let port =
                netlink::ifname(event.ifindex).unwrap_or_else(|| format!("if{}", event.ifindex));
            let vn = snapshot
                .model
                .vns()
                .find(|(_, vn)| vn.vni == event.vni)
                .map(|(name, _)| name.clone());
            let time = event.time_ns.saturating_add(self.clock_offset);
            let record = MonitorRecord::of(&event, time, port, vn);
            line(out, &MonitorLine::Packet(Box::new(record)));
        }
        // More to read: the ring stays ready, the rest goes in the next chunk.
    }
}

fn line(out: &mut Vec<u8>, line: &MonitorLine) {
    if serde_json::to_writer(&mut *out, line).is_ok() {
        out.push(b'\n');
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let Some(ring) = self.ring.take() else {
            return;
        };
        let handle = self.handle.clone();
        // Off first, then the ring back: the next monitor's "on" is never undone by this
        // one's "off".
        tokio::spawn(async move {
            if let Err(e) = handle.monitor(0, 0).await {
                tracing::warn!("turning the monitor off: {}", e.message);
            }
            handle.give_back_monitor(ring.into_inner());
        });
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}
