//! Between the NVA's claims and EVPN routes (RFC 7432, RFC 8365): what this NVE publishes
//! becomes type 3 (IMET: the VN's flood list and VTEP allow-list) and type 2 (MAC/IP, one
//! MAC-only and one per address, with MAC Mobility's sequence once above 0) routes; the
//! routes received become the same claims the etcd backend reads, so the same table,
//! mobility rules and dataplane serve both.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use super::{
    config::Routing,
    route::{Attributes, MacMobility, Pmsi, Route},
    wire::{Message, Update},
};
use crate::nva::{
    Entry,
    claims::{self, Key},
};

/// Ingress replication (RFC 6514 PMSI tunnel type 6).
const INGRESS_REPLICATION: u8 = 6;
const ORIGIN_IGP: u8 = 0;

/// A route with the attributes it goes with.
pub type Advert = (Route, Attributes);

/// Whether the session is iBGP (LOCAL_PREF, empty AS_PATH) or eBGP (our AS prepended).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Speaker {
    pub asn: u32,
    pub vtep: Ipv4Addr,
}

fn attributes(s: Speaker, routing: &Routing) -> Attributes {
    Attributes {
        origin: ORIGIN_IGP,
        as_path: Vec::new(),
        local_pref: Some(100),
        next_hop: s.vtep.into(),
        route_targets: routing.export.clone(),
        vxlan: true,
        mac_mobility: None,
        pmsi: None,
        originator_id: None,
        cluster_list: Vec::new(),
        other_communities: Vec::new(),
    }
}

/// The routes for what this NVE publishes (`nva_link::local_entries`): `routing` gives each
/// VNI's RD and RTs (VNIs it does not give are not advertised).
pub fn advertised(
    published: &BTreeMap<String, Entry>,
    s: Speaker,
    routing: &BTreeMap<u32, Routing>,
) -> Vec<Advert> {
    let mut out = Vec::new();
    for (key, entry) in published {
        match claims::parse(key) {
            Some(Key::Member(vni, _)) => {
                let Some(r) = routing.get(&vni) else { continue };
                let attrs = Attributes {
                    pmsi: Some(Pmsi {
                        flags: 0,
                        tunnel_type: INGRESS_REPLICATION,
                        label: vni,
                        endpoint: s.vtep.into(),
                    }),
                    ..attributes(s, r)
                };
                let route = Route::Imet {
                    rd: r.rd,
                    tag: 0,
                    originator: s.vtep.into(),
                };
                out.push((route, attrs));
            }
            Some(Key::Mac(vni, mac, _)) => {
                let Some(r) = routing.get(&vni) else { continue };
                let attrs = Attributes {
                    mac_mobility: (entry.seq > 0).then_some(MacMobility {
                        sticky: false,
                        seq: entry.seq as u32,
                    }),
                    ..attributes(s, r)
                };
                let ips = std::iter::once(None).chain(entry.ips.iter().copied().map(Some));
                for ip in ips {
                    let route = Route::MacIp {
                        rd: r.rd,
                        esi: [0; 10],
                        tag: 0,
                        mac,
                        ip,
                        label: vni,
                    };
                    out.push((route, attrs.clone()));
                }
            }
            // EVPN has no route for an arrival expected (an intent, not a claim): FRR's
            // speakers learn the MAC from the destination's route once the VM runs there.
            Some(Key::Vn(..) | Key::Arriving(..)) | None => {}
        }
    }
    out
}

/// What `route` claims: its NVA key, the VTEP, the VNI (the label of type 2, the PMSI's of
/// type 3).
fn claimed(route: &Route, a: &Attributes) -> Option<(String, IpAddr, u32)> {
    match route {
        Route::MacIp { mac, label, .. } => {
            Some((claims::key(*label, *mac, a.next_hop), a.next_hop, *label))
        }
        Route::Imet { originator, .. } => {
            let p = a.pmsi.as_ref()?;
            let vtep = if p.endpoint.is_unspecified() {
                *originator
            } else {
                p.endpoint
            };
            Some((claims::member_key(p.label, vtep), vtep, p.label))
        }
    }
}

/// The claim `route` makes (its NVA key), if it counts: a route counts for a VN when its
/// VNI is that of a VN here whose import route targets it carries; routes from `own` are
/// this NVE's, reflected back.
pub fn claim_key(
    route: &Route,
    a: &Attributes,
    import: &BTreeMap<u32, Routing>,
    own: IpAddr,
) -> Option<(String, IpAddr)> {
    let (key, vtep, vni) = claimed(route, a)?;
    let imported = import
        .get(&vni)
        .is_some_and(|r| a.route_targets.iter().any(|t| r.import.contains(t)));
    (vtep != own && imported).then_some((key, vtep))
}

/// The claims routes make (keyed as the NVA's keys, see [`claim_key`]): per (VNI, MAC,
/// VTEP) its addresses and highest sequence, per (VNI, VTEP) its membership.
pub fn claims<'a>(
    routes: impl Iterator<Item = &'a Advert>,
    import: &BTreeMap<u32, Routing>,
    own: IpAddr,
) -> BTreeMap<String, Entry> {
    let mut out: BTreeMap<String, Entry> = BTreeMap::new();
    for (route, a) in routes {
        let Some((key, vtep)) = claim_key(route, a, import, own) else {
            continue;
        };
        let e = out.entry(key).or_insert_with(|| Entry::at(vtep));
        if let Route::MacIp { ip: Some(ip), .. } = route
            && !e.ips.contains(ip)
        {
            e.ips.push(*ip);
            e.ips.sort();
        }
        e.seq = e.seq.max(a.mac_mobility.map_or(0, |m| u64::from(m.seq)));
    }
    out
}

/// Routes an UPDATE carries at most (a type 2 NLRI is up to 51 bytes; a message 4,096).
const ROUTES_PER_UPDATE: usize = 50;

/// UPDATEs announcing `adverts`: one per set of equal attributes (and per
/// `ROUTES_PER_UPDATE` routes).
pub fn announcements<'a>(adverts: impl Iterator<Item = &'a Advert>) -> Vec<Message> {
    let mut groups: Vec<(Attributes, Vec<Route>)> = Vec::new();
    for (route, attrs) in adverts {
        match groups.iter_mut().find(|(a, _)| a == attrs) {
            Some((_, routes)) => routes.push(route.clone()),
            None => groups.push((attrs.clone(), vec![route.clone()])),
        }
    }
    let mut out = Vec::new();
    for (attrs, routes) in groups {
        for chunk in routes.chunks(ROUTES_PER_UPDATE) {
            out.push(Message::Update(Update {
                announced: chunk.to_vec(),
                attributes: Some(attrs.clone()),
                ..Update::default()
            }));
        }
    }
    out
}

/// `msgs` as they go to a neighbour in AS `remote` (this NVE: `local`): to an eBGP one the
/// AS_PATH starts with this AS and there is no LOCAL_PREF (RFC 4271 s.5.1.2, 5.1.5).
pub fn for_neighbour(msgs: &[Message], local: u32, remote: u32) -> Vec<Message> {
    if local == remote {
        return msgs.to_vec();
    }
    msgs.iter()
        .map(|m| match m {
            Message::Update(u) => Message::Update(Update {
                attributes: u.attributes.clone().map(|a| Attributes {
                    as_path: std::iter::once(local).chain(a.as_path).collect(),
                    local_pref: None,
                    ..a
                }),
                ..u.clone()
            }),
            other => other.clone(),
        })
        .collect()
}

/// UPDATEs withdrawing `routes`.
pub fn withdrawals(routes: &[Route]) -> Vec<Message> {
    routes
        .chunks(ROUTES_PER_UPDATE)
        .map(|chunk| {
            Message::Update(Update {
                withdrawn: chunk.to_vec(),
                ..Update::default()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        evpn::{config::BgpConfig, route::RouteTarget},
        mac::MacAddr,
    };

    const VTEP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const MAC: MacAddr = MacAddr([2, 0, 0, 0, 1, 1]);

    fn routing() -> BTreeMap<u32, Routing> {
        let cfg: BgpConfig = serde_json::from_str(
            r#"{"asn": 65000, "neighbors": [{"address": "10.0.0.2", "remote_as": 65000}]}"#,
        )
        .unwrap();
        BTreeMap::from([(100, cfg.routing("blue", 100, VTEP))])
    }

    #[test]
    fn what_this_nve_publishes_is_advertised() {
        let vtep = IpAddr::V4(VTEP);
        let ip: IpAddr = "192.168.10.1".parse().unwrap();
        let published = BTreeMap::from([
            (claims::member_key(100, vtep), Entry::at(vtep)),
            (
                claims::key(100, MAC, vtep),
                Entry {
                    ips: vec![ip],
                    seq: 2,
                    ..Entry::at(vtep)
                },
            ),
            // A VNI without routing (no VN here) is not advertised.
            (claims::member_key(200, vtep), Entry::at(vtep)),
        ]);
        let s = Speaker {
            asn: 65000,
            vtep: VTEP,
        };
        let adverts = advertised(&published, s, &routing());
        assert_eq!(adverts.len(), 3, "IMET, MAC-only, MAC+IP: {adverts:?}");
        for (route, a) in &adverts {
            assert_eq!(route.rd().to_string(), "10.0.0.1:100");
            assert_eq!(a.route_targets, vec![RouteTarget::as2(65000, 100)]);
            assert!(a.vxlan);
            match route {
                Route::Imet { .. } => {
                    let p = a.pmsi.expect("PMSI");
                    assert_eq!((p.tunnel_type, p.label, p.endpoint), (6, 100, vtep));
                }
                Route::MacIp { label, .. } => {
                    assert_eq!(*label, 100);
                    assert_eq!(a.mac_mobility.map(|m| m.seq), Some(2));
                }
            }
        }
        // Read back as another NVE would: the same claims, for that VTEP.
        let back = claims(adverts.iter(), &routing(), "10.0.0.9".parse().unwrap());
        assert_eq!(
            back.get(&claims::key(100, MAC, vtep))
                .map(|e| (e.seq, e.ips.clone())),
            Some((2, vec![ip]))
        );
        assert!(back.contains_key(&claims::member_key(100, vtep)));
        // Its own routes, reflected back, claim nothing; other route targets are not imported.
        assert!(claims(adverts.iter(), &routing(), vtep).is_empty());
        let foreign: Vec<Advert> = adverts
            .iter()
            .map(|(r, a)| {
                let mut a = a.clone();
                a.route_targets = vec![RouteTarget::as2(65001, 100)];
                (r.clone(), a)
            })
            .collect();
        assert!(claims(foreign.iter(), &routing(), "10.0.0.9".parse().unwrap()).is_empty());
    }

    #[test]
    fn ebgp_neighbours_get_this_as_and_no_local_pref() {
        let s = Speaker {
            asn: 65000,
            vtep: VTEP,
        };
        let vtep = IpAddr::V4(VTEP);
        let published = BTreeMap::from([(claims::member_key(100, vtep), Entry::at(vtep))]);
        let msgs = announcements(advertised(&published, s, &routing()).iter());
        let attrs = |m: &Message| match m {
            Message::Update(u) => u.attributes.clone().unwrap(),
            _ => panic!("an UPDATE"),
        };
        let ibgp = for_neighbour(&msgs, 65000, 65000);
        assert_eq!(
            (attrs(&ibgp[0]).as_path, attrs(&ibgp[0]).local_pref),
            (vec![], Some(100))
        );
        let ebgp = for_neighbour(&msgs, 65000, 65001);
        assert_eq!(
            (attrs(&ebgp[0]).as_path, attrs(&ebgp[0]).local_pref),
            (vec![65000], None)
        );
    }

    #[test]
    fn updates_stay_under_the_message_size() {
        let s = Speaker {
            asn: 65000,
            vtep: VTEP,
        };
        let vtep = IpAddr::V4(VTEP);
        let published: BTreeMap<String, Entry> = (0..500u32)
            .map(|i| {
                let mac = MacAddr([2, 0, 0, 0, (i >> 8) as u8, i as u8]);
                (claims::key(100, mac, vtep), Entry::at(vtep))
            })
            .collect();
        let adverts = advertised(&published, s, &routing());
        let msgs = announcements(adverts.iter());
        assert_eq!(msgs.len(), 10);
        for m in &msgs {
            assert!(crate::evpn::wire::encode(m, true).len() <= crate::evpn::wire::MAX_MESSAGE);
        }
        let routes: Vec<Route> = adverts.into_iter().map(|(r, _)| r).collect();
        for m in withdrawals(&routes) {
            assert!(crate::evpn::wire::encode(&m, true).len() <= crate::evpn::wire::MAX_MESSAGE);
        }
    }
}
