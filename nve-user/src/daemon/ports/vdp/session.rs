//! One trunk port's VDP session: the bridge's LLDP (EVB TLV with BGID), ECP's ACKs,
//! retransmissions and duplicate detection, each VSI request submitted to the writer and
//! answered, and an unsolicited DeAssoc for every VSI this bridge ended (expired,
//! disassociated over REST, its port's VDP turned off), kept until the station ACKs it.
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use super::socket::{self, PacketSocket};
use crate::{
    api::{VdpCounters, VdpPeerView, VdpSessionView},
    daemon::handle::Handle,
    mac::MacAddr,
    model::{Event, Model, VnicId, VsiRecord},
    vdp::{
        ETH_HLEN, ETH_P_ECP, ETH_P_LLDP, ecp, frame,
        lldp::{self, Neighbour, Timers},
        outbox::Outbox,
        status_for,
        tlv::{self, Mode, Status},
    },
};

/// How often the bridge's LLDPDU goes out; its TTL is four times that.
const LLDP_INTERVAL: Duration = Duration::from_secs(5);
/// How long to wait before trying an interface that is missing or failed again.
const RETRY: Duration = Duration::from_secs(1);
/// VSI TLVs waiting to go beyond which more are dropped (a station flooding requests
/// faster than it acknowledges the answers).
const OUTBOX: usize = 4096;

/// Runs `port`'s session until its VDP is turned off or its timers change.
pub async fn run(handle: Handle, port: String, timers: Timers) {
    let mut view = VdpSessionView::default();
    loop {
        let error = match Sockets::open(&port) {
            Ok(sockets) => {
                let mut s = Session::new(handle.clone(), port.clone(), timers, view.counters);
                match s.serve(&sockets).await {
                    Ok(()) => return,
                    Err(e) => {
                        view.counters = s.counters;
                        e
                    }
                }
            }
            Err(e) => e,
        };
        view.up = false;
        view.error = Some(format!("{port}: {error}"));
        handle.vdp_session(&port, Some(view.clone()));
        tokio::time::sleep(RETRY).await;
        if !wanted(&handle.snapshot().model, &port, timers) {
            return;
        }
    }
}

fn wanted(model: &Model, port: &str, timers: Timers) -> bool {
    model.vdp().ports.get(port) == Some(&timers)
}

struct Sockets {
    ecp: PacketSocket,
    lldp: PacketSocket,
    mac: [u8; 6],
}

impl Sockets {
    fn open(port: &str) -> std::io::Result<Self> {
        let (ifindex, mac) = socket::interface(port)?;
        Ok(Self {
            ecp: PacketSocket::open(ifindex, ETH_P_ECP)?,
            lldp: PacketSocket::open(ifindex, ETH_P_LLDP)?,
            mac,
        })
    }
}

/// What the bridge knows of the station.
struct Peer {
    mac: [u8; 6],
    lldp: Option<Neighbour>,
    heard: Instant,
}

struct Session {
    handle: Handle,
    port: String,
    timers: Timers,
    rx: ecp::Receiver,
    /// What the station is to be told, packed into ECP requests as they go.
    outbox: Outbox<Option<VnicId>>,
    /// ECP requests to the station, tagged with the VSIs of their unsolicited DeAssocs.
    tx: ecp::Sender<Vec<Option<VnicId>>>,
    /// DeAssocs queued or in flight.
    owed: BTreeSet<VnicId>,
    /// DeAssocs the station never acknowledged: sent again once it is heard.
    unheard: BTreeSet<VnicId>,
    /// This port's VSIs as of the last snapshot (for the DeAssocs when VDP is turned off).
    records: Vec<(VnicId, VsiRecord)>,
    /// VDP was turned off (or its timers changed): the session ends once its DeAssocs are
    /// acknowledged or given up.
    draining: bool,
    peer: Option<Peer>,
    counters: VdpCounters,
    epoch: Instant,
}

type Io = std::io::Result<()>;

impl Session {
    fn new(handle: Handle, port: String, timers: Timers, counters: VdpCounters) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos());
        Self {
            handle,
            port,
            timers,
            rx: ecp::Receiver::default(),
            outbox: Outbox::new(OUTBOX),
            tx: ecp::Sender::new(nanos as u16),
            owed: BTreeSet::new(),
            unheard: BTreeSet::new(),
            records: Vec::new(),
            draining: false,
            peer: None,
            counters,
            epoch: Instant::now(),
        }
    }

    /// Serves until VDP is turned off for the port (`Ok`) or the interface fails.
    async fn serve(&mut self, s: &Sockets) -> Io {
        let mut snapshots = self.handle.subscribe();
        let mut lldp_tick = tokio::time::interval(LLDP_INTERVAL);
        let model = snapshots.borrow_and_update().model.clone();
        self.follow(&model);
        loop {
            self.flush(s)?;
            self.publish(s);
            if self.draining && self.tx.pending() == 0 && self.outbox.is_empty() {
                return Ok(());
            }
            let deadline = self
                .tx
                .deadline()
                .map(|us| self.epoch + Duration::from_micros(us));
            tokio::select! {
                frame = s.ecp.recv() => self.on_ecp(s, &frame?).await?,
                frame = s.lldp.recv() => self.on_lldp(s, &frame?)?,
                _ = lldp_tick.tick() => self.send_lldp(s)?,
                () = sleep_until(deadline) => {}
                changed = snapshots.changed(), if !self.draining => {
                    let model = snapshots.borrow_and_update().model.clone();
                    if changed.is_err() {
                        return Ok(());
                    }
                    if wanted(&model, &self.port, self.timers) {
                        self.follow(&model);
                    } else {
                        self.drain(&model);
                    }
                }
            }
        }
    }

    /// The timers both sides use: each the larger of the two sides'.
    fn negotiated(&self) -> Timers {
        let theirs = self.station_evb().map(|e| e.timers);
        theirs.map_or(self.timers, |t| self.timers.max(t))
    }

    fn station_evb(&self) -> Option<lldp::StationEvb> {
        self.peer.as_ref()?.lldp.as_ref()?.evb
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Sends what ECP's sender has due: the next request, a retransmission.
    fn flush(&mut self, s: &Sockets) -> Io {
        let t = self.negotiated();
        let retry = ecp::Retry {
            retries: t.retries,
            rte: t.rte,
        };
        if self.tx.pending() == 0
            && let Some((payload, tags)) = self.outbox.next_payload()
        {
            self.tx.push(payload, tags);
        }
        while let Some(send) = self.tx.poll(self.now_us(), retry) {
            match send {
                ecp::Send::Frame {
                    seq,
                    payload,
                    retransmission,
                } => {
                    let header = ecp::Header {
                        op: ecp::Op::Request,
                        subtype: ecp::SUBTYPE_VDP,
                        seq,
                    };
                    let mut pdu = header.to_bytes().to_vec();
                    pdu.extend_from_slice(&payload);
                    self.send(&s.ecp, &frame(s.mac, ETH_P_ECP, &pdu, false))?;
                    if retransmission {
                        self.counters.ecp_retransmitted += 1;
                    } else {
                        self.counters.ecp_sent += 1;
                    }
                    return Ok(());
                }
                ecp::Send::GaveUp(tags) => {
                    self.counters.ecp_given_up += 1;
                    for id in tags.into_iter().flatten() {
                        self.owed.remove(&id);
                        self.unheard.insert(id);
                    }
                }
            }
        }
        Ok(())
    }

    async fn on_ecp(&mut self, s: &Sockets, f: &[u8]) -> Io {
        let Some((src, pdu)) = split(f) else {
            self.counters.malformed += 1;
            return Ok(());
        };
        let (header, payload) = match ecp::Header::parse(pdu) {
            Ok(h) => h,
            Err(e) => {
                self.counters.malformed += 1;
                tracing::debug!(port = %self.port, "ECPDU dropped: {e}");
                return Ok(());
            }
        };
        self.heard(src, None);
        if header.op == ecp::Op::Ack {
            if let Some(tags) = self.tx.ack(header.seq) {
                self.counters.ecp_acked += 1;
                for id in tags.into_iter().flatten() {
                    self.owed.remove(&id);
                    if let Err(e) = self.handle.submit(Event::VdpForget { id }).await {
                        tracing::warn!(port = %self.port, "forgetting a VSI: {e}");
                    }
                }
            }
            return Ok(());
        }
        // ACKed at once, repeats too (the station lost our ACK), before the work.
        let ack = ecp::Header::ack(header.seq).to_bytes();
        self.send(&s.ecp, &frame(s.mac, ETH_P_ECP, &ack, true))?;
        self.counters.ecp_acks_sent += 1;
        if !self.rx.accept(header.seq) {
            self.counters.ecp_duplicates += 1;
            return Ok(());
        }
        self.counters.ecp_received += 1;
        self.on_vdp(payload).await;
        Ok(())
    }

    /// Answers each VSI of a station's ECPDU, in one ECPDU.
    async fn on_vdp(&mut self, payload: &[u8]) {
        let (manager, entries) = match tlv::parse(payload) {
            Ok(p) => p,
            Err(e) => {
                self.counters.malformed += 1;
                tracing::info!(port = %self.port, "VDP payload dropped: {e}");
                return;
            }
        };
        let hold_ms = self.negotiated().keep_alive_timeout_us() / 1000;
        let mut replies = Vec::with_capacity(entries.len());
        for entry in entries {
            self.counters.vsi_requests += 1;
            let reply = match entry {
                Ok(vsi) => {
                    let event = Event::VdpRequest {
                        port: self.port.clone(),
                        manager,
                        vsi: vsi.clone(),
                        hold_ms,
                    };
                    match self.handle.submit(event).await {
                        Ok(Some(vnic)) => {
                            let filters = vsi.filters.iter().map(|f| f.with_vid(vnic.vid));
                            vsi.response(Status::Success, filters.collect())
                        }
                        Ok(None) => vsi.response(Status::Success, vsi.filters.clone()),
                        Err(e) => {
                            tracing::info!(port = %self.port, vsi = %vsi.vsiid, "VSI refused: {e}");
                            self.counters.vsi_refused += 1;
                            vsi.response(status_for(e.code), vsi.filters.clone())
                        }
                    }
                }
                Err(refused) => {
                    tracing::info!(port = %self.port, vsi = %refused.vsi.vsiid, "VSI refused: {}", refused.why);
                    self.counters.vsi_refused += 1;
                    refused
                        .vsi
                        .response(refused.status, refused.vsi.filters.clone())
                }
            };
            replies.push(reply);
        }
        for reply in replies {
            if !self.outbox.push(manager, reply, None) {
                self.counters.outbox_dropped += 1;
            }
        }
    }

    fn on_lldp(&mut self, s: &Sockets, f: &[u8]) -> Io {
        let Some((src, pdu)) = split(f) else {
            self.counters.lldp_malformed += 1;
            return Ok(());
        };
        match lldp::parse(pdu) {
            Ok(n) => {
                self.counters.lldp_received += 1;
                let before = self.station_evb();
                self.heard(src, Some(n));
                if self.station_evb() != before {
                    // Its timers or status changed: answer at once with the new values.
                    self.send_lldp(s)?;
                }
            }
            Err(e) => {
                self.counters.lldp_malformed += 1;
                tracing::debug!(port = %self.port, "LLDPDU dropped: {e}");
            }
        }
        Ok(())
    }

    /// The station was heard from `mac`: DeAssocs it never acknowledged go again.
    fn heard(&mut self, mac: [u8; 6], lldp: Option<Neighbour>) {
        let peer = self.peer.get_or_insert(Peer {
            mac,
            lldp: None,
            heard: Instant::now(),
        });
        peer.mac = mac;
        peer.heard = Instant::now();
        if lldp.is_some() {
            peer.lldp = lldp;
        }
        if !self.unheard.is_empty() {
            self.unheard.clear();
            let model = self.handle.snapshot().model.clone();
            self.follow(&model);
        }
    }

    fn send_lldp(&mut self, s: &Sockets) -> Io {
        let ttl = (LLDP_INTERVAL.as_secs() * 4) as u16;
        let evb = self.station_evb();
        let pdu = lldp::bridge_pdu(s.mac, &self.port, ttl, self.timers, evb.as_ref());
        self.send(&s.lldp, &frame(s.mac, ETH_P_LLDP, &pdu, false))?;
        self.counters.lldp_sent += 1;
        Ok(())
    }

    /// Sends a frame. One the host drops on the way out (a full queue, a qdisc's or
    /// netfilter's drop: ENOBUFS) is lost like one on the wire, and ECP's retransmission
    /// covers it; only an interface that is gone ends the session.
    fn send(&mut self, socket: &PacketSocket, frame: &[u8]) -> Io {
        match socket.send(frame) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN)) => {
                self.counters.send_dropped += 1;
                Ok(())
            }
            other => other,
        }
    }

    /// Takes in a new snapshot: each VSI this bridge ended is owed a DeAssoc.
    fn follow(&mut self, model: &Model) {
        self.records = model
            .vdp()
            .vsis
            .iter()
            .filter(|(_, r)| r.port == self.port)
            .map(|(id, r)| (id.clone(), r.clone()))
            .collect();
        let revoked: Vec<(VnicId, VsiRecord)> = model
            .vdp_revoked()
            .filter(|(id, r)| r.port == self.port && !self.owed.contains(*id))
            .filter(|(id, _)| !self.unheard.contains(*id))
            .map(|(id, r)| (id.clone(), r.clone()))
            .collect();
        for (id, record) in revoked {
            self.owe(id.clone(), &record, Some(id));
        }
    }

    /// VDP was turned off (its VSIs went with it) or its timers changed: the VSIs that
    /// went are told, and the session ends when that is done.
    fn drain(&mut self, model: &Model) {
        self.draining = true;
        let gone: Vec<(VnicId, VsiRecord)> = std::mem::take(&mut self.records)
            .into_iter()
            .filter(|(id, _)| !model.vdp().vsis.contains_key(id) && !self.owed.contains(id))
            .collect();
        for (id, record) in gone {
            self.owe(id, &record, None);
        }
    }

    /// Queues an unsolicited DeAssoc for VSI `id`, tagged `tag` (to forget it once ACKed).
    /// A full outbox leaves it owed: it is queued at a later snapshot.
    fn owe(&mut self, id: VnicId, record: &VsiRecord, tag: Option<VnicId>) {
        if self.outbox.push(record.manager, deassoc(record), tag) {
            self.owed.insert(id);
            self.counters.deassocs_sent += 1;
        }
    }

    fn publish(&mut self, s: &Sockets) {
        self.counters.kernel_drops += s.ecp.drops() + s.lldp.drops();
        let negotiated = self.negotiated();
        let peer = self.peer.as_ref().map(|p| {
            let lldp = p.lldp.clone().unwrap_or_default();
            VdpPeerView {
                mac: MacAddr(p.mac),
                chassis_id: hex(&lldp.chassis),
                port_id: hex(&lldp.port),
                ttl: lldp.ttl,
                evb: lldp.evb,
                group_ids: lldp.evb.is_some_and(|e| e.uses_group_ids()),
                last_heard_ms_ago: p.heard.elapsed().as_millis() as u64,
            }
        });
        let view = VdpSessionView {
            up: true,
            error: None,
            negotiated,
            keep_alive_timeout_ms: negotiated.keep_alive_timeout_us() / 1000,
            peer,
            counters: self.counters.clone(),
        };
        self.handle.vdp_session(&self.port, Some(view));
    }
}

/// An unsolicited DeAssoc of a VSI: the bridge's last answer, as a DeAssoc without ACK.
fn deassoc(record: &VsiRecord) -> tlv::Vsi {
    tlv::Vsi {
        mode: Mode::DeAssoc,
        status: 0,
        ..record.vsi.clone()
    }
}

/// A frame's source MAC and what follows its Ethernet header.
fn split(f: &[u8]) -> Option<([u8; 6], &[u8])> {
    let src: [u8; 6] = f.get(6..12)?.try_into().ok()?;
    Some((src, f.get(ETH_HLEN..)?))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
