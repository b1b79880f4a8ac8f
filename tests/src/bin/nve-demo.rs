//! `cargo xtask demo`: two hosts in network namespaces, one VM on each in VN blue, nve on
//! both. The VMs resolve each other with ARP and ping across VXLAN; the counters show the
//! path. Everything is removed at the end.
use anyhow::Result;
use nve_tests::{
    overlay::{self, H1_VTEP, H2_VTEP, Side, TwoHosts, VM1_IP, VM2_IP},
    rig::{Daemon, require_root},
};

fn show(title: &str, text: &str) {
    println!("\n--- {title}");
    print!("{text}");
}

fn nve(d: &Daemon, host: &str, args: &[&str]) -> Result<()> {
    show(&format!("{host}$ nve {}", args.join(" ")), &d.nve(args)?);
    Ok(())
}

fn main() -> Result<()> {
    require_root();
    println!("nve demo: hosts h1 ({H1_VTEP}) and h2 ({H2_VTEP}) joined by a veth underlay;");
    println!("vm1 ({VM1_IP}) on h1 and vm2 ({VM2_IP}) on h2, both in VN blue (VNI 100).");
    let rig = TwoHosts::new("demo")?;
    let h1 = overlay::nve(&rig, Side::H1, "demo1", &[])?;
    let h2 = overlay::nve(&rig, Side::H2, "demo2", &[])?;
    nve(&h1, "h1", &["status"])?;
    nve(&h1, "h1", &["vn", "list"])?;
    nve(&h1, "h1", &["fdb"])?;

    rig.vm1.ping_until_reachable(VM2_IP, 5)?;
    show(
        &format!("vm1$ ping -c 5 {VM2_IP}"),
        &rig.vm1.ping(VM2_IP, 5)?,
    );
    show(
        &format!("vm2$ ping -c 5 {VM1_IP}"),
        &rig.vm2.ping(VM1_IP, 5)?,
    );
    show(
        "vm1$ ip neigh   (learned by ARP across the overlay)",
        &rig.vm1.ns.exec(&["ip", "neigh"])?,
    );

    nve(&h1, "h1", &["stats"])?;
    nve(&h2, "h2", &["stats"])?;
    h1.stop()?;
    h2.stop()?;
    println!("\nDaemons stopped, programs detached, pins removed; namespaces go next.");
    Ok(())
}
