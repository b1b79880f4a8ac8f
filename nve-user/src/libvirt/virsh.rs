//! virsh, libvirt's own client, as the events bridge's only link to libvirtd: nve does not
//! link libvirt (hosts without it run nve all the same). `virsh event --loop` is one
//! resident process holding libvirt's RPC connection and printing each lifecycle event as
//! one line the moment libvirtd sends it (virsh flushes every event); `virsh list` and
//! `virsh dumpxml` fill the bridge's domain cache off the event path. Every child runs with
//! `LC_ALL=C` (libvirt's words untranslated) and dies with the bridge.
use std::process::Stdio;

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader},
    process::{Child, ChildStdout, Command},
};

/// Longest event line kept; the rest of a longer line is dropped (it then reads as
/// [`super::event_line::Line::Other`]). libvirt's names are far shorter.
const MAX_LINE: usize = 16 * 1024;
/// How much of a dead `virsh event`'s stderr goes into the log.
const MAX_STDERR: usize = 4096;

/// virsh for one libvirt URI (`None`: virsh's default, `LIBVIRT_DEFAULT_URI` or root's
/// `qemu:///system`).
#[derive(Clone, Debug)]
pub struct Virsh {
    uri: Option<String>,
}

impl Virsh {
    pub fn new(uri: Option<String>) -> Self {
        Self { uri }
    }

    /// The URI, for the log.
    pub fn uri(&self) -> &str {
        self.uri.as_deref().unwrap_or("(virsh's default)")
    }

    fn command(&self) -> Command {
        let mut c = Command::new("virsh");
        if let Some(uri) = &self.uri {
            c.args(["-c", uri]);
        }
        c.env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// `virsh ARGS`: its stdout, or an error with its stderr.
    async fn output(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command()
            .args(args)
            .output()
            .await
            .context("running virsh (libvirt's client, e.g. Debian's libvirt-clients)")?;
        if !out.status.success() {
            bail!(
                "virsh {}: {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The names of the active domains (running or paused).
    pub async fn active_domains(&self) -> anyhow::Result<Vec<String>> {
        let names = self.output(&["list", "--name"]).await?;
        Ok(names
            .lines()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// The domain's XML as it runs (the taps libvirt named), or as defined if inactive.
    pub async fn dumpxml(&self, domain: &str) -> anyhow::Result<String> {
        self.output(&["dumpxml", "--", domain]).await
    }

    /// Starts `virsh event --loop --event lifecycle --timestamp`.
    pub fn events(&self) -> anyhow::Result<EventStream> {
        let mut child = self
            .command()
            .args(["event", "--loop", "--event", "lifecycle", "--timestamp"])
            .spawn()
            .context("starting `virsh event` (libvirt's client, e.g. Debian's libvirt-clients)")?;
        let stdout = child.stdout.take().context("virsh's stdout")?;
        Ok(EventStream {
            child,
            stdout: BufReader::new(stdout),
        })
    }
}

/// A running `virsh event --loop`: its lines as they come.
pub struct EventStream {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl EventStream {
    /// The next line (invalid UTF-8 replaced, cut at [`MAX_LINE`]), `None` once virsh
    /// closed its output (it exited, or is about to).
    pub async fn next_line(&mut self) -> std::io::Result<Option<String>> {
        let mut line = Vec::new();
        loop {
            let buf = self.stdout.fill_buf().await?;
            if buf.is_empty() {
                return Ok((!line.is_empty()).then(|| lossy(&line)));
            }
            let (take, end) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i, Some(i + 1)),
                None => (buf.len(), None),
            };
            let room = MAX_LINE.saturating_sub(line.len());
            line.extend_from_slice(&buf[..take.min(room)]);
            self.stdout.consume(end.unwrap_or(take));
            if end.is_some() {
                return Ok(Some(lossy(&line)));
            }
        }
    }

    /// Waits for virsh to exit: its status and the end of its stderr, for the log.
    pub async fn ended(mut self) -> String {
        let mut err = Vec::new();
        if let Some(stderr) = self.child.stderr.take() {
            let _ = stderr.take(MAX_STDERR as u64).read_to_end(&mut err).await;
        }
        let status = match self.child.wait().await {
            Ok(s) => s.to_string(),
            Err(e) => format!("not waited for: {e}"),
        };
        format!("{status}: {}", lossy(&err).trim())
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches('\r')
        .to_string()
}
