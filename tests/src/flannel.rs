//! Nodes that run flannel's backends with kernel parts only, no pod-net:
//! the baselines the benchmarks measure pod-net against, and the interop
//! peers of the end-to-end tests.
//!
//! - VXLAN (`flannel_style`): `flannel.1` with a route, a neighbour entry
//!   and an FDB entry per peer.
//! - host-gw (`host_gw_style`): pods stay on `cni0`, and each peer's pod
//!   CIDR is routed via the peer's underlay address. flannel needs an IPv6
//!   underlay for IPv6 host-gw; the rig's underlay is IPv4, so IPv6 goes
//!   via the peer's link-local `fe80::<its IPv4 bytes>` on the underlay,
//!   the next hop pod-net's direct routes use too.
use std::net::Ipv6Addr;

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

    /// Sets this node up the way flannel's host-gw backend does, without
    /// pod-net: for each peer a route `<peer pod CIDR> via <peer node IP>
    /// dev eth0`, and in a dual-stack rig `<peer /64> via fe80::<peer node
    /// IP bytes> dev eth0` (this node gets its own such address here; a
    /// pod-net peer needs it too, see [`Node::add_underlay_link_local`]).
    pub fn host_gw_style(&self, peers: &[&Node]) -> Result<()> {
        // Already on in every rig node; host-gw is routing and needs it.
        self.sysctl("net.ipv4.ip_forward", "1")?;
        let ipv6 = self.gateway_ip6.is_some();
        if ipv6 {
            self.add_underlay_link_local()?;
        }
        for peer in peers {
            let via = peer.underlay_ip.to_string();
            self.ip(&["route", "add", &peer.pod_cidr(), "via", &via, "dev", "eth0"])?;
            if let Some(cidr) = peer.pod_cidr6().filter(|_| ipv6) {
                let via = peer.underlay_link_local().to_string();
                self.ip(&["-6", "route", "add", &cidr, "via", &via, "dev", "eth0"])?;
            }
        }
        Ok(())
    }

    /// `fe80::<underlay IPv4 bytes>` (`fe80::c0a8:6402` for 192.168.100.2):
    /// the IPv6 next hop of routes to this node's pods over the underlay.
    #[must_use]
    pub fn underlay_link_local(&self) -> Ipv6Addr {
        let [a, b, c, d] = self.underlay_ip.octets();
        Ipv6Addr::new(
            0xfe80,
            0,
            0,
            0,
            0,
            0,
            u16::from_be_bytes([a, b]),
            u16::from_be_bytes([c, d]),
        )
    }

    /// Puts [`Node::underlay_link_local`] on `eth0`, without duplicate
    /// address detection (usable at once). `replace`, so it is harmless
    /// where pod-net has added it already.
    pub fn add_underlay_link_local(&self) -> Result<()> {
        let address = format!("{}/64", self.underlay_link_local());
        self.ip(&["-6", "addr", "replace", &address, "dev", "eth0", "nodad"])
            .map(drop)
    }
}
