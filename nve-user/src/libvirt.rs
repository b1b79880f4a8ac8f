//! libvirt's qemu hook (`/etc/libvirt/hooks/qemu DOMAIN OPERATION SUB-OPERATION EXTRA`,
//! domain XML on stdin) translated into signaling, one message per interface:
//!
//! | libvirt operation | when | nve |
//! |---|---|---|
//! | `migrate begin` | destination, incoming migration starts | pre-associate (migrating in) |
//! | `prepare begin` | before the VM's resources (taps) are created | pre-associate |
//! | `started begin` | QEMU runs (on a migration destination: waiting for the VM's state) | associate |
//! | `reconnect begin` | libvirtd restarted and found the VM running | associate |
//! | `stopped end`, `release end` | the VM stopped (or left by migration) | disassociate |
//! | anything else | | nothing |
//!
//! On a migration destination libvirt calls `prepare`, `start` and `started` too, all before
//! the VM's memory moves: a vNIC pre-associated migrating in is left as it is by them
//! ([`Step::Leave`]), so the VM's traffic does not come here while it still runs on the source.
//! QEMU's announcements (RARPs) once the VM resumes here activate it.
//!
//! An interface is `<interface>` with `<mac address>`, `<target dev>` (the tap) and a VN:
//! `<source network='NAME'/>` (type network) or, for any type, the interface's `<alias
//! name='nve-NAME'/>`. The vNIC is (domain `<uuid>`, the interface's position). Interfaces
//! without a VN are not nve's and are skipped.
//!
//! The hook is not called when a migrating VM stops on the source for the switchover or
//! runs again after a failed one: [`bridge`] (`nve libvirt-events`) follows libvirt's
//! lifecycle events for those.
pub mod bridge;
pub mod domains;
pub mod event_line;
pub mod virsh;

use anyhow::{Context as _, bail};

use crate::{
    api::{Migration, VidRequest, VnicRequest, VnicView},
    mac::MacAddr,
    vnic::{Op, VnicState},
};

/// One interface of the domain that nve serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    pub mac: MacAddr,
    pub vn: String,
    /// The tap; libvirt names it at start (`vnetN`), so it may be absent at prepare.
    pub port: Option<String>,
}

/// The domain's UUID and its nve interfaces.
pub fn parse_domain(xml: &str) -> anyhow::Result<(String, Vec<Interface>)> {
    let doc = roxmltree::Document::parse(xml).context("parsing the domain XML")?;
    let domain = doc.root_element();
    let uuid = child(domain, "uuid")
        .and_then(|u| u.text())
        .context("the domain XML has no <uuid>")?;
    let mut out = Vec::new();
    let Some(devices) = child(domain, "devices") else {
        return Ok((uuid.trim().to_string(), out));
    };
    for (index, iface) in devices
        .children()
        .filter(|c| c.has_tag_name("interface"))
        .enumerate()
    {
        let vn = child(iface, "alias")
            .and_then(|a| a.attribute("name"))
            .and_then(|n| n.strip_prefix("nve-").or_else(|| n.strip_prefix("ua-nve-")))
            .or_else(|| child(iface, "source").and_then(|s| s.attribute("network")));
        let Some(vn) = vn else { continue };
        let mac = child(iface, "mac")
            .and_then(|m| m.attribute("address"))
            .with_context(|| format!("interface {index} has no <mac address>"))?;
        out.push(Interface {
            index: index as u32,
            mac: mac.parse()?,
            vn: vn.to_string(),
            port: child(iface, "target")
                .and_then(|t| t.attribute("dev"))
                .map(str::to_string),
        });
    }
    Ok((uuid.trim().to_string(), out))
}

/// The first child element of `n` named `name`.
fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(name))
}

/// What a hook invocation asks of nve: the operation for every interface, if any.
pub fn operation(op: &str, sub: &str) -> Option<(Op, Migration)> {
    match (op, sub) {
        ("migrate", "begin") => Some((
            Op::PreAssociate,
            Migration::MigratingIn(std::net::Ipv4Addr::UNSPECIFIED),
        )),
        ("prepare", "begin") => Some((Op::PreAssociate, Migration::None)),
        ("started", "begin") | ("reconnect", "begin") => Some((Op::Associate, Migration::None)),
        ("stopped", "end") | ("release", "end") => Some((Op::Disassociate, Migration::None)),
        _ => None,
    }
}

/// What the hook does for one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Send(Box<VnicRequest>),
    /// Nothing: the vNIC is arriving by migration and the VM's announcements will activate it.
    Leave,
}

/// What the hook does for `iface` at `op`, given the vNIC nve holds for it now (`current`).
pub fn step(
    op: Op,
    migration: Migration,
    iface: &Interface,
    current: Option<&VnicView>,
) -> anyhow::Result<Step> {
    let arriving = current
        .is_some_and(|v| v.state == VnicState::PreAssociated && v.migration.is_migrating_in());
    if arriving && !migration.is_migrating_in() && op != Op::Disassociate {
        return Ok(Step::Leave);
    }
    Ok(Step::Send(Box::new(request(op, migration, iface)?)))
}

/// The signaling message for `iface`. A tap not named yet is expected as the name libvirt
/// will give it, which `started` then confirms (parameters must match to stay idempotent,
/// so the port name is required for (pre-)association).
pub fn request(op: Op, migration: Migration, iface: &Interface) -> anyhow::Result<VnicRequest> {
    let port = match (op, &iface.port) {
        (Op::Disassociate, _) => None,
        (_, Some(p)) => Some(p.clone()),
        (_, None) => bail!(
            "interface {} ({}) has no <target dev>: give it one so nve can bind the tap",
            iface.index,
            iface.mac
        ),
    };
    // libvirt does not tell the source VTEP: MigratingIn(0.0.0.0) only marks the direction.
    Ok(VnicRequest {
        op,
        request_id: 0,
        vn: (op != Op::Disassociate).then(|| iface.vn.clone()),
        macs: vec![iface.mac],
        ipv4: Vec::new(),
        ipv6: Vec::new(),
        port,
        vid: VidRequest::default(),
        migration,
        reserve: op == Op::PreAssociate,
        hold_time: None,
    })
}

/// A domain's interface and nve's vNIC for it, for the tests of the hook and the bridge.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// Interface 0 of a domain: VN blue on tap vnet0.
    pub fn iface() -> Interface {
        Interface {
            index: 0,
            mac: "52:54:00:12:34:56".parse().unwrap(),
            vn: "blue".into(),
            port: Some("vnet0".into()),
        }
    }

    /// nve's vNIC for [`iface`], in `state` with `migration`.
    pub fn held(state: VnicState, migration: Migration) -> VnicView {
        VnicView {
            vm: "6f1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b".into(),
            index: 0,
            state,
            vn: "blue".into(),
            vni: 100,
            port: "vnet0".into(),
            vid: 0,
            macs: vec![iface().mac],
            ipv4: Vec::new(),
            ipv6: Vec::new(),
            migration,
            request_id: 0,
            expires_at: None,
            port_present: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_interfaces() {
        let xml = r#"<domain type='kvm'><name>vm1</name><uuid>6f1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b</uuid>
          <devices>
            <interface type='network'><mac address='52:54:00:12:34:56'/><source network='blue'/><target dev='vnet0'/></interface>
            <interface type='user'><mac address='52:54:00:00:00:09'/></interface>
            <interface type='ethernet'><mac address='52:54:00:12:34:57'/><target dev='tap7'/><alias name='ua-nve-red'/></interface>
          </devices></domain>"#;
        let (uuid, ifaces) = parse_domain(xml).unwrap();
        assert_eq!(uuid, "6f1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b");
        assert_eq!(ifaces.len(), 2);
        assert_eq!(
            (
                ifaces[0].index,
                ifaces[0].vn.as_str(),
                ifaces[0].port.as_deref()
            ),
            (0, "blue", Some("vnet0"))
        );
        assert_eq!(
            (
                ifaces[1].index,
                ifaces[1].vn.as_str(),
                ifaces[1].port.as_deref()
            ),
            (2, "red", Some("tap7"))
        );
        assert!(parse_domain("<domain><devices/></domain>").is_err());
    }

    #[test]
    fn an_arriving_vnic_is_left_for_the_vms_announcements() {
        let iface = fixtures::iface();
        let held = fixtures::held;
        let step_at = |op: &str, sub: &str, current: Option<&VnicView>| {
            let (op, migration) = operation(op, sub).unwrap();
            step(op, migration, &iface, current).unwrap()
        };
        let sent = |s: Step| match s {
            Step::Send(r) => (r.op, r.migration),
            Step::Leave => panic!("left"),
        };
        let arriving = held(
            VnicState::PreAssociated,
            Migration::MigratingIn(std::net::Ipv4Addr::UNSPECIFIED),
        );
        // The destination: migrate pre-associates with the hint; prepare and started leave it.
        assert_eq!(
            sent(step_at("migrate", "begin", None)),
            (Op::PreAssociate, arriving.migration)
        );
        assert_eq!(step_at("prepare", "begin", Some(&arriving)), Step::Leave);
        assert_eq!(step_at("started", "begin", Some(&arriving)), Step::Leave);
        // Activated by its announcements, a later started is a plain (repeated) associate;
        // a failed migration's stopped removes it.
        let active = held(VnicState::Associated, arriving.migration);
        assert_eq!(
            sent(step_at("started", "begin", Some(&active))).0,
            Op::Associate
        );
        assert_eq!(
            sent(step_at("stopped", "end", Some(&arriving))).0,
            Op::Disassociate
        );
        // A plain start.
        let pre = held(VnicState::PreAssociated, Migration::None);
        assert_eq!(sent(step_at("prepare", "begin", None)).0, Op::PreAssociate);
        assert_eq!(
            sent(step_at("started", "begin", Some(&pre))).0,
            Op::Associate
        );
    }
}
