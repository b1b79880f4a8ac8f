use super::*;

const FILE: &str = r#"
vtep = "10.0.0.1"
underlay = "ul"
metrics_listen = "127.0.0.1:9464"

[[vns]]
name = "blue"
vni = 100
flood = ["10.0.0.2"]

[[vdp]]
port = "trunk0"
"#;

#[test]
fn a_file_gives_every_setting_and_flags_override_it() {
    let file = Settings::parse(FILE, false).unwrap();
    let flags = Settings {
        underlay: Some("eth1".into()),
        ..Settings::default()
    };
    let r = flags.over(file).resolve(None).unwrap();
    assert_eq!(r.vtep, Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(r.underlay, "eth1");
    assert_eq!(r.ttl, nve_common::wire::DEFAULT_TTL);
    assert_eq!(
        r.all.metrics_listen,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    assert_eq!(r.all.vns[0].name, "blue");
}

#[test]
fn an_unknown_key_is_an_error_naming_it_and_its_line() {
    let text = "vtep = \"10.0.0.1\"\n\n[[vns]]\nname = \"blue\"\nvni = 100\nflod = []\n";
    let e = format!("{:#}", Settings::parse(text, false).unwrap_err());
    assert!(e.contains("line 6") && e.contains("flod"), "{e}");
    let e = format!("{:#}", Settings::parse("{\"vtpe\": 1}", true).unwrap_err());
    assert!(e.contains("vtpe") && e.contains("line 1"), "{e}");
}

#[test]
fn sections_are_checked_beyond_their_syntax() {
    let text = "[[vns]]\nname = \"a\"\nvni = 100\n[[vns]]\nname = \"b\"\nvni = 100\n";
    let e = format!("{:#}", Settings::parse(text, false).unwrap_err());
    assert!(e.contains("vns[1]"), "{e}");
    let e = format!(
        "{:#}",
        Settings::parse("[bgp]\nasn = 0\nneighbors = []\n", false).unwrap_err()
    );
    assert!(e.starts_with("bgp: "), "{e}");
}

#[test]
fn missing_settings_and_contradictions_are_named() {
    let e = Settings::default().resolve(None).unwrap_err().to_string();
    assert!(e.starts_with("vtep: not set"), "{e}");
    let s = Settings::parse(
        "vtep = \"10.0.0.1\"\nunderlay = \"ul\"\nnva = \"bgp\"\n",
        false,
    )
    .unwrap();
    let e = s.resolve(None).unwrap_err().to_string();
    assert!(e.contains("`bgp` section"), "{e}");
}

#[test]
fn only_what_the_state_lacks_is_created() {
    let s = Settings::parse(FILE, false).unwrap();
    let mut m = Model::default();
    let (seeds, kept) = s.missing_in(&m);
    assert_eq!(
        seeds.iter().map(|s| s.what.as_str()).collect::<Vec<_>>(),
        ["vn blue", "vdp trunk0"]
    );
    assert!(kept.is_empty());
    for e in seeds.iter().flat_map(|s| &s.events) {
        m.apply(e, 0).unwrap();
    }
    assert!(s.missing_in(&m).0.is_empty());
    let other = Settings::parse(&FILE.replace("vni = 100", "vni = 200"), false).unwrap();
    let (seeds, kept) = other.missing_in(&m);
    assert!(seeds.is_empty());
    assert!(kept[0].contains("VNI 200 in the config file, 100 in the state"));
}

#[test]
fn restart_needed_names_changed_keys_but_not_the_reloadable_ones() {
    let old = Settings::parse(FILE, false).unwrap();
    let new = Settings::parse(
        &FILE
            .replace("127.0.0.1:9464", "127.0.0.1:9465")
            .replace("vni = 100", "vni = 101"),
        false,
    )
    .unwrap();
    assert_eq!(old.restart_needed(&new), ["metrics_listen"]);
}

#[test]
fn a_start_takes_each_seed_whole_or_not_at_all() {
    let mut stored = Model::default();
    stored.create_vn(&CreateVn::new("red", 300)).unwrap();
    // green asks for red's VNI: refused, and nothing of it is left.
    let text = format!("{FILE}\n[[vns]]\nname = \"green\"\nvni = 300\nflood = [\"10.0.0.3\"]\n");
    let s = Settings::parse(&text, false).unwrap();
    let (m, view) = s.seeded(stored, 0, |_| true);
    assert_eq!(view.created, ["vn blue", "vdp trunk0"]);
    assert!(
        view.failed.len() == 1 && view.failed[0].starts_with("vn green: "),
        "{view:?}"
    );
    assert!(m.vn("green").is_err());
    assert_eq!(m.vn("blue").unwrap().flood.len(), 1);
    assert!(m.vn("red").is_ok(), "a VN the file does not list is kept");
}

#[test]
fn a_start_leaves_out_a_vn_whose_port_does_not_exist() {
    let text =
        format!("{FILE}\n[[vns]]\nname = \"green\"\nvni = 200\nports = [{{ port = \"tap9\" }}]\n");
    let s = Settings::parse(&text, false).unwrap();
    let (m, view) = s.seeded(Model::default(), 0, |p| p != "tap9");
    assert!(
        view.failed[0].starts_with("vn green: port tap9: no such interface"),
        "{view:?}"
    );
    assert!(m.vn("green").is_err() && m.vn("blue").is_ok());
}
