//! Peer routing against real nodes' proxies on loopback, over mutual TLS with certificates a
//! test fleet CA signed as the orchestrator signs them: the nearest peer serves when no
//! instance runs here, origins when no peer does, and nothing a stranger presents gets a
//! request through.

use bytes::Bytes;
use edge_proto::NodeId;
use edge_proxy::cache::{Cache, CacheConfig, Clock};
use edge_proxy::{Limits, Peer, PeerTls, Proxy, ProxyMetrics, Routing, Settings};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use node_core::proxy::cache_status::CacheName;
use node_core::proxy::headers::ViaName;
use node_core::proxy::route::{Origin, Route, RouteSettings, RouteTable, Target, WeightedTarget};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A fleet's CA, signing node certificates as the orchestrator's `pki` does: the node id as
/// the common name, client authentication the only usage.
struct Fleet {
    ca: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Fleet {
    fn new() -> Self {
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::default();
        params.distinguished_name = name("edge fleet CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("a CA certificate");
        Self {
            ca: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// `node`'s certificate and key.
    fn node_cert(&self, node: NodeId) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().expect("a node key");
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&node.to_string());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a node certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (cert.der().clone(), key)
    }

    /// The TLS of `node`, a member of this fleet.
    fn tls(&self, node: NodeId) -> PeerTls {
        let (cert, key) = self.node_cert(node);
        PeerTls::new(self.ca.clone(), vec![cert], key).expect("peer TLS")
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn node_id(n: u8) -> NodeId {
    NodeId([n; 16])
}

/// An instance of the workload (or an origin): answers with its name, and counts requests.
struct Instance {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl Instance {
    async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let (stop, mut stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    _ = &mut stopped => return,
                };
                let hits = counted.clone();
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let host = request
                        .headers()
                        .get("host")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("-")
                        .to_owned();
                    async move {
                        let mut response =
                            Response::new(Full::new(Bytes::from(format!("{name}\nhost {host}\n"))));
                        response
                            .headers_mut()
                            .insert("cache-control", "no-store".parse().expect("a header"));
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        Self {
            addr,
            hits,
            _stop: stop,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The port every instance of the workload listens on, as one exposed port would be: each
/// test instance has its own, so the route's port is set per node.
fn workload_route(port: u16, fallback: Option<SocketAddr>) -> Route {
    let mut targets = vec![WeightedTarget {
        target: Target::Workload {
            workload: "w".into(),
            port,
        },
        weight: 1,
    }];
    if let Some(origin) = fallback {
        targets.push(WeightedTarget {
            target: Target::Origin(Origin {
                host: origin.ip().to_string(),
                port: origin.port(),
                base_path: String::new(),
            }),
            weight: 1,
        });
    }
    Route {
        name: "w".into(),
        host: None,
        path_prefix: Some("/".into()),
        targets,
        settings: RouteSettings {
            retries: 0,
            cache: false,
            ..RouteSettings::default()
        },
    }
}

/// A node's proxy: a client listener, a peer listener over TLS, and its routing.
struct Node {
    client: SocketAddr,
    peer: SocketAddr,
    proxy: Proxy,
    _stop: Vec<oneshot::Sender<()>>,
}

impl Node {
    async fn start(name: &str, tls: &PeerTls, limits: Limits) -> Self {
        let cache = Cache::open(CacheConfig {
            name: name.into(),
            memory_bytes: 1 << 20,
            disk: None,
            max_object_bytes: 1 << 20,
            clock: Clock::system(),
        })
        .expect("a cache");
        let settings = Settings {
            via: ViaName::new(name).expect("a token"),
            cache_name: CacheName::new(name).expect("a token"),
            max_body_bytes: 1024,
        };
        let proxy = Proxy::with_peers(settings, cache, ProxyMetrics::default(), tls);
        let clients = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let peers = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (client, peer) = (
            clients.local_addr().expect("address"),
            peers.local_addr().expect("address"),
        );
        let (stop_clients, clients_stopped) = oneshot::channel::<()>();
        let (stop_peers, peers_stopped) = oneshot::channel::<()>();
        tokio::spawn(edge_proxy::serve(clients, limits, proxy.clone(), async {
            let _ = clients_stopped.await;
        }));
        tokio::spawn(edge_proxy::serve_tls(
            peers,
            limits,
            tls.acceptor(),
            proxy.from_peers(),
            async {
                let _ = peers_stopped.await;
            },
        ));
        Self {
            client,
            peer,
            proxy,
            _stop: vec![stop_clients, stop_peers],
        }
    }

    /// Routes the workload to `local` here, then to `peers`, then to `fallback`.
    fn route(
        &self,
        local: Option<&Instance>,
        peers: &[(NodeId, SocketAddr, Option<f64>)],
        fallback: Option<SocketAddr>,
    ) {
        // Every instance of a test listens on a port of its own; the route's port must be the
        // local instance's, and peers route by their own.
        let port = local.map_or(1, |i| i.addr.port());
        self.proxy.set_routing(Routing {
            table: RouteTable::new(vec![workload_route(port, fallback)]).expect("a table"),
            local: local
                .map(|i| HashMap::from([("w".to_owned(), vec![i.addr.ip()])]))
                .unwrap_or_default(),
            peers: HashMap::from([(
                "w".to_owned(),
                peers
                    .iter()
                    .map(|(node, addr, distance_km)| Peer {
                        node: *node,
                        addr: *addr,
                        distance_km: *distance_km,
                    })
                    .collect(),
            )]),
            ..Routing::default()
        });
    }

    async fn get(&self) -> (u16, String) {
        get(self.client, "shop.example").await
    }
}

async fn get(addr: SocketAddr, host: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

/// The answering instance's name.
fn served_by(answer: &(u16, String)) -> Option<&str> {
    (answer.0 == 200).then(|| answer.1.lines().next()).flatten()
}

/// A node on `fleet` that runs an instance of the workload: its node, its instance.
async fn running_node(fleet: &Fleet, id: u8, name: &'static str) -> (Node, Instance) {
    let node = Node::start(name, &fleet.tls(node_id(id)), Limits::default()).await;
    let instance = Instance::start(name).await;
    node.route(Some(&instance), &[], None);
    (node, instance)
}

#[tokio::test]
async fn without_an_instance_here_the_nearest_peer_serves_over_mutual_tls() {
    let fleet = Fleet::new();
    let (near, near_instance) = running_node(&fleet, 2, "near").await;
    let (far, far_instance) = running_node(&fleet, 3, "far").await;
    let here = Node::start("here", &fleet.tls(node_id(1)), Limits::default()).await;
    here.route(
        None,
        &[
            (node_id(3), far.peer, Some(880.0)),
            (node_id(2), near.peer, Some(12.0)),
        ],
        None,
    );
    for _ in 0..20 {
        let answer = here.get().await;
        assert_eq!(served_by(&answer), Some("near"), "{answer:?}");
        assert!(
            answer.1.contains("host shop.example"),
            "the peer routes by the client's host: {answer:?}"
        );
    }
    assert_eq!(near_instance.hits(), 20);
    assert_eq!(far_instance.hits(), 0, "a peer across the continent waits");
}

#[tokio::test]
async fn peers_in_one_metro_share_and_an_unknown_place_waits_for_them() {
    let fleet = Fleet::new();
    let (a, a_instance) = running_node(&fleet, 2, "a").await;
    let (b, b_instance) = running_node(&fleet, 3, "b").await;
    let (c, c_instance) = running_node(&fleet, 4, "c").await;
    let here = Node::start("here", &fleet.tls(node_id(1)), Limits::default()).await;
    here.route(
        None,
        &[
            (node_id(2), a.peer, Some(100.0)),
            (node_id(3), b.peer, Some(110.0)),
            (node_id(4), c.peer, None),
        ],
        None,
    );
    for _ in 0..40 {
        let answer = here.get().await;
        assert!(matches!(served_by(&answer), Some("a" | "b")), "{answer:?}");
    }
    assert!(a_instance.hits() > 0 && b_instance.hits() > 0, "both share");
    assert_eq!(c_instance.hits(), 0);
}

#[tokio::test]
async fn an_instance_here_first_then_the_nearest_peer_then_the_origin() {
    let fleet = Fleet::new();
    let (near, near_instance) = running_node(&fleet, 2, "near").await;
    let origin = Instance::start("origin").await;
    let here = Node::start("here", &fleet.tls(node_id(1)), Limits::default()).await;
    let local = Instance::start("local").await;
    let peers = [(node_id(2), near.peer, Some(3.0))];

    here.route(Some(&local), &peers, Some(origin.addr));
    for _ in 0..5 {
        assert_eq!(served_by(&here.get().await), Some("local"));
    }
    // The instance here stopped: the supervisor's news takes it out of the routing.
    here.route(None, &peers, Some(origin.addr));
    assert_eq!(served_by(&here.get().await), Some("near"));
    // And the peer's, by the orchestrator's.
    here.route(None, &[], Some(origin.addr));
    assert_eq!(served_by(&here.get().await), Some("origin"));
    assert_eq!(
        (local.hits(), near_instance.hits(), origin.hits()),
        (5, 1, 1),
        "the origin is a fallback, never a share"
    );
}

#[tokio::test]
async fn a_peer_that_stops_answering_is_shut_out_and_the_origin_takes_over() {
    let fleet = Fleet::new();
    let (near, _near_instance) = running_node(&fleet, 2, "near").await;
    let origin = Instance::start("origin").await;
    let here = Node::start("here", &fleet.tls(node_id(1)), Limits::default()).await;
    here.route(
        None,
        &[(node_id(2), near.peer, Some(3.0))],
        Some(origin.addr),
    );
    assert_eq!(served_by(&here.get().await), Some("near"));
    drop(near);
    // Its breaker opens after a few failures; until the orchestrator says it is gone.
    let mut failed = 0;
    for _ in 0..20 {
        if served_by(&here.get().await) == Some("origin") {
            break;
        }
        failed += 1;
    }
    assert!(failed <= 6, "{failed} failed before the origin answered");
    for _ in 0..5 {
        assert_eq!(served_by(&here.get().await), Some("origin"));
    }
}

#[tokio::test]
async fn a_request_from_a_peer_is_served_here_or_not_at_all() {
    let fleet = Fleet::new();
    let (third, third_instance) = running_node(&fleet, 3, "third").await;
    let origin = Instance::start("origin").await;
    // A peer that runs no instance itself, whose own routes lead on to a third node and an
    // origin: a request a peer sent it must stop there.
    let middle = Node::start("middle", &fleet.tls(node_id(2)), Limits::default()).await;
    middle.route(
        None,
        &[(node_id(3), third.peer, Some(1.0))],
        Some(origin.addr),
    );
    let here = Node::start("here", &fleet.tls(node_id(1)), Limits::default()).await;
    here.route(None, &[(node_id(2), middle.peer, Some(1.0))], None);
    let (status, _) = here.get().await;
    assert_eq!(status, 502);
    assert_eq!((third_instance.hits(), origin.hits()), (0, 0));
    // Its own clients still reach the third node.
    assert_eq!(served_by(&middle.get().await), Some("third"));
}

#[tokio::test]
async fn a_foreign_certificate_or_another_node_s_gets_no_request_through() {
    let fleet = Fleet::new();
    let (peer, peer_instance) = running_node(&fleet, 2, "peer").await;

    // The route names node 9 at node 2's address: node 2's certificate is not node 9's.
    let here = Node::start("here", &fleet.tls(node_id(1)), Limits::default()).await;
    here.route(None, &[(node_id(9), peer.peer, Some(1.0))], None);
    assert_eq!(here.get().await.0, 502);

    // A node of another fleet, though it trusts ours and claims to be node 1.
    let other = Fleet::new();
    let (cert, key) = other.node_cert(node_id(1));
    let stranger_tls = PeerTls::new(fleet.ca.clone(), vec![cert], key).expect("TLS");
    let stranger = Node::start("stranger", &stranger_tls, Limits::default()).await;
    stranger.route(None, &[(node_id(2), peer.peer, Some(1.0))], None);
    assert_eq!(stranger.get().await.0, 502);

    // A peer whose certificate another fleet signed, at an address the route gives.
    let impostor = Node::start("impostor", &other.tls(node_id(2)), Limits::default()).await;
    let impostor_instance = Instance::start("impostor").await;
    impostor.route(Some(&impostor_instance), &[], None);
    here.route(None, &[(node_id(2), impostor.peer, Some(1.0))], None);
    assert_eq!(here.get().await.0, 502);

    // A client without a certificate: the handshake or the first read fails.
    assert!(plain_tls_client_is_refused(peer.peer).await);

    assert_eq!(peer_instance.hits(), 0);
    assert_eq!(impostor_instance.hits(), 0);
    // The same peer serves a member of the fleet that names it right.
    here.route(None, &[(node_id(2), peer.peer, Some(1.0))], None);
    assert_eq!(served_by(&here.get().await), Some("peer"));
}

/// Connects to a peer listener over TLS without a client certificate, trusting whatever the
/// server shows, and asks for `/`. Whether the server refused it.
async fn plain_tls_client_is_refused(addr: SocketAddr) -> bool {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TrustAnything(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("peer.edge").expect("a name");
    let Ok(mut tls) = connector.connect(name, tcp).await else {
        return true;
    };
    let sent = tls
        .write_all(b"GET / HTTP/1.1\r\nhost: shop.example\r\nconnection: close\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer))
        .await
        .expect("the server ends it in time");
    sent.is_err() || read.is_err() || !answer.starts_with(b"HTTP/1.1")
}

/// A certificate verifier that accepts any server: only for asking the server side whether it
/// refuses a client.
#[derive(Debug)]
struct TrustAnything(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[tokio::test]
async fn the_peer_listener_bounds_handshakes_and_sheds_silent_connections() {
    let fleet = Fleet::new();
    let limits = Limits {
        max_connections: 1,
        header_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let peer = Node::start("peer", &fleet.tls(node_id(2)), limits).await;
    let instance = Instance::start("peer").await;
    peer.route(Some(&instance), &[], None);

    // A connection that never starts its handshake is closed once its time is up.
    let mut silent = TcpStream::connect(peer.peer).await.expect("connect");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("closed well within 10 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // One that holds the only slot in silence makes room for a peer with a request.
    let _holder = TcpStream::connect(peer.peer).await.expect("connect");
    let here = Node::start("here", &fleet.tls(node_id(1)), Limits::default()).await;
    here.route(None, &[(node_id(2), peer.peer, Some(1.0))], None);
    assert_eq!(served_by(&here.get().await), Some("peer"));
    assert_eq!(instance.hits(), 1);
}

#[tokio::test]
async fn a_node_without_peer_tls_cannot_reach_peers_and_says_so() {
    let fleet = Fleet::new();
    let (peer, peer_instance) = running_node(&fleet, 2, "peer").await;
    let cache = Cache::open(CacheConfig {
        name: "plain".into(),
        memory_bytes: 1 << 20,
        disk: None,
        max_object_bytes: 1 << 20,
        clock: Clock::system(),
    })
    .expect("a cache");
    let settings = Settings {
        via: ViaName::new("plain").expect("a token"),
        cache_name: CacheName::new("plain").expect("a token"),
        max_body_bytes: 1024,
    };
    let proxy = Proxy::new(settings, cache, ProxyMetrics::default());
    proxy.set_routing(Routing {
        table: RouteTable::new(vec![workload_route(1, None)]).expect("a table"),
        peers: HashMap::from([(
            "w".to_owned(),
            vec![Peer {
                node: node_id(2),
                addr: peer.peer,
                distance_km: Some(1.0),
            }],
        )]),
        ..Routing::default()
    });
    let listener = TcpListener::bind((IpAddr::V4(Ipv4Addr::LOCALHOST), 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(edge_proxy::serve(
        listener,
        Limits::default(),
        proxy,
        async {
            let _ = stopped.await;
        },
    ));
    assert_eq!(get(addr, "shop.example").await.0, 502);
    assert_eq!(peer_instance.hits(), 0);
}
