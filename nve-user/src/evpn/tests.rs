//! The codec's tests: round trips, hand-computed bytes, every NOTIFICATION from a crafted
//! message, RFC 7606 treat-as-withdraw, generated messages, and FRR's own captures.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::{
    route::{Attributes, ENCAP_VXLAN, MacMobility, Pmsi, Rd, Route, RouteTarget},
    wire::{
        Capabilities, GracefulRestart, Message, Notification, Open, Update, WithdrawReason, decode,
        encode,
    },
};
use crate::mac::MacAddr;

fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .flat_map(|l| l.bytes().filter(u8::is_ascii_hexdigit))
        .collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn vtep() -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 1)
}

/// What nve announces for VN 100 with VTEP 10.0.0.1 on iBGP (AS 65000).
fn nve_attributes() -> Attributes {
    Attributes {
        local_pref: Some(100),
        next_hop: IpAddr::V4(vtep()),
        route_targets: vec![RouteTarget::as2(65000, 100)],
        vxlan: true,
        ..Attributes::default()
    }
}

fn mac_ip(ip: Option<IpAddr>) -> Route {
    Route::MacIp {
        rd: Rd::ipv4(vtep(), 100),
        esi: [0; 10],
        tag: 0,
        mac: MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
        ip,
        label: 100,
    }
}

fn imet() -> Route {
    Route::Imet {
        rd: Rd::ipv4(vtep(), 100),
        tag: 0,
        originator: IpAddr::V4(vtep()),
    }
}

fn decoded(bytes: &[u8]) -> Message {
    match decode(bytes, true) {
        Ok(Some((msg, used))) => {
            assert_eq!(used, bytes.len());
            msg
        }
        other => panic!("{other:?}"),
    }
}

fn decoded_update(bytes: &[u8]) -> Update {
    match decoded(bytes) {
        Message::Update(u) => u,
        other => panic!("{other:?}"),
    }
}

fn round_trip(msg: &Message, four_octet_asn: bool) {
    let bytes = encode(msg, four_octet_asn);
    assert!(bytes.len() <= super::wire::MAX_MESSAGE);
    assert_eq!(
        decode(&bytes, four_octet_asn),
        Ok(Some((msg.clone(), bytes.len()))),
        "{bytes:02x?}"
    );
    // Every proper prefix is incomplete, not an error.
    for cut in 0..bytes.len() {
        assert_eq!(
            decode(&bytes[..cut], four_octet_asn),
            Ok(None),
            "cut at {cut}"
        );
    }
}

fn frr_open() -> Open {
    Open {
        asn: 65000,
        hold_time: 9,
        router_id: Ipv4Addr::new(10, 0, 0, 2),
        caps: Capabilities {
            evpn: true,
            ipv4_unicast: false,
            four_octet_asn: true,
            route_refresh: true,
            graceful_restart: Some(GracefulRestart {
                restarting: false,
                restart_time: 120,
                evpn_forwarding: None,
            }),
            other: vec![128, 70, 73],
        },
    }
}

#[test]
fn evpn_every_message_round_trips() {
    let mut open = frr_open();
    round_trip(&Message::Open(open.clone()), true);
    open.asn = 4_200_000_000;
    open.caps.ipv4_unicast = true;
    open.caps.graceful_restart = Some(GracefulRestart {
        restarting: true,
        restart_time: 4095,
        evpn_forwarding: Some(true),
    });
    round_trip(&Message::Open(open), true);

    let attrs = Attributes {
        as_path: vec![65001, 4_200_000_000],
        mac_mobility: Some(MacMobility {
            sticky: true,
            seq: 7,
        }),
        pmsi: Some(Pmsi::ingress_replication(100, IpAddr::V4(vtep()))),
        originator_id: Some(Ipv4Addr::new(10, 0, 0, 9)),
        cluster_list: vec![Ipv4Addr::new(10, 0, 0, 254)],
        other_communities: vec![[0x06, 0x03, 0, 0, 0, 0, 0, 1]],
        ..nve_attributes()
    };
    let updates = [
        Update {
            announced: vec![mac_ip(None), mac_ip(Some("192.168.10.1".parse().unwrap()))],
            attributes: Some(attrs.clone()),
            ..Update::default()
        },
        Update {
            announced: vec![imet()],
            withdrawn: vec![mac_ip(Some("fd00::1".parse().unwrap()))],
            attributes: Some(Attributes {
                next_hop: "fd00::1".parse().unwrap(),
                ..attrs
            }),
            ..Update::default()
        },
        Update {
            withdrawn: vec![imet()],
            ..Update::default()
        },
        Update {
            end_of_rib: true,
            ..Update::default()
        },
    ];
    for u in updates {
        round_trip(&Message::Update(u.clone()), true);
        // 2-octet sessions carry 4_200_000_000 as AS_TRANS plus AS4_PATH.
        round_trip(&Message::Update(u), false);
    }
    round_trip(
        &Message::Notification(Notification::new(6, 2, *b"bye")),
        true,
    );
    round_trip(&Message::Keepalive, true);
    round_trip(&Message::RouteRefresh { afi: 25, safi: 70 }, true);
}

#[test]
fn evpn_open_bytes_are_hand_computed() {
    let open = Open {
        asn: 65000,
        hold_time: 9,
        router_id: vtep(),
        caps: Capabilities {
            evpn: true,
            four_octet_asn: true,
            route_refresh: true,
            graceful_restart: Some(GracefulRestart {
                restarting: false,
                restart_time: 120,
                evpn_forwarding: None,
            }),
            ..Capabilities::default()
        },
    };
    let expected = hex("
        ffffffffffffffffffffffffffffffff 0031 01   # marker, length 49, OPEN
        04 fde8 0009 0a000001                      # version 4, AS 65000, hold 9, id 10.0.0.1
        14 02 12                                   # 20 bytes of parameters: capabilities, 18
        01 04 0019 00 46                           # multiprotocol L2VPN EVPN
        02 00                                      # route refresh
        41 04 0000fde8                             # 4-octet AS 65000
        40 02 0078                                 # graceful restart, 120 s, no families
    ");
    assert_eq!(encode(&Message::Open(open.clone()), true), expected);
    assert_eq!(decoded(&expected), Message::Open(open));
}

#[test]
fn evpn_type3_update_bytes_are_hand_computed() {
    let u = Update {
        announced: vec![imet()],
        attributes: Some(Attributes {
            pmsi: Some(Pmsi::ingress_replication(100, IpAddr::V4(vtep()))),
            ..nve_attributes()
        }),
        ..Update::default()
    };
    let expected = hex("
        ffffffffffffffffffffffffffffffff 0063 02   # marker, length 99, UPDATE
        0000 004c                                  # no withdrawn routes, 76 bytes of attributes
        40 01 01 00                                # ORIGIN IGP
        40 02 00                                   # AS_PATH empty (iBGP)
        40 05 04 00000064                          # LOCAL_PREF 100
        80 0e 1c 0019 46 04 0a000001 00            # MP_REACH_NLRI, 28: EVPN, next hop 10.0.0.1
        03 11 0001 0a000001 0064 00000000 20 0a000001  # type 3, RD 10.0.0.1:100, tag 0, 10.0.0.1
        c0 10 10                                   # EXTENDED_COMMUNITIES, 16
        0002 fde8 00000064                         # RT 65000:100
        030c 0000 0000 0008                        # encapsulation VXLAN
        c0 16 09 00 06 000064 0a000001             # PMSI: ingress replication, VNI 100, VTEP
    ");
    assert_eq!(encode(&Message::Update(u.clone()), true), expected);
    assert_eq!(decoded_update(&expected), u);
}

#[test]
fn evpn_type2_update_and_withdraw_bytes_are_hand_computed() {
    let route = mac_ip(Some("192.168.10.1".parse().unwrap()));
    let u = Update {
        announced: vec![route.clone()],
        attributes: Some(Attributes {
            mac_mobility: Some(MacMobility {
                sticky: false,
                seq: 2,
            }),
            ..nve_attributes()
        }),
        ..Update::default()
    };
    let nlri =
        "02 25 0001 0a000001 0064 00000000000000000000 00000000 30 525400123456 20 c0a80a01 000064";
    // type 2, 37 bytes: RD 10.0.0.1:100, ESI 0, tag 0, MAC, IPv4 192.168.10.1, label VNI 100
    let expected = hex(&format!(
        "
        ffffffffffffffffffffffffffffffff 0073 02   # marker, length 115, UPDATE
        0000 005c                                  # 92 bytes of attributes
        40 01 01 00  40 02 00  40 05 04 00000064   # ORIGIN, AS_PATH, LOCAL_PREF
        80 0e 30 0019 46 04 0a000001 00            # MP_REACH_NLRI, 48
        {nlri}
        c0 10 18                                   # EXTENDED_COMMUNITIES, 24
        0002 fde8 00000064  030c 0000 0000 0008    # RT 65000:100, VXLAN
        0600 00 00 00000002                        # MAC Mobility, not sticky, sequence 2
    "
    ));
    assert_eq!(encode(&Message::Update(u.clone()), true), expected);
    assert_eq!(decoded_update(&expected), u);

    let withdraw = Update {
        withdrawn: vec![route],
        ..Update::default()
    };
    let expected = hex(&format!(
        "ffffffffffffffffffffffffffffffff 0044 02 0000 002d 80 0f 2a 0019 46 {nlri}"
    ));
    assert_eq!(encode(&Message::Update(withdraw.clone()), true), expected);
    assert_eq!(decoded_update(&expected), withdraw);
}

#[test]
fn evpn_end_of_rib_is_frrs_empty_mp_unreach() {
    let eor = hex("ffffffffffffffffffffffffffffffff 001d 02 0000 0006 800f03 0019 46");
    let u = Update {
        end_of_rib: true,
        ..Update::default()
    };
    assert_eq!(encode(&Message::Update(u.clone()), true), eor);
    assert_eq!(decoded_update(&eor), u);
    // IPv4 unicast's End-of-RIB (an empty UPDATE) is not EVPN's.
    let empty = hex("ffffffffffffffffffffffffffffffff 0017 02 0000 0000");
    assert_eq!(decoded_update(&empty), Update::default());
}

// --- Crafted bad messages ----------------------------------------------------------------

fn message(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(ty);
    m.extend_from_slice(body);
    m
}

fn attr(flags: u8, ty: u8, value: &[u8]) -> Vec<u8> {
    let mut a = vec![flags, ty, value.len() as u8];
    a.extend_from_slice(value);
    a
}

fn update_of(attrs: &[Vec<u8>], nlri: &[u8]) -> Vec<u8> {
    let attrs = attrs.concat();
    let mut body = vec![0, 0];
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend_from_slice(&attrs);
    body.extend_from_slice(nlri);
    message(2, &body)
}

fn origin() -> Vec<u8> {
    attr(0x40, 1, &[0])
}

fn as_path() -> Vec<u8> {
    attr(0x40, 2, &hex("02 01 0000fde9"))
}

fn mp_reach(nlris: &[u8]) -> Vec<u8> {
    let mut v = hex("0019 46 04 0a000001 00");
    v.extend_from_slice(nlris);
    attr(0x80, 14, &v)
}

fn imet_nlri() -> Vec<u8> {
    hex("03 11 0001 0a000001 0064 00000000 20 0a000001")
}

fn open_body(version: u8, asn: u16, hold: u16, id: [u8; 4], params: &[u8]) -> Vec<u8> {
    let mut b = vec![version];
    b.extend_from_slice(&asn.to_be_bytes());
    b.extend_from_slice(&hold.to_be_bytes());
    b.extend_from_slice(&id);
    b.push(params.len() as u8);
    b.extend_from_slice(params);
    b
}

fn refuses(bytes: &[u8], code: u8, subcode: u8, data: &[u8]) {
    assert_eq!(
        decode(bytes, true),
        Err(Notification::new(code, subcode, data)),
        "{bytes:02x?}"
    );
}

#[test]
fn evpn_header_errors_are_notified() {
    let keepalive = message(4, &[]);
    let mut bad = keepalive.clone();
    bad[3] = 0;
    refuses(&bad, 1, 1, &[]);
    refuses(&bad[..5], 1, 1, &[]); // known before the header is in
    let with_len = |len: u16, ty: u8| {
        let mut m = message(ty, &[0; 40]);
        m[16..18].copy_from_slice(&len.to_be_bytes());
        m
    };
    refuses(&with_len(18, 4), 1, 2, &[0, 18]);
    refuses(&with_len(4097, 2), 1, 2, &[0x10, 0x01]);
    refuses(&with_len(20, 4), 1, 2, &[0, 20]); // KEEPALIVE is 19
    refuses(&with_len(28, 1), 1, 2, &[0, 28]); // OPEN at least 29
    refuses(&with_len(22, 2), 1, 2, &[0, 22]); // UPDATE at least 23
    refuses(&with_len(20, 3), 1, 2, &[0, 20]); // NOTIFICATION at least 21
    refuses(&with_len(24, 5), 1, 2, &[0, 24]); // ROUTE-REFRESH is 23
    refuses(&message(6, &[]), 1, 3, &[6]);
    refuses(&message(0, &[]), 1, 3, &[0]);
}

#[test]
fn evpn_open_errors_are_notified() {
    let id = [10, 0, 0, 2];
    let caps = hex("02 0c 01040019 0046 41 04 0000fde8");
    refuses(
        &message(1, &open_body(3, 65000, 9, id, &caps)),
        2,
        1,
        &[0, 4],
    );
    refuses(&message(1, &open_body(4, 0, 9, id, &[])), 2, 2, &[]);
    let as4_zero = hex("02 06 41 04 00000000");
    refuses(
        &message(1, &open_body(4, 65000, 9, id, &as4_zero)),
        2,
        2,
        &[],
    );
    refuses(
        &message(1, &open_body(4, 65000, 9, [0; 4], &caps)),
        2,
        3,
        &[],
    );
    refuses(&message(1, &open_body(4, 65000, 1, id, &caps)), 2, 6, &[]);
    refuses(&message(1, &open_body(4, 65000, 2, id, &caps)), 2, 6, &[]);
    // An optional parameter other than capabilities (the old authentication one).
    refuses(
        &message(1, &open_body(4, 65000, 9, id, &hex("01 01 00"))),
        2,
        4,
        &[],
    );
    // A capability past its parameter, a 4-octet AS of 3 bytes, parameters past the end.
    refuses(
        &message(1, &open_body(4, 65000, 9, id, &hex("02 02 01 04"))),
        2,
        0,
        &[],
    );
    let short_as4 = hex("02 05 41 03 00fde8");
    refuses(
        &message(1, &open_body(4, 65000, 9, id, &short_as4)),
        2,
        0,
        &[],
    );
    let mut past = open_body(4, 65000, 9, id, &caps);
    past[9] += 1;
    refuses(&message(1, &past), 2, 0, &[]);
    // Hold time 0 and 3 are fine, as is AS_TRANS with the real ASN in the capability.
    for hold in [0, 3] {
        assert!(decode(&message(1, &open_body(4, 65000, hold, id, &caps)), true).is_ok());
    }
    let as4 = hex("02 06 41 04 fa56ea00");
    let Message::Open(open) = decoded(&message(1, &open_body(4, 23456, 9, id, &as4))) else {
        panic!()
    };
    assert_eq!(open.asn, 4_200_000_000);
}

#[test]
fn evpn_update_errors_are_notified() {
    let good = [origin(), as_path(), mp_reach(&imet_nlri())];
    assert_eq!(decoded_update(&update_of(&good, &[])).announced, [imet()]);

    // 3/1: withdrawn or attribute length past the end, an attribute twice, a cut header.
    refuses(&message(2, &hex("0005 0000")), 3, 1, &[]);
    refuses(&message(2, &hex("0000 0009 400101 00")), 3, 1, &[]);
    refuses(&update_of(&[origin(), origin()], &[]), 3, 1, &[]);
    refuses(&update_of(&[origin(), vec![0x40]], &[]), 3, 1, &[]);
    // 3/2: an unknown well-known attribute.
    let unknown = attr(0x40, 99, &[1, 2]);
    refuses(
        &update_of(std::slice::from_ref(&unknown), &[]),
        3,
        2,
        &unknown,
    );
    // ...while an unknown optional one is passed over.
    let unknown_optional = [
        origin(),
        as_path(),
        attr(0xc0, 99, &[1]),
        mp_reach(&imet_nlri()),
    ];
    assert_eq!(
        decoded_update(&update_of(&unknown_optional, &[])).announced,
        [imet()]
    );
    // 3/3: ORIGIN or AS_PATH missing with EVPN routes, NEXT_HOP with IPv4 NLRI.
    refuses(
        &update_of(&[as_path(), mp_reach(&imet_nlri())], &[]),
        3,
        3,
        &[1],
    );
    refuses(
        &update_of(&[origin(), mp_reach(&imet_nlri())], &[]),
        3,
        3,
        &[2],
    );
    refuses(
        &update_of(&[origin(), as_path()], &[24, 10, 0, 0]),
        3,
        3,
        &[3],
    );
    // 3/4: flags that do not fit the type (data: the whole attribute).
    let optional_origin = attr(0xc0, 1, &[0]);
    refuses(
        &update_of(std::slice::from_ref(&optional_origin), &[]),
        3,
        4,
        &optional_origin,
    );
    let mut transitive_reach = mp_reach(&imet_nlri());
    transitive_reach[0] = 0xc0;
    refuses(
        &update_of(&[origin(), as_path(), transitive_reach.clone()], &[]),
        3,
        4,
        &transitive_reach,
    );
    let well_known_pmsi = attr(0x40, 22, &hex("00 06 000064 0a000001"));
    refuses(
        &update_of(std::slice::from_ref(&well_known_pmsi), &[]),
        3,
        4,
        &well_known_pmsi,
    );
    // 3/5: lengths that do not fit the type, an attribute past the attribute field.
    let long_origin = attr(0x40, 1, &[0, 0]);
    refuses(
        &update_of(std::slice::from_ref(&long_origin), &[]),
        3,
        5,
        &long_origin,
    );
    let short_lp = attr(0x40, 5, &[0, 0, 100]);
    refuses(
        &update_of(std::slice::from_ref(&short_lp), &[]),
        3,
        5,
        &short_lp,
    );
    let short_pmsi = attr(0xc0, 22, &hex("00 06 000064 0a0000"));
    refuses(
        &update_of(std::slice::from_ref(&short_pmsi), &[]),
        3,
        5,
        &short_pmsi,
    );
    refuses(
        &message(2, &hex("0000 0004 400105 00")),
        3,
        5,
        &hex("400105 00"),
    );
    // 3/6: ORIGIN 3.
    let bad_origin = attr(0x40, 1, &[3]);
    refuses(
        &update_of(std::slice::from_ref(&bad_origin), &[]),
        3,
        6,
        &bad_origin,
    );
    // 3/9: MP_REACH with a 5-byte next hop, an NLRI past its end; MP_UNREACH of 2 bytes.
    let nh5 = attr(0x80, 14, &hex("0019 46 05 0a00000100 00"));
    refuses(
        &update_of(&[origin(), as_path(), nh5.clone()], &[]),
        3,
        9,
        &nh5,
    );
    let mut cut_nlri = imet_nlri();
    cut_nlri[1] = 18;
    let overrun = mp_reach(&cut_nlri);
    refuses(
        &update_of(&[origin(), as_path(), overrun.clone()], &[]),
        3,
        9,
        &overrun,
    );
    let short_unreach = attr(0x80, 15, &hex("0019"));
    refuses(
        &update_of(std::slice::from_ref(&short_unreach), &[]),
        3,
        9,
        &short_unreach,
    );
    // 3/10: an IPv4 prefix of 33 bits, or cut off.
    let v4 = [origin(), as_path(), attr(0x40, 3, &[10, 0, 0, 1])];
    refuses(&update_of(&v4, &[33, 10, 0, 0, 0, 0]), 3, 10, &[]);
    refuses(&update_of(&v4, &[24, 10, 0]), 3, 10, &[]);
    assert_eq!(decoded_update(&update_of(&v4, &[24, 10, 0, 0])).skipped, 1);
    // 3/11: an AS_PATH segment of type 5, of length 0, or past its end.
    for path in ["05 01 0000fde9", "02 00", "02 02 0000fde9"] {
        let bad = [origin(), attr(0x40, 2, &hex(path)), mp_reach(&imet_nlri())];
        refuses(&update_of(&bad, &[]), 3, 11, &[]);
    }
}

#[test]
fn evpn_malformed_nlris_and_communities_are_treated_as_withdraw() {
    // A type-2 route with a 47-bit MAC beside a good type-3 route: the frame is intact, so
    // the UPDATE is a withdraw of what could be read (RFC 7606 s.2, 5.3).
    let mut bad_mac =
        hex("02 21 0001 0a000001 0064 00000000000000000000 00000000 30 525400123456 00 000064");
    bad_mac[24] = 47;
    let mut nlris = imet_nlri();
    nlris.extend_from_slice(&bad_mac);
    let u = decoded_update(&update_of(&[origin(), as_path(), mp_reach(&nlris)], &[]));
    assert_eq!(u.treat_as_withdraw, Some(WithdrawReason::MalformedNlri));
    assert_eq!((u.malformed, u.withdrawn.clone()), (1, vec![imet()]));
    assert!(u.announced.is_empty() && u.attributes.is_none());

    let ext12 = attr(0xc0, 16, &[0; 12]);
    let u = decoded_update(&update_of(
        &[origin(), as_path(), mp_reach(&imet_nlri()), ext12],
        &[],
    ));
    assert_eq!(
        u.treat_as_withdraw,
        Some(WithdrawReason::MalformedExtCommunities)
    );
    assert_eq!(u.withdrawn, [imet()]);
    let comm3 = attr(0xc0, 8, &[0; 3]);
    let u = decoded_update(&update_of(
        &[origin(), as_path(), mp_reach(&imet_nlri()), comm3],
        &[],
    ));
    assert_eq!(
        u.treat_as_withdraw,
        Some(WithdrawReason::MalformedCommunities)
    );

    // Route types nve does not use are counted, not errors: a type 5 and a type 1.
    let mut others = hex("05 22");
    others.extend_from_slice(&[0; 34]);
    others.extend_from_slice(&hex("01 19"));
    others.extend_from_slice(&[0; 25]);
    others.extend_from_slice(&imet_nlri());
    let u = decoded_update(&update_of(&[origin(), as_path(), mp_reach(&others)], &[]));
    assert_eq!((u.skipped, u.announced), (2, vec![imet()]));
    assert_eq!(u.treat_as_withdraw, None);
}

#[test]
fn evpn_communities_and_pmsi_are_typed_as_frr_sends_them() {
    let comms = [
        RouteTarget::as2(65000, 100).0,
        ENCAP_VXLAN,
        [0x06, 0x00, 0x01, 0, 0, 0, 0, 0], // sticky, sequence 0 (FRR's static MAC)
        [0x06, 0x00, 0x00, 0, 0, 0, 0, 5], // a second MAC Mobility: kept raw
        [0x03, 0x0c, 0, 0, 0, 0, 0, 2],    // encapsulation other than VXLAN: kept raw
        [0x06, 0x03, 0x52, 0x54, 0, 0x12, 0x34, 0x56], // router MAC
    ];
    let pmsi = attr(0xe0, 22, &hex("00 06 000064 0a000002")); // partial bit: fine
    let all = [
        origin(),
        as_path(),
        mp_reach(&imet_nlri()),
        attr(0xc0, 16, &comms.concat()),
        pmsi,
    ];
    let a = decoded_update(&update_of(&all, &[])).attributes.unwrap();
    assert_eq!(a.route_targets, [RouteTarget::as2(65000, 100)]);
    assert!(a.vxlan);
    assert_eq!(
        a.mac_mobility,
        Some(MacMobility {
            sticky: true,
            seq: 0
        })
    );
    assert_eq!(a.other_communities, comms[3..]);
    assert_eq!(
        a.pmsi,
        Some(Pmsi::ingress_replication(100, "10.0.0.2".parse().unwrap()))
    );
    assert_eq!(a.as_path, [65001]);
    assert_eq!(a.next_hop, IpAddr::V4(vtep()));
}

// --- Generated ---------------------------------------------------------------------------

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
    ]
}

fn any_route() -> impl Strategy<Value = Route> {
    let rd = any::<[u8; 8]>().prop_map(Rd);
    prop_oneof![
        (
            rd.clone(),
            any::<[u8; 10]>(),
            any::<u32>(),
            any::<[u8; 6]>(),
            proptest::option::of(any_ip()),
            0u32..1 << 24
        )
            .prop_map(|(rd, esi, tag, mac, ip, label)| Route::MacIp {
                rd,
                esi,
                tag,
                mac: MacAddr(mac),
                ip,
                label
            }),
        (rd, any::<u32>(), any_ip()).prop_map(|(rd, tag, originator)| Route::Imet {
            rd,
            tag,
            originator
        }),
    ]
}

fn untyped(c: &[u8; 8]) -> bool {
    !RouteTarget::is_route_target(c) && *c != ENCAP_VXLAN && !(c[0] == 0x06 && c[1] == 0x00)
}

fn any_attributes() -> impl Strategy<Value = Attributes> {
    let rt = prop_oneof![
        any::<(u16, u32)>().prop_map(|(a, v)| RouteTarget::as2(a, v)),
        any::<(u32, u16)>().prop_map(|(a, v)| RouteTarget::as4(a, v)),
        any::<([u8; 4], u16)>().prop_map(|(a, v)| RouteTarget::ipv4(a.into(), v)),
    ];
    let pmsi = (any::<u8>(), any::<u8>(), 0u32..1 << 24, any_ip()).prop_map(
        |(flags, tunnel_type, label, endpoint)| Pmsi {
            flags,
            tunnel_type,
            label,
            endpoint,
        },
    );
    let mm = any::<(bool, u32)>().prop_map(|(sticky, seq)| MacMobility { sticky, seq });
    let v4 = any::<[u8; 4]>().prop_map(Ipv4Addr::from);
    (
        (
            0u8..=2,
            proptest::collection::vec(any::<u32>(), 0..300),
            any::<Option<u32>>(),
            any_ip(),
            proptest::collection::vec(rt, 0..4),
        ),
        (
            any::<bool>(),
            proptest::option::of(mm),
            proptest::option::of(pmsi),
            proptest::option::of(v4.clone()),
            proptest::collection::vec(v4, 0..3),
            proptest::collection::vec(any::<[u8; 8]>().prop_filter("untyped", untyped), 0..3),
        ),
    )
        .prop_map(
            |(
                (origin, as_path, local_pref, next_hop, route_targets),
                (vxlan, mac_mobility, pmsi, originator_id, cluster_list, other_communities),
            )| Attributes {
                origin,
                as_path,
                local_pref,
                next_hop,
                route_targets,
                vxlan,
                mac_mobility,
                pmsi,
                originator_id,
                cluster_list,
                other_communities,
            },
        )
}

fn any_update() -> impl Strategy<Value = Update> {
    prop_oneof![
        9 => (
            proptest::collection::vec(any_route(), 0..8),
            proptest::collection::vec(any_route(), 0..8),
            any_attributes(),
        )
            .prop_map(|(withdrawn, announced, a)| Update {
                attributes: (!announced.is_empty()).then_some(a),
                withdrawn,
                announced,
                ..Update::default()
            }),
        1 => Just(Update {
            end_of_rib: true,
            ..Update::default()
        }),
    ]
}

fn any_open() -> impl Strategy<Value = Open> {
    let gr = (any::<bool>(), 0u16..4096, any::<Option<bool>>()).prop_map(
        |(restarting, restart_time, evpn_forwarding)| GracefulRestart {
            restarting,
            restart_time,
            evpn_forwarding,
        },
    );
    let other = any::<u8>().prop_filter("untyped", |c| ![1, 2, 64, 65].contains(c));
    (
        any::<bool>(),
        1u32..,
        any::<u16>().prop_filter("acceptable", |h| *h != 1 && *h != 2),
        1u32..,
        any::<(bool, bool, bool)>(),
        proptest::option::of(gr),
        proptest::collection::vec(other, 0..6),
    )
        .prop_map(
            |(four_octet_asn, asn, hold_time, id, (evpn, ipv4_unicast, rr), gr, other)| Open {
                // Without the capability the ASN is the 2-octet field's.
                asn: if four_octet_asn { asn } else { asn % 65535 + 1 },
                hold_time,
                router_id: Ipv4Addr::from(id),
                caps: Capabilities {
                    evpn,
                    ipv4_unicast,
                    four_octet_asn,
                    route_refresh: rr,
                    graceful_restart: gr,
                    other,
                },
            },
        )
}

proptest! {
    #[test]
    fn evpn_generated_updates_round_trip(u in any_update(), four_octet in any::<bool>()) {
        let msg = Message::Update(u);
        let bytes = encode(&msg, four_octet);
        prop_assert_eq!(decode(&bytes, four_octet), Ok(Some((msg, bytes.len()))));
    }

    #[test]
    fn evpn_generated_opens_round_trip(open in any_open()) {
        let msg = Message::Open(open);
        let bytes = encode(&msg, true);
        prop_assert_eq!(decode(&bytes, true), Ok(Some((msg, bytes.len()))));
    }

    #[test]
    fn evpn_decode_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(&bytes, true);
        // Behind a valid marker and a fitting length, the body parsers see it all.
        let mut framed = vec![0xff; 16];
        framed.extend_from_slice(&((bytes.len() + 18) as u16).to_be_bytes());
        framed.extend_from_slice(&bytes);
        let _ = decode(&framed, true);
        let _ = decode(&framed, false);
    }

    #[test]
    fn evpn_decode_never_panics_on_damaged_messages(
        u in any_update(),
        hits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let mut bytes = encode(&Message::Update(u), true);
        for (at, b) in hits {
            // Past the marker and length: what a peer gets wrong inside a frame.
            let at = 18 + at % (bytes.len() - 18);
            bytes[at] = b;
        }
        let _ = decode(&bytes, true);
        let _ = decode(&bytes[..cut % (bytes.len() + 1)], false);
    }
}

// --- FRR's own messages ------------------------------------------------------------------

/// Every capture under tests/data/evpn (whole BGP messages in hex from the marker on, one or
/// more a file, `#` comments allowed) decodes with nothing malformed, and what it decodes to
/// encodes and decodes back the same (less what nve does not keep). Skips, saying so, while the directory is missing.
#[test]
fn evpn_decodes_every_frr_capture() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/evpn");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("skipped: no FRR captures in {}", dir.display());
        return;
    };
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "hex"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.hex in {}", dir.display());
    for file in files {
        let name = file.display();
        let bytes = hex(&std::fs::read_to_string(&file).unwrap());
        let mut at = 0;
        while at < bytes.len() {
            let (msg, used) = match decode(&bytes[at..], true) {
                Ok(Some(m)) => m,
                other => panic!("{name} at byte {at}: {other:?}"),
            };
            let mut msg = msg;
            if let Message::Update(u) = &mut msg {
                assert_eq!((u.malformed, u.treat_as_withdraw), (0, None), "{name}");
                u.skipped = 0; // what was passed over is not written again
            }
            let again = encode(&msg, true);
            assert_eq!(decode(&again, true), Ok(Some((msg, again.len()))), "{name}");
            at += used;
        }
    }
}
