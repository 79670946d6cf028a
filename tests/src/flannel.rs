//! Nodes that run flannel's backends with kernel parts only, no pod-net:
//! the baselines the benchmarks measure pod-net against, and the interop
//! peers of the end-to-end tests. VXLAN (`flannel_style`): `flannel.1`
//! with a route, a neighbour entry and an FDB entry per peer.
use anyhow::Result;

use crate::rig::Node;

impl Node {
    /// The MAC this rig gives a flannel-style node's `flannel.1`.
    #[must_use]
    pub fn flannel_vtep_mac(&self) -> String {
        format!("02:fa:00:00:00:{:02x}", self.index)
    }

    /// Sets this node up the way flannel's VXLAN backend does, without
    /// pod-net: `flannel.1` (VNI 1, port 8472, no learning, MTU 1450), and
    /// for each peer a route via its `10.244.M.0` on `flannel.1`, a
    /// permanent neighbour entry with the peer's VTEP MAC, and an FDB entry
    /// sending that MAC to the peer's underlay address.
    pub fn flannel_style(&self, peers: &[(&Node, String)]) -> Result<()> {
        let local = self.underlay_ip.to_string();
        let mac = self.flannel_vtep_mac();
        self.ip(&[
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            "1",
            "dstport",
            "8472",
            "dev",
            "eth0",
            "local",
            &local,
            "nolearning",
        ])?;
        self.ip(&[
            "link",
            "set",
            "flannel.1",
            "mtu",
            "1450",
            "address",
            &mac,
            "up",
        ])?;
        let own = format!("10.244.{}.0/32", self.index);
        self.ip(&["addr", "add", &own, "dev", "flannel.1"])?;
        for (peer, peer_mac) in peers {
            let gateway = format!("10.244.{}.0", peer.index);
            let peer_ip = peer.underlay_ip.to_string();
            self.ip(&[
                "route",
                "add",
                &peer.pod_cidr(),
                "via",
                &gateway,
                "dev",
                "flannel.1",
                "onlink",
            ])?;
            self.ip(&[
                "neigh",
                "replace",
                &gateway,
                "lladdr",
                peer_mac,
                "dev",
                "flannel.1",
                "nud",
                "permanent",
            ])?;
            self.exec(&[
                "bridge",
                "fdb",
                "append",
                peer_mac,
                "dev",
                "flannel.1",
                "dst",
                &peer_ip,
            ])?;
        }
        Ok(())
    }
}
