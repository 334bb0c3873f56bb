//! The node agent's HTTPS API (the kubelet's port) authorizes every client by
//! SubjectAccessReview, as a kubelet in webhook mode: `kubectl logs` works through the API
//! server, whose kubelet client is bound to `system:kubelet-api-admin` (and is refused with
//! kube's message while that binding has no subjects); a user with a
//! certificate of the cluster CA but without `nodes/proxy` gets the kubelet's 403; a user
//! granted `get` on `nodes/proxy` by a ClusterRole reads the logs directly.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use skiff_tests::cluster::{AGENT_PORT, Cluster, ClusterOptions, skip_unless_root};
use skiff_tests::wait_for;

const NS: &str = "agent-api";

/// `GET path` straight to the agent at `ip`, presenting the client certificate of
/// `kubeconfig`: the status code and the body.
async fn agent_get(kubeconfig: &Path, ip: &str, path: &str) -> Result<(u16, String)> {
    agent_request(kubeconfig, ip, "GET", path).await
}

async fn agent_request(
    kubeconfig: &Path,
    ip: &str,
    method: &str,
    path: &str,
) -> Result<(u16, String)> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("loading the user kubeconfig")?;
    config.cluster_url = format!("https://{ip}:{AGENT_PORT}").parse()?;
    // The agent serves a self-signed certificate, as a kubelet without --tls-cert-file.
    config.accept_invalid_certs = true;
    config.root_cert = None;
    let client = kube::Client::try_from(config)?;
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .body(kube::client::Body::empty())?;
    let resp = client.send(req).await?;
    let code = resp.status().as_u16();
    let body = resp.into_body().collect_bytes().await?;
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

#[test]
fn agent_api_authorizes_by_subject_access_review() -> Result<()> {
    if skip_unless_root("agent_api_authorizes_by_subject_access_review") {
        return Ok(());
    }
    let c = Cluster::start(ClusterOptions {
        nodes: 1,
        ..Default::default()
    })?;
    let node = c.nodes()[0].clone();
    let ip = c.node_ip(&node);
    c.kubectl(&["create", "namespace", NS])?;
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: talker, namespace: {NS}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: talk
    image: skiff.test/busybox:1
    command: ["sh", "-c", "echo hello from talker; exec sleep 3600"]
"#
    ))?;

    // Through the API server: its kubelet client is authorized by the agent, by the default
    // binding to system:kubelet-api-admin. Without that binding the agent refuses it, and
    // kubectl shows kube's message for it.
    c.wait_pod_running(NS, "talker", Duration::from_secs(90))?;
    let binding = "system:kube-apiserver-kubelet-client";
    c.kubectl(&[
        "patch",
        "clusterrolebinding",
        binding,
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/subjects"}]"#,
    ])?;
    let refused = c
        .kubectl_command()?
        .args(["logs", "-n", NS, "talker"])
        .output()?;
    assert!(!refused.status.success());
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr).trim(),
        "Error from server (Forbidden): Forbidden (user=kube-apiserver-kubelet-client, verb=get, resource=nodes, subresource=proxy) ( pods/log talker)"
    );
    c.kubectl(&[
        "patch",
        "clusterrolebinding",
        binding,
        "--type=merge",
        "-p",
        r#"{"subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "kube-apiserver-kubelet-client"}]}"#,
    ])?;
    // The agent keeps a denial 30 s.
    wait_for("kubectl logs talker", Duration::from_secs(90), || {
        let logs = c.kubectl(&["logs", "-n", NS, "talker"]).unwrap_or_default();
        Ok(logs.contains("hello from talker").then_some(()))
    })?;

    // Straight to the agent with certificates of the cluster CA.
    let eve = c.user_kubeconfig("eve")?;
    let ops = c.user_kubeconfig("ops")?;
    c.apply(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: agent-api-test-proxy}
rules:
- apiGroups: [""]
  resources: ["nodes/proxy"]
  verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: agent-api-test-proxy}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: agent-api-test-proxy}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: ops}
"#,
    )?;
    let logs_path = format!("/containerLogs/{NS}/talker/talk");
    let rt = tokio::runtime::Runtime::new()?;
    let (code, body) = rt.block_on(agent_get(&eve, &ip, &logs_path))?;
    assert_eq!(
        (code, body.as_str()),
        (
            403,
            "Forbidden (user=eve, verb=get, resource=nodes, subresource=proxy)"
        )
    );
    let (code, body) = rt.block_on(agent_get(&eve, &ip, "/healthz"))?;
    assert_eq!(
        (code, body.as_str()),
        (
            403,
            "Forbidden (user=eve, verb=get, resource=nodes, subresource=proxy)"
        )
    );
    let (code, body) = rt.block_on(agent_get(&ops, &ip, &logs_path))?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("hello from talker"), "{body}");
    // `get` on nodes/proxy is not `create`.
    let (code, body) = rt.block_on(agent_request(&ops, &ip, "POST", &logs_path))?;
    assert_eq!(
        (code, body.as_str()),
        (
            403,
            "Forbidden (user=ops, verb=create, resource=nodes, subresource=proxy)"
        )
    );

    c.kubectl(&["delete", "clusterrolebinding", "agent-api-test-proxy"])?;
    c.kubectl(&["delete", "clusterrole", "agent-api-test-proxy"])?;
    c.kubectl(&["delete", "namespace", NS, "--wait=false"])?;
    Ok(())
}
