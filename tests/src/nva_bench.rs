//! NVA figures for the bench: how long after an associate on one NVE the vNIC's MAC is in
//! another NVE's FDB, through a real etcd (publish, watch, install).
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::{
    etcd::EtcdServer,
    overlay::{H1_VTEP, H2_VTEP, TwoHosts, VN, VNI},
    rig::Daemon,
};

/// Associate -> visible at the other NVE, microseconds, `runs` times (one new vNIC each).
pub fn move_visible(runs: u32) -> Result<Vec<f64>> {
    let rig = TwoHosts::new("bnva")?;
    let etcd = EtcdServer::start(&rig.h2, H2_VTEP)?;
    let nva = ["--nva", etcd.url.as_str()];
    let d1 = Daemon::start(&rig.h1, "bnva1", H1_VTEP, "ul", &nva)?;
    let d2 = Daemon::start(&rig.h2, "bnva2", H2_VTEP, "ul", &nva)?;
    for d in [&d1, &d2] {
        d.nve(&["vn", "add", VN, "--vni", &VNI.to_string()])?;
    }
    let mut samples = Vec::with_capacity(runs as usize);
    for i in 0..runs {
        let mac = format!("02:00:00:aa:{:02x}:{:02x}", i >> 8, i & 0xff);
        let body = json!({"op": "associate", "vn": VN, "port": "vm1p", "macs": [mac]});
        let start = Instant::now();
        let (status, text) = d1.http(
            "POST",
            &format!("/v1/vnics/00000000-0000-4000-8000-{i:012x}/0"),
            body.to_string().as_bytes(),
        )?;
        if status != 200 {
            bail!("associate: {status} {text}");
        }
        loop {
            let (_, fdb) = d2.http("GET", "/v1/fdb", b"")?;
            let fdb: Value = serde_json::from_str(&fdb)?;
            let seen = fdb
                .as_array()
                .is_some_and(|a| a.iter().any(|e| e["mac"] == mac.as_str()));
            if seen {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("{mac} not at the other NVE within 10 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    Ok(samples)
}
