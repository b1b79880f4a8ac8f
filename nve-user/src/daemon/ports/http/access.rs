//! Who may use the API socket: root, and members of the group named by `--group`. The
//! socket's file mode (0660, owner root, that group) keeps others from connecting; the peer
//! credentials of each connection (SO_PEERCRED, and the peer's supplementary groups from
//! /proc) are checked again, so a socket whose mode was loosened, or a descriptor handed to
//! another process, still refuses them with E_PERMISSION.
use axum::{
    Json,
    extract::{ConnectInfo, Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};
use tokio::net::UnixStream;

use crate::api::{ErrorBody, ErrorCode};

/// The peer of one API connection.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<i32>,
}

impl Peer {
    /// The peer credentials of `stream`.
    pub fn of(stream: &UnixStream) -> Self {
        match stream.peer_cred() {
            Ok(c) => Peer {
                uid: Some(c.uid()),
                gid: Some(c.gid()),
                pid: c.pid(),
            },
            Err(_) => Peer {
                uid: None,
                gid: None,
                pid: None,
            },
        }
    }
}

/// The group allowed besides root, if any.
#[derive(Clone, Copy, Debug)]
pub struct Allowed {
    pub gid: Option<u32>,
}

impl Peer {
    fn allowed(&self, allowed: Allowed) -> bool {
        if self.uid == Some(0) {
            return true;
        }
        let Some(gid) = allowed.gid else { return false };
        self.gid == Some(gid)
            || self
                .pid
                .is_some_and(|pid| supplementary_groups(pid).contains(&gid))
    }
}

/// The supplementary groups of process `pid` (the `Groups:` line of /proc/<pid>/status).
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Middleware: refuses requests from peers that are neither root nor in the allowed group.
pub async fn check(
    State(allowed): State<Allowed>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
    next: Next,
) -> Response {
    if peer.allowed(allowed) {
        return next.run(req).await;
    }
    let body = ErrorBody::new(
        ErrorCode::EPermission,
        format!(
            "uid {} may not use this NVE: only root{} may",
            peer.uid.map_or("?".into(), |u| u.to_string()),
            allowed
                .gid
                .map_or(String::new(), |g| format!(" and group {g}"))
        ),
    );
    (StatusCode::FORBIDDEN, Json(body)).into_response()
}

/// The gid of group `name`.
pub fn group_id(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: getgrnam with a NUL-terminated name; the result is read at once.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        anyhow::bail!("no group named {name:?}");
    }
    // SAFETY: non-null pointer from getgrnam.
    Ok(unsafe { (*gr).gr_gid })
}
