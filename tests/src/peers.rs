//! The Go-built peers the tests run beside pod-net: the one home of their
//! catalog (names, versions, where `cargo xtask setup` builds them).
//!
//! Everything lives outside the work tree, under [`cache_root`]
//! (`/var/cache/pod-net`, or `$POD_NET_CACHE`):
//!
//! ```text
//! go/mod, go/cache, go/path      GOMODCACHE, GOCACHE, GOPATH of every build
//! build/<builder>-<version>/     a builder module (go.mod/go.sum from xtask/peers/<builder>/)
//! peers/<name>-<version>/<file>  a built binary, beside <file>.recipe (what it was built from)
//! ```
//!
//! Tests find a binary with [`binary`] (or [`require`], which says to run
//! setup when it is missing); setup (xtask's `peers` step) is the only
//! thing that builds them.
use std::path::PathBuf;

use anyhow::{Result, bail};

/// Kubernetes release of kube-apiserver, kube-controller-manager,
/// kube-scheduler, kubelet, kube-proxy and kubectl (module
/// `k8s.io/kubernetes`).
pub const K8S_VERSION: &str = "v1.37.2";
/// flanneld's release (module `github.com/flannel-io/flannel`).
pub const FLANNEL_VERSION: &str = "v0.28.10";
/// Release of `github.com/containernetworking/plugins` whose
/// `plugins/meta/flannel` is the flannel CNI plugin: flannel's own
/// `github.com/flannel-io/cni-plugin` is not served by the module proxy, and
/// v0.9.1 is the last containernetworking release that still had the plugin
/// (the same code flannel forked). It speaks CNI 0.1.0 to 0.4.0 only.
pub const CNI_FLANNEL_VERSION: &str = "v0.9.1";

/// Which builder module a peer is built in (`xtask/peers/<dir>/go.mod`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builder {
    /// `k8s.io/kubernetes` with its staging modules pinned by `replace`.
    Kubernetes,
    /// flannel's `main.go` copied from the module cache (its main package is
    /// the module root, not importable) minus one backend import.
    Flanneld,
    /// containernetworking/plugins' flannel meta plugin.
    CniFlannel,
}

impl Builder {
    /// Every builder, in the order setup builds them.
    pub const ALL: [Self; 3] = [Self::Kubernetes, Self::Flanneld, Self::CniFlannel];

    /// The builder's directory name (under `xtask/peers/` and the cache).
    #[must_use]
    pub fn dir_name(self) -> &'static str {
        match self {
            Self::Kubernetes => "k8s",
            Self::Flanneld => "flanneld",
            Self::CniFlannel => "cni-flannel",
        }
    }

    /// The release the builder builds.
    #[must_use]
    pub fn version(self) -> &'static str {
        match self {
            Self::Kubernetes => K8S_VERSION,
            Self::Flanneld => FLANNEL_VERSION,
            Self::CniFlannel => CNI_FLANNEL_VERSION,
        }
    }

    /// Where setup lays the builder module out and builds it.
    #[must_use]
    pub fn build_dir(self) -> PathBuf {
        cache_root()
            .join("build")
            .join(format!("{}-{}", self.dir_name(), self.version()))
    }

    /// The peers this builder makes.
    pub fn peers(self) -> impl Iterator<Item = &'static Peer> {
        PEERS.iter().filter(move |peer| peer.builder == self)
    }
}

/// One Go-built program the tests run.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    /// The catalog name, unique (what [`binary`] takes).
    pub name: &'static str,
    /// The binary's file name (a CNI plugin's is its `type`).
    pub file: &'static str,
    /// The release, as its module tags it.
    pub version: &'static str,
    /// The Go package `go build` builds (`./cmd/...` inside the builder
    /// module for flanneld).
    pub package: &'static str,
    pub builder: Builder,
}

/// Every peer, in the order setup builds them.
pub const PEERS: &[Peer] = &[
    Peer {
        name: "kubectl",
        file: "kubectl",
        version: K8S_VERSION,
        package: "k8s.io/kubernetes/cmd/kubectl",
        builder: Builder::Kubernetes,
    },
    Peer {
        name: "kube-apiserver",
        file: "kube-apiserver",
        version: K8S_VERSION,
        package: "k8s.io/kubernetes/cmd/kube-apiserver",
        builder: Builder::Kubernetes,
    },
    Peer {
        name: "kube-controller-manager",
        file: "kube-controller-manager",
        version: K8S_VERSION,
        package: "k8s.io/kubernetes/cmd/kube-controller-manager",
        builder: Builder::Kubernetes,
    },
    Peer {
        name: "kubelet",
        file: "kubelet",
        version: K8S_VERSION,
        package: "k8s.io/kubernetes/cmd/kubelet",
        builder: Builder::Kubernetes,
    },
    Peer {
        name: "kube-scheduler",
        file: "kube-scheduler",
        version: K8S_VERSION,
        package: "k8s.io/kubernetes/cmd/kube-scheduler",
        builder: Builder::Kubernetes,
    },
    Peer {
        name: "kube-proxy",
        file: "kube-proxy",
        version: K8S_VERSION,
        package: "k8s.io/kubernetes/cmd/kube-proxy",
        builder: Builder::Kubernetes,
    },
    Peer {
        name: "flanneld",
        file: "flanneld",
        version: FLANNEL_VERSION,
        package: "./cmd/flanneld",
        builder: Builder::Flanneld,
    },
    Peer {
        name: "cni-flannel",
        file: "flannel",
        version: CNI_FLANNEL_VERSION,
        package: "github.com/containernetworking/plugins/plugins/meta/flannel",
        builder: Builder::CniFlannel,
    },
];

impl Peer {
    /// `peers/<name>-<version>/`: the binary's directory (for the CNI
    /// plugin, a plugin directory holding only it).
    #[must_use]
    pub fn dir(&self) -> PathBuf {
        cache_root()
            .join("peers")
            .join(format!("{}-{}", self.name, self.version))
    }

    /// The binary.
    #[must_use]
    pub fn binary(&self) -> PathBuf {
        self.dir().join(self.file)
    }

    /// The file recording what the binary was built from; setup rebuilds
    /// when it is missing or says something else.
    #[must_use]
    pub fn recipe_file(&self) -> PathBuf {
        self.dir().join(format!("{}.recipe", self.file))
    }
}

/// Where builds, caches and binaries live: `$POD_NET_CACHE`, else
/// `/var/cache/pod-net`.
#[must_use]
pub fn cache_root() -> PathBuf {
    std::env::var_os("POD_NET_CACHE")
        .filter(|value| !value.is_empty())
        .map_or_else(|| PathBuf::from("/var/cache/pod-net"), PathBuf::from)
}

/// `GOMODCACHE` of the builds.
#[must_use]
pub fn go_mod_cache() -> PathBuf {
    cache_root().join("go/mod")
}

/// `GOCACHE` of the builds.
#[must_use]
pub fn go_build_cache() -> PathBuf {
    cache_root().join("go/cache")
}

/// `GOPATH` of the builds (nothing is installed there).
#[must_use]
pub fn go_path() -> PathBuf {
    cache_root().join("go/path")
}

/// The catalog entry called `name`.
#[must_use]
pub fn peer(name: &str) -> Option<&'static Peer> {
    PEERS.iter().find(|peer| peer.name == name)
}

/// The path of peer `name`'s binary, whether or not it is built.
///
/// # Panics
/// If the catalog has no such peer (a typo in a test).
#[must_use]
pub fn binary(name: &str) -> PathBuf {
    match peer(name) {
        Some(peer) => peer.binary(),
        None => panic!(
            "no peer {name:?} in the catalog (known: {})",
            names().join(", ")
        ),
    }
}

/// The path of peer `name`'s binary, or an error saying to run setup when
/// it is not built.
pub fn require(name: &str) -> Result<PathBuf> {
    let Some(peer) = peer(name) else {
        bail!(
            "no peer {name:?} in the catalog (known: {})",
            names().join(", ")
        );
    };
    let path = peer.binary();
    if !path.is_file() || !peer.recipe_file().is_file() {
        bail!(
            "{} {} is not built at {}: run `cargo xtask setup` (it builds the Go peers)",
            peer.name,
            peer.version,
            path.display()
        );
    }
    Ok(path)
}

/// Every catalog name.
#[must_use]
pub fn names() -> Vec<&'static str> {
    PEERS.iter().map(|peer| peer.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_paths_carry_the_version() {
        let mut names = names();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), PEERS.len());
        let apiserver = binary("kube-apiserver");
        assert!(apiserver.ends_with("peers/kube-apiserver-v1.37.2/kube-apiserver"));
        // The CNI plugin's file is its type, in a directory of its own.
        assert!(binary("cni-flannel").ends_with("peers/cni-flannel-v0.9.1/flannel"));
        assert_eq!(Builder::Kubernetes.peers().count(), 6);
        assert!(
            Builder::ALL
                .iter()
                .all(|builder| builder.peers().count() > 0)
        );
    }

    #[test]
    fn unknown_peers_are_refused_by_name() {
        let error = require("coredns").unwrap_err().to_string();
        assert!(error.contains("no peer \"coredns\""), "{error}");
    }
}
