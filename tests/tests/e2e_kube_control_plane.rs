//! The tests' Kubernetes control plane itself (`pod_net_tests::kube`): the
//! real kube-apiserver and kube-controller-manager v1.37.2 from setup's
//! Go builds, in a rig's switch namespace, reached over the underlay.
use std::{collections::BTreeSet, time::Instant};

use pod_net_tests::{
    Rig, RigSpec,
    kube::{ControlPlane, Options},
    peers::K8S_VERSION,
    require_root,
};

fn rig() -> Rig {
    Rig::build(&RigSpec {
        nodes: 3,
        pods_per_node: 0,
        ..RigSpec::default()
    })
    .unwrap()
}

/// pod-net's `DaemonSet` in miniature: host network, privileged.
const PRIVILEGED_DAEMONSET: &str = r"
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: pod-net
  namespace: kube-system
spec:
  selector:
    matchLabels: {app: pod-net}
  template:
    metadata:
      labels: {app: pod-net}
    spec:
      hostNetwork: true
      containers:
      - name: agent
        image: pod-net:dev
        args: [agent, --kube-subnet-mgr, --iface, eth0]
        securityContext:
          privileged: true
";

#[test]
fn control_plane_gives_three_nodes_distinct_pod_cidrs_and_takes_a_privileged_daemonset() {
    require_root!();
    let rig = rig();
    let started = Instant::now();
    let plane = ControlPlane::start(&rig).unwrap();
    eprintln!("control plane ready in {:?}", started.elapsed());

    // Both ends are the release setup built, stamped with its version.
    let version: serde_json::Value =
        serde_json::from_str(&plane.kubectl(&["version", "-o", "json"]).unwrap()).unwrap();
    assert_eq!(version["clientVersion"]["gitVersion"], K8S_VERSION);
    assert_eq!(version["serverVersion"]["gitVersion"], K8S_VERSION);

    let names = ["node-1", "node-2", "node-3"];
    for name in names {
        plane.register_node(name, &[]).unwrap();
    }
    let cidrs: Vec<String> = names
        .iter()
        .map(|name| plane.wait_pod_cidr(name).unwrap())
        .collect();
    eprintln!("pod CIDRs {cidrs:?} after {:?}", started.elapsed());
    // The first three /24s of 10.244.0.0/16, one each, in whatever order
    // the allocator took the nodes.
    assert_eq!(
        cidrs.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        BTreeSet::from(["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]),
    );
    for (name, cidr) in names.iter().zip(&cidrs) {
        let node = plane.node(name).unwrap();
        assert_eq!(node["spec"]["podCIDRs"], serde_json::json!([cidr]));
    }

    // A privileged host-network DaemonSet passes admission (server-side
    // dry run: validated and admitted, not stored).
    let output = plane
        .kubectl_stdin(
            &["apply", "--dry-run=server", "-f", "-"],
            PRIVILEGED_DAEMONSET,
        )
        .unwrap();
    assert_eq!(
        output.trim(),
        "daemonset.apps/pod-net created (server dry run)"
    );
    let stored = plane
        .kubectl(&["get", "daemonsets", "-n", "kube-system", "-o", "name"])
        .unwrap();
    assert_eq!(stored.trim(), "");
}

/// What a namespaced reader may do: read `ConfigMaps` in its namespace.
const READER_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: configmap-reader
  namespace: pod-net-rbac
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: configmap-reader
  namespace: pod-net-rbac
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: configmap-reader
subjects:
- kind: ServiceAccount
  name: reader
  namespace: pod-net-rbac
"#;

#[test]
fn limited_identities_get_their_rights_and_clear_refusals() {
    require_root!();
    let rig = rig();
    let plane = ControlPlane::start(&rig).unwrap();

    // A ServiceAccount token with READER_RBAC: allowed what it was given...
    let reader = plane
        .service_account_kubeconfig("pod-net-rbac", "reader", READER_RBAC)
        .unwrap();
    plane
        .kubectl(&[
            "create",
            "configmap",
            "net-conf",
            "-n",
            "pod-net-rbac",
            "--from-literal=net-conf.json={}",
        ])
        .unwrap();
    let allowed = plane
        .kubectl_output(
            &reader,
            &[
                "get",
                "configmap",
                "net-conf",
                "-n",
                "pod-net-rbac",
                "-o",
                "name",
            ],
        )
        .unwrap();
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&allowed.stdout).trim(),
        "configmap/net-conf"
    );
    // ...and refused the rest, saying who and what.
    let refused = plane.kubectl_output(&reader, &["get", "nodes"]).unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr).trim(),
        "Error from server (Forbidden): nodes is forbidden: User \
         \"system:serviceaccount:pod-net-rbac:reader\" cannot list resource \"nodes\" in API \
         group \"\" at the cluster scope"
    );

    // A node's own identity, used from inside rig node 1 over the
    // underlay: it may annotate its own Node, not another's.
    plane.register_node("node-a", &[]).unwrap();
    plane.register_node("node-b", &[]).unwrap();
    let node_a = plane.node_kubeconfig("node-a").unwrap();
    let own = plane
        .kubectl_in(
            rig.node(1),
            &node_a,
            &["annotate", "node", "node-a", "example.com/seen=yes"],
        )
        .unwrap();
    assert!(
        own.status.success(),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );
    assert_eq!(
        plane.node("node-a").unwrap()["metadata"]["annotations"]["example.com/seen"],
        "yes"
    );
    let other = plane
        .kubectl_in(
            rig.node(1),
            &node_a,
            &["annotate", "node", "node-b", "example.com/seen=yes"],
        )
        .unwrap();
    assert_eq!(other.status.code(), Some(1));
    // The Node authorizer: a node may read (and so change) its own Node only.
    assert_eq!(
        String::from_utf8_lossy(&other.stderr).trim(),
        "Error from server (Forbidden): nodes \"node-b\" is forbidden: User \"system:node:node-a\" \
         cannot get resource \"nodes\" in API group \"\" at the cluster scope: node: node 'node-a' \
         cannot read 'node-b', only its own Node object"
    );
    assert!(
        plane.node("node-b").unwrap()["metadata"]["annotations"]
            .get("example.com/seen")
            .is_none()
    );
}

#[test]
fn apiserver_away_and_back_keeps_the_cluster_and_the_allocator_going() {
    require_root!();
    let rig = rig();
    let mut plane = ControlPlane::start_with(&rig, &Options::default()).unwrap();
    plane.register_node("before", &[]).unwrap();
    assert_eq!(plane.wait_pod_cidr("before").unwrap(), "10.244.0.0/24");

    let old_pid = plane.apiserver_pid().unwrap();
    plane.kill_apiserver();
    assert_eq!(plane.apiserver_pid(), None);
    let away = plane
        .kubectl_output(&plane.admin_kubeconfig(), &["get", "nodes"])
        .unwrap();
    assert!(!away.status.success());
    assert_eq!(
        String::from_utf8_lossy(&away.stderr).trim(),
        "The connection to the server 192.168.100.254:6443 was refused - did you specify the \
         right host or port?"
    );

    let back = plane.start_apiserver().unwrap();
    eprintln!("apiserver ready again in {back:?}");
    assert_ne!(plane.apiserver_pid(), Some(old_pid));
    // etcd kept the state; the controller-manager found the API again.
    assert_eq!(
        plane.pod_cidr("before").unwrap().as_deref(),
        Some("10.244.0.0/24")
    );
    plane.register_node("after", &[]).unwrap();
    assert_eq!(plane.wait_pod_cidr("after").unwrap(), "10.244.1.0/24");

    // Stopped in reverse start order, each within seconds.
    let stopped = plane.stop();
    let names: Vec<&str> = stopped.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        ["kube-controller-manager", "kube-apiserver", "kube-etcd"]
    );
    for (name, took) in &stopped {
        assert!(took.as_secs() < 10, "{name} took {took:?} to stop");
    }
}
