//! ECP22 (802.1Qbg clause 43): the acknowledged transport VDP rides on. Each ECPDU is a
//! 4-byte header — `ver(4)=1 | op(2) | subtype(10)`, then a sequence number — and, for a
//! request, the upper protocol's payload. One request is outstanding per direction; the
//! sender retransmits it every `10 us x 2^RTE` up to R times; the receiver ACKs every
//! request it hears and delivers a sequence number once (a repeat is its lost ACK's
//! retransmission).
use std::collections::VecDeque;

/// ECP's version.
const VERSION: u16 = 1;
/// The upper-layer protocol: VDP.
pub const SUBTYPE_VDP: u16 = 1;
/// The ECP header's length.
pub const HEADER_LEN: usize = 4;
/// The largest payload one ECPDU carries (1500 less ECP's header and a VLAN's 2 spare).
pub const MAX_PAYLOAD: usize = 1500 - HEADER_LEN - 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Request,
    Ack,
}

/// An ECPDU's header, read or to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub op: Op,
    pub subtype: u16,
    pub seq: u16,
}

/// Why an ECPDU was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EcpError {
    #[error("shorter than ECP's 4-byte header")]
    Truncated,
    #[error("ECP version {0}, not 1")]
    Version(u16),
    #[error("ECP operation {0} is neither request (0) nor ACK (1)")]
    Op(u16),
    #[error("ECP subtype {0}, not VDP (1)")]
    Subtype(u16),
}

impl Header {
    /// Reads the header of `pdu` (the frame after its Ethernet header) and returns it with
    /// the payload.
    pub fn parse(pdu: &[u8]) -> Result<(Header, &[u8]), EcpError> {
        let (head, payload) = pdu
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(EcpError::Truncated)?;
        let word = u16::from_be_bytes([head[0], head[1]]);
        let seq = u16::from_be_bytes([head[2], head[3]]);
        let version = word >> 12;
        if version != VERSION {
            return Err(EcpError::Version(version));
        }
        let op = match (word >> 10) & 0b11 {
            0 => Op::Request,
            1 => Op::Ack,
            other => return Err(EcpError::Op(other)),
        };
        let subtype = word & 0x3ff;
        if subtype != SUBTYPE_VDP {
            return Err(EcpError::Subtype(subtype));
        }
        Ok((Header { op, subtype, seq }, payload))
    }

    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let op = match self.op {
            Op::Request => 0,
            Op::Ack => 1,
        };
        let word = (VERSION << 12) | (op << 10) | (self.subtype & 0x3ff);
        let [a, b] = word.to_be_bytes();
        let [c, d] = self.seq.to_be_bytes();
        [a, b, c, d]
    }

    /// The ACK of request `seq`.
    pub fn ack(seq: u16) -> Self {
        Header {
            op: Op::Ack,
            subtype: SUBTYPE_VDP,
            seq,
        }
    }
}

/// The receiving half: which requests are new.
#[derive(Clone, Debug, Default)]
pub struct Receiver {
    last: Option<u16>,
}

impl Receiver {
    /// Whether request `seq` is new (deliver it) rather than a retransmission of the last
    /// one (ACK it again, deliver nothing). Either way it is ACKed.
    pub fn accept(&mut self, seq: u16) -> bool {
        let new = self.last != Some(seq);
        self.last = Some(seq);
        new
    }
}

/// The least time between two new requests, µs: lldpad's station keeps one received
/// payload and reads it 2 ms after its ACK, so a second request within that overwrites the
/// first (qbg/vdp22.c, `vdp22_from_ecp22`).
pub const REQUEST_GAP_US: u64 = 5_000;

/// ECP's timers and retries (802.1Qbg's exponents: a time is `10 us x 2^exp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Retransmissions after the first send.
    pub retries: u8,
    /// The retransmission time's exponent.
    pub rte: u8,
}

impl Retry {
    /// Time between sends, microseconds.
    pub fn interval_us(self) -> u64 {
        10u64 << self.rte.min(40)
    }
}

/// A request in flight, with the sender's tag for it.
#[derive(Clone, Debug)]
struct Outstanding<T> {
    seq: u16,
    payload: Vec<u8>,
    tag: T,
    sends: u8,
    due_us: u64,
}

/// What the sending half wants done now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Send<T> {
    /// Send (or resend) this request.
    Frame {
        seq: u16,
        payload: Vec<u8>,
        retransmission: bool,
    },
    /// The request went unacknowledged R+1 times: it is dropped (its tag returned, for the
    /// upper layer to try again later).
    GaveUp(T),
}

/// The sending half: a queue of payloads, each with a tag the sender gets back when it is
/// acknowledged or given up; one outstanding at a time.
#[derive(Clone, Debug)]
pub struct Sender<T> {
    next_seq: u16,
    /// When the last new request went (µs), for [`REQUEST_GAP_US`].
    last_new_us: Option<u64>,
    queue: VecDeque<(Vec<u8>, T)>,
    outstanding: Option<Outstanding<T>>,
}

impl<T: Clone> Sender<T> {
    /// Starts numbering at `first` (0 is skipped: ECP never uses it). A random start keeps
    /// a restarted bridge from repeating the number the station heard last.
    pub fn new(first: u16) -> Self {
        Self {
            next_seq: first.max(1),
            last_new_us: None,
            queue: VecDeque::new(),
            outstanding: None,
        }
    }

    pub fn push(&mut self, payload: Vec<u8>, tag: T) {
        self.queue.push_back((payload, tag));
    }

    /// Payloads waiting, the outstanding one included.
    pub fn pending(&self) -> usize {
        self.queue.len() + usize::from(self.outstanding.is_some())
    }

    /// An ACK arrived: the tag of the outstanding request it acknowledged, if it did.
    pub fn ack(&mut self, seq: u16) -> Option<T> {
        if self.outstanding.as_ref().is_some_and(|o| o.seq == seq) {
            return self.outstanding.take().map(|o| o.tag);
        }
        None
    }

    /// When `poll` next has something to do (microseconds), if ever without a push.
    pub fn deadline(&self) -> Option<u64> {
        match &self.outstanding {
            Some(o) => Some(o.due_us),
            None => (!self.queue.is_empty()).then(|| self.next_new_us()),
        }
    }

    fn next_new_us(&self) -> u64 {
        self.last_new_us.map_or(0, |t| t + REQUEST_GAP_US)
    }

    /// What to send at `now_us`: the next request when nothing is outstanding, a
    /// retransmission when its time came, or the news that R retries went unanswered.
    pub fn poll(&mut self, now_us: u64, retry: Retry) -> Option<Send<T>> {
        if let Some(o) = &mut self.outstanding {
            if now_us < o.due_us {
                return None;
            }
            if o.sends > retry.retries {
                let o = self.outstanding.take().expect("checked");
                return Some(Send::GaveUp(o.tag));
            }
            o.sends += 1;
            o.due_us = now_us + retry.interval_us();
            return Some(Send::Frame {
                seq: o.seq,
                payload: o.payload.clone(),
                retransmission: true,
            });
        }
        if self.queue.is_empty() || now_us < self.next_new_us() {
            return None;
        }
        let (payload, tag) = self.queue.pop_front()?;
        self.last_new_us = Some(now_us);
        let seq = self.next_seq;
        self.next_seq = self.next_seq.checked_add(1).unwrap_or(1);
        self.outstanding = Some(Outstanding {
            seq,
            payload: payload.clone(),
            tag,
            sends: 1,
            due_us: now_us + retry.interval_us(),
        });
        Some(Send::Frame {
            seq,
            payload,
            retransmission: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_as_lldpad_writes_them() {
        let req = Header {
            op: Op::Request,
            subtype: SUBTYPE_VDP,
            seq: 1,
        };
        assert_eq!(req.to_bytes(), [0x10, 0x01, 0x00, 0x01]);
        assert_eq!(Header::ack(0x1234).to_bytes(), [0x14, 0x01, 0x12, 0x34]);
        let (h, rest) = Header::parse(&[0x14, 0x01, 0, 7, 9]).unwrap();
        assert_eq!((h.op, h.seq, rest), (Op::Ack, 7, &[9u8][..]));
        assert_eq!(Header::parse(&[0x10, 0x01, 0]), Err(EcpError::Truncated));
        assert_eq!(
            Header::parse(&[0x20, 0x01, 0, 1]),
            Err(EcpError::Version(2))
        );
        assert_eq!(Header::parse(&[0x18, 0x01, 0, 1]), Err(EcpError::Op(2)));
        assert_eq!(
            Header::parse(&[0x10, 0x02, 0, 1]),
            Err(EcpError::Subtype(2))
        );
    }

    #[test]
    fn a_repeat_is_delivered_once() {
        let mut rx = Receiver::default();
        assert!(rx.accept(5));
        assert!(!rx.accept(5));
        assert!(rx.accept(6));
        assert!(rx.accept(5), "only the last number is a repeat");
    }

    #[test]
    fn one_outstanding_retransmitted_then_given_up() {
        let retry = Retry { retries: 2, rte: 8 };
        let mut tx = Sender::new(u16::MAX);
        tx.push(b"a".to_vec(), 'a');
        tx.push(b"b".to_vec(), 'b');
        let first = tx.poll(0, retry);
        assert_eq!(
            first,
            Some(Send::Frame {
                seq: u16::MAX,
                payload: b"a".to_vec(),
                retransmission: false
            })
        );
        assert_eq!(tx.poll(100, retry), None, "b waits for a's ACK");
        assert_eq!(tx.deadline(), Some(2560));
        for at in [2560, 5120] {
            assert!(matches!(
                tx.poll(at, retry),
                Some(Send::Frame {
                    retransmission: true,
                    ..
                })
            ));
        }
        assert_eq!(tx.poll(7680, retry), Some(Send::GaveUp('a')));
        // Numbers wrap past 0.
        let Some(Send::Frame { seq, .. }) = tx.poll(7680, retry) else {
            panic!("b goes next");
        };
        assert_eq!(seq, 1);
        assert_eq!(tx.ack(2), None, "not the outstanding one");
        assert_eq!(tx.ack(1), Some('b'));
        // The next new request keeps REQUEST_GAP_US from b's first send.
        tx.push(b"c".to_vec(), 'c');
        assert_eq!(tx.poll(7700, retry), None);
        assert_eq!(tx.deadline(), Some(7680 + REQUEST_GAP_US));
        assert!(tx.poll(7680 + REQUEST_GAP_US, retry).is_some());
        assert_eq!(tx.ack(2), Some('c'));
        assert_eq!((tx.pending(), tx.deadline()), (0, None));
    }
}
