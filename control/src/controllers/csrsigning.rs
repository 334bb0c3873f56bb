//! CSR signing controller (kube-controller-manager's `csrsigning`): signs approved
//! CertificateSigningRequests of the signers `kubernetes.io/kube-apiserver-client` and
//! `kubernetes.io/kube-apiserver-client-kubelet` with the cluster CA, for
//! `spec.expirationSeconds` capped at `--cluster-signing-duration`. A request its signer will
//! not sign (kube's `ValidateKubeletClientCSR`, the client usages) gets the `Failed` condition
//! instead. Reads and writes go through the API like every controller; only the CA key comes
//! from disk, as kube's `--cluster-signing-key-file`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use tokio::task::JoinSet;

use crate::apiserver::pki::ClusterCa;
use crate::csr;
use crate::runtime::{self, Context, Error, Result};

/// The reason of the `Failed` condition (kube's).
const VALIDATION_FAILURE: &str = "SignerValidationFailure";

struct Signer {
    ca: ClusterCa,
    max_duration: Duration,
}

pub fn spawn(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let Some(dir) = ctx.config.cluster_signing_dir.clone() else {
        tracing::warn!("no cluster signing CA configured: CSRs will not be signed");
        return;
    };
    let ca = match ClusterCa::load(&dir) {
        Ok(ca) => ca,
        Err(e) => {
            tracing::error!(error = %e, "loading the cluster signing CA failed: CSRs will not be signed");
            return;
        }
    };
    let signer = Arc::new(Signer {
        ca,
        max_duration: ctx.config.cluster_signing_duration,
    });
    let informer = &ctx.informers.certificate_signing_requests;
    let controller = Controller::for_shared_stream(informer.subscribe(), informer.store());
    runtime::drive(
        "csrsigning",
        controller,
        ctx,
        2,
        move |csr, ctx| reconcile(csr, ctx, signer.clone()),
        tasks,
    );
}

/// What the signer makes of a request.
enum Verdict {
    /// Not ours, not approved, or already finished.
    Skip,
    Sign(Vec<u8>),
    Fail(String),
}

async fn reconcile(
    csr: Arc<CertificateSigningRequest>,
    ctx: Arc<Context>,
    signer: Arc<Signer>,
) -> Result<Action> {
    let verdict = judge(&csr);
    if !matches!(verdict, Verdict::Skip) {
        let mut updated = (*csr).clone();
        let status = updated.status.get_or_insert_with(Default::default);
        match verdict {
            Verdict::Sign(der) => {
                let pem = signer.sign(&csr, &der)?;
                status.certificate = Some(k8s_openapi::ByteString(pem.into_bytes()));
            }
            Verdict::Fail(message) => {
                status
                    .conditions
                    .get_or_insert_with(Vec::new)
                    .push(failed(message));
            }
            Verdict::Skip => {}
        }
        write_status(&ctx, &updated).await?;
    }
    Ok(runtime::done(csr.as_ref(), &ctx))
}

/// kube's `signer.handle` up to signing: approved, not failed, not issued, of a signer this
/// controller runs, and acceptable to it.
fn judge(obj: &CertificateSigningRequest) -> Verdict {
    let status = obj.status.clone().unwrap_or_default();
    let has = |ty: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == ty && c.status == "True")
    };
    let issued = status.certificate.as_ref().is_some_and(|c| !c.0.is_empty());
    if !has("Approved") || has("Denied") || has("Failed") || issued {
        return Verdict::Skip;
    }
    let spec = &obj.spec;
    let usages = spec.usages.clone().unwrap_or_default();
    let check = match spec.signer_name.as_str() {
        csr::KUBE_APISERVER_CLIENT => apiserver_client,
        csr::KUBE_APISERVER_CLIENT_KUBELET => csr::validate_kubelet_client,
        _ => return Verdict::Skip,
    };
    let req = match csr::parse_pem(&spec.request.0) {
        Ok(r) => r,
        Err(e) => return Verdict::Fail(e),
    };
    match check(&req, &usages) {
        Ok(()) => Verdict::Sign(req.der),
        Err(e) => Verdict::Fail(e),
    }
}

/// The client signer judges the usages only (any subject but `system:masters`, which
/// admission refuses at create).
fn apiserver_client(_req: &csr::Request, usages: &[String]) -> std::result::Result<(), String> {
    csr::validate_apiserver_client_usages(usages)
}

fn failed(message: String) -> CertificateSigningRequestCondition {
    CertificateSigningRequestCondition {
        type_: "Failed".into(),
        status: "True".into(),
        reason: Some(VALIDATION_FAILURE.into()),
        message: Some(message),
        last_update_time: Some(runtime::now()),
        last_transition_time: None::<Time>,
    }
}

impl Signer {
    /// The certificate (PEM) for `der`, valid for what the request asks, at most the signer's
    /// maximum.
    fn sign(&self, obj: &CertificateSigningRequest, der: &[u8]) -> Result<String> {
        let asked = obj
            .spec
            .expiration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs);
        let validity = asked.map_or(self.max_duration, |d| d.min(self.max_duration));
        let usages = obj.spec.usages.clone().unwrap_or_default();
        self.ca
            .sign_request(der, &usages, validity)
            .map_err(|e| Error::other(format!("signing: {e:#}")))
    }
}

/// `PUT status` guarded by the resource version read (kube's `UpdateStatus`); a conflict or
/// a vanished request is left to the next event.
async fn write_status(ctx: &Context, csr: &CertificateSigningRequest) -> Result<()> {
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    let name = csr.metadata.name.clone().unwrap_or_default();
    match api.replace_status(&name, &PostParams::default(), csr).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
