use std::time::{Duration, Instant};

use axum::body::to_bytes;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

use super::*;
use crate::proxy::model;

fn lb_service(name: &str, policy: &str, hc: Option<u16>) -> Service {
    let mut spec = json!({"type": "LoadBalancer", "clusterIP": "10.96.0.20",
        "externalTrafficPolicy": policy,
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
                  {"name": "alt", "port": 81, "protocol": "TCP", "nodePort": 30081}]});
    if let Some(p) = hc {
        spec["healthCheckNodePort"] = json!(p);
    }
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "web"}, "spec": spec}))
        .unwrap()
}

/// One slice of `service` with endpoints (ip, node, ready, terminating) on both ports.
fn slice(service: &str, eps: &[(&str, &str, bool, bool)]) -> EndpointSlice {
    let endpoints: Vec<_> = eps
        .iter()
        .map(|(ip, node, ready, terminating)| {
            json!({"addresses": [ip], "nodeName": node,
                   "conditions": {"ready": ready, "serving": true, "terminating": terminating}})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("{service}-1"), "namespace": "web",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                  {"name": "alt", "port": 8081, "protocol": "TCP"}],
    }))
    .unwrap()
}

fn counts(services: &[Service], slices: &[EndpointSlice]) -> BTreeMap<ServiceKey, ServiceHealth> {
    local_endpoint_counts(&model::build(
        services,
        slices,
        &model::ThisNode::named("node-a"),
    ))
}

fn key(name: &str) -> ServiceKey {
    ("web".into(), name.into())
}

#[test]
fn counts_ready_local_addresses_once_across_ports() {
    let svcs = [lb_service("lb", "Local", Some(31234))];
    let c = counts(
        &svcs,
        &[slice(
            "lb",
            &[
                ("10.244.1.2", "node-a", true, false),
                ("10.244.1.3", "node-a", true, false),
                ("10.244.2.2", "node-b", true, false),
            ],
        )],
    );
    assert_eq!(
        c,
        BTreeMap::from([(
            key("lb"),
            ServiceHealth {
                port: 31234,
                local_endpoints: 2
            }
        )])
    );
}

#[test]
fn terminating_and_remote_endpoints_do_not_count() {
    let svcs = [lb_service("lb", "Local", Some(31234))];
    // Terminating but still serving: the traffic fallback may use it, the health check says no.
    let c = counts(
        &svcs,
        &[slice(
            "lb",
            &[
                ("10.244.1.2", "node-a", false, true),
                ("10.244.2.2", "node-b", true, false),
            ],
        )],
    );
    assert_eq!(c[&key("lb")].local_endpoints, 0);
    // No slice at all: listed, with none.
    assert_eq!(counts(&svcs, &[])[&key("lb")].local_endpoints, 0);
}

#[test]
fn only_local_load_balancers_with_a_port_are_checked() {
    let mut np = lb_service("np", "Local", Some(31235));
    np.spec.as_mut().unwrap().type_ = Some("NodePort".into());
    let svcs = [
        lb_service("cluster", "Cluster", Some(31236)),
        lb_service("unset", "Local", None),
        np,
        lb_service("lb", "Local", Some(31234)),
    ];
    let c = counts(&svcs, &[]);
    assert_eq!(c.keys().collect::<Vec<_>>(), [&key("lb")]);
}

async fn body(resp: Response) -> (StatusCode, axum::http::HeaderMap, String) {
    let (parts, b) = resp.into_parts();
    let bytes = to_bytes(b, 1 << 16).await.unwrap();
    (
        parts.status,
        parts.headers,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn the_service_answer_is_kube_proxys() {
    let (code, headers, text) = body(service_response(&key("lb"), 2, true)).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-load-balancing-endpoint-weight"], "2");
    assert_eq!(
        text,
        "{\n\t\"service\": {\n\t\t\"namespace\": \"web\",\n\t\t\"name\": \"lb\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["service"]["name"], "lb");

    let (code, headers, text) = body(service_response(&key("lb"), 0, true)).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["x-load-balancing-endpoint-weight"], "0");
    assert!(text.contains("\"localEndpoints\": 0"), "{text}");
    // Endpoints, but a proxy that is behind: not to be trusted with traffic.
    let (code, _, text) = body(service_response(&key("lb"), 1, false)).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(text.contains("\"serviceProxyHealthy\": false"), "{text}");
}

#[test]
fn a_change_waiting_too_long_makes_the_proxy_unhealthy() {
    let h = ProxyHealth::new(Duration::from_secs(120));
    let start = Instant::now();
    let wall = jiff::Timestamp::now();
    // The initial sync is pending from the start.
    assert!(h.report_at(start, wall).healthy);
    assert!(!h.report_at(start + Duration::from_secs(121), wall).healthy);
    h.updated();
    let now = Instant::now();
    assert!(h.report_at(now + Duration::from_secs(3600), wall).healthy);
    h.queued_update();
    h.queued_update(); // the oldest one counts
    let r = h.report_at(Instant::now() + Duration::from_secs(119), wall);
    assert!(r.healthy && r.last_updated.is_some());
    assert!(!h.report_at(now + Duration::from_secs(125), wall).healthy);
    h.updated();
    assert!(h.report_at(now + Duration::from_secs(125), wall).healthy);
}

#[tokio::test]
async fn healthz_and_livez_bodies() {
    let now: jiff::Timestamp = "2026-12-07T13:05:07.25Z".parse().unwrap();
    let last: jiff::Timestamp = "2026-12-07T13:00:00Z".parse().unwrap();
    let mut r = HealthReport {
        healthy: true,
        node_eligible: true,
        last_updated: Some(last),
        current_time: now,
    };
    let (code, headers, text) = body(healthz_response(&r, false)).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(
        text,
        r#"{"lastUpdated": "2026-12-07 13:05:07.25 +0000 UTC","currentTime": "2026-12-07 13:05:07.25 +0000 UTC", "nodeEligible": true}"#
    );
    // A node being deleted: /healthz fails, /livez does not.
    r.node_eligible = false;
    assert_eq!(
        body(healthz_response(&r, false)).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (code, _, text) = body(healthz_response(&r, true)).await;
    assert_eq!(code, StatusCode::OK);
    assert!(!text.contains("nodeEligible"), "{text}");
    // Behind: both fail, with the last successful sync's time.
    r = HealthReport {
        healthy: false,
        node_eligible: true,
        ..r
    };
    let (code, _, text) = body(healthz_response(&r, true)).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        text,
        r#"{"lastUpdated": "2026-12-07 13:00:00 +0000 UTC","currentTime": "2026-12-07 13:05:07.25 +0000 UTC"}"#
    );
}

#[test]
fn node_eligibility() {
    let mut n: Node = serde_json::from_value(json!({"metadata": {"name": "a"}})).unwrap();
    assert!(node_eligible(&n));
    n.spec = Some(
        serde_json::from_value(
            json!({"taints": [{"key": TO_BE_DELETED_TAINT, "effect": "NoSchedule"}]}),
        )
        .unwrap(),
    );
    assert!(!node_eligible(&n));
    n.spec = None;
    n.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::now(),
    ));
    assert!(!node_eligible(&n));
}

/// A free port on 127.0.0.1 (bound and let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /path` on 127.0.0.1:`port` over plain HTTP/1.0: the status code and body.
async fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((code, body))
}

#[tokio::test]
async fn servers_open_answer_and_close_with_their_services() {
    let health = Arc::new(ProxyHealth::new(Duration::from_secs(120)));
    let mut servers = ServiceHealthServers::new(Ipv4Addr::LOCALHOST, health.clone());
    let port = free_port();
    let svcs = [lb_service("lb", "Local", Some(port))];
    let one = model::build(
        &svcs,
        &[slice("lb", &[("10.244.1.2", "node-a", true, false)])],
        &model::ThisNode::named("node-a"),
    );
    health.updated();
    servers.sync(&one);
    assert_eq!(servers.listening(), BTreeMap::from([(key("lb"), port)]));
    let (code, text) = get(port, "/").await.unwrap();
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("\"localEndpoints\": 1"), "{text}");
    // Any path, as kube-proxy.
    assert_eq!(get(port, "/anything").await.unwrap().0, 200);

    // Only a terminating endpoint left: 503, the same listener.
    let terminating = model::build(
        &svcs,
        &[slice("lb", &[("10.244.1.2", "node-a", false, true)])],
        &model::ThisNode::named("node-a"),
    );
    servers.sync(&terminating);
    let (code, text) = get(port, "/").await.unwrap();
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("\"localEndpoints\": 0"), "{text}");

    // The Service gone: the port is closed.
    servers.sync(&ProxyState::new());
    assert!(servers.listening().is_empty());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(get(port, "/").await.is_err(), "still listening on {port}");
}

#[tokio::test]
async fn a_port_that_cannot_be_bound_is_tried_again() {
    let health = Arc::new(ProxyHealth::new(Duration::from_secs(120)));
    let mut servers = ServiceHealthServers::new(Ipv4Addr::LOCALHOST, health);
    let taken = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let st = model::build(
        &[lb_service("lb", "Local", Some(port))],
        &[],
        &model::ThisNode::named("node-a"),
    );
    servers.sync(&st);
    assert!(servers.listening().is_empty());
    drop(taken);
    servers.sync(&st);
    assert_eq!(servers.listening(), BTreeMap::from([(key("lb"), port)]));
    assert_eq!(get(port, "/").await.unwrap().0, 503);
}
