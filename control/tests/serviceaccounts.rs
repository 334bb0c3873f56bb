//! The ServiceAccount controller keeps a `default` account in every namespace.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};

#[tokio::test]
async fn every_namespace_gets_a_default_service_account() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("skiff_control=debug,kube_runtime=debug")
        .try_init();
    let c = common::TestCluster::start("serviceaccount").await;
    let nss: Api<Namespace> = c.cluster_api();
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": "team"}})).unwrap(),
    )
    .await
    .unwrap();
    let sas: Api<ServiceAccount> = c.api("team");
    c.wait_for("default SA in team", Duration::from_secs(10), || async {
        sas.get_opt("default").await.unwrap()
    })
    .await;
    // Deleted, it comes back.
    sas.delete("default", &DeleteParams::default())
        .await
        .unwrap();
    c.wait_for("default SA recreated", Duration::from_secs(10), || async {
        sas.get_opt("default").await.unwrap()
    })
    .await;
    // The system namespaces have theirs too.
    let system: Api<ServiceAccount> = c.api("kube-system");
    c.wait_for(
        "default SA in kube-system",
        Duration::from_secs(10),
        || async { system.get_opt("default").await.unwrap() },
    )
    .await;
}

#[tokio::test]
async fn fake_nodes_keep_their_leases() {
    let c = common::TestCluster::start("").await;
    let _node = c.add_node("n1", "4", "8Gi", 110).await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = c.api("kube-node-lease");
    c.wait_for("lease of n1", Duration::from_secs(10), || async {
        leases.get_opt("n1").await.unwrap()
    })
    .await;
}

/// The root-CA publisher keeps `kube-root-ca.crt` in every namespace: recreated when deleted,
/// restored when edited.
#[tokio::test]
async fn every_namespace_gets_the_root_ca() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Patch, PatchParams};
    let c = common::TestCluster::start("root-ca-cert-publisher").await;
    let ca = c.server.as_ref().unwrap().ca_pem.clone();
    let nss: Api<Namespace> = c.cluster_api();
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": "team"}})).unwrap(),
    )
    .await
    .unwrap();
    let cms: Api<ConfigMap> = c.api("team");
    let published = |want: String| {
        let cms = cms.clone();
        move || {
            let cms = cms.clone();
            let want = want.clone();
            async move {
                let cm = cms.get_opt("kube-root-ca.crt").await.unwrap()?;
                let data = cm.data.clone().unwrap_or_default();
                (data.len() == 1 && data.get("ca.crt") == Some(&want)).then_some(cm)
            }
        }
    };
    let cm = c
        .wait_for(
            "kube-root-ca.crt in team",
            Duration::from_secs(10),
            published(ca.clone()),
        )
        .await;
    let description = &cm.metadata.annotations.unwrap()["kubernetes.io/description"];
    assert!(
        description
            .starts_with("Contains a CA bundle that can be used to verify the kube-apiserver")
    );
    // Edited, it is put back.
    cms.patch(
        "kube-root-ca.crt",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"ca.crt": "forged", "extra": "x"}})),
    )
    .await
    .unwrap();
    c.wait_for(
        "kube-root-ca.crt restored",
        Duration::from_secs(10),
        published(ca.clone()),
    )
    .await;
    // Deleted, it comes back.
    cms.delete("kube-root-ca.crt", &DeleteParams::default())
        .await
        .unwrap();
    c.wait_for(
        "kube-root-ca.crt recreated",
        Duration::from_secs(10),
        published(ca.clone()),
    )
    .await;
    let system: Api<ConfigMap> = c.api("kube-system");
    c.wait_for(
        "kube-root-ca.crt in kube-system",
        Duration::from_secs(10),
        || async { system.get_opt("kube-root-ca.crt").await.unwrap() },
    )
    .await;
}

/// ServiceAccount admission: a pod of a missing account is refused with kube's words; others
/// get the `kube-api-access-` volume unless the pod or the account turns it off.
#[tokio::test]
async fn pods_are_admitted_with_their_service_account_token() {
    use k8s_openapi::api::core::v1::Pod;
    let c = common::TestCluster::start("").await;
    let pods: Api<Pod> = c.api("default");
    let pod = |name: &str, extra: serde_json::Value| -> Pod {
        let mut spec = serde_json::json!({"containers": [{"name": "c", "image": "i"}]});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec}))
            .unwrap()
    };
    let err = pods
        .create(
            &PostParams::default(),
            &pod("lost", serde_json::json!({"serviceAccountName": "nope"})),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err}")
    };
    assert_eq!(status.code, 403);
    assert_eq!(status.reason, "Forbidden");
    assert_eq!(
        status.message,
        "pods \"lost\" is forbidden: error looking up service account default/nope: serviceaccount \"nope\" not found"
    );

    let created = pods
        .create(&PostParams::default(), &pod("with", serde_json::json!({})))
        .await
        .unwrap();
    let spec = created.spec.unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("default"));
    let volumes = spec.volumes.unwrap();
    assert_eq!(volumes.len(), 1);
    assert!(volumes[0].name.starts_with("kube-api-access-"));
    let projected = volumes[0].projected.as_ref().unwrap();
    assert_eq!(projected.default_mode, Some(420));
    let sources = projected.sources.as_ref().unwrap();
    let token = sources[0].service_account_token.as_ref().unwrap();
    assert_eq!(
        (token.expiration_seconds, token.path.as_str()),
        (Some(3607), "token")
    );
    assert_eq!(
        sources[1].config_map.as_ref().unwrap().name,
        "kube-root-ca.crt"
    );
    assert!(sources[2].downward_api.is_some());
    let mount = &spec.containers[0].volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        mount.mount_path,
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(mount.name, volumes[0].name);

    let off = pods
        .create(
            &PostParams::default(),
            &pod(
                "off",
                serde_json::json!({"automountServiceAccountToken": false}),
            ),
        )
        .await
        .unwrap();
    assert!(off.spec.unwrap().volumes.unwrap_or_default().is_empty());

    let sas: Api<ServiceAccount> = c.api("default");
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": "quiet"},
            "automountServiceAccountToken": false}))
        .unwrap(),
    )
    .await
    .unwrap();
    let quiet = pods
        .create(
            &PostParams::default(),
            &pod("quiet", serde_json::json!({"serviceAccountName": "quiet"})),
        )
        .await
        .unwrap();
    assert!(quiet.spec.unwrap().volumes.unwrap_or_default().is_empty());
    // The pod's own setting wins over the account's.
    let on = pods
        .create(
            &PostParams::default(),
            &pod("on", serde_json::json!({"serviceAccountName": "quiet", "automountServiceAccountToken": true})),
        )
        .await
        .unwrap();
    assert_eq!(on.spec.unwrap().volumes.unwrap().len(), 1);
}
