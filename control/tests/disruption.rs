//! PodDisruptionBudgets and the eviction subresource: validation with kube's messages, the
//! disruption controller's status, and the status codes of evictions (201, 429, 500).

mod common;

use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn replica_set(name: &str, replicas: i32) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
    }))
    .unwrap()
}

/// A client that shows a 429 as it is (kube's default client retries it with back-off, as
/// `kubectl drain` does itself).
async fn without_retries(c: &common::TestCluster) -> kube::Client {
    let server = c.server.as_ref().unwrap();
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.default_retry = false;
    kube::Client::try_from(config).unwrap()
}

async fn post_json(c: &common::TestCluster, path: &str, body: &Value) -> (u16, Value) {
    common::raw_request(
        &without_retries(c).await,
        "POST",
        path,
        "application/json",
        serde_json::to_vec(body).unwrap(),
    )
    .await
}

fn pdb(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": name}, "spec": spec})
}

fn eviction(api_version: &str, pod: &str) -> Value {
    json!({"apiVersion": api_version, "kind": "Eviction", "metadata": {"name": pod}})
}

const PDBS: &str = "/apis/policy/v1/namespaces/default/poddisruptionbudgets";

#[tokio::test]
async fn budgets_are_validated_with_kubes_messages() {
    let c = common::TestCluster::start("").await;
    let (code, body) = post_json(
        &c,
        PDBS,
        &pdb("both", json!({"minAvailable": 1, "maxUnavailable": 1})),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("PodDisruptionBudget.policy \"both\" is invalid")
            || message.starts_with("PodDisruptionBudget \"both\" is invalid"),
        "{message}"
    );
    assert!(message.contains("minAvailable and maxUnavailable cannot be both set"));

    let (code, body) = post_json(&c, PDBS, &pdb("big", json!({"maxUnavailable": "150%"}))).await;
    assert_eq!(code, 422);
    assert_eq!(
        body["details"]["causes"][0]["field"], "spec.maxUnavailable",
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("must not be greater than 100%")
    );
    let (code, _) = post_json(&c, PDBS, &pdb("neg", json!({"minAvailable": -1}))).await;
    assert_eq!(code, 422);

    let (code, created) = post_json(
        &c,
        PDBS,
        &pdb(
            "ok",
            json!({"minAvailable": "50%", "selector": {"matchLabels": {"app": "x"}}}),
        ),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["metadata"]["generation"], 1);
    assert_eq!(created["status"]["disruptionsAllowed"], 0);
    // A negative count through the status subresource is refused too.
    let mut bad = created.clone();
    bad["status"]["disruptionsAllowed"] = json!(-1);
    let (code, body) = common::raw_request(
        &c.client,
        "PUT",
        &format!("{PDBS}/ok/status"),
        "application/json",
        serde_json::to_vec(&bad).unwrap(),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(
        body["details"]["causes"][0]["field"],
        "status.disruptionsAllowed"
    );
}

/// Three ready pods of a ReplicaSet under a budget of minAvailable 2: one eviction is allowed,
/// the next is a 429 until the controller has seen the replacement become ready.
#[tokio::test]
async fn evictions_spend_the_budget_and_are_refused_with_429() {
    let c = common::TestCluster::start("replicaset,disruption").await;
    let node = c.add_node("n1", "8", "16Gi", 110).await;
    let _binder = common::bind_all(c.client.clone(), "n1");
    let rss: Api<ReplicaSet> = c.api("default");
    rss.create(&PostParams::default(), &replica_set("web", 3))
        .await
        .unwrap();
    let (code, _) = post_json(
        &c,
        PDBS,
        &pdb(
            "web",
            json!({"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}),
        ),
    )
    .await;
    assert_eq!(code, 201);
    let pdbs: Api<PodDisruptionBudget> = c.api("default");
    c.wait_for("one disruption allowed", WAIT, || async {
        let st = pdbs.get("web").await.unwrap().status?;
        (st.disruptions_allowed == 1 && st.current_healthy == 3 && st.expected_pods == 3)
            .then_some(st)
    })
    .await;
    let st = pdbs.get("web").await.unwrap().status.unwrap();
    assert_eq!(st.desired_healthy, 2);
    assert_eq!(st.observed_generation, Some(1));
    let cond = &st.conditions.unwrap()[0];
    assert_eq!(
        (cond.type_.as_str(), cond.status.as_str()),
        ("DisruptionAllowed", "True")
    );

    let pods: Vec<String> = c
        .pods("default", "app=web")
        .await
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let path = |p: &str| format!("/api/v1/namespaces/default/pods/{p}/eviction");
    // The URL and the body must name the same pod.
    let (code, _) = post_json(&c, &path(&pods[0]), &eviction("policy/v1", &pods[1])).await;
    assert_eq!(code, 400);

    // The replacement will not be ready until the test says so.
    node.pods_ready
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let (code, body) = post_json(&c, &path(&pods[0]), &eviction("policy/v1", &pods[0])).await;
    assert_eq!((code, &body["status"]), (201, &json!("Success")), "{body}");
    let spent = pdbs.get("web").await.unwrap().status.unwrap();
    assert_eq!(spent.disruptions_allowed, 0);
    assert!(
        spent
            .disrupted_pods
            .unwrap_or_default()
            .contains_key(&pods[0])
    );

    // Old kubectl posts policy/v1beta1 Evictions; the budget refuses either way.
    let (code, body) = post_json(&c, &path(&pods[1]), &eviction("policy/v1beta1", &pods[1])).await;
    assert_eq!(code, 429, "{body}");
    assert_eq!(body["reason"], "TooManyRequests");
    assert_eq!(
        body["message"],
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    assert_eq!(body["details"]["causes"][0]["reason"], "DisruptionBudget");
    let pods_api: Api<Pod> = c.api("default");
    assert!(pods_api.get_opt(&pods[1]).await.unwrap().is_some());

    // The replacement becomes ready: the controller allows one disruption again, and the
    // evicted pod leaves disruptedPods once it is gone.
    let replacement = c
        .wait_for("a replacement pod", WAIT, || async {
            c.pods("default", "app=web")
                .await
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .find(|n| !pods.contains(n))
        })
        .await;
    common::set_pod_ready(&c.client, "default", &replacement, true).await;
    c.wait_for("the budget recovers", WAIT, || async {
        let st = pdbs.get("web").await.unwrap().status?;
        let pruned = st.disrupted_pods.as_ref().is_none_or(|m| m.is_empty());
        (st.disruptions_allowed == 1 && st.current_healthy == 3 && pruned).then_some(())
    })
    .await;
    let (code, _) = post_json(&c, &path(&pods[1]), &eviction("policy/v1", &pods[1])).await;
    assert_eq!(code, 201);
}

#[tokio::test]
async fn pods_without_budgets_go_and_two_budgets_are_a_500() {
    let c = common::TestCluster::start("replicaset,disruption").await;
    let _node = c.add_node("n1", "8", "16Gi", 110).await;
    let _binder = common::bind_all(c.client.clone(), "n1");
    let rss: Api<ReplicaSet> = c.api("default");
    rss.create(&PostParams::default(), &replica_set("api", 2))
        .await
        .unwrap();
    let pods_api: Api<Pod> = c.api("default");
    let pods = c
        .wait_for("two ready pods", WAIT, || async {
            let pods: Vec<String> = c
                .pods("default", "app=api")
                .await
                .into_iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                })
                .filter_map(|p| p.metadata.name)
                .collect();
            (pods.len() == 2).then_some(pods)
        })
        .await;
    let path = |p: &str| format!("/api/v1/namespaces/default/pods/{p}/eviction");
    let (code, _) = post_json(&c, &path(&pods[0]), &eviction("policy/v1", &pods[0])).await;
    assert_eq!(code, 201);
    c.wait_for("the pod is gone", WAIT, || async {
        pods_api
            .get_opt(&pods[0])
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;

    for name in ["a", "b"] {
        let spec = json!({"maxUnavailable": 1, "selector": {"matchLabels": {"app": "api"}}});
        let (code, _) = post_json(&c, PDBS, &pdb(name, spec)).await;
        assert_eq!(code, 201);
    }
    let (code, body) = post_json(&c, &path(&pods[1]), &eviction("policy/v1", &pods[1])).await;
    assert_eq!(code, 500, "{body}");
    assert_eq!(
        body["message"],
        "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."
    );
    let (code, _) = post_json(
        &c,
        "/api/v1/namespaces/default/pods/nope/eviction",
        &eviction("policy/v1", "nope"),
    )
    .await;
    assert_eq!(code, 404);
}
