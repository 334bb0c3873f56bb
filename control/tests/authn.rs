//! Authentication end to end: client certificates (the admin kubeconfig and one from
//! `skiff-control kubeconfig`), wrong and missing bearer tokens, service-account tokens from
//! `kubectl create token` (plain and bound to a pod), and bootstrap tokens, checked with
//! `kubectl auth whoami` and raw requests. kubectl runs blocking, so the tests run on a
//! multi-threaded runtime: the in-process server keeps serving on the other workers.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

use skiff_control::apiserver::authn::serviceaccount::{
    DEFAULT_ISSUER, Grant, ObjectRef, ServiceAccountTokens,
};
use skiff_control::apiserver::pki::{self, ClusterCa, Credential};
use skiff_control::apiserver::{ApiConfig, ApiServer};
use skiff_control::store::Store;
use skiff_control::store::embedded::EmbeddedStore;
use skiff_tests::Kubectl;

struct Cluster {
    server: Option<ApiServer>,
    admin: Client,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(&dir.path().join("store")).unwrap());
        let mut config = ApiConfig::new(dir.path().to_path_buf());
        config.secure_port = 0;
        let server = ApiServer::start(config, store).await.unwrap();
        let admin = client_from_yaml(&server.kubeconfig).await.unwrap();
        Cluster {
            server: Some(server),
            admin,
            dir,
        }
    }

    fn server(&self) -> &ApiServer {
        self.server.as_ref().unwrap()
    }

    fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The admin kubeconfig the control plane wrote (a client certificate).
    fn admin_kubeconfig(&self) -> PathBuf {
        self.data_dir().join("admin.kubeconfig")
    }

    /// A kubeconfig file presenting bearer `token`.
    fn token_kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        let text = pki::kubeconfig(
            &self.server().url,
            &self.server().ca_pem,
            "u",
            Credential::Token(token),
        );
        let path = self.data_dir().join(format!("{name}.kubeconfig"));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn kubectl(&self, kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
        let kubectl = Kubectl::newest().unwrap();
        let out = kubectl
            .command_with(kubeconfig, self.data_dir())
            .args(args)
            .output()
            .unwrap();
        common::stdout_or_stderr(out)
    }

    /// `kubectl auth whoami -o json`'s user info.
    fn whoami(&self, kubeconfig: &Path) -> Result<Value, String> {
        let out = self.kubectl(kubeconfig, &["auth", "whoami", "-o", "json"])?;
        let review: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        Ok(review["status"]["userInfo"].clone())
    }

    async fn create(&self, path: &str, body: Value) -> (u16, Value) {
        raw(
            &self.admin,
            "POST",
            path,
            serde_json::to_vec(&body).unwrap(),
        )
        .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            tokio::spawn(server.shutdown());
        }
    }
}

async fn client_from_yaml(yaml: &str) -> kube::Result<Client> {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(yaml).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Client::try_from(config)
}

async fn raw(client: &Client, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
    common::raw_request(client, method, path, "application/json", body).await
}

const UNAUTHORIZED: &str = r#"{"apiVersion":"v1","code":401,"kind":"Status","message":"Unauthorized","metadata":{},"reason":"Unauthorized","status":"Failure"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_certificates_authenticate_the_admin_and_issued_users() {
    let c = Cluster::start().await;
    let admin = c.admin_kubeconfig();
    let text = std::fs::read_to_string(&admin).unwrap();
    assert!(text.contains("client-certificate-data:"), "{text}");
    c.kubectl(&admin, &["get", "namespaces"]).unwrap();
    // kube-rs clients (the node agents, the harness) present the certificate too.
    let client = client_from_yaml(&text).await.unwrap();
    let (code, _) = raw(&client, "GET", "/api/v1/namespaces/kube-system", vec![]).await;
    assert_eq!(code, 200);
    assert_eq!(
        c.whoami(&admin).unwrap(),
        json!({"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]})
    );

    let out = c.data_dir().join("alice.kubeconfig");
    let issued = Command::new(env!("CARGO_BIN_EXE_skiff-control"))
        .args([
            "kubeconfig",
            "--user",
            "alice",
            "--group",
            "devs",
            "--group",
            "ops",
            "--expiration",
            "1h",
        ])
        .arg("--data-dir")
        .arg(c.data_dir())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // The server comes from the admin kubeconfig in the data dir.
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .contains(&format!("server: {}", c.server().url))
    );
    assert_eq!(
        c.whoami(&out).unwrap(),
        json!({"username": "alice", "groups": ["devs", "ops", "system:authenticated"]})
    );

    // No CA in the data dir: an error, not a kubeconfig signed by a new CA.
    let empty = tempfile::tempdir().unwrap();
    let failed = Command::new(env!("CARGO_BIN_EXE_skiff-control"))
        .args(["kubeconfig", "--user", "bob", "--data-dir"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("no cluster CA"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_missing_and_foreign_credentials_are_refused() {
    let c = Cluster::start().await;
    let url = &c.server().url;
    let ca = &c.server().ca_pem;

    // A wrong bearer token: 401 with kube's Status, and nothing is written.
    let wrong = client_from_yaml(&pki::kubeconfig(url, ca, "u", Credential::Token("wrong")))
        .await
        .unwrap();
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
    let (code, body) = raw(
        &wrong,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        serde_json::to_vec(&cm).unwrap(),
    )
    .await;
    assert_eq!(code, 401);
    assert_eq!(body, serde_json::from_str::<Value>(UNAUTHORIZED).unwrap());
    let (code, _) = raw(
        &c.admin,
        "GET",
        "/api/v1/namespaces/default/configmaps/x",
        vec![],
    )
    .await;
    assert_eq!(code, 404, "the refused create must not have written");
    // Even a public endpoint refuses a bad token, as kube-apiserver does.
    assert_eq!(raw(&wrong, "GET", "/version", vec![]).await.0, 401);

    // No credential: anonymous, which the default RBAC policy lets read the public endpoints
    // only: a 403 naming system:anonymous elsewhere, as kube-apiserver with anonymous auth.
    let anonymous_yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {url}\n    certificate-authority-data: {}\nusers:\n- name: anon\n  user: {{}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: anon}}\ncurrent-context: c\n",
        base64_std(ca)
    );
    let anonymous = client_from_yaml(&anonymous_yaml).await.unwrap();
    let (code, body) = raw(&anonymous, "GET", "/api/v1/namespaces", vec![]).await;
    assert_eq!(
        (code, body["reason"].as_str(), body["message"].as_str()),
        (
            403,
            Some("Forbidden"),
            Some(
                "namespaces is forbidden: User \"system:anonymous\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope"
            )
        )
    );
    assert_eq!(raw(&anonymous, "GET", "/version", vec![]).await.0, 200);

    // A client certificate from another CA: the handshake refuses it.
    let other = tempfile::tempdir().unwrap();
    let foreign = ClusterCa::load_or_create(other.path())
        .unwrap()
        .issue_client(
            "mallory",
            &["system:masters".into()],
            Duration::from_secs(600),
        )
        .unwrap();
    let foreign = client_from_yaml(&pki::kubeconfig(
        url,
        ca,
        "mallory",
        Credential::Certificate(&foreign),
    ))
    .await
    .unwrap();
    let req = http::Request::get("/api/v1/namespaces")
        .body(Body::empty())
        .unwrap();
    match foreign.send(req).await {
        Err(e) => assert!(!matches!(e, kube::Error::Api(_)), "{e}"),
        Ok(resp) => panic!("a foreign certificate got {}", resp.status()),
    }
}

fn base64_std(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_account_tokens_authenticate_until_their_pod_is_gone() {
    let c = Cluster::start().await;
    let admin = c.admin_kubeconfig();
    c.kubectl(&admin, &["create", "namespace", "foo"]).unwrap();
    c.kubectl(
        &admin,
        &["create", "serviceaccount", "default", "-n", "foo"],
    )
    .unwrap();
    let err = c
        .kubectl(&admin, &["create", "token", "nosuch", "-n", "foo"])
        .unwrap_err();
    assert!(
        err.contains(r#"serviceaccounts "nosuch" not found"#),
        "{err}"
    );
    let err = c
        .kubectl(
            &admin,
            &[
                "create",
                "token",
                "default",
                "-n",
                "foo",
                "--duration",
                "5m",
            ],
        )
        .unwrap_err();
    assert!(
        err.contains("may not specify a duration less than 10 minutes"),
        "{err}"
    );

    let token = c
        .kubectl(
            &admin,
            &[
                "create",
                "token",
                "default",
                "-n",
                "foo",
                "--duration",
                "10m",
            ],
        )
        .unwrap();
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let sa_config = c.token_kubeconfig("sa", token);
    let user = c.whoami(&sa_config).unwrap();
    assert_eq!(user["username"], "system:serviceaccount:foo:default");
    assert_eq!(
        user["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:foo",
            "system:authenticated"
        ])
    );
    // A token for another audience is not one for this API.
    let vault = c
        .kubectl(
            &admin,
            &[
                "create",
                "token",
                "default",
                "-n",
                "foo",
                "--audience",
                "vault",
            ],
        )
        .unwrap();
    let err = c
        .whoami(&c.token_kubeconfig("vault", vault.trim()))
        .unwrap_err();
    assert!(err.contains("Unauthorized"), "{err}");

    // Bound to a pod: works while the pod exists, not after it is deleted.
    let (code, _) = c
        .create(
            "/api/v1/namespaces/foo/pods",
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
        )
        .await;
    assert_eq!(code, 201);
    let bound = c
        .kubectl(
            &admin,
            &[
                "create",
                "token",
                "default",
                "-n",
                "foo",
                "--bound-object-kind",
                "Pod",
                "--bound-object-name",
                "p",
            ],
        )
        .unwrap();
    let bound_config = c.token_kubeconfig("bound", bound.trim());
    let user = c.whoami(&bound_config).unwrap();
    assert_eq!(
        user["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["p"])
    );
    c.kubectl(&admin, &["delete", "pod", "p", "-n", "foo", "--wait=false"])
        .unwrap();
    // kube-apiserver keeps a token's success for 10 s (its token cache), so the token stops
    // working within that period, not at once.
    let gone = (0..150).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        c.whoami(&bound_config).is_err()
    });
    assert!(gone, "a token bound to a deleted pod still authenticates");
    // The unbound token is unaffected.
    assert!(c.whoami(&sa_config).is_ok());

    // An expired token, signed with the cluster's own key, is refused.
    let signer = ServiceAccountTokens::load_or_create(c.data_dir(), DEFAULT_ISSUER, &[]).unwrap();
    let sa = c
        .kubectl(
            &admin,
            &[
                "get",
                "sa",
                "default",
                "-n",
                "foo",
                "-o",
                "jsonpath={.metadata.uid}",
            ],
        )
        .unwrap();
    let grant = Grant {
        namespace: "foo".into(),
        service_account: ObjectRef {
            name: "default".into(),
            uid: sa.trim().into(),
        },
        bound: None,
        audiences: vec![DEFAULT_ISSUER.into()],
        expiration: Duration::from_secs(600),
    };
    let now = jiff::Timestamp::now().as_second();
    let (fresh, _) = signer.issue(&grant, now).unwrap();
    assert!(c.whoami(&c.token_kubeconfig("fresh", &fresh)).is_ok());
    let (expired, _) = signer.issue(&grant, now - 601).unwrap();
    let err = c
        .whoami(&c.token_kubeconfig("expired", &expired))
        .unwrap_err();
    assert!(err.contains("Unauthorized"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bootstrap_tokens_authenticate_until_they_expire() {
    let c = Cluster::start().await;
    let secret = |id: &str, expiration: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
            "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
            "stringData": {"token-id": id, "token-secret": "0123456789abcdef",
                "expiration": expiration, "usage-bootstrap-authentication": "true",
                "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token"}})
    };
    let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).to_string();
    let earlier = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1)).to_string();
    let path = "/api/v1/namespaces/kube-system/secrets";
    assert_eq!(c.create(path, secret("abcdef", &later)).await.0, 201);
    assert_eq!(c.create(path, secret("expire", &earlier)).await.0, 201);

    let valid = c.token_kubeconfig("boot", "abcdef.0123456789abcdef");
    assert_eq!(
        c.whoami(&valid).unwrap(),
        json!({"username": "system:bootstrap:abcdef",
            "groups": ["system:bootstrappers", "system:bootstrappers:kubeadm:default-node-token", "system:authenticated"]})
    );
    for token in ["expire.0123456789abcdef", "abcdef.0123456789abcdee"] {
        let err = c.whoami(&c.token_kubeconfig("bad", token)).unwrap_err();
        assert!(err.contains("Unauthorized"), "{token}: {err}");
    }
}
