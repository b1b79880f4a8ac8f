//! VDP's part of the model: the trunk ports nve speaks VDP on, and what it answered each
//! VSI. A VSI request (`vdp::tlv::Vsi`) becomes the same signaling the REST API sends for
//! the vNIC (VM = the VSIID, index 0): GroupID -> VN by VNI, null VID -> the port's
//! allocator assigns one, a VID -> honoured or refused, keep-alive -> hold time. What the
//! bridge answered is kept until the VSI goes: a VSI whose vNIC is gone for any other
//! reason than the station's own de-associate is owed an unsolicited DeAssoc.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{IFNAME_MAX, Model, Result, VnicId, format_err};
use crate::{
    api::{Migration, VdpPortView, VidRequest, VidWord, VnicRequest, VnicView, VsiView},
    error::{Error, ErrorCode},
    mac::MacAddr,
    vdp::{
        Id16,
        lldp::Timers,
        tlv::{HINT_MIGRATE_TO, Mode, Vsi},
    },
    vnic::Op,
};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vdp {
    /// Trunk ports with VDP on -> this bridge's timers there.
    pub ports: BTreeMap<String, Timers>,
    /// VSIs associated through VDP, and those owed an unsolicited DeAssoc.
    #[serde(with = "super::pairs")]
    pub vsis: BTreeMap<VnicId, VsiRecord>,
}

impl Vdp {
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty() && self.vsis.is_empty()
    }
}

/// The bridge's last answer to a VSI: what an unsolicited DeAssoc repeats.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsiRecord {
    pub port: String,
    pub manager: Id16,
    pub vsi: Vsi,
}

/// The vNIC a VSI is: its VSIID as the VM, index 0 (one vNIC per VSI).
pub fn vnic_of(vsi: &Vsi) -> VnicId {
    VnicId {
        vm: vsi.vsiid.to_string(),
        index: 0,
    }
}

fn vdp_err(code: ErrorCode, message: String) -> Error {
    Error::new(code, message)
}

impl Model {
    pub fn vdp(&self) -> &Vdp {
        &self.vdp
    }

    /// Turns VDP on for `port` with `timers` (again: new timers).
    pub fn vdp_enable(&mut self, port: &str, timers: Timers) -> Result<()> {
        if port.is_empty() || port.len() > IFNAME_MAX || port.contains(['/', ' ']) {
            return Err(format_err(format!(
                "port {port:?}: an interface name of 1 to {IFNAME_MAX} bytes"
            )));
        }
        timers.check().map_err(format_err)?;
        self.vdp.ports.insert(port.to_string(), timers);
        Ok(())
    }

    /// Turns VDP off for `port`: its VSIs are de-associated and forgotten (the port's
    /// session tells the station before it ends).
    pub fn vdp_disable(&mut self, port: &str, now: u64) -> Result<()> {
        if self.vdp.ports.remove(port).is_none() {
            return Err(vdp_err(
                ErrorCode::ENotFound,
                format!("VDP is not on for port {port}"),
            ));
        }
        let ids: Vec<VnicId> = self
            .vdp
            .vsis
            .iter()
            .filter(|(_, r)| r.port == port)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.remove_vnic(&id, now);
            self.vdp.vsis.remove(&id);
        }
        Ok(())
    }

    /// Applies a station's VSI request heard on `port`; `hold_ms` is the keep-alive
    /// timeout the two sides' timers give. Returns the vNIC (absent after DeAssoc).
    pub fn vdp_request(
        &mut self,
        port: &str,
        manager: Id16,
        vsi: &Vsi,
        hold_ms: u64,
        now: u64,
    ) -> Result<Option<VnicView>> {
        if !self.vdp.ports.contains_key(port) {
            return Err(vdp_err(
                ErrorCode::ENotFound,
                format!("VDP is not on for port {port}"),
            ));
        }
        let id = vnic_of(vsi);
        let req = self.vdp_signal(port, vsi, hold_ms, &id)?;
        let view = self.signal(&id, &req, now)?;
        match &view {
            Some(v) => {
                let filters = vsi.filters.iter().map(|f| f.with_vid(v.vid)).collect();
                let answered = Vsi {
                    status: 0,
                    filters,
                    ..vsi.clone()
                };
                self.vdp.vsis.insert(
                    id,
                    VsiRecord {
                        port: port.to_string(),
                        manager,
                        vsi: answered,
                    },
                );
            }
            None => {
                self.vdp.vsis.remove(&id);
            }
        }
        Ok(view)
    }

    /// The signaling message a VSI request is.
    fn vdp_signal(&self, port: &str, vsi: &Vsi, hold_ms: u64, id: &VnicId) -> Result<VnicRequest> {
        let (op, reserve) = match vsi.mode {
            Mode::PreAssoc => (Op::PreAssociate, false),
            Mode::PreAssocRr => (Op::PreAssociate, true),
            Mode::Assoc => (Op::Associate, false),
            Mode::DeAssoc => (Op::Disassociate, false),
        };
        let request_id = self.vnics.get(id).map_or(1, |v| v.request_id + 1);
        let mut req = VnicRequest {
            op,
            request_id,
            vn: None,
            macs: Vec::new(),
            ipv4: Vec::new(),
            ipv6: Vec::new(),
            port: Some(port.to_string()),
            vid: VidRequest::Word(VidWord::Assign),
            migration: Migration::None,
            hold_time: None,
            reserve,
        };
        if op == Op::Disassociate {
            return Ok(req);
        }
        if !vsi.filter_format.has_mac() {
            return Err(format_err(format!(
                "filter format {}: nve needs the VSI's MACs (formats 2 and 4)",
                vsi.filter_format as u8
            )));
        }
        let first = vsi.filters[0];
        if vsi
            .filters
            .iter()
            .any(|f| f.group != first.group || f.vid() != first.vid())
        {
            return Err(format_err(
                "the filter entries name more than one GroupID or VID: one VSI is one vNIC in one VN".into(),
            ));
        }
        req.vn = Some(self.vdp_vn(port, first.group, first.vid())?);
        req.macs = vsi
            .filters
            .iter()
            .filter_map(|f| f.mac)
            .collect::<Vec<MacAddr>>();
        req.vid = match (first.group, first.vid()) {
            (_, vid @ 1..) => VidRequest::Vid(vid),
            (Some(_), 0) => VidRequest::Word(VidWord::Assign),
            // Without a GroupID, VID 0 is the port's untagged VN (an edge relay without
            // VLANs: what lldpad sends for libvirt's macvtap on a plain interface).
            (None, 0) => VidRequest::Word(VidWord::Untagged),
        };
        if vsi.status & HINT_MIGRATE_TO != 0 {
            req.migration = Migration::MigratingIn(std::net::Ipv4Addr::UNSPECIFIED);
        }
        req.hold_time = Some(hold_ms.div_ceil(1000).clamp(1, super::vnics::HOLD_TIME_MAX));
        Ok(req)
    }

    /// The VN a filter names: by GroupID (the VNI, IEEE 802.1Qcy), or without one by the
    /// VN the port's VID (0: untagged) is bound to.
    fn vdp_vn(&self, port: &str, group: Option<u32>, vid: u16) -> Result<String> {
        let unknown = |m: String| vdp_err(ErrorCode::EUnknownVn, m);
        match group {
            Some(g) => {
                if g >> 24 != 0 {
                    return Err(unknown(format!(
                        "GroupID {g:#x}: a VNI is 24 bits (IEEE 802.1Qcy)"
                    )));
                }
                let local = self.vns.iter().find(|(_, vn)| vn.vni == g).map(|(n, _)| n);
                let nva = || {
                    self.nva
                        .vns
                        .iter()
                        .find(|(_, d)| d.vni == g)
                        .map(|(n, _)| n)
                };
                local
                    .or_else(nva)
                    .cloned()
                    .ok_or_else(|| unknown(format!("GroupID {g}: no VN has VNI {g}")))
            }
            None => {
                let vni = self
                    .port_vids
                    .get(port)
                    .and_then(|v| v.bindings().find(|&(v, _)| v == vid))
                    .map(|(_, vni)| vni)
                    .ok_or_else(|| {
                        unknown(format!(
                            "VID {vid} on port {port} carries no VN: name the VN with a GroupID, or bind the VID first (nve port attach VN {port} --vid {vid})"
                        ))
                    })?;
                let name = self
                    .vns
                    .iter()
                    .find(|(_, vn)| vn.vni == vni)
                    .map(|(n, _)| n);
                name.cloned()
                    .ok_or_else(|| unknown(format!("VNI {vni} has no VN here")))
            }
        }
    }

    /// Forgets a VSI the station was told of (its unsolicited DeAssoc was acknowledged),
    /// unless it came back meanwhile.
    pub fn vdp_forget(&mut self, id: &VnicId) {
        if !self.vnics.contains_key(id) {
            self.vdp.vsis.remove(id);
        }
    }

    /// The VDP ports as `GET /v1/vdp` shows them, without their live sessions.
    pub fn vdp_views(&self) -> Vec<VdpPortView> {
        let vsis = |port: &str| -> Vec<VsiView> {
            let records = self.vdp.vsis.iter().filter(|(_, r)| r.port == port);
            records
                .map(|(id, r)| {
                    let vnic = self.vnics.get(id).filter(|v| v.params.port == port);
                    VsiView {
                        vsiid: r.vsi.vsiid.to_string(),
                        manager: r.manager,
                        type_id: r.vsi.type_id,
                        type_version: r.vsi.type_version,
                        state: vnic.map(|v| v.state),
                        vn: vnic.map(|v| v.params.vn.clone()),
                        vni: vnic.map(|v| v.vni),
                        vid: r.vsi.filters.first().map_or(0, |f| f.vid()),
                        macs: r.vsi.filters.iter().filter_map(|f| f.mac).collect(),
                        expires_at: vnic.and_then(|v| v.expires_at),
                    }
                })
                .collect()
        };
        self.vdp
            .ports
            .iter()
            .map(|(port, &timers)| VdpPortView {
                port: port.clone(),
                timers,
                session: None,
                vsis: vsis(port),
            })
            .collect()
    }

    /// VSIs owed an unsolicited DeAssoc: their vNIC is gone, or now on another port.
    pub fn vdp_revoked(&self) -> impl Iterator<Item = (&VnicId, &VsiRecord)> {
        self.vdp
            .vsis
            .iter()
            .filter(|(id, r)| self.vnics.get(id).is_none_or(|v| v.params.port != r.port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{AttachPort, CreateVn},
        vdp::tlv::{Filter, FilterFormat, VSIID_UUID},
        vnic::VnicState,
    };

    const PORT: &str = "trunk0";
    const HOLD_MS: u64 = 1_009;

    fn model() -> Model {
        let mut m = Model::default();
        m.create_vn(&CreateVn::new("blue", 100)).unwrap();
        m.create_vn(&CreateVn::new("red", 200)).unwrap();
        m.vdp_enable(PORT, Timers::default()).unwrap();
        m
    }

    fn vsi(n: u8, mode: Mode, group: Option<u32>, vid: u16) -> Vsi {
        let format = match group {
            Some(_) => FilterFormat::GroupMacVid,
            None => FilterFormat::MacVid,
        };
        Vsi {
            mode,
            status: 0,
            type_id: 5,
            type_version: 1,
            vsiid_format: VSIID_UUID,
            vsiid: Id16([n; 16]),
            filter_format: format,
            filters: vec![Filter {
                group,
                mac: Some(MacAddr([2, 0, 0, 0, 0, n])),
                vid,
            }],
        }
    }

    fn request(m: &mut Model, v: &Vsi, now: u64) -> Result<Option<VnicView>> {
        let before = m.clone();
        let result = m.vdp_request(PORT, Id16::default(), v, HOLD_MS, now);
        if result.is_err() {
            assert_eq!(*m, before, "a refused request changes nothing");
        }
        result
    }

    #[test]
    fn group_ids_name_vns_and_null_vids_are_assigned() {
        let mut m = model();
        let blue = request(&mut m, &vsi(1, Mode::Assoc, Some(100), 0), 0)
            .unwrap()
            .unwrap();
        let red = request(&mut m, &vsi(2, Mode::Assoc, Some(200), 0), 0)
            .unwrap()
            .unwrap();
        assert_eq!(
            (blue.vn.as_str(), blue.state),
            ("blue", VnicState::Associated)
        );
        assert_eq!(red.vn, "red");
        assert!(
            blue.vid >= 2 && red.vid >= 2 && blue.vid != red.vid,
            "{blue:?} {red:?}"
        );
        // A keep-alive repeats the TLV with the VID given: the same vNIC, its hold renewed.
        let again = vsi(1, Mode::Assoc, Some(100), blue.vid);
        let kept = request(&mut m, &again, 1_000).unwrap().unwrap();
        assert_eq!(kept.vid, blue.vid);
        assert_eq!(
            kept.expires_at,
            Some(1_000 + 2_000),
            "hold rounded up to 2 s"
        );
        let view = &m.vdp_views()[0];
        assert_eq!(view.vsis.len(), 2);
        assert_eq!(
            view.vsis[0].vid, blue.vid,
            "the record holds the VID answered"
        );
        // De-associate: gone, nothing owed.
        request(&mut m, &vsi(1, Mode::DeAssoc, Some(100), blue.vid), 2_000).unwrap();
        assert_eq!(m.vnics().count(), 1);
        assert_eq!(m.vdp_revoked().count(), 0);
    }

    #[test]
    fn refusals_name_their_cause() {
        let mut m = model();
        let code = |m: &mut Model, v: &Vsi| request(m, v, 0).unwrap_err().code;
        assert_eq!(
            code(&mut m, &vsi(1, Mode::Assoc, Some(300), 0)),
            ErrorCode::EUnknownVn
        );
        assert_eq!(
            code(&mut m, &vsi(1, Mode::Assoc, Some(1 << 24 | 100), 0)),
            ErrorCode::EUnknownVn
        );
        let blue = request(&mut m, &vsi(1, Mode::Assoc, Some(100), 0), 0)
            .unwrap()
            .unwrap();
        // Red may not have blue's VID on this port.
        assert_eq!(
            code(&mut m, &vsi(2, Mode::Assoc, Some(200), blue.vid)),
            ErrorCode::EVidConflict
        );
        // Nor may another VSI hold blue's MAC.
        let mut thief = vsi(3, Mode::Assoc, Some(100), 0);
        thief.filters[0].mac = Some(MacAddr([2, 0, 0, 0, 0, 1]));
        assert_eq!(code(&mut m, &thief), ErrorCode::EMacConflict);
        // Without MACs there is no vNIC to make.
        let mut no_mac = vsi(4, Mode::Assoc, Some(100), 0);
        no_mac.filter_format = FilterFormat::GroupVid;
        no_mac.filters[0].mac = None;
        assert_eq!(code(&mut m, &no_mac), ErrorCode::EFormat);
        // Two VNs in one VSI.
        let mut two = vsi(5, Mode::Assoc, Some(100), 0);
        two.filters.push(Filter {
            group: Some(200),
            mac: Some(MacAddr([2, 0, 0, 0, 1, 5])),
            vid: 0,
        });
        assert_eq!(code(&mut m, &two), ErrorCode::EFormat);
        // A port VDP is not on for.
        let r = m.vdp_request(
            "other",
            Id16::default(),
            &vsi(6, Mode::Assoc, Some(100), 0),
            HOLD_MS,
            0,
        );
        assert_eq!(r.unwrap_err().code, ErrorCode::ENotFound);
    }

    #[test]
    fn without_a_group_id_the_vid_names_the_vn() {
        let mut m = model();
        let attach = AttachPort {
            port: PORT.into(),
            vid: 30,
            macs: Vec::new(),
        };
        m.attach_port("red", &attach, 0).unwrap();
        let v = request(&mut m, &vsi(1, Mode::Assoc, None, 30), 0)
            .unwrap()
            .unwrap();
        assert_eq!((v.vn.as_str(), v.vid), ("red", 30));
        let err = request(&mut m, &vsi(2, Mode::Assoc, None, 0), 0).unwrap_err();
        assert_eq!(
            err.code,
            ErrorCode::EUnknownVn,
            "nothing untagged on the port"
        );
        let err = request(&mut m, &vsi(2, Mode::Assoc, None, 31), 0).unwrap_err();
        assert_eq!(err.code, ErrorCode::EUnknownVn);
        // An untagged VN on the port: VID 0 stays 0 (lldpad's libvirt path, no VLANs).
        let untagged = AttachPort {
            port: PORT.into(),
            vid: 0,
            macs: Vec::new(),
        };
        m.attach_port("blue", &untagged, 0).unwrap();
        let v = request(&mut m, &vsi(2, Mode::Assoc, None, 0), 0)
            .unwrap()
            .unwrap();
        assert_eq!((v.vn.as_str(), v.vid), ("blue", 0));
    }

    #[test]
    fn modes_and_hints_are_the_state_machine_s() {
        let mut m = model();
        let mut pre = vsi(1, Mode::PreAssocRr, Some(100), 0);
        pre.status = HINT_MIGRATE_TO;
        let v = request(&mut m, &pre, 0).unwrap().unwrap();
        assert_eq!(v.state, VnicState::PreAssociated);
        assert!(v.migration.is_migrating_in(), "M: migrating to this bridge");
        let assoc = Vsi {
            mode: Mode::Assoc,
            ..pre.clone()
        };
        let a = request(&mut m, &assoc, 1).unwrap().unwrap();
        assert_eq!((a.state, a.vid), (VnicState::Associated, v.vid));
        // Back to pre-associate is not a step the state machine takes.
        let back = request(&mut m, &pre, 2).unwrap_err();
        assert_eq!(back.code, ErrorCode::EState);
        assert_eq!(crate::vdp::status_for(back.code) as u8, 4);
    }

    #[test]
    fn a_port_out_of_vids_answers_insufficient_resources() {
        let mut m = model();
        // VIDs 2 to 4094 taken, one VN each.
        for vid in crate::vid::VID_FIRST_ASSIGNED..=crate::vid::VID_MAX {
            let name = format!("vn{vid}");
            m.create_vn(&CreateVn::new(name.clone(), 1_000 + u32::from(vid)))
                .unwrap();
            let attach = AttachPort {
                port: PORT.into(),
                vid,
                macs: Vec::new(),
            };
            m.attach_port(&name, &attach, 0).unwrap();
        }
        let err = request(&mut m, &vsi(1, Mode::Assoc, Some(100), 0), 0).unwrap_err();
        assert_eq!(err.code, ErrorCode::EResources);
        assert_eq!(crate::vdp::status_for(err.code) as u8, 2);
    }

    #[test]
    fn vsis_the_bridge_ends_are_owed_a_deassoc() {
        let mut m = model();
        request(&mut m, &vsi(1, Mode::Assoc, Some(100), 0), 0).unwrap();
        request(&mut m, &vsi(2, Mode::PreAssocRr, Some(200), 0), 0).unwrap();
        m.expire(HOLD_MS);
        assert_eq!(m.vdp_revoked().count(), 0, "within the hold time");
        m.expire(2_000);
        let owed: Vec<_> = m.vdp_revoked().map(|(id, _)| id.clone()).collect();
        assert_eq!(owed.len(), 2, "both expired");
        m.vdp_forget(&owed[0]);
        assert_eq!(m.vdp_revoked().count(), 1);
        // Turning VDP off ends the rest with it (its session tells the station).
        request(&mut m, &vsi(3, Mode::Assoc, Some(100), 0), 3_000).unwrap();
        m.vdp_disable(PORT, 3_000).unwrap();
        assert_eq!((m.vnics().count(), m.vdp().vsis.len()), (0, 0));
        assert_eq!(
            m.vdp_disable(PORT, 3_000).unwrap_err().code,
            ErrorCode::ENotFound
        );
    }
}
