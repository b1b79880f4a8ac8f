//! One BGP neighbour's session (RFC 4271's FSM, active side): connect, OPEN with the
//! L2VPN EVPN, 4-octet AS and graceful-restart capabilities, KEEPALIVEs at a third of the
//! negotiated hold time, UPDATEs up to the core and down from it. Whatever goes wrong ends
//! the session with the NOTIFICATION RFC 4271 names for it, and it starts again with
//! backoff; the core keeps the neighbour's routes for their stale time meanwhile.
use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, tcp::OwnedWriteHalf},
    sync::mpsc,
    time::{Instant, sleep_until, timeout},
};

use crate::evpn::{
    config::Neighbor,
    wire::{self, Capabilities, GracefulRestart, Message, Notification, Open, Update},
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the neighbour's OPEN (RFC 4271 suggests 4 minutes; a neighbour
/// that connects answers at once).
const OPEN_WAIT: Duration = Duration::from_secs(30);
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The restart time nve advertises (graceful restart capability, as a receiver).
const RESTART_TIME: u16 = 120;

/// NOTIFICATION codes (RFC 4271 s.4.5).
const HOLD_TIMER_EXPIRED: u8 = 4;
const FSM_ERROR: u8 = 5;
const CEASE: u8 = 6;
const OPEN_ERROR: u8 = 2;
const BAD_PEER_AS: u8 = 2;
const BAD_BGP_ID: u8 = 3;
const UNSUPPORTED_CAPABILITY: u8 = 7;
const UNACCEPTABLE_HOLD_TIME: u8 = 6;

/// What a session tells the core.
#[derive(Debug)]
pub enum Up {
    Established { peer: IpAddr, open: Open },
    Update { peer: IpAddr, update: Update },
    Down { peer: IpAddr, error: String },
}

/// This speaker, as every session presents it.
#[derive(Clone, Debug)]
pub struct Local {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub hold_time: u16,
}

/// Runs the neighbour's sessions until the core is gone: `down` carries what the core sends
/// it (dropped while no session is established).
pub async fn run(
    n: Neighbor,
    local: Local,
    up: mpsc::Sender<Up>,
    mut down: mpsc::Receiver<Vec<Message>>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        while down.try_recv().is_ok() {}
        let started = Instant::now();
        let error = match session(&n, &local, &up, &mut down).await {
            Ok(()) => return,
            Err(e) => e,
        };
        tracing::warn!(neighbor = %n.address, "BGP session down: {error}");
        if up
            .send(Up::Down {
                peer: n.address,
                error,
            })
            .await
            .is_err()
        {
            return;
        }
        if started.elapsed() > MAX_BACKOFF {
            backoff = MIN_BACKOFF;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn notification(code: u8, subcode: u8) -> Notification {
    Notification {
        code,
        subcode,
        data: Vec::new(),
    }
}

/// A session's reading half: bytes in, messages out.
struct Reader {
    stream: tokio::net::tcp::OwnedReadHalf,
    buf: Vec<u8>,
    four_octet: bool,
}

impl Reader {
    /// The next message; `Err` with the NOTIFICATION to send for a malformed one, or
    /// `Ok(None)` when the neighbour closed the connection.
    async fn next(&mut self) -> Result<Option<Message>, Result<Notification, String>> {
        loop {
            match wire::decode(&self.buf, self.four_octet) {
                Ok(Some((msg, used))) => {
                    self.buf.drain(..used);
                    return Ok(Some(msg));
                }
                Ok(None) => {}
                Err(n) => return Err(Ok(n)),
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).await {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(Err(format!("reading: {e}"))),
            }
        }
    }
}

async fn send(w: &mut OwnedWriteHalf, msg: &Message, four_octet: bool) -> Result<(), String> {
    w.write_all(&wire::encode(msg, four_octet))
        .await
        .map_err(|e| format!("writing: {e}"))
}

/// Sends `n` and says why the session ends.
async fn refuse(w: &mut OwnedWriteHalf, n: Notification, why: &str) -> String {
    let text = format!("{why} (sent NOTIFICATION {}/{})", n.code, n.subcode);
    let _ = send(w, &Message::Notification(n), true).await;
    text
}

/// What is wrong with the neighbour's OPEN, as the NOTIFICATION to send.
fn check_open(open: &Open, n: &Neighbor, local: &Local) -> Result<(), (Notification, String)> {
    if open.asn != n.remote_as {
        let why = format!("AS {} is not the configured {}", open.asn, n.remote_as);
        return Err((notification(OPEN_ERROR, BAD_PEER_AS), why));
    }
    if open.router_id.is_unspecified() || open.router_id == local.router_id {
        let why = format!("BGP identifier {}", open.router_id);
        return Err((notification(OPEN_ERROR, BAD_BGP_ID), why));
    }
    if open.hold_time != 0 && open.hold_time < 3 {
        let why = format!("hold time {}", open.hold_time);
        return Err((notification(OPEN_ERROR, UNACCEPTABLE_HOLD_TIME), why));
    }
    if !open.caps.evpn {
        let why = "no L2VPN EVPN capability".to_string();
        return Err((notification(OPEN_ERROR, UNSUPPORTED_CAPABILITY), why));
    }
    Ok(())
}

fn our_open(local: &Local) -> Message {
    Message::Open(Open {
        asn: local.asn,
        hold_time: local.hold_time,
        router_id: local.router_id,
        caps: Capabilities {
            evpn: true,
            ipv4_unicast: false,
            four_octet_asn: true,
            route_refresh: true,
            graceful_restart: Some(GracefulRestart {
                restarting: false,
                restart_time: RESTART_TIME,
                evpn_forwarding: Some(false),
            }),
            other: Vec::new(),
        },
    })
}

/// One session, from connect to its end (`Err` says why).
async fn session(
    n: &Neighbor,
    local: &Local,
    up: &mpsc::Sender<Up>,
    down: &mut mpsc::Receiver<Vec<Message>>,
) -> Result<(), String> {
    let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect((n.address, n.port)))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (rd, mut w) = stream.into_split();
    let mut r = Reader {
        stream: rd,
        buf: Vec::new(),
        four_octet: true,
    };
    send(&mut w, &our_open(local), true).await?;
    // OpenSent: their OPEN.
    let open = match timeout(OPEN_WAIT, r.next()).await {
        Err(_) => return Err(refuse(&mut w, notification(HOLD_TIMER_EXPIRED, 0), "no OPEN").await),
        Ok(Ok(Some(Message::Open(open)))) => open,
        Ok(Ok(Some(Message::Notification(x)))) => return Err(received(&x)),
        Ok(Ok(Some(_))) => {
            return Err(refuse(&mut w, notification(FSM_ERROR, 1), "not an OPEN").await);
        }
        Ok(Ok(None)) => return Err("closed before its OPEN".into()),
        Ok(Err(Ok(x))) => return Err(refuse(&mut w, x, "malformed OPEN").await),
        Ok(Err(Err(e))) => return Err(e),
    };
    if let Err((x, why)) = check_open(&open, n, local) {
        return Err(refuse(&mut w, x, &why).await);
    }
    let four_octet = open.caps.four_octet_asn;
    r.four_octet = four_octet;
    let hold = Duration::from_secs(u64::from(open.hold_time.min(local.hold_time)));
    send(&mut w, &Message::Keepalive, four_octet).await?;
    let mut expires = Instant::now() + if hold.is_zero() { OPEN_WAIT } else { hold };
    let mut keepalive = tokio::time::interval(if hold.is_zero() { OPEN_WAIT } else { hold / 3 });
    keepalive.tick().await;
    let mut established = false;
    loop {
        tokio::select! {
            msg = r.next() => {
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => return Err("the neighbour closed the connection".into()),
                    Err(Ok(x)) => return Err(refuse(&mut w, x, "malformed message").await),
                    Err(Err(e)) => return Err(e),
                };
                if !hold.is_zero() {
                    expires = Instant::now() + hold;
                }
                match msg {
                    Message::Keepalive if !established => {
                        established = true;
                        let open = open.clone();
                        up.send(Up::Established { peer: n.address, open }).await.map_err(|_| "core gone")?;
                    }
                    Message::Keepalive => {}
                    Message::Update(update) if established => {
                        up.send(Up::Update { peer: n.address, update }).await.map_err(|_| "core gone")?;
                    }
                    Message::Notification(x) => return Err(received(&x)),
                    Message::RouteRefresh { .. } if established => {
                        // The core sends the whole table again on (re-)establishment only;
                        // a refresh asks for it: treat it as one.
                        let open = open.clone();
                        up.send(Up::Established { peer: n.address, open }).await.map_err(|_| "core gone")?;
                    }
                    _ => return Err(refuse(&mut w, notification(FSM_ERROR, 0), "unexpected message").await),
                }
            }
            () = sleep_until(expires) => {
                return Err(refuse(&mut w, notification(HOLD_TIMER_EXPIRED, 0), "hold timer expired").await);
            }
            _ = keepalive.tick(), if !hold.is_zero() => send(&mut w, &Message::Keepalive, four_octet).await?,
            out = down.recv(), if established => match out {
                Some(msgs) => {
                    for m in &msgs {
                        send(&mut w, m, four_octet).await?;
                    }
                }
                None => {
                    let _ = refuse(&mut w, notification(CEASE, 2), "shutting down").await;
                    return Ok(());
                }
            },
        }
    }
}

fn received(n: &Notification) -> String {
    format!("received NOTIFICATION {}/{}", n.code, n.subcode)
}
