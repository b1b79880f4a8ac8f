//! The Prometheus port: off unless `nve daemon --metrics-listen ADDR` asks for it.
//! `GET /metrics` renders the same counters as `nve stats` (exposition format 0.0.4).
use std::{fmt::Write as _, net::SocketAddr};

use anyhow::Context as _;
use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use nve_common::metrics::{DropReason, Outcome};

use crate::{
    api::{NvaStatus, StatsView},
    daemon::handle::Handle,
};

/// Binds `addr`; the future that serves `/metrics` (until it is dropped).
pub async fn serve(
    addr: SocketAddr,
    state: Handle,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener {addr}"))?;
    tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(state);
    Ok(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("metrics listener: {e}");
        }
    })
}

async fn metrics(State(state): State<Handle>) -> impl IntoResponse {
    let snapshot = state.snapshot();
    let (stats, vns, ports) = (state.counters(), snapshot.status.vns, snapshot.status.ports);
    let nva = snapshot.status.nva.clone();
    match stats {
        Ok(stats) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            render(&stats, vns, ports) + &render_nva(nva.as_ref()),
        )
            .into_response(),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading counters: {e}\n"),
        )
            .into_response(),
    }
}

/// Whether an outcome name is a drop reason.
fn is_drop(name: &str) -> bool {
    DropReason::ALL
        .iter()
        .any(|&d| Outcome::Drop(d).name() == name)
}

/// The exposition text for `stats`.
pub fn render(stats: &StatsView, vns: usize, ports: usize) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    for (unit, packets) in [("packets", true), ("bytes", false)] {
        let pick = |c: &crate::api::CounterView| if packets { c.packets } else { c.bytes };
        let hooks = |drops: bool| {
            let mut samples = Vec::new();
            for (hook, outcomes) in &stats.hooks {
                for (name, c) in outcomes.iter().filter(|(n, _)| is_drop(n) == drops) {
                    let label = if drops { "reason" } else { "outcome" };
                    samples.push((format!("hook=\"{hook}\",{label}=\"{name}\""), pick(c)));
                }
            }
            samples
        };
        family(
            &format!("nve_forwarded_{unit}_total"),
            "counter",
            "Packets the dataplane forwarded, by hook and outcome.",
            hooks(false),
        );
        family(
            &format!("nve_dropped_{unit}_total"),
            "counter",
            "Packets the dataplane dropped, by hook and reason.",
            hooks(true),
        );
        let per = |scope: &str, rows: Vec<(String, &crate::api::CountersView)>| {
            rows.into_iter()
                .flat_map(|(key, counters)| {
                    counters.iter().map(move |(dir, c)| {
                        (format!("{scope}=\"{key}\",counter=\"{dir}\""), pick(c))
                    })
                })
                .collect::<Vec<_>>()
        };
        family(
            &format!("nve_vn_{unit}_total"),
            "counter",
            "Traffic per VN: from_vms, to_vms, from_underlay, to_underlay, dropped.",
            per(
                "vni",
                stats.vns.iter().map(|(k, v)| (k.to_string(), v)).collect(),
            ),
        );
        family(
            &format!("nve_port_{unit}_total"),
            "counter",
            "Traffic per VM port: from_vm, to_vm, dropped.",
            per(
                "port",
                stats.ports.iter().map(|(k, v)| (k.clone(), v)).collect(),
            ),
        );
    }
    let _ = writeln!(
        out,
        "# HELP nve_vns VNs this NVE serves.\n# TYPE nve_vns gauge\nnve_vns {vns}"
    );
    let _ = writeln!(
        out,
        "# HELP nve_ports VM ports attached.\n# TYPE nve_ports gauge\nnve_ports {ports}"
    );
    out
}

/// The NVA's gauges, when the daemon has one (etcd or a peers file).
pub fn render_nva(nva: Option<&NvaStatus>) -> String {
    let Some(nva) = nva else {
        return String::new();
    };
    let mut out = String::new();
    for (name, help, value) in [
        (
            "nve_nva_connected",
            "1 while the NVA is synced (etcd watched, peers file accepted).",
            u64::from(nva.connected),
        ),
        (
            "nve_nva_entries",
            "Other NVEs' MACs installed from the NVA.",
            nva.entries as u64,
        ),
        (
            "nve_nva_duplicate_macs",
            "MACs frozen as duplicates (too many moves).",
            nva.duplicate_macs.len() as u64,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    out
}
