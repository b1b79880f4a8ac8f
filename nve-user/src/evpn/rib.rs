//! Every neighbour's routes (Adj-RIB-In) and the NVA claims they make, kept incrementally:
//! an UPDATE costs the routes it names, not the table's size (100,000 type 2 routes arrive
//! in 2,000 UPDATEs). Each route remembers the claim it counts for (`translate::claim_key`)
//! and each claim the routes behind it, so a change recomputes only the claims it touched.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use super::{
    config::Routing,
    route::{Attributes, Route},
    translate::{self, Advert},
};
use crate::nva::Entry;

/// What decides which claim a route makes: the VNs' routing here, and this NVE's VTEP.
pub struct Import<'a> {
    pub routing: &'a BTreeMap<u32, Routing>,
    pub own: IpAddr,
}

impl Import<'_> {
    fn key(&self, route: &Route, a: &Attributes) -> Option<String> {
        translate::claim_key(route, a, self.routing, self.own).map(|(k, _)| k)
    }
}

#[derive(Default)]
pub struct Ribs {
    /// Per neighbour (by index): route (its key) -> the route, its attributes, its claim.
    ribs: Vec<HashMap<Route, (Advert, Option<String>)>>,
    /// Claim -> the routes behind it.
    index: HashMap<String, HashSet<(usize, Route)>>,
}

impl Ribs {
    pub fn new(neighbours: usize) -> Self {
        Self {
            ribs: (0..neighbours).map(|_| HashMap::new()).collect(),
            index: HashMap::new(),
        }
    }

    pub fn len(&self, peer: usize) -> usize {
        self.ribs[peer].len()
    }

    /// The keys of `peer`'s routes.
    pub fn keys(&self, peer: usize) -> impl Iterator<Item = &Route> {
        self.ribs[peer].keys()
    }

    /// Every route of every neighbour.
    pub fn routes(&self) -> impl Iterator<Item = &Advert> {
        self.ribs.iter().flat_map(|r| r.values().map(|(a, _)| a))
    }

    /// `peer` announces `route`; the claims touched go into `touched`.
    pub fn announce(
        &mut self,
        peer: usize,
        route: &Route,
        attrs: &Attributes,
        import: &Import,
        touched: &mut BTreeSet<String>,
    ) {
        let key = route.key();
        self.withdraw(peer, &key, touched);
        let claim = import.key(route, attrs);
        if let Some(c) = &claim {
            self.index
                .entry(c.clone())
                .or_default()
                .insert((peer, key.clone()));
            touched.insert(c.clone());
        }
        self.ribs[peer].insert(key, ((route.clone(), attrs.clone()), claim));
    }

    /// `peer` withdraws the route with key `key` (if it had it).
    pub fn withdraw(&mut self, peer: usize, key: &Route, touched: &mut BTreeSet<String>) {
        let Some((_, Some(claim))) = self.ribs[peer].remove(key) else {
            return;
        };
        if let Some(set) = self.index.get_mut(&claim) {
            set.remove(&(peer, key.clone()));
            if set.is_empty() {
                self.index.remove(&claim);
            }
        }
        touched.insert(claim);
    }

    /// The routing changed (a VN came or went): every route's claim again; all touched.
    pub fn reindex(&mut self, import: &Import, touched: &mut BTreeSet<String>) {
        touched.extend(self.index.keys().cloned());
        self.index.clear();
        for (peer, rib) in self.ribs.iter_mut().enumerate() {
            for (key, ((route, attrs), claim)) in rib.iter_mut() {
                *claim = import.key(route, attrs);
                if let Some(c) = claim {
                    self.index
                        .entry(c.clone())
                        .or_default()
                        .insert((peer, key.clone()));
                    touched.insert(c.clone());
                }
            }
        }
    }

    /// Each of `claims` as the routes behind it make it now (`None`: no route does).
    pub fn claims<'a>(
        &'a self,
        claims: &'a BTreeSet<String>,
        import: &'a Import,
    ) -> impl Iterator<Item = (&'a String, Option<Entry>)> + 'a {
        claims.iter().map(move |c| {
            let routes = self.index.get(c).into_iter().flatten();
            let adverts =
                routes.filter_map(|(peer, key)| self.ribs[*peer].get(key).map(|(a, _)| a));
            let mut made = translate::claims(adverts, import.routing, import.own);
            (c, made.remove(c))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        evpn::{config::BgpConfig, route::MacMobility},
        mac::MacAddr,
        nva::claims,
    };

    fn route(n: u8, ip: Option<IpAddr>) -> Route {
        Route::MacIp {
            rd: super::super::route::Rd::ipv4(Ipv4Addr::new(10, 0, 0, 2), 100),
            esi: [0; 10],
            tag: 0,
            mac: MacAddr([2, 0, 0, 0, 2, n]),
            ip,
            label: 100,
        }
    }

    #[test]
    fn claims_follow_the_routes_behind_them() {
        let cfg: BgpConfig = serde_json::from_str(
            r#"{"asn": 65000, "neighbors": [{"address": "10.0.0.2", "remote_as": 65000}]}"#,
        )
        .unwrap();
        let vtep = Ipv4Addr::new(10, 0, 0, 2);
        let routing = BTreeMap::from([(100, cfg.routing("blue", 100, vtep))]);
        let none = BTreeMap::new();
        let import = Import {
            routing: &routing,
            own: "10.0.0.1".parse().unwrap(),
        };
        let attrs = Attributes {
            next_hop: vtep.into(),
            route_targets: routing[&100].export.clone(),
            ..Attributes::default()
        };
        let mut ribs = Ribs::new(2);
        let mut touched = BTreeSet::new();
        let ip: IpAddr = "192.168.10.2".parse().unwrap();
        ribs.announce(0, &route(1, None), &attrs, &import, &mut touched);
        let moved = Attributes {
            mac_mobility: Some(MacMobility {
                sticky: false,
                seq: 3,
            }),
            ..attrs.clone()
        };
        // The same claim from two routes of two neighbours (a route reflector's copy).
        ribs.announce(1, &route(1, Some(ip)), &moved, &import, &mut touched);
        let key = claims::key(100, MacAddr([2, 0, 0, 0, 2, 1]), vtep.into());
        assert_eq!(touched, BTreeSet::from([key.clone()]));
        let now: Vec<_> = ribs.claims(&touched, &import).collect();
        let e = now[0].1.clone().expect("claimed");
        assert_eq!((e.seq, e.ips.clone()), (3, vec![ip]));
        // One withdrawn: the other still claims, without the address.
        touched.clear();
        ribs.withdraw(1, &route(1, Some(ip)).key(), &mut touched);
        let e = ribs.claims(&touched, &import).next().unwrap().1.unwrap();
        assert_eq!((e.seq, e.ips.len()), (0, 0));
        // The VN gone here: nothing claimed any more.
        touched.clear();
        let gone = Import {
            routing: &none,
            own: import.own,
        };
        ribs.reindex(&gone, &mut touched);
        assert_eq!(ribs.claims(&touched, &gone).next().unwrap().1, None);
        assert_eq!(ribs.len(0), 1, "the route is kept: the VN may come back");
    }
}
