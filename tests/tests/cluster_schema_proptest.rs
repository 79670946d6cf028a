//! Property tests for what the agent reads from etcd: `<prefix>/config`,
//! lease keys and lease values, in flannel's schema. Whatever is stored,
//! parsing returns a value or an error naming the key, never panics; a
//! parsed config allocates only subnets inside its pool; a lease this node
//! writes parses back to itself.
use std::net::Ipv4Addr;

use pod_net::{
    agent::cluster::flannel::{LeaseAttrs, NetworkConfig, Peer, Subnet},
    mac::MacAddr,
};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Values near the real ones and garbage.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,4}(\\.[0-9]{1,4}){0,4}(/[0-9]{1,3})?",
        "[0-9a-f]{0,3}(:[0-9a-f]{0,3}){0,7}",
        Just("vxlan".to_owned()),
        Just("host-gw".to_owned()),
        any::<String>(),
    ]
}

/// A JSON value of some type for a field.
fn json_value() -> impl Strategy<Value = String> {
    prop_oneof![
        token().prop_map(|text| serde_json::to_string(&text).unwrap_or_default()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("null".to_owned()),
        Just("{}".to_owned()),
        Just("[]".to_owned()),
        Just("true".to_owned()),
    ]
}

/// JSON objects built from the schema's real keys (and a stray one), plus
/// arbitrary text.
fn document(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    let field = (prop::sample::select(keys), json_value());
    let object = prop::collection::vec(field, 0..6).prop_map(|fields| {
        let body: Vec<String> = fields
            .iter()
            .map(|(key, value)| format!("{key:?}:{value}"))
            .collect();
        format!("{{{}}}", body.join(","))
    });
    let backend = (json_value(), json_value(), json_value()).prop_map(|(kind, vni, port)| {
        format!(
            r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":{kind},"VNI":{vni},"Port":{port}}}}}"#
        )
    });
    prop_oneof![4 => object, 2 => backend, 1 => any::<String>()]
}

const CONFIG_KEYS: &[&str] = &[
    "Network",
    "SubnetLen",
    "SubnetMin",
    "SubnetMax",
    "Backend",
    "EnableIPv6",
    "Other",
];
const LEASE_KEYS: &[&str] = &[
    "PublicIP",
    "PublicIPv6",
    "BackendType",
    "BackendData",
    "Other",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn configs_parse_or_fail_without_panicking(text in document(CONFIG_KEYS)) {
        let key = "/coreos.com/network/config";
        match NetworkConfig::parse(key, text.as_bytes()) {
            Ok(config) => {
                // Whatever parsed hands out only subnets of its pool.
                let first = Subnet { ip: config.subnet_min, len: config.subnet_len };
                prop_assert!(config.fits(first), "{first} outside {config:?}");
                if let Some(subnet) = config.allocate(&[]) {
                    prop_assert!(config.fits(subnet), "{subnet} outside {config:?}");
                }
            }
            Err(err) => prop_assert!(err.to_string().starts_with(key), "{err}"),
        }
    }

    #[test]
    fn lease_values_and_keys_parse_or_fail_without_panicking(
        text in document(LEASE_KEYS),
        name in prop_oneof![token(), Just("10.244.7.0-24".to_owned())],
        vni in 0u32..4,
    ) {
        let key = format!("/coreos.com/network/subnets/{name}");
        if let Err(err) = Peer::parse(&key, text.as_bytes(), vni) {
            prop_assert!(err.to_string().starts_with(&key), "{err}");
        }
        if let Some(subnet) = Subnet::from_key(&key) {
            // A key that parses is the key of what it parsed to.
            prop_assert!(key.ends_with(&subnet.key_name()) || key.contains('&'));
        }
    }

    #[test]
    fn our_own_lease_parses_back(
        octets in any::<[u8; 4]>(),
        third in any::<u8>(),
        mac in any::<[u8; 6]>(),
        vni in 1u32..(1 << 24),
    ) {
        let subnet = Subnet { ip: Ipv4Addr::new(10, 244, third, 0), len: 24 };
        let public_ip = Ipv4Addr::from(octets);
        let attrs = LeaseAttrs::vxlan(public_ip, vni, MacAddr(mac));
        let key = format!("/p/subnets/{}", subnet.key_name());
        let peer = Peer::parse(&key, attrs.to_json().as_bytes(), vni).unwrap();
        prop_assert_eq!(peer.subnet, subnet);
        prop_assert_eq!(peer.public_ip, public_ip);
        prop_assert_eq!(peer.vtep_mac, MacAddr(mac));
    }
}
