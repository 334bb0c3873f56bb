//! Authentication and authorization of the agent's HTTPS API, as the kubelet does them with
//! `--anonymous-auth=false --authorization-mode=Webhook` (kubelet `server/auth.go` and the
//! filter in `server/server.go`).
//!
//! Authentication: the user is the verified client certificate's subject, CN the name and
//! each O a group, plus `system:authenticated` (kube's x509 authenticator behind the
//! authenticated-group adder). A certificate naming no user is 401 `Unauthorized`.
//!
//! Authorization: each request becomes the attributes of the Node API that would allow it
//! (verb from the HTTP method, resource `nodes`, name this node, subresource by path) and is
//! put to the API server as a `SubjectAccessReview`, with the node's own credential. Answers
//! are cached (allowed 5 minutes, denied 30 seconds, the kubelet's webhook defaults), so a
//! `kubectl logs -f` and its neighbours cost one review.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use rustls::pki_types::CertificateDer;

/// The group every authenticated user is in.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// How long the kubelet's webhook authorizer keeps an allowed and a denied answer.
pub const ALLOWED_TTL: Duration = Duration::from_secs(5 * 60);
pub const DENIED_TTL: Duration = Duration::from_secs(30);
/// Cached answers kept at most; past it, expired ones go, then all.
const CACHE_LIMIT: usize = 4096;
/// The webhook's retries of a review that failed in transit or with a 5xx or 429 (kube's
/// `DefaultRetryBackoff`: 5 attempts, from 500 ms, each wait 1.5 times the last).
const REVIEW_ATTEMPTS: u32 = 5;
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);

/// Who a request comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// The user a connection's verified client certificate names, put into each of its requests'
/// extensions by the server; `None` when the certificate names no user.
#[derive(Clone, Debug, Default)]
pub struct PeerUser(pub Option<Arc<User>>);

impl PeerUser {
    /// The user of a verified chain (leaf first): CN, each O a group, and
    /// `system:authenticated`.
    pub fn from_chain(chain: &[CertificateDer<'static>]) -> PeerUser {
        PeerUser(
            chain
                .first()
                .and_then(|leaf| user_from_der(leaf.as_ref()))
                .map(Arc::new),
        )
    }
}

fn user_from_der(der: &[u8]) -> Option<User> {
    let (name, mut groups) = skiff_common::tls::certificate_user(der)?;
    if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
        groups.push(AUTHENTICATED_GROUP.into());
    }
    Some(User { name, groups })
}

/// What a request asks of the Node API (kubelet's `nodeAuthorizerAttributesGetter`): resource
/// `nodes` in the core group, version `v1`, cluster-scoped.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Attributes {
    pub user: User,
    pub verb: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

impl Attributes {
    /// The attributes of `method path` on node `node`: `get`/`create`/`update`/`patch`/
    /// `delete` from GET/POST/PUT/PATCH/DELETE (any other method: an empty verb, which no
    /// rule but `*` grants); subresource `stats`, `metrics`, `log`, `spec` or `checkpoint` for
    /// those paths and what lies under them, `proxy` for everything else (container logs,
    /// exec, health).
    pub fn of(user: &User, method: &Method, path: &str, node: &str) -> Attributes {
        let verb = match *method {
            Method::POST => "create",
            Method::GET => "get",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "",
        };
        let subresource = [
            ("/stats/", "stats"),
            ("/metrics", "metrics"),
            ("/logs/", "log"),
            ("/spec/", "spec"),
            ("/checkpoint/", "checkpoint"),
        ]
        .iter()
        .find(|(prefix, _)| is_subpath(path, prefix))
        .map_or("proxy", |(_, sub)| sub);
        Attributes {
            user: user.clone(),
            verb: verb.into(),
            resource: "nodes".into(),
            subresource: subresource.into(),
            name: node.into(),
        }
    }

    /// `(user=…, verb=…, resource=…, subresource=…)`, as the kubelet's answers word it.
    fn describe(&self) -> String {
        format!(
            "(user={}, verb={}, resource={}, subresource={})",
            self.user.name, self.verb, self.resource, self.subresource
        )
    }
}

/// Whether `path` is `prefix` (without its trailing slash) or lies under it.
fn is_subpath(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Decides whether a request's attributes are allowed; `Err` when it cannot tell (the API
/// server is unreachable, say).
#[async_trait::async_trait]
pub trait NodeAuthorizer: Send + Sync + 'static {
    async fn authorize(&self, attrs: &Attributes) -> Result<bool, String>;
}

/// What the server needs to authorize requests: this node's name and who decides.
#[derive(Clone)]
pub struct Access {
    pub node_name: String,
    pub authorizer: Arc<dyn NodeAuthorizer>,
}

/// The middleware in front of every route: 401 without a user, 403 when not allowed, 500
/// when the decision failed; otherwise the route.
pub async fn authorize(State(access): State<Access>, req: Request, next: Next) -> Response {
    let user = req.extensions().get::<PeerUser>().and_then(|p| p.0.clone());
    let Some(user) = user else {
        return super::text(StatusCode::UNAUTHORIZED, "Unauthorized".into());
    };
    let attrs = Attributes::of(&user, req.method(), req.uri().path(), &access.node_name);
    match access.authorizer.authorize(&attrs).await {
        Ok(true) => next.run(req).await,
        Ok(false) => {
            tracing::debug!(attrs = %attrs.describe(), "forbidden");
            super::text(
                StatusCode::FORBIDDEN,
                format!("Forbidden {}", attrs.describe()),
            )
        }
        Err(e) => {
            tracing::error!(attrs = %attrs.describe(), error = %e, "authorization error");
            super::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Authorization error {}", attrs.describe()),
            )
        }
    }
}

/// The kubelet's webhook authorizer: a `SubjectAccessReview` per decision not in the cache.
pub struct SubjectAccessReviewer {
    client: kube::Client,
    cache: Mutex<HashMap<Attributes, (bool, Instant)>>,
}

impl SubjectAccessReviewer {
    pub fn new(client: kube::Client) -> SubjectAccessReviewer {
        SubjectAccessReviewer {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, attrs: &Attributes) -> Option<bool> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match cache.get(attrs) {
            Some((allowed, until)) if *until > Instant::now() => Some(*allowed),
            _ => None,
        }
    }

    fn remember(&self, attrs: &Attributes, allowed: bool) {
        let ttl = if allowed { ALLOWED_TTL } else { DENIED_TTL };
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(attrs.clone(), (allowed, now + ttl));
    }
}

impl SubjectAccessReviewer {
    /// Create `review`, retrying what may pass on a second try.
    async fn review(&self, review: &SubjectAccessReview) -> Result<SubjectAccessReview, String> {
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let mut delay = FIRST_RETRY_DELAY;
        let mut attempt = 1;
        loop {
            match api.create(&PostParams::default(), review).await {
                Ok(answer) => return Ok(answer),
                Err(e) if attempt < REVIEW_ATTEMPTS && transient(&e) => {
                    tracing::debug!(error = %e, "a SubjectAccessReview failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = delay.mul_f64(1.5);
                    attempt += 1;
                }
                Err(e) => return Err(format!("creating a SubjectAccessReview: {e}")),
            }
        }
    }
}

/// Whether a failed review may succeed when sent again (kube's webhook `DefaultShouldRetry`):
/// an error answer of 5xx or 429, or no answer at all.
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        _ => true,
    }
}

/// The review the kubelet's webhook authorizer sends for `attrs` (the core group and the
/// namespace are empty, so absent, as Go's `omitempty` leaves them).
pub fn review_of(attrs: &Attributes) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(attrs.user.name.clone()),
            groups: Some(attrs.user.groups.clone()),
            resource_attributes: Some(ResourceAttributes {
                version: Some("v1".into()),
                resource: Some(attrs.resource.clone()),
                subresource: Some(attrs.subresource.clone()),
                name: Some(attrs.name.clone()),
                verb: Some(attrs.verb.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[async_trait::async_trait]
impl NodeAuthorizer for SubjectAccessReviewer {
    async fn authorize(&self, attrs: &Attributes) -> Result<bool, String> {
        if let Some(allowed) = self.cached(attrs) {
            return Ok(allowed);
        }
        let answer = self.review(&review_of(attrs)).await?;
        // Denied and no opinion both refuse the request.
        let allowed = answer
            .status
            .is_some_and(|s| s.allowed && s.denied != Some(true));
        self.remember(attrs, allowed);
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> User {
        User {
            name: "alice".into(),
            groups: vec!["devs".into(), AUTHENTICATED_GROUP.into()],
        }
    }

    #[test]
    fn attributes_follow_the_kubelet() {
        let u = alice();
        let cases = [
            (
                Method::GET,
                "/containerLogs/default/web/app",
                "get",
                "proxy",
            ),
            (Method::GET, "/healthz", "get", "proxy"),
            (Method::POST, "/exec/default/web/app", "create", "proxy"),
            (Method::GET, "/logs/", "get", "log"),
            (Method::GET, "/logs/syslog", "get", "log"),
            (Method::GET, "/logs", "get", "log"),
            (Method::GET, "/logsfoo", "get", "proxy"),
            (Method::GET, "/stats/summary", "get", "stats"),
            (Method::GET, "/metrics", "get", "metrics"),
            (Method::GET, "/metrics/cadvisor", "get", "metrics"),
            (Method::GET, "/spec/", "get", "spec"),
            (Method::POST, "/checkpoint/ns/p/c", "create", "checkpoint"),
            (Method::PUT, "/x", "update", "proxy"),
            (Method::PATCH, "/x", "patch", "proxy"),
            (Method::DELETE, "/x", "delete", "proxy"),
            (Method::HEAD, "/x", "", "proxy"),
        ];
        for (method, path, verb, sub) in cases {
            let a = Attributes::of(&u, &method, path, "node-a");
            assert_eq!(
                (a.verb.as_str(), a.subresource.as_str()),
                (verb, sub),
                "{method} {path}"
            );
            assert_eq!((a.resource.as_str(), a.name.as_str()), ("nodes", "node-a"));
        }
    }

    #[test]
    fn the_review_asks_about_the_node_for_the_user() {
        let a = Attributes::of(&alice(), &Method::GET, "/containerLogs/a/b/c", "node-a");
        let review = serde_json::to_value(review_of(&a)).unwrap();
        assert_eq!(
            review["spec"],
            serde_json::json!({
                "user": "alice",
                "groups": ["devs", "system:authenticated"],
                "resourceAttributes": {
                    "version": "v1", "resource": "nodes", "subresource": "proxy",
                    "name": "node-a", "verb": "get",
                },
            })
        );
        assert_eq!(
            a.describe(),
            "(user=alice, verb=get, resource=nodes, subresource=proxy)"
        );
    }

    /// An API server answering each SubjectAccessReview with the next (code, body) of
    /// `answers` (the last one again when they run out), recording what it was sent.
    fn fake_apiserver(
        answers: Vec<(u16, serde_json::Value)>,
    ) -> (kube::Client, Arc<Mutex<Vec<serde_json::Value>>>) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        let answers = Arc::new(Mutex::new(answers));
        let service = tower::service_fn(move |req: axum::http::Request<kube::client::Body>| {
            let (log, answers) = (log.clone(), answers.clone());
            async move {
                assert_eq!(
                    req.uri().path(),
                    "/apis/authorization.k8s.io/v1/subjectaccessreviews"
                );
                let body = req.into_body().collect_bytes().await.unwrap();
                log.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap());
                let (code, answer) = {
                    let mut answers = answers.lock().unwrap();
                    if answers.len() > 1 {
                        answers.remove(0)
                    } else {
                        answers[0].clone()
                    }
                };
                let resp = axum::http::Response::builder()
                    .status(code)
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&answer).unwrap(),
                    ))
                    .unwrap();
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        (kube::Client::new(service, "default"), sent)
    }

    fn reviewed(allowed: bool, denied: bool) -> (u16, serde_json::Value) {
        (
            201,
            serde_json::json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {}, "status": {"allowed": allowed, "denied": denied}}),
        )
    }

    fn failure(code: u16, reason: &str) -> (u16, serde_json::Value) {
        (
            code,
            serde_json::json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                "message": format!("{reason} happened"), "reason": reason, "code": code}),
        )
    }

    fn logs_of(user: &User) -> Attributes {
        Attributes::of(user, &Method::GET, "/containerLogs/a/b/c", "node-a")
    }

    #[tokio::test]
    async fn reviews_ask_the_api_server_and_answers_are_cached() {
        let (client, sent) = fake_apiserver(vec![reviewed(true, false), reviewed(false, false)]);
        let reviewer = SubjectAccessReviewer::new(client);
        let a = logs_of(&alice());
        assert_eq!(reviewer.authorize(&a).await, Ok(true));
        assert_eq!(reviewer.authorize(&a).await, Ok(true));
        let sent = sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 1, "the second answer comes from the cache");
        assert_eq!(sent[0]["kind"], "SubjectAccessReview");
        assert_eq!(sent[0]["spec"]["user"], "alice");
        assert_eq!(
            sent[0]["spec"]["resourceAttributes"]["subresource"],
            "proxy"
        );
    }

    #[tokio::test]
    async fn denied_and_no_opinion_refuse_and_are_cached_too() {
        let (client, sent) = fake_apiserver(vec![reviewed(false, true), reviewed(false, false)]);
        let reviewer = SubjectAccessReviewer::new(client);
        let bob = User {
            name: "bob".into(),
            groups: vec![AUTHENTICATED_GROUP.into()],
        };
        assert_eq!(reviewer.authorize(&logs_of(&alice())).await, Ok(false));
        assert_eq!(reviewer.authorize(&logs_of(&bob)).await, Ok(false));
        assert_eq!(reviewer.authorize(&logs_of(&alice())).await, Ok(false));
        assert_eq!(sent.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_and_others_are_errors() {
        let (client, sent) = fake_apiserver(vec![
            failure(500, "InternalError"),
            failure(429, "TooManyRequests"),
            reviewed(true, false),
        ]);
        let reviewer = SubjectAccessReviewer::new(client);
        assert_eq!(reviewer.authorize(&logs_of(&alice())).await, Ok(true));
        assert_eq!(sent.lock().unwrap().len(), 3);

        // A node without the right to review is not helped by asking again.
        let (client, sent) = fake_apiserver(vec![failure(403, "Forbidden")]);
        let reviewer = SubjectAccessReviewer::new(client);
        let err = reviewer.authorize(&logs_of(&alice())).await.unwrap_err();
        assert!(err.contains("Forbidden happened"), "{err}");
        assert_eq!(sent.lock().unwrap().len(), 1);
        // Errors are not cached; an API server down for good fails after five tries.
        let (client, sent) = fake_apiserver(vec![failure(503, "ServiceUnavailable")]);
        let reviewer = SubjectAccessReviewer::new(client);
        assert!(reviewer.authorize(&logs_of(&alice())).await.is_err());
        assert_eq!(sent.lock().unwrap().len(), 5);
    }

    #[test]
    fn garbage_or_a_nameless_certificate_is_no_user() {
        assert!(PeerUser::from_chain(&[]).0.is_none());
        assert!(
            PeerUser::from_chain(&[CertificateDer::from(b"junk".to_vec())])
                .0
                .is_none()
        );
    }
}
