//! A real etcd (Debian's etcd-server) inside a rig namespace, on an address of the rig only;
//! killed and its data removed on drop.
use std::{
    path::PathBuf,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::rig::Netns;

pub struct EtcdServer {
    child: Child,
    data: PathBuf,
    /// http://ADDR:2379
    pub url: String,
}

impl EtcdServer {
    /// Starts etcd in `ns` listening on `addr` (an address of the namespace) and waits
    /// until it answers.
    pub fn start(ns: &Netns, addr: &str) -> Result<Self> {
        let data = PathBuf::from(format!("/tmp/{}-etcd", ns.name));
        let _ = std::fs::remove_dir_all(&data);
        let url = format!("http://{addr}:2379");
        let child = ns
            .command("etcd")
            .args(["--name", "nve-rig", "--data-dir"])
            .arg(&data)
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &format!("http://{addr}:2380")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{addr}:2380"),
            ])
            .args(["--initial-cluster", &format!("nve-rig=http://{addr}:2380")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning etcd (Debian's etcd-server)")?;
        let server = Self { child, data, url };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let probe = ns.exec(&[
                "curl",
                "-sf",
                "--max-time",
                "1",
                "-X",
                "POST",
                &format!("{}/v3/kv/range", server.url),
                "-d",
                r#"{"key":"AA=="}"#,
            ]);
            if probe.is_ok() {
                return Ok(server);
            }
            thread::sleep(Duration::from_millis(100));
        }
        bail!("etcd did not answer on {} within 10 s", server.url)
    }

    /// Kills etcd (the NVA goes away; its data stays for a restart).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
