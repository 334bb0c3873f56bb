//! The seeds' "talking to the API server from a pod" on a one-node cluster, with the real
//! kubectl: every pod gets its service account's token, the cluster CA and its namespace at
//! /var/run/secrets/kubernetes.io/serviceaccount (written atomically through `..data`) and
//! the `kubernetes` service in its environment; with that token it is forbidden to list
//! services in `foo` until a Role and RoleBinding allow it; a ClusterRole bound by a
//! RoleBinding grants in one namespace only (and nothing for cluster-scoped resources), by a
//! ClusterRoleBinding everywhere; `automountServiceAccountToken: false` mounts nothing; a pod
//! of a missing account is refused.
//!
//! The calls go out of the pod with `skiff-https-get` (in the test image), which verifies the
//! API server's certificate against the mounted `ca.crt` for the service IP or the service's
//! DNS names (`https://kubernetes.default/api`, resolved by the cluster DNS): busybox's wget
//! cannot handshake with the API server at all (see tests/src/https_get.c).

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use skiff_tests::cluster::{Cluster, ClusterOptions, skip_unless_root};
use skiff_tests::test_image::IMAGE;
use skiff_tests::wait_for;

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn pod(name: &str, extra_spec: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: foo}}
spec:
  terminationGracePeriodSeconds: 1
{extra_spec}  containers:
  - name: main
    image: {IMAGE}
    command: ["sleep", "3600"]
"#
    )
}

/// Run `script` with `sh -c` in the pod's container; (exit code, stdout, stderr).
fn sh(c: &Cluster, pod: &str, script: &str) -> Result<(i32, String, String)> {
    let out = c
        .pod_command_in("foo", pod, &["sh", "-c", script])?
        .stdin(std::process::Stdio::null())
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    ))
}

/// GET `path` from the API server inside `pod`, with the pod's token, verifying the server
/// against the mounted CA: (HTTP status, body).
fn api_get(c: &Cluster, pod: &str, path: &str) -> Result<(u16, String)> {
    api_get_at(
        c,
        pod,
        "$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT",
        path,
    )
}

/// As [`api_get`], from the server at `host` (a name is resolved through the cluster DNS
/// and must be one the serving certificate names).
fn api_get_at(c: &Cluster, pod: &str, host: &str, path: &str) -> Result<(u16, String)> {
    let script = format!(
        "skiff-https-get --cacert {SA_DIR}/ca.crt \
         --header \"Authorization: Bearer $(cat {SA_DIR}/token)\" \
         \"https://{host}{path}\""
    );
    let (code, out, err) = sh(c, pod, &script)?;
    let status = err
        .lines()
        .find_map(|l| l.strip_prefix("HTTP "))
        .and_then(|s| s.trim().parse().ok())
        .with_context(|| format!("GET {path} from {pod}: exit {code}, no status: {err}"))?;
    ensure!(
        (code == 0) == (200..300).contains(&status),
        "GET {path}: exit {code} for HTTP {status}"
    );
    Ok((status, out))
}

/// Wait until GET `path` from `pod` answers `want` (RBAC changes reach the authorizer
/// through a watch, a moment after kubectl returns).
fn expect_status(c: &Cluster, pod: &str, path: &str, want: u16) -> Result<String> {
    wait_for(
        &format!("GET {path} from {pod} to be {want}"),
        Duration::from_secs(20),
        || {
            let (status, body) = api_get(c, pod, path)?;
            Ok((status == want).then_some(body))
        },
    )
}

#[test]
fn service_account_credentials_in_pods() -> Result<()> {
    if skip_unless_root("service_account_credentials_in_pods") {
        return Ok(());
    }
    let c = Cluster::start(ClusterOptions {
        nodes: 1,
        ..Default::default()
    })?;
    let cluster_ca = std::fs::read_to_string(c.dir().join("control").join("ca.crt"))?;
    c.kubectl(&["create", "namespace", "foo"])?;
    c.kubectl(&["create", "namespace", "bar"])?;

    // The root-CA publisher's ConfigMap, in every namespace.
    let cm: Value = wait_for("kube-root-ca.crt in foo", Duration::from_secs(20), || {
        let out = c.kubectl(&[
            "get",
            "configmap",
            "kube-root-ca.crt",
            "-n",
            "foo",
            "-o",
            "json",
        ]);
        Ok(out.ok().map(|s| serde_json::from_str(&s)).transpose()?)
    })?;
    ensure!(cm["data"]["ca.crt"] == cluster_ca.as_str(), "{cm}");
    ensure!(
        cm["metadata"]["annotations"]["kubernetes.io/description"]
            .as_str()
            .is_some_and(|d| d.starts_with("Contains a CA bundle")),
        "{cm}"
    );

    // A pod of the default account: the projected volume, mounted read-only.
    c.kubectl_stdin(&["apply", "-f", "-"], &pod("client", ""))?;
    let spec: Value = serde_json::from_str(&c.kubectl(&[
        "get",
        "pod",
        "client",
        "-n",
        "foo",
        "-o",
        "jsonpath={.spec}",
    ])?)?;
    ensure!(spec["serviceAccountName"] == "default", "{spec}");
    let volume = &spec["volumes"][0];
    let vname = volume["name"].as_str().unwrap_or_default();
    ensure!(
        vname.len() == "kube-api-access-".len() + 5 && vname.starts_with("kube-api-access-"),
        "{volume}"
    );
    let sources = &volume["projected"]["sources"];
    ensure!(
        sources[0]["serviceAccountToken"]["expirationSeconds"] == 3607
            && sources[1]["configMap"]["name"] == "kube-root-ca.crt"
            && sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"]
                == "metadata.namespace"
            && volume["projected"]["defaultMode"] == 420,
        "{volume}"
    );
    let mount = &spec["containers"][0]["volumeMounts"][0];
    ensure!(
        mount["mountPath"] == SA_DIR && mount["readOnly"] == true && mount["name"] == vname,
        "{mount}"
    );
    c.wait_pod_running("foo", "client", Duration::from_secs(90))?;

    // The files, through the `..data` symlink of the atomic writer.
    let (_, ns, _) = sh(&c, "client", &format!("cat {SA_DIR}/namespace"))?;
    ensure!(ns == "foo", "namespace file: {ns:?}");
    let (_, ca, _) = sh(&c, "client", &format!("cat {SA_DIR}/ca.crt"))?;
    ensure!(ca == cluster_ca, "ca.crt is not the cluster CA");
    let (_, links, _) = sh(
        &c,
        "client",
        &format!("cd {SA_DIR} && for f in token ca.crt namespace ..data; do readlink $f; done"),
    )?;
    let links: Vec<&str> = links.lines().collect();
    ensure!(
        links.get(..3) == Some(&["..data/token", "..data/ca.crt", "..data/namespace"][..])
            && links.get(3).is_some_and(|l| l.starts_with("..20")),
        "{links:?}"
    );
    let (code, _, _) = sh(&c, "client", &format!("echo x > {SA_DIR}/token"))?;
    ensure!(code != 0, "the service-account volume is writable");

    // The apiserver's service in the environment, as the kubelet sets it.
    let cluster_ip = c.kubectl(&[
        "get",
        "service",
        "kubernetes",
        "-n",
        "default",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    let (_, env, _) = sh(&c, "client", "env")?;
    for want in [
        format!("KUBERNETES_SERVICE_HOST={cluster_ip}"),
        "KUBERNETES_SERVICE_PORT=443".to_string(),
        "KUBERNETES_SERVICE_PORT_HTTPS=443".to_string(),
        format!("KUBERNETES_PORT=tcp://{cluster_ip}:443"),
        format!("KUBERNETES_PORT_443_TCP=tcp://{cluster_ip}:443"),
        "KUBERNETES_PORT_443_TCP_PROTO=tcp".to_string(),
        "KUBERNETES_PORT_443_TCP_PORT=443".to_string(),
        format!("KUBERNETES_PORT_443_TCP_ADDR={cluster_ip}"),
    ] {
        ensure!(
            env.lines().any(|l| l == want),
            "{want} missing from:\n{env}"
        );
    }

    // `curl https://kubernetes` of the seeds (whose pod is in `default`): from `foo`, by
    // every name of the service that reaches `default`, found through the cluster DNS and
    // named by the serving certificate, the token's discovery answer.
    for host in [
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ] {
        let (status, body) = api_get_at(&c, "client", host, "/api")?;
        let versions: Value = serde_json::from_str(&body)
            .with_context(|| format!("GET https://{host}/api: {status} {body}"))?;
        ensure!(
            status == 200 && versions["kind"] == "APIVersions" && versions["versions"][0] == "v1",
            "GET https://{host}/api: {status} {body}"
        );
    }
    // A name the certificate does not carry is refused by the client, though it resolves
    // to the same address (the cluster DNS's `<a-b-c-d>.<ns>.pod` record).
    let pod_name = format!("{}.default.pod.cluster.local", cluster_ip.replace('.', "-"));
    let (code, _, err) = sh(
        &c,
        "client",
        &format!("skiff-https-get --cacert {SA_DIR}/ca.crt https://{pod_name}/api"),
    )?;
    ensure!(
        code == 1 && err.contains("TLS handshake failed"),
        "exit {code}: {err}"
    );

    // The seed: forbidden, then a Role and a RoleBinding, then a ServiceList.
    let body = expect_status(&c, "client", "/api/v1/namespaces/foo/services", 403)?;
    ensure!(
        body.contains(
            r#"User \"system:serviceaccount:foo:default\" cannot list resource \"services\" in API group \"\" in the namespace \"foo\""#
        ),
        "{body}"
    );
    c.kubectl(&[
        "create",
        "role",
        "service-reader",
        "--verb=get",
        "--verb=list",
        "--resource=services",
        "-n",
        "foo",
    ])?;
    c.kubectl(&[
        "create",
        "rolebinding",
        "test",
        "--role=service-reader",
        "--serviceaccount=foo:default",
        "-n",
        "foo",
    ])?;
    let list: Value = serde_json::from_str(&expect_status(
        &c,
        "client",
        "/api/v1/namespaces/foo/services",
        200,
    )?)?;
    ensure!(list["kind"] == "ServiceList", "{list}");

    // A ClusterRole bound by a RoleBinding: that namespace only, and no cluster-scoped
    // resources; bound by a ClusterRoleBinding: everywhere.
    c.kubectl(&[
        "create",
        "clusterrole",
        "pod-reader",
        "--verb=get",
        "--verb=list",
        "--resource=pods",
    ])?;
    c.kubectl(&[
        "create",
        "clusterrole",
        "node-reader",
        "--verb=get",
        "--verb=list",
        "--resource=nodes",
    ])?;
    c.kubectl(&[
        "create",
        "rolebinding",
        "pods",
        "--clusterrole=pod-reader",
        "--serviceaccount=foo:default",
        "-n",
        "foo",
    ])?;
    c.kubectl(&[
        "create",
        "rolebinding",
        "nodes",
        "--clusterrole=node-reader",
        "--serviceaccount=foo:default",
        "-n",
        "foo",
    ])?;
    expect_status(&c, "client", "/api/v1/namespaces/foo/pods", 200)?;
    expect_status(&c, "client", "/api/v1/namespaces/bar/pods", 403)?;
    expect_status(&c, "client", "/api/v1/pods", 403)?;
    expect_status(&c, "client", "/api/v1/nodes", 403)?;
    c.kubectl(&[
        "create",
        "clusterrolebinding",
        "foo-pod-reader",
        "--clusterrole=pod-reader",
        "--serviceaccount=foo:default",
    ])?;
    expect_status(&c, "client", "/api/v1/namespaces/bar/pods", 200)?;
    expect_status(&c, "client", "/api/v1/pods", 200)?;
    c.kubectl(&["delete", "clusterrolebinding", "foo-pod-reader"])?;
    c.kubectl(&["delete", "clusterrole", "pod-reader", "node-reader"])?;

    // automountServiceAccountToken: false mounts nothing.
    c.kubectl_stdin(
        &["apply", "-f", "-"],
        &pod("no-token", "  automountServiceAccountToken: false\n"),
    )?;
    let volumes = c.kubectl(&[
        "get",
        "pod",
        "no-token",
        "-n",
        "foo",
        "-o",
        "jsonpath={.spec.volumes}",
    ])?;
    ensure!(volumes.is_empty(), "volumes: {volumes}");
    c.wait_pod_running("foo", "no-token", Duration::from_secs(90))?;
    let (code, _, _) = sh(&c, "no-token", &format!("ls {SA_DIR}"))?;
    ensure!(code != 0, "{SA_DIR} exists without automount");

    // A pod of an account that does not exist is refused.
    let err = c
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &pod("lost", "  serviceAccountName: nope\n"),
        )
        .expect_err("a pod of a missing service account was admitted")
        .to_string();
    ensure!(
        err.contains(
            r#"pods "lost" is forbidden: error looking up service account foo/nope: serviceaccount "nope" not found"#
        ),
        "{err}"
    );

    c.kubectl(&["delete", "namespace", "foo", "bar", "--wait=false"])?;
    Ok(())
}
