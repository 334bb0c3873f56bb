use super::*;
use crate::store::embedded::EmbeddedStore;
use serde_json::json;

fn user(name: &str, groups: &[&str]) -> UserInfo {
    UserInfo {
        name: name.into(),
        uid: String::new(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        extra: Default::default(),
    }
}

fn req(verb: &str, group: &str, resource: &str, ns: &str, name: &str) -> Request {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    Request::Resource {
        verb: verb.into(),
        group: group.into(),
        resource: resource.into(),
        subresource: subresource.into(),
        name: name.into(),
        namespace: ns.into(),
    }
}

fn pod(name: &str, node: &str, secret: &str, config_map: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "app"},
        "spec": {
            "nodeName": node,
            "serviceAccountName": format!("sa-{name}"),
            "containers": [{"name": "c", "image": "i",
                "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": config_map, "key": "k"}}}]}],
            "volumes": [{"name": "s", "secret": {"secretName": secret}}]
        }
    }))
    .unwrap()
}

struct Fixture {
    authz: NodeAuthorizer,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    store
        .create("/registry/pods/app/a", pod("a", "n1", "sa", "ca"))
        .await
        .unwrap();
    store
        .create("/registry/pods/app/b", pod("b", "n2", "sb", "cb"))
        .await
        .unwrap();
    let authz = NodeAuthorizer::load(store.clone()).await.unwrap();
    Fixture {
        authz,
        store,
        _dir: dir,
    }
}

fn decide(f: &Fixture, node: &str, r: &Request) -> Decision {
    f.authz.decide(&format!("system:node:{node}"), node, r)
}

fn no_relationship(node: &str) -> Decision {
    no_opinion(format!(
        "no relationship found between node '{node}' and this object"
    ))
}

#[test]
fn only_node_users_are_nodes() {
    let n1 = user("system:node:n1", &[NODES_GROUP, "system:authenticated"]);
    assert_eq!(node_name(&n1), Some("n1"));
    assert_eq!(node_name(&user("system:node:n1", &["other"])), None);
    assert_eq!(node_name(&user("n1", &[NODES_GROUP])), None);
    assert_eq!(node_name(&user("system:node:", &[NODES_GROUP])), Some(""));
}

#[tokio::test]
async fn secrets_and_config_maps_only_of_pods_on_the_node() {
    let f = fixture().await;
    let get = |res: &str, name: &str| req("get", "", res, "app", name);
    assert_eq!(decide(&f, "n1", &get("secrets", "sa")), Decision::Allow);
    assert_eq!(decide(&f, "n1", &get("configmaps", "ca")), Decision::Allow);
    assert_eq!(
        decide(&f, "n1", &get("secrets", "sb")),
        no_relationship("n1")
    );
    assert_eq!(decide(&f, "n2", &get("secrets", "sb")), Decision::Allow);
    assert_eq!(
        decide(&f, "n1", &get("secrets", "unused")),
        no_relationship("n1")
    );
    // The same name in another namespace is another object.
    assert_eq!(
        decide(&f, "n1", &req("get", "", "secrets", "other", "sa")),
        no_relationship("n1")
    );
    assert_eq!(
        decide(&f, "n1", &req("list", "", "secrets", "app", "")),
        no_opinion("No Object name found")
    );
    assert_eq!(
        decide(&f, "n1", &req("update", "", "secrets", "app", "sa")),
        no_opinion("can only read resources of this type")
    );
    assert_eq!(
        decide(&f, "n1", &req("get", "", "secrets", "", "sa")),
        no_opinion("can only read namespaced object of this type")
    );
    assert_eq!(
        decide(&f, "", &get("secrets", "sa")),
        no_opinion("unknown node for user \"system:node:\"")
    );
}

#[tokio::test]
async fn tokens_only_for_service_accounts_of_pods_on_the_node() {
    let f = fixture().await;
    let token = |name: &str| req("create", "", "serviceaccounts/token", "app", name);
    assert_eq!(decide(&f, "n1", &token("sa-a")), Decision::Allow);
    assert_eq!(decide(&f, "n1", &token("sa-b")), no_relationship("n1"));
    assert_eq!(
        decide(&f, "n1", &req("get", "", "serviceaccounts", "app", "sa-a")),
        no_opinion("can only create tokens for individual service accounts")
    );
}

#[tokio::test]
async fn node_rules_decide_the_rest() {
    let f = fixture().await;
    let allowed = [
        req("get", "", "nodes", "", "n2"),
        req("patch", "", "nodes", "", "n2"),
        req("update", "", "nodes/status", "", "n1"),
        req("list", "", "pods", "", ""),
        req("watch", "", "pods", "app", ""),
        req("create", "", "pods", "app", ""),
        req("patch", "", "pods/status", "app", "b"),
        req("create", "", "events", "app", ""),
        req("list", "", "services", "", ""),
        req("get", "", "endpoints", "app", "x"),
        req(
            "create",
            "certificates.k8s.io",
            "certificatesigningrequests",
            "",
            "",
        ),
        req("create", "authentication.k8s.io", "tokenreviews", "", ""),
        req(
            "create",
            "authorization.k8s.io",
            "subjectaccessreviews",
            "",
            "",
        ),
        req(
            "get",
            "coordination.k8s.io",
            "leases",
            "kube-node-lease",
            "n1",
        ),
        req(
            "create",
            "coordination.k8s.io",
            "leases",
            "kube-node-lease",
            "",
        ),
    ];
    for r in &allowed {
        assert_eq!(decide(&f, "n1", r), Decision::Allow, "{r:?}");
    }
    let not_granted = [
        req("update", "", "pods", "app", "a"),
        req("delete", "", "nodes", "", "n1"),
        req("list", "", "namespaces", "", ""),
        req("get", "", "pods/log", "app", "a"),
        req("list", "apps", "deployments", "", ""),
        Request::NonResource {
            verb: "get".into(),
            path: "/metrics".into(),
        },
    ];
    for r in &not_granted {
        assert_eq!(decide(&f, "n1", r), no_opinion(""), "{r:?}");
    }
    assert_eq!(
        decide(
            &f,
            "n1",
            &req(
                "get",
                "coordination.k8s.io",
                "leases",
                "kube-node-lease",
                "n2"
            )
        ),
        no_opinion("can only access node lease with the same name as the requesting node")
    );
    assert_eq!(
        decide(
            &f,
            "n1",
            &req("get", "coordination.k8s.io", "leases", "default", "n1")
        ),
        no_opinion("can only access leases in the \"kube-node-lease\" system namespace")
    );
    // NodeRules grant get on PersistentVolumes, but only the graph decides them.
    assert_eq!(
        decide(&f, "n1", &req("get", "", "persistentvolumes", "", "pv1")),
        no_relationship("n1")
    );
}

#[tokio::test]
async fn the_graph_follows_pod_changes() {
    let f = fixture().await;
    let (stop, stopped) = signal::channel(false);
    let follow = f.authz.follow(stopped);
    let changes = async {
        let get = req("get", "", "secrets", "app", "sc");
        f.store
            .create("/registry/pods/app/c", pod("c", "n1", "sc", "cc"))
            .await
            .unwrap();
        wait_until(|| decide(&f, "n1", &get) == Decision::Allow).await;
        // Moved to n2 (a delete and re-create under the same key).
        f.store.delete("/registry/pods/app/c", None).await.unwrap();
        f.store
            .create("/registry/pods/app/c", pod("c", "n2", "sc", "cc"))
            .await
            .unwrap();
        wait_until(|| decide(&f, "n2", &get) == Decision::Allow).await;
        assert_eq!(decide(&f, "n1", &get), no_relationship("n1"));
        f.store.delete("/registry/pods/app/c", None).await.unwrap();
        wait_until(|| decide(&f, "n2", &get) != Decision::Allow).await;
        let _ = stop.send(true);
    };
    tokio::join!(follow, changes);
}

async fn wait_until(mut ok: impl FnMut() -> bool) {
    for _ in 0..200 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the graph did not catch up");
}

#[tokio::test]
async fn the_chain_adds_the_node_reason_to_rbacs_denial() {
    let f = fixture().await;
    let rbac = rbac::Authorizer::load(f.store.clone()).await.unwrap();
    let n1 = user("system:node:n1", &[NODES_GROUP, "system:authenticated"]);
    let get = |name: &str| req("get", "", "secrets", "app", name);
    assert!(authorize(&f.authz, &rbac, &n1, &get("sa")).is_ok());
    let e = authorize(&f.authz, &rbac, &n1, &get("sb")).unwrap_err();
    assert_eq!(e.code, 403);
    assert_eq!(
        e.message,
        "secrets \"sb\" is forbidden: User \"system:node:n1\" cannot get resource \"secrets\" in API group \"\" in the namespace \"app\": no relationship found between node 'n1' and this object"
    );
    // Not a node: RBAC alone, and its plain message.
    let other = user("system:node:n1", &["system:authenticated"]);
    let e = authorize(&f.authz, &rbac, &other, &get("sa")).unwrap_err();
    assert!(
        e.message.ends_with("in the namespace \"app\""),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn announcement_leases_for_every_node() {
    let f = fixture().await;
    // Any node may compete for any L2 announcement Lease, and touch no other in kube-system.
    for verb in ["get", "update", "patch"] {
        let r = req(
            verb,
            "coordination.k8s.io",
            "leases",
            "kube-system",
            "skiff-l2announce-default-web",
        );
        assert_eq!(decide(&f, "n1", &r), Decision::Allow, "{r:?}");
    }
    let create = req("create", "coordination.k8s.io", "leases", "kube-system", "");
    assert_eq!(decide(&f, "n1", &create), Decision::Allow);
    assert_eq!(
        decide(
            &f,
            "n1",
            &req(
                "update",
                "coordination.k8s.io",
                "leases",
                "kube-system",
                "kube-controller-manager"
            )
        ),
        no_opinion(
            "can only access leases named skiff-l2announce-* in the \"kube-system\" namespace"
        )
    );
    for verb in ["delete", "list", "watch"] {
        let r = req(
            verb,
            "coordination.k8s.io",
            "leases",
            "kube-system",
            "skiff-l2announce-default-web",
        );
        assert_eq!(
            decide(&f, "n1", &r),
            no_opinion("can only get, create, update, or patch an L2 announcement lease"),
            "{r:?}"
        );
    }
}
