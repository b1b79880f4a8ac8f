//! nve on both hosts: ICMP and TCP both ways, decapsulation counted on each side.
use nve_tests::{
    overlay::{self, Side, TwoHosts, VM1_IP, VM2_IP},
    rig::require_root,
};

#[test]
fn nve_to_nve() {
    require_root();
    let rig = TwoHosts::new("nn").unwrap();
    let d1 = overlay::nve(&rig, Side::H1, "nn1", &[]).unwrap();
    let d2 = overlay::nve(&rig, Side::H2, "nn2", &[]).unwrap();

    rig.vm1.ping_until_reachable(VM2_IP, 5).unwrap();
    rig.vm1.ping(VM2_IP, 3).expect("ICMP h1 -> h2");
    rig.vm2.ping(VM1_IP, 3).expect("ICMP h2 -> h1");
    overlay::tcp_transfer(&rig.vm2, &rig.vm1, 5201, "4M").expect("TCP h1 -> h2");
    overlay::tcp_transfer(&rig.vm1, &rig.vm2, 5202, "4M").expect("TCP h2 -> h1");

    for d in [&d1, &d2] {
        assert!(d.counter("vm_egress", "ENCAPSULATED").unwrap() > 0);
        assert!(d.counter("underlay_rx", "DECAPSULATED").unwrap() > 0);
        // ARP reached the other side by flooding and was delivered there.
        assert!(d.counter("underlay_rx", "FLOODED").unwrap() > 0);
    }
    let programs: Vec<u64> = [&d1, &d2].into_iter().flat_map(attached_programs).collect();
    assert_eq!(programs.len(), 6, "programs attached: {programs:?}");
    for (d, host, port) in [(d1, &rig.h1, "vm1p"), (d2, &rig.h2, "vm2p")] {
        let pins = d.pin_dir();
        for pin in [
            "NVE_FDB",
            "link_tc_underlay_rx@ul",
            "link_tc_tunnel_rx@nve-vxlan",
        ] {
            assert!(
                pins.join(pin).exists(),
                "{pin} not pinned in {}",
                pins.display()
            );
        }
        assert!(pins.join(format!("link_tc_vm_egress@{port}")).exists());
        assert!(host.ip(&["-d", "neigh"]).unwrap().contains("managed"));
        assert!(d.stop().unwrap().success());
        // Nothing of the instance is left: pins, tunnel device, managed neighbours, programs.
        assert!(!pins.exists(), "pins left behind at {}", pins.display());
        assert!(
            host.ip(&["link", "show", "nve-vxlan"]).is_err(),
            "nve-vxlan left behind"
        );
        let neigh = host.ip(&["-d", "neigh"]).unwrap();
        assert!(
            !neigh.contains("managed"),
            "managed neighbour left behind: {neigh}"
        );
    }
    // Both daemons gone: their programs are unloaded (the kernel frees them shortly after
    // the last reference goes). By id: other processes may have nve's programs loaded.
    let loaded = || {
        programs
            .iter()
            .filter(|id| {
                nve_tests::rig::run(&["bpftool", "prog", "show", "id", &id.to_string()]).is_ok()
            })
            .count()
    };
    for _ in 0..40 {
        if loaded() == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(loaded(), 0, "programs left loaded of {programs:?}");
}

/// The ids of the programs `d` attached: its pinned links' (`bpftool link show pinned`).
fn attached_programs(d: &nve_tests::rig::Daemon) -> Vec<u64> {
    let links = std::fs::read_dir(d.pin_dir()).unwrap().flatten();
    let pinned = links.filter(|e| e.file_name().to_string_lossy().starts_with("link_"));
    pinned
        .map(|e| {
            let path = e.path().display().to_string();
            let out = nve_tests::rig::run(&["bpftool", "-j", "link", "show", "pinned", &path]);
            let link: serde_json::Value = serde_json::from_str(&out.unwrap()).unwrap();
            link["prog_id"].as_u64().expect("a link's prog_id")
        })
        .collect()
}
