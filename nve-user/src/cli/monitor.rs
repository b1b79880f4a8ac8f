//! `nve monitor`: the packets the dataplane drops (and with `--all`, forwards), live, as
//! table lines or the daemon's JSON lines, filtered here.
use anyhow::Context as _;
use clap::Args;

use crate::{
    client::Client,
    monitor::{MonitorLine, MonitorRecord},
};

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Print the daemon's JSON lines instead of table lines.
    #[arg(long)]
    pub json: bool,
    /// Forwarded packets too, not only drops.
    #[arg(long)]
    pub all: bool,
    /// Only packets of this VN (its name, or a VNI: the VN's or a VXLAN header's).
    #[arg(long, value_name = "VN")]
    pub vn: Option<String>,
    /// Only packets seen on this interface (a VM port, the underlay, nve-vxlan).
    #[arg(long, value_name = "PORT")]
    pub port: Option<String>,
    /// Only packets with this drop reason or forward outcome (e.g. SPOOFED_SRC_MAC).
    #[arg(long, value_name = "REASON")]
    pub reason: Option<String>,
    /// Report one packet in N per CPU (the dataplane skips the others): keeps a flood from
    /// filling the ring buffer. 0 and 1: every packet.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub sample: u32,
}

impl MonitorArgs {
    fn wants(&self, r: &MonitorRecord) -> bool {
        self.vn.as_deref().is_none_or(|vn| r.in_vn(vn))
            && self.port.as_deref().is_none_or(|p| r.port == p)
            && self
                .reason
                .as_deref()
                .is_none_or(|want| r.reason.eq_ignore_ascii_case(want))
    }
}

/// Streams until the daemon ends it (or the command is interrupted, which detaches the
/// monitor: the daemon turns reporting off when the connection goes).
pub async fn monitor(c: &Client, args: MonitorArgs) -> anyhow::Result<()> {
    let path = format!("/v1/monitor?all={}&sample={}", args.all, args.sample);
    let mut lost_shown = 0;
    c.get_lines(&path, |text| {
        let line: MonitorLine = serde_json::from_str(text)
            .with_context(|| format!("a monitor line the daemon sent: {text}"))?;
        match line {
            MonitorLine::Lost { lost } => {
                if lost > lost_shown {
                    lost_shown = lost;
                    if args.json {
                        println!("{text}");
                    } else {
                        eprintln!(
                            "nve monitor: {lost} events lost (ring buffer full; try --sample)"
                        );
                    }
                }
            }
            MonitorLine::Packet(r) if args.wants(&r) => {
                if args.json {
                    println!("{text}");
                } else {
                    println!("{}", r.line());
                }
            }
            MonitorLine::Packet(_) => {}
        }
        Ok(())
    })
    .await
}
