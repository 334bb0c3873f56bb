//! The Node authorizer and NodeRestriction end to end, as kube-apiserver runs them with
//! `--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction`: two node
//! credentials from `skiff-control kubeconfig` (`system:node:<name>` in `system:nodes`), pods
//! bound to each with a Secret and a ConfigMap, and real kubectl as each node. kubectl runs
//! blocking, so the tests run on a multi-threaded runtime.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;
use serde_json::{Value, json};

use skiff_control::apiserver::{ApiConfig, ApiServer};
use skiff_control::store::Store;
use skiff_control::store::embedded::EmbeddedStore;
use skiff_tests::Kubectl;

const NS: &str = "node-authz";

struct Cluster {
    server: Option<ApiServer>,
    admin: Client,
    dir: tempfile::TempDir,
    kubectl: Kubectl,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(&dir.path().join("store")).unwrap());
        let mut config = ApiConfig::new(dir.path().to_path_buf());
        config.secure_port = 0;
        let server = ApiServer::start(config, store).await.unwrap();
        let admin = common::client_for(&server.kubeconfig).await;
        Cluster {
            server: Some(server),
            admin,
            dir,
            kubectl: Kubectl::newest().unwrap(),
        }
    }

    /// A kubeconfig with a client certificate for node `name`, issued by `skiff-control
    /// kubeconfig` from the cluster CA.
    fn node_kubeconfig(&self, name: &str) -> PathBuf {
        let out = self.dir.path().join(format!("{name}.kubeconfig"));
        let issued = Command::new(env!("CARGO_BIN_EXE_skiff-control"))
            .args(["kubeconfig", "--user"])
            .arg(format!("system:node:{name}"))
            .args(["--group", "system:nodes", "--data-dir"])
            .arg(self.dir.path())
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            issued.status.success(),
            "{}",
            String::from_utf8_lossy(&issued.stderr)
        );
        out
    }

    fn kubectl(&self, kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
        let out = self
            .kubectl
            .command_with(kubeconfig, self.dir.path())
            .args(args)
            .output()
            .unwrap();
        common::stdout_or_stderr(out)
    }

    /// kubectl with `stdin` as its input.
    /// kubectl with `kubeconfig` must fail, `expected` in its error.
    fn refused(&self, kubeconfig: &Path, args: &[&str], expected: &str) {
        let err = self
            .kubectl(kubeconfig, args)
            .expect_err(&format!("kubectl {args:?} succeeded"));
        assert!(err.contains(expected), "kubectl {args:?}: {err}");
    }

    fn refused_stdin(&self, kubeconfig: &Path, args: &[&str], stdin: &str, expected: &str) {
        let err = self
            .kubectl_stdin(kubeconfig, args, stdin)
            .expect_err(&format!("kubectl {args:?} succeeded"));
        assert!(err.contains(expected), "kubectl {args:?}: {err}");
    }

    fn kubectl_stdin(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        stdin: &str,
    ) -> Result<String, String> {
        use std::io::Write;
        let mut child = self
            .kubectl
            .command_with(kubeconfig, self.dir.path())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        common::stdout_or_stderr(child.wait_with_output().unwrap())
    }

    async fn admin_create(&self, path: &str, body: Value) {
        let (code, out) = common::raw_request(
            &self.admin,
            "POST",
            path,
            "application/json",
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
        assert_eq!(code, 201, "POST {path}: {out}");
    }

    /// The namespace, the nodes, and for each node a pod using its own Secret and ConfigMap;
    /// plus a Secret no pod uses.
    async fn populate(&self) {
        self.admin_create("/api/v1/namespaces", json!({"metadata": {"name": NS}}))
            .await;
        self.admin_create(
            &format!("/api/v1/namespaces/{NS}/serviceaccounts"),
            json!({"metadata": {"name": "default"}}),
        )
        .await;
        for node in ["n1", "n2"] {
            self.admin_create(
                "/api/v1/nodes",
                json!({"metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}}}),
            )
            .await;
            self.admin_create(
                &format!("/api/v1/namespaces/{NS}/secrets"),
                json!({"metadata": {"name": format!("secret-{node}")}, "stringData": {"k": "v"}}),
            )
            .await;
            self.admin_create(
                &format!("/api/v1/namespaces/{NS}/configmaps"),
                json!({"metadata": {"name": format!("config-{node}")}, "data": {"k": "v"}}),
            )
            .await;
            self.admin_create(
                &format!("/api/v1/namespaces/{NS}/pods"),
                json!({"metadata": {"name": format!("pod-{node}")},
                    "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox",
                        "env": [{"name": "K", "valueFrom": {"configMapKeyRef":
                            {"name": format!("config-{node}"), "key": "k"}}}]}],
                        "volumes": [{"name": "s", "secret": {"secretName": format!("secret-{node}")}}]}}),
            )
            .await;
        }
        self.admin_create(
            &format!("/api/v1/namespaces/{NS}/secrets"),
            json!({"metadata": {"name": "unused"}, "stringData": {"k": "v"}}),
        )
        .await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            tokio::spawn(server.shutdown());
        }
    }
}

/// kubectl's line for kube's 403 to node `node` reading an object it has no pod for.
fn no_relationship(node: &str, resource: &str, name: &str) -> String {
    format!(
        "Error from server (Forbidden): {resource} \"{name}\" is forbidden: User \"system:node:{node}\" cannot get resource \"{resource}\" in API group \"\" in the namespace \"{NS}\": no relationship found between node '{node}' and this object"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_read_only_what_their_pods_use() {
    let c = Cluster::start().await;
    c.populate().await;
    let n1 = c.node_kubeconfig("n1");
    let n2 = c.node_kubeconfig("n2");

    // The graph follows the pods by a watch: allowed once it has seen them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let secret = loop {
        match c.kubectl(&n1, &["get", "secret", "secret-n1", "-n", NS, "-o", "json"]) {
            Ok(out) => break out,
            Err(e) if Instant::now() > deadline => panic!("n1 never read its pod's secret: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let secret: Value = serde_json::from_str(&secret).unwrap();
    assert_eq!(secret["data"]["k"], "dg==");
    c.kubectl(&n1, &["get", "configmap", "config-n1", "-n", NS])
        .unwrap();
    c.kubectl(&n2, &["get", "secret", "secret-n2", "-n", NS])
        .unwrap();

    let unrelated = [
        ("secret", "secrets", "secret-n2"),
        ("configmap", "configmaps", "config-n2"),
        ("secret", "secrets", "unused"),
    ];
    for (kind, resource, name) in unrelated {
        let expected = no_relationship("n1", resource, name);
        c.refused(&n1, &["get", kind, name, "-n", NS], &expected);
    }
    // Listing Secrets is no read of a pod's Secret.
    c.refused(&n1, &["get", "secrets", "-n", NS], "cannot list resource \"secrets\" in API group \"\" in the namespace \"node-authz\": No Object name found");

    // A list or watch pinned to one name (kubelet's way of following a Secret) is a read of
    // that object.
    let listed = c
        .kubectl(
            &n1,
            &[
                "get",
                "secrets",
                "-n",
                NS,
                "--field-selector",
                "metadata.name=secret-n1",
                "-o",
                "name",
            ],
        )
        .unwrap();
    assert_eq!(listed.trim(), "secret/secret-n1");
    c.refused(&n1, &["get", "secrets", "-n", NS, "--field-selector", "metadata.name=secret-n2"], "cannot list resource \"secrets\" in API group \"\" in the namespace \"node-authz\": no relationship found between node 'n1' and this object");

    // The exact Status a client gets.
    let node_client = common::client_for(&std::fs::read_to_string(&n1).unwrap()).await;
    let (code, status) = common::raw_request(
        &node_client,
        "GET",
        &format!("/api/v1/namespaces/{NS}/secrets/secret-n2"),
        "application/json",
        vec![],
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(
        status["details"],
        json!({"name": "secret-n2", "kind": "secrets"})
    );

    // A pod moving off the node takes its Secret along.
    let (code, _) = common::raw_request(
        &c.admin,
        "DELETE",
        &format!("/api/v1/namespaces/{NS}/pods/pod-n1?gracePeriodSeconds=0"),
        "application/json",
        vec![],
    )
    .await;
    assert_eq!(code, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.kubectl(&n1, &["get", "secret", "secret-n1", "-n", NS]) {
            Err(e) if e.contains(&no_relationship("n1", "secrets", "secret-n1")) => break,
            other if Instant::now() > deadline => panic!("still readable: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_write_only_their_own_objects() {
    let c = Cluster::start().await;
    c.populate().await;
    let n1 = c.node_kubeconfig("n1");

    // Nodes: its own, not another's.
    let label = r#"{"metadata":{"labels":{"example.com/rack":"r1"}}}"#;
    c.kubectl(&n1, &["patch", "node", "n1", "-p", label])
        .unwrap();
    c.refused(&n1, &["patch", "node", "n2", "-p", label], r#"Error from server (Forbidden): nodes "n2" is forbidden: node "n1" is not allowed to modify node "n2""#);
    c.refused(
        &n1,
        &[
            "label",
            "node",
            "n1",
            "node-restriction.kubernetes.io/trusted=yes",
        ],
        "is forbidden: is not allowed to modify labels: node-restriction.kubernetes.io/trusted",
    );
    c.refused(
        &n1,
        &["taint", "node", "n1", "dedicated=x:NoSchedule"],
        r#"nodes "n1" is forbidden: node "n1" is not allowed to modify taints"#,
    );

    // Pod status: of its own pods only. kubelet PATCHes it directly (kubectl's `patch
    // --subresource=status` would GET pods/status first, which NodeRules do not grant).
    let node_client = common::client_for(&std::fs::read_to_string(&n1).unwrap()).await;
    let patch_status = |pod: &str| {
        let path = format!("/api/v1/namespaces/{NS}/pods/{pod}/status");
        let body = br#"{"status":{"message":"seen by the node"}}"#.to_vec();
        let client = node_client.clone();
        async move {
            common::raw_request(
                &client,
                "PATCH",
                &path,
                "application/merge-patch+json",
                body,
            )
            .await
        }
    };
    let (code, pod) = patch_status("pod-n1").await;
    assert_eq!(
        (code, &pod["status"]["message"]),
        (200, &json!("seen by the node"))
    );
    let (code, status) = patch_status("pod-n2").await;
    assert_eq!(code, 403);
    assert_eq!(
        status["message"],
        r#"pods "pod-n2" is forbidden: node "n1" can only update pod status for pods with spec.nodeName set to itself"#
    );
    let (_, pod) = common::raw_request(
        &c.admin,
        "GET",
        &format!("/api/v1/namespaces/{NS}/pods/pod-n2"),
        "application/json",
        vec![],
    )
    .await;
    assert!(pod["status"].get("message").is_none(), "{pod}");

    // Pods: no ordinary pod, and no mirror pod for another node.
    let pod = |name: &str, node: &str, annotations: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {NS}\n{annotations}spec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: busybox\n"
        )
    };
    c.refused_stdin(&n1, &["create", "-f", "-"], &pod("plain", "n1", ""), r#"pods "plain" is forbidden: pod does not have "kubernetes.io/config.mirror" annotation, node "n1" can only create mirror pods"#);
    let mirror = "  annotations:\n    kubernetes.io/config.mirror: abc\n";
    c.refused_stdin(&n1, &["create", "-f", "-"], &pod("static", "n2", mirror), r#"pods "static" is forbidden: node "n1" can only create pods with spec.nodeName set to itself"#);
    // Deleting another node's pod.
    c.refused(&n1, &["delete", "pod", "pod-n2", "-n", NS, "--wait=false"], r#"pods "pod-n2" is forbidden: node "n1" can only delete pods with spec.nodeName set to itself"#);
    // Writes the NodeRules do not grant at all stay RBAC's plain 403.
    c.refused(&n1, &["create", "configmap", "x", "-n", NS], r#"configmaps is forbidden: User "system:node:n1" cannot create resource "configmaps" in API group "" in the namespace "node-authz""#);

    // Leases: its own, in kube-node-lease.
    let lease = |name: &str| {
        format!(
            "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: {name}\n  namespace: kube-node-lease\nspec:\n  holderIdentity: {name}\n"
        )
    };
    c.kubectl_stdin(&n1, &["create", "-f", "-"], &lease("n1"))
        .unwrap();
    c.refused_stdin(&n1, &["create", "-f", "-"], &lease("n2"), r#"leases.coordination.k8s.io "n2" is forbidden: can only access node lease with the same name as the requesting node"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_list_and_watch_pods_and_nodes() {
    let c = Cluster::start().await;
    c.populate().await;
    let n1 = c.node_kubeconfig("n1");
    let pods = c
        .kubectl(&n1, &["get", "pods", "-A", "-o", "name"])
        .unwrap();
    assert!(
        pods.contains("pod/pod-n1") && pods.contains("pod/pod-n2"),
        "{pods}"
    );
    let nodes = c.kubectl(&n1, &["get", "nodes", "-o", "name"]).unwrap();
    assert_eq!(nodes.lines().collect::<Vec<_>>(), ["node/n1", "node/n2"]);
    let node_client = common::client_for(&std::fs::read_to_string(&n1).unwrap()).await;
    let (code, _) = common::raw_request(
        &node_client,
        "GET",
        &format!("/api/v1/namespaces/{NS}/pods?watch=true&timeoutSeconds=1"),
        "application/json",
        vec![],
    )
    .await;
    assert_eq!(code, 200);
    // Namespaces are not a node's business.
    c.refused(
        &n1,
        &["get", "namespaces"],
        r#"User "system:node:n1" cannot list resource "namespaces""#,
    );
}
