//! EVPN figures for the bench (`nve-bench --only-evpn`). Against FRR 8.4 on the EVPN rig,
//! timed on the wire with kernel timestamps (SO_TIMESTAMPNS) where a packet marks the
//! moment:
//! - associate on nve (the API call) -> the BGP UPDATE announcing the vNIC's MAC arriving
//!   on h2's `ul`, and -> zebra's entry for the MAC in h2's kernel FDB (`vxlan100`; a
//!   netlink event, read at once: user-space time, microseconds);
//! - a frame from a new MAC sent into h2's bridge (FRR learns it) -> FRR's UPDATE arriving
//!   on h1's `ul` -> the first of vm1's frames to that MAC leaving h1's `ul` in VXLAN: the
//!   VN does not flood unknown unicast, so nothing to the MAC leaves before nve's dataplane
//!   FDB has it.
//!
//! FRR learns MACs only from its kernel, so for many routes a minimal BGP speaker takes its
//! place in h2 ([`at_scale`]): OPEN, KEEPALIVE, then type-2 routes packed as many per
//! UPDATE as fit in 4,096 bytes, then End-of-RIB, with `nve_user::evpn::wire`'s codec;
//! installed is when `nva.entries` of `GET /v1/status` (polled every 10 ms over the API
//! socket) counts them all, and the dataplane's FDB map is counted after.
use std::{
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, Shutdown, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use nve_user::{
    evpn::{
        route::{Attributes, Rd, Route, RouteTarget},
        wire::{self, Capabilities, MAX_MESSAGE, Message, Open, Update},
    },
    mac::MacAddr,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    evpn_rig::{ASN, EvpnRig, nve_config},
    frr::{self, MacType},
    nva_bench::{map_entries, rss_kib},
    overlay::{self, H1_VTEP, H2_VTEP, TwoHosts, VM1_MAC, VM2_MAC, VN, VNI},
    packet,
    rig::{Daemon, PROBE_ETHERTYPE, TempFile, in_netns, mac_str, packet_socket},
    signal_bench::{post, uuid},
    vdp_bench::{recv_stamped, stamped},
};

/// Microseconds, one sample per vNIC or MAC.
#[derive(Debug, Default, Serialize)]
pub struct FrrFigures {
    /// Associate sent -> the UPDATE announcing the MAC arriving on h2's `ul` (at FRR).
    pub associate_to_update_us: Vec<f64>,
    /// Associate sent -> zebra's FDB entry for the MAC in h2's kernel.
    pub associate_to_frr_fdb_us: Vec<f64>,
    /// Associate sent -> nve's answer.
    pub associate_answer_us: Vec<f64>,
    /// The rig's first vNIC (the VN's first: a type-3 route too), not in the lists above:
    /// (to the UPDATE, to zebra's FDB).
    pub first_associate_us: (f64, f64),
    /// A frame from a new MAC sent into h2's bridge -> FRR's UPDATE arriving on h1's `ul`.
    pub learned_to_update_us: Vec<f64>,
    /// That UPDATE -> the first frame to the MAC leaving h1's `ul` encapsulated.
    pub update_to_dataplane_us: Vec<f64>,
    /// The frame sent -> the first frame to the MAC encapsulated (the two together).
    pub learned_to_dataplane_us: Vec<f64>,
    /// The first learned MAC, not in the lists above: (to the UPDATE, to the dataplane).
    pub first_learned_us: (f64, f64),
}

/// Between two of vm1's frames to the MAC being learned (the resolution of figure 2's end).
pub const PROBE_GAP: Duration = Duration::from_micros(50);
/// How long one step may take before the run fails.
const WAIT: Duration = Duration::from_secs(5);

/// What the captures showed for a MAC; kernel times (CLOCK_REALTIME), ns.
#[derive(Debug)]
enum Seen {
    /// An UPDATE from nve announcing it arrived on h2's `ul`.
    AtFrr(i64),
    /// zebra added it to (true) or removed it from h2's `vxlan100` FDB; user-space time.
    FrrFdb(bool, i64),
    /// An UPDATE from FRR announcing it arrived on h1's `ul`.
    AtNve(i64),
    /// One of vm1's probes to it left h1's `ul` in VXLAN.
    Encapsulated(i64),
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn us(ns: i64) -> f64 {
    ns as f64 / 1e3
}

fn mac_u64(m: [u8; 6]) -> u64 {
    m.iter().fold(0, |v, &b| v << 8 | u64::from(b))
}

fn u64_mac(v: u64) -> [u8; 6] {
    let b = v.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// Figure 1's vNICs and figure 2's MACs.
fn associated_mac(n: u32) -> [u8; 6] {
    [0x02, 0xbe, 0x01, 0, (n >> 8) as u8, n as u8]
}

fn learned_mac(n: u32) -> [u8; 6] {
    [0x02, 0xbe, 0x02, 0, (n >> 8) as u8, n as u8]
}

/// The IPv4 payload of an Ethernet frame: (protocol, source, its bytes after the header).
fn ipv4(frame: &[u8]) -> Option<(u8, Ipv4Addr, &[u8])> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
    Some((*ip.get(9)?, src.into(), ip.get(ihl..total.min(ip.len()))?))
}

/// The MACs of the type-2 routes announced by the BGP messages of a TCP segment from
/// `from` (to or from port 179) that begin in it.
fn announced_macs(frame: &[u8], from: Ipv4Addr) -> Vec<[u8; 6]> {
    let mut macs = Vec::new();
    let Some((6, src, tcp)) = ipv4(frame) else {
        return macs;
    };
    let port = |i: usize| u16::from_be_bytes([tcp[i], tcp[i + 1]]);
    if src != from || tcp.len() < 20 || (port(0) != 179 && port(2) != 179) {
        return macs;
    }
    let mut payload = tcp.get(usize::from(tcp[12] >> 4) * 4..).unwrap_or_default();
    while let Ok(Some((msg, used))) = wire::decode(payload, true) {
        if let Message::Update(u) = msg {
            for r in u.announced {
                if let Route::MacIp { mac, .. } = r {
                    macs.push(mac.0);
                }
            }
        }
        payload = &payload[used..];
    }
    macs
}

/// The inner destination of a VXLAN frame (UDP 4789) carrying one of the probes.
fn vxlan_probe_dst(frame: &[u8]) -> Option<[u8; 6]> {
    let (17, _, udp) = ipv4(frame)? else {
        return None;
    };
    if udp.get(2..4)? != 4789u16.to_be_bytes() {
        return None;
    }
    let inner = udp.get(16..)?;
    (inner.get(12..14)? == PROBE_ETHERTYPE.to_be_bytes()).then(|| inner[..6].try_into().ok())?
}

/// A NETLINK_ROUTE socket in `ns` that hears neighbour (and bridge FDB) changes, with a
/// 100 ms receive timeout.
fn neigh_socket(ns: &crate::rig::Netns) -> Result<OwnedFd> {
    in_netns(ns, || {
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            bail!("netlink socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor we just opened.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed sockaddr_nl, then filled.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = libc::RTMGRP_NEIGH as u32;
        // SAFETY: bind with a sockaddr_nl of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            bail!("netlink bind: {}", std::io::Error::last_os_error());
        }
        crate::rig::recv_timeout(&fd, Duration::from_millis(100))?;
        Ok(fd)
    })
}

/// The bridge FDB changes on `ifindex` in a netlink datagram: (added, MAC).
fn fdb_changes(buf: &[u8], ifindex: i32) -> Vec<(bool, [u8; 6])> {
    const NLMSG_HDR: usize = 16;
    const NDMSG: usize = 12;
    let mut out = Vec::new();
    let mut msg = buf;
    while msg.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize;
        let ty = u16::from_ne_bytes([msg[4], msg[5]]);
        if len < NLMSG_HDR || len > msg.len() {
            break;
        }
        let body = &msg[NLMSG_HDR..len];
        let added = ty == libc::RTM_NEWNEIGH;
        if (added || ty == libc::RTM_DELNEIGH)
            && body.len() >= NDMSG
            && i32::from(body[0]) == libc::AF_BRIDGE
            && i32::from_ne_bytes([body[4], body[5], body[6], body[7]]) == ifindex
        {
            let mut attrs = &body[NDMSG..];
            while attrs.len() >= 4 {
                let alen = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
                let aty = u16::from_ne_bytes([attrs[2], attrs[3]]);
                if alen < 4 || alen > attrs.len() {
                    break;
                }
                if aty == libc::NDA_LLADDR
                    && let Ok(mac) = <[u8; 6]>::try_from(&attrs[4..alen])
                {
                    out.push((added, mac));
                }
                attrs = &attrs[(alen + 3) & !3..];
                if attrs.len() < 4 {
                    break;
                }
            }
        }
        msg = &msg[((len + 3) & !3).min(msg.len())..];
    }
    out
}

/// Sends `frame` on a bound packet socket.
fn send(fd: &OwnedFd, frame: &[u8]) -> Result<()> {
    // SAFETY: send(2) of a buffer we own on a descriptor we own.
    if unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) } < 0 {
        bail!("send: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Figures 1 and 2 on the EVPN rig (VN blue without unknown-unicast flooding): `runs` new
/// vNICs associated on nve one after another (each disassociated, and gone from FRR,
/// before the next), then `runs` new MACs learned by FRR. Fewer than 255 each.
pub fn against_frr(runs: u32) -> Result<FrrFigures> {
    anyhow::ensure!(runs < 255, "at most 254 runs");
    // VN blue is made afterwards, without flooding (which the config file cannot say).
    let mut config = nve_config(json!({}));
    config["vns"] = json!([]);
    let rig = EvpnRig::with_config("bevpn", config, |c| c)?;
    overlay::add_vn(&rig.nve, false)?;
    let (h1, h2) = (&rig.hosts.h1, &rig.hosts.h2);
    let (h1_ip, h2_ip): (Ipv4Addr, Ipv4Addr) = (H1_VTEP.parse()?, H2_VTEP.parse()?);
    let at_frr = packet_socket(h2, "ul", libc::ETH_P_IP as u16)?;
    // ETH_P_ALL: frames leaving h1's ul too (PACKET_OUTGOING).
    let at_h1 = packet_socket(h1, "ul", libc::ETH_P_ALL as u16)?;
    for fd in [&at_frr, &at_h1] {
        stamped(fd)?;
    }
    let (_, vx) = frr::evpn_devices(VNI);
    let vx_index = in_netns(h2, move || {
        let name = std::ffi::CString::new(vx)?;
        // SAFETY: a NUL-terminated name.
        Ok(unsafe { libc::if_nametoindex(name.as_ptr()) } as i32)
    })?;
    let neigh = neigh_socket(h2)?;
    let probes = packet_socket(&rig.hosts.vm1.ns, "eth0", PROBE_ETHERTYPE)?;
    let from_vm2 = packet_socket(&rig.hosts.vm2.ns, "eth0", PROBE_ETHERTYPE)?;
    // The MAC vm1's probes go to (0: none).
    let target = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let (seen_tx, seen) = mpsc::channel::<([u8; 6], Seen)>();
    let (stop, target, seen_tx) = (&stop, &target, &seen_tx);
    let (at_frr, at_h1, neigh, probes) = (&at_frr, &at_h1, &neigh, &probes);
    thread::scope(|s| {
        s.spawn(move || {
            let mut buf = [0u8; 9000];
            while !stop.load(Ordering::Relaxed) {
                if let Some((len, _, at)) = recv_stamped(at_frr, &mut buf, 0) {
                    for mac in announced_macs(&buf[..len], h1_ip) {
                        let _ = seen_tx.send((mac, Seen::AtFrr(at)));
                    }
                }
            }
        });
        s.spawn(move || {
            let mut buf = [0u8; 9000];
            while !stop.load(Ordering::Relaxed) {
                let Some((len, kind, at)) = recv_stamped(at_h1, &mut buf, 0) else {
                    continue;
                };
                let frame = &buf[..len];
                if kind == libc::PACKET_OUTGOING {
                    if let Some(mac) = vxlan_probe_dst(frame) {
                        let _ = seen_tx.send((mac, Seen::Encapsulated(at)));
                    }
                } else {
                    for mac in announced_macs(frame, h2_ip) {
                        let _ = seen_tx.send((mac, Seen::AtNve(at)));
                    }
                }
            }
        });
        s.spawn(move || {
            let mut buf = [0u8; 16384];
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: recv into our buffer.
                let len =
                    unsafe { libc::recv(neigh.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                let at = now_ns();
                if len > 0 {
                    for (added, mac) in fdb_changes(&buf[..len as usize], vx_index) {
                        let _ = seen_tx.send((mac, Seen::FrrFdb(added, at)));
                    }
                }
            }
        });
        let prober = s.spawn(move || {
            // SAFETY: prctl on this thread: short sleeps, not the default 50 us slack.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64) };
            let mut seq = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let t = target.load(Ordering::Acquire);
                if t == 0 {
                    thread::park_timeout(Duration::from_millis(10));
                    continue;
                }
                seq += 1;
                let mut payload = [0u8; 46];
                payload[..4].copy_from_slice(&seq.to_be_bytes());
                let f = packet::eth(u64_mac(t), VM1_MAC, PROBE_ETHERTYPE, &payload);
                let _ = send(probes, &f);
                thread::sleep(PROBE_GAP);
            }
        });
        let waker = prober.thread().clone();
        let result = measure(&rig, runs, &seen, &from_vm2, |mac| {
            target.store(mac.map_or(0, mac_u64), Ordering::Release);
            waker.unpark();
        });
        stop.store(true, Ordering::Relaxed);
        prober.thread().unpark();
        result
    })
}

/// Waits until `want` has given a time for each of its slots from the events of `mac`;
/// the times.
fn wait_for<const N: usize>(
    seen: &mpsc::Receiver<([u8; 6], Seen)>,
    mac: [u8; 6],
    what: &str,
    want: impl Fn(&Seen) -> Option<(usize, i64)>,
) -> Result<[i64; N]> {
    let deadline = Instant::now() + WAIT;
    let mut got = [None; N];
    while got.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        let (m, event) = seen
            .recv_timeout(left)
            .with_context(|| format!("{}: {what} not seen within {WAIT:?}", mac_str(mac)))?;
        if m == mac
            && let Some((slot, at)) = want(&event)
        {
            got[slot].get_or_insert(at);
        }
    }
    Ok(got.map(|t| t.unwrap_or_default()))
}

/// The runs of [`against_frr`], the captures running; `probe` points vm1's probes at a MAC
/// (or stops them).
fn measure(
    rig: &EvpnRig,
    runs: u32,
    seen: &mpsc::Receiver<([u8; 6], Seen)>,
    from_vm2: &OwnedFd,
    probe: impl Fn(Option<[u8; 6]>),
) -> Result<FrrFigures> {
    let d = &rig.nve;
    let drain = || while seen.try_recv().is_ok() {};
    let vnic =
        |mac: [u8; 6]| json!({"op": "associate", "vn": VN, "port": "vm1p", "macs": [mac_str(mac)]});
    // Figure 1: (to the UPDATE at FRR, to zebra's FDB, to nve's answer).
    let associate = |n: u32, mac: [u8; 6]| -> Result<(f64, f64, f64)> {
        drain();
        let t0 = now_ns();
        post(d, &uuid(0xe000 + n), vnic(mac))?;
        let answered = now_ns();
        let [update, fdb] =
            wait_for(
                seen,
                mac,
                "the UPDATE at FRR and zebra's FDB entry",
                |e| match e {
                    Seen::AtFrr(t) => Some((0, *t)),
                    Seen::FrrFdb(true, t) => Some((1, *t)),
                    _ => None,
                },
            )?;
        Ok((us(update - t0), us(fdb - t0), us(answered - t0)))
    };
    let mut f = FrrFigures::default();
    // The vNIC whose MAC sends figure 2's probes, kept: the VN's first (nve joins it).
    let (a, b, _) = associate(0, VM1_MAC)?;
    f.first_associate_us = (a, b);
    d.wait_next_hop(H2_VTEP)?;
    let h1: Ipv4Addr = H1_VTEP.parse()?;
    for n in 1..=runs {
        let mac = associated_mac(n);
        let (update, fdb, answered) = associate(n, mac)?;
        let listed = rig.frr.evpn_macs(VNI)?;
        let e = listed.get(&mac_str(mac));
        if !e.is_some_and(|e| e.kind == MacType::Remote && e.remote_vtep == Some(h1)) {
            bail!(
                "{}: not remote behind h1 in FRR's table: {e:?}",
                mac_str(mac)
            );
        }
        f.associate_to_update_us.push(update);
        f.associate_to_frr_fdb_us.push(fdb);
        f.associate_answer_us.push(answered);
        post(d, &uuid(0xe000 + n), json!({"op": "disassociate"}))?;
        wait_for::<1>(seen, mac, "zebra's FDB entry removed", |e| {
            matches!(e, Seen::FrrFdb(false, _)).then_some((0, 0))
        })?;
    }
    // Figure 2: (to FRR's UPDATE at h1, to the first frame encapsulated).
    let learn = |mac: [u8; 6]| -> Result<(f64, f64)> {
        probe(Some(mac));
        thread::sleep(Duration::from_millis(5));
        let flooded = std::iter::from_fn(|| seen.try_recv().ok())
            .any(|(m, e)| m == mac && matches!(e, Seen::Encapsulated(_)));
        if flooded {
            probe(None);
            bail!("{}: encapsulated before FRR learned it", mac_str(mac));
        }
        let frame = packet::eth(VM2_MAC, mac, PROBE_ETHERTYPE, &[0; 46]);
        let t0 = now_ns();
        send(from_vm2, &frame)?;
        let got = wait_for(
            seen,
            mac,
            "FRR's UPDATE at h1 and a frame encapsulated",
            |e| match e {
                Seen::AtNve(t) => Some((0, *t)),
                Seen::Encapsulated(t) => Some((1, *t)),
                _ => None,
            },
        );
        probe(None);
        let [update, encapsulated] = got?;
        Ok((us(update - t0), us(encapsulated - t0)))
    };
    f.first_learned_us = learn(learned_mac(0))?;
    for n in 1..=runs {
        thread::sleep(Duration::from_millis(20));
        let (update, dataplane) = learn(learned_mac(n))?;
        f.learned_to_update_us.push(update);
        f.update_to_dataplane_us.push(dataplane - update);
        f.learned_to_dataplane_us.push(dataplane);
    }
    Ok(f)
}

/// One run of figure 3: `routes` type-2 routes from the minimal speaker into a fresh nve.
#[derive(Debug, Serialize)]
pub struct Scale {
    pub routes: u32,
    pub updates: usize,
    /// First UPDATE written -> the End-of-RIB written, s: the speaker waits on nve's TCP
    /// window, but nve's session reads ahead of its core (a queue of 1,024 messages).
    pub sent_s: f64,
    /// First UPDATE written -> nve's status counting every route received (its RIB), s.
    pub received_s: Option<f64>,
    /// First UPDATE written -> `nva.entries` in nve's status reaching `routes`, s; `None`
    /// when the step's time ran out first.
    pub installed_s: Option<f64>,
    /// `nva.entries` at the end (`routes` when installed).
    pub entries: u64,
    /// Entries in the dataplane's FDB map at the end.
    pub fdb_entries: usize,
    /// nve's resident memory once the session was up, and at the end, KiB.
    pub rss_before_kib: u64,
    pub rss_kib: u64,
    /// CPU time nve used from the first UPDATE to the end (user + system), s.
    pub cpu_s: f64,
    /// What nve's status said of the session if it did not stay established.
    pub session_error: Option<String>,
}

/// The scale runs: `routes` in steps (10,000, 30,000, then `routes`), each in a fresh rig,
/// each bounded by what is left of `budget`; a step whose time, extrapolated from the last
/// two, would not fit is skipped.
pub fn at_scale(routes: u32, budget: Duration) -> Result<Vec<Scale>> {
    let start = Instant::now();
    let mut steps: Vec<u32> = [10_000, 30_000]
        .into_iter()
        .filter(|&s| s < routes)
        .collect();
    steps.push(routes);
    let mut out: Vec<Scale> = Vec::new();
    for (i, &n) in steps.iter().enumerate() {
        let left = budget.saturating_sub(start.elapsed());
        if let Some(last) = out.last() {
            let Some(t) = last.installed_s else { break };
            // Quadratic unless two points say otherwise.
            let exponent = match out.len() {
                1 => 2.0,
                k => {
                    let prev = &out[k - 2];
                    let (t0, t1) = (prev.installed_s.unwrap_or(t), t);
                    ((t1 / t0).ln() / (f64::from(last.routes) / f64::from(prev.routes)).ln())
                        .clamp(1.0, 3.0)
                }
            };
            let predicted = t * (f64::from(n) / f64::from(last.routes)).powf(exponent);
            if predicted > left.as_secs_f64() {
                eprintln!(
                    "    {n} routes skipped: {predicted:.0} s predicted (x^{exponent:.2}), {:.0} s left",
                    left.as_secs_f64()
                );
                break;
            }
        }
        eprintln!("    {n} routes ({:.0} s left)", left.as_secs_f64());
        out.push(one_scale(&format!("bevpn{i}"), n, left)?);
    }
    Ok(out)
}

/// A route's MAC in the scale runs.
fn scale_mac(i: u32) -> MacAddr {
    let b = i.to_be_bytes();
    MacAddr([0x02, 0x5e, b[0], b[1], b[2], b[3]])
}

/// `n` type-2 MAC routes (VNI 100, RT ASN:100, next hop h2, VXLAN) as h2's FRR would send
/// them, as many per UPDATE as fit in `MAX_MESSAGE`, then End-of-RIB; encoded.
fn updates(n: u32) -> Result<Vec<Vec<u8>>> {
    let h2: Ipv4Addr = H2_VTEP.parse()?;
    let attributes = Attributes {
        local_pref: Some(100),
        next_hop: h2.into(),
        route_targets: vec![RouteTarget::as2(ASN as u16, VNI)],
        vxlan: true,
        ..Attributes::default()
    };
    let route = |i: u32| Route::MacIp {
        rd: Rd::ipv4(h2, VNI as u16),
        esi: [0; 10],
        tag: 0,
        mac: scale_mac(i),
        ip: None,
        label: VNI,
    };
    let update = |routes: Vec<Route>| {
        Message::Update(Update {
            announced: routes,
            attributes: Some(attributes.clone()),
            ..Update::default()
        })
    };
    let overhead = wire::encode(&update(vec![route(0)]), true).len() - route(0).wire_len();
    let per = (MAX_MESSAGE - overhead) / route(0).wire_len();
    let ids: Vec<u32> = (0..n).collect();
    let mut out = Vec::new();
    for chunk in ids.chunks(per) {
        let bytes = wire::encode(&update(chunk.iter().map(|&i| route(i)).collect()), true);
        anyhow::ensure!(
            bytes.len() <= MAX_MESSAGE,
            "an UPDATE of {} bytes",
            bytes.len()
        );
        out.push(bytes);
    }
    let eor = Update {
        end_of_rib: true,
        ..Update::default()
    };
    out.push(wire::encode(&Message::Update(eor), true));
    Ok(out)
}

/// The next BGP message on `stream` (blocking, within its read timeout).
fn read_message(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Message> {
    loop {
        match wire::decode(buf, true) {
            Ok(Some((msg, used))) => {
                buf.drain(..used);
                return Ok(msg);
            }
            Ok(None) => {}
            Err(n) => bail!("nve sent a malformed message: {n}"),
        }
        let mut chunk = [0u8; 4096];
        let len = stream.read(&mut chunk).context("reading from nve")?;
        if len == 0 {
            bail!("nve closed the session");
        }
        buf.extend_from_slice(&chunk[..len]);
    }
}

/// The speaker's half of the handshake with nve (nve connects): its OPEN, ours and a
/// KEEPALIVE, its KEEPALIVE. nve is Established once it reads ours.
fn handshake(stream: &mut TcpStream) -> Result<()> {
    let mut buf = Vec::new();
    let Message::Open(theirs) = read_message(stream, &mut buf)? else {
        bail!("nve's first message is not an OPEN");
    };
    let ours = Open {
        asn: ASN,
        hold_time: theirs.hold_time,
        router_id: H2_VTEP.parse()?,
        caps: Capabilities {
            evpn: true,
            four_octet_asn: true,
            ..Capabilities::default()
        },
    };
    stream.write_all(&wire::encode(&Message::Open(ours), true))?;
    stream.write_all(&wire::encode(&Message::Keepalive, true))?;
    loop {
        match read_message(stream, &mut buf)? {
            Message::Keepalive => return Ok(()),
            Message::Notification(n) => bail!("nve refused the session: {n}"),
            _ => {}
        }
    }
}

/// nve's status: (`nva.entries`, its neighbour's prefixes received, the neighbour's state,
/// its last error).
fn evpn_status(d: &Daemon) -> Result<(u64, u64, String, Option<String>)> {
    let (_, body) = d.http("GET", "/v1/status", b"")?;
    let v: Value = serde_json::from_str(&body)?;
    let n = &v["nva"]["neighbors"][0];
    Ok((
        v["nva"]["entries"].as_u64().unwrap_or(0),
        n["prefixes_received"].as_u64().unwrap_or(0),
        n["state"].as_str().unwrap_or_default().to_string(),
        n["last_error"].as_str().map(String::from),
    ))
}

/// The CPU time process `pid` has used (user + system), s.
fn cpu_s(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command's ")": state is field 3, utime and stime fields 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("/proc/PID/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .context("/proc/PID/stat fields")?
            .parse::<f64>()?)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

/// nve on h1 with the speaker on h2 as its neighbour: `n` routes, until installed or
/// `within` ran out.
fn one_scale(tag: &str, n: u32, within: Duration) -> Result<Scale> {
    let hosts = TwoHosts::new(tag)?;
    let listener = in_netns(&hosts.h2, || Ok(TcpListener::bind((H2_VTEP, 179))?))?;
    let config = TempFile(PathBuf::from(format!("/tmp/{}-nve.json", hosts.h1.name)));
    // The daemon's own stale time (120 s): its first install waits for the End-of-RIB.
    fs::write(
        &config.0,
        nve_config(json!({"stale_time": 120})).to_string(),
    )?;
    let path = config.0.to_str().context("config path")?;
    let d = Daemon::start(
        &hosts.h1,
        tag,
        H1_VTEP,
        "ul",
        &["--nva", "bgp", "--config", path],
    )?;
    listener.set_nonblocking(true)?;
    let accepted = Instant::now();
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if accepted.elapsed() > Duration::from_secs(10) {
                    bail!("nve did not connect within 10 s:\n{}", d.log_text());
                }
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    handshake(&mut stream)?;
    let up = Instant::now();
    while evpn_status(&d)?.2 != "established" {
        if up.elapsed() > WAIT {
            bail!("nve's session not established within {WAIT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let messages = updates(n)?;
    let updates = messages.len() - 1;
    let rss_before_kib = rss_kib(d.pid())?;
    let cpu_before = cpu_s(d.pid())?;
    let stop = AtomicBool::new(false);
    let (mut writer, mut reader) = (stream.try_clone()?, stream.try_clone()?);
    reader.set_read_timeout(Some(Duration::from_millis(200)))?;
    let stop = &stop;
    let t0 = Instant::now();
    let (sent, polled) = thread::scope(|s| {
        let sender = s.spawn(move || -> Result<f64> {
            for m in &messages {
                writer.write_all(m)?;
            }
            let sent = t0.elapsed().as_secs_f64();
            // KEEPALIVEs at a third of nve's hold time (9 s) until done.
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if last.elapsed() >= Duration::from_secs(3) {
                    writer.write_all(&wire::encode(&Message::Keepalive, true))?;
                    last = Instant::now();
                }
                thread::sleep(Duration::from_millis(50));
            }
            Ok(sent)
        });
        // Whatever nve sends (its End-of-RIB, KEEPALIVEs) is read and passed over.
        s.spawn(move || {
            let mut chunk = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                match reader.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => return,
                }
            }
        });
        let polled = poll_install(&d, n, t0, within);
        stop.store(true, Ordering::Relaxed);
        if polled.as_ref().map_or(true, |p| p.1.is_none()) {
            // A writer blocked on nve's window: unblock it.
            let _ = stream.shutdown(Shutdown::Both);
        }
        let sent = sender
            .join()
            .map_err(|_| anyhow::anyhow!("the speaker's writer panicked"))?;
        Ok::<_, anyhow::Error>((sent, polled))
    })?;
    let (received_s, installed_s, entries, session_error) = polled?;
    let fdb_entries =
        map_entries::<nve_common::maps::FdbKey, nve_common::maps::FdbEntry>(&d, "NVE_FDB")?;
    let rss_kib = rss_kib(d.pid())?;
    let cpu_s = cpu_s(d.pid())? - cpu_before;
    let _ = stream.shutdown(Shutdown::Both);
    drop(d);
    Ok(Scale {
        routes: n,
        updates,
        sent_s: sent.unwrap_or(f64::NAN),
        received_s,
        installed_s,
        entries,
        fdb_entries,
        rss_before_kib,
        rss_kib,
        cpu_s,
        session_error,
    })
}

/// Polls nve's status every 10 ms until `nva.entries` reaches `n` or `within` is over:
/// (received, installed, entries, the session's error if it dropped).
type Polled = (Option<f64>, Option<f64>, u64, Option<String>);

fn poll_install(d: &Daemon, n: u32, t0: Instant, within: Duration) -> Result<Polled> {
    let n = u64::from(n);
    let (mut received, mut error) = (None, None);
    loop {
        let (entries, prefixes, state, last_error) = evpn_status(d)?;
        let at = t0.elapsed().as_secs_f64();
        if prefixes >= n {
            received.get_or_insert(at);
        }
        if state != "established" && error.is_none() {
            error = Some(format!("{state} at {at:.1} s: {last_error:?}"));
        }
        if entries >= n {
            return Ok((received, Some(at), entries, error));
        }
        if t0.elapsed() > within {
            return Ok((received, None, entries, error));
        }
        thread::sleep(Duration::from_millis(10));
    }
}
