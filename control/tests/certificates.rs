//! The certificates API end to end with real kubectl: CertificateSigningRequests created,
//! listed (`kubectl get csr`), approved and denied (`kubectl certificate approve|deny`), signed
//! by the csrsigning controller with the cluster CA, and the issued certificate used to log
//! in; approval needs `approve` on the signer; the kubelet client signer refuses subjects that
//! are not a node's. kubectl runs blocking, so the tests run on a multi-threaded runtime.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::Api;
use serde_json::{Value, json};

use common::{TestCluster, test_config};
use skiff_control::apiserver::pki::{self, Credential};
use skiff_tests::Kubectl;

const CLIENT: &str = "kubernetes.io/kube-apiserver-client";
const KUBELET: &str = "kubernetes.io/kube-apiserver-client-kubelet";

/// token,user,uid for the users of these tests.
const TOKENS: &str = "bob-token,bob,u-bob\n";

struct Certs {
    cluster: TestCluster,
    dir: tempfile::TempDir,
    kubectl: Kubectl,
}

impl Certs {
    async fn start() -> Certs {
        Self::start_with("csrsigning").await
    }

    async fn start_with(controllers: &str) -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens.csv");
        std::fs::write(&tokens, TOKENS).unwrap();
        let cluster = TestCluster::start_with_api(test_config(controllers), |c| {
            c.token_auth_file = Some(tokens);
        })
        .await;
        Certs {
            cluster,
            dir,
            kubectl: Kubectl::newest().unwrap(),
        }
    }

    fn kubeconfig(&self, name: &str, credential: Credential<'_>) -> PathBuf {
        let server = self.cluster.server.as_ref().unwrap();
        let text = pki::kubeconfig(&server.url, &server.ca_pem, name, credential);
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn admin(&self) -> PathBuf {
        let server = self.cluster.server.as_ref().unwrap();
        let path = self.dir.path().join("admin.kubeconfig");
        std::fs::write(&path, &server.kubeconfig).unwrap();
        path
    }

    fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
        let out = self
            .kubectl
            .command_with(kubeconfig, self.dir.path())
            .args(args)
            .output()
            .unwrap();
        common::stdout_or_stderr(out)
    }

    fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_as(&self.admin(), args)
            .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
    }

    /// `kubectl create -f` of a CSR for a fresh key with `cn` and `orgs`: the key (PEM).
    fn create_csr(
        &self,
        name: &str,
        signer: &str,
        cn: &str,
        orgs: &[&str],
        extra: Value,
    ) -> String {
        self.create_csr_as(&self.admin(), name, signer, cn, orgs, extra)
    }

    /// [`Certs::create_csr`] as the user of `kubeconfig`.
    fn create_csr_as(
        &self,
        kubeconfig: &Path,
        name: &str,
        signer: &str,
        cn: &str,
        orgs: &[&str],
        extra: Value,
    ) -> String {
        let (key, request) = csr_pem(cn, orgs);
        let mut obj = json!({
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": {"name": name},
            "spec": {
                "request": base64::engine::general_purpose::STANDARD.encode(request),
                "signerName": signer,
                "usages": ["digital signature", "client auth"],
            },
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            obj["spec"][k] = v.clone();
        }
        let path = self.dir.path().join(format!("{name}.json"));
        std::fs::write(&path, obj.to_string()).unwrap();
        let out = self
            .kubectl_as(kubeconfig, &["create", "-f", path.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("creating CSR {name}: {e}"));
        assert_eq!(
            out.trim(),
            format!("certificatesigningrequest.certificates.k8s.io/{name} created")
        );
        key
    }

    async fn csr(&self, name: &str) -> CertificateSigningRequest {
        let api: Api<CertificateSigningRequest> = Api::all(self.cluster.client.clone());
        api.get(name).await.unwrap()
    }

    /// Wait until `check` holds for the CSR `name`.
    async fn wait_csr(
        &self,
        what: &str,
        name: &str,
        check: impl Fn(&CertificateSigningRequest) -> bool,
    ) -> CertificateSigningRequest {
        self.cluster
            .wait_for(what, Duration::from_secs(20), || async {
                let csr = self.csr(name).await;
                check(&csr).then_some(csr)
            })
            .await
    }
}

/// A fresh P-256 key and a CSR for it (both PEM).
fn csr_pem(cn: &str, orgs: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    for o in orgs {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, *o);
    }
    let csr = params.serialize_request(&key).unwrap();
    (key.serialize_pem(), csr.pem().unwrap())
}

fn issued(csr: &CertificateSigningRequest) -> Option<String> {
    let cert = csr.status.as_ref()?.certificate.as_ref()?;
    (!cert.0.is_empty()).then(|| String::from_utf8(cert.0.clone()).unwrap())
}

fn condition<'a>(
    csr: &'a CertificateSigningRequest,
    ty: &str,
) -> Option<&'a k8s_openapi::api::certificates::v1::CertificateSigningRequestCondition> {
    csr.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
}

/// The `kubectl get csr` row of `name`, split on whitespace.
fn row(table: &str, name: &str) -> Vec<String> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in\n{table}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_csr_is_approved_signed_and_logs_in() {
    let c = Certs::start().await;
    // The requester is whoever created it, whatever the body claims.
    let key = c.create_csr(
        "jane",
        CLIENT,
        "jane",
        &["devs"],
        json!({"username": "mallory", "groups": ["system:masters"], "expirationSeconds": 86400}),
    );
    let csr = c.csr("jane").await;
    assert_eq!(csr.spec.username.as_deref(), Some("admin"));
    assert!(
        !csr.spec.groups.iter().flatten().any(|g| g == "devs"),
        "{:?}",
        csr.spec.groups
    );

    let table = c.kubectl(&["get", "csr"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "AGE",
            "SIGNERNAME",
            "REQUESTOR",
            "REQUESTEDDURATION",
            "CONDITION"
        ]
    );
    let jane = row(&table, "jane");
    assert_eq!(jane[2..], [CLIENT, "admin", "24h", "Pending"]);

    let out = c.kubectl(&["certificate", "approve", "jane"]);
    assert_eq!(
        out.trim(),
        "certificatesigningrequest.certificates.k8s.io/jane approved"
    );
    let csr = c
        .wait_csr("the certificate of jane", "jane", |c| issued(c).is_some())
        .await;
    let approved = condition(&csr, "Approved").unwrap();
    assert_eq!(approved.status, "True");
    assert_eq!(approved.reason.as_deref(), Some("KubectlApprove"));
    assert!(approved.last_update_time.is_some());
    let jane = row(&c.kubectl(&["get", "csr", "jane"]), "jane");
    assert_eq!(jane[5], "Approved,Issued");

    // The certificate chains to the cluster CA and lives as long as asked for.
    let cert_pem = issued(&csr).unwrap();
    let ca_pem = c.cluster.server.as_ref().unwrap().ca_pem.clone();
    let (_, ca) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).unwrap();
    let ca = ca.parse_x509().unwrap();
    let (_, cert) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).unwrap();
    let cert = cert.parse_x509().unwrap();
    assert_eq!(cert.issuer(), ca.subject());
    cert.verify_signature(Some(ca.public_key())).unwrap();
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(lifetime, 86400 + 300, "a day plus the 5-minute backdate");

    // It logs in as its CN and O.
    let issued_cert = pki::ClientCert {
        cert_pem,
        key_pem: key,
    };
    let jane = c.kubeconfig("jane", Credential::Certificate(&issued_cert));
    let who: Value = serde_json::from_str(
        &c.kubectl_as(&jane, &["auth", "whoami", "-o", "json"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "jane");
    let groups = who["status"]["userInfo"]["groups"].as_array().unwrap();
    assert!(groups.contains(&json!("devs")), "{groups:?}");
    assert!(
        groups.contains(&json!("system:authenticated")),
        "{groups:?}"
    );
    // And holds nothing it was not granted.
    let err = c.kubectl_as(&jane, &["get", "pods"]).unwrap_err();
    assert!(
        err.contains("User \"jane\" cannot list resource \"pods\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approval_needs_the_signer_and_bad_requests_fail() {
    let c = Certs::start().await;
    // bob may update approvals but approve for no signer yet.
    c.kubectl(&[
        "create",
        "clusterrole",
        "csr-approver",
        "--verb=get,list,update",
        "--resource=certificatesigningrequests,certificatesigningrequests/approval",
    ]);
    c.kubectl(&[
        "create",
        "clusterrolebinding",
        "bob-approves",
        "--clusterrole=csr-approver",
        "--user=bob",
    ]);
    let bob = c.kubeconfig("bob", Credential::Token("bob-token"));

    c.create_csr("for-bob", "example.com/widgets", "w1", &[], json!({}));
    let err = c
        .kubectl_as(&bob, &["certificate", "approve", "for-bob"])
        .unwrap_err();
    assert!(
        err.contains(r#"certificatesigningrequests.certificates.k8s.io "for-bob" is forbidden: user not permitted to approve requests with signerName "example.com/widgets""#),
        "{err}"
    );
    assert!(condition(&c.csr("for-bob").await, "Approved").is_none());
    // `approve` on `<domain>/*` covers every signer of the domain.
    let signers = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "example-signers"},
        "rules": [{"apiGroups": ["certificates.k8s.io"], "resources": ["signers"],
            "resourceNames": ["example.com/*"], "verbs": ["approve"]}]});
    let path = c.dir.path().join("signers.json");
    std::fs::write(&path, signers.to_string()).unwrap();
    c.kubectl(&["create", "-f", path.to_str().unwrap()]);
    c.kubectl(&[
        "create",
        "clusterrolebinding",
        "bob-signers",
        "--clusterrole=example-signers",
        "--user=bob",
    ]);
    c.kubectl_as(&bob, &["certificate", "approve", "for-bob"])
        .unwrap();
    let csr = c.csr("for-bob").await;
    assert!(condition(&csr, "Approved").is_some());
    // No signer of skiff's signs for example.com.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(issued(&c.csr("for-bob").await).is_none());

    // Denied: never issued, and no later approval.
    c.create_csr("denied", CLIENT, "eve", &[], json!({}));
    let out = c.kubectl(&["certificate", "deny", "denied"]);
    assert_eq!(
        out.trim(),
        "certificatesigningrequest.certificates.k8s.io/denied denied"
    );
    // kubectl refuses to approve it; the API refuses a verdict on both sides too.
    let err = c
        .kubectl_as(&c.admin(), &["certificate", "approve", "denied"])
        .unwrap_err();
    assert!(
        err.contains(r#"certificate signing request "denied" is already Denied"#),
        "{err}"
    );
    let mut both = serde_json::to_value(c.csr("denied").await).unwrap();
    both["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "Approved", "status": "True", "reason": "Sneaky"}));
    let path = "/apis/certificates.k8s.io/v1/certificatesigningrequests/denied/approval";
    let (code, status) = common::raw_request(
        &c.cluster.client,
        "PUT",
        path,
        "application/json",
        both.to_string().into_bytes(),
    )
    .await;
    assert_eq!(code, 422, "{status}");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("Approved and Denied conditions are mutually exclusive"),
        "{message}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(issued(&c.csr("denied").await).is_none());
    assert_eq!(
        row(&c.kubectl(&["get", "csr", "denied"]), "denied")[5],
        "Denied"
    );

    // The kubelet client signer signs node identities only.
    c.create_csr(
        "not-a-node",
        KUBELET,
        "system:node:n1",
        &["wheel"],
        json!({}),
    );
    c.kubectl(&["certificate", "approve", "not-a-node"]);
    let csr = c
        .wait_csr("the Failed condition", "not-a-node", |c| {
            condition(c, "Failed").is_some()
        })
        .await;
    let failed = condition(&csr, "Failed").unwrap();
    assert_eq!(failed.reason.as_deref(), Some("SignerValidationFailure"));
    assert_eq!(
        failed.message.as_deref(),
        Some("subject organization is not system:nodes")
    );
    assert!(issued(&csr).is_none());
    assert_eq!(
        row(&c.kubectl(&["get", "csr", "not-a-node"]), "not-a-node")[5],
        "Approved,Failed"
    );
    // ... and signs them.
    c.create_csr(
        "node-n1",
        KUBELET,
        "system:node:n1",
        &["system:nodes"],
        json!({}),
    );
    c.kubectl(&["certificate", "approve", "node-n1"]);
    c.wait_csr("the node certificate", "node-n1", |c| issued(c).is_some())
        .await;

    // The client signer never issues system:masters; bad requests are invalid.
    let (_, masters) = csr_pem("root", &["system:masters"]);
    let obj = |name: &str, request: &str, signer: &str, usages: Value| {
        json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {"request": base64::engine::general_purpose::STANDARD.encode(request),
            "signerName": signer, "usages": usages}})
    };
    let path = c.dir.path().join("bad.json");
    let create = |obj: Value| {
        std::fs::write(&path, obj.to_string()).unwrap();
        c.kubectl_as(&c.admin(), &["create", "-f", path.to_str().unwrap()])
            .unwrap_err()
    };
    let err = create(obj("masters", &masters, CLIENT, json!(["client auth"])));
    assert!(err.contains("use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"), "{err}");
    let err = create(obj("garbage", "not a csr", CLIENT, json!(["client auth"])));
    assert!(err.contains("spec.request: Invalid value"), "{err}");
    assert!(
        err.contains("PEM block type must be CERTIFICATE REQUEST"),
        "{err}"
    );
    let (_, fine) = csr_pem("x", &[]);
    let err = create(obj(
        "unsigned",
        &fine,
        "widgets",
        json!(["client auth", "flying"]),
    ));
    assert!(
        err.contains("spec.signerName: Invalid value: \"widgets\""),
        "{err}"
    );
    assert!(
        err.contains("spec.usages[1]: Unsupported value: \"flying\""),
        "{err}"
    );
}

/// The bootstrap token of the auto-approval tests.
const BOOTSTRAP_TOKEN: &str = "abcdef.0123456789abcdef";
const NODE_CLIENT_MESSAGE: &str =
    "Auto approving kubelet client certificate after SubjectAccessReview.";
const SELF_NODE_CLIENT_MESSAGE: &str =
    "Auto approving self kubelet client certificate after SubjectAccessReview.";

impl Certs {
    /// A kubeconfig with [`BOOTSTRAP_TOKEN`], whose Secret the admin creates in kube-system as
    /// `kubeadm token create` does.
    fn bootstrapper(&self) -> PathBuf {
        let (id, secret) = BOOTSTRAP_TOKEN.split_once('.').unwrap();
        self.kubectl(&[
            "create",
            "secret",
            "generic",
            &format!("bootstrap-token-{id}"),
            "-n",
            "kube-system",
            "--type=bootstrap.kubernetes.io/token",
            &format!("--from-literal=token-id={id}"),
            &format!("--from-literal=token-secret={secret}"),
            "--from-literal=usage-bootstrap-authentication=true",
        ]);
        self.kubeconfig("bootstrap", Credential::Token(BOOTSTRAP_TOKEN))
    }

    /// Wait until the controller approved `name` and the signer issued it.
    async fn wait_issued(&self, name: &str) -> CertificateSigningRequest {
        self.wait_csr(&format!("the certificate of {name}"), name, |c| {
            issued(c).is_some()
        })
        .await
    }

    /// Assert `name` got no verdict and no certificate.
    async fn assert_pending(&self, name: &str) {
        let csr = self.csr(name).await;
        assert!(
            csr.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_none_or(Vec::is_empty),
            "{name}: {:?}",
            csr.status.as_ref().and_then(|s| s.conditions.as_ref())
        );
        assert!(issued(&csr).is_none(), "{name}");
        assert_eq!(
            row(&self.kubectl(&["get", "csr", name]), name)[5],
            "Pending"
        );
    }
}

/// The `AutoApproved` condition of `csr` with `message`.
fn assert_auto_approved(csr: &CertificateSigningRequest, message: &str) {
    let approved = condition(csr, "Approved").expect("approved");
    assert_eq!(approved.status, "True");
    assert_eq!(approved.reason.as_deref(), Some("AutoApproved"));
    assert_eq!(approved.message.as_deref(), Some(message));
    assert!(approved.last_update_time.is_some());
}

/// The subject's (CN, O) of a PEM certificate.
fn subject(cert_pem: &str) -> (String, Vec<String>) {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    let text = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| a.as_str().unwrap().to_string();
    let cn = cert.subject().iter_common_name().map(text).collect();
    (cn, cert.subject().iter_organization().map(text).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_bootstraps_with_a_token_and_renews_itself() {
    let c = Certs::start_with("csrsigning,csrapproving").await;
    // kubeadm's node bootstrap bindings, to system:bootstrappers and system:nodes.
    let csr_role = "system:certificates.k8s.io:certificatesigningrequests";
    for (name, role, group) in [
        (
            "skiff:kubelet-bootstrap",
            "system:node-bootstrapper".to_string(),
            "system:bootstrappers",
        ),
        (
            "skiff:node-autoapprove-bootstrap",
            format!("{csr_role}:nodeclient"),
            "system:bootstrappers",
        ),
        (
            "skiff:node-autoapprove-certificate-rotation",
            format!("{csr_role}:selfnodeclient"),
            "system:nodes",
        ),
        (
            "skiff:node-proxier",
            "system:node-proxier".to_string(),
            "system:nodes",
        ),
    ] {
        let b: Value =
            serde_json::from_str(&c.kubectl(&["get", "clusterrolebinding", name, "-o", "json"]))
                .unwrap();
        assert_eq!(b["roleRef"]["name"], role.as_str(), "{name}");
        assert_eq!(
            b["subjects"],
            json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}]),
            "{name}"
        );
    }

    // The bootstrapper asks for n1's client certificate: approved as a node client request.
    let bootstrap = c.bootstrapper();
    let key = c.create_csr_as(
        &bootstrap,
        "node-csr-n1",
        KUBELET,
        "system:node:n1",
        &["system:nodes"],
        json!({}),
    );
    let csr = c.wait_issued("node-csr-n1").await;
    assert_eq!(
        csr.spec.username.as_deref(),
        Some("system:bootstrap:abcdef")
    );
    assert_auto_approved(&csr, NODE_CLIENT_MESSAGE);
    let cert_pem = issued(&csr).unwrap();
    assert_eq!(
        subject(&cert_pem),
        (
            "system:node:n1".to_string(),
            vec!["system:nodes".to_string()]
        )
    );
    let row = row(
        &c.kubectl_as(&bootstrap, &["get", "csr", "node-csr-n1"])
            .unwrap(),
        "node-csr-n1",
    );
    assert_eq!(
        row[3..],
        ["system:bootstrap:abcdef", "<none>", "Approved,Issued"]
    );

    // The node logs in with it ...
    let n1 = c.kubeconfig(
        "n1",
        Credential::Certificate(&pki::ClientCert {
            cert_pem,
            key_pem: key,
        }),
    );
    let who: Value = serde_json::from_str(
        &c.kubectl_as(&n1, &["auth", "whoami", "-o", "json"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "system:node:n1");
    // ... may not have another node's certificate approved ...
    c.create_csr_as(
        &n1,
        "n1-for-n2",
        KUBELET,
        "system:node:n2",
        &["system:nodes"],
        json!({}),
    );
    // ... and renews its own.
    c.create_csr_as(
        &n1,
        "n1-renewal",
        KUBELET,
        "system:node:n1",
        &["system:nodes"],
        json!({}),
    );
    let renewal = c.wait_issued("n1-renewal").await;
    assert_eq!(renewal.spec.username.as_deref(), Some("system:node:n1"));
    assert_auto_approved(&renewal, SELF_NODE_CLIENT_MESSAGE);
    assert_eq!(subject(&issued(&renewal).unwrap()).0, "system:node:n1");
    // The controller reviewed n1-for-n2 before or alongside the later renewal.
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.assert_pending("n1-for-n2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_the_requester_may_not_have_stay_pending() {
    let c = Certs::start_with("csrsigning,csrapproving").await;
    let bootstrap = c.bootstrapper();
    // bob may create CSRs, nothing more.
    c.kubectl(&[
        "create",
        "clusterrole",
        "csr-creator",
        "--verb=create,get",
        "--resource=certificatesigningrequests",
    ]);
    c.kubectl(&[
        "create",
        "clusterrolebinding",
        "bob-creates-csrs",
        "--clusterrole=csr-creator",
        "--user=bob",
    ]);
    let bob = c.kubeconfig("bob", Credential::Token("bob-token"));
    c.create_csr_as(
        &bob,
        "bob-node",
        KUBELET,
        "system:node:n3",
        &["system:nodes"],
        json!({}),
    );
    // Not a node's subject: never recognized, whoever asks.
    c.create_csr_as(
        &bootstrap,
        "masters",
        KUBELET,
        "system:node:n1",
        &["system:masters"],
        json!({}),
    );
    // A client signer request is not the approver's either.
    c.create_csr_as(
        &bootstrap,
        "client",
        CLIENT,
        "system:node:n1",
        &["system:nodes"],
        json!({}),
    );
    // A later request the bootstrapper may have is approved: the ones before it were seen.
    c.create_csr_as(
        &bootstrap,
        "late",
        KUBELET,
        "system:node:n4",
        &["system:nodes"],
        json!({}),
    );
    let late = c.wait_issued("late").await;
    assert_auto_approved(&late, NODE_CLIENT_MESSAGE);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for name in ["bob-node", "masters", "client"] {
        c.assert_pending(name).await;
    }

    // Granted later, bob's pending request is approved on a retry, as kube's approver retries
    // a recognized request with back-off.
    c.kubectl(&[
        "create",
        "clusterrolebinding",
        "bob-node-client",
        "--clusterrole=system:certificates.k8s.io:certificatesigningrequests:nodeclient",
        "--user=bob",
    ]);
    let csr = c
        .cluster
        .wait_for(
            "bob's request approved",
            Duration::from_secs(60),
            || async {
                let csr = c.csr("bob-node").await;
                issued(&csr).is_some().then_some(csr)
            },
        )
        .await;
    assert_auto_approved(&csr, NODE_CLIENT_MESSAGE);
    c.assert_pending("masters").await;
}
