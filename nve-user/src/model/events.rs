//! Every change to the model is an [`Event`] applied by one function, so the journal can
//! record and replay exactly what the API did.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Model, Result, VnicId};
use crate::{
    api::{AttachPort, CreateVn, RemoteMac, VnicRequest, VnicView},
    mac::MacAddr,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    CreateVn(CreateVn),
    DeleteVn {
        vn: String,
    },
    AttachPort {
        vn: String,
        req: AttachPort,
    },
    DetachPort {
        vn: String,
        port: String,
        vid: u16,
    },
    AddRemote {
        vn: String,
        req: RemoteMac,
    },
    DelRemote {
        vn: String,
        mac: MacAddr,
    },
    AddFlood {
        vn: String,
        vtep: IpAddr,
    },
    DelFlood {
        vn: String,
        vtep: IpAddr,
    },
    Signal {
        id: VnicId,
        req: VnicRequest,
    },
    /// Soft associations whose hold time ran out are removed.
    Expire,
    /// A VM announced its MAC (and address) on its port.
    Learn(super::Announced),
    /// The other NVEs' entries, as the NVA has them now (replaces the previous): a
    /// session's first sync.
    Nva(crate::nva::Table),
    /// What changed in the NVA since.
    NvaDelta(crate::nva::Delta),
    /// VDP on for a trunk port, with this bridge's timers.
    VdpEnable {
        port: String,
        timers: crate::vdp::lldp::Timers,
    },
    VdpDisable {
        port: String,
    },
    /// A station's VSI request heard on `port`; `hold_ms`: the keep-alive timeout.
    VdpRequest {
        port: String,
        manager: crate::vdp::Id16,
        vsi: crate::vdp::tlv::Vsi,
        hold_ms: u64,
    },
    /// The station acknowledged the unsolicited DeAssoc of this VSI.
    VdpForget {
        id: VnicId,
    },
}

impl Model {
    /// Applies `event` at time `now` (ms); a rejected event leaves the model as it was
    /// only if the caller applies it to a copy (as the daemon does).
    pub fn apply(&mut self, event: &Event, now: u64) -> Result<Option<VnicView>> {
        match event {
            Event::CreateVn(req) => self.create_vn(req),
            Event::DeleteVn { vn } => self.delete_vn(vn, now),
            Event::AttachPort { vn, req } => self.attach_port(vn, req, now),
            Event::DetachPort { vn, port, vid } => self.detach_port(vn, port, *vid, now),
            Event::AddRemote { vn, req } => self.add_remote(vn, req),
            Event::DelRemote { vn, mac } => self.del_remote(vn, *mac),
            Event::AddFlood { vn, vtep } => self.add_flood(vn, *vtep),
            Event::DelFlood { vn, vtep } => self.del_flood(vn, *vtep),
            Event::Signal { id, req } => return self.signal(id, req, now),
            Event::VdpRequest {
                port,
                manager,
                vsi,
                hold_ms,
            } => return self.vdp_request(port, *manager, vsi, *hold_ms, now),
            Event::VdpEnable { port, timers } => self.vdp_enable(port, *timers),
            Event::VdpDisable { port } => self.vdp_disable(port, now),
            Event::VdpForget { id } => {
                self.vdp_forget(id);
                Ok(())
            }
            Event::Learn(a) => self.learn(a),
            Event::Nva(table) => {
                self.nva = table.clone();
                Ok(())
            }
            Event::NvaDelta(delta) => {
                self.nva.apply(delta);
                Ok(())
            }
            Event::Expire => {
                self.expire(now);
                Ok(())
            }
        }
        .map(|()| None)
    }
}
