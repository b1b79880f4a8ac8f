//! The integration tests, one binary: a module per feature, as aya's `integration-test`
//! (one binary links the rig library once, not once per file). Both kinds need root:
//! BPF_PROG_TEST_RUN tables (`prog_test_run`, `verdict_fuzz`) and namespace rigs (the
//! rest). Tests are named `<module>::<test>`: `cargo xtask test FILTER` runs those whose
//! name contains FILTER, e.g. `cargo xtask test nva::` for one module.
mod antispoof;
mod api;
mod api_doc;
mod cli_docs;
mod config_file;
mod dump;
mod evpn;
mod flooding;
mod interop;
mod ipv6_underlay;
mod learning;
mod libvirt;
mod libvirtd;
mod live_migration;
mod local_switching;
mod migration;
mod migration_pause;
mod migration_races;
mod monitor;
mod mtu;
mod nva;
mod nve_nve;
mod observability;
mod peers;
mod prog_test_run;
mod qemu_migration;
mod qemu_tap_queue;
mod restart;
mod signaling;
mod suppression;
mod systemd;
mod tap;
mod vdp;
mod verdict_fuzz;
mod vtep_allowlist;
