//! The Kubernetes deployment: the manifest says what docs/kubernetes.md
//! says it does, and the image `cargo xtask image` builds imports into
//! containerd and podman and runs there.
use std::collections::BTreeMap;

use pod_net_tests::{
    deploy::{
        self, EnvSource, agent_container, config_data, daemonset, documents, find,
        install_cni_container, manifest_path,
    },
    require_root,
    runtimes::{Podman, PrivateContainerd, ScratchDir, image_archive},
};
use serde_json::{Value, json};

fn manifest() -> Vec<Value> {
    documents(&manifest_path()).unwrap()
}

fn pod_spec(docs: &[Value]) -> &Value {
    &daemonset(docs).unwrap()["spec"]["template"]["spec"]
}

#[test]
fn the_manifest_holds_exactly_the_expected_objects() {
    let docs = manifest();
    let kinds: Vec<(&str, &str)> = docs
        .iter()
        .map(|doc| {
            (
                doc["kind"].as_str().unwrap(),
                doc["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("Namespace", "pod-net"),
            ("ServiceAccount", "pod-net"),
            ("ClusterRole", "pod-net"),
            ("ClusterRoleBinding", "pod-net"),
            ("ConfigMap", "pod-net-cfg"),
            ("DaemonSet", "pod-net"),
        ]
    );
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap();
        let namespaced = !matches!(kind, "Namespace" | "ClusterRole" | "ClusterRoleBinding");
        assert_eq!(
            doc["metadata"]["namespace"] == "pod-net",
            namespaced,
            "{kind}'s namespace"
        );
    }
    assert_eq!(
        find(&docs, "Namespace", "pod-net").unwrap()["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
}

#[test]
fn rbac_is_the_least_the_agent_needs() {
    let docs = manifest();
    assert_eq!(
        find(&docs, "ClusterRole", "pod-net").unwrap()["rules"],
        json!([
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
        ])
    );
    let binding = find(&docs, "ClusterRoleBinding", "pod-net").unwrap();
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "pod-net"})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "pod-net", "namespace": "pod-net"}])
    );
    assert_eq!(pod_spec(&docs)["serviceAccountName"], "pod-net");
}

#[test]
fn the_config_map_is_flannels_net_conf() {
    let data = config_data(&manifest()).unwrap();
    let net_conf: Value = serde_json::from_str(&data["net-conf.json"]).unwrap();
    assert_eq!(
        net_conf,
        json!({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}})
    );
    assert_eq!(data["iface"], "eth0");
    let volume = pod_spec(&manifest())["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|volume| volume["name"] == "net-conf")
        .cloned()
        .unwrap();
    assert_eq!(
        volume["configMap"],
        json!({"name": "pod-net-cfg", "items": [{"key": "net-conf.json", "path": "net-conf.json"}]})
    );
}

#[test]
fn the_daemonset_runs_on_every_node_in_the_host_network() {
    let docs = manifest();
    let daemonset = daemonset(&docs).unwrap();
    assert_eq!(
        daemonset["spec"]["selector"]["matchLabels"],
        daemonset["spec"]["template"]["metadata"]["labels"]
    );
    assert_eq!(
        daemonset["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
    );
    let spec = pod_spec(&docs);
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert_eq!(spec["tolerations"], json!([{"operator": "Exists"}]));
    assert_eq!(spec["nodeSelector"], json!({"kubernetes.io/os": "linux"}));
    assert_eq!(spec["terminationGracePeriodSeconds"], 10);
    for list in ["initContainers", "containers"] {
        for container in spec[list].as_array().unwrap() {
            assert_eq!(container["image"], "pod-net:dev");
            assert_eq!(container["imagePullPolicy"], "IfNotPresent");
        }
    }
}

#[test]
fn the_agent_container_runs_the_kube_agent() {
    let agent = agent_container().unwrap();
    assert_eq!(agent.command, ["/usr/local/bin/pod-net"]);
    assert_eq!(
        agent.args,
        [
            "agent",
            "--kube-subnet-mgr",
            "--iface=$(POD_NET_IFACE)",
            "--net-config-path=/etc/kube-flannel/net-conf.json",
            "--subnet-file=/run/pod-net/subnet.env",
            "--cni-conflist=/etc/cni/net.d/10-pod-net.conflist",
            "--metrics-addr=127.0.0.1:9565",
        ]
    );
    assert_eq!(
        agent.env,
        [
            (
                "NODE_NAME".to_owned(),
                EnvSource::Field("spec.nodeName".to_owned())
            ),
            (
                "POD_NET_IFACE".to_owned(),
                EnvSource::ConfigMapKey {
                    name: "pod-net-cfg".to_owned(),
                    key: "iface".to_owned()
                }
            ),
        ]
    );
    // What the kubelet would run on node-1.
    let fields = BTreeMap::from([("spec.nodeName".to_owned(), "node-1".to_owned())]);
    let env = agent.environment(&fields, &config_data(&manifest()).unwrap());
    assert_eq!(env["NODE_NAME"], "node-1");
    assert_eq!(agent.argv(&env)[3], "--iface=eth0");

    assert_eq!(agent.spec["securityContext"], json!({"privileged": true}));
    assert_eq!(
        agent.spec["readinessProbe"]["exec"]["command"],
        json!(["/usr/local/bin/pod-net", "status"])
    );
    assert_eq!(
        agent.spec["livenessProbe"]["httpGet"],
        json!({"host": "127.0.0.1", "port": 9565, "path": "/metrics"})
    );
    assert_eq!(
        agent.spec["resources"],
        json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}})
    );
}

#[test]
fn the_pins_and_files_are_the_hosts() {
    let docs = manifest();
    let spec = pod_spec(&docs);
    let agent = agent_container().unwrap();
    assert_eq!(
        agent.spec["volumeMounts"],
        json!([
            {"name": "bpffs", "mountPath": "/sys/fs/bpf", "mountPropagation": "Bidirectional"},
            {"name": "run", "mountPath": "/run/pod-net"},
            {"name": "cni-conf", "mountPath": "/etc/cni/net.d"},
            {"name": "net-conf", "mountPath": "/etc/kube-flannel", "readOnly": true},
        ])
    );
    let host_path = |name: &str| -> Value {
        spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|volume| volume["name"] == name)
            .map(|volume| volume["hostPath"].clone())
            .unwrap()
    };
    assert_eq!(
        host_path("bpffs"),
        json!({"path": "/sys/fs/bpf", "type": "Directory"})
    );
    assert_eq!(
        host_path("run"),
        json!({"path": "/run/pod-net", "type": "DirectoryOrCreate"})
    );
    assert_eq!(
        host_path("cni-conf"),
        json!({"path": "/etc/cni/net.d", "type": "DirectoryOrCreate"})
    );
    assert_eq!(
        host_path("cni-bin"),
        json!({"path": "/opt/cni/bin", "type": "DirectoryOrCreate"})
    );
}

#[test]
fn the_init_container_installs_the_plugin_unprivileged() {
    let init = install_cni_container().unwrap();
    assert_eq!(init.command, ["/bin/sh", "-c"]);
    assert_eq!(
        init.args,
        [
            "set -e; cp /usr/local/bin/pod-net-cni /host/opt/cni/bin/.pod-net-cni.new; \
          mv -f /host/opt/cni/bin/.pod-net-cni.new /host/opt/cni/bin/pod-net-cni"
        ]
    );
    assert_eq!(
        init.spec["securityContext"],
        json!({
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        })
    );
    assert_eq!(
        init.spec["volumeMounts"],
        json!([{"name": "cni-bin", "mountPath": "/host/opt/cni/bin"}])
    );
}

#[test]
fn the_kustomization_applies_the_manifest() {
    let path = deploy::workspace_root().join("deploy/kubernetes/kustomization.yaml");
    let docs = documents(&path).unwrap();
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["kind"], "Kustomization");
    assert_eq!(docs[0]["resources"], json!(["pod-net.yaml"]));
}

/// The archive imports into a containerd of the test's own, under the name
/// the manifest's `image: pod-net:dev` resolves to, and runs there.
#[test]
fn the_image_imports_into_containerd_and_runs() {
    require_root!();
    let dir = ScratchDir::new("image-containerd").unwrap();
    let archive = image_archive().unwrap();
    let containerd = PrivateContainerd::start(&dir.path().join("containerd")).unwrap();

    let imported = containerd.import(&archive).unwrap();
    assert!(
        imported.contains("docker.io/library/pod-net:dev"),
        "{imported}"
    );
    let listed =
        pod_net_tests::cmd::run_command(&mut containerd.ctr(&["images", "ls", "-q"])).unwrap();
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        ["docker.io/library/pod-net:dev"]
    );

    let version = containerd
        .run(
            "docker.io/library/pod-net:dev",
            "pod-net-version",
            &["pod-net", "--version"],
        )
        .unwrap();
    assert_eq!(
        version.trim(),
        format!("pod-net {}", env!("CARGO_PKG_VERSION"))
    );
}

/// `podman load` takes the archive; the image runs `pod-net --version`, and
/// the manifest's own init command installs `pod-net-cni` into a host
/// directory with every capability dropped.
#[test]
fn the_image_loads_into_podman_and_installs_the_plugin() {
    require_root!();
    let dir = ScratchDir::new("image-podman").unwrap();
    let archive = image_archive().unwrap();
    let podman = Podman::new(&dir.path().join("podman"));

    let loaded = podman.load(&archive).unwrap();
    assert!(
        loaded.contains("Loaded image: docker.io/library/pod-net:dev"),
        "{loaded}"
    );
    let mut run = podman.command(&["run", "--rm", "--network", "none"]);
    run.args(Podman::RUN_LIMITS)
        .args(["pod-net:dev", "pod-net", "--version"]);
    let version = pod_net_tests::cmd::run_command(&mut run).unwrap();
    assert_eq!(
        version.trim(),
        format!("pod-net {}", env!("CARGO_PKG_VERSION"))
    );

    let host_bin = dir.path().join("opt-cni-bin");
    std::fs::create_dir_all(&host_bin).unwrap();
    let init = install_cni_container().unwrap();
    let volume = format!("{}:/host/opt/cni/bin", host_bin.display());
    let mut install = podman.command(&["run", "--rm", "--network", "none"]);
    install
        .args(Podman::RUN_LIMITS)
        .args(["--cap-drop", "ALL", "--read-only", "--security-opt"])
        .args(["no-new-privileges", "--volume", &volume])
        .args(["--entrypoint", &init.command[0], "pod-net:dev"])
        .args(&init.command[1..])
        .args(&init.args);
    pod_net_tests::cmd::run_command(&mut install).unwrap();
    let installed = host_bin.join("pod-net-cni");
    let names: Vec<_> = std::fs::read_dir(&host_bin)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["pod-net-cni"], "no staging file is left behind");
    // The installed plugin is the static one and answers CNI's VERSION.
    let output = std::process::Command::new(&installed)
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let versions: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        versions["supportedVersions"].as_array().is_some(),
        "{versions}"
    );
}

/// A network namespace of the test's own, with a veth pair inside it as an
/// underlay, and a process holding it (podman joins it by that process's
/// `/proc/PID/ns/net`, as its `/run` is private). Removed on drop.
struct UnderlayNamespace {
    name: String,
    holder: std::process::Child,
}

impl UnderlayNamespace {
    const NODE_IP: &str = "192.168.101.1";

    fn new() -> Self {
        let name = format!("pndimg-{}", std::process::id());
        let _ = run("ip", &["netns", "del", &name]);
        run("ip", &["netns", "add", &name]).unwrap();
        let netns = format!("/run/netns/{name}");
        for args in [
            &[
                "ip", "link", "add", "pndimg0", "type", "veth", "peer", "name", "pndimg1",
            ][..],
            &["ip", "addr", "add", "192.168.101.1/24", "dev", "pndimg0"],
            &["ip", "link", "set", "pndimg0", "up"],
            &["ip", "link", "set", "pndimg1", "up"],
        ] {
            run(
                "nsenter",
                &[&[&*format!("--net={netns}")][..], args].concat(),
            )
            .unwrap();
        }
        let holder = std::process::Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .args(["sleep", "600"])
            .spawn()
            .unwrap();
        Self { name, holder }
    }

    fn podman_network(&self) -> String {
        format!("ns:/proc/{}/ns/net", self.holder.id())
    }

    /// `pod-net` of this build (the host's, not the image's) in the namespace.
    fn pod_net(&self, args: &[&str]) -> anyhow::Result<String> {
        let binary = pod_net_tests::rig::pod_net_binary();
        let mut command = std::process::Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.name))
            .arg(binary)
            .args(args);
        pod_net_tests::cmd::run_command(&mut command)
    }
}

impl Drop for UnderlayNamespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    pod_net_tests::cmd::run(program, args)
}

/// What a rolling update relies on, with the image: the datapath a
/// container loads stays on the host's bpffs after the container is gone
/// (its program still attached to the underlay), and the next container's
/// `load` replaces the programs in place.
#[test]
fn the_datapath_the_image_loads_outlives_its_container() {
    require_root!();
    let dir = ScratchDir::new("image-datapath").unwrap();
    let archive = image_archive().unwrap();
    let podman = Podman::new(&dir.path().join("podman"));
    podman.load(&archive).unwrap();
    let underlay = UnderlayNamespace::new();
    let pin_dir = format!("/sys/fs/bpf/pndimg-{}", std::process::id());
    let _ = underlay.pod_net(&["--pin-dir", &pin_dir, "unload"]);

    let network = underlay.podman_network();
    let in_container = |args: &[&str]| {
        let mut command = podman.command(&["run", "--rm", "--privileged"]);
        command
            .args(["--network", &network])
            .args(["--volume", "/sys/fs/bpf:/sys/fs/bpf"])
            .args(Podman::RUN_LIMITS)
            .args(["pod-net:dev", "pod-net", "--pin-dir", &pin_dir])
            .args(args);
        pod_net_tests::cmd::run_command(&mut command)
    };
    let load = [
        "load",
        "--underlay",
        "pndimg0",
        "--node-ip",
        UnderlayNamespace::NODE_IP,
    ];

    let first = in_container(&load).unwrap();
    assert!(
        first.contains(&format!("loaded the datapath at {pin_dir}")),
        "{first}"
    );
    let status = underlay.pod_net(&["--pin-dir", &pin_dir, "status", "--json"]);
    let unload = underlay.pod_net(&["--pin-dir", &pin_dir, "unload"]);
    let status: Value = serde_json::from_str(&status.unwrap()).unwrap();
    assert!(unload.is_ok(), "{unload:?}");
    assert_eq!(status["healthy"], true, "{status:#}");
    let underlay_ingress = status["programs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|program| program["name"] == "underlay_ingress")
        .unwrap();
    assert_eq!(underlay_ingress["attachments"], 1, "{status:#}");

    let first = in_container(&load).unwrap();
    let second = in_container(&load).unwrap();
    let unload = underlay.pod_net(&["--pin-dir", &pin_dir, "unload"]);
    assert!(first.contains("loaded the datapath"), "{first}");
    assert!(
        second.contains(&format!("replaced the datapath at {pin_dir} in place")),
        "{second}"
    );
    assert!(unload.is_ok(), "{unload:?}");
}
