//! RBAC end to end: static-token users from `--token-auth-file`, real kubectl for the seeds'
//! walkthrough, and the kube client for exact `Status` bodies.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Error};
use serde_json::json;

use common::client_for;
use common::token_users::TokenUsers;
use skiff_control::apiserver::{ApiConfig, ApiServer};
use skiff_control::store::Store;
use skiff_control::store::embedded::EmbeddedStore;
use skiff_tests::Kubectl;

/// token,user,uid,"groups" lines for the users of these tests.
const TOKENS: &str = "sa-token,system:serviceaccount:foo:default,u1,\"system:serviceaccounts,system:serviceaccounts:foo\"
alice-token,alice,u2
bob-token,bob,u3
carol-token,carol,u4
";

async fn start() -> TokenUsers {
    TokenUsers::start(Kubectl::newest().unwrap(), TOKENS).await
}

/// The `Status` of a refused call: (code, reason, message).
fn refused<T: std::fmt::Debug>(r: Result<T, Error>) -> (u16, String, String) {
    match r {
        Err(Error::Api(s)) => (s.code, s.reason, s.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn list_services(c: &Client, ns: &str) -> Result<usize, Error> {
    let api: Api<Service> = Api::namespaced(c.clone(), ns);
    api.list(&ListParams::default())
        .await
        .map(|l| l.items.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_walkthrough_role_and_rolebinding_with_kubectl() {
    seeds_walkthrough(Kubectl::newest().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_walkthrough_with_kubectl_1_20() {
    seeds_walkthrough(Kubectl::debian_120().unwrap()).await;
}

async fn seeds_walkthrough(kubectl: Kubectl) {
    let t = TokenUsers::start(kubectl, TOKENS).await;
    t.namespace("foo").await;
    let sa = t.client("sa-token").await;

    let (code, reason, message) = refused(list_services(&sa, "foo").await);
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        message,
        r#"services is forbidden: User "system:serviceaccount:foo:default" cannot list resource "services" in API group "" in the namespace "foo""#
    );
    let err = t
        .kubectl("sa-token", &["get", "services", "-n", "foo"])
        .unwrap_err();
    assert!(
        err.contains(&format!("Error from server (Forbidden): {message}")),
        "{err}"
    );

    let out = t.admin(&[
        "create",
        "role",
        "service-reader",
        "--verb=get",
        "--verb=list",
        "--resource=services",
        "-n",
        "foo",
    ]);
    assert_eq!(
        out.trim(),
        "role.rbac.authorization.k8s.io/service-reader created"
    );
    let out = t.admin(&[
        "create",
        "rolebinding",
        "test",
        "--role=service-reader",
        "--serviceaccount=foo:default",
        "-n",
        "foo",
    ]);
    assert_eq!(
        out.trim(),
        "rolebinding.rbac.authorization.k8s.io/test created"
    );

    // The kubernetes service lives in default: none in foo, but the list is allowed now.
    assert_eq!(list_services(&sa, "foo").await.unwrap(), 0);
    // Only in foo, and only get/list.
    let (code, _, message) = refused(list_services(&sa, "default").await);
    assert_eq!(code, 403);
    assert!(
        message.ends_with(r#"in the namespace "default""#),
        "{message}"
    );
    let watch = t.kubectl(
        "sa-token",
        &[
            "get",
            "services",
            "-n",
            "foo",
            "--watch",
            "--request-timeout=1s",
        ],
    );
    // kubectl 1.20 lists (allowed) and then reports the refused watch in its own words
    // (`Error from server (Forbidden): unknown (get services)`).
    let watch = watch.unwrap_err();
    assert!(
        watch.contains(r#"cannot watch resource "services""#)
            || (t.kubectl.minor == 20 && watch.contains("Error from server (Forbidden)")),
        "{watch}"
    );

    let table = t.admin(&["get", "roles,rolebindings", "-n", "foo", "-o", "wide"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].split_whitespace().eq(["NAME", "CREATED", "AT"]),
        "{table}"
    );
    assert!(
        lines[1].starts_with("role.rbac.authorization.k8s.io/service-reader"),
        "{table}"
    );
    let header = lines.iter().find(|l| l.contains("ROLE")).unwrap();
    assert!(
        header
            .split_whitespace()
            .eq(["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"]),
        "{table}"
    );
    let row = lines
        .iter()
        .find(|l| l.contains("rolebinding.rbac.authorization.k8s.io/test"))
        .unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], "Role/service-reader");
    assert_eq!(cells.last(), Some(&"foo/default"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_role_by_role_binding_grants_one_namespace_and_by_cluster_binding_all() {
    let t = start().await;
    t.namespace("foo").await;
    t.namespace("bar").await;
    let alice = t.client("alice-token").await;
    let pods = |ns: &str| Api::<Pod>::namespaced(alice.clone(), ns);

    t.admin(&[
        "create",
        "clusterrole",
        "pod-reader",
        "--verb=get,list",
        "--resource=pods",
    ]);
    t.admin(&[
        "create",
        "rolebinding",
        "alice-pods",
        "--clusterrole=pod-reader",
        "--user=alice",
        "-n",
        "foo",
    ]);
    assert!(pods("foo").list(&ListParams::default()).await.is_ok());
    let (code, _, message) = refused(pods("bar").list(&ListParams::default()).await);
    assert_eq!(code, 403);
    assert_eq!(
        message,
        r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "bar""#
    );
    let everywhere = Api::<Pod>::all(alice.clone());
    assert_eq!(
        refused(everywhere.list(&ListParams::default()).await).0,
        403
    );

    let out = t.admin(&[
        "create",
        "clusterrolebinding",
        "alice-pods-everywhere",
        "--clusterrole=pod-reader",
        "--user=alice",
    ]);
    assert_eq!(
        out.trim(),
        "clusterrolebinding.rbac.authorization.k8s.io/alice-pods-everywhere created"
    );
    assert!(pods("bar").list(&ListParams::default()).await.is_ok());
    assert!(everywhere.list(&ListParams::default()).await.is_ok());
    // get of one pod: the name is in the denial.
    let (code, _, message) = refused(pods("bar").delete("p", &Default::default()).await);
    assert_eq!(code, 403);
    assert_eq!(
        message,
        r#"pods "p" is forbidden: User "alice" cannot delete resource "pods" in API group "" in the namespace "bar""#
    );

    let wide = t.admin(&[
        "get",
        "clusterrolebinding",
        "alice-pods-everywhere",
        "-o",
        "wide",
    ]);
    let row: Vec<&str> = wide.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[0], "alice-pods-everywhere");
    assert_eq!(row[1], "ClusterRole/pod-reader");
    assert_eq!(row[3], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_scoped_role_bound_in_a_namespace_grants_nothing() {
    let t = start().await;
    t.namespace("foo").await;
    t.admin(&[
        "create",
        "clusterrole",
        "node-reader",
        "--verb=get,list",
        "--resource=nodes",
    ]);
    t.admin(&[
        "create",
        "rolebinding",
        "bob-nodes",
        "--clusterrole=node-reader",
        "--user=bob",
        "-n",
        "foo",
    ]);
    let bob = t.client("bob-token").await;
    let nodes: Api<Node> = Api::all(bob.clone());
    let (code, _, message) = refused(nodes.list(&ListParams::default()).await);
    assert_eq!(code, 403);
    assert_eq!(
        message,
        r#"nodes is forbidden: User "bob" cannot list resource "nodes" in API group "" at the cluster scope"#
    );
    t.admin(&[
        "create",
        "clusterrolebinding",
        "bob-nodes",
        "--clusterrole=node-reader",
        "--user=bob",
    ]);
    assert!(nodes.list(&ListParams::default()).await.is_ok());
    // Non-resource URLs need their own rule: bob is only in system:authenticated.
    let paths = t
        .kubectl("bob-token", &["get", "--raw", "/metrics"])
        .unwrap_err();
    assert!(
        paths.contains(
            r#"Error from server (Forbidden): forbidden: User "bob" cannot get path "/metrics""#
        ),
        "{paths}"
    );
    assert!(t.kubectl("bob-token", &["get", "--raw", "/apis"]).is_ok());
    assert!(t.kubectl("bob-token", &["version"]).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subresources_and_resource_names() {
    let t = start().await;
    t.namespace("foo").await;
    let admin_cm: Api<ConfigMap> = t.cluster.api("foo");
    for name in ["cm-a", "cm-b"] {
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        admin_cm.create(&PostParams::default(), &cm).await.unwrap();
    }
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
    .unwrap();
    t.cluster
        .api::<Pod>("foo")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();

    t.admin(&[
        "create",
        "role",
        "cm-a-reader",
        "--verb=get",
        "--resource=configmaps",
        "--resource-name=cm-a",
        "-n",
        "foo",
    ]);
    t.admin(&[
        "create",
        "role",
        "pod-status",
        "--verb=get",
        "--resource=pods/status",
        "-n",
        "foo",
    ]);
    t.admin(&[
        "create",
        "rolebinding",
        "alice-cm",
        "--role=cm-a-reader",
        "--user=alice",
        "-n",
        "foo",
    ]);
    t.admin(&[
        "create",
        "rolebinding",
        "alice-status",
        "--role=pod-status",
        "--user=alice",
        "-n",
        "foo",
    ]);
    let alice = t.client("alice-token").await;
    let cms: Api<ConfigMap> = Api::namespaced(alice.clone(), "foo");
    assert!(cms.get("cm-a").await.is_ok());
    let (code, _, message) = refused(cms.get("cm-b").await);
    assert_eq!(code, 403);
    assert_eq!(
        message,
        r#"configmaps "cm-b" is forbidden: User "alice" cannot get resource "configmaps" in API group "" in the namespace "foo""#
    );
    assert_eq!(refused(cms.list(&ListParams::default()).await).0, 403);

    let pods: Api<Pod> = Api::namespaced(alice.clone(), "foo");
    assert!(pods.get_status("p").await.is_ok());
    let (_, _, message) = refused(pods.get("p").await);
    assert_eq!(
        message,
        r#"pods "p" is forbidden: User "alice" cannot get resource "pods" in API group "" in the namespace "foo""#
    );
    let logs = refused(pods.logs("p", &Default::default()).await).2;
    assert_eq!(
        logs,
        r#"pods "p" is forbidden: User "alice" cannot get resource "pods/log" in API group "" in the namespace "foo""#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_is_refused_until_escalate_or_bind() {
    let t = start().await;
    t.namespace("foo").await;
    // carol may manage roles and bindings in foo, and read configmaps there.
    t.admin(&[
        "create",
        "role",
        "rbac-manager",
        "--verb=create,get,update,patch",
        "--resource=roles.rbac.authorization.k8s.io,rolebindings.rbac.authorization.k8s.io",
        "-n",
        "foo",
    ]);
    t.admin(&[
        "create",
        "role",
        "cm-reader",
        "--verb=get,list",
        "--resource=configmaps",
        "-n",
        "foo",
    ]);
    t.admin(&[
        "create",
        "rolebinding",
        "carol-rbac",
        "--role=rbac-manager",
        "--user=carol",
        "-n",
        "foo",
    ]);
    t.admin(&[
        "create",
        "rolebinding",
        "carol-cm",
        "--role=cm-reader",
        "--user=carol",
        "-n",
        "foo",
    ]);
    t.admin(&[
        "create",
        "role",
        "service-reader",
        "--verb=get,list",
        "--resource=services",
        "-n",
        "foo",
    ]);

    // What she holds she may grant.
    let out = t.kubectl(
        "carol-token",
        &[
            "create",
            "role",
            "cm-get",
            "--verb=get",
            "--resource=configmaps",
            "-n",
            "foo",
        ],
    );
    assert_eq!(
        out.unwrap().trim(),
        "role.rbac.authorization.k8s.io/cm-get created"
    );
    let err = t
        .kubectl(
            "carol-token",
            &[
                "create",
                "role",
                "svc",
                "--verb=get,list",
                "--resource=services",
                "-n",
                "foo",
            ],
        )
        .unwrap_err();
    let want = "Error from server (Forbidden): roles.rbac.authorization.k8s.io \"svc\" is forbidden: user \"carol\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"services\"], Verbs:[\"get\" \"list\"]}";
    assert!(err.contains(want), "{err}");
    let err = t
        .kubectl(
            "carol-token",
            &[
                "create",
                "rolebinding",
                "b",
                "--role=service-reader",
                "--user=bob",
                "-n",
                "foo",
            ],
        )
        .unwrap_err();
    assert!(
        err.contains("rolebindings.rbac.authorization.k8s.io \"b\" is forbidden: user \"carol\""),
        "{err}"
    );
    // A binding to a role she holds all of is fine.
    assert!(
        t.kubectl(
            "carol-token",
            &[
                "create",
                "rolebinding",
                "b2",
                "--role=cm-get",
                "--user=bob",
                "-n",
                "foo"
            ]
        )
        .is_ok()
    );

    t.admin(&[
        "create",
        "role",
        "escalator",
        "--verb=escalate",
        "--resource=roles.rbac.authorization.k8s.io",
        "-n",
        "foo",
    ]);
    t.admin(&[
        "create",
        "role",
        "binder",
        "--verb=bind",
        "--resource=roles.rbac.authorization.k8s.io",
        "--resource-name=service-reader",
        "-n",
        "foo",
    ]);
    t.admin(&[
        "create",
        "rolebinding",
        "carol-escalate",
        "--role=escalator",
        "--user=carol",
        "-n",
        "foo",
    ]);
    t.admin(&[
        "create",
        "rolebinding",
        "carol-bind",
        "--role=binder",
        "--user=carol",
        "-n",
        "foo",
    ]);
    let out = t.kubectl(
        "carol-token",
        &[
            "create",
            "role",
            "svc",
            "--verb=get,list",
            "--resource=services",
            "-n",
            "foo",
        ],
    );
    assert_eq!(
        out.unwrap().trim(),
        "role.rbac.authorization.k8s.io/svc created"
    );
    let out = t.kubectl(
        "carol-token",
        &[
            "create",
            "rolebinding",
            "b",
            "--role=service-reader",
            "--user=bob",
            "-n",
            "foo",
        ],
    );
    assert_eq!(
        out.unwrap().trim(),
        "rolebinding.rbac.authorization.k8s.io/b created"
    );
    // bind on one name only.
    t.admin(&[
        "create",
        "role",
        "secret-reader",
        "--verb=get",
        "--resource=secrets",
        "-n",
        "foo",
    ]);
    let err = t
        .kubectl(
            "carol-token",
            &[
                "create",
                "rolebinding",
                "b3",
                "--role=secret-reader",
                "--user=bob",
                "-n",
                "foo",
            ],
        )
        .unwrap_err();
    assert!(
        err.contains("is attempting to grant RBAC permissions not currently held"),
        "{err}"
    );

    // Validation: roleRef cannot change.
    let rb: Api<k8s_openapi::api::rbac::v1::RoleBinding> = t.cluster.api("foo");
    let patch = json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "svc"}});
    let (code, reason, message) = refused(
        rb.patch("b", &PatchParams::default(), &Patch::Merge(&patch))
            .await,
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(message.contains("roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"Role\", Name:\"svc\"}: cannot change roleRef"), "{message}");
}

async fn start_on(dir: &Path, store: Arc<dyn Store>) -> ApiServer {
    let mut config = ApiConfig::new(dir.to_path_buf());
    config.secure_port = 0;
    ApiServer::start(config, store).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_policy_is_reconciled_and_user_edits_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("store")).unwrap());
    let server = start_on(dir.path(), store.clone()).await;
    let client = client_for(&server.kubeconfig).await;
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    for name in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:basic-user",
        "system:discovery",
        "system:public-info-viewer",
        "system:node-proxier",
        "system:kube-scheduler",
        "system:kube-controller-manager",
        "system:node",
        "system:node-bootstrapper",
        "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
        "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
    ] {
        let role = roles
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let meta = &role.metadata;
        assert_eq!(
            meta.labels.as_ref().unwrap()["kubernetes.io/bootstrapping"],
            "rbac-defaults"
        );
        assert_eq!(
            meta.annotations.as_ref().unwrap()["rbac.authorization.kubernetes.io/autoupdate"],
            "true"
        );
    }
    let admins = bindings.get("cluster-admin").await.unwrap();
    assert_eq!(admins.subjects.unwrap()[0].name, "system:masters");

    // view, edit and admin aggregate the system:aggregate-to-* roles and any labelled one.
    // Aggregation runs in the background (kube's clusterrole-aggregation controller).
    let mut aggregated = false;
    for _ in 0..100 {
        let view = roles.get("view").await.unwrap();
        aggregated = view.rules.unwrap_or_default().iter().any(|r| {
            r.resources
                .as_deref()
                .unwrap_or_default()
                .contains(&"pods".to_string())
        });
        if aggregated {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(aggregated, "view never aggregated the pods rule");
    let widgets: ClusterRole = serde_json::from_value(json!({"metadata": {"name": "widget-viewer",
        "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
        "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get"]}]}))
    .unwrap();
    roles
        .create(&PostParams::default(), &widgets)
        .await
        .unwrap();
    let has_widgets = |r: &ClusterRole| {
        r.rules
            .iter()
            .flatten()
            .any(|r| r.resources.as_deref().unwrap_or_default() == ["widgets"])
    };
    for name in ["view", "edit", "admin"] {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !has_widgets(&roles.get(name).await.unwrap()) {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} did not aggregate widgets"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // A user takes over system:node-proxier and trims system:discovery.
    let mine = json!({"metadata": {"annotations": {"rbac.authorization.kubernetes.io/autoupdate": "false"}},
        "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}]});
    roles
        .patch(
            "system:node-proxier",
            &PatchParams::default(),
            &Patch::Merge(&mine),
        )
        .await
        .unwrap();
    let trimmed = json!({"rules": [{"nonResourceURLs": ["/api"], "verbs": ["get"]}], "metadata": {"labels": {"mine": "yes"}}});
    roles
        .patch(
            "system:discovery",
            &PatchParams::default(),
            &Patch::Merge(&trimmed),
        )
        .await
        .unwrap();
    bindings
        .delete("system:basic-user", &Default::default())
        .await
        .unwrap();
    server.shutdown().await;

    let server = start_on(dir.path(), store.clone()).await;
    let client = client_for(&server.kubeconfig).await;
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let proxier = roles.get("system:node-proxier").await.unwrap();
    assert_eq!(
        proxier.rules.unwrap().len(),
        1,
        "a user's autoupdate=false role is left alone"
    );
    let discovery = roles.get("system:discovery").await.unwrap();
    let urls = discovery
        .rules
        .unwrap()
        .iter()
        .flat_map(|r| r.non_resource_urls.clone().unwrap_or_default())
        .collect::<Vec<_>>();
    assert!(
        urls.contains(&"/apis/*".to_string()) && urls.contains(&"/api".to_string()),
        "{urls:?}"
    );
    assert_eq!(discovery.metadata.labels.unwrap()["mine"], "yes");
    assert!(
        Api::<ClusterRoleBinding>::all(client)
            .get("system:basic-user")
            .await
            .is_ok()
    );
    server.shutdown().await;
}
