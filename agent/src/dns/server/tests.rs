//! The server on real sockets on 127.0.0.1, with a fake upstream resolver the test runs.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

use hickory_proto::op::MessageType;
use tokio::net::UdpSocket;

use super::*;

/// A resolver for `example.test`: `www` A 192.0.2.10 (TTL 60), `big` TXT too large for a
/// plain UDP answer (sent truncated over UDP, whole over TCP), NXDOMAIN for the rest.
struct FakeUpstream {
    addr: SocketAddr,
    udp_queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
}

fn upstream_answer(request: &Message, over_tcp: bool) -> Message {
    let mut m = reply_to(request);
    let q = &request.queries[0];
    let name = q.name().to_ascii().to_ascii_lowercase();
    match name.as_str() {
        "www.example.test." => {
            m.add_answer(WireRecord::from_rdata(
                q.name().clone(),
                60,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 10))),
            ));
        }
        "big.example.test." if !over_tcp => {
            m.metadata.truncation = true;
        }
        "big.example.test." => {
            for i in 0..20 {
                m.add_answer(WireRecord::from_rdata(
                    q.name().clone(),
                    60,
                    RData::TXT(TXT::new(vec![format!("{i:02}-{}", "x".repeat(60))])),
                ));
            }
        }
        _ => {
            m.metadata.response_code = ResponseCode::NXDomain;
            m.add_authority(WireRecord::from_rdata(
                Name::from_ascii("example.test.").unwrap(),
                300,
                RData::SOA(SOA::new(
                    Name::from_ascii("ns.example.test.").unwrap(),
                    Name::from_ascii("admin.example.test.").unwrap(),
                    1,
                    3600,
                    600,
                    86400,
                    30,
                )),
            ));
        }
    }
    m
}

async fn fake_upstream() -> FakeUpstream {
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(addr).await.unwrap();
    let udp_queries = Arc::new(AtomicUsize::new(0));
    let tcp_queries = Arc::new(AtomicUsize::new(0));
    let count = udp_queries.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
            count.fetch_add(1, Ordering::SeqCst);
            let req = Message::from_vec(&buf[..n]).unwrap();
            let _ = udp
                .send_to(&upstream_answer(&req, false).to_vec().unwrap(), peer)
                .await;
        }
    });
    let count = tcp_queries.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let len = s.read_u16().await.unwrap();
            let mut buf = vec![0u8; usize::from(len)];
            s.read_exact(&mut buf).await.unwrap();
            let req = Message::from_vec(&buf).unwrap();
            let out = upstream_answer(&req, true).to_vec().unwrap();
            s.write_all(&u16::try_from(out.len()).unwrap().to_be_bytes())
                .await
                .unwrap();
            s.write_all(&out).await.unwrap();
        }
    });
    FakeUpstream {
        addr,
        udp_queries,
        tcp_queries,
    }
}

fn cluster_zone() -> Zone {
    let kubia: Service = serde_json::from_value(json!({
        "metadata": {"name": "kubia", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80}]}
    }))
    .unwrap();
    let wide: Service = serde_json::from_value(json!({
        "metadata": {"name": "wide", "namespace": "default"},
        "spec": {"clusterIP": "None"}
    }))
    .unwrap();
    let ext: Service = serde_json::from_value(json!({
        "metadata": {"name": "ext", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "www.example.test"}
    }))
    .unwrap();
    let addresses: Vec<_> = (1..=40)
        .map(|i| json!({"addresses": [format!("10.244.1.{i}")]}))
        .collect();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "wide-1", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "wide"}},
        "addressType": "IPv4",
        "endpoints": addresses
    }))
    .unwrap();
    Zone::build("cluster.local", &[kubia, wide, ext], &[slice])
}

/// A server on 127.0.0.1 with the cluster zone, forwarding to `upstreams`.
async fn server(upstreams: Vec<SocketAddr>) -> SocketAddr {
    let resolver = Arc::new(Resolver {
        zone: Arc::new(ZoneCell::new(cluster_zone())),
        forwarder: Forwarder::new(upstreams),
    });
    let server = DnsServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(resolver));
    addr
}

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Message {
    let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m
}

async fn udp_raw(server: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(packet, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some(buf[..n].to_vec())
}

async fn ask_udp(server: SocketAddr, q: &Message) -> (Message, usize) {
    let bytes = udp_raw(server, &q.to_vec().unwrap())
        .await
        .expect("no answer");
    let m = Message::from_vec(&bytes).unwrap();
    assert_eq!(m.metadata.id, q.metadata.id);
    (m, bytes.len())
}

async fn ask_tcp(server: SocketAddr, q: &Message) -> Message {
    let mut s = TcpStream::connect(server).await.unwrap();
    let bytes = q.to_vec().unwrap();
    s.write_all(&u16::try_from(bytes.len()).unwrap().to_be_bytes())
        .await
        .unwrap();
    s.write_all(&bytes).await.unwrap();
    let len = s.read_u16().await.unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_cluster_name_is_answered_authoritatively_in_the_askers_case() {
    let addr = server(vec![]).await;
    let q = query("Kubia.Default.svc.cluster.local.", RecordType::A, None);
    for m in [ask_udp(addr, &q).await.0, ask_tcp(addr, &q).await] {
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert!(m.metadata.recursion_available);
        assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 96, 0, 20)]);
        assert_eq!(m.answers[0].ttl, records::TTL);
        assert_eq!(
            m.answers[0].name.to_ascii(),
            "Kubia.Default.svc.cluster.local."
        );
        assert_eq!(m.queries, q.queries);
    }
}

#[tokio::test]
async fn nxdomain_and_nodata_carry_the_soa() {
    let addr = server(vec![]).await;
    let (nx, _) = ask_udp(
        addr,
        &query("nope.default.svc.cluster.local.", RecordType::A, None),
    )
    .await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(nx.answers.is_empty());
    assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
    let (nodata, _) = ask_udp(
        addr,
        &query("kubia.default.svc.cluster.local.", RecordType::AAAA, None),
    )
    .await;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert_eq!(nodata.authorities[0].record_type(), RecordType::SOA);
}

#[tokio::test]
async fn srv_and_txt_records_go_over_the_wire() {
    let addr = server(vec![]).await;
    let (srv, _) = ask_udp(
        addr,
        &query(
            "_http._tcp.kubia.default.svc.cluster.local.",
            RecordType::SRV,
            None,
        ),
    )
    .await;
    let RData::SRV(s) = &srv.answers[0].data else {
        panic!("{srv:?}")
    };
    assert_eq!(
        (s.priority, s.weight, s.port, s.target.to_ascii()),
        (0, 100, 80, "kubia.default.svc.cluster.local.".to_string())
    );
    assert_eq!(srv.additionals.len(), 1);
    let (txt, _) = ask_udp(
        addr,
        &query("dns-version.cluster.local.", RecordType::TXT, None),
    )
    .await;
    let RData::TXT(t) = &txt.answers[0].data else {
        panic!("{txt:?}")
    };
    assert_eq!(&*t.txt_data[0], b"1.1.0");
}

#[tokio::test]
async fn an_answer_over_the_udp_limit_is_truncated_and_whole_over_tcp() {
    let addr = server(vec![]).await;
    let q = query("wide.default.svc.cluster.local.", RecordType::A, None);
    let (udp, len) = ask_udp(addr, &q).await;
    assert!(udp.metadata.truncation);
    assert!(udp.answers.is_empty());
    assert!(len <= 512);
    let tcp = ask_tcp(addr, &q).await;
    assert!(!tcp.metadata.truncation);
    assert_eq!(a_records(&tcp).len(), 40);
    // A client announcing a larger EDNS buffer gets it all over UDP.
    let (edns, len) = ask_udp(
        addr,
        &query("wide.default.svc.cluster.local.", RecordType::A, Some(1232)),
    )
    .await;
    assert!(!edns.metadata.truncation);
    assert_eq!(a_records(&edns).len(), 40);
    assert!(len > 512);
    assert!(edns.edns.is_some());
}

#[tokio::test]
async fn malformed_packets_are_answered_formerr_or_dropped() {
    let addr = server(vec![]).await;
    // A header claiming one question, then garbage.
    let junk = [
        0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff,
    ];
    let reply = udp_raw(addr, &junk).await.expect("a FORMERR");
    assert_eq!(&reply[..2], &[0x12, 0x34]);
    assert_eq!(reply[2] & 0x80, 0x80, "QR set");
    assert_eq!(reply[3] & 0x0f, 1, "FORMERR");
    // Too short for a header: dropped.
    assert_eq!(udp_raw(addr, &[1, 2, 3]).await, None);
    // A response sent to the server is not answered (no reflection loops).
    let mut response = query("kubia.default.svc.cluster.local.", RecordType::A, None);
    response.metadata.message_type = MessageType::Response;
    assert_eq!(udp_raw(addr, &response.to_vec().unwrap()).await, None);
    // Two questions: FORMERR.
    let mut two = query("kubia.default.svc.cluster.local.", RecordType::A, None);
    two.add_query(Query::query(Name::from_ascii("x.").unwrap(), RecordType::A));
    let (m, _) = ask_udp(addr, &two).await;
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // The server still answers afterwards.
    let (ok, _) = ask_udp(
        addr,
        &query("kubia.default.svc.cluster.local.", RecordType::A, None),
    )
    .await;
    assert_eq!(a_records(&ok), vec![Ipv4Addr::new(10, 96, 0, 20)]);
}

#[tokio::test]
async fn other_names_are_forwarded_and_cached() {
    let up = fake_upstream().await;
    let addr = server(vec![up.addr]).await;
    let q = query("www.example.test.", RecordType::A, None);
    let (first, _) = ask_udp(addr, &q).await;
    assert_eq!(first.metadata.response_code, ResponseCode::NoError);
    assert!(!first.metadata.authoritative);
    assert_eq!(a_records(&first), vec![Ipv4Addr::new(192, 0, 2, 10)]);
    assert_eq!(first.answers[0].ttl, 60);
    let (second, _) = ask_udp(addr, &query("WWW.example.test.", RecordType::A, None)).await;
    assert_eq!(a_records(&second), vec![Ipv4Addr::new(192, 0, 2, 10)]);
    assert!(second.answers[0].ttl <= 60);
    assert_eq!(
        up.udp_queries.load(Ordering::SeqCst),
        1,
        "the second came from the cache"
    );
    let (nx, _) = ask_udp(addr, &query("gone.example.test.", RecordType::A, None)).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(nx.authorities.len(), 1);
}

#[tokio::test]
async fn a_truncated_upstream_answer_is_fetched_again_over_tcp() {
    let up = fake_upstream().await;
    let addr = server(vec![up.addr]).await;
    let m = ask_tcp(addr, &query("big.example.test.", RecordType::TXT, None)).await;
    assert_eq!(m.answers.len(), 20);
    assert_eq!(up.tcp_queries.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_external_name_is_followed_upstream() {
    let up = fake_upstream().await;
    let addr = server(vec![up.addr]).await;
    let (m, _) = ask_udp(
        addr,
        &query("ext.default.svc.cluster.local.", RecordType::A, None),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let RData::CNAME(c) = &m.answers[0].data else {
        panic!("{m:?}")
    };
    assert_eq!(c.0.to_ascii(), "www.example.test.");
    assert_eq!(a_records(&m), vec![Ipv4Addr::new(192, 0, 2, 10)]);
}

#[tokio::test]
async fn no_upstream_answering_is_servfail() {
    // A port nobody listens on: the upstream refuses (ICMP) or stays silent.
    let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let addr = server(vec![dead_addr]).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let q = query("www.example.test.", RecordType::A, None);
    socket.send_to(&q.to_vec().unwrap(), addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn a_repeated_query_is_answered_again_and_a_new_zone_replaces_old_answers() {
    let cell = Arc::new(ZoneCell::new(cluster_zone()));
    let resolver = Arc::new(Resolver {
        zone: cell.clone(),
        forwarder: Forwarder::new(vec![]),
    });
    let server = DnsServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(resolver));
    let name = "kubia.default.svc.cluster.local.";
    for _ in 0..3 {
        // A new id each time: the copy carries the asker's id (ask_udp checks it).
        let (m, _) = ask_udp(addr, &query(name, RecordType::A, None)).await;
        assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 96, 0, 20)]);
    }
    cell.set(Zone::build("cluster.local", &[], &[]));
    let mut q = query(name, RecordType::A, None);
    for id in [1, 2] {
        q.metadata.id = id;
        let (m, _) = ask_udp(addr, &q).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }
}
