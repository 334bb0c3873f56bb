//! Bootstrap-token discovery's server side: `kube-public/cluster-info` holds the cluster's
//! address and CA, anyone may read it without credentials, and the bootstrap signer keeps a
//! signature in it for every token that may sign, removing it with the token; the token
//! cleaner deletes expired tokens.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, PostParams};

use common::{TestCluster, test_config};
use skiff_common::bootstrap_token::{self, BootstrapToken};

async fn signature(cms: &Api<ConfigMap>, id: &str) -> Option<(String, String)> {
    let cm = cms.get("cluster-info").await.ok()?;
    let data = cm.data?;
    Some((
        data.get("kubeconfig")?.clone(),
        data.get(&bootstrap_token::jws_key(id))?.clone(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_info_is_public_and_signed_per_token() {
    let c = TestCluster::start_with(test_config("bootstrapsigner,tokencleaner")).await;
    let server = c.server.as_ref().unwrap();

    // Anonymous: a kubeconfig with the CA and no credentials.
    let anonymous = {
        let mut config = kube::Config::new(server.url.parse().unwrap());
        config.root_cert = Some(vec![
            rustls::pki_types::CertificateDer::from_pem_slice(server.ca_pem.as_bytes())
                .unwrap()
                .to_vec(),
        ]);
        kube::Client::try_from(config).unwrap()
    };
    use rustls::pki_types::pem::PemObject;
    let public: Api<ConfigMap> = Api::namespaced(anonymous.clone(), "kube-public");
    let cm = public
        .get("cluster-info")
        .await
        .expect("anonymous may read cluster-info");
    let kubeconfig = cm.data.unwrap()["kubeconfig"].clone();
    assert!(
        kubeconfig.contains(&format!("server: {}", server.url)),
        "{kubeconfig}"
    );
    // …and nothing else.
    let err = Api::<ConfigMap>::namespaced(anonymous, "kube-system")
        .list(&Default::default())
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 403));

    // A token that may sign gets its signature; deleted, the signature goes.
    let token = BootstrapToken::generate();
    let secret = token.secret(
        Some(Duration::from_secs(600)),
        jiff::Timestamp::now(),
        "",
        &[],
    );
    let secrets: Api<Secret> = c.api("kube-system");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let cms: Api<ConfigMap> = c.api("kube-public");
    let (content, sig) = c
        .wait_for("the token's signature", Duration::from_secs(20), || async {
            signature(&cms, &token.id).await
        })
        .await;
    assert!(bootstrap_token::verify_detached_signature(
        &content, &sig, &token
    ));
    secrets
        .delete(
            &format!("bootstrap-token-{}", token.id),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
    c.wait_for("the signature to go", Duration::from_secs(20), || async {
        signature(&cms, &token.id).await.is_none().then_some(())
    })
    .await;

    // A token past its expiration is deleted by the token cleaner.
    let expiring = BootstrapToken::generate();
    let secret = expiring.secret(
        Some(Duration::from_secs(2)),
        jiff::Timestamp::now(),
        "",
        &[],
    );
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let name = format!("bootstrap-token-{}", expiring.id);
    c.wait_for(
        "the expired token to be deleted",
        Duration::from_secs(20),
        || async {
            secrets
                .get_opt(&name)
                .await
                .ok()
                .flatten()
                .is_none()
                .then_some(())
        },
    )
    .await;
}
