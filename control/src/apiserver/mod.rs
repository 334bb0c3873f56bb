//! The Kubernetes-compatible API server: HTTPS (rustls), authentication ([`authn`]: client
//! certificates, bearer tokens, service-account and bootstrap tokens), and the REST semantics
//! of kube-apiserver over a [`Store`].
//!
//! Layout follows the request path: [`request`] works out what is asked, [`handlers`] speaks
//! HTTP, [`registry`] gives objects their Kubernetes semantics over the store, with
//! [`admission`], [`defaults`] and [`validation`] on the write path and [`watch`],
//! [`selectors`] and [`table`] on the read path; [`nodeproxy`] forwards `pods/log` to the
//! node agents.

pub mod admission;
pub mod authn;
pub mod certificates;
pub mod cluster_info;
pub mod csr_strategy;
pub mod defaults;
pub mod discovery;
pub mod eviction;
pub mod handlers;
pub mod master_endpoints;
pub mod nodeauthz;
pub mod nodeproxy;
pub mod noderestriction;
pub mod nodestream;
pub mod object;
pub mod openapi;
pub mod patch;
pub mod pki;
pub mod protobuf;
pub mod rbac;
pub mod registry;
pub mod request;
pub mod resources;
pub mod selectors;
pub mod service_strategy;
pub mod status;
pub mod table;
#[cfg(test)]
mod test_rng;
pub mod validation;
pub mod watch;
pub mod wire;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch as signal;

use crate::store::{Store, StoreError};

/// How long a stopping API server waits for its requests in flight (kube-apiserver waits for
/// non-long-running requests up to its request timeout; watches are ended, not waited for).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

use self::admission::{Allocators, Ipv4Cidr, PortRange};
use self::authn::{Authenticator, PeerIdentity, ServiceAccountTokens, StaticTokens};
use self::handlers::Handler;
use self::master_endpoints::MasterEndpoints;
use self::pki::Pki;
use self::registry::{Registry, WriteOptions};

/// Everything the API server needs to start.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub data_dir: PathBuf,
    pub bind_address: IpAddr,
    /// 0 picks a free port (tests).
    pub secure_port: u16,
    /// The address put into the kubeconfig and the `kubernetes` service's endpoints;
    /// defaults to the bind address (127.0.0.1 when binding to all addresses).
    pub advertise_address: Option<IpAddr>,
    pub service_cidr: Ipv4Cidr,
    pub node_ports: PortRange,
    pub token_auth_file: Option<PathBuf>,
    /// The `iss` of the service-account tokens this server signs and accepts.
    pub service_account_issuer: String,
    /// The audiences tokens must name to be accepted (kube's `--api-audiences`); the issuer
    /// when empty.
    pub api_audiences: Vec<String>,
    pub tls_sans: Vec<String>,
    pub kubeconfig_out: PathBuf,
    /// How often history older than the previous tick is compacted away (kube: 5 minutes).
    pub compaction_interval: Duration,
    /// Events older than this are deleted (kube's `--event-ttl`, 1 hour).
    pub event_ttl: Duration,
}

impl ApiConfig {
    pub fn new(data_dir: PathBuf) -> ApiConfig {
        ApiConfig {
            kubeconfig_out: data_dir.join("admin.kubeconfig"),
            data_dir,
            bind_address: IpAddr::from([127, 0, 0, 1]),
            secure_port: 6443,
            advertise_address: None,
            service_cidr: Ipv4Cidr::parse("10.96.0.0/12").expect("valid default"),
            node_ports: PortRange::parse("30000-32767").expect("valid default"),
            token_auth_file: None,
            service_account_issuer: authn::serviceaccount::DEFAULT_ISSUER.to_string(),
            api_audiences: Vec::new(),
            tls_sans: Vec::new(),
            compaction_interval: Duration::from_secs(300),
            event_ttl: Duration::from_secs(3600),
        }
    }

    fn advertise(&self) -> IpAddr {
        match self.advertise_address {
            Some(a) => a,
            None if self.bind_address.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            None => self.bind_address,
        }
    }
}

/// A started API server.
pub struct ApiServer {
    pub local_addr: SocketAddr,
    /// `https://<advertise>:<port>`
    pub url: String,
    pub ca_pem: String,
    pub admin_token: String,
    /// A kubeconfig with the admin token, for tests and tools in-process; the file at
    /// `kubeconfig_out` carries the `kubernetes-admin` client certificate instead. No
    /// component uses it.
    pub kubeconfig: String,
    /// In-memory kubeconfigs with client certificates for `system:kube-controller-manager`
    /// and `system:kube-scheduler`.
    pub controller_manager_kubeconfig: String,
    pub scheduler_kubeconfig: String,
    stop: signal::Sender<bool>,
    /// Sent once this server has left the `kubernetes` endpoints: the listener closes, watches
    /// end, requests in flight finish.
    drain: signal::Sender<bool>,
    /// Keeps the `kubernetes` endpoints; on stop it takes this server out of them.
    endpoints: tokio::task::JoinHandle<()>,
    /// Accepts connections; on drain it stops accepting and ends when its connections have.
    serve: tokio::task::JoinHandle<()>,
    /// Background work that ends by itself on the stop signal (maintenance, the RBAC index).
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ApiServer {
    /// Start serving on `store`: bootstrap the system namespaces and the `kubernetes`
    /// service, write the admin kubeconfig, and accept connections in the background.
    pub async fn start(config: ApiConfig, store: Arc<dyn Store>) -> Result<ApiServer> {
        let advertise = config.advertise();
        let allocators = Allocators::new(store.clone(), config.service_cidr, config.node_ports);
        let service_ip = allocators.kubernetes_service_ip();
        let sans = serving_names(&config, service_ip, advertise);
        let pki = Pki::load_or_create(&config.data_dir, &sans)?;
        let authn = authenticator(&config, &pki)?;

        let listener = TcpListener::bind((config.bind_address, config.secure_port))
            .await
            .with_context(|| {
                format!(
                    "binding {}:{} (another apiserver running?)",
                    config.bind_address, config.secure_port
                )
            })?;
        let local_addr = listener.local_addr()?;
        let url = format!("https://{}", SocketAddr::new(advertise, local_addr.port()));

        let registry = Registry::new(store.clone(), allocators);
        bootstrap(&registry, local_addr.port())
            .await
            .context("creating the system namespaces and the kubernetes service")?;
        cluster_info::publish(&registry, &url, &pki.ca_pem)
            .await
            .context("publishing kube-public/cluster-info")?;
        let (authorizer, node_authz) = authorizers(&registry, &store).await?;
        let master = MasterEndpoints {
            address: advertise,
            port: local_addr.port(),
        };
        master
            .reconcile(&registry)
            .await
            .context("publishing the kubernetes service endpoints")?;
        let (drain, draining) = signal::channel(false);
        let handler = Arc::new(Handler {
            stopping: draining.clone(),
            registry,
            authn,
            rbac: authorizer,
            node_authz,
            advertise: SocketAddr::new(advertise, local_addr.port()).to_string(),
            nodes: nodeproxy::NodeClient::new(pki.kubelet_client_config.clone()),
        });

        pki.write_kubeconfig(&config.kubeconfig_out, &url)
            .with_context(|| format!("writing {}", config.kubeconfig_out.display()))?;
        let kubeconfig = pki.token_kubeconfig(&url);
        let controller_manager_kubeconfig =
            pki.component_kubeconfig(&url, pki::CONTROLLER_MANAGER_USER)?;
        let scheduler_kubeconfig = pki.component_kubeconfig(&url, pki::SCHEDULER_USER)?;

        let (stop, stopped) = signal::channel(false);
        let tls = tokio_rustls::TlsAcceptor::from(pki.server_config.clone());
        let serve = tokio::spawn(serve(listener, tls, handler.clone(), draining));
        let endpoints = tokio::spawn(keep_master_endpoints(
            master,
            handler.clone(),
            stopped.clone(),
        ));
        let rbac = tokio::spawn(follow_rbac(handler.clone(), stopped.clone()));
        let graph = handler.node_authz.clone();
        let node_graph = tokio::spawn({
            let stopped = stopped.clone();
            async move { graph.follow(stopped).await }
        });
        let maintain = tokio::spawn(maintenance(
            store,
            handler,
            config.compaction_interval,
            config.event_ttl,
            stopped,
        ));
        Ok(ApiServer {
            local_addr,
            url,
            ca_pem: pki.ca_pem.clone(),
            admin_token: pki.admin_token.clone(),
            kubeconfig,
            controller_manager_kubeconfig,
            scheduler_kubeconfig,
            stop,
            drain,
            endpoints,
            serve,
            tasks: vec![maintain, rbac, node_graph],
        })
    }

    /// Stop as kube-apiserver does on SIGTERM: this server's address leaves the `kubernetes`
    /// endpoints first (given a few seconds), then the listener closes (clients that fail over
    /// on a refused connection go to another server), watches end (their clients watch again,
    /// elsewhere) and requests in flight are answered; connections still busy after
    /// [`DRAIN_TIMEOUT`] are dropped. Background work stops last.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let mut endpoints = self.endpoints;
        if tokio::time::timeout(Duration::from_secs(5), &mut endpoints)
            .await
            .is_err()
        {
            endpoints.abort();
        }
        let _ = self.drain.send(true);
        let mut serve = self.serve;
        if tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(1), &mut serve)
            .await
            .is_err()
        {
            serve.abort();
            let _ = serve.await;
        }
        // Let each task see the stop signal rather than abort it: an aborted task's store call
        // in flight runs on in its blocking thread and keeps the embedded store open, so the
        // same data dir could not be opened again right away.
        for mut task in self.tasks {
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
                let _ = task.await;
            }
        }
    }
}

/// The authenticator chain: the admin token and `--token-auth-file` users, and
/// service-account tokens signed with the key in the data dir.
/// The names the serving certificate carries: the `kubernetes` Service's names and ClusterIP,
/// the advertised and bound addresses, and any `--tls-san`.
fn serving_names(
    config: &ApiConfig,
    service_ip: std::net::Ipv4Addr,
    advertise: IpAddr,
) -> Vec<String> {
    let mut sans: Vec<String> = vec![
        "localhost".into(),
        "127.0.0.1".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
        service_ip.to_string(),
        advertise.to_string(),
    ];
    if !config.bind_address.is_unspecified() {
        sans.push(config.bind_address.to_string());
    }
    sans.extend(config.tls_sans.iter().cloned());
    sans
}

/// The authorizer chain `Node,RBAC`, after reconciling the default and the controllers'
/// policy; the aggregated roles (admin, edit, view) are filled before the first request, not
/// only once the watch behind `follow_rbac` has started.
async fn authorizers(
    registry: &Registry,
    store: &Arc<dyn Store>,
) -> Result<(Arc<rbac::Authorizer>, Arc<nodeauthz::NodeAuthorizer>)> {
    rbac::bootstrap::reconcile(registry)
        .await
        .context("reconciling the default RBAC roles and bindings")?;
    rbac::controller_policy::reconcile(registry)
        .await
        .context("reconciling the controllers' RBAC roles and bindings")?;
    let authorizer = rbac::Authorizer::load(store.clone())
        .await
        .context("loading the RBAC roles and bindings")?;
    let node_authz = nodeauthz::NodeAuthorizer::load(store.clone())
        .await
        .context("loading the node authorizer's graph of pods")?;
    rbac::aggregation::aggregate(registry, &authorizer.cluster_roles().await).await;
    authorizer
        .resync()
        .await
        .context("loading the aggregated RBAC roles")?;
    Ok((Arc::new(authorizer), Arc::new(node_authz)))
}

fn authenticator(config: &ApiConfig, pki: &Pki) -> Result<Authenticator> {
    let mut tokens = StaticTokens::default();
    tokens.insert(pki.admin_token.clone(), authn::token::admin_user());
    if let Some(path) = &config.token_auth_file {
        tokens
            .load_csv(path)
            .with_context(|| format!("reading --token-auth-file {}", path.display()))?;
    }
    let service_accounts = ServiceAccountTokens::load_or_create(
        &config.data_dir,
        &config.service_account_issuer,
        &config.api_audiences,
    )
    .context("loading the service-account signing key")?;
    Ok(Authenticator {
        tokens,
        service_accounts,
        cache: authn::cache::TokenCache::default(),
    })
}

async fn serve(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    handler: Arc<Handler>,
    mut stopped: signal::Receiver<bool>,
) {
    // The user of a connection's client certificate is read once, after the handshake, and
    // handed to each of its requests.
    let make_service = move |certs: skiff_common::tls::PeerCertificates| {
        let handler = handler.clone();
        let peer = PeerIdentity::from_chain(&certs);
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let handler = handler.clone();
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(peer.clone());
            async move { Ok::<_, std::convert::Infallible>(handlers::handle(handler, req).await) }
        })
    };
    let shutdown = async move {
        let _ = stopped.changed().await;
    };
    skiff_common::tls::serve_with_peer(listener, tls, shutdown, DRAIN_TIMEOUT, make_service).await;
}

/// Every [`master_endpoints::RECONCILE_INTERVAL`]: renew this server's lease and put the
/// `kubernetes` endpoints right; when stopped, leave them.
async fn keep_master_endpoints(
    master: MasterEndpoints,
    handler: Arc<Handler>,
    mut stopped: signal::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(master_endpoints::RECONCILE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; start() has just reconciled.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => break,
        }
        if let Err(e) = master.reconcile(&handler.registry).await {
            tracing::warn!(error = %e, "reconciling the kubernetes service endpoints failed");
        }
    }
    if let Err(e) = master.remove(&handler.registry).await {
        tracing::warn!(error = %e, "removing this server from the kubernetes endpoints failed");
    }
}

/// Keep the RBAC index current and aggregated ClusterRoles filled.
async fn follow_rbac(handler: Arc<Handler>, stopped: signal::Receiver<bool>) {
    let aggregate = || async {
        let roles = handler.rbac.cluster_roles().await;
        rbac::aggregation::aggregate(&handler.registry, &roles).await;
    };
    handler.rbac.follow(stopped, aggregate).await;
}

/// Periodic upkeep: compaction (to the revision seen one interval ago, as kube-apiserver does
/// for etcd, so watchers have a full interval to catch up), event expiry and repair of leaked
/// service allocations.
async fn maintenance(
    store: Arc<dyn Store>,
    handler: Arc<Handler>,
    interval: Duration,
    event_ttl: Duration,
    mut stopped: signal::Receiver<bool>,
) {
    let mut previous: Option<i64> = None;
    let mut tick = tokio::time::interval(interval.max(Duration::from_secs(1)));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => return,
        }
        if let Some(rev) = previous
            && let Err(e) = store.compact(rev).await
            && !matches!(e, StoreError::Compacted { .. })
        {
            tracing::warn!(revision = rev, error = %e, "compaction failed");
        }
        previous = store.current_revision().await.ok();
        if let Err(e) = expire_events(&handler.registry, event_ttl).await {
            tracing::warn!(error = %e, "expiring events failed");
        }
        if let Err(e) = handler
            .registry
            .allocators
            .repair(Duration::from_secs(120))
            .await
        {
            tracing::warn!(error = %e, "repairing service allocations failed");
        }
    }
}

async fn expire_events(registry: &Registry, ttl: Duration) -> Result<()> {
    let events = resources::lookup("", "v1", "events").expect("events are served");
    let cutoff = jiff::Timestamp::now()
        - jiff::SignedDuration::try_from(ttl).unwrap_or(jiff::SignedDuration::ZERO);
    let page = registry
        .list(events, None, &registry::ListOptions::default())
        .await?;
    for ev in page.items {
        let last = ["lastTimestamp", "eventTime"]
            .iter()
            .filter_map(|f| ev.get(*f).and_then(Value::as_str))
            .chain(object::meta_str(&ev, "creationTimestamp"))
            .filter_map(object::parse_time)
            .max();
        if last.is_some_and(|t| t < cutoff) {
            let ns = object::meta_str(&ev, "namespace");
            let _ = registry
                .delete(
                    events,
                    ns,
                    object::name(&ev),
                    &registry::DeleteOptions::default(),
                )
                .await;
        }
    }
    Ok(())
}

/// The objects every cluster has: the four system namespaces, the `kubernetes` service
/// (its endpoints are [`master_endpoints`]' business) and `kube-system/kube-dns`.
async fn bootstrap(registry: &Registry, port: u16) -> Result<()> {
    let opts = WriteOptions::default();
    let namespaces = resources::lookup("", "v1", "namespaces").expect("served");
    for ns in registry::SYSTEM_NAMESPACES {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        ignore_exists(registry.create(namespaces, None, obj, opts).await)?;
    }
    let services = resources::lookup("", "v1", "services").expect("served");
    let ip = registry.allocators.kubernetes_service_ip().to_string();
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
    });
    // Only when missing: creating it again would first trip over its own ClusterIP.
    if let Err(e) = registry.get(services, Some("default"), "kubernetes").await {
        if e.code != 404 {
            return Err(e.into());
        }
        ignore_exists(registry.create(services, Some("default"), svc, opts).await)?;
    }
    ensure_dns_service(registry).await
}

/// `kube-system/kube-dns`: the address pods' resolv.conf names. The agents serve DNS
/// themselves (each node answers its own pods), so the Service has no selector and no
/// endpoints of its own; a cluster that already has a `kube-dns` keeps it.
async fn ensure_dns_service(registry: &Registry) -> Result<()> {
    let services = resources::lookup("", "v1", "services").expect("served");
    match registry
        .get(services, Some("kube-system"), "kube-dns")
        .await
    {
        Ok(_) => return Ok(()),
        Err(e) if e.code != 404 => return Err(e.into()),
        Err(_) => {}
    }
    let ip = registry.allocators.dns_service_ip().to_string();
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true"}},
        "spec": {"clusterIP": ip, "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]},
    });
    match registry
        .create(services, Some("kube-system"), svc, WriteOptions::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        // The address taken by a Service created before this one existed: say so, and
        // leave that Service alone (agents' --cluster-dns must then name another address).
        Err(e) if e.code == 422 => {
            tracing::warn!("cannot create kube-system/kube-dns at {ip}: {}", e.message);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn ignore_exists(r: status::ApiResult<registry::Written>) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
