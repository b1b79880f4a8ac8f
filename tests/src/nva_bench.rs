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
    (0..runs)
        .map(|i| {
            let mac = format!("02:00:00:aa:{:02x}:{:02x}", i >> 8, i & 0xff);
            associate_visible(&d1, &d2, i, &mac)
        })
        .collect()
}

/// What one NVE holds with `macs` remote MACs published by other NVEs through etcd.
#[derive(Debug, serde::Serialize)]
pub struct AtScale {
    pub macs: u32,
    /// From the first write to etcd until the NVE has every entry (the writes, 128 per
    /// transaction, are in this time: they are what the NVE watches).
    pub install_s: f64,
    /// Of which writing to etcd.
    pub written_s: f64,
    /// Entries in the dataplane's FDB and ARP maps afterwards.
    pub fdb_entries: usize,
    pub arp_entries: usize,
    /// The daemon's resident memory before and after, KiB.
    pub rss_before_kib: u64,
    pub rss_kib: u64,
    /// Associate on another NVE -> visible at this one, with `macs` installed, us.
    pub move_visible_us: Vec<f64>,
    /// Restarted daemon -> every entry back (from its state dir and a full sync), s.
    pub restart_s: f64,
}

/// VTEPs the published MACs are spread over (hosts of the rig's underlay subnet that do not
/// exist: the NVE resolves no next hop for them, which costs it nothing here).
const SCALE_VTEPS: u32 = 16;

fn scale_mac(i: u32) -> String {
    let b = i.to_be_bytes();
    format!("02:5c:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

/// Publishes `macs` claims in etcd as other NVEs would (key and JSON value as nve writes
/// them), 128 puts per transaction (etcd's default limit), through etcd's JSON gateway.
fn publish_claims(ns: &crate::rig::Netns, url: &str, macs: u32) -> Result<()> {
    use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
    use std::io::Write as _;
    let ids: Vec<u32> = (0..macs).collect();
    for chunk in ids.chunks(128) {
        let puts: Vec<Value> = chunk
            .iter()
            .map(|&i| {
                let vtep = format!("10.0.0.{}", 10 + i % SCALE_VTEPS);
                let b = i.to_be_bytes();
                let ip = format!("100.{}.{}.{}", 64 + b[1], b[2], b[3]);
                let key = format!(
                    "{}{VNI}/mac/{}/vtep/{vtep}",
                    nve_user::nva::PREFIX,
                    scale_mac(i)
                );
                let value = json!({"vtep": vtep, "ips": [ip], "seq": 0}).to_string();
                json!({"request_put": {"key": B64.encode(key), "value": B64.encode(value)}})
            })
            .collect();
        let body = json!({ "success": puts }).to_string();
        let mut curl = ns
            .command("curl")
            .args([
                "-sf",
                "--max-time",
                "10",
                "-X",
                "POST",
                "--data-binary",
                "@-",
            ])
            .arg(format!("{url}/v3/kv/txn"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()?;
        curl.stdin
            .take()
            .expect("piped")
            .write_all(body.as_bytes())?;
        if !curl.wait()?.success() {
            bail!("etcd transaction failed");
        }
    }
    Ok(())
}

/// The resident memory of process `pid` (VmRSS), KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))
}

/// The number of entries in one of the daemon's pinned hash maps.
pub fn map_entries<K: aya::Pod, V: aya::Pod>(d: &Daemon, name: &str) -> Result<usize> {
    let data = aya::maps::MapData::from_pin(d.pin_dir().join(name))?;
    let map: aya::maps::HashMap<_, K, V> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data))?;
    Ok(map.keys().count())
}

/// Status field `nva.entries` of `d` (0 before the first sync).
pub fn nva_entries(d: &Daemon) -> Result<u64> {
    let (_, status) = d.http("GET", "/v1/status", b"")?;
    let status: Value = serde_json::from_str(&status)?;
    Ok(status["nva"]["entries"].as_u64().unwrap_or(0))
}

fn wait_entries(d: &Daemon, want: u32, within: Duration) -> Result<()> {
    let start = Instant::now();
    while nva_entries(d)? < u64::from(want) {
        if start.elapsed() > within {
            bail!("{} of {want} NVA entries after {within:?}", nva_entries(d)?);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Associates a new vNIC (MAC `mac`) on `from`; time until `to` has the MAC, us.
fn associate_visible(from: &Daemon, to: &Daemon, i: u32, mac: &str) -> Result<f64> {
    let body = json!({"op": "associate", "vn": VN, "port": "vm1p", "macs": [mac]});
    let start = Instant::now();
    let (status, text) = from.http(
        "POST",
        &format!("/v1/vnics/00000000-0000-4000-8000-{i:012x}/0"),
        body.to_string().as_bytes(),
    )?;
    if status != 200 {
        bail!("associate: {status} {text}");
    }
    loop {
        let (_, fdb) = to.http("GET", &format!("/v1/fdb?mac={mac}"), b"")?;
        let fdb: Value = serde_json::from_str(&fdb)?;
        if fdb.as_array().is_some_and(|a| !a.is_empty()) {
            return Ok(start.elapsed().as_secs_f64() * 1e6);
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("{mac} not at the other NVE within 10 s");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// One NVE (h2's) with `macs` remote MACs from etcd: install time, map entries, RSS, move
/// latency at that scale (`probes` associations on h1), restart.
pub fn at_scale(macs: u32, probes: u32) -> Result<AtScale> {
    use nve_common::maps::{ArpEntry, ArpKey, FdbEntry, FdbKey};
    let rig = TwoHosts::new("bscl")?;
    let etcd = EtcdServer::start(&rig.h2, H2_VTEP)?;
    let nva = ["--nva", etcd.url.as_str()];
    let d1 = Daemon::start(&rig.h1, "bscl1", H1_VTEP, "ul", &nva)?;
    let mut d2 = Daemon::start_keeping(&rig.h2, "bscl2", H2_VTEP, "ul", &nva)?;
    for d in [&d1, &d2] {
        d.nve(&["vn", "add", VN, "--vni", &VNI.to_string()])?;
    }
    let rss_before_kib = rss_kib(d2.pid())?;
    let start = Instant::now();
    publish_claims(&rig.h2, &etcd.url, macs)?;
    let written_s = start.elapsed().as_secs_f64();
    wait_entries(&d2, macs, Duration::from_secs(600))?;
    let install_s = start.elapsed().as_secs_f64();
    let fdb_entries = map_entries::<FdbKey, FdbEntry>(&d2, "NVE_FDB")?;
    let arp_entries = map_entries::<ArpKey, ArpEntry>(&d2, "NVE_ARP")?;
    let rss_kib = rss_kib(d2.pid())?;
    let move_visible_us = (0..probes)
        .map(|i| {
            associate_visible(
                &d1,
                &d2,
                i,
                &format!("02:00:00:bb:{:02x}:{:02x}", i >> 8, i & 0xff),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    d2.terminate()?;
    let start = Instant::now();
    d2.respawn()?;
    wait_entries(&d2, macs + probes, Duration::from_secs(600))?;
    let restart_s = start.elapsed().as_secs_f64();
    Ok(AtScale {
        macs,
        install_s,
        written_s,
        fdb_entries,
        arp_entries,
        rss_before_kib,
        rss_kib,
        move_visible_us,
        restart_s,
    })
}
