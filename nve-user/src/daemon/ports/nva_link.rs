//! What every NVA backend shares (etcd in `nva_sync`, BGP EVPN in `evpn`): what this NVE
//! publishes (`local_entries`), how the other NVEs' claims reach the model (`install_all`,
//! `install`), and how a backend reports to `nve status` (`Link`).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use crate::{
    api::{CreateVn, NvaNeighbor, NvaStatus},
    daemon::handle::Handle,
    mac::MacAddr,
    model::{Event, Model},
    nva::{
        Delta, Entry, MacChange, Mobility, Table,
        claims::{Claims, MacId, arriving_key, key, member_key, vn_key},
        mobility::installed,
    },
};

/// How this port reports to `nve status`.
pub struct Link {
    handle: Handle,
    endpoint: String,
    duplicates: Vec<String>,
    connected: bool,
    last_error: Option<String>,
    neighbors: Vec<NvaNeighbor>,
}

impl Link {
    pub fn new(handle: Handle, endpoint: String) -> Self {
        Self {
            handle,
            endpoint,
            duplicates: Vec::new(),
            connected: false,
            last_error: None,
            neighbors: Vec::new(),
        }
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub async fn report(&mut self, connected: bool, last_error: Option<String>) {
        self.connected = connected;
        self.last_error = last_error;
        self.send().await;
    }

    /// Reports the duplicates `mobility` froze, if they changed.
    pub async fn duplicates(&mut self, mobility: &Mobility) {
        let now = mobility.duplicates();
        if now != self.duplicates {
            self.duplicates = now;
            self.send().await;
        }
    }

    /// Reports the BGP neighbours' states, if they changed.
    pub async fn neighbors(&mut self, neighbors: Vec<NvaNeighbor>) {
        if neighbors != self.neighbors {
            self.neighbors = neighbors;
            self.send().await;
        }
    }

    async fn send(&self) {
        let status = NvaStatus {
            endpoint: self.endpoint.clone(),
            connected: self.connected,
            entries: 0,
            last_error: self.last_error.clone(),
            duplicate_macs: self.duplicates.clone(),
            neighbors: self.neighbors.clone(),
        };
        self.handle.nva_status(status).await;
    }
}

/// What this NVE publishes: its VNs, its memberships, the MACs it expects to arrive by
/// migration, its associated vNICs (and those paused toward their migration's destination),
/// and the MACs that moved away while their forwarding pointers live.
pub fn local_entries(
    model: &Model,
    vtep: IpAddr,
    claims: &Claims,
    published: &BTreeMap<String, Entry>,
) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    vn_definitions(model, vtep, &mut out);
    memberships(model, vtep, &mut out);
    arrivals(model, vtep, &mut out);
    forwarded(model, vtep, claims, published, &mut out);
    vnic_claims(model, vtep, claims, published, &mut out);
    out
}

/// The VNs this NVE serves, for those that do not have them yet.
fn vn_definitions(model: &Model, vtep: IpAddr, out: &mut BTreeMap<String, Entry>) {
    for (name, vn) in model.vns() {
        let def = CreateVn {
            flood_unknown: vn.flood_unknown,
            any_vtep: vn.any_vtep,
            mtu: vn.mtu,
            ..CreateVn::new(name.clone(), vn.vni)
        };
        let entry = Entry {
            vn: Some(Box::new(def)),
            ..Entry::at(vtep)
        };
        out.insert(vn_key(vn.vni, vtep), entry);
    }
}

/// Membership: every VN with a vNIC here, whatever its state, or a forwarding pointer
/// (the VM's last vNIC here left, and VXLAN for it that still arrives is sent on: the
/// destination must keep accepting this VTEP's VXLAN of the VN until the pointer goes).
fn memberships(model: &Model, vtep: IpAddr, out: &mut BTreeMap<String, Entry>) {
    let pointing = model
        .vns()
        .filter(|(_, vn)| !vn.moved.is_empty())
        .map(|(_, vn)| vn.vni);
    for vni in model.vnics().map(|(_, v)| v.vni).chain(pointing) {
        out.insert(member_key(vni, vtep), Entry::at(vtep));
    }
}

/// A vNIC pre-associated migrating in is expected here: an intent, not a claim, for the
/// source to find its destination by and the others to send to once the source lets go.
fn arrivals(model: &Model, vtep: IpAddr, out: &mut BTreeMap<String, Entry>) {
    for (_, v) in model.vnics().filter(|(_, v)| v.is_arriving()) {
        for &mac in &v.params.macs {
            out.insert(arriving_key(v.vni, mac, vtep), Entry::at(vtep));
        }
    }
}

/// Whether another NVE's claim on (`vni`, `mac`) beats `mine`, this VTEP's.
fn beaten(claims: &Claims, vni: u32, mac: MacAddr, vtep: IpAddr, mine: &Entry) -> bool {
    claims
        .winner((vni, mac), vtep)
        .is_some_and(|w| w.beats(mine))
}

/// A MAC that moved away (its forwarding pointer lives) keeps what this NVE published of
/// it until a newer claim beats it: the others go on unicasting to the pointer, where a
/// withdrawal before the destination's claim made them flood it, to the destination too,
/// which got it twice (directly and through the pointer). Marked `forwarding`, so that a
/// vNIC with it associated here again claims anew.
fn forwarded(
    model: &Model,
    vtep: IpAddr,
    claims: &Claims,
    published: &BTreeMap<String, Entry>,
    out: &mut BTreeMap<String, Entry>,
) {
    for (_, vn) in model.vns() {
        for &mac in vn.moved.keys() {
            let key = key(vn.vni, mac, vtep);
            let Some(mine) = published.get(&key) else {
                continue;
            };
            if !beaten(claims, vn.vni, mac, vtep, mine) {
                let entry = Entry {
                    forwarding: true,
                    ..mine.clone()
                };
                out.insert(key, entry);
            }
        }
    }
}

/// The claims of the associated vNICs, and of those paused toward their migration's
/// destination: their MACs are still reached through this VTEP (the pointer sends them on),
/// where a withdrawal would make the others flood them, to the destination too. A MAC this
/// NVE already claims keeps its sequence number; one it starts to claim (or claims again
/// after it moved away) takes the highest other claim's plus one.
fn vnic_claims(
    model: &Model,
    vtep: IpAddr,
    claims: &Claims,
    published: &BTreeMap<String, Entry>,
    out: &mut BTreeMap<String, Entry>,
) {
    let reached = |v: &crate::model::Vnic| v.state.forwards() || v.paused_toward().is_some();
    for (_, v) in model.vnics().filter(|(_, v)| reached(v)) {
        let v4 = v.params.ipv4.iter().map(|&a| IpAddr::from(a));
        let ips: Vec<IpAddr> = v4.chain(v.params.ipv6.iter().map(|&a| a.into())).collect();
        for &mac in &v.params.macs {
            let key = key(v.vni, mac, vtep);
            let seq = match published.get(&key) {
                Some(mine) if !mine.forwarding => mine.seq,
                _ => claims.winner((v.vni, mac), vtep).map_or(0, |e| e.seq + 1),
            };
            let entry = Entry {
                ips: ips.clone(),
                seq,
                migrated: v.migrated_in,
                ..Entry::at(vtep)
            };
            out.insert(key, entry);
        }
    }
}

/// Hands every other NVE's entry to the model (a session's first sync; a no-op when the
/// model has them all already, e.g. after an outage in which nothing changed).
pub async fn install_all(
    handle: &Handle,
    claims: &Claims,
    vtep: IpAddr,
    mobility: &mut Mobility,
) -> anyhow::Result<()> {
    let mut table = Table::default();
    for id in claims.ids() {
        if let Some(entry) = installed(claims, id, vtep, mobility) {
            table.set(id.0, id.1, Some(entry));
        }
    }
    table.members = claims.members(vtep);
    table.arriving = claims.arriving(vtep);
    table.vns = claims.vns(vtep);
    // This port is the only one that changes the NVA's table: the snapshot is current.
    if handle.snapshot().model.nva() == &table {
        return Ok(());
    }
    handle
        .submit(Event::Nva(table))
        .await
        .map(drop)
        .map_err(|e| anyhow::anyhow!("installing the NVA's entries: {}", e.message))
}

/// Hands the model what changed for the MACs in `touched` (and the memberships and VN
/// definitions, when they changed): a change costs what it touches, not the table's size.
pub async fn install(
    handle: &Handle,
    claims: &Claims,
    touched: &BTreeSet<MacId>,
    vtep: IpAddr,
    mobility: &mut Mobility,
) -> anyhow::Result<()> {
    let wanted: Vec<(MacId, Option<Entry>)> = touched
        .iter()
        .map(|&id| (id, installed(claims, id, vtep, mobility)))
        .collect();
    let members = claims.members(vtep);
    let arriving = claims.arriving(vtep);
    let vns = claims.vns(vtep);
    let snapshot = handle.snapshot();
    let table = snapshot.model.nva();
    let delta = Delta {
        macs: wanted
            .into_iter()
            .filter(|((vni, mac), entry)| table.get(*vni, *mac) != entry.as_ref())
            .map(|((vni, mac), entry)| MacChange { vni, mac, entry })
            .collect(),
        members: (table.members != members).then_some(members),
        arriving: (table.arriving != arriving).then_some(arriving),
        vns: (table.vns != vns).then_some(vns),
    };
    if delta.is_empty() {
        return Ok(());
    }
    // Refused (a full map): the session starts over, and says why in `nve status`.
    handle
        .submit(Event::NvaDelta(delta))
        .await
        .map(drop)
        .map_err(|e| anyhow::anyhow!("installing the NVA's changes: {}", e.message))
}
