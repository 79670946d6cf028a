//! flannel's `subnet.env`, so tools written for flannel (its CNI plugin,
//! scripts sourcing the file) work on a pod-net node unchanged.
use std::{io, path::Path};

use pod_net_common::config::VXLAN_OVERHEAD;

use super::flannel::{NetworkConfig, Subnet};
use crate::sys::files::{read_regular, write_atomically};

/// The file's text: flannel's names and formats (`FLANNEL_SUBNET` is the
/// gateway address with the subnet's length).
#[must_use]
pub fn render(config: &NetworkConfig, subnet: Subnet, underlay_mtu: u32) -> String {
    format!(
        "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ=false\n",
        config.network,
        subnet.gateway(),
        subnet.len,
        pod_mtu(underlay_mtu)
    )
}

/// The pods' MTU: the underlay's, less the encapsulation.
#[must_use]
pub fn pod_mtu(underlay_mtu: u32) -> u32 {
    underlay_mtu.saturating_sub(VXLAN_OVERHEAD)
}

/// Writes the file atomically.
pub fn write(
    path: &Path,
    config: &NetworkConfig,
    subnet: Subnet,
    underlay_mtu: u32,
) -> io::Result<()> {
    write_atomically(path, render(config, subnet, underlay_mtu).as_bytes())
}

/// What a `subnet.env` says: the network, and this node's subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Subnet,
    pub subnet: Subnet,
}

/// The file at `path`, if it is there, readable and well formed (pod-net's
/// or flanneld's), with both the network and the subnet.
#[must_use]
pub fn read(path: &Path) -> Option<SubnetEnv> {
    parse(&text_of(path)?)
}

/// The subnet an earlier run wrote to `path`, if the file is there and
/// readable: flannel reuses it when no lease names this node. Only
/// `FLANNEL_SUBNET` counts here, as flanneld reads it.
#[must_use]
pub fn previous_subnet(path: &Path) -> Option<Subnet> {
    subnet_of(&text_of(path)?)
}

fn text_of(path: &Path) -> Option<String> {
    String::from_utf8(read_regular(path, 4096).ok()??).ok()
}

/// The value of `NAME=` in `text`.
fn value<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
        .map(str::trim)
}

fn parse(text: &str) -> Option<SubnetEnv> {
    Some(SubnetEnv {
        network: value(text, "FLANNEL_NETWORK")?.parse().ok()?,
        subnet: subnet_of(text)?,
    })
}

/// `FLANNEL_SUBNET`'s subnet: the gateway (its first address) and length.
fn subnet_of(text: &str) -> Option<Subnet> {
    let (gateway, len) = value(text, "FLANNEL_SUBNET")?.split_once('/')?;
    let gateway: std::net::Ipv4Addr = gateway.parse().ok()?;
    let subnet = Subnet {
        ip: std::net::Ipv4Addr::from(u32::from(gateway).checked_sub(1)?),
        len: len.parse().ok()?,
    };
    Subnet::from_key(&subnet.key_name()).filter(|parsed| *parsed == subnet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::cluster::flannel;

    #[test]
    fn the_file_is_flannels_and_reads_back() {
        let config = flannel::example_config();
        let subnet: Subnet = "10.244.7.0/24".parse().unwrap();
        assert_eq!(
            render(&config, subnet, 1500),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        let dir = std::env::temp_dir().join(format!("pod-net-subnet-env-{}", std::process::id()));
        let path = dir.join("sub/subnet.env");
        write(&path, &config, subnet, 9000).unwrap();
        assert_eq!(previous_subnet(&path), Some(subnet));
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("FLANNEL_MTU=8950\n")
        );
        // flanneld's own file.
        let flanneld = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n\
                        FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        assert_eq!(
            parse(flanneld),
            Some(SubnetEnv {
                network: "10.244.0.0/16".parse().unwrap(),
                subnet: "10.244.3.0/24".parse().unwrap(),
            })
        );
        // Without the network it is no flanneld file, but still an earlier
        // subnet (as flanneld reads its own).
        assert_eq!(parse("FLANNEL_SUBNET=10.244.3.1/24\n"), None);
        std::fs::write(&path, "FLANNEL_SUBNET=10.244.50.1/24\n").unwrap();
        assert_eq!(
            previous_subnet(&path),
            Some("10.244.50.0/24".parse().unwrap())
        );
        std::fs::write(&path, "FLANNEL_SUBNET=garbage\n").unwrap();
        assert_eq!(previous_subnet(&path), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
