//! Every program against the table of cases in `nve_tests::progtest`, through the kernel's
//! BPF_PROG_TEST_RUN: return value, output bytes and the counter each case must move.
use nve_common::wire::UDP_SRC_PORT_MIN;
use nve_tests::{
    progtest::{Loaded, Output, cases, encapsulated},
    rig::require_root,
};

#[test]
fn programs_match_the_case_table() {
    require_root();
    let loaded = Loaded::new("ptr").expect("loading the dataplane");
    let mut failures = Vec::new();
    for case in cases() {
        let before = loaded.counter(case.program.hook(), case.outcome).unwrap();
        let (rc, out, _) = match loaded.run(case.program, &case.frame, 1) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!(
                    "{} / {}: test run refused: {e:#}",
                    case.program.name(),
                    case.name
                ));
                continue;
            }
        };
        let after = loaded.counter(case.program.hook(), case.outcome).unwrap();
        let mut problems = Vec::new();
        if rc != case.program.code(case.verdict) {
            problems.push(format!(
                "returned {rc}, want {:?} ({})",
                case.verdict,
                case.program.code(case.verdict)
            ));
        }
        if after != before + 1 {
            problems.push(format!(
                "counter {} moved by {}, want 1",
                case.outcome.name(),
                after - before
            ));
        }
        match &case.output {
            Output::Same if out != case.frame => {
                problems.push(format!("frame changed: {out:02x?}"))
            }
            Output::Bytes(want) if &out != want => {
                problems.push(format!("output {out:02x?}\n      want {want:02x?}"))
            }
            Output::Encap { vni, inner } => {
                let want = encapsulated(*vni, inner);
                let sport = out
                    .get(34..36)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]))
                    .unwrap_or(0);
                let mut got = out.clone();
                if got.len() >= 36 {
                    got[34..36].fill(0);
                }
                if got != want {
                    problems.push(format!("output {out:02x?}\n      want {want:02x?}"));
                }
                if sport < UDP_SRC_PORT_MIN {
                    problems.push(format!("UDP source port {sport} below {UDP_SRC_PORT_MIN}"));
                }
            }
            _ => {}
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{} / {}:\n    {}",
                case.program.name(),
                case.name,
                problems.join("\n    ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn source_port_follows_the_inner_flow() {
    require_root();
    let loaded = Loaded::new("sport").expect("loading the dataplane");
    let sport = |src_port: u16| {
        let inner = nve_tests::packet::eth(
            nve_tests::progtest::VM2,
            nve_tests::progtest::VM1,
            0x0800,
            &nve_tests::packet::Ipv4::new([192, 168, 10, 1].into(), [192, 168, 10, 2].into(), 17)
                .packet(&nve_tests::packet::udp(src_port, 80, &[0; 16])),
        );
        let (_, out, _) = loaded
            .run(nve_tests::progtest::Program::TcVmEgress, &inner, 1)
            .unwrap();
        u16::from_be_bytes([out[34], out[35]])
    };
    assert_eq!(sport(1000), sport(1000), "one flow, one source port");
    let ports: std::collections::BTreeSet<u16> = (1000..1016).map(sport).collect();
    assert!(
        ports.len() >= 8,
        "16 flows spread over only {} source ports: {ports:?}",
        ports.len()
    );
}
