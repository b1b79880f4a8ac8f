//! The checks of one frame's result: against the model's prediction, and against the
//! isolation invariants, which do not trust the model.
use std::net::{Ipv4Addr, Ipv6Addr};

use nve_common::{
    metrics::{Forward, Outcome},
    wire::UDP_SRC_PORT_MIN,
};

use super::report::short_hex;
use crate::{
    progtest::Program,
    reference::{self, Config, Location, Output, Port, Prediction, Underlay},
};

/// How the program's output `out` differs from what the model predicted for `frame`; of an
/// encapsulation's UDP source port (a flow hash) only the range is checked.
pub fn output_problems(
    cfg: &Config,
    frame: &[u8],
    want: &Prediction,
    out: &[u8],
    p: &mut Vec<String>,
) {
    match &want.output {
        Output::Unchanged if out != frame => p.push(format!("frame changed: {}", short_hex(out))),
        Output::Forwarded(want) if want != out => p.push(format!(
            "output {}\n        model  {}",
            short_hex(out),
            short_hex(want)
        )),
        Output::Delivered { frame: want, .. } | Output::Flooded { frame: want, .. }
            if want != out =>
        {
            p.push(format!(
                "output {}\n        model  {}",
                short_hex(out),
                short_hex(want)
            ));
        }
        Output::Encapsulated { vni, vtep, inner } => {
            let want = cfg
                .encapsulation(*vni, *vtep, inner)
                .expect("a next hop for every VTEP");
            let sport = out
                .get(34..36)
                .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
            let mut got = out.to_vec();
            if let Some(b) = got.get_mut(34..36) {
                b.fill(0);
            }
            if got != want {
                p.push(format!(
                    "output {}\n        model  {}",
                    short_hex(out),
                    short_hex(&want)
                ));
            }
            if sport < UDP_SRC_PORT_MIN {
                p.push(format!("UDP source port {sport} below {UDP_SRC_PORT_MIN}"));
            }
        }
        _ => {}
    }
}

/// The isolation invariants, from the configuration alone (not from the model's verdict):
/// whatever the program did, it must not have carried the frame into another VN.
pub fn isolation_problems(
    cfg: &Config,
    program: Program,
    frame: &[u8],
    observed: Option<Outcome>,
    out: &[u8],
    p: &mut Vec<String>,
) {
    let Some(Outcome::Forward(forward)) = observed else {
        return;
    };
    match program {
        Program::TcVmEgress => vm_isolation(cfg, frame, forward, out, p),
        Program::XdpUnderlayRx | Program::TcUnderlayRx => {
            underlay_isolation(cfg, frame, forward, out, p)
        }
        Program::TcTunnelRx => p.push(format!(
            "ISOLATION: {} without tunnel metadata: no VNI to keep it in",
            forward.name()
        )),
        Program::XdpPass => {}
    }
}

fn vm_isolation(cfg: &Config, frame: &[u8], forward: Forward, out: &[u8], p: &mut Vec<String>) {
    let vid = reference::vm_frame(frame).map_or(0, |(vid, _)| vid);
    let port = Port::new(cfg.ingress_ifindex, vid);
    let Some(vni) = cfg.bindings.get(&port).filter(|b| b.active).map(|b| b.vni) else {
        p.push(format!(
            "ISOLATION: {} from {port:?}, which forwards for no VN",
            forward.name()
        ));
        return;
    };
    match forward {
        // Over IPv6 the frame goes as it is to the kernel's vxlan device (the VNI and VTEP
        // ride in the tunnel key, which a test run does not show): its destination must be
        // a MAC of the VN behind an IPv6 VTEP.
        Forward::Encapsulated if out == frame_untagged(frame) => {
            let dst: [u8; 6] = out[..6].try_into().expect("6 bytes");
            if !matches!(cfg.fdb.get(&(vni, dst)), Some(Location::RemoteV6(_))) {
                p.push(format!(
                    "ISOLATION: from {port:?} (VNI {vni}) to the tunnel device for {dst:02x?}, \
                     no MAC of that VN over IPv6"
                ));
            }
        }
        Forward::Encapsulated => {
            if out.len() < 50 {
                p.push("ISOLATION: encapsulated frame shorter than its headers".into());
                return;
            }
            let out_vni = u32::from_be_bytes([0, out[46], out[47], out[48]]);
            let vtep = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
            if out_vni != vni {
                p.push(format!(
                    "ISOLATION: from {port:?} (VNI {vni}) encapsulated with VNI {out_vni}"
                ));
            }
            if !cfg.vteps_of(vni).contains(&vtep) {
                p.push(format!(
                    "ISOLATION: from {port:?} (VNI {vni}) sent to {vtep}, no VTEP of that VN"
                ));
            }
        }
        Forward::ArpReplied => {
            let answer = (out.len() >= 42).then(|| {
                let ip = Ipv4Addr::new(out[28], out[29], out[30], out[31]);
                (ip, <[u8; 6]>::try_from(&out[22..28]).expect("6 bytes"))
            });
            let known =
                answer.and_then(|(ip, mac)| (cfg.arp.get(&(vni, ip)) == Some(&mac)).then_some(()));
            if known.is_none() {
                p.push(format!(
                    "ISOLATION: ARP answer {answer:?} on {port:?} is not an address of VNI {vni}"
                ));
            }
        }
        Forward::NdReplied => {
            // The advertisement's target, and its target link-layer address option.
            let answer = (out.len() >= 86).then(|| {
                let target = <[u8; 16]>::try_from(&out[62..78]).expect("16 bytes");
                (
                    Ipv6Addr::from(target),
                    <[u8; 6]>::try_from(&out[80..86]).expect("6 bytes"),
                )
            });
            let known =
                answer.and_then(|(ip, mac)| (cfg.nd.get(&(vni, ip)) == Some(&mac)).then_some(()));
            if known.is_none() {
                p.push(format!(
                    "ISOLATION: ND answer {answer:?} on {port:?} is not an address of VNI {vni}"
                ));
            }
        }
        _ => {}
    }
}

fn underlay_isolation(
    cfg: &Config,
    frame: &[u8],
    forward: Forward,
    out: &[u8],
    p: &mut Vec<String>,
) {
    if !matches!(forward, Forward::Decapsulated | Forward::Flooded) {
        return;
    }
    let Underlay::Vxlan {
        src, vni, inner, ..
    } = reference::underlay(cfg, frame)
    else {
        p.push(format!(
            "ISOLATION: {} a frame that is not VXLAN for this VTEP",
            forward.name()
        ));
        return;
    };
    let Some(vn) = cfg.vns.get(&vni) else {
        p.push(format!(
            "ISOLATION: {} from VNI {vni}, which this NVE does not serve",
            forward.name()
        ));
        return;
    };
    if !cfg.accepts(vni, src) {
        p.push(format!(
            "ISOLATION: {} VNI {vni} from {src}, a VTEP the VN does not know",
            forward.name()
        ));
    }
    let dst: [u8; 6] = inner[..6].try_into().expect("inner Ethernet header");
    let location = cfg.fdb.get(&(vni, dst));
    let receiving_in_vn = |port: &Port| {
        cfg.bindings
            .get(port)
            .is_some_and(|b| b.receives && b.vni == vni)
    };
    let fine = match forward {
        Forward::Decapsulated => {
            matches!(location, Some(Location::Local { port, .. }) if receiving_in_vn(port))
        }
        _ => reference::is_multicast(&dst) || (location.is_none() && vn.floods_unknown),
    };
    if !fine {
        p.push(format!(
            "ISOLATION: {} VNI {vni} to {dst:02x?}, which is {location:?} in that VN",
            forward.name()
        ));
    }
    if out != inner {
        p.push(format!(
            "ISOLATION: {} bytes are not the inner frame of VNI {vni}",
            forward.name()
        ));
    }
}
/// The frame as tc_vm_egress forwards it: without the port's VLAN tag.
fn frame_untagged(frame: &[u8]) -> Vec<u8> {
    reference::vm_frame(frame).map_or_else(|_| frame.to_vec(), |(_, f)| f)
}
