use std::sync::Arc;

use super::*;
use crate::apiserver::admission::{Allocators, Ipv4Cidr, PortRange};
use crate::apiserver::registry::WriteOptions;
use crate::store::{Store, embedded::EmbeddedStore};

struct Fixture {
    registry: Registry,
    n1_uid: String,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let allocators = Allocators::new(
        store.clone(),
        Ipv4Cidr::parse("10.96.0.0/12").unwrap(),
        PortRange::parse("30000-32767").unwrap(),
    );
    let registry = Registry::new(store, allocators);
    let create = |plural: &str, ns: Option<&'static str>, obj: Value| {
        let info = resources::lookup(
            if plural == "leases" {
                "coordination.k8s.io"
            } else {
                ""
            },
            "v1",
            plural,
        )
        .unwrap();
        let registry = &registry;
        async move {
            registry
                .create(info, ns, obj, WriteOptions::default())
                .await
                .unwrap()
                .object
        }
    };
    for ns in ["app", NODE_LEASE_NAMESPACE] {
        create("namespaces", None, json!({"metadata": {"name": ns}})).await;
    }
    // The pods below run as `default`, which ServiceAccount admission wants to exist.
    create(
        "serviceaccounts",
        Some("app"),
        json!({"metadata": {"name": "default"}}),
    )
    .await;
    let n1 = create(
        "nodes",
        None,
        json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}},
            "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}}),
    )
    .await;
    create("nodes", None, json!({"metadata": {"name": "n2"}})).await;
    for (pod, node) in [("a", "n1"), ("b", "n2")] {
        create(
            "pods",
            Some("app"),
            json!({"metadata": {"name": pod, "labels": {"app": "x"}},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}}),
        )
        .await;
    }
    Fixture {
        registry,
        n1_uid: meta_str(&n1, "uid").unwrap().to_string(),
        _dir: dir,
    }
}

fn node_user(name: &str) -> UserInfo {
    UserInfo {
        name: format!("system:node:{name}"),
        uid: String::new(),
        groups: vec![nodeauthz::NODES_GROUP.into()],
        extra: Default::default(),
    }
}

fn request(
    plural: &str,
    ns: Option<&str>,
    name: Option<&str>,
    sub: Option<&str>,
) -> ResourceRequest {
    let group = if plural == "leases" {
        "coordination.k8s.io"
    } else {
        ""
    };
    ResourceRequest {
        info: resources::lookup(group, "v1", plural).unwrap(),
        namespace: ns.map(str::to_string),
        name: name.map(str::to_string),
        subresource: sub.map(str::to_string),
    }
}

/// Admit a write as node `node`: Ok, or the error's message.
async fn admit_as(
    f: &Fixture,
    node: &str,
    method: Method,
    r: &ResourceRequest,
    content_type: &str,
    body: &Value,
) -> Result<(), String> {
    let body = serde_json::to_vec(body).unwrap();
    let write = Write {
        method: &method,
        request: r,
        content_type: Some(content_type),
        body: &body,
    };
    admit(&f.registry, &node_user(node), &write)
        .await
        .map_err(|e| {
            assert_eq!(e.code, 403, "{}", e.message);
            e.message
        })
}

const JSON: &str = "application/json";
const MERGE: &str = "application/merge-patch+json";

#[tokio::test]
async fn a_node_writes_only_its_own_node() {
    let f = fixture().await;
    let n2 = request("nodes", None, Some("n2"), None);
    let patch = json!({"metadata": {"labels": {"mine": "1"}}});
    assert_eq!(
        admit_as(&f, "n1", Method::PATCH, &n2, MERGE, &patch).await,
        Err(r#"nodes "n2" is forbidden: node "n1" is not allowed to modify node "n2""#.into())
    );
    let n1 = request("nodes", None, Some("n1"), None);
    admit_as(&f, "n1", Method::PATCH, &n1, MERGE, &patch)
        .await
        .unwrap();
    let status = request("nodes", None, Some("n1"), Some("status"));
    admit_as(
        &f,
        "n1",
        Method::PATCH,
        &status,
        MERGE,
        &json!({"status": {"phase": "Running"}}),
    )
    .await
    .unwrap();
    assert_eq!(
        admit_as(
            &f,
            "n1",
            Method::PATCH,
            &n1,
            MERGE,
            &json!({"spec": {"taints": null}})
        )
        .await,
        Err(r#"nodes "n1" is forbidden: node "n1" is not allowed to modify taints"#.into())
    );
    let restricted = json!({"metadata": {"labels": {
        "node-restriction.kubernetes.io/secure": "true",
        "node-role.kubernetes.io/master": "",
        "node.kubernetes.io/instance-type": "big",
        "example.com/free": "x"}}});
    assert_eq!(
        admit_as(&f, "n1", Method::PATCH, &n1, MERGE, &restricted).await,
        Err(r#"nodes "n1" is forbidden: is not allowed to modify labels: node-restriction.kubernetes.io/secure, node-role.kubernetes.io/master"#.into())
    );
    let node =
        |name: &str| json!({"metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}}});
    let nodes = request("nodes", None, None, None);
    admit_as(&f, "n3", Method::POST, &nodes, JSON, &node("n3"))
        .await
        .unwrap();
    assert_eq!(
        admit_as(&f, "n1", Method::POST, &nodes, JSON, &node("n3")).await,
        Err(r#"nodes "n3" is forbidden: node "n1" is not allowed to modify node "n3""#.into())
    );
    assert!(
        admit_as(&f, "n1", Method::DELETE, &n2, JSON, &json!({}))
            .await
            .is_err()
    );
    admit_as(&f, "n1", Method::DELETE, &n1, JSON, &json!({}))
        .await
        .unwrap();
}

#[tokio::test]
async fn pod_status_only_for_pods_bound_to_the_node() {
    let f = fixture().await;
    let status = |pod: &str| request("pods", Some("app"), Some(pod), Some("status"));
    let body = json!({"status": {"phase": "Running"}});
    admit_as(&f, "n1", Method::PATCH, &status("a"), MERGE, &body)
        .await
        .unwrap();
    assert_eq!(
        admit_as(&f, "n1", Method::PATCH, &status("b"), MERGE, &body).await,
        Err(r#"pods "b" is forbidden: node "n1" can only update pod status for pods with spec.nodeName set to itself"#.into())
    );
    assert_eq!(
        admit_as(
            &f,
            "n1",
            Method::PATCH,
            &status("a"),
            MERGE,
            &json!({"metadata": {"labels": {"app": "y"}}})
        )
        .await,
        Err(r#"pods "a" is forbidden: node "n1" cannot update labels through pod status"#.into())
    );
    // A pod that does not exist is the registry's 404, not a denial.
    admit_as(&f, "n1", Method::PATCH, &status("gone"), MERGE, &body)
        .await
        .unwrap();
    let pod = |name: &str| request("pods", Some("app"), Some(name), None);
    assert_eq!(
        admit_as(&f, "n1", Method::PATCH, &pod("a"), MERGE, &body).await,
        Err(r#"pods "a" is forbidden: unexpected operation "UPDATE", node "n1" can only create and delete mirror pods"#.into())
    );
    admit_as(&f, "n1", Method::DELETE, &pod("a"), JSON, &json!({}))
        .await
        .unwrap();
    assert_eq!(
        admit_as(&f, "n1", Method::DELETE, &pod("b"), JSON, &json!({})).await,
        Err(r#"pods "b" is forbidden: node "n1" can only delete pods with spec.nodeName set to itself"#.into())
    );
}

#[tokio::test]
async fn only_mirror_pods_of_the_node_referencing_nothing() {
    let f = fixture().await;
    let pods = request("pods", Some("app"), None, None);
    let mirror = |node: &str, uid: &str, spec_extra: Value| {
        let mut spec = json!({"nodeName": node, "containers": [{"name": "c", "image": "i"}]});
        for (k, v) in spec_extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        json!({"metadata": {"name": "static-n1",
                "annotations": {"kubernetes.io/config.mirror": "h"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "n1",
                    "uid": uid, "controller": true}]},
            "spec": spec})
    };
    let uid = f.n1_uid.clone();
    admit_as(
        &f,
        "n1",
        Method::POST,
        &pods,
        JSON,
        &mirror("n1", &uid, json!({})),
    )
    .await
    .unwrap();
    let plain = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1",
        "containers": [{"name": "c", "image": "i"}]}});
    assert_eq!(
        admit_as(&f, "n1", Method::POST, &pods, JSON, &plain).await,
        Err(r#"pods "p" is forbidden: pod does not have "kubernetes.io/config.mirror" annotation, node "n1" can only create mirror pods"#.into())
    );
    assert_eq!(
        admit_as(&f, "n1", Method::POST, &pods, JSON, &mirror("n2", &uid, json!({}))).await,
        Err(r#"pods "static-n1" is forbidden: node "n1" can only create pods with spec.nodeName set to itself"#.into())
    );
    assert_eq!(
        admit_as(
            &f,
            "n1",
            Method::POST,
            &pods,
            JSON,
            &mirror("n1", "other", json!({}))
        )
        .await,
        Err(format!(
            r#"pods "static-n1" is forbidden: node n1 UID mismatch: expected {uid} got other"#
        ))
    );
    let secret = json!({"volumes": [{"name": "s", "secret": {"secretName": "s"}}]});
    assert_eq!(
        admit_as(&f, "n1", Method::POST, &pods, JSON, &mirror("n1", &uid, secret)).await,
        Err(r#"pods "static-n1" is forbidden: node "n1" can not create pods that reference secrets"#.into())
    );
    let sa = json!({"serviceAccountName": "default"});
    assert_eq!(
        admit_as(&f, "n1", Method::POST, &pods, JSON, &mirror("n1", &uid, sa)).await,
        Err(r#"pods "static-n1" is forbidden: node "n1" can not create pods that reference a service account"#.into())
    );
    let cm = json!({"volumes": [{"name": "c", "configMap": {"name": "c"}}]});
    assert!(
        admit_as(&f, "n1", Method::POST, &pods, JSON, &mirror("n1", &uid, cm))
            .await
            .unwrap_err()
            .ends_with("can not create pods that reference configmaps")
    );
}

#[tokio::test]
async fn announcement_leases_held_only_by_the_writer() {
    let f = fixture().await;
    let leases = request("leases", Some("kube-system"), None, None);
    let lease = |name: &str, holder: Option<&str>| json!({"metadata": {"name": name}, "spec": {"holderIdentity": holder}});
    let name = "skiff-l2announce-app-web";
    admit_as(
        &f,
        "n1",
        Method::POST,
        &leases,
        JSON,
        &lease(name, Some("n1")),
    )
    .await
    .unwrap();
    // Letting it go (no holder) is fine too; handing it to another node is not.
    let named = request("leases", Some("kube-system"), Some(name), None);
    admit_as(&f, "n1", Method::PUT, &named, JSON, &lease(name, None))
        .await
        .unwrap();
    assert_eq!(
        admit_as(
            &f,
            "n1",
            Method::PUT,
            &named,
            JSON,
            &lease(name, Some("n2"))
        )
        .await,
        Err(format!(
            r#"leases.coordination.k8s.io "{name}" is forbidden: node "n1" can only hold an L2 announcement lease itself, not for "n2""#
        ))
    );
    assert_eq!(
        admit_as(&f, "n1", Method::POST, &leases, JSON, &lease("kube-scheduler", Some("n1"))).await,
        Err(r#"leases.coordination.k8s.io "kube-scheduler" is forbidden: can only access leases named skiff-l2announce-* in the "kube-system" namespace"#.into())
    );
}

#[tokio::test]
async fn leases_and_tokens_of_the_node_only() {
    let f = fixture().await;
    let leases = request("leases", Some(NODE_LEASE_NAMESPACE), None, None);
    let lease = |name: &str| json!({"metadata": {"name": name}, "spec": {}});
    admit_as(&f, "n1", Method::POST, &leases, JSON, &lease("n1"))
        .await
        .unwrap();
    assert_eq!(
        admit_as(&f, "n1", Method::POST, &leases, JSON, &lease("n2")).await,
        Err(r#"leases.coordination.k8s.io "n2" is forbidden: can only access node lease with the same name as the requesting node"#.into())
    );
    let elsewhere = request("leases", Some("app"), None, None);
    assert!(
        admit_as(&f, "n1", Method::POST, &elsewhere, JSON, &lease("n1"))
            .await
            .unwrap_err()
            .ends_with(r#"can only access leases in the "kube-node-lease" system namespace"#)
    );

    let pods = resources::lookup("", "v1", "pods").unwrap();
    let uid_of = |pod: Value| meta_str(&pod, "uid").unwrap().to_string();
    let a_uid = uid_of(f.registry.get(pods, Some("app"), "a").await.unwrap());
    let b_uid = uid_of(f.registry.get(pods, Some("app"), "b").await.unwrap());
    let token = request(
        "serviceaccounts",
        Some("app"),
        Some("default"),
        Some("token"),
    );
    let bound = |name: &str, uid: &str| {
        json!({"spec": {"audiences": [], "boundObjectRef":
            {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}}})
    };
    admit_as(&f, "n1", Method::POST, &token, JSON, &bound("a", &a_uid))
        .await
        .unwrap();
    assert_eq!(
        admit_as(&f, "n1", Method::POST, &token, JSON, &bound("b", &b_uid)).await,
        Err(r#"serviceaccounts "default" is forbidden: node requested token bound to a pod scheduled on a different node"#.into())
    );
    assert_eq!(
        admit_as(&f, "n1", Method::POST, &token, JSON, &json!({"spec": {}})).await,
        Err(
            r#"serviceaccounts "default" is forbidden: node requested token not bound to a pod"#
                .into()
        )
    );
    assert!(
        admit_as(&f, "n1", Method::POST, &token, JSON, &bound("a", "stale"))
            .await
            .unwrap_err()
            .contains("does not match the UID in record")
    );
}

#[tokio::test]
async fn other_users_and_reads_pass() {
    let f = fixture().await;
    let n2 = request("nodes", None, Some("n2"), None);
    let body = serde_json::to_vec(&json!({"spec": {"taints": null}})).unwrap();
    let admin = UserInfo {
        name: "system:node:n1".into(),
        uid: String::new(),
        groups: vec!["system:masters".into()],
        extra: Default::default(),
    };
    let write = Write {
        method: &Method::PATCH,
        request: &n2,
        content_type: Some(MERGE),
        body: &body,
    };
    admit(&f.registry, &admin, &write).await.unwrap();
    let read = Write {
        method: &Method::GET,
        ..write
    };
    admit(&f.registry, &node_user("n1"), &read).await.unwrap();
    let unnamed = Write {
        method: &Method::PATCH,
        ..read
    };
    let e = admit(&f.registry, &node_user(""), &unnamed)
        .await
        .unwrap_err();
    assert_eq!(
        e.message,
        r#"nodes "n2" is forbidden: could not determine node from user "system:node:""#
    );
}

#[test]
fn restricted_labels_are_kubes() {
    let keys = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    assert_eq!(
        forbidden_labels(&keys(&[
            "kubernetes.io/hostname",
            "kubernetes.io/os",
            "topology.kubernetes.io/zone",
            "kubelet.kubernetes.io/x",
            "a.node.kubernetes.io/y",
            "example.com/z",
            "plain",
            "node-restriction.kubernetes.io/a",
            "x.node-restriction.kubernetes.io/b",
            "k8s.io/c",
            "foo.k8s.io/d",
            "kubernetes.io/other",
            "notkubernetes.io/e",
        ])),
        keys(&[
            "node-restriction.kubernetes.io/a",
            "x.node-restriction.kubernetes.io/b",
            "k8s.io/c",
            "foo.k8s.io/d",
            "kubernetes.io/other",
        ])
    );
    let old = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
    let new = json!({"metadata": {"labels": {"a": "1", "b": "3", "c": "4"}}});
    assert_eq!(modified_labels(Some(&new), Some(&old)), keys(&["b", "c"]));
    assert_eq!(modified_labels(Some(&old), Some(&new)), keys(&["b", "c"]));
}
