//! Which leases in the store become remote entries. The store is untrusted
//! input: whoever can write it can steer traffic between nodes, but no
//! lease may make this node route outside the network, take another node's
//! subnet, or stop it programming the rest. Each lease is judged on its
//! own, in the order the store created them, so an older lease always
//! stands against a newer one that contradicts it; a refused lease is
//! skipped (and reported by its key), never the reason others are.
//!
//! The rules, in order:
//! 1. the subnet is one the network holds (inside `Network`, of
//!    `SubnetLen`: flannel's rule);
//! 2. a lease naming this node's address is this node's own key or a
//!    stray, and one claiming this node's subnet is refused;
//! 3. one subnet has one owner: a second key for it (flannel's dual-stack
//!    form can name a subnet again) is refused unless it is the same node;
//! 4. the node passes this node's own checks (`check`: its address, its
//!    routes, its pods);
//! 5. the entries' rules between each other (one node, one VTEP MAC and one
//!    mode; no node inside a remote prefix), as `node add` has them.
//!
//! Pure logic: the host's checks come in as a function, so every rule has
//! a table test here.
use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::Result;
use pod_net_common::RemoteNode;

use super::flannel::{NetworkConfig, Peer, Subnet};
use crate::{
    cidr::Cidr,
    node::{
        direct,
        remotes::{Mode, NodeIndex, NodeSpec},
    },
};

/// A parsed lease and where it sits in the store.
#[derive(Clone, Debug)]
pub struct Claim {
    pub key: String,
    /// The revision that created the key.
    pub created: i64,
    pub peer: Peer,
}

/// This node as the rules see it.
#[derive(Clone, Debug)]
pub struct Own {
    pub key: String,
    pub subnet: Subnet,
    pub public_ip: Ipv4Addr,
}

/// The outcome: the entries the maps must hold and the leases refused.
#[derive(Debug, Default, PartialEq)]
pub struct Admission {
    /// One entry per subnet, with the key it comes from.
    pub entries: BTreeMap<Subnet, (String, NodeSpec)>,
    /// Refused leases by key, with why.
    pub refused: BTreeMap<String, String>,
}

/// The entry a peer's lease asks for: direct when `direct_subnets` (this
/// node's underlay subnets, when the network routes directly) hold its
/// address, as flannel's `DirectRouting` does; over VXLAN to its VTEP MAC
/// otherwise.
#[must_use]
pub fn spec(peer: &Peer, direct_subnets: &[Cidr]) -> NodeSpec {
    let direct = direct::on_link(direct_subnets, peer.public_ip);
    NodeSpec {
        cidr: peer.subnet.cidr(),
        node_ip: peer.public_ip,
        vtep_mac: (!direct).then_some(peer.vtep_mac),
        mode: if direct { Mode::Direct } else { Mode::Vxlan },
    }
}

/// Judges `claims` (in any order) by the rules above. `check` is this
/// node's verdict on one entry: the value to store, or why not.
pub fn admit<'a>(
    config: &NetworkConfig,
    own: &Own,
    direct_subnets: &[Cidr],
    claims: impl IntoIterator<Item = &'a Claim>,
    mut check: impl FnMut(&NodeSpec) -> Result<RemoteNode>,
) -> Admission {
    let mut ordered: Vec<&Claim> = claims.into_iter().collect();
    ordered.sort_by(|a, b| (a.created, &a.key).cmp(&(b.created, &b.key)));
    let mut admission = Admission::default();
    let mut index = NodeIndex::default();
    for claim in ordered {
        let peer = &claim.peer;
        if claim.key == own.key {
            continue;
        }
        let verdict = if !config.holds(peer.subnet) {
            Err(format!(
                "{} is not a /{} of Network {}",
                peer.subnet, config.subnet_len, config.network
            ))
        } else if peer.public_ip == own.public_ip {
            Err(format!(
                "names this node's address {}, whose lease is {} ({}): a stray",
                own.public_ip, own.subnet, own.key
            ))
        } else if peer.subnet.overlaps(own.subnet) {
            Err(format!(
                "claims {}, this node's subnet ({})",
                peer.subnet, own.key
            ))
        } else if let Some((owner, entry)) = admission.entries.get(&peer.subnet) {
            let how = if entry.node_ip == peer.public_ip {
                "a second key of the same node"
            } else {
                "an older lease"
            };
            Err(format!(
                "claims {}, which {owner} holds (node {}, {how})",
                peer.subnet, entry.node_ip
            ))
        } else {
            let spec = spec(peer, direct_subnets);
            check(&spec)
                .and_then(|value| index.admit(&spec, &value))
                .map(|()| spec)
                .map_err(|err| format!("{err:#}"))
        };
        match verdict {
            Ok(spec) => {
                admission
                    .entries
                    .insert(peer.subnet, (claim.key.clone(), spec));
            }
            Err(reason) => {
                admission.refused.insert(claim.key.clone(), reason);
            }
        }
    }
    admission
}

#[cfg(test)]
mod tests {
    use anyhow::bail;
    use pod_net_common::remote::derived_vtep_mac;

    use super::*;
    use crate::{agent::cluster::flannel, mac::MacAddr};

    const PREFIX: &str = "/coreos.com/network/subnets/";

    fn own() -> Own {
        Own {
            key: format!("{PREFIX}10.244.1.0-24"),
            subnet: "10.244.1.0/24".parse().unwrap(),
            public_ip: Ipv4Addr::new(192, 168, 100, 1),
        }
    }

    /// A lease of subnet `10.244.N.0/24` (or `subnet` when it has a `/`)
    /// for node `192.168.100.H` with its derived MAC.
    fn claim(subnet: &str, host: u8, created: i64) -> Claim {
        let subnet: Subnet = if subnet.contains('/') {
            subnet.parse().unwrap()
        } else {
            format!("10.244.{subnet}.0/24").parse().unwrap()
        };
        let public_ip = Ipv4Addr::new(192, 168, 100, host);
        Claim {
            key: format!("{PREFIX}{}", subnet.key_name()),
            created,
            peer: Peer {
                subnet,
                ipv6_subnet: None,
                public_ip,
                vtep_mac: MacAddr(derived_vtep_mac(public_ip.octets())),
            },
        }
    }

    /// The host's checks: refuses loopback node IPs, passes the rest.
    fn host(spec: &NodeSpec) -> Result<RemoteNode> {
        if spec.node_ip.is_loopback() {
            bail!(
                "node IP {} is not a unicast address (loopback)",
                spec.node_ip
            );
        }
        Ok(RemoteNode {
            node_ip: spec.node_ip.octets(),
            flags: 0,
            vtep_mac: spec.vtep_mac.map_or([0; 6], |mac| mac.0),
            pad: [0; 2],
        })
    }

    fn run(claims: &[Claim]) -> Admission {
        admit(&flannel::example_config(), &own(), &[], claims, host)
    }

    fn admitted(admission: &Admission) -> Vec<String> {
        admission
            .entries
            .values()
            .map(|(_, spec)| format!("{} via {}", spec.cidr, spec.node_ip))
            .collect()
    }

    #[test]
    fn good_leases_become_one_entry_each_and_our_own_key_none() {
        let mut ours = claim("1", 1, 1);
        ours.key = own().key;
        let admission = run(&[claim("2", 2, 5), ours, claim("3", 3, 6)]);
        assert_eq!(
            admitted(&admission),
            [
                "10.244.2.0/24 via 192.168.100.2",
                "10.244.3.0/24 via 192.168.100.3"
            ]
        );
        assert!(admission.refused.is_empty(), "{:?}", admission.refused);
    }

    #[test]
    fn each_refused_lease_is_named_with_why_and_the_rest_stand() {
        let mut hijack = claim("2", 9, 20);
        hijack.key = format!("{PREFIX}10.244.2.0-24&fd00:10:244:2::-64");
        let mut second_mac = claim("7", 2, 21);
        second_mac.peer.vtep_mac = "0e:00:00:00:00:07".parse().unwrap();
        let mut loopback = claim("5", 5, 14);
        loopback.peer.public_ip = Ipv4Addr::new(127, 0, 0, 5);
        let mut stolen_mac = claim("8", 8, 22);
        stolen_mac.peer.vtep_mac = MacAddr(derived_vtep_mac([192, 168, 100, 2]));
        let table: [(Claim, &str); 8] = [
            (
                claim("10.96.0.0/12", 5, 10),
                "10.96.0.0/12 is not a /24 of Network 10.244.0.0/16",
            ),
            (
                claim("10.244.2.9/32", 6, 11),
                "10.244.2.9/32 is not a /24 of Network 10.244.0.0/16",
            ),
            (
                claim("192.168.100.0/24", 7, 12),
                "192.168.100.0/24 is not a /24 of Network 10.244.0.0/16",
            ),
            (
                claim("4", 1, 13),
                "names this node's address 192.168.100.1, whose lease is 10.244.1.0/24 \
                 (/coreos.com/network/subnets/10.244.1.0-24): a stray",
            ),
            (
                hijack,
                "claims 10.244.2.0/24, which /coreos.com/network/subnets/10.244.2.0-24 holds \
                 (node 192.168.100.2, an older lease)",
            ),
            (
                loopback,
                "node IP 127.0.0.5 is not a unicast address (loopback)",
            ),
            (
                second_mac,
                "node 192.168.100.2 already has VTEP MAC 0e:6e:c0:a8:64:02 (for \
                 10.244.2.0/24); one node has one VTEP MAC, so 10.244.7.0/24 cannot use \
                 0e:00:00:00:00:07",
            ),
            (
                stolen_mac,
                "VTEP MAC 0e:6e:c0:a8:64:02 is already node 192.168.100.2's (for \
                 10.244.2.0/24); 10.244.8.0/24 via node 192.168.100.8 needs another one",
            ),
        ];
        for (bad, why) in &table {
            let admission = run(&[claim("2", 2, 1), bad.clone(), claim("3", 3, 30)]);
            assert_eq!(
                admitted(&admission),
                [
                    "10.244.2.0/24 via 192.168.100.2",
                    "10.244.3.0/24 via 192.168.100.3"
                ],
                "with {}",
                bad.key
            );
            assert_eq!(
                admission.refused,
                BTreeMap::from([(bad.key.clone(), (*why).to_owned())]),
            );
        }
    }

    #[test]
    fn the_older_of_two_claims_stands_whatever_order_they_come_in() {
        let older = claim("2", 2, 1);
        let mut newer = claim("2", 9, 2);
        newer.key = format!("{PREFIX}10.244.2.0-24&fd00:10:244:2::-64");
        for claims in [
            [older.clone(), newer.clone()],
            [newer.clone(), older.clone()],
        ] {
            let admission = run(&claims);
            assert_eq!(admitted(&admission), ["10.244.2.0/24 via 192.168.100.2"]);
            assert_eq!(admission.refused.keys().collect::<Vec<_>>(), [&newer.key]);
        }
        // With the older lease gone, the other is the subnet's only claim.
        let admission = run(&[newer]);
        assert_eq!(admitted(&admission), ["10.244.2.0/24 via 192.168.100.9"]);
        // Nothing may claim this node's subnet, however old.
        let mut ours = claim("1", 9, 0);
        ours.key = format!("{PREFIX}10.244.1.0-24&fd00:10:244:1::-64");
        let admission = run(&[ours]);
        assert_eq!(
            admission.refused.values().collect::<Vec<_>>(),
            [
                "claims 10.244.1.0/24, this node's subnet (/coreos.com/network/subnets/10.244.1.0-24)"
            ]
        );
    }

    #[test]
    fn a_node_inside_a_remote_prefix_is_refused_the_later_of_the_two() {
        // A /24 around a node's address (an operator's config with a
        // network over the underlay): the node that comes later is refused.
        let config = flannel::NetworkConfig::parse(
            "/coreos.com/network/config",
            br#"{"Network":"192.168.0.0/16","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let around = claim("192.168.50.0/24", 2, 1);
        let mut inside = claim("192.168.7.0/24", 9, 2);
        inside.peer.public_ip = Ipv4Addr::new(192, 168, 50, 9);
        let admission = admit(
            &config,
            &own(),
            &[],
            &[inside.clone(), around.clone()],
            host,
        );
        assert_eq!(admitted(&admission), ["192.168.50.0/24 via 192.168.100.2"]);
        assert_eq!(
            admission.refused.values().collect::<Vec<_>>(),
            [
                "node IP 192.168.50.9 lies inside the remote prefix 192.168.50.0/24: the \
                 tunnel cannot carry its own underlay"
            ]
        );
        // The other way round: the prefix comes later, and is refused.
        inside.created = 0;
        let admission = admit(&config, &own(), &[], &[around, inside], host);
        assert_eq!(admitted(&admission), ["192.168.7.0/24 via 192.168.50.9"]);
        assert_eq!(
            admission.refused.values().collect::<Vec<_>>(),
            [
                "192.168.50.0/24 contains node IP 192.168.50.9: the tunnel cannot carry its own \
                 underlay"
            ]
        );
    }

    #[test]
    fn peers_on_a_direct_subnet_are_direct_and_others_vxlan() {
        let direct: Vec<Cidr> = vec!["192.168.100.0/25".parse().unwrap()];
        let admission = admit(
            &flannel::example_config(),
            &own(),
            &direct,
            &[claim("2", 2, 1), claim("3", 200, 2)],
            host,
        );
        let modes: Vec<(Mode, Option<MacAddr>)> = admission
            .entries
            .values()
            .map(|(_, spec)| (spec.mode, spec.vtep_mac))
            .collect();
        assert_eq!(
            modes,
            [
                (Mode::Direct, None),
                (
                    Mode::Vxlan,
                    Some(MacAddr(derived_vtep_mac([192, 168, 100, 200])))
                )
            ]
        );
    }
}
