//! `kubectl auth can-i` and impersonation end to end: the access reviews of
//! `authorization.k8s.io/v1` answered by RBAC, `--list`, `--as` / `--as-group` checked by the
//! `impersonate` verb, with real kubectl (the newest here and Debian's 1.20), and raw reviews
//! for kube's exact errors. Users come from a static token file, as in `rbac.rs`.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

mod common;

use kube::Client;
use serde_json::{Value, json};

use common::raw_request;
use common::token_users::TokenUsers;
use skiff_tests::Kubectl;

/// token,user,uid,"groups" lines for the users of these tests.
const TOKENS: &str = "sa-token,system:serviceaccount:foo:default,u1,\"system:serviceaccounts,system:serviceaccounts:foo\"
alice-token,alice,u2
bob-token,bob,u3,\"ops\"
";

/// The rows of `kubectl auth can-i --list` as (resource, verbs) for resource rows.
fn listed(table: &str) -> Vec<(String, String)> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let resource = l.split_whitespace().next()?.to_string();
            let verbs = &l[l.rfind("[")?..];
            Some((resource, verbs.to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn can_i_follows_roles_and_bindings_with_kubectl() {
    can_i_walkthrough(Kubectl::newest().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn can_i_follows_roles_and_bindings_with_kubectl_1_20() {
    can_i_walkthrough(Kubectl::debian_120().unwrap()).await;
}

async fn can_i_walkthrough(kubectl: Kubectl) {
    let t = TokenUsers::start(kubectl, TOKENS).await;
    t.namespace("foo").await;
    let admin = t.admin_token();
    let as_sa = ["--as", "system:serviceaccount:foo:default"];
    fn list_services<'a>(who: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["list", "services", "-n", "foo"];
        args.extend_from_slice(who);
        args
    }

    assert!(!t.can_i(&admin, &list_services(&as_sa)));
    assert!(!t.can_i("sa-token", &list_services(&[])));
    t.admin(&[
        "create",
        "role",
        "service-reader",
        "--verb=get",
        "--verb=list",
        "--resource=services",
        "-n",
        "foo",
    ]);
    t.admin(&[
        "create",
        "rolebinding",
        "test",
        "--role=service-reader",
        "--serviceaccount=foo:default",
        "-n",
        "foo",
    ]);
    assert!(t.can_i(&admin, &list_services(&as_sa)));
    assert!(t.can_i("sa-token", &list_services(&[])));
    // Only get and list, and only in foo.
    assert!(!t.can_i("sa-token", &["watch", "services", "-n", "foo"]));
    assert!(!t.can_i("sa-token", &["list", "services", "-n", "default"]));
    assert!(t.can_i("sa-token", &["get", "services/kubernetes", "-n", "foo"]));

    // --list: what the account holds in foo, as kubectl tabulates the rules review.
    let ran = t.run(
        &admin,
        &["auth", "can-i", "--list", "-n", "foo", as_sa[0], as_sa[1]],
    );
    assert_eq!(ran.code, 0, "{}", ran.err);
    let rows = listed(&ran.out);
    assert!(
        rows.contains(&("services".into(), "[get list]".into())),
        "{}",
        ran.out
    );
    // Every authenticated user may review itself (system:basic-user).
    assert!(
        rows.iter()
            .any(|(r, _)| r == "selfsubjectaccessreviews.authorization.k8s.io"),
        "{}",
        ran.out
    );
    let ran = t.run(
        &admin,
        &[
            "auth", "can-i", "--list", "-n", "default", as_sa[0], as_sa[1],
        ],
    );
    assert!(
        !listed(&ran.out).iter().any(|(r, _)| r == "services"),
        "{}",
        ran.out
    );

    // A limited user: nothing beyond the defaults.
    assert!(!t.can_i("alice-token", &["create", "pods", "-n", "foo"]));
    assert!(!t.can_i(
        "alice-token",
        &["get", "pods", "--subresource=log", "-n", "foo"]
    ));
    // Non-resource URLs: health is public, /metrics is not.
    assert!(t.can_i("alice-token", &["get", "/healthz"]));
    assert!(!t.can_i("alice-token", &["get", "/metrics"]));
    // The admin is system:masters.
    assert!(t.can_i(&admin, &["delete", "nodes"]));

    // Subresources: pods/log through a ClusterRole bound in foo.
    t.admin(&[
        "create",
        "clusterrole",
        "log-reader",
        "--verb=get",
        "--resource=pods/log",
    ]);
    t.admin(&[
        "create",
        "rolebinding",
        "alice-logs",
        "--clusterrole=log-reader",
        "--user=alice",
        "-n",
        "foo",
    ]);
    assert!(t.can_i(
        "alice-token",
        &["get", "pods", "--subresource=log", "-n", "foo"]
    ));
    assert!(!t.can_i("alice-token", &["get", "pods", "-n", "foo"]));
    assert!(!t.can_i(
        "alice-token",
        &["get", "pods", "--subresource=log", "-n", "default"]
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonation_needs_the_impersonate_verb() {
    let t = TokenUsers::start(Kubectl::newest().unwrap(), TOKENS).await;
    t.namespace("foo").await;

    // A warm discovery cache, as a user who has used kubectl before has: with a cold one
    // kubectl's discovery reports a refused request as "unknown", against kube as well.
    t.admin(&["get", "namespaces"]);
    // alice may not impersonate anyone yet.
    let ran = t.run("alice-token", &["get", "pods", "-n", "foo", "--as", "bob"]);
    assert_eq!(ran.code, 1);
    assert!(
        ran.err.contains(r#"Error from server (Forbidden): users "bob" is forbidden: User "alice" cannot impersonate resource "users" in API group "" at the cluster scope"#),
        "{}",
        ran.err
    );
    let ran = t.run(
        "alice-token",
        &["auth", "can-i", "list", "pods", "--as", "bob"],
    );
    assert_ne!(ran.code, 0);
    assert!(
        ran.err.contains(r#"cannot impersonate resource "users""#),
        "{}",
        ran.err
    );

    // Impersonating bob (by name only) and group ops.
    t.admin(&[
        "create",
        "clusterrole",
        "bob-impersonator",
        "--verb=impersonate",
        "--resource=users",
        "--resource-name=bob",
    ]);
    t.admin(&[
        "create",
        "clusterrolebinding",
        "alice-as-bob",
        "--clusterrole=bob-impersonator",
        "--user=alice",
    ]);
    let whoami = t.run(
        "alice-token",
        &["auth", "whoami", "--as", "bob", "-o", "json"],
    );
    assert_eq!(whoami.code, 0, "{}", whoami.err);
    let review: Value = serde_json::from_str(&whoami.out).unwrap();
    // An impersonated user has exactly the groups asked for, plus system:authenticated.
    assert_eq!(
        review["status"]["userInfo"],
        json!({"username": "bob", "groups": ["system:authenticated"]})
    );
    // kubectl words a refused whoami itself; the server's text shows with other commands.
    let ran = t.run("alice-token", &["auth", "whoami", "--as", "carol"]);
    assert!(
        ran.err.contains("the selfsubjectreviews API is not enabled in the cluster or you do not have permission to call it"),
        "{}",
        ran.err
    );
    let ran = t.run(
        "alice-token",
        &["get", "pods", "-n", "foo", "--as", "carol"],
    );
    assert!(
        ran.err.contains(
            r#"users "carol" is forbidden: User "alice" cannot impersonate resource "users""#
        ),
        "{}",
        ran.err
    );
    let ran = t.run(
        "alice-token",
        &[
            "get",
            "pods",
            "-n",
            "foo",
            "--as",
            "bob",
            "--as-group",
            "ops",
        ],
    );
    assert!(
        ran.err.contains(r#"groups "ops" is forbidden: User "alice" cannot impersonate resource "groups" in API group "" at the cluster scope"#),
        "{}",
        ran.err
    );
    t.admin(&[
        "create",
        "clusterrole",
        "ops-impersonator",
        "--verb=impersonate",
        "--resource=groups",
        "--resource-name=ops",
    ]);
    t.admin(&[
        "create",
        "clusterrolebinding",
        "alice-as-ops",
        "--clusterrole=ops-impersonator",
        "--user=alice",
    ]);
    let whoami = t.run(
        "alice-token",
        &[
            "auth",
            "whoami",
            "--as",
            "bob",
            "--as-group",
            "ops",
            "-o",
            "json",
        ],
    );
    assert_eq!(whoami.code, 0, "{}", whoami.err);
    let review: Value = serde_json::from_str(&whoami.out).unwrap();
    assert_eq!(
        review["status"]["userInfo"]["groups"],
        json!(["ops", "system:authenticated"])
    );
    // Requests are then authorized as the impersonated user: bob may not list pods.
    let ran = t.run("alice-token", &["get", "pods", "-n", "foo", "--as", "bob"]);
    assert!(
        ran.err.contains(
            r#"User "bob" cannot list resource "pods" in API group "" in the namespace "foo""#
        ),
        "{}",
        ran.err
    );

    // Service accounts: the `edit` role lets its holder impersonate the accounts of its
    // namespace, and the account gets its groups.
    t.admin(&[
        "create",
        "rolebinding",
        "alice-edit",
        "--clusterrole=edit",
        "--user=alice",
        "-n",
        "foo",
    ]);
    let whoami = t.run(
        "alice-token",
        &[
            "auth",
            "whoami",
            "--as",
            "system:serviceaccount:foo:default",
            "-o",
            "json",
        ],
    );
    assert_eq!(whoami.code, 0, "{}", whoami.err);
    let review: Value = serde_json::from_str(&whoami.out).unwrap();
    assert_eq!(
        review["status"]["userInfo"],
        json!({"username": "system:serviceaccount:foo:default",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:foo", "system:authenticated"]})
    );
    let ran = t.run(
        "alice-token",
        &[
            "get",
            "pods",
            "-n",
            "bar",
            "--as",
            "system:serviceaccount:bar:default",
        ],
    );
    assert!(
        ran.err.contains(r#"serviceaccounts "default" is forbidden: User "alice" cannot impersonate resource "serviceaccounts" in API group "" in the namespace "bar""#),
        "{}",
        ran.err
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_reviews_are_validated_and_authorized_as_kube() {
    let t = TokenUsers::start(Kubectl::newest().unwrap(), TOKENS).await;
    t.namespace("foo").await;
    let admin = t.cluster.client.clone();
    let post = |client: Client, path: &'static str, body: Value| async move {
        raw_request(
            &client,
            "POST",
            path,
            "application/json",
            serde_json::to_vec(&body).unwrap(),
        )
        .await
    };
    const SAR: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";

    let sar = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "system:serviceaccount:foo:default",
                 "resourceAttributes": {"namespace": "foo", "verb": "list", "resource": "services"}}});
    let (code, body) = post(admin.clone(), SAR, sar.clone()).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["status"], json!({"allowed": false}));
    assert_eq!(body["spec"]["user"], "system:serviceaccount:foo:default");

    // Neither a subject nor attributes: 422 with both causes.
    let (code, body) = post(
        admin.clone(),
        SAR,
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {}}),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["reason"], "Invalid");
    assert_eq!(
        body["message"],
        r#"SubjectAccessReview.authorization.k8s.io "" is invalid: [spec.resourceAttributes: Invalid value: "null": exactly one of nonResourceAttributes or resourceAttributes must be specified, spec.user: Invalid value: "": at least one of user or group must be specified]"#
    );
    assert_eq!(body["details"]["causes"].as_array().unwrap().len(), 2);
    // Both kinds of attributes.
    let (code, body) = post(
        admin.clone(),
        SAR,
        json!({"kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
            "spec": {"groups": ["devs"], "resourceAttributes": {"verb": "get"},
                     "nonResourceAttributes": {"verb": "get", "path": "/healthz"}}}),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(
        body["details"]["causes"][0]["field"],
        "spec.nonResourceAttributes"
    );
    // Not JSON at all, and another kind: 400.
    let (code, body) = raw_request(&admin, "POST", SAR, "application/json", b"{".to_vec()).await;
    assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")));
    let (code, body) = post(
        admin.clone(),
        SAR,
        json!({"apiVersion": "v1", "kind": "Pod"}),
    )
    .await;
    assert_eq!(code, 400, "{body}");

    // The local review: its namespace is the URL's.
    const LOCAL: &str = "/apis/authorization.k8s.io/v1/namespaces/foo/localsubjectaccessreviews";
    let local = |ns: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "LocalSubjectAccessReview",
            "spec": {"user": "alice", "resourceAttributes": {"namespace": ns, "verb": "get", "resource": "pods"}}})
    };
    let (code, body) = post(admin.clone(), LOCAL, local("foo")).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["metadata"]["namespace"], "foo");
    let (code, body) = post(admin.clone(), LOCAL, local("bar")).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(
        body["details"]["causes"][0]["field"],
        "spec.resourceAttributes.namespace"
    );
    let mut elsewhere = local("foo");
    elsewhere["metadata"] = json!({"namespace": "bar"});
    let (code, body) = post(admin.clone(), LOCAL, elsewhere).await;
    assert_eq!(code, 400, "{body}");

    // Create only: other verbs are 405.
    let (code, body) = raw_request(&admin, "GET", SAR, "application/json", vec![]).await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (405, Some("MethodNotAllowed"))
    );

    // Creating a SubjectAccessReview is itself authorized; self reviews are everyone's.
    let alice = t.client("alice-token").await;
    let (code, body) = post(alice.clone(), SAR, sar).await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body["message"],
        r#"subjectaccessreviews.authorization.k8s.io is forbidden: User "alice" cannot create resource "subjectaccessreviews" in API group "authorization.k8s.io" at the cluster scope"#
    );
    let (code, body) = post(
        alice.clone(),
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
            "spec": {"namespace": "foo"}}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["status"]["incomplete"], false);
    assert!(
        body["status"]["nonResourceRules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["nonResourceURLs"]
                .as_array()
                .unwrap()
                .contains(&json!("/healthz"))),
        "{body}"
    );

    // Impersonating a group without a user is refused before anything else.
    let req = http::Request::builder()
        .method("GET")
        .uri("/api/v1/namespaces/foo/pods")
        .header("Impersonate-Group", "devs")
        .body(kube::client::Body::empty())
        .unwrap();
    let resp = admin.send(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 500);

    // kubectl creates a review from a file and prints the answer. (Reviews have no patch
    // operation to carry server-side field validation, so kubectl would validate on the client
    // against /openapi/v2, which skiff does not serve.)
    let file = t.dir.path().join("sar.json");
    let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "alice", "nonResourceAttributes": {"path": "/healthz", "verb": "get"}}});
    std::fs::write(&file, review.to_string()).unwrap();
    let out = t.admin(&[
        "create",
        "-f",
        file.to_str().unwrap(),
        "--validate=false",
        "-o",
        "json",
    ]);
    let answered: Value = serde_json::from_str(&out).unwrap();
    // alice is not in system:authenticated here: a SubjectAccessReview takes the groups given.
    assert_eq!(answered["status"], json!({"allowed": false}), "{out}");

    // Discovery lists the four reviews, create only.
    let out = t.admin(&[
        "api-resources",
        "--api-group=authorization.k8s.io",
        "-o",
        "wide",
    ]);
    for name in [
        "localsubjectaccessreviews",
        "selfsubjectaccessreviews",
        "selfsubjectrulesreviews",
        "subjectaccessreviews",
    ] {
        let row = out
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing: {out}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells.last(), Some(&"create"), "{row}");
    }
}

/// The API server's kubelet client may call any node agent (the default binding to
/// `system:kubelet-api-admin`) and nothing beyond the Node objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_client_is_a_kubelet_api_admin_only() {
    let t = TokenUsers::start(Kubectl::newest().unwrap(), TOKENS).await;
    let admin = t.admin_token();
    let as_client = ["--as", "kube-apiserver-kubelet-client"];
    let may = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&as_client);
        t.can_i(&admin, &all)
    };
    for sub in ["proxy", "log", "stats", "metrics", "spec"] {
        assert!(may(&["get", "nodes", "--subresource", sub]), "nodes/{sub}");
        assert!(
            may(&["create", "nodes", "--subresource", sub]),
            "nodes/{sub}"
        );
    }
    assert!(may(&["proxy", "nodes"]));
    assert!(may(&["list", "nodes"]));
    assert!(!may(&["delete", "nodes"]));
    assert!(!may(&["list", "secrets", "-A"]));
    assert!(!may(&["get", "pods", "--subresource", "log"]));
    let binding = t.admin(&[
        "get",
        "clusterrolebinding",
        "system:kube-apiserver-kubelet-client",
        "-o",
        "jsonpath={.roleRef.name} {.subjects[0].kind} {.subjects[0].name}",
    ]);
    assert_eq!(
        binding,
        "system:kubelet-api-admin User kube-apiserver-kubelet-client"
    );
}
