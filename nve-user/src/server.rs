//! The API on the instance's Unix socket: HTTP/1.1 with JSON bodies under `/v1`. Handlers
//! translate requests into model changes; [`Nve::change`] applies one to a copy of the
//! model, brings the dataplane to it and commits it only if all of that succeeded.
use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
    sync::Arc,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State, rejection::BytesRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get, post, put},
};
use nve_common::maps::{NextHop, TUNNEL_DEV};
use serde::{Deserialize, de::DeserializeOwned};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::{
    api::{
        AttachPort, CreateVn, ErrorBody, ErrorCode, FdbView, FloodVtep, NextHopView, RemoteMac,
        SignalReply, StatsView, StatusView, VnView, VnicRequest, VnicView,
    },
    dataplane::{Dataplane, DataplaneError},
    mac::MacAddr,
    model::{Event, Keys, Model, Recompute, VnicId},
    netlink,
    store::Store,
};

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// The daemon's state behind the API.
pub struct Nve {
    pub model: Model,
    pub dataplane: Dataplane,
    pub netlink: rtnetlink::Handle,
    pub status: StatusView,
    pub underlay_ifindex: u32,
    /// Next hops whose neighbour entries the kernel keeps resolved for us.
    pub managed_neighbours: BTreeSet<netlink::Route>,
    /// The model on disk.
    pub store: Store,
    /// Remote VTEPs -> their resolved next hop, as written to the dataplane.
    pub next_hops: HashMap<[u8; 4], NextHop>,
    /// Woken after each committed change (the NVA republishes).
    pub changes: Arc<tokio::sync::Notify>,
    /// The dataplane's FDB, ARP and ND entries above the NVA's, as last written, while the
    /// NVA holds many entries: a change that touches only some NVA entries rewrites those
    /// and these (see `Recompute::Touched`). `None`: not known, the next change rewrites
    /// what differs among all.
    pub above_nva: Option<Keys>,
    /// The remote VTEPs whose next hops were last resolved.
    pub next_hop_vteps: BTreeSet<Ipv4Addr>,
}

pub type Shared = Arc<Mutex<Nve>>;

/// NVA entries from which a change recomputes only what it touched (`Recompute::Touched`):
/// below, the bookkeeping costs more than it saves (10,000 local associations measured
/// ~15% slower with it). Debug builds, which the integration tests run, always scope, so
/// the rigs exercise that path.
const SCOPED_FROM_NVA_ENTRIES: usize = if cfg!(debug_assertions) { 1 } else { 4096 };

/// Largest number of queued changes applied as one.
const MAX_BATCH: usize = 256;

/// A change waiting for the writer, and where its result goes.
struct Pending {
    event: Event,
    reply: oneshot::Sender<Result<Option<VnicView>, ErrorBody>>,
}

/// What the API handlers share: the daemon's state for reads, and the writer for changes.
/// One writer task applies changes in arrival order, so messages for one vNIC are
/// serialized; changes that queue up while one is being applied (requests for other vNICs)
/// are applied together, with one dataplane update and one journal write for all of them.
#[derive(Clone)]
pub struct Api {
    pub nve: Shared,
    writer: mpsc::UnboundedSender<Pending>,
}

impl Api {
    /// The API state and its writer task (which ends when every `Api` is dropped).
    pub fn new(nve: Shared) -> (Self, tokio::task::JoinHandle<()>) {
        let (writer, queue) = mpsc::unbounded_channel();
        let task = tokio::spawn(write_batches(nve.clone(), queue));
        (Self { nve, writer }, task)
    }

    /// Queues a change and waits for its result.
    pub async fn submit(&self, event: Event) -> Result<Option<VnicView>, ErrorBody> {
        let (reply, result) = oneshot::channel();
        let gone = || ErrorBody::new(ErrorCode::EHost, "the daemon is shutting down");
        self.writer
            .send(Pending { event, reply })
            .map_err(|_| gone())?;
        result.await.map_err(|_| gone())?
    }
}

async fn write_batches(nve: Shared, mut queue: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let events: Vec<Event> = batch.iter().map(|p| p.event.clone()).collect();
        let results = nve.lock().await.submit_batch(&events).await;
        for (pending, result) in batch.into_iter().zip(results) {
            let _ = pending.reply.send(result);
        }
    }
}

impl Nve {
    /// Applies `f` to a copy of the model and the dataplane to match; on any error the
    /// model and the dataplane stay as they were.
    /// Takes over the dataplane at start: brings it to `model` (the stored state) by
    /// difference, so entries traffic uses are left alone. Ports that are missing now are
    /// bound when they appear.
    pub async fn start(&mut self, model: Model) -> Result<(), ErrorBody> {
        self.sync_with(&model, false, None).await?;
        self.dataplane
            .drop_unclaimed_links()
            .map_err(|e| ErrorBody::new(ErrorCode::EHost, anyhow::Error::from(e).to_string()))?;
        self.store.snapshot(&model).map_err(|e| {
            ErrorBody::new(ErrorCode::EHost, format!("writing the snapshot: {e:#}"))
        })?;
        self.model = model;
        Ok(())
    }

    /// The MTU the underlay leaves the VMs: its MTU less VXLAN over IPv4.
    pub async fn vm_mtu(&self) -> u32 {
        netlink::mtu(&self.netlink, &self.status.underlay)
            .await
            .unwrap_or(0)
            .saturating_sub(nve_common::wire::VXLAN_IPV4_OVERHEAD)
    }

    /// Applies one event (see [`Nve::submit_batch`]).
    pub async fn submit(&mut self, event: Event) -> Result<Option<VnicView>, ErrorBody> {
        self.submit_batch(std::slice::from_ref(&event))
            .await
            .remove(0)
    }

    /// Applies events in order to a copy of the model (each accepted or refused on its
    /// own, a refused one changing nothing), then brings the dataplane to the result once
    /// and journals the accepted events; the model is committed only if both succeeded,
    /// otherwise every accepted event gets that error.
    pub async fn submit_batch(
        &mut self,
        events: &[Event],
    ) -> Vec<Result<Option<VnicView>, ErrorBody>> {
        let now = now();
        let mut next = self.model.clone();
        let mut results = Vec::with_capacity(events.len());
        let mut accepted = Vec::new();
        // The NVA's entries the batch changes: only those are rewritten (all after a full
        // table, or when VNs came or went).
        let mut touched = Some(Keys::default());
        for event in events {
            match (event, touched.as_mut()) {
                (Event::NvaDelta(delta), Some(keys)) => next.nva_keys(delta, keys),
                (Event::Nva(_), _) => touched = None,
                _ => {}
            }
            let result = next.apply(event, now);
            if result.is_ok() {
                accepted.push(event);
            }
            results.push(result);
        }
        if accepted.is_empty() {
            return results;
        }
        if next.vnis() != self.model.vnis() {
            touched = None;
        }
        let persisted = self
            .move_to(next, touched.as_ref(), |store, model| {
                accepted
                    .iter()
                    .try_for_each(|e| store.append(e, now, model))
            })
            .await;
        match persisted {
            Ok(()) => results,
            Err(e) => results.into_iter().map(|r| r.and(Err(e.clone()))).collect(),
        }
    }

    async fn move_to(
        &mut self,
        next: Model,
        touched: Option<&Keys>,
        persist: impl FnOnce(&mut Store, &Model) -> anyhow::Result<()>,
    ) -> Result<(), ErrorBody> {
        if next == self.model {
            return Ok(());
        }
        let result = match self.sync_with(&next, true, touched).await {
            Ok(()) => persist(&mut self.store, &next).map_err(|e| {
                ErrorBody::new(ErrorCode::EHost, format!("persisting the change: {e:#}"))
            }),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            let current = self.model.clone();
            if let Err(again) = self.sync_with(&current, true, None).await {
                tracing::error!("restoring the dataplane after a failed change: {again}");
            }
            return Err(e);
        }
        self.model = next;
        self.changes.notify_one();
        Ok(())
    }

    /// Detaches and unpins the dataplane, removes the tunnel device and the managed
    /// neighbours: nothing is left.
    pub async fn teardown(self) {
        self.dataplane.teardown();
        for route in &self.managed_neighbours {
            if let Err(e) = netlink::forget_neighbour(&self.netlink, *route).await {
                tracing::warn!(hop = %route.hop, "removing managed neighbour: {e}");
            }
        }
        if let Err(e) = netlink::delete_link(&self.netlink, TUNNEL_DEV).await {
            tracing::warn!("removing {TUNNEL_DEV}: {e:#}");
        }
    }

    /// Brings VM port attachments, maps and underlay neighbours to `model`. With `strict`, a
    /// statically bound port that does not exist is an error (an API request named it);
    /// otherwise (a link event) it is left out like a vNIC's port that has not appeared
    /// yet, and bound when it does. `touched`: the NVA entries that changed since the last
    /// sync, if only those did (see `Model::desired_in`); `None` rewrites what differs.
    pub async fn sync_with(
        &mut self,
        model: &Model,
        strict: bool,
        touched: Option<&Keys>,
    ) -> Result<(), ErrorBody> {
        let host = |e: &dyn std::fmt::Display| ErrorBody::new(ErrorCode::EHost, e.to_string());
        let static_ports: BTreeSet<&str> = model.ports().map(|(p, _)| p.as_str()).collect();
        let vnic_ports = model.vnics().map(|(_, v)| v.params.port.as_str());
        let ports: BTreeSet<&str> = static_ports.iter().copied().chain(vnic_ports).collect();
        let mut infos = HashMap::new();
        for &port in &ports {
            match netlink::port_info(&self.netlink, port).await {
                Ok(Some(info)) => {
                    infos.insert(port.to_string(), info);
                }
                Ok(None) if strict && static_ports.contains(port) => {
                    return Err(ErrorBody::new(
                        ErrorCode::EHost,
                        format!("port {port}: no such interface in the daemon's network namespace"),
                    ));
                }
                Ok(None) => {}
                Err(e) => return Err(host(&format!("looking up port {port}: {e}"))),
            }
        }
        self.dataplane
            .set_vm_ports(infos.keys().map(String::as_str))
            .map_err(|e| host(&format!("{e:#}")))?;
        // Scoping costs the above-NVA keys' bookkeeping on every change: worth it only when
        // the NVA's entries outnumber what a full comparison would cost.
        let large = model.nva().len() >= SCOPED_FROM_NVA_ENTRIES;
        let how = match (touched, self.above_nva.take()) {
            (Some(t), Some(mut above)) if large => {
                above.extend(t);
                Recompute::Touched(above)
            }
            _ if large => Recompute::AllKeepingAbove,
            _ => Recompute::All,
        };
        let (desired, above_nva) = model.desired_in(|p| infos.get(p).copied(), how);
        self.dataplane.apply(&desired).map_err(|e| match e {
            DataplaneError::MapFull { .. } => ErrorBody::new(ErrorCode::EResources, e.to_string()),
            e => host(&anyhow::Error::from(e).to_string()),
        })?;
        // Known only once written: after a failed write the next change compares all.
        self.above_nva = above_nva;
        // A change resolves the next hops of VTEPs it adds or removes; the kernel's
        // neighbour and route events (follow_underlay) refresh the others.
        if touched.is_some() && model.ipv4_vteps().eq(self.next_hop_vteps.iter().copied()) {
            return Ok(());
        }
        self.refresh_next_hops(model)
            .await
            .map_err(|e| host(&format!("{e:#}")))
    }

    /// Resolves the underlay next hop of every remote VTEP of `model` from the kernel's
    /// route and neighbour tables and mirrors them to the dataplane. A next hop seen for the
    /// first time becomes a managed neighbour, which the kernel keeps resolved.
    pub async fn refresh_next_hops(&mut self, model: &Model) -> anyhow::Result<()> {
        let mut next_hops = HashMap::new();
        self.next_hop_vteps = model.ipv4_vteps().collect();
        for vtep in model.ipv4_vteps() {
            let Some(route) = netlink::route_to(&self.netlink, vtep).await? else {
                tracing::warn!(%vtep, "no underlay route to VTEP");
                continue;
            };
            if self.managed_neighbours.insert(route) {
                netlink::keep_neighbour_resolved(&self.netlink, route.oif, route.hop).await?;
            }
            if let Some(nh) = netlink::next_hop(&self.netlink, route).await? {
                next_hops.insert(vtep.octets(), nh);
            }
        }
        if next_hops != self.next_hops {
            self.dataplane.set_next_hops(&next_hops)?;
            tracing::info!(resolved = next_hops.len(), "underlay next hops updated");
            self.next_hops = next_hops;
        }
        Ok(())
    }
}

pub fn router(state: Api, allowed: crate::access::Allowed) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/stats", get(stats))
        .route("/v1/fdb", get(fdb))
        .route("/v1/vns", get(list_vns).post(create_vn))
        .route("/v1/vnics", get(list_vnics))
        .route("/v1/vnics/{vm}/{index}", post(signal))
        .route("/v1/vns/{vn}", delete(delete_vn))
        .route("/v1/vns/{vn}/ports", put(attach_port))
        .route("/v1/vns/{vn}/ports/{port}", delete(detach_port))
        .route("/v1/vns/{vn}/fdb", put(add_remote))
        .route("/v1/vns/{vn}/fdb/{mac}", delete(del_remote))
        .route("/v1/vns/{vn}/flood", put(add_flood))
        .route("/v1/vns/{vn}/flood/{vtep}", delete(del_flood))
        .fallback(|| async {
            ApiError(ErrorBody::new(
                ErrorCode::ENotFound,
                "no such API path (this is API v1)",
            ))
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            allowed,
            crate::access::check,
        ))
        .with_state(state)
}

/// An error reply: the body, and an HTTP status derived from its code.
pub struct ApiError(pub ErrorBody);

impl From<ErrorBody> for ApiError {
    fn from(e: ErrorBody) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self.0.code {
            ErrorCode::EFormat => StatusCode::BAD_REQUEST,
            ErrorCode::EUnknownVn | ErrorCode::ENotFound => StatusCode::NOT_FOUND,
            ErrorCode::EExists | ErrorCode::EMacConflict | ErrorCode::EVidConflict => {
                StatusCode::CONFLICT
            }
            ErrorCode::EResources => StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::EHost => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::EState => StatusCode::CONFLICT,
            ErrorCode::EPermission => StatusCode::FORBIDDEN,
            ErrorCode::EMethod => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::ETimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::EBusy => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, Json(self.0)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Parses a JSON body into `T`; every failure is E_FORMAT naming what was wrong.
fn body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ErrorBody> {
    let bytes = body.map_err(|e| {
        ErrorBody::new(
            ErrorCode::EFormat,
            format!("request body (limit {MAX_BODY} bytes): {e}"),
        )
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ErrorBody::new(ErrorCode::EFormat, format!("request body: {e}")))
}

fn parse<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, ErrorBody>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e| ErrorBody::new(ErrorCode::EFormat, format!("{what} {s:?}: {e}")))
}

/// Milliseconds since the epoch: the model's clock (VID quarantine, hold times).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ok() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn status(State(s): State<Api>) -> Json<StatusView> {
    let nve = s.nve.lock().await;
    let mut v = nve.status.clone();
    v.vns = nve.model.vns().count();
    v.ports = nve.model.ports().count();
    if let Some(nva) = v.nva.as_mut() {
        nva.entries = nve.model.nva().len();
    }
    v.vm_mtu = nve.vm_mtu().await;
    v.underlay_mtu = netlink::mtu(&nve.netlink, &v.underlay).await.unwrap_or(0);
    v.next_hops = nve
        .next_hops
        .iter()
        .map(|(vtep, nh)| NextHopView {
            vtep: Ipv4Addr::from(*vtep),
            ifindex: nh.ifindex,
            mac: MacAddr(nh.dmac),
        })
        .collect();
    v.next_hops.sort_by_key(|n| n.vtep);
    Json(v)
}

async fn stats(State(s): State<Api>) -> ApiResult<Json<StatsView>> {
    let nve = s.nve.lock().await;
    let stats = nve
        .dataplane
        .stats()
        .map_err(|e| ErrorBody::new(ErrorCode::EHost, anyhow::Error::from(e).to_string()))?;
    Ok(Json(stats))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FdbQuery {
    mac: Option<String>,
}

async fn fdb(
    State(s): State<Api>,
    q: Result<Query<FdbQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<FdbView>>> {
    let Query(q) = q.map_err(|e| ErrorBody::new(ErrorCode::EFormat, e.body_text()))?;
    let only: Option<MacAddr> = q.mac.map(|m| parse("MAC", &m)).transpose()?;
    Ok(Json(s.nve.lock().await.model.fdb_views(only)))
}

async fn list_vns(State(s): State<Api>) -> Json<Vec<VnView>> {
    let nve = s.nve.lock().await;
    let vm_mtu = nve.vm_mtu().await;
    let mut views = nve.model.vn_views();
    for v in &mut views {
        if !v.mtu_configured {
            v.mtu = vm_mtu;
        }
    }
    Json(views)
}

async fn create_vn(
    State(s): State<Api>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let req: CreateVn = body(b)?;
    s.submit(Event::CreateVn(req)).await?;
    Ok(StatusCode::CREATED)
}

async fn delete_vn(State(s): State<Api>, Path(vn): Path<String>) -> ApiResult<StatusCode> {
    s.submit(Event::DeleteVn { vn }).await?;
    Ok(ok())
}

async fn attach_port(
    State(s): State<Api>,
    Path(vn): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let req: AttachPort = body(b)?;
    s.submit(Event::AttachPort { vn, req }).await?;
    Ok(ok())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VidQuery {
    #[serde(default)]
    vid: u16,
}

async fn detach_port(
    State(s): State<Api>,
    Path((vn, port)): Path<(String, String)>,
    q: Result<Query<VidQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<StatusCode> {
    let Query(q) = q.map_err(|e| ErrorBody::new(ErrorCode::EFormat, e.body_text()))?;
    s.submit(Event::DetachPort {
        vn,
        port,
        vid: q.vid,
    })
    .await?;
    Ok(ok())
}

async fn add_remote(
    State(s): State<Api>,
    Path(vn): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let req: RemoteMac = body(b)?;
    s.submit(Event::AddRemote { vn, req }).await?;
    Ok(ok())
}

async fn del_remote(
    State(s): State<Api>,
    Path((vn, mac)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let mac: MacAddr = parse("MAC", &mac)?;
    s.submit(Event::DelRemote { vn, mac }).await?;
    Ok(ok())
}

async fn add_flood(
    State(s): State<Api>,
    Path(vn): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let req: FloodVtep = body(b)?;
    s.submit(Event::AddFlood { vn, vtep: req.vtep }).await?;
    Ok(ok())
}

async fn del_flood(
    State(s): State<Api>,
    Path((vn, vtep)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let vtep: std::net::IpAddr = parse("VTEP", &vtep)?;
    s.submit(Event::DelFlood { vn, vtep }).await?;
    Ok(ok())
}

async fn list_vnics(State(s): State<Api>) -> Json<Vec<VnicView>> {
    let mut views = s.nve.lock().await.model.vnic_views();
    for v in &mut views {
        v.port_present = netlink::ifindex(&v.port).is_some();
    }
    Json(views)
}

/// One signaling message (pre-associate, associate, disassociate, pause, resume) for a vNIC.
/// Messages for one vNIC are serialized by the daemon's lock; each is applied to the model
/// and the dataplane as one change.
async fn signal(
    State(s): State<Api>,
    Path((vm, index)): Path<(String, String)>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<SignalReply>> {
    let index: u32 = parse("vNIC index", &index)?;
    let id = VnicId::new(&vm, index)?;
    let req: VnicRequest = body(b)?;
    let view = s.submit(Event::Signal { id, req }).await?;
    Ok(Json(SignalReply {
        code: "OK".into(),
        vnic: view,
    }))
}
