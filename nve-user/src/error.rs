//! The core's one error: a stable code (what the API answers with, spec.md 2.3) and what
//! went wrong. Every refusal of the model, the state machine or the VID maps is one.
use serde::{Deserialize, Serialize};

/// Stable error codes (spec.md 2.3), the `code` of an [`Error`] and of the API's error body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// Malformed request: bad JSON, unknown or missing field, bad MAC, VNI, VID or address.
    EFormat,
    /// The VN named is not known here.
    EUnknownVn,
    /// A VN of that name or VNI exists already.
    EExists,
    /// The port, MAC or VTEP named is not in the VN.
    ENotFound,
    /// The MAC is already bound elsewhere in the VN.
    EMacConflict,
    /// The port (and VID) is bound to another VN.
    EVidConflict,
    /// A table of the dataplane is full.
    EResources,
    /// The host refused: no such interface, or a kernel error.
    EHost,
    /// Not allowed in the vNIC's (or VN's) current state; the message names the state.
    EState,
    /// The caller is neither root nor in the daemon's `--group`.
    EPermission,
    /// The path exists, not with this method.
    EMethod,
    /// The request (its head, or all of it) did not arrive in time.
    ETimeout,
    /// Too many requests at once (connections, or changes queued for the writer): try
    /// again.
    EBusy,
}

/// A refusal: its code, and a message naming what was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.name())]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl ErrorCode {
    /// The code as the API writes it (`E_FORMAT`, ...).
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{self:?}"))
    }
}
