//! Signaling figures for the bench: how long from an associate request until the first
//! frame of the vNIC arrives at a remote VM, and what 10,000 associations cost.
use std::{
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use nve_common::maps::{FDB_MAP, FdbEntry, FdbKey};

use crate::{
    overlay::{self, H1_VTEP, H2_VTEP, TwoHosts, VM1_MAC, VM2_MAC, VN},
    rig::{Daemon, PROBE_ETHERTYPE, mac_str, packet_socket},
};

/// Concurrent clients in the scale run.
pub const CLIENTS: u32 = 8;

/// How long the large run's steps may take together.
pub const LARGE_BUDGET: Duration = Duration::from_secs(120);

pub struct Figures {
    /// Associate request sent -> first frame of the vNIC at the remote VM, microseconds.
    pub first_frame_us: Vec<f64>,
    /// Seconds for the scale run, its size, and the daemon's RSS after it (KiB).
    pub scale_secs: f64,
    pub scale_n: u32,
    pub rss_kib: u64,
    /// The scale run carried on, in steps, to the large size.
    pub large: Large,
}

/// vNICs associated in steps on top of the scale run's, then the daemon killed and started
/// on its stored state.
#[derive(Debug, Default, serde::Serialize)]
pub struct Large {
    pub steps: Vec<Step>,
    /// Why the next step did not run (its time extrapolated past what was left).
    pub skipped: Option<String>,
    /// SIGKILL -> the restarted daemon answering, its dataplane brought to every vNIC, s.
    pub restart_s: Option<f64>,
    /// FDB entries in the dataplane after the restart, and the daemon's RSS then, KiB.
    pub restart_fdb_entries: usize,
    pub restart_rss_kib: u64,
}

/// One step of the large run.
#[derive(Debug, serde::Serialize)]
pub struct Step {
    /// vNICs associated in all after it.
    pub vnics: u32,
    /// Seconds for this step's associations (from the previous step's total).
    pub secs: f64,
    pub rss_kib: u64,
    /// FDB entries in the dataplane after it.
    pub fdb_entries: usize,
}

/// `POST /v1/vnics/{vm}/0` with `body` (an op); an error unless nve answered 200.
pub fn post(d: &Daemon, vm: &str, body: serde_json::Value) -> Result<()> {
    let (status, text) = d.http(
        "POST",
        &format!("/v1/vnics/{vm}/0"),
        body.to_string().as_bytes(),
    )?;
    if status != 200 {
        bail!("{status}: {text}");
    }
    Ok(())
}

/// vNIC `i`'s VM UUID.
pub fn uuid(i: u32) -> String {
    format!("00000000-0000-4000-8000-{i:012x}")
}

/// `associations` timed one by one, then `scale_n` at once, then on to `large_n` in steps.
pub fn run(associations: u32, scale_n: u32, large_n: u32) -> Result<Figures> {
    let rig = TwoHosts::new("bsig")?;
    overlay::kernel_vxlan(&rig.h2, H2_VTEP, H1_VTEP, "vm2p", &[VM1_MAC])?;
    let mut d = Daemon::start(&rig.h1, "bsig", H1_VTEP, "ul", &[])?;
    overlay::serve_vn(&d, H2_VTEP, VM2_MAC)?;

    let tx = packet_socket(&rig.vm1.ns, "eth0", PROBE_ETHERTYPE)?;
    let rx = packet_socket(&rig.vm2.ns, "eth0", PROBE_ETHERTYPE)?;
    let seq = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (seen_tx, seen) = mpsc::channel::<(u32, Instant)>();
    let receiver = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 128];
            let _ = crate::rig::recv_timeout(&rx, Duration::from_millis(100));
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: recv into our buffer.
                let n =
                    unsafe { libc::recv(rx.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n >= 18 {
                    let s = u32::from_be_bytes([buf[14], buf[15], buf[16], buf[17]]);
                    let _ = seen_tx.send((s, Instant::now()));
                }
            }
        })
    };
    let sender = {
        let (seq, stop) = (seq.clone(), stop.clone());
        thread::spawn(move || {
            let mut frame = [0u8; 60];
            frame[..6].copy_from_slice(&VM2_MAC);
            frame[6..12].copy_from_slice(&VM1_MAC);
            frame[12..14].copy_from_slice(&PROBE_ETHERTYPE.to_be_bytes());
            while !stop.load(Ordering::Relaxed) {
                let s = seq.load(Ordering::Relaxed);
                if s == 0 {
                    thread::sleep(Duration::from_micros(200));
                    continue;
                }
                frame[14..18].copy_from_slice(&s.to_be_bytes());
                // SAFETY: send a buffer we own on a bound packet socket.
                unsafe { libc::send(tx.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
                thread::sleep(Duration::from_micros(5));
            }
        })
    };

    let vm = uuid(1);
    let vnic = |op: &str| json!({"op": op, "vn": VN, "port": "vm1p", "macs": [mac_str(VM1_MAC)]});
    let mut first_frame_us = Vec::new();
    for i in 1..=associations {
        post(&d, &vm, vnic("pre-associate"))?;
        while seen.try_recv().is_ok() {}
        seq.store(i, Ordering::Relaxed);
        let t0 = Instant::now();
        post(&d, &vm, vnic("associate"))?;
        let deadline = t0 + Duration::from_secs(2);
        loop {
            let (s, at) = seen
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .context("no frame after associate")?;
            if s == i {
                first_frame_us.push(at.duration_since(t0).as_secs_f64() * 1e6);
                break;
            }
        }
        seq.store(0, Ordering::Relaxed);
        post(&d, &vm, json!({"op": "disassociate"}))?;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    let _ = receiver.join();

    // The scale run: CLIENTS hypervisor threads at once, each associating its share.
    let start = Instant::now();
    associate_many(&d, 0..scale_n)?;
    let scale_secs = start.elapsed().as_secs_f64();
    let rss_kib = crate::nva_bench::rss_kib(d.pid())?;
    let large = large(&mut d, scale_n, scale_secs, large_n)?;
    Ok(Figures {
        first_frame_us,
        scale_secs,
        scale_n,
        rss_kib,
        large,
    })
}

/// Associates the vNICs of `range` (vNIC `i`: VM `uuid(1000 + i)`, one MAC) from CLIENTS
/// hypervisor threads at once, each its share.
fn associate_many(d: &Daemon, range: std::ops::Range<u32>) -> Result<()> {
    thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let range = range.clone();
                s.spawn(move || -> Result<()> {
                    for i in range.skip(c as usize).step_by(CLIENTS as usize) {
                        let mac = format!(
                            "02:10:{:02x}:{:02x}:{:02x}:01",
                            (i >> 16) & 0xff,
                            (i >> 8) & 0xff,
                            i & 0xff
                        );
                        post(
                            d,
                            &uuid(1000 + i),
                            json!({"op": "associate", "vn": VN, "port": "vm1p", "macs": [mac]}),
                        )?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        }
        Ok(())
    })
}

/// The steps of the large run after `from` vNICs (associated in `from_secs`): three times
/// as many, then `to`. Each is skipped, with the ones after it, if its time extrapolated
/// from the steps before (the cost per association growing as it did, else linearly with
/// the table) exceeds what is left of [`LARGE_BUDGET`]. Then the daemon is killed and
/// started again on its stored state, which it brings the dataplane to.
fn large(d: &mut Daemon, from: u32, from_secs: f64, to: u32) -> Result<Large> {
    let start = Instant::now();
    let mut out = Large::default();
    let mut done = from;
    // Seconds per association of the last step, and the exponent of its growth.
    let mut per = from_secs / f64::from(from.max(1));
    let mut growth = 1.0;
    for n in [from * 3, to].into_iter().filter(|&n| n > from && n <= to) {
        if n <= done {
            continue;
        }
        let left = LARGE_BUDGET.saturating_sub(start.elapsed()).as_secs_f64();
        let predicted = per * f64::from(n - done) * (f64::from(n) / f64::from(done)).powf(growth);
        if predicted > left {
            out.skipped = Some(format!(
                "{n} vNICs: {predicted:.0} s predicted, {left:.0} s of the budget left"
            ));
            eprintln!("    {}", out.skipped.as_deref().unwrap_or_default());
            return Ok(out);
        }
        eprintln!("    on to {n} vNICs ({left:.0} s left, {predicted:.1} s predicted)");
        let t = Instant::now();
        associate_many(d, done..n)?;
        let secs = t.elapsed().as_secs_f64();
        let now_per = secs / f64::from(n - done);
        growth = ((now_per / per).ln() / (f64::from(n) / f64::from(done)).ln()).clamp(0.0, 2.0);
        per = now_per;
        out.steps.push(Step {
            vnics: n,
            secs,
            rss_kib: crate::nva_bench::rss_kib(d.pid())?,
            fdb_entries: crate::nva_bench::map_entries::<FdbKey, FdbEntry>(d, FDB_MAP)?,
        });
        done = n;
    }
    d.kill();
    let t = Instant::now();
    d.respawn()?;
    out.restart_s = Some(t.elapsed().as_secs_f64());
    out.restart_fdb_entries = crate::nva_bench::map_entries::<FdbKey, FdbEntry>(d, FDB_MAP)?;
    out.restart_rss_kib = crate::nva_bench::rss_kib(d.pid())?;
    Ok(out)
}
