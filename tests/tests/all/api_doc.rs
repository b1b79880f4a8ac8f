//! Every example in docs/api.md, in order, against a real daemon over its socket: each
//! request must get the status and the fields its documented reply shows.
use nve_tests::rig::{Daemon, Netns, require_root, veth};
use serde_json::Value;

/// (request line, body, status, expected reply) for each example.
fn examples(doc: &str) -> Vec<(String, String, u16, Option<Value>)> {
    let mut blocks = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(kind) = line
            .strip_prefix("```")
            .filter(|k| *k == "request" || *k == "response")
        else {
            continue;
        };
        let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        blocks.push((kind.to_string(), body));
    }
    blocks
        .chunks(2)
        .map(|pair| {
            let [(req_kind, req), (resp_kind, resp)] = pair else {
                panic!("unpaired example: {pair:?}")
            };
            assert_eq!(
                (req_kind.as_str(), resp_kind.as_str()),
                ("request", "response")
            );
            let status = resp[0].trim().parse().expect("a status line");
            let expected = (resp.len() > 1)
                .then(|| serde_json::from_str(&resp[1..].join("\n")).expect("reply JSON"));
            (req[0].to_string(), req[1..].join("\n"), status, expected)
        })
        .collect()
}

/// Whether `actual` has everything `expected` shows (objects: those keys; arrays: same
/// length, element by element).
fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| contains(av, v))),
        (Value::Array(a), Value::Array(e)) => {
            a.len() == e.len() && a.iter().zip(e).all(|(a, e)| contains(a, e))
        }
        (a, e) => a == e,
    }
}

#[test]
fn docs_api_examples_hold() {
    require_root();
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md")).unwrap();
    let examples = examples(&doc);
    assert!(
        examples.len() >= 20,
        "only {} examples found",
        examples.len()
    );
    let host = Netns::new("doc-h").unwrap();
    let vm = Netns::new("doc-vm").unwrap();
    veth(&host, "ul", &vm, "x0", 1500).unwrap();
    veth(&host, "tap0", &vm, "x1", 1450).unwrap();
    veth(&host, "tap1", &vm, "x2", 1450).unwrap();
    host.ip(&["addr", "add", "10.0.0.1/24", "dev", "ul"])
        .unwrap();
    let d = Daemon::start(&host, "doc", "10.0.0.1", "ul", &[]).unwrap();
    for (line, body, status, expected) in examples {
        let (method, path) = line.split_once(' ').unwrap();
        let (got, text) = d.http(method, path, body.as_bytes()).unwrap();
        assert_eq!(got, status, "{line}: {text}");
        if let Some(expected) = expected {
            let actual: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{line}: {e}: {text}"));
            assert!(
                contains(&actual, &expected),
                "{line}:\n  got  {actual}\n  want {expected}"
            );
        }
    }
}
