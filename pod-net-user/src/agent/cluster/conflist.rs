//! The CNI conflist the agent writes for its node: the reference `bridge`
//! plugin (cni0 as the pods' gateway) with `host-local` IPAM over the
//! leased subnet, then `pod-net-cni` to put each pod on the fast path.
use std::{io, path::Path};

use serde_json::{Value, json};

use super::flannel::{NetworkConfig, Subnet};
use crate::sys::files::{holds, write_atomically};

/// The network's name in the conflist (and host-local's state directory).
pub const NETWORK_NAME: &str = "pod-net";

#[must_use]
pub fn render(config: &NetworkConfig, subnet: Subnet, mtu: u32, pin_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "isDefaultGateway": true,
                "ipMasq": false,
                "mtu": mtu,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet.to_string(), "gateway": subnet.gateway().to_string()}]],
                    "routes": [{"dst": config.network.to_string()}]
                }
            },
            {"type": "pod-net-cni", "pinDir": pin_dir}
        ]
    })
}

/// Writes the conflist atomically, unless it already says exactly this.
pub fn write(path: &Path, conflist: &Value) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(conflist).map_err(io::Error::other)?;
    bytes.push(b'\n');
    if holds(path, &bytes) {
        return Ok(());
    }
    write_atomically(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::cluster::flannel;

    #[test]
    fn the_conflist_chains_bridge_then_pod_net_cni() {
        let config = flannel::example_config();
        let conflist = render(
            &config,
            "10.244.7.0/24".parse().unwrap(),
            1450,
            Path::new("/sys/fs/bpf/pod-net"),
        );
        assert_eq!(conflist["plugins"][0]["type"], "bridge");
        assert_eq!(conflist["plugins"][0]["mtu"], 1450);
        assert_eq!(
            conflist["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.7.0/24"
        );
        assert_eq!(
            conflist["plugins"][0]["ipam"]["ranges"][0][0]["gateway"],
            "10.244.7.1"
        );
        assert_eq!(conflist["plugins"][1]["type"], "pod-net-cni");
        assert_eq!(conflist["plugins"][1]["pinDir"], "/sys/fs/bpf/pod-net");
    }
}
