//! `nve vdp enable|disable|status`: VDP (IEEE 802.1Qbg) on trunk ports.
use clap::Subcommand;

use super::{JsonFlag, print, tables};
use crate::{api::VdpPortView, client::Client, vdp::lldp::Timers};

#[derive(Debug, Subcommand)]
pub enum VdpCommand {
    /// Speak LLDP/EVB, ECP and VDP on PORT, a trunk from the hypervisor's edge relay: its
    /// stations associate VSIs (vNICs) with VNs by GroupID (the VNI) and get the VID to tag
    /// their frames with. Again with other timers: changes them.
    Enable {
        /// The trunk port (an interface name).
        port: String,
        /// ECP retransmissions before giving up (0-7).
        #[arg(long, default_value_t = Timers::default().retries)]
        retries: u8,
        /// ECP's retransmission time as an exponent: 10 us x 2^RTE (0-31).
        #[arg(long, default_value_t = Timers::default().rte)]
        rte: u8,
        /// VDP's resource wait delay exponent (0-31).
        #[arg(long, default_value_t = Timers::default().rwd)]
        rwd: u8,
        /// VDP's keep-alive exponent (0-31): stations repeat each association every
        /// 10 us x 2^RKA, and one unheard for 1.5 times that is de-associated.
        #[arg(long, default_value_t = Timers::default().rka)]
        rka: u8,
    },
    /// Stop VDP on PORT: its VSIs are de-associated, and the station told.
    Disable {
        /// The trunk port.
        port: String,
    },
    /// Per port: the timers, the station, ECP's counters and the VSIs with their VIDs.
    Status(JsonFlag),
}

pub async fn vdp(c: &Client, command: VdpCommand) -> anyhow::Result<()> {
    match command {
        VdpCommand::Enable {
            port,
            retries,
            rte,
            rwd,
            rka,
        } => {
            let timers = Timers {
                retries,
                rte,
                rwd,
                rka,
            };
            c.put(&format!("/v1/vdp/ports/{port}"), &timers).await?;
        }
        VdpCommand::Disable { port } => c.delete(&format!("/v1/vdp/ports/{port}")).await?,
        VdpCommand::Status(j) => {
            let ports: Vec<VdpPortView> = c.get("/v1/vdp").await?;
            print(&ports, j.json, tables::vdp)?;
        }
    }
    Ok(())
}
