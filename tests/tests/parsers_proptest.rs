//! Property tests for every parser that takes operator or runtime input:
//! MACs, CIDRs, the `pod-net` command line, `apply` files and the CNI
//! plugin's stdin and environment. Each returns an error for bad input and
//! never panics; what parses round-trips.
//!
//! Unprivileged: the CNI cases point `pinDir` at a directory that does not
//! exist, so no invocation can reach a real datapath.
use std::{net::IpAddr, str::FromStr};

use clap::{CommandFactory, Parser};
use pod_net::{
    cidr::Cidr,
    cli::Cli,
    cni::{self, Env},
    mac::MacAddr,
    ops::apply,
};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Where every generated CNI config points: never created.
const MISSING_PIN_DIR: &str = "/nonexistent/pod-net-proptest";

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Short strings built from the characters these parsers care about, plus
/// anything at all, so both near-misses and garbage are covered.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-fA-F:./\\-]{0,24}",
        "[0-9]{1,4}(\\.[0-9]{1,4}){0,4}(/[0-9]{1,3})?",
        "[0-9a-f]{0,3}(:[0-9a-f]{0,3}){0,7}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mac_parse_never_panics(text in token()) {
        if let Ok(mac) = MacAddr::from_str(&text) {
            // Whatever parsed prints as six lowercase octets and re-parses.
            let printed = mac.to_string();
            prop_assert_eq!(printed.len(), 17);
            prop_assert_eq!(MacAddr::from_str(&printed), Ok(mac));
        }
    }

    #[test]
    fn mac_round_trips(octets in any::<[u8; 6]>()) {
        let mac = MacAddr(octets);
        prop_assert_eq!(MacAddr::from_str(&mac.to_string()), Ok(mac));
        prop_assert_eq!(MacAddr::from_str(&mac.to_string().to_uppercase()), Ok(mac));
    }

    #[test]
    fn cidr_parse_never_panics(text in token()) {
        if let Ok(cidr) = Cidr::from_str(&text) {
            prop_assert_eq!(Cidr::from_str(&cidr.to_string()), Ok(cidr));
        }
    }

    #[test]
    fn cidr_accepts_exactly_masked_prefixes(addr in any::<[u8; 4]>(), len in 0u8..=40) {
        let ip = IpAddr::from(addr);
        let parsed = Cidr::from_str(&format!("{ip}/{len}"));
        let host_bits = if len >= 32 { 0 } else { u32::MAX >> len };
        let valid = len <= 32 && u32::from_be_bytes(addr) & host_bits == 0;
        prop_assert_eq!(parsed.is_ok(), valid, "{}/{}: {:?}", ip, len, parsed);
        if let Ok(cidr) = parsed {
            prop_assert!(cidr.contains(ip));
        }
    }

    #[test]
    fn cli_parse_never_panics(args in prop::collection::vec(cli_word(), 0..8)) {
        let argv = std::iter::once("pod-net".to_owned()).chain(args);
        // Parsing only: a command that parses is not run.
        let _ = Cli::try_parse_from(argv);
    }

    #[test]
    fn pod_add_accepts_exactly_ip_and_mac(ip in token(), mac in token()) {
        let parsed = Cli::try_parse_from([
            "pod-net", "pod", "add", "--ip", &ip, "--veth", "veth0", "--mac", &mac,
        ]);
        let valid = !ip.starts_with('-') && !mac.starts_with('-')
            && ip.parse::<IpAddr>().is_ok() && MacAddr::from_str(&mac).is_ok();
        prop_assert_eq!(parsed.is_ok(), valid, "--ip {:?} --mac {:?}", ip, mac);
    }

    #[test]
    fn apply_parse_never_panics(text in apply_text()) {
        if let Err(err) = apply::parse(&text) {
            // One line that names where the file went wrong.
            let message = format!("{err:#}");
            prop_assert!(!message.is_empty());
        }
    }

    #[test]
    fn cni_never_panics_on_any_stdin(
        command in cni_command(),
        stdin in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        // Raw bytes that happen to be a JSON object could omit pinDir and
        // reach the real default pin dir; those are the structured case's.
        prop_assume!(!serde_json::from_slice::<Value>(&stdin).is_ok_and(|v| v.is_object()));
        let env = Env { command, ..sandbox_env() };
        check_cni_outcome(&env, &stdin)?;
    }

    #[test]
    fn cni_never_panics_on_any_config(
        command in cni_command(),
        conf in net_conf(),
        container_id in prop::option::of(token()),
        netns in prop::option::of(prop_oneof![Just("/nonexistent/netns".to_owned()), token()]),
        ifname in prop::option::of(token()),
        args in prop::option::of(token()),
    ) {
        let env = Env { command, container_id, netns, ifname, args, path: None };
        check_cni_outcome(&env, conf.to_string().as_bytes())?;
    }
}

/// Whatever the input, the plugin prints one JSON document: a result, or a
/// CNI error with a known code and a message, and exits 1 on error.
fn check_cni_outcome(env: &Env, stdin: &[u8]) -> Result<(), TestCaseError> {
    let outcome = cni::run(env, stdin);
    prop_assert!(outcome.exit_code <= 1);
    if outcome.exit_code == 0 && outcome.stdout.is_empty() {
        return Ok(()); // DEL, GC and CHECK print nothing on success.
    }
    let printed: Value = serde_json::from_str(&outcome.stdout)
        .map_err(|err| TestCaseError::fail(format!("{err}: {:?}", outcome.stdout)))?;
    prop_assert!(printed["cniVersion"].is_string(), "{}", printed);
    if outcome.exit_code == 1 {
        let code = printed["code"].as_u64().unwrap_or_default();
        prop_assert!(
            [4, 6, 7, 11, 50, 100, 1].contains(&code),
            "unexpected code {} in {}",
            code,
            printed
        );
        prop_assert!(!printed["msg"].as_str().unwrap_or_default().is_empty());
    }
    Ok(())
}

fn sandbox_env() -> Env {
    Env {
        command: None,
        container_id: Some("proptest".to_owned()),
        netns: Some("/nonexistent/netns".to_owned()),
        ifname: Some("eth0".to_owned()),
        args: None,
        path: None,
    }
}

fn cni_command() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        Just("ADD".to_owned()),
        Just("DEL".to_owned()),
        Just("CHECK".to_owned()),
        Just("GC".to_owned()),
        Just("STATUS".to_owned()),
        Just("VERSION".to_owned()),
        token(),
    ])
}

/// Network configs that are plausible in shape and wrong in any field:
/// always with `pinDir` at a missing directory.
fn net_conf() -> impl Strategy<Value = Value> {
    let version = prop_oneof![
        Just(json!("1.1.0")),
        Just(json!("1.0.0")),
        Just(json!("0.4.0")),
        Just(json!("0.3.1")),
        token().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
    ];
    let text = prop_oneof![Just(json!("pod-net")), Just(json!("")), json_leaf()];
    let attachments = prop::collection::vec(
        (json_leaf(), json_leaf())
            .prop_map(|(id, ifname)| json!({"containerID": id, "ifname": ifname})),
        0..3,
    );
    (
        version,
        text.clone(),
        text,
        prev_result(),
        attachments,
        any::<bool>(),
        json_leaf(),
    )
        .prop_map(|(version, name, kind, prev, attachments, bypass, extra)| {
            json!({
                "cniVersion": version,
                "name": name,
                "type": kind,
                "pinDir": MISSING_PIN_DIR,
                "noBypass": if bypass { json!(true) } else { extra.clone() },
                "prevResult": prev,
                "cni.dev/valid-attachments": attachments,
                "unknownKey": extra,
            })
        })
}

fn prev_result() -> impl Strategy<Value = Value> {
    let interface = (token(), prop::option::of(token()))
        .prop_map(|(name, sandbox)| json!({"name": name, "sandbox": sandbox}));
    let ip = (
        token(),
        prop_oneof![any::<i64>().prop_map(Value::from), json_leaf()],
    )
        .prop_map(|(address, interface)| json!({"address": address, "interface": interface}));
    prop_oneof![
        json_leaf(),
        (
            prop::collection::vec(interface, 0..3),
            prop::collection::vec(ip, 0..3)
        )
            .prop_map(|(interfaces, ips)| json!({"interfaces": interfaces, "ips": ips})),
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        token().prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
    ]
}

/// Command-line words: real subcommands and flags mixed with values that
/// are right, nearly right and wrong.
fn cli_word() -> impl Strategy<Value = String> {
    const WORDS: &[&str] = &[
        "load",
        "unload",
        "status",
        "pod",
        "node",
        "stats",
        "monitor",
        "apply",
        "agent",
        "add",
        "del",
        "list",
        "--json",
        "--ip",
        "--veth",
        "--mac",
        "--id",
        "--no-bypass",
        "--cidr",
        "--node-ip",
        "--vtep-mac",
        "--pin-dir",
        "--max-pods",
        "--underlay",
        "--vni",
        "--vxlan-port",
        "--xdp",
        "--no-xdp",
        "--anti-spoofing",
        "--nat-check",
        "on",
        "off",
        "--prometheus",
        "--watch",
        "--count",
        "--all",
        "--rate",
        "-f",
        "--file",
        "--dry-run",
        "--config",
        "--metrics-addr",
        "10.244.1.2",
        "10.244.2.0/24",
        "02:42:0a:f4:01:02",
        "192.168.100.2",
        "127.0.0.1:9565",
        "-1",
        "4294967296",
        "65536",
        "",
    ];
    prop_oneof![
        4 => prop::sample::select(WORDS).prop_map(str::to_owned),
        1 => token(),
    ]
}

/// Node config files: TOML and JSON built from the real keys with values
/// of any type, plus arbitrary text.
fn apply_text() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        token().prop_map(|text| format!("{text:?}")),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("\"10.244.1.2\"".to_owned()),
        Just("\"10.244.2.0/24\"".to_owned()),
        Just("\"02:42:0a:f4:01:02\"".to_owned()),
        Just("\"192.168.100.2\"".to_owned()),
    ];
    let key = prop::sample::select(
        &[
            "ip",
            "veth",
            "mac",
            "no_bypass",
            "cidr",
            "node_ip",
            "vtep_mac",
            "unknown",
        ][..],
    );
    let table = prop::sample::select(&["[[pods]]", "[[nodes]]", "[pods]", "[other]", ""][..]);
    let toml = prop::collection::vec(
        (
            table,
            prop::collection::vec((key.clone(), value.clone()), 0..4),
        ),
        0..4,
    )
    .prop_map(|tables| {
        let mut lines = Vec::new();
        for (header, fields) in tables {
            lines.push(header.to_owned());
            lines.extend(fields.iter().map(|(key, value)| format!("{key} = {value}")));
        }
        lines.join("\n")
    });
    let json = prop::collection::vec((key, value), 0..4).prop_map(|fields| {
        let body: Vec<String> = fields
            .into_iter()
            .map(|(k, v)| format!("{k:?}: {v}"))
            .collect();
        format!("{{\"pods\": [{{{}}}], \"nodes\": []}}", body.join(", "))
    });
    prop_oneof![toml, json, any::<String>()]
}

#[test]
fn cli_definition_is_consistent() {
    Cli::command().debug_assert();
}
