//! The codecs against lldpad's own frames (tests/data/vdp/frames, captured from Debian's
//! lldpad in station and bridge roles; their README says how).
use std::{fs, path::PathBuf};

use super::{ETH_HLEN, ecp, lldp, tlv};

fn frames(suffix: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/vdp/frames");
    let mut out: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .expect("tests/data/vdp/frames")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.ends_with(suffix).then_some(name)
        })
        .map(|name| {
            let text = fs::read_to_string(dir.join(&name)).expect("readable");
            let bytes = text
                .split_whitespace()
                .map(|b| u8::from_str_radix(b, 16).expect("hex"))
                .collect();
            (name, bytes)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no *{suffix} in {}", dir.display());
    out
}

#[test]
fn every_station_request_reads_and_writes_back() {
    for (name, f) in frames(".station-req.hex") {
        let (header, payload) = ecp::Header::parse(&f[ETH_HLEN..]).unwrap();
        assert_eq!(header.op, ecp::Op::Request, "{name}");
        let (manager, vsis) = tlv::parse(payload).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(vsis.len(), 1, "{name}: lldpad sends one VSI an ECPDU");
        let vsi = vsis[0].clone().unwrap_or_else(|r| panic!("{name}: {r:?}"));
        assert_eq!(vsi.status & tlv::ACK, 0, "{name}: a request");
        // Written again it is the same bytes (lldpad pads instead of ending with End).
        let written = tlv::write(manager, std::slice::from_ref(&vsi));
        let tlvs = written.len() - 2;
        assert_eq!(&written[..tlvs], &payload[..tlvs], "{name}");
    }
}

#[test]
fn lldpads_bridge_answers_and_acks_read() {
    for (name, f) in frames(".bridge-reply.hex") {
        let (_, payload) = ecp::Header::parse(&f[ETH_HLEN..]).unwrap();
        let (_, vsis) = tlv::parse(payload).unwrap_or_else(|e| panic!("{name}: {e}"));
        let vsi = vsis[0].clone().unwrap_or_else(|r| panic!("{name}: {r:?}"));
        assert_ne!(vsi.status & tlv::ACK, 0, "{name}: an answer");
    }
    for (name, f) in frames("-ack.hex") {
        assert_eq!(f.len(), 18, "{name}: ACKs are 18 bytes");
        let (header, rest) = ecp::Header::parse(&f[ETH_HLEN..]).unwrap();
        assert_eq!((header.op, rest.len()), (ecp::Op::Ack, 0), "{name}");
    }
}

#[test]
fn lldpads_lldpdus_carry_its_evb_tlv() {
    for (name, f) in frames(".hex")
        .into_iter()
        .filter(|(n, _)| n.starts_with("lldp-"))
    {
        let n = lldp::parse(&f[ETH_HLEN..]).unwrap_or_else(|e| panic!("{name}: {e}"));
        if n.ttl == 0 {
            // lldpad's goodbye on SIGTERM: chassis, port, TTL 0 and nothing else.
            assert_eq!(n.evb, None, "{name}");
            continue;
        }
        let evb = n.evb.unwrap_or_else(|| panic!("{name}: no EVB TLV"));
        if name.starts_with("lldp-station-lldpad") {
            // The rig's station: evbgpid, RTE 8, 3 retries, RWD and RKA 16.
            assert!(evb.uses_group_ids(), "{name}");
            let t = evb.timers;
            assert_eq!((t.retries, t.rte, t.rwd, t.rka), (3, 8, 16, 16), "{name}");
        }
    }
}
