//! API tests through a real Kubernetes client (`kube`) against an in-process apiserver on the
//! embedded store: what kube-apiserver's behaviour promises clients, case by case.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service, ServiceAccount};
use kube::Client;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::client::Body;
use serde_json::{Value, json};

use skiff_control::apiserver::{ApiConfig, ApiServer};
use skiff_control::store::Store;
use skiff_control::store::embedded::EmbeddedStore;

struct Cluster {
    server: Option<ApiServer>,
    client: Client,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(&dir.path().join("store")).unwrap());
        Self::start_on(dir, store).await
    }

    async fn start_on(dir: tempfile::TempDir, store: Arc<dyn Store>) -> Cluster {
        let mut config = ApiConfig::new(dir.path().to_path_buf());
        config.secure_port = 0;
        let server = ApiServer::start(config, store.clone()).await.unwrap();
        let client = client_for(&server.kubeconfig).await;
        // Pods are admitted only with their service account, which the serviceaccount
        // controller makes in a whole cluster; this API server runs alone.
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let account = serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
        match accounts.create(&PostParams::default(), &account).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("creating the default service account: {e}"),
        }
        Cluster {
            server: Some(server),
            client,
            store,
            _dir: dir,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), "default")
    }

    /// A raw request: status code and the JSON body (Null if not JSON).
    async fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        raw(&self.client, method, path, content_type, body).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            // Best effort: the runtime may already be going away.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(server.shutdown());
            }
        }
    }
}

async fn client_for(kubeconfig: &str) -> Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

async fn raw(
    client: &Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    common::raw_request(client, method, path, content_type, body).await
}

fn api_error(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other}"),
    }
}

fn pod(name: &str, labels: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "main", "image": "kubia:v1", "ports": [{"containerPort": 8080}]}]},
    }))
    .unwrap()
}

fn configmap(name: &str, labels: Value) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}),
    )
    .unwrap()
}

#[tokio::test]
async fn discovery_lists_every_served_resource() {
    let c = Cluster::start().await;
    let discovery = kube::Discovery::new(c.client.clone()).run().await.unwrap();
    let mut found = Vec::new();
    for group in discovery.groups() {
        for (ar, _caps) in group.recommended_resources() {
            found.push(format!("{}/{}", ar.group, ar.plural));
        }
    }
    for want in [
        "/pods",
        "/services",
        "/endpoints",
        "/nodes",
        "/namespaces",
        "/events",
        "/configmaps",
        "/secrets",
        "/serviceaccounts",
        "apps/deployments",
        "apps/replicasets",
        "apps/daemonsets",
        "batch/jobs",
        "coordination.k8s.io/leases",
        "discovery.k8s.io/endpointslices",
    ] {
        assert!(
            found.iter().any(|f| f == want),
            "{want} missing from {found:?}"
        );
    }
    let version = c.client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
}

#[tokio::test]
async fn create_sets_server_fields_and_defaults() {
    let c = Cluster::start().await;
    let pods: Api<Pod> = c.api();
    let mut p = pod("", json!({"app": "web"}));
    p.metadata.generate_name = Some("web-".into());
    let created = pods.create(&PostParams::default(), &p).await.unwrap();
    let name = created.metadata.name.clone().unwrap();
    assert!(name.starts_with("web-") && name.len() == 9, "{name}");
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert!(created.metadata.resource_version.is_some());
    let spec = created.spec.unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    assert_eq!(spec.termination_grace_period_seconds, Some(30));
    assert_eq!(
        spec.containers[0].ports.as_ref().unwrap()[0]
            .protocol
            .as_deref(),
        Some("TCP")
    );
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Pending"));
    // A duplicate is 409 AlreadyExists.
    let mut dup = pod(&name, json!({}));
    dup.metadata.name = Some(name.clone());
    let err = pods.create(&PostParams::default(), &dup).await.unwrap_err();
    assert_eq!(api_error(err), (409, "AlreadyExists".into()));
    // Invalid: a container without an image is 422 with a field cause.
    let bad: Pod = serde_json::from_value(json!({"metadata": {"name": "bad"},
        "spec": {"containers": [{"name": "main"}]}}))
    .unwrap();
    let (code, _) = api_error(pods.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!(code, 422);
}

#[tokio::test]
async fn update_is_optimistic_and_patches_merge() {
    let c = Cluster::start().await;
    let pods: Api<Pod> = c.api();
    let created = pods
        .create(&PostParams::default(), &pod("p", json!({"app": "a"})))
        .await
        .unwrap();
    // Replace with the current resourceVersion works, with a stale one is 409 Conflict.
    let mut next = created.clone();
    next.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("tier".into(), "x".into());
    let updated = pods
        .replace("p", &PostParams::default(), &next)
        .await
        .unwrap();
    assert_ne!(
        updated.metadata.resource_version,
        created.metadata.resource_version
    );
    let mut stale = created.clone();
    stale
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("stale".into(), "1".into());
    let err = pods
        .replace("p", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert_eq!(api_error(err), (409, "Conflict".into()));

    // Merge patch, JSON patch and strategic merge patch.
    let pp = PatchParams::default();
    let p = pods
        .patch(
            "p",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"app": null, "m": "1"}}})),
        )
        .await
        .unwrap();
    let labels = p.metadata.labels.unwrap();
    assert!(!labels.contains_key("app") && labels["m"] == "1");
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": "/spec/containers/0/image", "value": "kubia:v2"}
    ]))
    .unwrap();
    let p = pods.patch("p", &pp, &Patch::<()>::Json(ops)).await.unwrap();
    assert_eq!(
        p.spec.unwrap().containers[0].image.as_deref(),
        Some("kubia:v2")
    );
    let smp = json!({"spec": {"containers": [{"name": "main", "image": "kubia:v3"}]}});
    let p = pods.patch("p", &pp, &Patch::Strategic(smp)).await.unwrap();
    let containers = p.spec.unwrap().containers;
    assert_eq!(
        containers.len(),
        1,
        "strategic merge keeps the list merged by name"
    );
    assert_eq!(containers[0].image.as_deref(), Some("kubia:v3"));
    assert_eq!(
        containers[0].ports.as_ref().unwrap()[0].container_port,
        8080
    );
    // A failing JSON patch test is refused and changes nothing.
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/name", "value": "other"}
    ]))
    .unwrap();
    let (code, _) = api_error(
        pods.patch("p", &pp, &Patch::<()>::Json(ops))
            .await
            .unwrap_err(),
    );
    assert!((400..500).contains(&code), "{code}");
}

#[tokio::test]
async fn status_and_scale_subresources() {
    let c = Cluster::start().await;
    let deps: Api<Deployment> = c.api();
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "main", "image": "kubia:v1"}]}}}
    }))
    .unwrap();
    let created = deps.create(&PostParams::default(), &d).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    // Status written through the main resource is ignored; through /status it sticks.
    let pp = PatchParams::default();
    let p = deps
        .patch(
            "web",
            &pp,
            &Patch::Merge(json!({"status": {"replicas": 9}})),
        )
        .await
        .unwrap();
    assert_eq!(p.status.and_then(|s| s.replicas), None);
    let p = deps
        .patch_status(
            "web",
            &pp,
            &Patch::Merge(json!({"status": {"replicas": 2}})),
        )
        .await
        .unwrap();
    assert_eq!(p.status.unwrap().replicas, Some(2));
    assert_eq!(
        p.metadata.generation,
        Some(1),
        "status does not bump generation"
    );
    // Scale reads and writes spec.replicas and bumps generation.
    let scale = deps.get_scale("web").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(2));
    assert_eq!(scale.status.unwrap().selector.as_deref(), Some("app=web"));
    deps.patch_scale("web", &pp, &Patch::Merge(json!({"spec": {"replicas": 5}})))
        .await
        .unwrap();
    let d = deps.get("web").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(5));
    assert_eq!(d.metadata.generation, Some(2));
}

#[tokio::test]
async fn list_filters_pages_and_rejects_bad_selectors() {
    let c = Cluster::start().await;
    let cms: Api<ConfigMap> = c.api();
    for i in 0..7 {
        let tier = if i % 2 == 0 { "front" } else { "back" };
        cms.create(
            &PostParams::default(),
            &configmap(
                &format!("cm-{i}"),
                json!({"tier": tier, "n": i.to_string()}),
            ),
        )
        .await
        .unwrap();
    }
    let names = |l: kube::api::ObjectList<ConfigMap>| -> Vec<String> {
        l.items
            .into_iter()
            .map(|c| c.metadata.name.unwrap())
            .collect()
    };
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("tier=front"))
                .await
                .unwrap()
        )
        .len(),
        4
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("tier in (back),n notin (1)"))
                .await
                .unwrap()
        ),
        vec!["cm-3", "cm-5"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().fields("metadata.name=cm-2"))
                .await
                .unwrap()
        ),
        vec!["cm-2"]
    );
    // Pages of 3 are consistent at the first page's revision, even with writes in between.
    let first = cms.list(&ListParams::default().limit(3)).await.unwrap();
    let rv = first.metadata.resource_version.clone();
    let mut all = names(first.clone());
    let mut token = first.metadata.continue_;
    cms.create(&PostParams::default(), &configmap("cm-late", json!({})))
        .await
        .unwrap();
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = cms
            .list(&ListParams::default().limit(3).continue_token(&t))
            .await
            .unwrap();
        assert_eq!(page.metadata.resource_version, rv);
        token = page.metadata.continue_.clone();
        all.extend(names(page));
    }
    assert_eq!(all, (0..7).map(|i| format!("cm-{i}")).collect::<Vec<_>>());
    // Bad selectors are 400s.
    let err = cms
        .list(&ListParams::default().labels("a in ("))
        .await
        .unwrap_err();
    assert_eq!(api_error(err).0, 400);
    let err = cms
        .list(&ListParams::default().fields("spec.nodeName=x"))
        .await
        .unwrap_err();
    assert_eq!(api_error(err).0, 400);
}

#[tokio::test]
async fn watch_resumes_and_reports_gone_after_compaction() {
    let c = Cluster::start().await;
    let cms: Api<ConfigMap> = c.api();
    let created = cms
        .create(&PostParams::default(), &configmap("w", json!({"a": "1"})))
        .await
        .unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();
    cms.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "2"}})),
    )
    .await
    .unwrap();
    cms.delete("w", &DeleteParams::default()).await.unwrap();
    let mut stream = cms
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    let mut seen = Vec::new();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        match ev {
            WatchEvent::Added(_) => seen.push("ADDED"),
            WatchEvent::Modified(_) => seen.push("MODIFIED"),
            WatchEvent::Deleted(_) => seen.push("DELETED"),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen, vec!["MODIFIED", "DELETED"]);

    // A label-selected watch sees an object move in as ADDED and out as DELETED.
    let mut sel = cms
        .watch(&WatchParams::default().labels("team=x").timeout(10), "0")
        .await
        .unwrap()
        .boxed();
    cms.create(&PostParams::default(), &configmap("m", json!({})))
        .await
        .unwrap();
    cms.patch(
        "m",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "x"}}})),
    )
    .await
    .unwrap();
    cms.patch(
        "m",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "y"}}})),
    )
    .await
    .unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), sel.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(WatchEvent::Added(_)) => kinds.push("ADDED"),
            Some(WatchEvent::Deleted(_)) => kinds.push("DELETED"),
            Some(other) => panic!("unexpected {other:?}"),
            None => break,
        }
    }
    assert_eq!(kinds, vec!["ADDED", "DELETED"]);

    // After compaction the old revision is gone: the watch ends with a 410 error event.
    let now = c.store.current_revision().await.unwrap();
    c.store.compact(now).await.unwrap();
    let mut old = cms
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(Duration::from_secs(5), old.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected a 410 error event, got {other:?}"),
    }
}

#[tokio::test]
async fn namespaces_guard_their_contents() {
    let c = Cluster::start().await;
    let in_missing: Api<ConfigMap> = Api::namespaced(c.client.clone(), "nowhere");
    let err = in_missing
        .create(&PostParams::default(), &configmap("x", json!({})))
        .await
        .unwrap_err();
    assert_eq!(api_error(err).0, 404);

    let nss: Api<Namespace> = Api::all(c.client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap(),
    )
    .await
    .unwrap();
    let in_team: Api<ConfigMap> = Api::namespaced(c.client.clone(), "team");
    in_team
        .create(&PostParams::default(), &configmap("x", json!({})))
        .await
        .unwrap();
    nss.delete("team", &DeleteParams::default()).await.unwrap();
    let ns = nss.get("team").await.unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    let err = in_team
        .create(&PostParams::default(), &configmap("y", json!({})))
        .await
        .unwrap_err();
    assert_eq!(api_error(err).0, 403);
    let err = nss
        .delete("default", &DeleteParams::default())
        .await
        .unwrap_err();
    assert_eq!(api_error(err).0, 403);
    // The namespace controller's finalize call releases it.
    let (code, _) = c
        .raw("PUT", "/api/v1/namespaces/team/finalize", "application/json",
            serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}, "spec": {"finalizers": []}})).unwrap())
        .await;
    assert_eq!(code, 200);
    assert_eq!(api_error(nss.get("team").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn services_get_unique_cluster_ips_and_node_ports() {
    let c = Cluster::start().await;
    let svcs: Api<Service> = c.api();
    let svc = |name: &str, spec: Value| -> Service {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
    };
    let a = svcs
        .create(
            &PostParams::default(),
            &svc(
                "a",
                json!({"selector": {"app": "a"}, "ports": [{"port": 80}]}),
            ),
        )
        .await
        .unwrap();
    let b = svcs
        .create(
            &PostParams::default(),
            &svc(
                "b",
                json!({"type": "NodePort", "ports": [{"port": 80, "targetPort": 8080}]}),
            ),
        )
        .await
        .unwrap();
    let (ia, ib) = (
        a.spec.clone().unwrap().cluster_ip.unwrap(),
        b.spec.clone().unwrap().cluster_ip.unwrap(),
    );
    assert_ne!(ia, ib);
    for ip in [&ia, &ib] {
        assert!(
            ip.starts_with("10.9") || ip.starts_with("10.10") || ip.starts_with("10.11"),
            "{ip}"
        );
    }
    let spec_a = a.spec.unwrap();
    assert_eq!(spec_a.session_affinity.as_deref(), Some("None"));
    assert_eq!(
        spec_a.ports.unwrap()[0].target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(80))
    );
    let node_port = b.spec.unwrap().ports.unwrap()[0].node_port.unwrap();
    assert!((30000..=32767).contains(&node_port));
    // A taken IP or port is refused; once released it can be had.
    let err = svcs
        .create(
            &PostParams::default(),
            &svc("c", json!({"clusterIP": ia, "ports": [{"port": 1}]})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(err).0, 422);
    let err = svcs
        .create(
            &PostParams::default(),
            &svc(
                "d",
                json!({"type": "NodePort", "ports": [{"port": 1, "nodePort": node_port}]}),
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(err).0, 422);
    svcs.delete("a", &DeleteParams::default()).await.unwrap();
    let c2 = svcs
        .create(
            &PostParams::default(),
            &svc("c", json!({"clusterIP": ia, "ports": [{"port": 1}]})),
        )
        .await
        .unwrap();
    assert_eq!(c2.spec.unwrap().cluster_ip.unwrap(), ia);
    // clusterIP is immutable.
    let err = svcs
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"clusterIP": ib}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(err).0, 422);
}

#[tokio::test]
async fn bound_pods_are_deleted_gracefully_and_finalizers_hold_objects() {
    let c = Cluster::start().await;
    let pods: Api<Pod> = c.api();
    pods.create(&PostParams::default(), &pod("g", json!({})))
        .await
        .unwrap();
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "g"}, "target": {"kind": "Node", "name": "node-1"}});
    let (code, status) = c
        .raw(
            "POST",
            "/api/v1/namespaces/default/pods/g/binding",
            "application/json",
            serde_json::to_vec(&binding).unwrap(),
        )
        .await;
    assert_eq!(code, 201, "{status}");
    let bound = pods.get("g").await.unwrap();
    assert_eq!(
        bound.spec.as_ref().unwrap().node_name.as_deref(),
        Some("node-1")
    );
    let conditions = bound.status.unwrap().conditions.unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "True")
    );
    // Binding twice is a conflict.
    let (code, _) = c
        .raw(
            "POST",
            "/api/v1/namespaces/default/pods/g/binding",
            "application/json",
            serde_json::to_vec(&binding).unwrap(),
        )
        .await;
    assert_eq!(code, 409);
    pods.delete("g", &DeleteParams::default()).await.unwrap();
    let terminating = pods.get("g").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(30));
    // The node agent confirms with grace 0.
    pods.delete(
        "g",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(api_error(pods.get("g").await.unwrap_err()).0, 404);

    let cms: Api<ConfigMap> = c.api();
    let mut held = configmap("held", json!({}));
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &held).await.unwrap();
    cms.delete("held", &DeleteParams::default()).await.unwrap();
    assert!(
        cms.get("held")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_error(cms.get("held").await.unwrap_err()).0, 404);
    // deletecollection with a selector.
    for i in 0..3 {
        cms.create(
            &PostParams::default(),
            &configmap(&format!("dc-{i}"), json!({"batch": "1"})),
        )
        .await
        .unwrap();
    }
    cms.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("batch=1"),
    )
    .await
    .unwrap();
    assert!(
        cms.list(&ListParams::default().labels("batch=1"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn bad_requests_get_status_errors() {
    let c = Cluster::start().await;
    // Unauthenticated.
    let anonymous = {
        let mut kubeconfig =
            kube::config::Kubeconfig::from_yaml(&c.server.as_ref().unwrap().kubeconfig).unwrap();
        kubeconfig.auth_infos[0].auth_info.as_mut().unwrap().token =
            Some("wrong".to_string().into());
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        Client::try_from(config).unwrap()
    };
    let (code, status) = raw(
        &anonymous,
        "GET",
        "/api/v1/pods",
        "application/json",
        vec![],
    )
    .await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (401, Some("Unauthorized"))
    );
    let cases: Vec<(&str, &str, &str, Vec<u8>, u16)> = vec![
        (
            "GET",
            "/api/v1/namespaces/default/widgets",
            "application/json",
            vec![],
            404,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods/x",
            "application/json",
            b"{}".to_vec(),
            405,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/json",
            b"{not json".to_vec(),
            400,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/yaml",
            b"a: [".to_vec(),
            400,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/json",
            b"[]".to_vec(),
            400,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/json",
            br#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"x"}}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/json",
            br#"{"metadata":{"name":"x"},"spec":{"containers":7}}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            vec![b' '; 3 * 1024 * 1024 + 10],
            413,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
            "application/json",
            br#"{"metadata":{"name":"s"},"bogus":1}"#.to_vec(),
            400,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/configmaps/none",
            "text/plain",
            b"{}".to_vec(),
            415,
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?limit=abc",
            "application/json",
            vec![],
            400,
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?watch=maybe",
            "application/json",
            vec![],
            400,
        ),
    ];
    for (method, path, ct, body, want) in cases {
        let (code, status) = c.raw(method, path, ct, body).await;
        assert_eq!(code, want, "{method} {path}: {status}");
        assert_eq!(status["kind"], "Status", "{method} {path}: {status}");
        assert_eq!(status["code"], want);
    }
    // Warn (the default) accepts unknown fields and says so in a Warning header.
    let req = http::Request::builder()
        .method("POST")
        .uri("/api/v1/namespaces/default/configmaps")
        .header("content-type", "application/json")
        .body(Body::from(
            br#"{"metadata":{"name":"w"},"bogus":1}"#.to_vec(),
        ))
        .unwrap();
    let resp = c.client.send(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let warning = resp
        .headers()
        .get("warning")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(warning.contains("bogus"), "{warning}");
}

/// Malformed bodies of every kind, on every write verb of every resource: each gets a 4xx
/// `Status`, and the server keeps answering and keeps its data.
#[tokio::test]
async fn malformed_bodies_never_break_the_server() {
    let c = Cluster::start().await;
    let cms: Api<ConfigMap> = c.api();
    cms.create(&PostParams::default(), &configmap("keep", json!({})))
        .await
        .unwrap();
    let seeds: Vec<Value> = vec![
        json!({"metadata": {"name": "f"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
        json!({"metadata": {"name": "f"}, "spec": {"ports": [{"port": 80}], "selector": {"a": "b"}}}),
        json!({"metadata": {"name": "f"}, "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
    ];
    let replacements = [
        json!(null),
        json!(-1),
        json!(1e308),
        json!("x"),
        json!([]),
        json!({}),
        json!(true),
        json!("a".repeat(300)),
        json!([null, {"$patch": "delete"}]),
        json!({"$patch": "replace"}),
    ];
    let paths = [
        "/api/v1/namespaces/default/pods",
        "/api/v1/namespaces/default/services",
        "/apis/apps/v1/namespaces/default/deployments",
        "/api/v1/namespaces/default/configmaps",
        "/api/v1/nodes",
        "/api/v1/namespaces",
        "/apis/batch/v1/namespaces/default/jobs",
        "/api/v1/namespaces/default/events",
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
    ];
    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let mut checked = 0;
    for round in 0..300 {
        let mut body = seeds[round % seeds.len()].clone();
        // Replace one random node of the document with a random odd value.
        let mut pointers = Vec::new();
        collect_pointers(&body, String::new(), &mut pointers);
        let target = pointers[(next() as usize) % pointers.len()].clone();
        let value = replacements[(next() as usize) % replacements.len()].clone();
        if target.is_empty() {
            body = value;
        } else if let Some(slot) = body.pointer_mut(&target) {
            *slot = value;
        }
        let mut bytes = serde_json::to_vec(&body).unwrap();
        if round % 7 == 0 && !bytes.is_empty() {
            // And sometimes truncate or corrupt the bytes themselves.
            let cut = (next() as usize) % bytes.len();
            bytes.truncate(cut);
        }
        let path = paths[(next() as usize) % paths.len()];
        let (method, url, ct) = match round % 4 {
            0 | 1 => ("POST", path.to_string(), "application/json"),
            2 => (
                "PATCH",
                "/api/v1/namespaces/default/configmaps/keep".to_string(),
                "application/strategic-merge-patch+json",
            ),
            _ => (
                "PUT",
                "/api/v1/namespaces/default/configmaps/keep".to_string(),
                "application/json",
            ),
        };
        let (code, status) = c.raw(method, &url, ct, bytes).await;
        assert!(code < 500, "{method} {url} -> {code}: {status}");
        if code >= 400 {
            assert_eq!(status["kind"], "Status", "{status}");
            checked += 1;
        }
    }
    assert!(
        checked > 50,
        "only {checked} bodies were refused; the fuzzer is not biting"
    );
    let version = c.client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
    assert!(cms.get("keep").await.is_ok());
}

fn collect_pointers(v: &Value, here: String, out: &mut Vec<String>) {
    out.push(here.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                collect_pointers(
                    child,
                    format!("{here}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                collect_pointers(child, format!("{here}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn state_survives_a_restart_on_the_same_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let uid;
    let ip;
    {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&path.join("store")).unwrap());
        let mut c = Cluster::start_on(tempfile::tempdir_in(&path).unwrap(), store).await;
        let svcs: Api<Service> = c.api();
        let s: Service = serde_json::from_value(
            json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}),
        )
        .unwrap();
        let s = svcs.create(&PostParams::default(), &s).await.unwrap();
        uid = s.metadata.uid.unwrap();
        ip = s.spec.unwrap().cluster_ip.unwrap();
        c.server.take().unwrap().shutdown().await;
    }
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&path.join("store")).unwrap());
    let c = Cluster::start_on(tempfile::tempdir_in(&path).unwrap(), store).await;
    let svcs: Api<Service> = c.api();
    let s = svcs.get("s").await.unwrap();
    assert_eq!(s.metadata.uid.unwrap(), uid);
    assert_eq!(s.spec.unwrap().cluster_ip.unwrap(), ip);
    // The IP stays taken across the restart.
    let dup: Service = serde_json::from_value(
        json!({"metadata": {"name": "t"}, "spec": {"clusterIP": ip, "ports": [{"port": 80}]}}),
    )
    .unwrap();
    assert_eq!(
        api_error(svcs.create(&PostParams::default(), &dup).await.unwrap_err()).0,
        422
    );
}
