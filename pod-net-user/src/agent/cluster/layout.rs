//! Where a cluster's records sit in its store, and what they mean: etcd
//! holds flannel's `<prefix>/config` and one lease per key under
//! `<prefix>/subnets/`; Kubernetes holds one Node per `nodes/<name>`, and
//! the network config comes from a file (`net-conf.json`).
use super::{
    flannel::{Peer, SchemaError},
    kube::node::NodeRecord,
};

#[derive(Clone, Debug)]
pub enum Layout {
    Etcd { prefix: String },
    Kube,
}

impl Layout {
    /// The store, as log lines and `status` name it.
    #[must_use]
    pub const fn store_name(&self) -> &'static str {
        match self {
            Self::Etcd { .. } => "etcd",
            Self::Kube => "kubernetes",
        }
    }

    /// The prefix listed and watched.
    #[must_use]
    pub fn watched(&self) -> String {
        match self {
            Self::Etcd { prefix } => format!("{}/", prefix.trim_end_matches('/')),
            Self::Kube => "nodes/".to_owned(),
        }
    }

    /// The network config's key, when the store holds it.
    #[must_use]
    pub fn config_key(&self) -> Option<String> {
        match self {
            Self::Etcd { prefix } => Some(config_key(prefix)),
            Self::Kube => None,
        }
    }

    /// The peer `value` (the bytes of the record at `key`) describes;
    /// `None` when the record is not a lease at all (another key under the    /// prefix, a Node no flannel-schema agent manages).
    pub fn peer(&self, key: &str, value: &[u8], vni: u32) -> Result<Option<Peer>, SchemaError> {
        match self {
            Self::Etcd { .. } if !self.may_hold_lease(key) => Ok(None),
            Self::Etcd { .. } => Peer::parse(key, value, vni).map(Some),
            Self::Kube => {
                let node: NodeRecord =
                    serde_json::from_slice(value).map_err(|err| SchemaError::Json {
                        key: key.to_owned(),
                        reason: err.to_string(),
                    })?;
                node.peer(key, vni)
            }
        }
    }
    /// Whether the record at `key` can be a lease (a value too big to
    /// read is then a lease refused, not a record ignored).
    #[must_use]
    pub fn may_hold_lease(&self, key: &str) -> bool {
        match self {
            Self::Etcd { prefix } => key.starts_with(&subnets_prefix(prefix)),
            Self::Kube => key.starts_with("nodes/"),
        }
    }
}

/// `<prefix>/config`.
#[must_use]
pub fn config_key(prefix: &str) -> String {
    format!("{}/config", prefix.trim_end_matches('/'))
}

/// `<prefix>/subnets/`.
#[must_use]
pub fn subnets_prefix(prefix: &str) -> String {
    format!("{}/subnets/", prefix.trim_end_matches('/'))
}
