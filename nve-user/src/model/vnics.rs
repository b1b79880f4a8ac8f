//! vNICs signaled by the server: pre-associate / associate / disassociate / pause / resume,
//! checked against the state machine (`vnic.rs`) and the port's VID map (`vid.rs`).
use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Serialize};

use super::{Model, Moved, Result, check_unicast, format_err, unknown_vn};
use crate::addr::check_host_ip;
use crate::{
    api::{Migration, VidRequest, VidWord, VnicRequest, VnicView},
    error::{Error, ErrorCode},
    mac::MacAddr,
    model::IFNAME_MAX,
    vid::{VID_MAX, VidError},
    vnic::{Op, VnicState, transition},
};

/// A vNIC's identity: the VM's UUID and the vNIC's index (a MAC alone is not one).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VnicId {
    pub vm: String,
    pub index: u32,
}

impl fmt::Display for VnicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.vm, self.index)
    }
}

impl VnicId {
    /// Checks the VM UUID's form (8-4-4-4-12 hex digits).
    pub fn new(vm: &str, index: u32) -> Result<Self> {
        let groups: Vec<&str> = vm.split('-').collect();
        let ok = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
            && groups
                .iter()
                .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return Err(format_err(format!(
                "VM {vm:?}: not a UUID (8-4-4-4-12 hex digits)"
            )));
        }
        Ok(Self {
            vm: vm.to_ascii_lowercase(),
            index,
        })
    }
}

/// What identifies an association: a repeat with the same is idempotent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VnicParams {
    pub vn: String,
    pub macs: BTreeSet<MacAddr>,
    pub ipv4: BTreeSet<Ipv4Addr>,
    pub ipv6: BTreeSet<std::net::Ipv6Addr>,
    pub port: String,
    pub vid: VidRequest,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vnic {
    pub params: VnicParams,
    pub vni: u32,
    pub state: VnicState,
    /// The VID bound on the port for it (0: untagged).
    pub vid: u16,
    pub migration: Migration,
    pub request_id: u64,
    /// Milliseconds a refresh keeps the association (soft state), if any.
    pub hold: Option<u64>,
    /// When it expires unless refreshed.
    pub expires_at: Option<u64>,
    /// A message for it carried a migrating-in hint: it arrived by a migration the
    /// hypervisor signaled (published with its MACs, see `nva::Entry::migrated`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub migrated_in: bool,
}

/// How long the source forwards a migrated vNIC's frames to its new VTEP, ms, unless the
/// disassociate message gives a hold time.
pub const MOVED_HOLD_MS: u64 = 60_000;

/// `Moved::until` of a paused vNIC's forwarding pointer (`pause` with a migrating-out
/// VTEP): held while the vNIC stays paused, not by time.
pub const WHILE_PAUSED: u64 = u64::MAX;

impl Vnic {
    /// Whether frames for it are delivered into its port: it forwards, or it is
    /// pre-associated as migrating in (its port queues them until the VM resumes).
    pub fn receives(&self) -> bool {
        self.state.forwards() || self.is_arriving()
    }

    /// Whether it is pre-associated as migrating in: the VM is on its way here.
    pub fn is_arriving(&self) -> bool {
        self.state == VnicState::PreAssociated && self.migration.is_migrating_in()
    }

    /// The VTEP its frames go to while it is paused (`pause` with a migrating-out hint).
    pub fn paused_toward(&self) -> Option<Ipv4Addr> {
        match (self.state, self.migration) {
            (VnicState::Inactive, Migration::MigratingOut(vtep)) => Some(vtep),
            _ => None,
        }
    }
}

/// How long a pre-association without a hold time lives, ms (spec.md 5, row 14).
pub const PRE_ASSOCIATION_HOLD_MS: u64 = 120_000;

/// Longest hold time a message may give, seconds (a day); 0 is refused: a message that
/// wants no soft state leaves `hold_time` out.
pub const HOLD_TIME_MAX: u64 = 86_400;

/// The hold time (ms) a (pre-)association gets.
fn hold_for(op: Op, req: &VnicRequest) -> Option<u64> {
    req.hold_time
        .map(|secs| secs.saturating_mul(1000))
        .or((op == Op::PreAssociate).then_some(PRE_ASSOCIATION_HOLD_MS))
}

impl VnicParams {
    fn from_request(r: &VnicRequest) -> Result<Self> {
        let vn =
            r.vn.clone()
                .ok_or_else(|| format_err(format!("{:?} needs \"vn\"", r.op)))?;
        let port = r
            .port
            .clone()
            .ok_or_else(|| format_err(format!("{:?} needs \"port\"", r.op)))?;
        if port.is_empty() || port.len() > IFNAME_MAX || port.contains(['/', ' ']) {
            return Err(format_err(format!(
                "port {port:?}: an interface name of 1 to {IFNAME_MAX} bytes"
            )));
        }
        if r.macs.is_empty() {
            return Err(format_err(format!(
                "{:?} needs at least one MAC in \"macs\"",
                r.op
            )));
        }
        for &mac in &r.macs {
            check_unicast(mac)?;
        }
        let v4 = r.ipv4.iter().map(|&a| ("ipv4", IpAddr::V4(a)));
        for (field, ip) in v4.chain(r.ipv6.iter().map(|&a| ("ipv6", IpAddr::V6(a)))) {
            check_host_ip(field, ip)?;
        }
        let macs: BTreeSet<MacAddr> = r.macs.iter().copied().collect();
        let ipv4: BTreeSet<Ipv4Addr> = r.ipv4.iter().copied().collect();
        let ipv6: BTreeSet<Ipv6Addr> = r.ipv6.iter().copied().collect();
        for (field, given, distinct) in [
            ("macs", r.macs.len(), macs.len()),
            ("ipv4", r.ipv4.len(), ipv4.len()),
            ("ipv6", r.ipv6.len(), ipv6.len()),
        ] {
            if given != distinct {
                return Err(format_err(format!(
                    "\"{field}\" names {} more than once",
                    if field == "macs" {
                        "a MAC"
                    } else {
                        "an address"
                    }
                )));
            }
        }
        if let VidRequest::Vid(v) = r.vid
            && !(1..=VID_MAX).contains(&v)
        {
            return Err(format_err(format!(
                "VID {v}: must be 1 to {VID_MAX}, \"untagged\" or \"assign\""
            )));
        }
        Ok(Self {
            vn,
            macs,
            ipv4,
            ipv6,
            port,
            vid: r.vid,
        })
    }

    /// Whether `self` (a request) asks for what `bound` (with VID `vid`) already is.
    fn same_as(&self, bound: &VnicParams, vid: u16) -> bool {
        let vid_ok = self.vid == bound.vid || self.vid == VidRequest::Vid(vid);
        vid_ok
            && VnicParams {
                vid: bound.vid,
                ..self.clone()
            } == *bound
    }
}

fn state_err(message: String) -> Error {
    Error::new(ErrorCode::EState, message)
}

/// The VTEP a `pause` sends the vNIC's frames to (its `migrating-out` hint), if any
/// (`resume` and `keep-alive` ignore hints, as they always did). 0.0.0.0 names no VTEP:
/// the destination is where the NVA says another NVE expects the vNIC.
fn pause_toward(model: &Model, id: &VnicId, req: &VnicRequest) -> Result<Option<Ipv4Addr>> {
    match (req.op, req.migration) {
        (Op::Pause, Migration::MigratingOut(Ipv4Addr::UNSPECIFIED)) => {
            model.expected_at(id).map(Some).ok_or_else(|| {
                state_err(format!(
                    "vNIC {id}: no NVE expects it (none has pre-associated it migrating in, \
                     as far as the NVA says): name the destination with --migrating-out VTEP"
                ))
            })
        }
        (Op::Pause, Migration::MigratingOut(vtep)) => {
            check_host_ip("migrating-out", IpAddr::V4(vtep))?;
            Ok(Some(vtep))
        }
        (Op::Pause, Migration::MigratingIn(_)) => Err(format_err(
            "pause takes a migrating-out VTEP (where the VM goes), not migrating-in".into(),
        )),
        _ => Ok(None),
    }
}

impl Model {
    /// The VTEP another NVE expects vNIC `id` at (the first of its MACs the NVA names).
    fn expected_at(&self, id: &VnicId) -> Option<Ipv4Addr> {
        let v = self.vnics.get(id)?;
        v.params
            .macs
            .iter()
            .find_map(|&mac| match self.nva.expected_at(v.vni, mac) {
                Some(IpAddr::V4(vtep)) => Some(vtep),
                _ => None,
            })
    }

    /// Where a disassociated vNIC's frames go on to (its forwarding pointer), if anywhere:
    /// where the message says (0.0.0.0: where its pause sent them, else where another NVE
    /// expects it), or where its pause sent them.
    fn went(&self, id: &VnicId, v: &Vnic, req: &VnicRequest) -> Option<Ipv4Addr> {
        match req.migration {
            Migration::MigratingOut(Ipv4Addr::UNSPECIFIED) => {
                v.paused_toward().or_else(|| self.expected_at(id))
            }
            Migration::MigratingOut(vtep) => Some(vtep),
            _ => v.paused_toward(),
        }
    }
}

impl Model {
    /// Applies one signaling message for vNIC `id` at time `now` (ms since the epoch).
    pub fn signal(&mut self, id: &VnicId, req: &VnicRequest, now: u64) -> Result<Option<VnicView>> {
        if let Some(h) = req.hold_time.filter(|h| !(1..=HOLD_TIME_MAX).contains(h)) {
            return Err(format_err(format!(
                "hold_time {h}: must be 1 to {HOLD_TIME_MAX} seconds (leave it out for no soft state)"
            )));
        }
        let current = self.vnics.get(id);
        let to = transition(current.map(|v| v.state), req.op)
            .map_err(|e| state_err(format!("vNIC {id}: {e}")))?;
        match req.op {
            Op::PreAssociate | Op::Associate => {
                let params = VnicParams::from_request(req)?;
                let to = to.expect("(pre-)associate leads to a state");
                if let Some(cur) = current {
                    // A repeat must repeat its hold time too; a step (pre-associated ->
                    // associated) may give another.
                    let same_hold = cur.state != to || cur.hold == hold_for(req.op, req);
                    if params.same_as(&cur.params, cur.vid) && same_hold {
                        self.set_pause_pointer(id, None);
                        self.vnics.update(id, |v| {
                            v.state = to;
                            v.migrated_in |= req.migration.is_migrating_in();
                            v.migration = req.migration;
                            v.request_id = v.request_id.max(req.request_id);
                            v.hold = hold_for(req.op, req);
                            v.expires_at = v.hold.map(|h| now + h);
                        });
                        return Ok(Some(self.vnic_view(id)));
                    }
                    if req.request_id <= cur.request_id {
                        return Err(state_err(format!(
                            "vNIC {id} is {:?} with other parameters; send request_id > {} to update it",
                            cur.state, cur.request_id
                        )));
                    }
                    // An update: all or nothing, so a rejected one leaves the vNIC as it was.
                    let migrated_in = cur.migrated_in;
                    let mut next = self.clone();
                    next.remove_vnic(id, now);
                    next.install_vnic(id, params, to, req, now)?;
                    next.vnics.update(id, |v| v.migrated_in |= migrated_in);
                    *self = next;
                    return Ok(Some(self.vnic_view(id)));
                }
                self.install_vnic(id, params, to, req, now)?;
                Ok(Some(self.vnic_view(id)))
            }
            Op::Disassociate => {
                let went = current.and_then(|v| Some((self.went(id, v, req)?, v)));
                let pointer = went.map(|(vtep, v)| {
                    // The forwarding pointer: frames that still arrive for the VM go on to
                    // where it went, for the hold time (remote NVEs may not know yet).
                    let hold = req
                        .hold_time
                        .map_or(MOVED_HOLD_MS, |s| s.saturating_mul(1000));
                    let moved = Moved {
                        vtep: vtep.into(),
                        until: now + hold,
                    };
                    (v.params.vn.clone(), v.params.macs.clone(), moved)
                });
                self.remove_vnic(id, now);
                if let Some((vn, macs, moved)) = pointer
                    && let Some(vn) = self.vns.get_mut(&vn)
                {
                    vn.moved.extend(macs.into_iter().map(|m| (m, moved)));
                }
                Ok(None)
            }
            Op::Pause | Op::Resume | Op::KeepAlive => {
                let toward = pause_toward(self, id, req)?;
                self.set_pause_pointer(id, None);
                self.vnics
                    .update(id, |v| {
                        v.state = to.expect("these lead to a state");
                        if req.op != Op::KeepAlive {
                            v.migration = toward.map_or(Migration::None, Migration::MigratingOut);
                        }
                        v.request_id = v.request_id.max(req.request_id);
                        v.expires_at = v.hold.map(|h| now + h);
                    })
                    .expect("the table allows these only when present");
                self.set_pause_pointer(id, self.vnics.get(id).and_then(Vnic::paused_toward));
                Ok(Some(self.vnic_view(id)))
            }
        }
    }

    /// All that a signaling message for `id` may change of the model (the vNIC, the
    /// forwarding pointers of its VNs, the VID maps of its ports, the VNs there are), to
    /// tell whether it changed anything without comparing whole models.
    pub fn signal_footprint(&self, id: &VnicId, req: &VnicRequest) -> impl PartialEq + use<> {
        let vnic = self.vnics.get(id).cloned();
        let old = vnic.as_ref().map(|v| (&v.params.vn, &v.params.port));
        let (vns, ports): (Vec<&String>, Vec<&String>) = old
            .into_iter()
            .chain(req.vn.as_ref().zip(req.port.as_ref()))
            .unzip();
        let moved = vns
            .iter()
            .map(|vn| self.vns.get(*vn).map(|vn| vn.moved.clone()))
            .collect::<Vec<_>>();
        let vids = ports
            .iter()
            .map(|p| self.port_vids.get(*p).cloned())
            .collect::<Vec<_>>();
        (vnic, moved, vids, self.vns.len())
    }

    fn install_vnic(
        &mut self,
        id: &VnicId,
        params: VnicParams,
        state: VnicState,
        req: &VnicRequest,
        now: u64,
    ) -> Result<()> {
        // A VN other NVEs serve (from the NVA) is created here on its first vNIC.
        if !self.vns.contains_key(&params.vn)
            && let Some(def) = self.nva.vns.get(&params.vn).cloned()
        {
            self.create_vn(&def)?;
        }
        let vn = self
            .vns
            .get(&params.vn)
            .ok_or_else(|| unknown_vn(&params.vn))?;
        let vni = vn.vni;
        for &mac in &params.macs {
            if let Some(holder) = self.vnic_holding(vni, mac, Some(id)) {
                return Err(Error::new(
                    ErrorCode::EMacConflict,
                    format!("MAC {mac} in VN {} is held by vNIC {holder}", params.vn),
                ));
            }
            if let Some((port, vid)) = vn
                .ports
                .iter()
                .find(|(_, macs)| macs.contains(&mac))
                .map(|(k, _)| k)
            {
                return Err(Error::new(
                    ErrorCode::EMacConflict,
                    format!(
                        "MAC {mac} in VN {} is bound statically to port {port} VID {vid}",
                        params.vn
                    ),
                ));
            }
        }
        let requested = match params.vid {
            VidRequest::Vid(v) => Some(v),
            VidRequest::Word(VidWord::Untagged) => Some(0),
            VidRequest::Word(VidWord::Assign) => None,
        };
        let vid = self.acquire_vid(&params.port, vni, requested, now)?;
        // Back here (A -> B -> A): no longer forwarded elsewhere.
        if let Some(vn) = self.vns.get_mut(&params.vn) {
            vn.moved.retain(|mac, _| !params.macs.contains(mac));
        }
        self.vnics.insert(
            id.clone(),
            Vnic {
                params,
                vni,
                state,
                vid,
                migration: req.migration,
                request_id: req.request_id,
                hold: hold_for(req.op, req),
                expires_at: hold_for(req.op, req).map(|h| now + h),
                migrated_in: req.migration.is_migrating_in(),
            },
        );
        Ok(())
    }

    pub(super) fn remove_vnic(&mut self, id: &VnicId, now: u64) {
        self.set_pause_pointer(id, None);
        if let Some(v) = self.vnics.remove(id) {
            self.release_vid(&v.params.port, v.vni, now);
        }
    }

    /// Points vNIC `id`'s MACs at `toward` while it is paused (`WHILE_PAUSED`), or with
    /// `None` takes such a pointer away (pointers with a hold time stay).
    fn set_pause_pointer(&mut self, id: &VnicId, toward: Option<Ipv4Addr>) {
        let Some(v) = self.vnics.get(id) else {
            return;
        };
        let Some(vn) = self.vns.get_mut(&v.params.vn) else {
            return;
        };
        for mac in &v.params.macs {
            match toward {
                Some(vtep) => {
                    let moved = Moved {
                        vtep: vtep.into(),
                        until: WHILE_PAUSED,
                    };
                    vn.moved.insert(*mac, moved);
                }
                None => {
                    if vn.moved.get(mac).is_some_and(|m| m.until == WHILE_PAUSED) {
                        vn.moved.remove(mac);
                    }
                }
            }
        }
    }

    /// Takes a reference on `port`'s binding of `vni` (see `vid.rs`).
    pub(super) fn acquire_vid(
        &mut self,
        port: &str,
        vni: u32,
        requested: Option<u16>,
        now: u64,
    ) -> Result<u16> {
        // On a copy: a refused acquire leaves the port's map exactly as it was.
        let mut vids = self.port_vids.get(port).cloned().unwrap_or_default();
        vids.expire(now);
        let vid = vids.acquire(vni, requested, now).map_err(|e| match e {
            VidError::Exhausted => Error::new(ErrorCode::EResources, format!("port {port}: {e}")),
            e => Error::new(ErrorCode::EVidConflict, format!("port {port}: {e}")),
        })?;
        self.port_vids.insert(port.to_string(), vids);
        Ok(vid)
    }

    pub(super) fn release_vid(&mut self, port: &str, vni: u32, now: u64) {
        if let Some(vids) = self.port_vids.get_mut(port) {
            vids.release(vni, now);
        }
    }

    /// The vNIC (other than `except`) holding `mac` in VNI `vni`.
    pub(super) fn vnic_holding(
        &self,
        vni: u32,
        mac: MacAddr,
        except: Option<&VnicId>,
    ) -> Option<&VnicId> {
        self.vnics
            .holding_mac(vni, mac)
            .find(|id| Some(*id) != except)
    }

    pub fn vnics(&self) -> impl Iterator<Item = (&VnicId, &Vnic)> {
        self.vnics.iter()
    }

    /// The ports the vNICs use, each once.
    pub fn vnic_ports(&self) -> impl Iterator<Item = &str> {
        self.vnics.ports()
    }

    /// Whether a vNIC pre-associated as migrating in uses `port`: frames for it wait in
    /// the port until the VM resumes there.
    pub fn awaits_arrival(&self, port: &str) -> bool {
        self.vnics.awaits_arrival(port)
    }

    pub fn vnic_view(&self, id: &VnicId) -> VnicView {
        let v = self.vnics.get(id).expect("a vNIC of the model");
        VnicView {
            vm: id.vm.clone(),
            index: id.index,
            state: v.state,
            vn: v.params.vn.clone(),
            vni: v.vni,
            port: v.params.port.clone(),
            vid: v.vid,
            macs: v.params.macs.iter().copied().collect(),
            ipv4: v.params.ipv4.iter().copied().collect(),
            ipv6: v.params.ipv6.iter().copied().collect(),
            migration: v.migration,
            request_id: v.request_id,
            expires_at: v.expires_at,
            port_present: false,
        }
    }

    /// The earliest time a soft association expires.
    pub fn next_expiry(&self) -> Option<u64> {
        let moved = self
            .vns
            .values()
            .flat_map(|vn| vn.moved.values().map(|m| m.until))
            .filter(|&until| until != WHILE_PAUSED);
        self.vnics
            .values()
            .filter_map(|v| v.expires_at)
            .chain(moved)
            .min()
    }

    /// Removes the associations whose hold time ran out by `now` (disassociates them).
    pub fn expire(&mut self, now: u64) {
        let expired: Vec<VnicId> = self
            .vnics
            .iter()
            .filter(|(_, v)| v.expires_at.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            tracing::info!(vnic = %id, "hold time ran out: disassociated");
            self.remove_vnic(&id, now);
        }
        for vn in self.vns.values_mut() {
            vn.moved.retain(|mac, m| {
                let keep = m.until > now;
                if !keep {
                    tracing::info!(%mac, vtep = %m.vtep, "forwarding pointer expired");
                }
                keep
            });
        }
    }

    pub fn vnic_views(&self) -> Vec<VnicView> {
        self.vnics.keys().map(|id| self.vnic_view(id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use nve_common::maps::{FdbEntry, FdbKey, LocalPort, PORT_RECEIVES, PortKey};
    use proptest::prelude::*;

    use super::*;
    use crate::{api::CreateVn, model::PortInfo};

    const VMS: [&str; 3] = [
        "00000000-0000-4000-8000-000000000001",
        "00000000-0000-4000-8000-000000000002",
        "00000000-0000-4000-8000-000000000003",
    ];
    const PORTS: [&str; 2] = ["tap0", "tap1"];
    const VNS: [(&str, u32); 2] = [("blue", 100), ("red", 200)];

    fn request() -> impl Strategy<Value = (usize, VnicRequest)> {
        let op = prop_oneof![
            Just(Op::PreAssociate),
            Just(Op::Associate),
            Just(Op::Disassociate),
            Just(Op::Pause),
            Just(Op::Resume),
        ];
        let vid = prop_oneof![
            Just(VidRequest::Word(VidWord::Untagged)),
            Just(VidRequest::Word(VidWord::Assign)),
            (1..4u16).prop_map(VidRequest::Vid),
        ];
        (
            0..VMS.len(),
            op,
            0..VNS.len(),
            0..PORTS.len(),
            1..4u8,
            vid,
            0..3u64,
            prop_oneof![
                2 => Just(Migration::None),
                1 => Just(Migration::MigratingIn(Ipv4Addr::new(10, 0, 0, 2))),
                1 => Just(Migration::MigratingOut(Ipv4Addr::new(10, 0, 0, 3))),
            ],
        )
            .prop_map(|(vm, op, vn, port, mac, vid, request_id, migration)| {
                let req = VnicRequest {
                    op,
                    request_id,
                    vn: Some(VNS[vn].0.into()),
                    macs: vec![MacAddr([2, 0, 0, 0, vn as u8, mac])],
                    ipv4: Vec::new(),
                    ipv6: Vec::new(),
                    port: Some(PORTS[port].into()),
                    vid,
                    migration,
                    reserve: false,
                    hold_time: None,
                };
                (vm, req)
            })
    }

    /// Every port is a tap, ifindex 7 (what [`message`]'s tap0 resolves to).
    fn info(_: &str) -> Option<PortInfo> {
        Some(PortInfo {
            ifindex: 7,
            tap: true,
        })
    }

    /// A message for MAC 02:00:00:00:00:01 of VN blue on tap0.
    fn message(op: Op, migration: Migration) -> VnicRequest {
        VnicRequest {
            op,
            request_id: 0,
            vn: Some("blue".into()),
            macs: vec![MacAddr([2, 0, 0, 0, 0, 1])],
            ipv4: Vec::new(),
            ipv6: Vec::new(),
            port: Some("tap0".into()),
            vid: VidRequest::default(),
            migration,
            reserve: false,
            hold_time: None,
        }
    }

    #[test]
    fn soft_state_expires_unless_refreshed() {
        let mut m = Model::default();
        m.create_vn(&CreateVn::new("blue", 100)).unwrap();
        let id = VnicId::new(VMS[0], 0).unwrap();
        let mut req = VnicRequest {
            reserve: true,
            ..message(Op::PreAssociate, Migration::None)
        };
        // A pre-association that never turns into an association goes after 120 s.
        m.signal(&id, &req, 0).unwrap();
        m.expire(PRE_ASSOCIATION_HOLD_MS - 1);
        assert_eq!(m.vnics().count(), 1);
        m.expire(PRE_ASSOCIATION_HOLD_MS);
        assert_eq!(m.vnics().count(), 0);
        // Associated: hard unless a hold time is given.
        req.op = Op::Associate;
        m.signal(&id, &req, 0).unwrap();
        m.expire(1_000_000);
        assert_eq!(m.vnics().count(), 1);
        req.hold_time = Some(30);
        req.request_id = 1;
        m.signal(&id, &req, 100_000).unwrap();
        let keep = VnicRequest {
            op: Op::KeepAlive,
            ..req.clone()
        };
        m.signal(&id, &keep, 125_000).unwrap();
        m.expire(150_000);
        assert_eq!(
            m.vnics().count(),
            1,
            "refreshed at 125 s, holds until 155 s"
        );
        m.expire(155_000);
        assert_eq!(m.vnics().count(), 0);
        assert!(m.port_vids.values().all(|p| p.is_empty()));
    }

    #[test]
    fn a_pause_toward_a_destination_points_there_until_resume_or_disassociate() {
        let mut m = Model::default();
        m.create_vn(&CreateVn::new("blue", 100)).unwrap();
        let id = VnicId::new(VMS[0], 0).unwrap();
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let dest = Ipv4Addr::new(10, 0, 0, 2);
        let req = message;
        let key = FdbKey::new(100, mac.0);
        let local = |m: &Model| m.desired(info).fdb[&key].kind == nve_common::maps::FDB_LOCAL;
        let out = Migration::MigratingOut(dest);
        m.signal(&id, &req(Op::Associate, Migration::None), 0)
            .unwrap();
        let refused = m.signal(&id, &req(Op::Pause, Migration::MigratingIn(dest)), 1);
        assert_eq!(refused.unwrap_err().code, ErrorCode::EFormat);
        let loopback = Migration::MigratingOut(Ipv4Addr::LOCALHOST);
        let refused = m.signal(&id, &req(Op::Pause, loopback), 1);
        assert_eq!(refused.unwrap_err().code, ErrorCode::EFormat);
        // Paused toward the destination: the MAC points there, the VTEP is one of the VN's,
        // and the association stays.
        let view = m.signal(&id, &req(Op::Pause, out), 1).unwrap().unwrap();
        assert_eq!((view.state, view.migration), (VnicState::Inactive, out));
        let d = m.desired(info);
        assert_eq!(
            d.fdb[&key],
            FdbEntry::moved(nve_common::maps::vtep_v4(dest.octets()))
        );
        let vtep = nve_common::maps::VnVtepKey::new(100, nve_common::maps::vtep_v4(dest.octets()));
        assert!(d.vn_vteps.contains_key(&vtep));
        assert!(m.ipv4_vteps().any(|v| v == dest));
        assert_eq!(m.next_expiry(), None, "held while paused, not by time");
        // An aborted migration: resume delivers here again.
        m.signal(&id, &req(Op::Resume, Migration::None), 2).unwrap();
        assert!(local(&m));
        assert!(m.ipv4_vteps().all(|v| v != dest));
        // A plain pause after one toward a destination takes the pointer away.
        m.signal(&id, &req(Op::Pause, out), 3).unwrap();
        m.signal(&id, &req(Op::Pause, Migration::None), 4).unwrap();
        assert!(local(&m));
        // Disassociated after the pause: the pointer stays for the hold time.
        m.signal(&id, &req(Op::Pause, out), 5).unwrap();
        m.signal(&id, &req(Op::Disassociate, Migration::None), 6)
            .unwrap();
        let d = m.desired(info);
        assert_eq!(d.fdb[&key].kind, nve_common::maps::FDB_MOVED);
        assert_eq!(m.next_expiry(), Some(6 + MOVED_HOLD_MS));
    }

    #[test]
    fn the_nva_says_where_a_pause_toward_where_the_vnic_is_expected_goes() {
        let mut m = Model::default();
        m.create_vn(&CreateVn::new("blue", 100)).unwrap();
        let id = VnicId::new(VMS[0], 0).unwrap();
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let h2 = Ipv4Addr::new(10, 0, 0, 2);
        let somewhere = Migration::MigratingOut(Ipv4Addr::UNSPECIFIED);
        let fdb = |m: &Model| m.desired(info).fdb[&FdbKey::new(100, mac.0)];
        let moved = |vtep: Ipv4Addr| FdbEntry::moved(nve_common::maps::vtep_v4(vtep.octets()));
        // The source: no NVE expects the vNIC yet, so a pause toward "where it is expected"
        // is refused and changes nothing.
        m.signal(&id, &message(Op::Associate, Migration::None), 0)
            .unwrap();
        let refused = m.signal(&id, &message(Op::Pause, somewhere), 1);
        assert_eq!(refused.unwrap_err().code, ErrorCode::EState);
        assert_eq!(fdb(&m).kind, nve_common::maps::FDB_LOCAL);
        // h2 pre-associated it migrating in: the pause goes there, and says so.
        m.nva
            .arriving
            .entry(100)
            .or_default()
            .insert(mac, h2.into());
        let view = m.signal(&id, &message(Op::Pause, somewhere), 2).unwrap();
        assert_eq!(view.unwrap().migration, Migration::MigratingOut(h2));
        assert_eq!(fdb(&m), moved(h2));

        // Disassociated toward "where it went": where the pause sent it.
        m.signal(&id, &message(Op::Disassociate, somewhere), 3)
            .unwrap();
        assert_eq!(fdb(&m), moved(h2));
        // Where no NVE expects it: no pointer at all (never one to 0.0.0.0).
        m.nva.arriving.clear();
        m.signal(&id, &message(Op::Associate, Migration::None), 4)
            .unwrap();
        m.signal(&id, &message(Op::Disassociate, somewhere), 5)
            .unwrap();
        assert!(!m.desired(info).fdb.contains_key(&FdbKey::new(100, mac.0)));
    }

    #[test]
    fn a_vnic_pre_associated_as_migrating_in_receives_and_does_not_send() {
        let mut m = Model::default();
        m.create_vn(&CreateVn::new("blue", 100)).unwrap();
        let id = VnicId::new(VMS[0], 0).unwrap();
        let arriving = Migration::MigratingIn(Ipv4Addr::new(10, 0, 0, 1));
        let mut req = message(Op::PreAssociate, arriving);
        m.signal(&id, &req, 0).unwrap();
        let port = m.desired(info).ports[&PortKey::new(7, 0)];
        assert!(!port.is_active() && port.receives());
        assert_eq!(
            m.desired(info).vns[&100].port_count,
            0,
            "no flooding into it yet"
        );
        req.migration = Migration::None;
        req.request_id = 1;
        m.signal(&id, &req, 1).unwrap();
        let port = m.desired(info).ports[&PortKey::new(7, 0)];
        assert!(
            !port.receives(),
            "a pre-association without the hint receives nothing"
        );
    }

    proptest! {
        /// Whatever the server sends, the maps the dataplane gets are what the vNICs' states
        /// say: a (port, VID) forwards iff an associated vNIC uses it and receives iff one
        /// forwards or is pre-associated as migrating in, every installed vNIC's MACs point at
        /// its port (at the destination VTEP while paused with one), and a rejected request
        /// changes nothing.
        #[test]
        fn dataplane_follows_the_state_machine(reqs in prop::collection::vec(request(), 1..80)) {
            let mut m = Model::default();
            for (name, vni) in VNS {
                m.create_vn(&CreateVn::new(name, vni)).unwrap();
            }
            let info = |p: &str| PORTS.iter().position(|q| *q == p).map(|i| PortInfo { ifindex: 10 + i as u32, tap: false });
            for (now, (vm, req)) in reqs.iter().enumerate() {
                let id = VnicId::new(VMS[*vm], 0).unwrap();
                let before = m.clone();
                if m.signal(&id, req, now as u64).is_err() {
                    prop_assert_eq!(&m, &before);
                    continue;
                }
                let d = m.desired(info);
                let mut active: HashMap<PortKey, (bool, bool)> = HashMap::new();
                for (_, v) in m.vnics() {
                    let key = PortKey::new(info(&v.params.port).unwrap().ifindex, v.vid);
                    let (on, receives) = active.entry(key).or_default();
                    *on |= v.state.forwards();
                    *receives |= v.state.forwards()
                        || (v.state == VnicState::PreAssociated && v.migration.is_migrating_in());
                    for mac in &v.params.macs {
                        let e = d.fdb.get(&FdbKey::new(v.vni, mac.0)).copied();
                        let want = match v.migration {
                            Migration::MigratingOut(to) if v.state == VnicState::Inactive => {
                                FdbEntry::moved(nve_common::maps::vtep_of(to.into()))
                            }
                            _ => FdbEntry::local(LocalPort::new(key.ifindex, key.vid)),
                        };
                        prop_assert_eq!(e, Some(want));
                    }
                    prop_assert_eq!(d.ports.get(&key).map(|p| p.vni), Some(v.vni));
                }
                prop_assert_eq!(d.ports.len(), active.len());
                for (key, (on, receives)) in active {
                    prop_assert_eq!(d.ports[&key].is_active(), on);
                    prop_assert_eq!(d.ports[&key].flags & PORT_RECEIVES != 0, receives);
                }
            }
            // Disassociating everything leaves no VID bound and nothing in the maps.
            for vm in VMS {
                let id = VnicId::new(vm, 0).unwrap();
                let mut req = reqs[0].1.clone();
                req.op = Op::Disassociate;
                req.migration = Migration::None;
                m.signal(&id, &req, 10_000).unwrap();
            }
            prop_assert!(m.port_vids.values().all(|p| p.is_empty()));
            // What is left: the pointers of vNICs that were paused toward a destination.
            m.expire(10_000 + MOVED_HOLD_MS);
            let d = m.desired(info);
            prop_assert!(d.ports.is_empty() && d.fdb.is_empty());
        }
    }
}
