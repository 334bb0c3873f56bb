use serde_json::{Value, json};

use super::*;

fn service(v: Value) -> Service {
    serde_json::from_value(v).unwrap()
}

fn slice(v: Value) -> EndpointSlice {
    serde_json::from_value(v).unwrap()
}

fn kubia() -> Service {
    service(json!({
        "metadata": {"name": "kubia", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [
            {"name": "http", "port": 80, "protocol": "TCP"},
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"port": 8080}]}
    }))
}

fn headless(publish_not_ready: bool) -> Service {
    service(json!({
        "metadata": {"name": "kubia-headless", "namespace": "apps"},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": publish_not_ready,
            "ports": [{"name": "http", "port": 80}]}
    }))
}

/// Endpoints of `kubia-headless` in `apps`: 10.244.1.5 (hostname web-0, ready),
/// 10.244.2.7 (ready), 10.244.2.9 (not ready).
fn headless_slice() -> EndpointSlice {
    slice(json!({
        "metadata": {"name": "kubia-headless-abc", "namespace": "apps",
            "labels": {"kubernetes.io/service-name": "kubia-headless"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.244.1.5"], "hostname": "web-0", "conditions": {"ready": true}},
            {"addresses": ["10.244.2.7"], "conditions": {}},
            {"addresses": ["10.244.2.9"], "conditions": {"ready": false}}
        ]
    }))
}

fn zone(services: &[Service], slices: &[EndpointSlice]) -> Zone {
    Zone::build("cluster.local", services, slices)
}

fn answer(z: &Zone, name: &str, qtype: u16) -> Answer {
    match z.lookup(name, qtype) {
        Lookup::Authoritative(a) => a,
        Lookup::Forward => panic!("{name} was forwarded"),
    }
}

fn rdata(a: &Answer) -> Vec<Rdata> {
    a.answers.iter().map(|r| r.rdata.clone()).collect()
}

fn a(ip: [u8; 4]) -> Rdata {
    Rdata::A(Ipv4Addr::from(ip))
}

#[test]
fn a_cluster_ip_service_has_one_a_record() {
    let z = zone(&[kubia()], &[]);
    let ans = answer(&z, "kubia.default.svc.cluster.local.", rtype::A);
    assert_eq!(ans.rcode, Rcode::NoError);
    assert_eq!(rdata(&ans), vec![a([10, 96, 0, 20])]);
    assert_eq!(ans.answers[0].ttl, TTL);
    assert_eq!(ans.answers[0].name, "kubia.default.svc.cluster.local");
}

#[test]
fn names_compare_case_insensitively() {
    let z = zone(&[kubia()], &[]);
    let ans = answer(&z, "KUBIA.Default.SVC.cluster.LOCAL", rtype::A);
    assert_eq!(rdata(&ans), vec![a([10, 96, 0, 20])]);
}

#[test]
fn an_existing_name_without_the_type_is_nodata_with_the_soa() {
    let z = zone(&[kubia()], &[]);
    let ans = answer(&z, "kubia.default.svc.cluster.local", rtype::AAAA);
    assert_eq!(ans.rcode, Rcode::NoError);
    assert!(ans.answers.is_empty());
    assert_eq!(ans.authority, vec![z.soa()]);
    // Empty non-terminals exist too.
    for name in [
        "default.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
    ] {
        let ans = answer(&z, name, rtype::A);
        assert_eq!(ans.rcode, Rcode::NoError, "{name}");
        assert!(ans.answers.is_empty(), "{name}");
    }
}

#[test]
fn a_missing_name_is_nxdomain_with_the_soa() {
    let z = zone(&[kubia()], &[]);
    for name in [
        "nothere.default.svc.cluster.local",
        "kubia.other.svc.cluster.local",
        "other.svc.cluster.local",
        "x.kubia.default.svc.cluster.local",
        "foo.cluster.local",
    ] {
        let ans = answer(&z, name, rtype::A);
        assert_eq!(ans.rcode, Rcode::NxDomain, "{name}");
        assert_eq!(ans.authority, vec![z.soa()], "{name}");
    }
}

#[test]
fn named_ports_of_a_cluster_ip_service_have_srv_records_to_the_service() {
    let z = zone(&[kubia()], &[]);
    let ans = answer(&z, "_http._tcp.kubia.default.svc.cluster.local", rtype::SRV);
    assert_eq!(
        rdata(&ans),
        vec![Rdata::Srv {
            priority: 0,
            weight: 100,
            port: 80,
            target: "kubia.default.svc.cluster.local".into()
        }]
    );
    // The target's address comes along.
    assert_eq!(
        ans.additionals,
        vec![record(
            "kubia.default.svc.cluster.local",
            a([10, 96, 0, 20])
        )]
    );
    let udp = answer(&z, "_dns._udp.kubia.default.svc.cluster.local", rtype::SRV);
    assert!(matches!(rdata(&udp)[..], [Rdata::Srv { port: 53, .. }]));
    // No SRV for the wrong protocol, nor for unnamed ports.
    let wrong = answer(&z, "_dns._tcp.kubia.default.svc.cluster.local", rtype::SRV);
    assert_eq!(wrong.rcode, Rcode::NxDomain);
    // The intermediate `_tcp` label exists.
    let mid = answer(&z, "_tcp.kubia.default.svc.cluster.local", rtype::SRV);
    assert_eq!(mid.rcode, Rcode::NoError);
}

#[test]
fn a_cluster_ip_has_a_ptr_to_its_service() {
    let z = zone(&[kubia()], &[]);
    let ans = answer(&z, "20.0.96.10.in-addr.arpa.", rtype::PTR);
    assert_eq!(
        rdata(&ans),
        vec![Rdata::Ptr("kubia.default.svc.cluster.local".into())]
    );
    // Other reverse names are not the cluster's.
    assert_eq!(
        z.lookup("21.0.96.10.in-addr.arpa", rtype::PTR),
        Lookup::Forward
    );
}

#[test]
fn a_headless_service_has_one_a_per_ready_endpoint() {
    let z = zone(&[headless(false)], &[headless_slice()]);
    let ans = answer(&z, "kubia-headless.apps.svc.cluster.local", rtype::A);
    let mut got = rdata(&ans);
    got.sort();
    assert_eq!(got, vec![a([10, 244, 1, 5]), a([10, 244, 2, 7])]);
}

#[test]
fn publish_not_ready_addresses_publishes_every_endpoint() {
    let z = zone(&[headless(true)], &[headless_slice()]);
    let ans = answer(&z, "kubia-headless.apps.svc.cluster.local", rtype::A);
    assert_eq!(ans.answers.len(), 3);
    assert!(rdata(&ans).contains(&a([10, 244, 2, 9])));
}

#[test]
fn a_headless_service_without_ready_endpoints_is_nxdomain() {
    let z = zone(&[headless(false)], &[]);
    let ans = answer(&z, "kubia-headless.apps.svc.cluster.local", rtype::A);
    assert_eq!(ans.rcode, Rcode::NxDomain);
    let mut unready = headless_slice();
    unready.endpoints.truncate(0);
    let z = zone(&[headless(false)], &[unready]);
    let ans = answer(&z, "kubia-headless.apps.svc.cluster.local", rtype::A);
    assert_eq!(ans.rcode, Rcode::NxDomain);
}

#[test]
fn the_tolerate_unready_annotation_publishes_every_endpoint() {
    let mut svc = headless(false);
    svc.metadata.annotations = Some(
        [(TOLERATE_UNREADY.to_string(), "true".to_string())]
            .into_iter()
            .collect(),
    );
    let z = zone(&[svc], &[headless_slice()]);
    let ans = answer(&z, "kubia-headless.apps.svc.cluster.local", rtype::A);
    assert_eq!(ans.answers.len(), 3);
}

#[test]
fn headless_endpoints_have_hostname_or_dashed_ip_records() {
    let z = zone(&[headless(false)], &[headless_slice()]);
    let web0 = answer(&z, "web-0.kubia-headless.apps.svc.cluster.local", rtype::A);
    assert_eq!(rdata(&web0), vec![a([10, 244, 1, 5])]);
    let dashed = answer(
        &z,
        "10-244-2-7.kubia-headless.apps.svc.cluster.local",
        rtype::A,
    );
    assert_eq!(rdata(&dashed), vec![a([10, 244, 2, 7])]);
    // Not-ready endpoints are not published.
    let hidden = answer(
        &z,
        "10-244-2-9.kubia-headless.apps.svc.cluster.local",
        rtype::A,
    );
    assert_eq!(hidden.rcode, Rcode::NxDomain);
}

#[test]
fn named_ports_of_a_headless_service_have_one_srv_per_endpoint() {
    let z = zone(&[headless(false)], &[headless_slice()]);
    let ans = answer(
        &z,
        "_http._tcp.kubia-headless.apps.svc.cluster.local",
        rtype::SRV,
    );
    let mut targets: Vec<(u16, String)> = ans
        .answers
        .iter()
        .map(|r| match &r.rdata {
            Rdata::Srv { port, target, .. } => (*port, target.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        vec![
            (
                8080,
                "10-244-2-7.kubia-headless.apps.svc.cluster.local".into()
            ),
            (8080, "web-0.kubia-headless.apps.svc.cluster.local".into()),
        ]
    );
    assert_eq!(ans.additionals.len(), 2);
}

#[test]
fn headless_endpoint_ips_have_ptrs_to_their_names() {
    let z = zone(&[headless(false)], &[headless_slice()]);
    let web0 = answer(&z, "5.1.244.10.in-addr.arpa", rtype::PTR);
    assert_eq!(
        rdata(&web0),
        vec![Rdata::Ptr(
            "web-0.kubia-headless.apps.svc.cluster.local".into()
        )]
    );
    let other = answer(&z, "7.2.244.10.in-addr.arpa", rtype::PTR);
    assert_eq!(
        rdata(&other),
        vec![Rdata::Ptr(
            "10-244-2-7.kubia-headless.apps.svc.cluster.local".into()
        )]
    );
}

#[test]
fn slices_of_other_services_or_namespaces_do_not_count() {
    let mut other = headless_slice();
    other.metadata.namespace = Some("default".into());
    let z = zone(&[headless(false)], &[other]);
    let ans = answer(&z, "kubia-headless.apps.svc.cluster.local", rtype::A);
    assert!(ans.answers.is_empty());
}

#[test]
fn an_external_name_service_is_a_cname() {
    let ext = service(json!({
        "metadata": {"name": "external", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "api.Example.com."}
    }));
    let z = zone(&[ext], &[]);
    for qtype in [rtype::A, rtype::CNAME, rtype::AAAA] {
        let ans = answer(&z, "external.default.svc.cluster.local", qtype);
        assert_eq!(rdata(&ans), vec![Rdata::Cname("api.example.com".into())]);
    }
}

#[test]
fn an_external_name_within_the_zone_is_followed() {
    let ext = service(json!({
        "metadata": {"name": "alias", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "kubia.default.svc.cluster.local"}
    }));
    let z = zone(&[ext, kubia()], &[]);
    let ans = answer(&z, "alias.default.svc.cluster.local", rtype::A);
    assert_eq!(
        rdata(&ans),
        vec![
            Rdata::Cname("kubia.default.svc.cluster.local".into()),
            a([10, 96, 0, 20])
        ]
    );
}

#[test]
fn pod_names_are_synthesized_from_the_address() {
    let z = zone(&[], &[]);
    let ans = answer(&z, "10-244-1-5.default.pod.cluster.local", rtype::A);
    assert_eq!(rdata(&ans), vec![a([10, 244, 1, 5])]);
    assert_eq!(
        answer(&z, "10-244-1-5.any-ns.pod.cluster.local", rtype::AAAA).rcode,
        Rcode::NoError
    );
    for bad in [
        "10-244-1.default.pod.cluster.local",
        "10-244-1-500.default.pod.cluster.local",
        "10-244-1-5.pod.cluster.local",
    ] {
        assert_eq!(answer(&z, bad, rtype::A).rcode, Rcode::NxDomain, "{bad}");
    }
    assert_eq!(
        answer(&z, "pod.cluster.local", rtype::A).rcode,
        Rcode::NoError
    );
}

#[test]
fn dns_version_is_the_schema_version() {
    let z = zone(&[], &[]);
    let ans = answer(&z, "dns-version.cluster.local", rtype::TXT);
    assert_eq!(rdata(&ans), vec![Rdata::Txt("1.1.0".into())]);
}

#[test]
fn the_apex_has_an_soa() {
    let z = zone(&[], &[]);
    let ans = answer(&z, "cluster.local", rtype::SOA);
    assert_eq!(ans.answers, vec![z.soa()]);
}

#[test]
fn names_outside_the_zone_are_forwarded() {
    let z = zone(&[kubia()], &[]);
    for name in [
        "example.com",
        "local",
        "kubia.default.svc.cluster.localx",
        "1.1.1.1.in-addr.arpa",
    ] {
        assert_eq!(z.lookup(name, rtype::A), Lookup::Forward, "{name}");
    }
}

#[test]
fn another_cluster_domain_is_honoured() {
    let z = Zone::build("Corp.Example.", &[kubia()], &[]);
    let ans = answer(&z, "kubia.default.svc.corp.example", rtype::A);
    assert_eq!(rdata(&ans), vec![a([10, 96, 0, 20])]);
    assert_eq!(
        z.lookup("kubia.default.svc.cluster.local", rtype::A),
        Lookup::Forward
    );
}

#[test]
fn services_without_a_cluster_ip_yet_are_absent() {
    let pending = service(json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {}}));
    let z = zone(&[pending], &[]);
    assert_eq!(
        answer(&z, "p.default.svc.cluster.local", rtype::A).rcode,
        Rcode::NxDomain
    );
}

#[test]
fn dual_stack_cluster_ips_give_a_and_aaaa() {
    let svc = service(json!({
        "metadata": {"name": "ds", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.30", "clusterIPs": ["10.96.0.30", "fd00::1e"]}
    }));
    let z = zone(&[svc], &[]);
    let ans = answer(&z, "ds.default.svc.cluster.local", rtype::AAAA);
    assert_eq!(rdata(&ans), vec![Rdata::Aaaa("fd00::1e".parse().unwrap())]);
    let ptr = answer(
        &z,
        "e.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa",
        rtype::PTR,
    );
    assert_eq!(
        rdata(&ptr),
        vec![Rdata::Ptr("ds.default.svc.cluster.local".into())]
    );
}
