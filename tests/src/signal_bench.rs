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

use crate::{
    overlay::{self, H1_VTEP, H2_VTEP, TwoHosts, VM1_MAC, VM2_MAC, VN},
    rig::{Daemon, PROBE_ETHERTYPE, mac_str, packet_socket},
};

/// Concurrent clients in the scale run.
pub const CLIENTS: u32 = 8;

pub struct Figures {
    /// Associate request sent -> first frame of the vNIC at the remote VM, microseconds.
    pub first_frame_us: Vec<f64>,
    /// Seconds for the scale run, its size, and the daemon's RSS after it (KiB).
    pub scale_secs: f64,
    pub scale_n: u32,
    pub rss_kib: u64,
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

pub fn run(associations: u32, scale_n: u32) -> Result<Figures> {
    let rig = TwoHosts::new("bsig")?;
    overlay::kernel_vxlan(&rig.h2, H2_VTEP, H1_VTEP, "vm2p", &[VM1_MAC])?;
    let d = Daemon::start(&rig.h1, "bsig", H1_VTEP, "ul", &[])?;
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
    thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let d = &d;
                s.spawn(move || -> Result<()> {
                    for i in (c..scale_n).step_by(CLIENTS as usize) {
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
    })?;
    let scale_secs = start.elapsed().as_secs_f64();
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid()))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Figures {
        first_frame_us,
        scale_secs,
        scale_n,
        rss_kib,
    })
}
