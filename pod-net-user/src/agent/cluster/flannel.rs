//! flannel's etcd schema, so pod-net and flannel nodes share one store:
//! `<prefix>/config` holds the network, `<prefix>/subnets/10.244.7.0-24`
//! one node's lease. Parsing, defaults and subnet allocation follow
//! flannel's `pkg/subnet` (`CheckNetworkConfig`, `allocateSubnet`).
use std::{
    fmt,
    hash::{BuildHasher as _, Hasher as _},
    net::Ipv4Addr,
    str::FromStr,
};

use pod_net_common::config::{DEFAULT_VNI, DEFAULT_VXLAN_PORT, MAX_VNI};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{cidr::Cidr, mac::MacAddr};

/// The only backend pod-net speaks.
pub const VXLAN: &str = "vxlan";
/// flannel looks at no more than this many free subnets, then picks one
/// at random: racing nodes rarely want the same one.
const CANDIDATES: usize = 100;

/// A record in the store that is not what the schema says.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SchemaError {
    #[error("{key}: not JSON in flannel's schema: {reason}")]
    Json { key: String, reason: String },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("{key}: backend type {found:?}, not vxlan")]
    ForeignBackend { key: String, found: String },
    #[error("{key}: not a subnet key (expected <prefix>/subnets/A.B.C.D-LEN[&IPV6-LEN])")]
    Key { key: String },
}

/// An IPv4 subnet as flannel keys it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet {
    pub ip: Ipv4Addr,
    pub len: u8,
}

impl Subnet {
    fn size(self) -> u32 {
        1u32.checked_shl(32 - u32::from(self.len)).unwrap_or(0)
    }

    fn mask(len: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
    }

    fn last(self) -> u32 {
        u32::from(self.ip) | !Self::mask(self.len)
    }

    #[must_use]
    pub fn overlaps(self, other: Self) -> bool {
        u32::from(self.ip) <= other.last() && u32::from(other.ip) <= self.last()
    }

    #[must_use]
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.len) == u32::from(self.ip)
    }

    /// The first address, the bridge's gateway: `10.244.7.1`.
    #[must_use]
    pub fn gateway(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.ip) + 1)
    }

    /// The key's last part: `10.244.7.0-24`.
    #[must_use]
    pub fn key_name(self) -> String {
        format!("{}-{}", self.ip, self.len)
    }

    /// The subnet in a key ending in `A.B.C.D-LEN` (or in flannel's
    /// dual-stack form, see [`LeaseKey`]).
    #[must_use]
    pub fn from_key(key: &str) -> Option<Self> {
        LeaseKey::parse(key).map(|key| key.subnet)
    }

    fn parse_name(name: &str) -> Option<Self> {
        let (ip, len) = name.split_once('-')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let len: u8 = len.parse().ok().filter(|len| (1..=32).contains(len))?;
        (u32::from(ip) & Self::mask(len) == u32::from(ip)).then_some(Self { ip, len })
    }

    #[must_use]
    pub fn cidr(self) -> Cidr {
        Cidr {
            addr: self.ip.into(),
            prefix_len: self.len,
        }
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.len)
    }
}

impl FromStr for Subnet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (ip, len) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not A.B.C.D/LEN"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|len| *len <= 32)
            .ok_or_else(|| format!("{len:?} is not a prefix length"))?;
        if u32::from(ip) & Self::mask(len) != u32::from(ip) {
            return Err(format!("{text:?} has host bits set"));
        }
        Ok(Self { ip, len })
    }
}

/// A lease's key: `<prefix>/subnets/10.244.7.0-24`, or flannel's
/// dual-stack form `10.244.7.0-24&fd00:10:244:7::-64`, where the IPv4
/// subnet is the lease and the IPv6 one goes with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseKey {
    pub subnet: Subnet,
    pub ipv6: Option<Cidr>,
}

impl LeaseKey {
    /// The subnets in `key`, when both parts are well formed: a network
    /// address (no host bits) with its length.
    #[must_use]
    pub fn parse(key: &str) -> Option<Self> {
        let name = key.rsplit('/').next()?;
        let (v4, v6) = match name.split_once('&') {
            Some((v4, v6)) => (v4, Some(v6)),
            None => (name, None),
        };
        let subnet = Subnet::parse_name(v4)?;
        let ipv6 = match v6 {
            None => None,
            Some(v6) => Some(Self::parse_ipv6(v6)?),
        };
        Some(Self { subnet, ipv6 })
    }

    fn parse_ipv6(name: &str) -> Option<Cidr> {
        let (ip, len) = name.rsplit_once('-')?;
        let ip: std::net::Ipv6Addr = ip.parse().ok()?;
        let len: u8 = len.parse().ok().filter(|len| (1..=128).contains(len))?;
        let cidr = Cidr::masked(ip.into(), len);
        (cidr.addr == std::net::IpAddr::V6(ip)).then_some(cidr)
    }
}

/// `<prefix>/config` as flannel writes it. Unknown fields (IPv6, nftables)
/// are allowed and ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    network: String,
    #[serde(default)]
    subnet_len: Option<u8>,
    #[serde(default)]
    subnet_min: Option<Ipv4Addr>,
    #[serde(default)]
    subnet_max: Option<Ipv4Addr>,
    #[serde(default)]
    backend: Option<RawBackend>,
}

/// flannel decodes the backend with Go's case-insensitive field match:
/// `VNI` and `vni` are the same field.
#[derive(Debug, Deserialize)]
struct RawBackend {
    #[serde(rename = "Type", alias = "type")]
    kind: Option<String>,
    #[serde(rename = "VNI", alias = "vni", alias = "Vni")]
    vni: Option<u32>,
    #[serde(rename = "Port", alias = "port")]
    port: Option<u16>,
    #[serde(
        rename = "DirectRouting",
        alias = "directRouting",
        alias = "directrouting"
    )]
    direct_routing: Option<bool>,
}

/// The network, with flannel's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    pub network: Subnet,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
    pub vni: u32,
    pub port: u16,
    /// `Backend.DirectRouting`: peers on one of this node's underlay
    /// subnets are routed to directly, the others over VXLAN.
    pub direct_routing: bool,
}

impl NetworkConfig {
    /// Parses `<prefix>/config` (stored under `key`) the way flannel's
    /// `ParseConfig` and `CheckNetworkConfig` do.
    pub fn parse(key: &str, value: &[u8]) -> Result<Self, SchemaError> {
        let invalid = |reason: String| SchemaError::Invalid {
            key: key.to_owned(),
            reason,
        };
        let raw: RawConfig = serde_json::from_slice(value).map_err(|err| SchemaError::Json {
            key: key.to_owned(),
            reason: err.to_string(),
        })?;
        let network: Subnet = raw
            .network
            .parse()
            .map_err(|reason| invalid(format!("Network: {reason}")))?;
        let subnet_len = match raw.subnet_len {
            Some(len) if len > 30 => return Err(invalid("SubnetLen must be at most 30".into())),
            Some(len) if len < network.len + 2 => {
                return Err(invalid(
                    "Network must hold at least four subnets of SubnetLen".into(),
                ));
            }
            Some(len) => len,
            None if network.len > 28 => {
                return Err(invalid("Network is too small: at most /28".into()));
            }
            None if network.len <= 22 => 24,
            None => network.len + 2,
        };
        let size = Subnet {
            ip: network.ip,
            len: subnet_len,
        }
        .size();
        let bound = |given: Option<Ipv4Addr>, default: u32, name: &str| match given {
            None => Ok(Ipv4Addr::from(default)),
            Some(ip) if !network.contains(ip) => {
                Err(invalid(format!("{name} {ip} is not in Network {network}")))
            }
            Some(ip) if u32::from(ip) & Subnet::mask(subnet_len) != u32::from(ip) => Err(invalid(
                format!("{name} {ip} is not on a /{subnet_len} boundary"),
            )),
            Some(ip) => Ok(ip),
        };
        let subnet_min = bound(raw.subnet_min, u32::from(network.ip) + size, "SubnetMin")?;
        let subnet_max = bound(raw.subnet_max, network.last() + 1 - size, "SubnetMax")?;
        if subnet_min > subnet_max {
            return Err(invalid(format!(
                "SubnetMin {subnet_min} is above SubnetMax {subnet_max}"
            )));
        }
        // flannel's default backend (no Backend at all) is udp.
        let backend = raw.backend.unwrap_or(RawBackend {
            kind: Some("udp".into()),
            vni: None,
            port: None,
            direct_routing: None,
        });
        let kind = backend.kind.unwrap_or_default();
        if kind != VXLAN {
            return Err(SchemaError::ForeignBackend {
                key: key.to_owned(),
                found: kind,
            });
        }
        let vni = backend.vni.unwrap_or(DEFAULT_VNI);
        if vni == 0 || vni > MAX_VNI {
            return Err(invalid(format!("VNI {vni} is not 1..={MAX_VNI}")));
        }
        Ok(Self {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            vni,
            // Port 0 is the kernel's default, which is flannel's 8472.
            port: backend
                .port
                .filter(|port| *port != 0)
                .unwrap_or(DEFAULT_VXLAN_PORT),
            direct_routing: backend.direct_routing.unwrap_or(false),
        })
    }

    /// Whether `subnet` is one this network can hold: inside `Network`,
    /// of `SubnetLen` (flannel's rule for a lease; reservations may lie
    /// outside `SubnetMin..=SubnetMax`).
    #[must_use]
    pub fn holds(&self, subnet: Subnet) -> bool {
        subnet.len == self.subnet_len && self.network.contains(subnet.ip)
    }

    /// Whether `subnet` is one this network hands out.
    #[must_use]
    pub fn fits(&self, subnet: Subnet) -> bool {
        subnet.len == self.subnet_len
            && u32::from(subnet.ip) >= u32::from(self.subnet_min)
            && u32::from(subnet.ip) <= u32::from(self.subnet_max)
    }

    /// A free subnet in [`SubnetMin`, `SubnetMax`]: one of the first 100 free
    /// ones, at random, as flannel picks. `None` when the pool is full.
    #[must_use]
    pub fn allocate(&self, taken: &[Subnet]) -> Option<Subnet> {
        let step = Subnet {
            ip: self.subnet_min,
            len: self.subnet_len,
        }
        .size();
        let free: Vec<Subnet> = (u32::from(self.subnet_min)..=u32::from(self.subnet_max))
            .step_by(usize::try_from(step).ok()?)
            .map(|ip| Subnet {
                ip: Ipv4Addr::from(ip),
                len: self.subnet_len,
            })
            .filter(|candidate| !taken.iter().any(|lease| lease.overlaps(*candidate)))
            .take(CANDIDATES)
            .collect();
        if free.is_empty() {
            return None;
        }
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let index = usize::try_from(random % free.len() as u64).ok()?;
        free.get(index).copied()
    }
}

/// A lease's value, in flannel's exact field names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(default)]
    pub backend_type: String,
    #[serde(default)]
    pub backend_data: Option<BackendData>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendData {
    #[serde(rename = "VNI")]
    pub vni: u32,
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: String,
}

impl LeaseAttrs {
    /// What this node writes: its public IP and VTEP.
    #[must_use]
    pub fn vxlan(public_ip: Ipv4Addr, vni: u32, vtep_mac: MacAddr) -> Self {
        Self {
            public_ip,
            backend_type: VXLAN.to_owned(),
            backend_data: Some(BackendData {
                vni,
                vtep_mac: vtep_mac.to_string(),
            }),
        }
    }

    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Another node, as its lease describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub subnet: Subnet,
    /// The IPv6 subnet of a dual-stack key. pod-net's underlay is IPv4, so
    /// it is parsed and shown, not routed.
    pub ipv6_subnet: Option<Cidr>,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
}

impl Peer {
    /// The peer in the lease at `key` with `value`. A lease of another
    /// backend, or another VNI, is a node pod-net cannot reach.
    pub fn parse(key: &str, value: &[u8], vni: u32) -> Result<Self, SchemaError> {
        let lease_key = LeaseKey::parse(key).ok_or_else(|| SchemaError::Key {
            key: key.to_owned(),
        })?;
        let attrs: LeaseAttrs = serde_json::from_slice(value).map_err(|err| SchemaError::Json {
            key: key.to_owned(),
            reason: err.to_string(),
        })?;
        Self::from_attrs(key, lease_key, attrs, vni)
    }

    /// The peer a lease with `attrs` describes, on the subnets of
    /// `lease_key` (a lease in etcd, or a Node's annotations and podCIDRs).
    pub fn from_attrs(
        key: &str,
        lease_key: LeaseKey,
        attrs: LeaseAttrs,
        vni: u32,
    ) -> Result<Self, SchemaError> {
        if attrs.backend_type != VXLAN {
            return Err(SchemaError::ForeignBackend {
                key: key.to_owned(),
                found: attrs.backend_type,
            });
        }
        let invalid = |reason: String| SchemaError::Invalid {
            key: key.to_owned(),
            reason,
        };
        let data = attrs
            .backend_data
            .ok_or_else(|| invalid("no BackendData".into()))?;
        if data.vni != vni {
            return Err(invalid(format!(
                "VNI {} is not the network's {vni}",
                data.vni
            )));
        }
        let vtep_mac: MacAddr = data
            .vtep_mac
            .parse()
            .map_err(|err| invalid(format!("VtepMAC: {err}")))?;
        Ok(Self {
            subnet: lease_key.subnet,
            ipv6_subnet: lease_key.ipv6,
            public_ip: attrs.public_ip,
            vtep_mac,
        })
    }
}

/// flannel's default network, VXLAN backend: what the unit tests of the
/// files the agent writes start from.
#[cfg(test)]
pub(crate) fn example_config() -> NetworkConfig {
    NetworkConfig::parse(
        "/coreos.com/network/config",
        br#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    )
    .expect("a valid config")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Result<NetworkConfig, SchemaError> {
        NetworkConfig::parse("/coreos.com/network/config", json.as_bytes())
    }

    #[test]
    fn direct_routing_is_read_as_flannel_spells_it() {
        for json in [
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#,
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","directRouting":true}}"#,
        ] {
            assert!(config(json).unwrap().direct_routing, "{json}");
        }
        let off = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":false}}"#;
        assert!(!config(off).unwrap().direct_routing);
    }

    #[test]
    fn defaults_are_flannels() {
        let parsed = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(
            parsed,
            NetworkConfig {
                network: "10.244.0.0/16".parse().unwrap(),
                subnet_len: 24,
                subnet_min: Ipv4Addr::new(10, 244, 1, 0),
                subnet_max: Ipv4Addr::new(10, 244, 255, 0),
                vni: 1,
                port: 8472,
                direct_routing: false,
            }
        );
        // A /24 network: /26 subnets, the first skipped.
        let small =
            config(r#"{"Network":"10.9.0.0/24","Backend":{"Type":"vxlan","vni":7,"port":4789}}"#)
                .unwrap();
        assert_eq!(
            (
                small.subnet_len,
                small.subnet_min,
                small.subnet_max,
                small.vni,
                small.port
            ),
            (
                26,
                Ipv4Addr::new(10, 9, 0, 64),
                Ipv4Addr::new(10, 9, 0, 192),
                7,
                4789
            )
        );
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let key = "/coreos.com/network/config";
        assert!(matches!(config("{"), Err(SchemaError::Json { .. })));
        assert_eq!(
            config(r#"{"Network":"10.244.0.0/16"}"#),
            Err(SchemaError::ForeignBackend {
                key: key.into(),
                found: "udp".into()
            })
        );
        assert_eq!(
            config(r#"{"Network":"10.244.0.0/16","SubnetLen":17,"Backend":{"Type":"vxlan"}}"#)
                .unwrap_err()
                .to_string(),
            format!("{key}: Network must hold at least four subnets of SubnetLen")
        );
        assert_eq!(
            config(
                r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.5","Backend":{"Type":"vxlan"}}"#
            )
            .unwrap_err()
            .to_string(),
            format!("{key}: SubnetMin 10.244.1.5 is not on a /24 boundary")
        );
        assert_eq!(
            config(r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.8.0","Backend":{"Type":"vxlan"}}"#)
                .unwrap_err()
                .to_string(),
            format!("{key}: SubnetMin 10.244.9.0 is above SubnetMax 10.244.8.0")
        );
        assert_eq!(
            config(r#"{"Network":"10.244.1.0/16","Backend":{"Type":"vxlan"}}"#)
                .unwrap_err()
                .to_string(),
            format!("{key}: Network: \"10.244.1.0/16\" has host bits set")
        );
    }

    #[test]
    fn allocation_stays_in_the_pool_and_avoids_leases() {
        let parsed = config(
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.5.0","SubnetMax":"10.244.7.0","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let taken: Vec<Subnet> = ["10.244.5.0/24", "10.244.7.0/24"]
            .iter()
            .map(|text| text.parse().unwrap())
            .collect();
        for _ in 0..20 {
            assert_eq!(
                parsed.allocate(&taken),
                Some("10.244.6.0/24".parse().unwrap())
            );
        }
        let mut full = taken.clone();
        full.push("10.244.6.0/24".parse().unwrap());
        assert_eq!(parsed.allocate(&full), None);
        // A bigger reservation covering the pool also fills it.
        assert_eq!(parsed.allocate(&["10.244.4.0/22".parse().unwrap()]), None);
    }

    #[test]
    fn keys_and_leases_are_flannels() {
        let subnet: Subnet = "10.244.7.0/24".parse().unwrap();
        assert_eq!(subnet.key_name(), "10.244.7.0-24");
        assert_eq!(subnet.gateway(), Ipv4Addr::new(10, 244, 7, 1));
        assert_eq!(
            Subnet::from_key("/coreos.com/network/subnets/10.244.7.0-24"),
            Some(subnet)
        );
        assert_eq!(
            Subnet::from_key("/x/subnets/10.244.7.0-24&fd00::-64"),
            Some(subnet)
        );
        assert_eq!(Subnet::from_key("/x/subnets/10.244.7.1-24"), None);
        // The dual-stack form: both parts must be networks.
        assert_eq!(
            LeaseKey::parse("/x/subnets/10.244.7.0-24&fd00:10:244:7::-64"),
            Some(LeaseKey {
                subnet,
                ipv6: Some("fd00:10:244:7::/64".parse().unwrap()),
            })
        );
        for bad in [
            "/x/subnets/10.244.7.0-24&",
            "/x/subnets/10.244.7.0-24&fd00::1-64",
            "/x/subnets/10.244.7.0-24&fd00::-129",
            "/x/subnets/10.244.7.0-24&10.1.0.0-16",
            "/x/subnets/10.244.7.0-24&fd00::-64&fd01::-64",
        ] {
            assert_eq!(LeaseKey::parse(bad), None, "{bad}");
        }
        assert_eq!(Subnet::from_key("/x/subnets/garbage"), None);
        let mac: MacAddr = "0e:6e:c0:a8:64:01".parse().unwrap();
        let attrs = LeaseAttrs::vxlan(Ipv4Addr::new(192, 168, 100, 1), 1, mac);
        assert_eq!(
            attrs.to_json(),
            r#"{"PublicIP":"192.168.100.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:6e:c0:a8:64:01"}}"#
        );
        // What flanneld itself writes parses (PublicIPv6 null, extra fields).
        let flannel = br#"{"PublicIP":"192.168.100.4","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:fa:00:00:00:04"}}"#;
        assert_eq!(
            Peer::parse("/p/subnets/10.244.4.0-24", flannel, 1),
            Ok(Peer {
                subnet: "10.244.4.0/24".parse().unwrap(),
                ipv6_subnet: None,
                public_ip: Ipv4Addr::new(192, 168, 100, 4),
                vtep_mac: "02:fa:00:00:00:04".parse().unwrap(),
            })
        );
        assert!(matches!(
            Peer::parse("/p/subnets/10.244.4.0-24", br#"{"PublicIP":"192.168.100.4","BackendType":"host-gw"}"#, 1),
            Err(SchemaError::ForeignBackend { found, .. }) if found == "host-gw"
        ));
        assert!(matches!(
            Peer::parse("/p/subnets/10.244.4.0-24", b"not json", 1),
            Err(SchemaError::Json { .. })
        ));
    }
}
