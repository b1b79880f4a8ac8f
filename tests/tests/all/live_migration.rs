//! A VM migrates h1 -> h2 while h3's VM streams numbered UDP datagrams to it at about
//! 10,000 a second, three NVEs on the NVA (a real etcd in h3, or BGP EVPN through FRR as
//! route reflector); see
//! `nve_tests::live_stream`. Datagrams sent while the VM was paused may be lost
//! (reported); every other one must arrive, and frames that reached h1 after the move went
//! on through its forwarding pointer.
use nve_tests::{
    live_stream,
    overlay::{H2_VTEP, VM1_MAC},
    rig::{Daemon, require_root},
    three_hosts::{MigrationRig, Nva},
};

const VMX: &str = "00000000-0000-4000-8000-0000000000b1";
const VM3: &str = "00000000-0000-4000-8000-0000000000b3";

#[test]
fn a_vm_migrates_under_a_stream_without_network_loss() {
    require_root();
    migrates_without_network_loss(&MigrationRig::new("lm", VMX, VM3).unwrap(), true);
}

#[test]
fn evpn_a_vm_migrates_through_a_route_reflector_without_network_loss() {
    require_root();
    migrates_without_network_loss(
        &MigrationRig::on(Nva::Evpn, "lme", VMX, VM3).unwrap(),
        false,
    );
}

/// `arrival_published`: the NVA carries h2's expectation of the VM (etcd does; EVPN has no
/// route for it). Then h3, once h1 withdraws the VM, sends to h2 instead of flooding to h1 and
/// h2, which with h1's pointer delivered the flooded datagrams twice (141 in one run before
/// the expectation was published; EVPN's run: 17-30).
fn migrates_without_network_loss(r: &MigrationRig, arrival_published: bool) {
    let f = live_stream::migrate_under_stream(r, 10_000, 3).unwrap();
    println!(
        "sent {}, received {}, lost while the VM was paused (seq {}..{}, {:.0} ms): {}, lost \
         otherwise: {}, duplicates {}, out of order {}, longest gap {:.1} ms, through h1's \
         forwarding pointer: {}",
        f.sent,
        f.received,
        f.pause.start,
        f.pause.end,
        f.pause_ms,
        f.lost_in_pause,
        f.lost_otherwise.len(),
        f.duplicates,
        f.out_of_order,
        f.longest_gap_ms,
        f.forwarded
    );
    assert!(
        f.lost_otherwise.is_empty(),
        "the network lost datagrams: {:?}",
        f.lost_otherwise
    );
    assert!(f.forwarded > 0, "no frame took the stale path through h1");
    if arrival_published {
        assert_eq!(f.duplicates, 0, "datagrams delivered twice");
    }
    // Everyone converged: h3 and h1 have the VM on h2 from the NVA.
    let on_h2 = |d: &Daemon| d.has_from_nva(VM1_MAC, H2_VTEP).unwrap();
    assert!(on_h2(&r.d3), "{}", r.d3.nve(&["fdb"]).unwrap());
    assert!(on_h2(&r.d1), "{}", r.d1.nve(&["fdb"]).unwrap());
}
