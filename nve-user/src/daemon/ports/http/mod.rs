//! The API port: HTTP/1.1 with JSON bodies under `/v1` on the instance's Unix socket
//! (`conn.rs` serves the connections, `access.rs` checks who may). Reads come from the
//! writer's snapshot and the counters' pins; every change is an event for the writer.
mod access;
mod conn;
mod monitor;
mod vdp;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State, rejection::BytesRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get, post, put},
};
use serde::{Deserialize, de::DeserializeOwned};

pub use access::{Allowed, group_id};
pub use conn::serve;

use crate::{
    api::{
        AttachPort, CreateVn, ErrorBody, ErrorCode, FdbView, FloodVtep, Migration, ReloadView,
        RemoteMac, SignalReply, StatsView, StatusView, VnView, VnicRequest, VnicView,
    },
    daemon::handle::Handle,
    mac::MacAddr,
    model::{Event, VnicId},
    netlink,
};

/// What `POST /v1/reload` runs: the daemon's re-read of its config file.
pub type Reload = std::sync::Arc<
    dyn Fn() -> std::pin::Pin<
            Box<dyn Future<Output = Result<ReloadView, crate::error::Error>> + Send>,
        > + Send
        + Sync,
>;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// The API's routes, for `serve`.
pub fn router(state: Handle, allowed: Allowed, reload: Reload) -> Router {
    Router::new()
        .route(
            "/v1/reload",
            post(move || {
                let reload = reload.clone();
                async move { reload().await.map(Json).map_err(ApiError::from) }
            }),
        )
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
        .route("/v1/monitor", get(monitor::monitor))
        .route("/v1/vdp", get(vdp::status))
        .route(
            "/v1/vdp/ports/{port}",
            put(vdp::enable).delete(vdp::disable),
        )
        .fallback(|| async {
            ApiError(ErrorBody::new(
                ErrorCode::ENotFound,
                "no such API path (this is API v1)",
            ))
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(allowed, access::check))
        .with_state(state)
}

/// An error reply: the body, and an HTTP status derived from its code.
pub struct ApiError(pub ErrorBody);

impl From<ErrorBody> for ApiError {
    fn from(e: ErrorBody) -> Self {
        ApiError(e)
    }
}

impl From<crate::error::Error> for ApiError {
    fn from(e: crate::error::Error) -> Self {
        ApiError(e.into())
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

fn ok() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn status(State(s): State<Handle>) -> Json<StatusView> {
    Json(s.snapshot().status.clone())
}

async fn stats(State(s): State<Handle>) -> ApiResult<Json<StatsView>> {
    Ok(Json(s.counters()?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FdbQuery {
    mac: Option<String>,
}

async fn fdb(
    State(s): State<Handle>,
    q: Result<Query<FdbQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<FdbView>>> {
    let Query(q) = q.map_err(|e| ErrorBody::new(ErrorCode::EFormat, e.body_text()))?;
    let only: Option<MacAddr> = q.mac.map(|m| parse("MAC", &m)).transpose()?;
    Ok(Json(s.snapshot().model.fdb_views(only)))
}

async fn list_vns(State(s): State<Handle>) -> Json<Vec<VnView>> {
    let snapshot = s.snapshot();
    let vm_mtu = snapshot.status.vm_mtu;
    let mut views = snapshot.model.vn_views();
    for v in &mut views {
        if !v.mtu_configured {
            v.mtu = vm_mtu;
        }
    }
    Json(views)
}

async fn create_vn(
    State(s): State<Handle>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let req: CreateVn = body(b)?;
    s.try_submit(Event::CreateVn(req)).await?;
    Ok(StatusCode::CREATED)
}

async fn delete_vn(State(s): State<Handle>, Path(vn): Path<String>) -> ApiResult<StatusCode> {
    s.try_submit(Event::DeleteVn { vn }).await?;
    Ok(ok())
}

async fn attach_port(
    State(s): State<Handle>,
    Path(vn): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let req: AttachPort = body(b)?;
    s.try_submit(Event::AttachPort { vn, req }).await?;
    Ok(ok())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VidQuery {
    #[serde(default)]
    vid: u16,
}

async fn detach_port(
    State(s): State<Handle>,
    Path((vn, port)): Path<(String, String)>,
    q: Result<Query<VidQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<StatusCode> {
    let Query(q) = q.map_err(|e| ErrorBody::new(ErrorCode::EFormat, e.body_text()))?;
    s.try_submit(Event::DetachPort {
        vn,
        port,
        vid: q.vid,
    })
    .await?;
    Ok(ok())
}

async fn add_remote(
    State(s): State<Handle>,
    Path(vn): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let req: RemoteMac = body(b)?;
    s.try_submit(Event::AddRemote { vn, req }).await?;
    Ok(ok())
}

async fn del_remote(
    State(s): State<Handle>,
    Path((vn, mac)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let mac: MacAddr = parse("MAC", &mac)?;
    s.try_submit(Event::DelRemote { vn, mac }).await?;
    Ok(ok())
}

async fn add_flood(
    State(s): State<Handle>,
    Path(vn): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let req: FloodVtep = body(b)?;
    s.try_submit(Event::AddFlood { vn, vtep: req.vtep }).await?;
    Ok(ok())
}

async fn del_flood(
    State(s): State<Handle>,
    Path((vn, vtep)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let vtep: std::net::IpAddr = parse("VTEP", &vtep)?;
    s.try_submit(Event::DelFlood { vn, vtep }).await?;
    Ok(ok())
}

async fn list_vnics(State(s): State<Handle>) -> Json<Vec<VnicView>> {
    let mut views = s.snapshot().model.vnic_views();
    for v in &mut views {
        v.port_present = netlink::ifindex(&v.port).is_some();
    }
    Json(views)
}

/// One signaling message (pre-associate, associate, disassociate, pause, resume) for a vNIC.
/// The writer applies messages in arrival order, so those for one vNIC are serialized.
async fn signal(
    State(s): State<Handle>,
    Path((vm, index)): Path<(String, String)>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<SignalReply>> {
    let index: u32 = parse("vNIC index", &index)?;
    let id = VnicId::new(&vm, index)?;
    let req: VnicRequest = body(b)?;
    if let Migration::MigratingOut(vtep) = req.migration
        && vtep == s.snapshot().status.vtep
    {
        return Err(crate::error::Error::new(
            ErrorCode::EFormat,
            format!("migrating-out VTEP {vtep} is this NVE's own"),
        )
        .into());
    }
    let view = s.try_submit(Event::Signal { id, req }).await?;
    Ok(Json(SignalReply {
        code: "OK".into(),
        vnic: view,
    }))
}
