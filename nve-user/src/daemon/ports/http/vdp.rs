//! `/v1/vdp`: turning VDP on and off for trunk ports, and each port's session and VSIs.
use axum::{
    Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::StatusCode,
};

use super::{ApiResult, body, ok};
use crate::{
    api::{VdpEnable, VdpPortView},
    daemon::handle::Handle,
    model::Event,
};

pub async fn status(State(s): State<Handle>) -> Json<Vec<VdpPortView>> {
    let mut ports = s.snapshot().model.vdp_views();
    let mut sessions = s.vdp_sessions();
    for p in &mut ports {
        p.session = sessions.remove(&p.port);
    }
    Json(ports)
}

pub async fn enable(
    State(s): State<Handle>,
    Path(port): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let timers: VdpEnable = body(b)?;
    s.try_submit(Event::VdpEnable { port, timers }).await?;
    Ok(ok())
}

pub async fn disable(State(s): State<Handle>, Path(port): Path<String>) -> ApiResult<StatusCode> {
    s.try_submit(Event::VdpDisable { port }).await?;
    Ok(ok())
}
