//! What an operator applies, read back as data: the manifest's documents,
//! and the agent's and the init container's command lines as the kubelet
//! would run them. Tests assert on these; a test that runs the agent from
//! the image (or `kubectl apply --dry-run=server` against a test
//! apiserver) starts from [`manifest_path`] and [`agent_container`].
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// The `DaemonSet` manifest, `deploy/kubernetes/pod-net.yaml`.
#[must_use]
pub fn manifest_path() -> PathBuf {
    workspace_root().join("deploy/kubernetes/pod-net.yaml")
}

/// The workspace root (this crate's parent directory).
#[must_use]
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Every YAML document of a manifest, as JSON values (what `kubectl` sends).
pub fn documents(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_saphyr::from_multiple::<Value>(&text)
        .with_context(|| format!("{} is not YAML", path.display()))
}

/// The one document of `kind` named `name`.
pub fn find<'a>(documents: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    let mut matching = documents
        .iter()
        .filter(|doc| doc["kind"] == kind && doc["metadata"]["name"] == name);
    let found = matching
        .next()
        .with_context(|| format!("no {kind} named {name}"))?;
    if matching.next().is_some() {
        bail!("two documents are the {kind} {name}");
    }
    Ok(found)
}

/// Where an environment variable's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvSource {
    /// `value:`
    Literal(String),
    /// `valueFrom.fieldRef.fieldPath` (`spec.nodeName`, `status.hostIP`).
    Field(String),
    /// `valueFrom.configMapKeyRef`.
    ConfigMapKey { name: String, key: String },
}

/// A container of the `DaemonSet`'s pod template, as the kubelet runs it.
#[derive(Debug, Clone)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// In manifest order (a `$(VAR)` may only name an earlier one).
    pub env: Vec<(String, EnvSource)>,
    /// The raw container object, for anything else.
    pub spec: Value,
}

impl Container {
    fn parse(spec: &Value) -> Result<Self> {
        let strings = |field: &str| -> Result<Vec<String>> {
            spec[field]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|item| {
                    item.as_str()
                        .map(str::to_owned)
                        .with_context(|| format!("{field} holds a non-string: {item}"))
                })
                .collect()
        };
        let mut env = Vec::new();
        for var in spec["env"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let name = var["name"]
                .as_str()
                .context("an env entry without a name")?;
            let source = if let Some(value) = var["value"].as_str() {
                EnvSource::Literal(value.to_owned())
            } else if let Some(path) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                EnvSource::Field(path.to_owned())
            } else if let Some(reference) = var["valueFrom"]["configMapKeyRef"].as_object() {
                EnvSource::ConfigMapKey {
                    name: reference["name"].as_str().unwrap_or_default().to_owned(),
                    key: reference["key"].as_str().unwrap_or_default().to_owned(),
                }
            } else {
                bail!("env {name} has a source this reader does not know: {var}");
            };
            env.push((name.to_owned(), source));
        }
        Ok(Self {
            name: spec["name"].as_str().unwrap_or_default().to_owned(),
            image: spec["image"].as_str().unwrap_or_default().to_owned(),
            command: strings("command")?,
            args: strings("args")?,
            env,
            spec: spec.clone(),
        })
    }

    /// The command line the kubelet would run: `command` then `args`, with
    /// `$(VAR)` replaced from `values` (a name without a value stays as
    /// written, as in Kubernetes; `$$` is a literal `$`).
    #[must_use]
    pub fn argv(&self, values: &BTreeMap<String, String>) -> Vec<String> {
        self.command
            .iter()
            .chain(&self.args)
            .map(|arg| expand(arg, values))
            .collect()
    }

    /// The environment for the given field and `ConfigMap` values (`fields`
    /// by field path, `config` by `ConfigMap` key).
    #[must_use]
    pub fn environment(
        &self,
        fields: &BTreeMap<String, String>,
        config: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut values = BTreeMap::new();
        for (name, source) in &self.env {
            let value = match source {
                EnvSource::Literal(value) => Some(expand(value, &values)),
                EnvSource::Field(path) => fields.get(path).cloned(),
                EnvSource::ConfigMapKey { key, .. } => config.get(key).cloned(),
            };
            if let Some(value) = value {
                values.insert(name.clone(), value);
            }
        }
        values
    }
}

/// Kubernetes' `$(VAR)` expansion in command, args and env values.
#[must_use]
pub fn expand(text: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(close) = after.strip_prefix('(').and_then(|inner| inner.find(')')) {
            let name = &after[1..=close];
            if let Some(value) = values.get(name) {
                out.push_str(value);
            } else {
                out.push_str("$(");
                out.push_str(name);
                out.push(')');
            }
            rest = &after[close + 2..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The `DaemonSet` `pod-net` in namespace `pod-net`.
pub fn daemonset(documents: &[Value]) -> Result<&Value> {
    let found = find(documents, "DaemonSet", "pod-net")?;
    if found["metadata"]["namespace"] != "pod-net" {
        bail!("the DaemonSet is not in namespace pod-net");
    }
    Ok(found)
}

/// The agent container (`pod-net`) of the manifest at [`manifest_path`].
pub fn agent_container() -> Result<Container> {
    pod_container(&documents(&manifest_path())?, "containers", "pod-net")
}

/// The init container that installs `pod-net-cni`.
pub fn install_cni_container() -> Result<Container> {
    pod_container(
        &documents(&manifest_path())?,
        "initContainers",
        "install-cni-plugin",
    )
}

/// A container of the `DaemonSet`'s pod template by list and name.
pub fn pod_container(documents: &[Value], list: &str, name: &str) -> Result<Container> {
    let spec = daemonset(documents)?["spec"]["template"]["spec"][list]
        .as_array()
        .with_context(|| format!("the DaemonSet has no {list}"))?
        .iter()
        .find(|container| container["name"] == name)
        .with_context(|| format!("the DaemonSet has no {list} entry named {name}"))?;
    Container::parse(spec)
}

/// The `ConfigMap` `pod-net-cfg`'s data, by key.
pub fn config_data(documents: &[Value]) -> Result<BTreeMap<String, String>> {
    let data = find(documents, "ConfigMap", "pod-net-cfg")?["data"]
        .as_object()
        .context("the ConfigMap has no data")?;
    Ok(data
        .iter()
        .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_is_kubernetes_own() {
        let values: BTreeMap<String, String> = [("A".to_owned(), "x".to_owned())].into();
        assert_eq!(expand("--n=$(A)", &values), "--n=x");
        assert_eq!(expand("$(A)$(A)", &values), "xx");
        assert_eq!(expand("$(B)", &values), "$(B)");
        assert_eq!(expand("$$(A)", &values), "$(A)");
        assert_eq!(expand("cost $5", &values), "cost $5");
        assert_eq!(expand("$(unclosed", &values), "$(unclosed");
    }
}
