//! The tables read commands print (`--json` prints the same values as JSON).
use crate::{
    api::{FdbTarget, FdbView, ReloadView, StatsView, StatusView, VdpPortView, VnView, VnicView},
    vdp::lldp::Timers,
};

pub fn vnic(vnics: &Vec<VnicView>) -> String {
    let mut out = format!(
        "{:<38} {:<16} {:<14} {:<15} {:>4}  {}\n",
        "VNIC", "STATE", "VN", "PORT", "VID", "MACS"
    );
    for v in vnics {
        let macs: Vec<String> = v.macs.iter().map(ToString::to_string).collect();
        let state = serde_json::to_value(v.state)
            .ok()
            .and_then(|s| s.as_str().map(str::to_string))
            .unwrap_or_default();
        out += &format!(
            "{:<38} {:<16} {:<14} {:<15} {:>4}  {}\n",
            format!("{}/{}", v.vm, v.index),
            state,
            v.vn,
            v.port,
            v.vid,
            macs.join(",")
        );
    }
    out
}

pub fn status(s: &StatusView) -> String {
    format!(
        "instance      {}\nvtep          {}\nunderlay      {} ({})\npins          {}\nvns           {}\nports         {}\n",
        s.instance, s.vtep, s.underlay, s.underlay_mode, s.pin_dir, s.vns, s.ports
    ) + &s
        .next_hops
        .iter()
        .map(|n| {
            format!(
                "next hop      {} via {} (ifindex {})\n",
                n.vtep, n.mac, n.ifindex
            )
        })
        .collect::<String>()
        + &s.nva.as_ref().map(nva).unwrap_or_default()
}

fn nva(n: &crate::api::NvaStatus) -> String {
    let state = if n.connected {
        "connected"
    } else {
        "not connected"
    };
    let mut out = format!("nva           {} ({state}", n.endpoint);
    if let Some(e) = &n.last_error {
        out += &format!(": {e}");
    }
    out += ")\n";
    for b in &n.neighbors {
        let up = b
            .uptime_secs
            .map_or(String::new(), |s| format!(" for {s} s"));
        out += &format!(
            "bgp neighbor  {} AS {} {}{up}, prefixes received {} sent {}, stale {}\n",
            b.address, b.remote_as, b.state, b.prefixes_received, b.prefixes_sent, b.stale
        );
    }
    for d in &n.duplicate_macs {
        out += &format!("duplicate MAC {d} (frozen)\n");
    }
    out
}

pub fn vn(vns: &Vec<VnView>) -> String {
    let mut out = format!(
        "{:<16} {:>9} {:>5}  {:<28} {}\n",
        "VN", "VNI", "MTU", "PORTS", "FLOOD"
    );
    for vn in vns {
        let ports: Vec<String> = vn
            .ports
            .iter()
            .map(|p| {
                if p.vid == 0 {
                    p.port.clone()
                } else {
                    format!("{}.{}", p.port, p.vid)
                }
            })
            .collect();
        let flood: Vec<String> = vn.flood.iter().map(ToString::to_string).collect();
        out += &format!(
            "{:<16} {:>9} {:>5}  {:<28} {}\n",
            vn.name,
            vn.vni,
            vn.mtu,
            ports.join(","),
            flood.join(",")
        );
    }
    out
}

pub fn fdb(fdb: &Vec<FdbView>) -> String {
    let mut out = format!("{:<16} {:>9}  {:<17}  {}\n", "VN", "VNI", "MAC", "TARGET");
    for e in fdb {
        let target = match &e.target {
            FdbTarget::Port { port, vid: 0 } => format!("port {port}"),
            FdbTarget::Port { port, vid } => format!("port {port} vid {vid}"),
            FdbTarget::Vtep { vtep } => format!("vtep {vtep}"),
        };
        let learned = match (e.learned, e.moved_until) {
            (true, _) => " (learned)",
            (_, Some(_)) => " (moved: forwarding)",
            _ if e.from_nva => " (NVA)",
            _ => "",
        };
        out += &format!(
            "{:<16} {:>9}  {:<17}  {target}{learned}\n",
            e.vn, e.vni, e.mac
        );
    }
    out
}

pub fn stats(s: &StatsView) -> String {
    let mut out = format!(
        "{:<12} {:<24} {:>12} {:>14}\n",
        "HOOK", "OUTCOME", "PACKETS", "BYTES"
    );
    for (hook, outcomes) in &s.hooks {
        for (name, c) in outcomes {
            out += &format!(
                "{:<12} {:<24} {:>12} {:>14}\n",
                hook, name, c.packets, c.bytes
            );
        }
    }
    let scopes = s
        .vns
        .iter()
        .map(|(vni, c)| (format!("vni {vni}"), c))
        .chain(s.ports.iter().map(|(port, c)| (format!("port {port}"), c)));
    for (scope, counters) in scopes {
        out += "\n";
        for (name, c) in counters {
            out += &format!(
                "{:<16} {:<20} {:>12} {:>14}\n",
                scope, name, c.packets, c.bytes
            );
        }
    }
    out
}

pub fn vdp(ports: &Vec<VdpPortView>) -> String {
    let mut out = String::new();
    for p in ports {
        let t = |t: &Timers| format!("R {} RTE {} RWD {} RKA {}", t.retries, t.rte, t.rwd, t.rka);
        out += &format!("port {}  timers {}\n", p.port, t(&p.timers));
        match &p.session {
            None => out += "  no session\n",
            Some(s) => {
                if let Some(e) = &s.error {
                    out += &format!("  down: {e}\n");
                }
                out += &format!(
                    "  negotiated {}  keep-alive timeout {} ms\n",
                    t(&s.negotiated),
                    s.keep_alive_timeout_ms
                );
                out += &match &s.peer {
                    Some(peer) => format!(
                        "  station {}  group ids {}  heard {} ms ago\n",
                        peer.mac,
                        if peer.group_ids { "yes" } else { "no" },
                        peer.last_heard_ms_ago
                    ),
                    None => "  station not heard yet\n".to_string(),
                };
                let c = &s.counters;
                out += &format!(
                    "  ecp in {} dup {} acked-by-us {}  out {} resent {} acked {} given-up {}  malformed {}\n  vsi requests {} refused {} deassocs {}  lldp out {} in {} malformed {}\n",
                    c.ecp_received,
                    c.ecp_duplicates,
                    c.ecp_acks_sent,
                    c.ecp_sent,
                    c.ecp_retransmitted,
                    c.ecp_acked,
                    c.ecp_given_up,
                    c.malformed,
                    c.vsi_requests,
                    c.vsi_refused,
                    c.deassocs_sent,
                    c.lldp_sent,
                    c.lldp_received,
                    c.lldp_malformed
                );
            }
        }
        out += &format!(
            "  {:<38} {:<16} {:<14} {:>9} {:>4}  {}\n",
            "VSI", "STATE", "VN", "VNI", "VID", "MACS"
        );
        for v in &p.vsis {
            let macs: Vec<String> = v.macs.iter().map(ToString::to_string).collect();
            let state = v
                .state
                .and_then(|s| serde_json::to_value(s).ok())
                .and_then(|s| s.as_str().map(str::to_string))
                .unwrap_or_else(|| "deassociating".into());
            out += &format!(
                "  {:<38} {:<16} {:<14} {:>9} {:>4}  {}\n",
                v.vsiid,
                state,
                v.vn.as_deref().unwrap_or("-"),
                v.vni.map_or("-".into(), |n| n.to_string()),
                v.vid,
                macs.join(",")
            );
        }
    }
    out
}

pub fn reload(r: &ReloadView) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    let mut out = format!(
        "config          {}\ncreated         {}\n",
        r.file.as_deref().unwrap_or("(none: flags only)"),
        list(&r.created)
    );
    for f in &r.failed {
        out += &format!("not created     {f}\n");
    }
    for k in &r.kept {
        out += &format!("kept            {k}\n");
    }
    out += &format!("restart needed  {}\n", list(&r.restart_needed));
    out
}
