//! `pod-net cni chain` and `unchain`: putting `pod-net-cni` into another
//! network's conflist (flannel's `[flannel, portmap]` becomes `[flannel,
//! pod-net-cni, portmap]`) and taking it out again. The entry goes right
//! after the plugin that makes the pod's interface (flannel's, else the
//! first), so its prevResult names the pod's veth and addresses, and it is
//! `optional`: with pod-net unloaded, pods are still created, on the
//! kernel path. The file is rewritten atomically (a runtime reading it
//! sees the old or the new one), only when it changes, and a file that is
//! not a conflist is refused untouched.
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::sys::files::{read_regular, write_atomically};

/// The plugin's type in a conflist.
pub const PLUGIN: &str = "pod-net-cni";
/// The largest conflist read.
const CONFLIST_LIMIT: u64 = 1024 * 1024;

/// What a call did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Added after the plugin of this type.
    Chained {
        after: String,
    },
    /// Already there (with this pin dir): nothing written.
    AlreadyChained,
    Unchained,
    /// Not there: nothing written.
    NotChained,
}

/// `conflist` with `pod-net-cni` (for `pin_dir`) after the plugin that
/// makes the interface; `None` when it already has it as wanted.
pub fn chained(conflist: &Value, pin_dir: &Path) -> Result<Option<(Value, String)>> {
    let plugins = plugins(conflist)?;
    let entry = json!({"type": PLUGIN, "pinDir": pin_dir, "optional": true});
    let mut kept: Vec<Value> = plugins
        .iter()
        .filter(|plugin| plugin_type(plugin) != Some(PLUGIN))
        .cloned()
        .collect();
    let after = kept
        .iter()
        .position(|plugin| plugin_type(plugin) == Some("flannel"))
        .unwrap_or(0);
    let after_type = plugin_type(&kept[after]).unwrap_or_default().to_owned();
    kept.insert(after + 1, entry);
    if kept == *plugins {
        return Ok(None);
    }
    let mut conflist = conflist.clone();
    conflist["plugins"] = Value::Array(kept);
    Ok(Some((conflist, after_type)))
}

/// `conflist` without `pod-net-cni`; `None` when it has none.
pub fn unchained(conflist: &Value) -> Result<Option<Value>> {
    let plugins = plugins(conflist)?;
    let kept: Vec<Value> = plugins
        .iter()
        .filter(|plugin| plugin_type(plugin) != Some(PLUGIN))
        .cloned()
        .collect();
    if kept.len() == plugins.len() {
        return Ok(None);
    }
    let mut conflist = conflist.clone();
    conflist["plugins"] = Value::Array(kept);
    Ok(Some(conflist))
}

/// Adds `pod-net-cni` to the conflist at `path`.
pub fn chain(path: &Path, pin_dir: &Path) -> Result<Outcome> {
    let conflist = read(path)?;
    match chained(&conflist, pin_dir).with_context(|| path.display().to_string())? {
        None => Ok(Outcome::AlreadyChained),
        Some((conflist, after)) => {
            write(path, &conflist)?;
            Ok(Outcome::Chained { after })
        }
    }
}

/// Takes `pod-net-cni` out of the conflist at `path`.
pub fn unchain(path: &Path) -> Result<Outcome> {
    let conflist = read(path)?;
    match unchained(&conflist).with_context(|| path.display().to_string())? {
        None => Ok(Outcome::NotChained),
        Some(conflist) => {
            write(path, &conflist)?;
            Ok(Outcome::Unchained)
        }
    }
}

fn plugins(conflist: &Value) -> Result<&Vec<Value>> {
    let plugins = conflist
        .get("plugins")
        .and_then(Value::as_array)
        .context("not a CNI conflist: no \"plugins\" list")?;
    if plugins.is_empty() {
        bail!("the conflist has no plugins: nothing makes the pod's interface");
    }
    if let Some(index) = plugins
        .iter()
        .position(|plugin| plugin_type(plugin).is_none())
    {
        bail!("plugins[{index}] has no \"type\"");
    }
    Ok(plugins)
}

fn plugin_type(plugin: &Value) -> Option<&str> {
    plugin.get("type").and_then(Value::as_str)
}

fn read(path: &Path) -> Result<Value> {
    let bytes = read_regular(path, CONFLIST_LIMIT)
        .with_context(|| format!("reading {}", path.display()))?
        .with_context(|| format!("{}: no such file", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{}: not JSON", path.display()))
}

fn write(path: &Path, conflist: &Value) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(conflist)?;
    bytes.push(b'\n');
    write_atomically(path, &bytes).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kube-flannel.yml's `cni-conf.json`.
    fn flannel() -> Value {
        json!({
            "name": "cbr0",
            "cniVersion": "0.3.1",
            "plugins": [
                {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        })
    }

    fn types(conflist: &Value) -> Vec<&str> {
        conflist["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|plugin| plugin["type"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn pod_net_cni_goes_right_after_flannel_once_and_comes_out_again() {
        let pins = Path::new("/sys/fs/bpf/pod-net");
        let (with, after) = chained(&flannel(), pins).unwrap().unwrap();
        assert_eq!(after, "flannel");
        assert_eq!(types(&with), ["flannel", "pod-net-cni", "portmap"]);
        assert_eq!(
            with["plugins"][1],
            json!({"type": "pod-net-cni", "pinDir": "/sys/fs/bpf/pod-net", "optional": true})
        );
        // Everything else as it was.
        assert_eq!(with["name"], "cbr0");
        assert_eq!(with["plugins"][0], flannel()["plugins"][0]);
        // Twice is once; another pin dir replaces the entry.
        assert_eq!(chained(&with, pins).unwrap(), None);
        let (moved, _) = chained(&with, Path::new("/sys/fs/bpf/other"))
            .unwrap()
            .unwrap();
        assert_eq!(types(&moved), ["flannel", "pod-net-cni", "portmap"]);
        assert_eq!(moved["plugins"][1]["pinDir"], "/sys/fs/bpf/other");

        assert_eq!(unchained(&with).unwrap(), Some(flannel()));
        assert_eq!(unchained(&flannel()).unwrap(), None);
    }

    #[test]
    fn without_flannel_it_follows_the_first_plugin() {
        let bridge = json!({"plugins": [{"type": "bridge"}, {"type": "portmap"}]});
        let (with, after) = chained(&bridge, Path::new("/p")).unwrap().unwrap();
        assert_eq!(after, "bridge");
        assert_eq!(types(&with), ["bridge", "pod-net-cni", "portmap"]);
    }

    #[test]
    fn what_is_not_a_conflist_is_refused() {
        let pins = Path::new("/p");
        for (conflist, error) in [
            (
                json!({"type": "flannel"}),
                "not a CNI conflist: no \"plugins\" list",
            ),
            (
                json!({"plugins": []}),
                "the conflist has no plugins: nothing makes the pod's interface",
            ),
            (
                json!({"plugins": [{"type": "flannel"}, {"name": "x"}]}),
                "plugins[1] has no \"type\"",
            ),
        ] {
            assert_eq!(chained(&conflist, pins).unwrap_err().to_string(), error);
            assert_eq!(unchained(&conflist).unwrap_err().to_string(), error);
        }
    }
}
