//! Typed failures in the CLI's words: the library names options,
//! capacities and maps; the CLI names its flags and the commands that mend
//! a failure. The CNI plugin and the agent keep the library's words.
use crate::error::{self, Capacity, LoadRefusal, NodeError};

/// An error as one line, the causes after colons (as `{:#}` prints it),
/// with the typed failures in the CLI's words: the library names options
/// and capacities, the CLI its flags and commands.
#[must_use]
pub fn error_line(error: &anyhow::Error) -> String {
    error
        .chain()
        .map(|cause| {
            if let Some(refusal) = cause.downcast_ref::<LoadRefusal>() {
                load_refusal(refusal)
            } else if let Some(error) = cause.downcast_ref::<NodeError>() {
                node_error(error)
            } else {
                cause.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(": ")
}

/// The `load` flag that sets a capacity.
const fn capacity_flag(capacity: Capacity) -> &'static str {
    match capacity {
        Capacity::Pods => "--max-pods",
        Capacity::RemotePods => "--max-remote-pods",
        Capacity::RemoteCidrs => "--max-remote-cidrs",
    }
}

/// A node failure, with the command or flag that mends it where the
/// library's words name none.
fn node_error(error: &NodeError) -> String {
    match error {
        NodeError::MapFull {
            capacity,
            size,
            fitted,
        } => format!(
            "{} is full ({size} entries){}; remove stale entries, or `pod-net unload` and load \
             again with a larger {}",
            capacity.map(),
            error::fitted_clause(*fitted),
            capacity_flag(*capacity)
        ),
        NodeError::AlreadyRegistered { ip, .. } => {
            format!("{error}; run `pod-net pod del --ip {ip}` first")
        }
        _ => error.to_string(),
    }
}

/// An option `load` refused, in the CLI's words: the library names the
/// option, the CLI its flag.
fn load_refusal(refusal: &LoadRefusal) -> String {
    match refusal {
        LoadRefusal::ZeroCapacity(capacity) => {
            format!("{} must be at least 1", capacity_flag(*capacity))
        }
        LoadRefusal::CapacityFixed {
            capacity,
            path,
            current,
            wanted,
        } => format!(
            "{} at {} holds up to {current} entries; it cannot be resized to {} {wanted} in \
             place (`pod-net unload` first, which drops its entries)",
            capacity.map(),
            path.display(),
            capacity_flag(*capacity)
        ),
        LoadRefusal::ZeroVxlanPort => "--vxlan-port must not be 0".to_owned(),
        LoadRefusal::NoSuchUnderlay(name) => {
            format!("no interface named {name:?} for --underlay in this network namespace")
        }
        LoadRefusal::NodeIpNotOnUnderlay {
            node_ip,
            ifname,
            has,
        } => format!("--node-ip {node_ip} is not an address of {ifname} (it has {has})"),
        LoadRefusal::XdpNeedsUnderlay => {
            "--xdp needs an underlay: load with --underlay IFACE --node-ip IPV4".to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_failures_read_in_the_clis_words_behind_their_context() {
        let full = anyhow::Error::from(NodeError::MapFull {
            capacity: Capacity::RemoteCidrs,
            size: 2,
            fitted: Some((1, 2)),
        })
        .context("adding 2 remote entries");
        assert_eq!(
            error_line(&full),
            "adding 2 remote entries: remote_nodes is full (2 entries): 1 of the 2 new entries \
             fit, so none were added; remove stale entries, or `pod-net unload` and load again \
             with a larger --max-remote-cidrs"
        );
        // The library's own words, as the CNI plugin and the agent print them.
        assert_eq!(
            format!("{full:#}"),
            "adding 2 remote entries: remote_nodes is full (2 entries): 1 of the 2 new entries \
             fit, so none were added; remove stale entries, or unload and load again with a \
             larger remote CIDR capacity"
        );
        let refused = anyhow::Error::from(LoadRefusal::ZeroCapacity(Capacity::Pods));
        assert_eq!(error_line(&refused), "--max-pods must be at least 1");
        let plain = anyhow::anyhow!("no such thing").context("reading it");
        assert_eq!(error_line(&plain), "reading it: no such thing");
    }
}
