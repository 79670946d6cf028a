//! flannel's Kubernetes schema (`pkg/subnet/kube`): a node's subnet is its
//! `spec.podCIDR(s)`, assigned by kube-controller-manager, and its VXLAN
//! endpoint is in annotations under `flannel.alpha.coreos.com/`. Only a
//! node whose `kube-subnet-manager` annotation is `"true"` is a lease;
//! the others (still joining, or not flannel's) are not looked at.
//!
//! A Node is read into a [`NodeRecord`]: its podCIDRs and flannel's
//! annotations, nothing else, so a Node costs what a lease costs whatever
//! else it carries. The record is the store's value for `nodes/<name>`.
use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::{Deserialize, Deserializer, Serialize};

use crate::{
    agent::cluster::flannel::{LeaseAttrs, LeaseKey, Peer, SchemaError, Subnet},
    cidr::Cidr,
};

/// flanneld's default `--kube-annotation-prefix`.
pub const ANNOTATION_PREFIX: &str = "flannel.alpha.coreos.com";
pub const BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
pub const BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
pub const PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
pub const SUBNET_KUBE_MANAGED: &str = "flannel.alpha.coreos.com/kube-subnet-manager";
pub const BACKEND_V6_DATA: &str = "flannel.alpha.coreos.com/backend-v6-data";
pub const PUBLIC_IPV6: &str = "flannel.alpha.coreos.com/public-ipv6";
/// Set by the operator: the address other nodes must use for this one.
pub const PUBLIC_IP_OVERWRITE: &str = "flannel.alpha.coreos.com/public-ip-overwrite";

/// The annotations a node's lease is made of: what the agent publishes,
/// and removes when it leaves (pod-net's underlay is IPv4, so it never
/// publishes the IPv6 pair, and clears a stale one).
pub const LEASE_ANNOTATIONS: [&str; 6] = [
    BACKEND_TYPE,
    BACKEND_DATA,
    PUBLIC_IP,
    SUBNET_KUBE_MANAGED,
    BACKEND_V6_DATA,
    PUBLIC_IPV6,
];

/// The store key of a Node.
#[must_use]
pub fn node_key(name: &str) -> String {
    format!("nodes/{name}")
}

/// A Node as the API server sends it, read for what pod-net needs only.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct NodeObject {
    pub metadata: NodeMeta,
    #[serde(default)]
    pub spec: NodePodCidrs,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub resource_version: String,
    #[serde(default)]
    pub creation_timestamp: Option<String>,
    /// flannel's annotations; every other one is dropped while reading.
    #[serde(default, deserialize_with = "flannel_annotations")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct NodePodCidrs {
    #[serde(default, rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    #[serde(default, rename = "podCIDRs")]
    pub pod_cidrs: Vec<String>,
}

/// Keeps the lease annotations and the public-IP overwrite of a Node's
/// annotations, reading past the rest without keeping it.
fn flannel_annotations<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = BTreeMap<String, String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of annotations")
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut kept = BTreeMap::new();
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if LEASE_ANNOTATIONS.contains(&key.as_ref()) || key == PUBLIC_IP_OVERWRITE {
                    kept.insert(key.into_owned(), map.next_value::<String>()?);
                } else {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(kept)
        }
    }
    deserializer.deserialize_any(Visitor)
}

impl NodeObject {
    /// `spec.podCIDRs`, or the older `spec.podCIDR` alone.
    #[must_use]
    pub fn pod_cidrs(&self) -> Vec<String> {
        if self.spec.pod_cidrs.is_empty() {
            self.spec.pod_cidr.iter().cloned().collect()
        } else {
            self.spec.pod_cidrs.clone()
        }
    }

    /// What the store keeps of this Node.
    #[must_use]
    pub fn record(&self) -> NodeRecord {
        NodeRecord {
            pod_cidrs: self.pod_cidrs(),
            annotations: self
                .metadata
                .annotations
                .iter()
                .filter(|(key, _)| LEASE_ANNOTATIONS.contains(&key.as_str()))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        }
    }

    /// The operator's `public-ip-overwrite`, when it is an IPv4 address.
    #[must_use]
    pub fn public_ip_overwrite(&self) -> Option<Result<Ipv4Addr, String>> {
        self.metadata
            .annotations
            .get(PUBLIC_IP_OVERWRITE)
            .filter(|value| !value.is_empty())
            .map(|value| {
                value
                    .parse()
                    .map_err(|_| format!("{PUBLIC_IP_OVERWRITE} {value:?} is not an IPv4 address"))
            })
    }
}

/// A Node's lease as the store hands it over: its podCIDRs and lease
/// annotations. Serialized canonically (sorted), so two reads of one
/// version are the same bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<String>,
    pub annotations: BTreeMap<String, String>,
}

impl NodeRecord {
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// What a node on `pod_cidrs` publishes, as flanneld writes it.
    #[must_use]
    pub fn published(pod_cidrs: Vec<String>, attrs: &LeaseAttrs) -> Self {
        let backend_data = attrs
            .backend_data
            .as_ref()
            .and_then(|data| serde_json::to_string(data).ok())
            .unwrap_or_default();
        let annotations = [
            (BACKEND_TYPE, attrs.backend_type.clone()),
            (BACKEND_DATA, backend_data),
            (PUBLIC_IP, attrs.public_ip.to_string()),
            (SUBNET_KUBE_MANAGED, "true".to_owned()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
        Self {
            pod_cidrs,
            annotations,
        }
    }

    /// The IPv4 and IPv6 subnets among the podCIDRs.
    pub fn subnets(&self, key: &str) -> Result<LeaseKey, SchemaError> {
        let invalid = |reason: String| SchemaError::Invalid {
            key: key.to_owned(),
            reason,
        };
        let mut subnet = None;
        let mut ipv6 = None;
        for cidr in &self.pod_cidrs {
            if let Ok(v4) = cidr.parse::<Subnet>() {
                subnet.get_or_insert(v4);
            } else {
                // Not an IPv4 subnet: an IPv6 one, or what is wrong.
                let parsed: Cidr = cidr
                    .parse()
                    .map_err(|err| invalid(format!("podCIDR {cidr:?}: {err}")))?;
                ipv6.get_or_insert(parsed);
            }
        }
        let subnet = subnet.ok_or_else(|| invalid("no IPv4 podCIDR".into()))?;
        Ok(LeaseKey { subnet, ipv6 })
    }

    /// The peer this Node is, or `None` when it is not a lease (not
    /// managed by a flannel-schema agent yet). A lease that is not one
    /// pod-net can use is an error.
    pub fn peer(&self, key: &str, vni: u32) -> Result<Option<Peer>, SchemaError> {
        if self
            .annotations
            .get(SUBNET_KUBE_MANAGED)
            .map(String::as_str)
            != Some("true")
        {
            return Ok(None);
        }
        let invalid = |reason: String| SchemaError::Invalid {
            key: key.to_owned(),
            reason,
        };
        let lease_key = self.subnets(key)?;
        let text = |name: &str| self.annotations.get(name).cloned().unwrap_or_default();
        let public_ip = text(PUBLIC_IP);
        let public_ip: Ipv4Addr = public_ip
            .parse()
            .map_err(|_| invalid(format!("{PUBLIC_IP} {public_ip:?} is not an IPv4 address")))?;
        let backend_type = text(BACKEND_TYPE);
        let backend_data = if backend_type == crate::agent::cluster::flannel::VXLAN {
            let data = text(BACKEND_DATA);
            Some(
                serde_json::from_str(&data).map_err(|err| SchemaError::Json {
                    key: key.to_owned(),
                    reason: format!("{BACKEND_DATA}: {err}"),
                })?,
            )
        } else {
            None
        };
        let attrs = LeaseAttrs {
            public_ip,
            backend_type,
            backend_data,
        };
        Peer::from_attrs(key, lease_key, attrs, vni).map(Some)
    }

    /// The merge patch that makes a Node's lease annotations this record's
    /// (and removes the ones it lacks).
    #[must_use]
    pub fn annotations_patch(&self) -> serde_json::Map<String, serde_json::Value> {
        LEASE_ANNOTATIONS
            .iter()
            .map(|name| {
                let value = self
                    .annotations
                    .get(*name)
                    .map_or(serde_json::Value::Null, |value| value.clone().into());
                ((*name).to_owned(), value)
            })
            .collect()
    }
}

/// Seconds since the epoch of an RFC 3339 `creationTimestamp`
/// (`2026-12-06T05:00:00Z`); 0 when absent or malformed (such a node sorts
/// first, and keys break the tie).
#[must_use]
pub fn created_seconds(timestamp: Option<&str>) -> i64 {
    timestamp
        .and_then(|text| {
            let (date, time) = text.trim_end_matches('Z').split_once('T')?;
            let mut date = date.splitn(3, '-').map(str::parse::<i64>);
            let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
            let mut time = time.splitn(3, ':').map(|part| part.parse::<f64>().ok());
            let (hour, minute, second) = (time.next()??, time.next()??, time.next()??);
            // Days from the civil date (Howard Hinnant's algorithm).
            let year = if month <= 2 { year - 1 } else { year };
            let era = year.div_euclid(400);
            let year_of_era = year - era * 400;
            let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
            let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
            let days = era * 146_097 + day_of_era - 719_468;
            #[allow(clippy::cast_possible_truncation)]
            Some(days * 86_400 + (hour * 3600.0 + minute * 60.0 + second) as i64)
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mac::MacAddr;

    const VNI: u32 = 1;

    fn node(json: &str) -> NodeObject {
        serde_json::from_str(json).expect("a Node")
    }

    fn managed(pod_cidrs: &[&str], extra: &[(&str, &str)]) -> NodeRecord {
        let mut annotations: BTreeMap<String, String> = [
            (BACKEND_TYPE, "vxlan"),
            (BACKEND_DATA, r#"{"VNI":1,"VtepMAC":"0a:58:0a:f4:02:00"}"#),
            (PUBLIC_IP, "192.168.100.2"),
            (SUBNET_KUBE_MANAGED, "true"),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
        for (key, value) in extra {
            annotations.insert((*key).to_owned(), (*value).to_owned());
        }
        NodeRecord {
            pod_cidrs: pod_cidrs.iter().map(|cidr| (*cidr).to_owned()).collect(),
            annotations,
        }
    }

    #[test]
    fn a_node_is_read_for_its_pod_cidrs_and_flannels_annotations_only() {
        let object = node(
            r#"{"metadata":{"name":"n2","resourceVersion":"812",
                "creationTimestamp":"2026-12-06T05:00:00Z",
                "annotations":{"flannel.alpha.coreos.com/public-ip":"192.168.100.2",
                  "flannel.alpha.coreos.com/public-ip-overwrite":"203.0.113.9",
                  "flannel.alpha.coreos.com/other":"x",
                  "node.alpha.kubernetes.io/ttl":"0","big":{"not":"a string"}},
                "managedFields":[{"manager":"kubelet"}]},
              "spec":{"podCIDR":"10.244.2.0/24","podCIDRs":["10.244.2.0/24","fd00:10:244:2::/64"]},
              "status":{"images":[{"names":["busybox"]}]}}"#,
        );
        assert_eq!(object.metadata.name, "n2");
        assert_eq!(object.metadata.resource_version, "812");
        assert_eq!(
            object.metadata.annotations.keys().collect::<Vec<_>>(),
            [PUBLIC_IP, PUBLIC_IP_OVERWRITE]
        );
        assert_eq!(
            object.public_ip_overwrite(),
            Some(Ok("203.0.113.9".parse().unwrap()))
        );
        // The record keeps the lease annotations, not the overwrite.
        assert_eq!(
            String::from_utf8(object.record().to_bytes()).unwrap(),
            r#"{"podCIDRs":["10.244.2.0/24","fd00:10:244:2::/64"],"annotations":{"flannel.alpha.coreos.com/public-ip":"192.168.100.2"}}"#
        );
        // The older single field, and no annotations at all.
        let old = node(r#"{"metadata":{"name":"n3"},"spec":{"podCIDR":"10.244.3.0/24"}}"#);
        assert_eq!(old.pod_cidrs(), ["10.244.3.0/24"]);
        assert!(old.metadata.annotations.is_empty());
        let bare = node(r#"{"metadata":{"name":"n4","annotations":null}}"#);
        assert!(bare.pod_cidrs().is_empty());
    }

    #[test]
    fn what_a_node_publishes_is_what_flanneld_writes() {
        let attrs = LeaseAttrs::vxlan(
            "192.168.100.1".parse().unwrap(),
            1,
            MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x00]),
        );
        let record = NodeRecord::published(vec!["10.244.1.0/24".into()], &attrs);
        assert_eq!(
            serde_json::Value::Object(record.annotations_patch()).to_string(),
            concat!(
                r#"{"flannel.alpha.coreos.com/backend-data":"{\"VNI\":1,\"VtepMAC\":\"0a:58:0a:f4:01:00\"}","#,
                r#""flannel.alpha.coreos.com/backend-type":"vxlan","#,
                r#""flannel.alpha.coreos.com/backend-v6-data":null,"#,
                r#""flannel.alpha.coreos.com/kube-subnet-manager":"true","#,
                r#""flannel.alpha.coreos.com/public-ip":"192.168.100.1","#,
                r#""flannel.alpha.coreos.com/public-ipv6":null}"#
            )
        );
        // Read back, it is the peer it describes.
        let peer = record.peer("nodes/n1", VNI).unwrap().unwrap();
        assert_eq!(peer.subnet.to_string(), "10.244.1.0/24");
        assert_eq!(peer.public_ip.to_string(), "192.168.100.1");
        assert_eq!(peer.vtep_mac.to_string(), "0a:58:0a:f4:01:00");
    }

    #[test]
    fn annotations_are_judged_as_flannel_reads_them() {
        let key = "nodes/n2";
        let good = managed(&["10.244.2.0/24", "fd00:10:244:2::/64"], &[]);
        let peer = good.peer(key, VNI).unwrap().unwrap();
        assert_eq!(peer.subnet.to_string(), "10.244.2.0/24");
        assert_eq!(
            peer.ipv6_subnet.map(|cidr| cidr.to_string()).as_deref(),
            Some("fd00:10:244:2::/64")
        );
        // IPv6 first is fine: the IPv4 one is the lease.
        let v6_first = managed(&["fd00:10:244:2::/64", "10.244.2.0/24"], &[]);
        assert_eq!(
            v6_first.peer(key, VNI).unwrap().unwrap().subnet.to_string(),
            "10.244.2.0/24"
        );

        // Not managed (yet): not a lease, not an error.
        let mut unmanaged = good.clone();
        unmanaged.annotations.remove(SUBNET_KUBE_MANAGED);
        assert_eq!(unmanaged.peer(key, VNI), Ok(None));
        let mut not_true = good.clone();
        not_true
            .annotations
            .insert(SUBNET_KUBE_MANAGED.into(), "yes".into());
        assert_eq!(not_true.peer(key, VNI), Ok(None));

        let refused = |record: NodeRecord| record.peer(key, VNI).expect_err("refused").to_string();
        assert_eq!(refused(managed(&[], &[])), "nodes/n2: no IPv4 podCIDR");
        assert_eq!(
            refused(managed(&["10.244.2.1/24"], &[])),
            r#"nodes/n2: podCIDR "10.244.2.1/24": invalid CIDR "10.244.2.1/24": host bits are set (did you mean 10.244.2.0/24?)"#
        );
        assert_eq!(
            refused(managed(&["banana"], &[])),
            r#"nodes/n2: podCIDR "banana": invalid CIDR "banana": expected ADDRESS/PREFIX like 10.244.2.0/24"#
        );
        assert_eq!(
            refused(managed(&["10.244.2.0/24"], &[(PUBLIC_IP, "10.0.0.1.5")])),
            r#"nodes/n2: flannel.alpha.coreos.com/public-ip "10.0.0.1.5" is not an IPv4 address"#
        );
        assert_eq!(
            refused(managed(&["10.244.2.0/24"], &[(BACKEND_TYPE, "host-gw")])),
            r#"nodes/n2: backend type "host-gw", not vxlan"#
        );
        assert_eq!(
            refused(managed(&["10.244.2.0/24"], &[(BACKEND_DATA, "{\"VNI\":")])),
            "nodes/n2: not JSON in flannel's schema: flannel.alpha.coreos.com/backend-data: \
             EOF while parsing a value at line 1 column 7"
        );
        assert_eq!(
            refused(managed(
                &["10.244.2.0/24"],
                &[(BACKEND_DATA, r#"{"VNI":2,"VtepMAC":"0a:58:0a:f4:02:00"}"#)]
            )),
            "nodes/n2: VNI 2 is not the network's 1"
        );
        assert_eq!(
            refused(managed(
                &["10.244.2.0/24"],
                &[(BACKEND_DATA, r#"{"VNI":1,"VtepMAC":"zz"}"#)]
            )),
            r#"nodes/n2: VtepMAC: invalid MAC address "zz": expected six hex octets like 02:42:0a:f4:01:02"#
        );
    }

    #[test]
    fn creation_timestamps_order_nodes() {
        assert_eq!(created_seconds(Some("1970-01-01T00:00:00Z")), 0);
        assert_eq!(created_seconds(Some("2026-12-06T05:00:00Z")), 1_796_533_200);
        assert_eq!(created_seconds(Some("2000-03-01T00:00:01Z")), 951_868_801);
        assert_eq!(created_seconds(Some("yesterday")), 0);
        assert_eq!(created_seconds(None), 0);
    }
}
