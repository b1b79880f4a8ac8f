//! The numbered UDP stream from vm3 to the guest during one move, and the packet sockets that
//! watch it: both guests' taps and the source's underlay (what its forwarding pointer sends
//! on).
use std::{
    net::UdpSocket,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Result, anyhow};

use super::{
    GUEST_IP, PORT, TAP,
    capture::{TapLog, tap_capture},
};
use crate::{
    live_stream::in_ns,
    rig::{Netns, Vm},
};

/// Raises its flags when dropped: the stream and the captures stop also on an early return.
struct StopOnDrop(Vec<Arc<AtomicBool>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        for f in &self.0 {
            f.store(true, Ordering::Relaxed);
        }
    }
}

/// A stream under way, watched.
pub struct Stream {
    stop_stream: Arc<AtomicBool>,
    stop_capture: Arc<AtomicBool>,
    _stop_on_drop: StopOnDrop,
    /// When each datagram left, `None` for a send error.
    sender: thread::JoinHandle<Vec<Option<SystemTime>>>,
    /// The source's tap, the destination's, the source's underlay.
    captures: [thread::JoinHandle<TapLog>; 3],
}

/// What a finished stream sent and what each watched device transmitted.
pub struct Streamed {
    /// Sequence number and when it left, send errors left out.
    pub sent: Vec<(u32, SystemTime)>,
    pub send_errors: usize,
    pub src: TapLog,
    pub dst: TapLog,
    pub src_underlay: TapLog,
}

impl Stream {
    /// Watches the guest's tap on `src` and on `dst` and `src`'s underlay, then streams
    /// `rate` datagrams a second from `vm3` to the guest, for at most `seconds`.
    pub fn start(vm3: &Vm, src: &Netns, dst: &Netns, rate: u32, seconds: u32) -> Result<Self> {
        let stop_capture = Arc::new(AtomicBool::new(false));
        let stop_stream = Arc::new(AtomicBool::new(false));
        let stop_on_drop = StopOnDrop(vec![stop_stream.clone(), stop_capture.clone()]);
        let captures = [
            tap_capture(src, TAP, stop_capture.clone())?,
            tap_capture(dst, TAP, stop_capture.clone())?,
            tap_capture(src, "ul", stop_capture.clone())?,
        ];
        let sender = send(vm3, rate, rate * seconds, stop_stream.clone());
        Ok(Self {
            stop_stream,
            stop_capture,
            _stop_on_drop: stop_on_drop,
            sender,
            captures,
        })
    }

    /// Stops the stream, leaves 300 ms for the last datagrams to arrive, stops the captures.
    pub fn finish(self) -> Result<Streamed> {
        self.stop_stream.store(true, Ordering::Relaxed);
        let sent_at = self
            .sender
            .join()
            .map_err(|_| anyhow!("the sender failed"))?;
        thread::sleep(Duration::from_millis(300));
        self.stop_capture.store(true, Ordering::Relaxed);
        let [src, dst, src_underlay] = self
            .captures
            .map(|h| h.join().map_err(|_| anyhow!("a packet capture failed")));
        let sent: Vec<(u32, SystemTime)> = (0..)
            .zip(&sent_at)
            .filter_map(|(seq, at)| Some((seq, (*at)?)))
            .collect();
        Ok(Streamed {
            send_errors: sent_at.len() - sent.len(),
            sent,
            src: src?,
            dst: dst?,
            src_underlay: src_underlay?,
        })
    }
}

/// Sends `total` datagrams (their sequence number as payload) from `vm3` to the guest at
/// `rate` a second, until `stop`; when each left (`None`: a send error).
fn send(
    vm3: &Vm,
    rate: u32,
    total: u32,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<Option<SystemTime>>> {
    in_ns(&vm3.ns, move || {
        // Not connected: the guest's port unreachables must not fail the next send.
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        let start = Instant::now();
        let mut sent = Vec::new();
        for seq in 0..total {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            // Paced: datagram `seq` leaves at seq / rate seconds.
            let due = Duration::from_secs_f64(f64::from(seq) / f64::from(rate));
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                thread::sleep(wait);
            }
            // Stamped before it leaves: a datagram stamped after an instant was sent after
            // it (its way through the rig may end before `send_to` returns).
            let at = SystemTime::now();
            let ok = socket.send_to(&seq.to_be_bytes(), (GUEST_IP, PORT)).is_ok();
            sent.push(ok.then_some(at));
        }
        sent
    })
}
