//! VDP figures for the bench, timed on the wire (kernel timestamps): lldpad's Assoc request
//! leaving the station's `vst0` -> nve's answer for that VSI arriving there, and that
//! answer -> the first frame of the VSI (tagged with the VID nve gave) at the remote VM.
use std::{
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use nve_user::vdp::{ETH_HLEN, ETH_P_ECP, Id16, ecp, tlv};

use crate::{
    lldpad,
    overlay::{VM2_MAC, VNI},
    packet,
    rig::{PROBE_ETHERTYPE, packet_socket},
    vdp_rig::{STATION_IF, VdpRig, vsi},
};

/// Microseconds.
pub struct Figures {
    /// The station's Assoc request leaving vst0 -> nve's answer arriving on vst0, per VSI.
    pub request_reply_us: Vec<f64>,
    /// nve's answer on vst0 -> the first of the VSI's frames at vm2, per VSI.
    pub reply_first_frame_us: Vec<f64>,
    /// Both for the port's first VSI (one sample, the VSI kept): since `vdp enable`
    /// attaches tc_vm_egress to the trunk, no longer ~10-20 ms dearer than the rest.
    pub first_on_port_us: (f64, f64),
}

/// Between two of the station's frames to vm2 once nve answered.
pub const PROBE_GAP: Duration = Duration::from_micros(20);

/// nve's VDP timers: the rig's short response timeout (as tests/tests/all/vdp.rs), lldpad's
/// own keep-alive (10.5 s), so keep-alives of the kept VSI do not queue with the answers.
const NVE_TIMERS: &[&str] = &["--rwd", "16", "--rka", "20"];

/// Before each timed associate: nve keeps `ecp::REQUEST_GAP_US` between its own requests,
/// and its last answer (to the previous VSI's de-associate) was one; back to back, the next
/// answer would wait for that gap, not for nve's work.
const SPACING: Duration = Duration::from_micros(2 * ecp::REQUEST_GAP_US);

/// The VSI associated first and kept (the trunk is never without a VSI during the run).
const STANDING: u32 = 0xff;

/// What the wire showed of VSI `n`: its request, nve's answer (with the VID), its first
/// frame at vm2; kernel times, ns.
enum Seen {
    Request(i64),
    Reply(i64, u16),
    AtVm2(i64),
}

/// The port's first VSI (kept), then `associations` (fewer than 255) VSIs in VNI 100 with a
/// null VID, one after another, `SPACING` apart, each de-associated (with its VID) once
/// timed: two VSIs are associated at most.
pub fn run(associations: u8) -> Result<Figures> {
    anyhow::ensure!(u32::from(associations) < STANDING, "at most 254 VSIs");
    let station = lldpad::Config {
        timers: lldpad::Timers {
            vdprka: 20,
            ..lldpad::Timers::default()
        },
        ..lldpad::Config::default()
    };
    let rig = VdpRig::new("bvdp", NVE_TIMERS, station)?;
    // ETH_P_ALL: frames leaving vst0 too (PACKET_OUTGOING); the ECP socket is not told.
    let wire = packet_socket(&rig.st, STATION_IF, libc::ETH_P_ALL as u16)?;
    let probes = packet_socket(&rig.st, STATION_IF, PROBE_ETHERTYPE)?;
    let at_vm2 = packet_socket(&rig.vm2.ns, "eth0", PROBE_ETHERTYPE)?;
    for fd in [&wire, &at_vm2] {
        stamped(fd)?;
    }
    // The VSI being timed (0: none), and the VID nve gave it while its frames are sent
    // (0: not answered yet, or arrived).
    let (current, vid) = (AtomicU32::new(0), AtomicU32::new(0));
    let stop = AtomicBool::new(false);
    let (seen_tx, seen) = mpsc::channel::<(u32, Seen)>();
    let (stop, vid, current, seen_tx) = (&stop, &vid, &current, &seen_tx);
    let wire = &wire;
    thread::scope(|s| {
        let prober = s.spawn(|| {
            // SAFETY: prctl on this thread: 20 us sleeps, not the default 50 us slack.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64) };
            let mut buf = [0u8; 128];
            while !stop.load(Ordering::Relaxed) {
                let v = vid.load(Ordering::Acquire);
                if v == 0 {
                    thread::park_timeout(Duration::from_millis(10));
                    continue;
                }
                let n = current.load(Ordering::Relaxed);
                let mut seq = [0u8; 42];
                seq[..4].copy_from_slice(&n.to_be_bytes());
                let mac = vsi(n as u8, VNI).mac;
                let f = packet::eth_tagged(VM2_MAC, mac, v as u16, PROBE_ETHERTYPE, &seq);
                // SAFETY: send a buffer we own on a bound packet socket.
                unsafe { libc::send(probes.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
                thread::sleep(PROBE_GAP);
                while let Some((len, _, at)) = recv_stamped(&at_vm2, &mut buf, libc::MSG_DONTWAIT) {
                    if len >= 18 && buf[14..18] == n.to_be_bytes() {
                        vid.store(0, Ordering::Release);
                        let _ = seen_tx.send((n, Seen::AtVm2(at)));
                        break;
                    }
                }
            }
        });
        let waker = prober.thread().clone();
        s.spawn(move || {
            let mut buf = [0u8; 2048];
            // (VSI, its request seen, its answer seen): the first of each counts, not
            // retransmissions or keep-alives.
            let mut reported = (0, false, false);
            while !stop.load(Ordering::Relaxed) {
                let Some((len, kind, at)) = recv_stamped(wire, &mut buf, 0) else {
                    continue;
                };
                let n = current.load(Ordering::Acquire);
                let Some(v) = assoc(&buf[..len]).filter(|v| n != 0 && v.vsiid == uuid(n)) else {
                    continue;
                };
                if reported.0 != n {
                    reported = (n, false, false);
                }
                let outgoing = kind == libc::PACKET_OUTGOING;
                if outgoing && v.status & tlv::ACK == 0 && !reported.1 {
                    reported.1 = true;
                    let _ = seen_tx.send((n, Seen::Request(at)));
                } else if !outgoing && v.status & tlv::ACK != 0 && !reported.2 {
                    reported.2 = true;
                    let given = v.filters.first().map_or(0, tlv::Filter::vid);
                    if v.status & 0x0f == 0 && given != 0 {
                        vid.store(u32::from(given), Ordering::Release);
                        waker.unpark();
                    }
                    let _ = seen_tx.send((n, Seen::Reply(at, given)));
                }
            }
        });
        // Associates VSI `n`: (request -> reply, reply -> first frame at vm2, its VID).
        let time = |n: u32| -> Result<(f64, f64, u16)> {
            while seen.try_recv().is_ok() {}
            current.store(n, Ordering::Release);
            let answer = rig
                .station
                .associate(&vsi(n as u8, VNI))
                .with_context(|| format!("associating VSI {n}"))?;
            let given = answer.vid().context("an answer without a VID")?;
            let (mut request, mut reply, mut first) = (None, None, None);
            loop {
                if let (Some(request), Some(reply), Some(first)) = (request, reply, first) {
                    let us = |ns: i64| ns as f64 / 1e3;
                    return Ok((us(reply - request), us(first - reply), given));
                }
                let (m, event) = seen.recv_timeout(Duration::from_secs(2)).with_context(|| {
                    format!("VSI {n}: request {request:?}, answer {reply:?}, at vm2 {first:?}")
                })?;
                match event {
                    _ if m != n => {}
                    Seen::Request(at) => request = Some(at),
                    Seen::Reply(_, wire_vid) if wire_vid != given => {
                        bail!("VSI {n}: VID {wire_vid} on the wire, vdptool says {given}")
                    }
                    Seen::Reply(at, _) => reply = Some(at),
                    Seen::AtVm2(at) => first = Some(at),
                }
            }
        };
        let timed = (|| {
            let (a, b, _) = time(STANDING)?;
            let mut f = Figures {
                request_reply_us: Vec::new(),
                reply_first_frame_us: Vec::new(),
                first_on_port_us: (a, b),
            };
            for n in 1..=u32::from(associations) {
                thread::sleep(SPACING);
                let (a, b, vid) = time(n)?;
                rig.station
                    .deassociate(&vsi(n as u8, VNI).with_vid(vid))
                    .with_context(|| format!("de-associating VSI {n}"))?;
                f.request_reply_us.push(a);
                f.reply_first_frame_us.push(b);
            }
            Ok(f)
        })();
        stop.store(true, Ordering::Relaxed);
        prober.thread().unpark();
        timed
    })
}

/// VSI `n`'s UUID as the wire carries it.
fn uuid(n: u32) -> Id16 {
    vsi(n as u8, VNI)
        .uuid
        .parse()
        .expect("the rig's UUIDs parse")
}

/// The Assoc TLV of an ECP request frame (the station's request or nve's answer).
fn assoc(frame: &[u8]) -> Option<tlv::Vsi> {
    if frame.get(12..ETH_HLEN)? != ETH_P_ECP.to_be_bytes() {
        return None;
    }
    let (header, payload) = ecp::Header::parse(&frame[ETH_HLEN..]).ok()?;
    if header.op != ecp::Op::Request {
        return None;
    }
    let (_, entries) = tlv::parse(payload).ok()?;
    entries
        .into_iter()
        .filter_map(Result::ok)
        .find(|v| v.mode == tlv::Mode::Assoc)
}

/// Kernel receive timestamps (SO_TIMESTAMPNS) and a 100 ms receive timeout on `fd`.
pub fn stamped(fd: &OwnedFd) -> Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    if rc != 0 {
        bail!("SO_TIMESTAMPNS: {}", std::io::Error::last_os_error());
    }
    crate::rig::recv_timeout(fd, Duration::from_millis(100))
}

/// One frame from a packet socket: its length, packet type (`PACKET_OUTGOING`: it left the
/// interface) and the kernel's time for it (CLOCK_REALTIME, ns). None when nothing came
/// (the socket's timeout, or at once with `MSG_DONTWAIT` in `flags`).
pub fn recv_stamped(fd: &OwnedFd, buf: &mut [u8], flags: i32) -> Option<(usize, u8, i64)> {
    // SAFETY: zeroed plain C structs, filled in below or by the kernel.
    let (mut from, mut msg): (libc::sockaddr_ll, libc::msghdr) = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 8];
    msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: recvmsg into the buffers `msg` points at, all alive here.
    let len = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
    if len < 0 {
        return None;
    }
    // SAFETY: walking the control messages the kernel wrote into `control`.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: a control message inside `control`.
        let c = unsafe { &*cmsg };
        if c.cmsg_level == libc::SOL_SOCKET && c.cmsg_type == libc::SCM_TIMESTAMPNS {
            // SAFETY: SCM_TIMESTAMPNS carries a timespec.
            let ts: libc::timespec = unsafe {
                libc::CMSG_DATA(cmsg)
                    .cast::<libc::timespec>()
                    .read_unaligned()
            };
            return Some((
                len as usize,
                from.sll_pkttype,
                ts.tv_sec * 1_000_000_000 + ts.tv_nsec,
            ));
        }
        // SAFETY: as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    None
}
