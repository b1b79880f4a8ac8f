//! Rows for `tc_tunnel_rx`. A test run cannot attach the tunnel metadata the kernel's vxlan
//! device leaves, so only its absence is tested here; the namespace rigs cover the rest.
use nve_common::metrics::DropReason;

use super::{Case, Program, VM1, VM2, dropped};
use crate::packet;

pub(super) fn cases() -> Vec<Case> {
    vec![Case::new(
        Program::TcTunnelRx,
        "a frame without tunnel metadata",
        packet::inner_ping(VM1, VM2, 32),
        dropped(DropReason::TunnelKeyMissing),
    )]
}
