//! The proxy against real backends on loopback: routing, forwarding headers, balancing,
//! retries, breakers, canary splits and hostile clients.

use bytes::Bytes;
use edge_proxy::cache::{Cache, CacheConfig, Clock};
use edge_proxy::proxy::RouteModel;
use edge_proxy::{Limits, Proxy, ProxyMetrics, Routing, Settings};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use node_core::proxy::balance::{HostLoad, Strategy};
use node_core::proxy::cache_status::CacheName;
use node_core::proxy::headers::ViaName;
use node_core::proxy::learned::{
    Fallback, Mode, Predict, PredictError, Prediction, ROUTE_FEATURES, ROUTE_WIDTH,
};
use node_core::proxy::route::{Origin, Route, RouteSettings, RouteTable, Target, WeightedTarget};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A backend: answers with its name and the request's headers, one per line.
struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

#[derive(Clone, Copy)]
struct Behaviour {
    status: u16,
    delay: Duration,
    /// `Cache-Control: max-age` for its answers; without it they are `no-store`.
    max_age: Option<u32>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            status: 200,
            delay: Duration::ZERO,
            max_age: None,
        }
    }
}

impl Backend {
    async fn start(name: &'static str, behaviour: Behaviour) -> Self {
        Self::start_on(Ipv4Addr::LOCALHOST.into(), name, behaviour).await
    }

    async fn start_on(ip: IpAddr, name: &'static str, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind a backend");
        Self::serve(listener, name, behaviour)
    }

    fn serve(listener: TcpListener, name: &'static str, behaviour: Behaviour) -> Self {
        let addr = listener.local_addr().expect("backend address");
        let hits = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let counted = hits.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    _ = &mut stopped => return,
                };
                let hits = counted.clone();
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    async move {
                        tokio::time::sleep(behaviour.delay).await;
                        let mut text = format!("{name}\n");
                        for (key, value) in request.headers() {
                            text.push_str(&format!(
                                "{key}: {}\n",
                                String::from_utf8_lossy(value.as_bytes())
                            ));
                        }
                        let mut response = Response::new(Full::new(Bytes::from(text)));
                        *response.status_mut() =
                            StatusCode::from_u16(behaviour.status).expect("a status");
                        let cache_control = match behaviour.max_age {
                            Some(secs) => format!("max-age={secs}"),
                            None => "no-store".to_owned(),
                        };
                        response
                            .headers_mut()
                            .insert("cache-control", cache_control.parse().expect("a header"));
                        response
                            .headers_mut()
                            .insert("connection", "x-secret".parse().expect("a header"));
                        response
                            .headers_mut()
                            .insert("x-secret", "hop".parse().expect("a header"));
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

struct TestProxy {
    addr: SocketAddr,
    proxy: Proxy,
    _dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

fn origin(addr: SocketAddr) -> Target {
    Target::Origin(Origin {
        host: addr.ip().to_string(),
        port: addr.port(),
        base_path: String::new(),
    })
}

fn route(name: &str, host: Option<&str>, path: Option<&str>, targets: Vec<(Target, u32)>) -> Route {
    Route {
        name: name.into(),
        host: host.map(Into::into),
        path_prefix: path.map(Into::into),
        targets: targets
            .into_iter()
            .map(|(target, weight)| WeightedTarget { target, weight })
            .collect(),
        settings: RouteSettings::default(),
    }
}

impl TestProxy {
    async fn start(routes: Vec<Route>, local: HashMap<String, Vec<IpAddr>>) -> Self {
        Self::start_with(routes, local, Limits::default()).await
    }

    async fn start_with(
        routes: Vec<Route>,
        local: HashMap<String, Vec<IpAddr>>,
        limits: Limits,
    ) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let cache = Cache::open(CacheConfig {
            name: "test-node".into(),
            memory_bytes: 1 << 20,
            disk: None,
            max_object_bytes: 1 << 20,
            clock: Clock::system(),
        })
        .expect("open the cache");
        let settings = Settings {
            via: ViaName::new("test-node").expect("a token"),
            cache_name: CacheName::new("test-node").expect("a token"),
            max_body_bytes: 1024,
        };
        let proxy = Proxy::new(settings, cache, ProxyMetrics::default());
        proxy.set_routing(Routing {
            table: RouteTable::new(routes).expect("a valid table"),
            local,
            ..Routing::default()
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(edge_proxy::serve(listener, limits, proxy.clone(), async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            proxy,
            _dir: dir,
            _stop: stop,
        }
    }

    /// Sends raw bytes and reads the answer until the connection closes or the head and
    /// `Content-Length` body are in.
    async fn raw(&self, bytes: &[u8]) -> String {
        let mut stream = TcpStream::connect(self.addr).await.expect("connect");
        stream.write_all(bytes).await.expect("send");
        read_answer(&mut stream).await
    }

    async fn get(&self, host: &str, path: &str) -> (u16, String, String) {
        let answer = self
            .raw(
                format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
        split(&answer)
    }
}

async fn read_answer(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => break,
            Err(_) => panic!(
                "no answer within 10 s: {}",
                String::from_utf8_lossy(&answer)
            ),
        };
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n")
            && let Some(length) = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_owned)
            })
            && length
                .trim()
                .parse::<usize>()
                .is_ok_and(|len| body.len() >= len)
        {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Status, head and body of a raw answer.
fn split(answer: &str) -> (u16, String, String) {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

#[tokio::test]
async fn routes_by_host_then_longest_path_prefix() {
    let api = Backend::start("api", Behaviour::default()).await;
    let web = Backend::start("web", Behaviour::default()).await;
    let other = Backend::start("other", Behaviour::default()).await;
    let proxy = TestProxy::start(
        vec![
            route(
                "web",
                Some("shop.example"),
                None,
                vec![(origin(web.addr), 100)],
            ),
            route(
                "api",
                Some("shop.example"),
                Some("/api"),
                vec![(origin(api.addr), 100)],
            ),
            route("other", None, Some("/"), vec![(origin(other.addr), 100)]),
        ],
        HashMap::new(),
    )
    .await;
    assert_eq!(
        proxy
            .get("shop.example", "/api/items")
            .await
            .2
            .lines()
            .next(),
        Some("api")
    );
    assert_eq!(
        proxy.get("SHOP.example:80", "/api").await.2.lines().next(),
        Some("api")
    );
    assert_eq!(
        proxy.get("shop.example", "/apix").await.2.lines().next(),
        Some("web")
    );
    assert_eq!(
        proxy.get("elsewhere", "/api").await.2.lines().next(),
        Some("other")
    );
}

#[tokio::test]
async fn no_route_is_a_404_that_says_so_with_cache_status() {
    let proxy = TestProxy::start(vec![], HashMap::new()).await;
    let (status, head, body) = proxy.get("nowhere", "/").await;
    assert_eq!(status, 404);
    assert!(body.contains("no route"), "{body}");
    assert!(
        head.contains("\r\ncache-status: test-node; fwd=bypass"),
        "{head}"
    );
}

#[tokio::test]
async fn forwarding_headers_are_added_and_hop_by_hop_ones_removed() {
    let backend = Backend::start("b", Behaviour::default()).await;
    let proxy = TestProxy::start(
        vec![route(
            "r",
            None,
            Some("/"),
            vec![(origin(backend.addr), 100)],
        )],
        HashMap::new(),
    )
    .await;
    let (status, head, body) = split(
        &proxy
            .raw(
                b"GET /x HTTP/1.1\r\nhost: site.local\r\nconnection: close, x-private\r\n\
                  x-private: secret\r\nkeep-alive: 5\r\nx-forwarded-for: 10.0.0.9\r\n\
                  traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
            )
            .await,
    );
    assert_eq!(status, 200, "{head}");
    let seen = body.to_ascii_lowercase();
    assert!(
        seen.contains("x-forwarded-for: 10.0.0.9, 127.0.0.1"),
        "{seen}"
    );
    assert!(seen.contains("forwarded: for=127.0.0.1"), "{seen}");
    assert!(seen.contains("via: 1.1 test-node"), "{seen}");
    assert!(!seen.contains("x-private"), "named in Connection: {seen}");
    assert!(!seen.contains("keep-alive"), "{seen}");
    let trace = seen
        .lines()
        .find_map(|l| l.strip_prefix("traceparent: "))
        .expect("a traceparent");
    assert!(
        trace.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "same trace: {trace}"
    );
    assert!(
        !trace.contains("00f067aa0ba902b7"),
        "a new parent id: {trace}"
    );
    assert!(head.contains("\r\nvia: 1.1 test-node"), "{head}");
    assert!(
        !head.contains("x-secret"),
        "the backend's hop-by-hop header: {head}"
    );
}

#[tokio::test]
async fn a_fresh_answer_is_served_again_with_its_age_and_this_nodes_via_once() {
    let cacheable = Behaviour {
        max_age: Some(60),
        ..Behaviour::default()
    };
    let web = Backend::start("web", cacheable).await;
    let proxy = TestProxy::start(
        vec![route("web", None, Some("/"), vec![(origin(web.addr), 100)])],
        HashMap::new(),
    )
    .await;
    let (status, head, _) = proxy.get("shop.example", "/page").await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("\r\ncache-status: test-node; fwd=uri-miss; ttl=60; stored"),
        "{head}"
    );
    assert_eq!(
        head.matches("\r\nvia: ").count(),
        1,
        "one Via on a miss: {head}"
    );
    // A request directive takes the hit through the cache policy rather than the quick
    // path: the same one Via.
    let answer = proxy
        .raw(b"GET /page HTTP/1.1\r\nhost: shop.example\r\ncache-control: max-stale=5\r\nconnection: close\r\n\r\n")
        .await;
    let (status, head, _) = split(&answer);
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("\r\ncache-status: test-node; hit"), "{head}");
    assert_eq!(head.matches("\r\nvia: ").count(), 1, "one Via: {head}");
    assert!(head.contains("\r\nvia: 1.1 test-node"), "{head}");
    for _ in 0..3 {
        let (status, head, body) = proxy.get("shop.example", "/page").await;
        assert_eq!(status, 200, "{head}");
        assert_eq!(body.lines().next(), Some("web"));
        assert!(
            head.contains("\r\ncache-status: test-node; hit; ttl="),
            "{head}"
        );
        assert_eq!(head.matches("\r\nvia: ").count(), 1, "one Via: {head}");
        assert!(head.contains("\r\nvia: 1.1 test-node"), "{head}");
        assert!(head.contains("\r\nage: "), "{head}");
        assert!(head.contains("\r\ndate: "), "{head}");
        assert!(!head.contains("x-secret"), "hop-by-hop: {head}");
    }
    assert_eq!(web.hits(), 1, "the hits never reached the backend");
}

#[tokio::test]
async fn a_request_without_traceparent_starts_a_trace() {
    let backend = Backend::start("b", Behaviour::default()).await;
    let proxy = TestProxy::start(
        vec![route(
            "r",
            None,
            Some("/"),
            vec![(origin(backend.addr), 100)],
        )],
        HashMap::new(),
    )
    .await;
    let (_, _, body) = proxy.get("a", "/").await;
    let trace = body
        .lines()
        .find_map(|l| l.strip_prefix("traceparent: "))
        .expect("a traceparent");
    assert_eq!(trace.len(), 55, "{trace}");
    assert!(trace.starts_with("00-"));
}

#[tokio::test]
async fn a_request_that_passed_here_before_is_a_loop() {
    let backend = Backend::start("b", Behaviour::default()).await;
    let proxy = TestProxy::start(
        vec![route(
            "r",
            None,
            Some("/"),
            vec![(origin(backend.addr), 100)],
        )],
        HashMap::new(),
    )
    .await;
    let (status, _, _) = split(
        &proxy
            .raw(b"GET / HTTP/1.1\r\nhost: a\r\nvia: 1.1 other, 1.1 test-node\r\nconnection: close\r\n\r\n")
            .await,
    );
    assert_eq!(status, 508);
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn local_instances_are_reached_on_their_exposed_port() {
    let instance = Backend::start("instance", Behaviour::default()).await;
    let proxy = TestProxy::start(
        vec![route(
            "hello",
            None,
            Some("/"),
            vec![(
                Target::Workload {
                    workload: "hello".into(),
                    port: instance.addr.port(),
                },
                100,
            )],
        )],
        HashMap::from([("hello".to_owned(), vec![instance.addr.ip()])]),
    )
    .await;
    let (status, _, body) = proxy.get("a", "/").await;
    assert_eq!((status, body.lines().next()), (200, Some("instance")));
    let (_, head, body) = proxy.get("hello.local", "/").await;
    assert!(
        body.contains("host: hello.local"),
        "the client's host: {body}"
    );
    assert!(
        head.contains("cache-status: test-node; fwd=uri-miss"),
        "{head}"
    );

    // The instance is gone: the route stays, the answer says why.
    proxy.proxy.set_routing(Routing {
        table: RouteTable::new(vec![route(
            "hello",
            None,
            Some("/"),
            vec![(
                Target::Workload {
                    workload: "hello".into(),
                    port: instance.addr.port(),
                },
                100,
            )],
        )])
        .expect("a table"),
        local: HashMap::new(),
        ..Routing::default()
    });
    let (status, _, _) = proxy.get("a", "/").await;
    assert_eq!(status, 502);
}

#[tokio::test]
async fn a_backend_down_is_502_and_a_slow_one_504() {
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let closed_addr = closed.local_addr().expect("addr");
    drop(closed);
    let slow = Backend::start(
        "slow",
        Behaviour {
            delay: Duration::from_secs(30),
            ..Behaviour::default()
        },
    )
    .await;
    let mut slow_route = route("slow", None, Some("/slow"), vec![(origin(slow.addr), 100)]);
    slow_route.settings.timeout = Duration::from_millis(200);
    slow_route.settings.retries = 0;
    let proxy = TestProxy::start(
        vec![
            route(
                "down",
                None,
                Some("/down"),
                vec![(origin(closed_addr), 100)],
            ),
            slow_route,
        ],
        HashMap::new(),
    )
    .await;
    let (status, _, body) = proxy.get("a", "/down").await;
    assert_eq!(status, 502, "{body}");
    assert!(!body.is_empty() && body.len() < 200, "a short body: {body}");
    let (status, _, _) = proxy.get("a", "/slow").await;
    assert_eq!(status, 504);
}

const NAMES: [&str; 4] = ["i2", "i3", "i4", "i5"];

/// `behaviours.len()` instances of one workload, on 127.0.0.2, 127.0.0.3, ...: one port on
/// each address, as a workload's instances on several addresses would be.
async fn instances(behaviours: &[Behaviour]) -> (Vec<Backend>, u16) {
    'again: loop {
        let first = TcpListener::bind("127.0.0.2:0").await.expect("bind");
        let port = first.local_addr().expect("addr").port();
        let mut listeners = vec![first];
        for i in 1..behaviours.len() {
            let ip = IpAddr::from([127, 0, 0, 2 + u8::try_from(i).expect("few")]);
            match TcpListener::bind((ip, port)).await {
                Ok(listener) => listeners.push(listener),
                Err(_) => continue 'again,
            }
        }
        let backends = listeners
            .into_iter()
            .zip(behaviours)
            .zip(NAMES)
            .map(|((listener, b), name)| Backend::serve(listener, name, *b))
            .collect();
        return (backends, port);
    }
}

async fn workload_proxy(backends: &[Backend], port: u16, settings: RouteSettings) -> TestProxy {
    let mut r = route(
        "w",
        None,
        Some("/"),
        vec![(
            Target::Workload {
                workload: "w".into(),
                port,
            },
            100,
        )],
    );
    r.settings = settings;
    let ips = backends.iter().map(|b| b.addr.ip()).collect();
    TestProxy::start(vec![r], HashMap::from([("w".to_owned(), ips)])).await
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let (backends, port) = instances(&[Behaviour::default(); 3]).await;
    let settings = RouteSettings {
        balance: Strategy::RoundRobin,
        ..RouteSettings::default()
    };
    let proxy = workload_proxy(&backends, port, settings).await;
    for _ in 0..90 {
        assert_eq!(proxy.get("x", "/").await.0, 200);
    }
    for b in &backends {
        assert_eq!(b.hits(), 30, "round-robin is exact");
    }
}

#[tokio::test]
async fn peak_ewma_prefers_the_fast_instance() {
    let slow = Behaviour {
        delay: Duration::from_millis(20),
        ..Behaviour::default()
    };
    let (backends, port) = instances(&[Behaviour::default(), slow]).await;
    let proxy = workload_proxy(&backends, port, RouteSettings::default()).await;
    for _ in 0..100 {
        assert_eq!(proxy.get("x", "/").await.0, 200);
    }
    let (fast, slow) = (backends[0].hits(), backends[1].hits());
    assert!(fast > 4 * slow, "fast {fast}, slow {slow}");
}

#[tokio::test]
async fn a_failed_get_is_retried_on_another_instance_and_a_post_is_not() {
    let failing = Behaviour {
        status: 503,
        ..Behaviour::default()
    };
    let (backends, port) = instances(&[failing, Behaviour::default()]).await;
    let settings = RouteSettings {
        balance: Strategy::RoundRobin,
        ..RouteSettings::default()
    };
    let proxy = workload_proxy(&backends, port, settings).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let answer = proxy
            .raw(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi")
            .await;
        statuses.push(split(&answer).0);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        2,
        "round-robin sends every other POST to the failing instance, once: {statuses:?}"
    );
    for _ in 0..10 {
        assert_eq!(proxy.get("x", "/").await.0, 200, "a GET is retried");
    }
}

#[tokio::test]
async fn a_failing_instance_is_shut_out_by_its_breaker() {
    let failing = Behaviour {
        status: 502,
        ..Behaviour::default()
    };
    let (backends, port) = instances(&[failing, Behaviour::default()]).await;
    let settings = RouteSettings {
        balance: Strategy::RoundRobin,
        retries: 0,
        ..RouteSettings::default()
    };
    let proxy = workload_proxy(&backends, port, settings).await;
    let mut failures = 0;
    for _ in 0..100 {
        if proxy.get("x", "/").await.0 != 200 {
            failures += 1;
        }
    }
    assert!(
        failures <= 10,
        "the breaker opened after a few: {failures} failed"
    );
    assert!(backends[0].hits() <= 10, "{}", backends[0].hits());
}

#[tokio::test]
async fn a_canary_gets_its_weight() {
    let stable = Backend::start("stable", Behaviour::default()).await;
    let canary = Backend::start("canary", Behaviour::default()).await;
    let proxy = TestProxy::start(
        vec![route(
            "w",
            None,
            Some("/"),
            vec![(origin(stable.addr), 90), (origin(canary.addr), 10)],
        )],
        HashMap::new(),
    )
    .await;
    for _ in 0..1000 {
        proxy.get("x", "/").await;
    }
    let share = canary.hits() as f64 / 1000.0;
    assert!((0.06..=0.14).contains(&share), "canary share {share}");
}

#[tokio::test]
async fn hostile_heads_get_clear_refusals() {
    let backend = Backend::start("b", Behaviour::default()).await;
    let proxy = TestProxy::start(
        vec![route(
            "r",
            None,
            Some("/"),
            vec![(origin(backend.addr), 100)],
        )],
        HashMap::new(),
    )
    .await;
    let (status, _, _) = split(&proxy.raw(b"GARBAGE\r\n\r\n").await);
    assert_eq!(status, 400);
    let big = format!(
        "GET / HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let (status, _, _) = split(&proxy.raw(big.as_bytes()).await);
    assert_eq!(status, 431);
    let two_lengths =
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcde";
    let (status, _, _) = split(&proxy.raw(two_lengths).await);
    assert_eq!(status, 400, "two lengths");
    assert_eq!(backend.hits(), 0, "none of them reached the backend");
}

/// Both lengths on one request: the body is read by `Transfer-Encoding` alone, the backend
/// is never shown the conflicting `Content-Length`, and the connection closes after the
/// answer (RFC 9112 section 6.1), so what was smuggled behind the body is never a request.
#[tokio::test]
async fn a_smuggled_request_never_reaches_a_backend() {
    let backend = Backend::start("b", Behaviour::default()).await;
    let proxy = TestProxy::start(
        vec![route(
            "r",
            None,
            Some("/"),
            vec![(origin(backend.addr), 100)],
        )],
        HashMap::new(),
    )
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n\
              0\r\n\r\nGET /admin HTTP/1.1\r\nhost: a\r\n\r\n",
        )
        .await
        .expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the proxy closes the connection")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "one answer: {answer}"
    );
    let (status, _, seen) = split(&answer);
    assert_eq!(status, 200);
    assert!(
        !seen.to_ascii_lowercase().contains("content-length"),
        "{seen}"
    );
    assert_eq!(backend.hits(), 1, "only the POST reached the backend");
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let backend = Backend::start("b", Behaviour::default()).await;
    let proxy = TestProxy::start(
        vec![route(
            "r",
            None,
            Some("/"),
            vec![(origin(backend.addr), 100)],
        )],
        HashMap::new(),
    )
    .await;
    let body = "x".repeat(2048);
    let declared = format!(
        "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 2048\r\nconnection: close\r\n\r\n{body}"
    );
    let (status, _, _) = split(&proxy.raw(declared.as_bytes()).await);
    assert_eq!(status, 413);
    let chunked = format!(
        "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         800\r\n{body}\r\n0\r\n\r\n"
    );
    let (status, _, _) = split(&proxy.raw(chunked.as_bytes()).await);
    assert_eq!(status, 413, "a chunked body is held to the limit too");
}

#[tokio::test]
async fn slow_heads_do_not_starve_other_clients() {
    let backend = Backend::start("b", Behaviour::default()).await;
    let limits = Limits {
        max_connections: 4,
        ..Limits::default()
    };
    let proxy = TestProxy::start_with(
        vec![route(
            "r",
            None,
            Some("/"),
            vec![(origin(backend.addr), 100)],
        )],
        HashMap::new(),
        limits,
    )
    .await;
    let mut slow = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n")
            .await
            .expect("half a head");
        slow.push(stream);
    }
    for _ in 0..5 {
        assert_eq!(proxy.get("a", "/").await.0, 200);
    }
}

#[tokio::test]
async fn at_the_cap_with_every_slot_busy_the_newcomer_is_refused_clearly() {
    let slow = Backend::start(
        "slow",
        Behaviour {
            delay: Duration::from_secs(5),
            ..Behaviour::default()
        },
    )
    .await;
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let proxy = TestProxy::start_with(
        vec![route("r", None, Some("/"), vec![(origin(slow.addr), 100)])],
        HashMap::new(),
        limits,
    )
    .await;
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .expect("a whole request");
        busy.push(stream);
    }
    // Both requests have reached the slow backend once it has counted them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while slow.hits() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "requests reached the backend"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, head, _) = proxy.get("a", "/").await;
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("retry-after"), "{head}");
}

#[tokio::test]
async fn a_route_change_does_not_drop_a_request_in_flight() {
    let slow = Backend::start(
        "slow",
        Behaviour {
            delay: Duration::from_millis(300),
            ..Behaviour::default()
        },
    )
    .await;
    let proxy = TestProxy::start(
        vec![route("r", None, Some("/"), vec![(origin(slow.addr), 100)])],
        HashMap::new(),
    )
    .await;
    let addr = proxy.addr;
    let in_flight = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            .await
            .expect("send");
        split(&read_answer(&mut stream).await)
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while slow.hits() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.proxy.set_routing(Routing::default());
    let (status, _, body) = in_flight.await.expect("the request task");
    assert_eq!((status, body.lines().next()), (200, Some("slow")));
    assert_eq!(
        proxy.get("a", "/").await.0,
        404,
        "the new table has no route"
    );
}

/// A routing model that prefers the slowest measured backend (cost `1000 / (1 + mean_ms)`,
/// far apart enough for `Learned` not to call them a tie): the opposite of what P2C does, so
/// its traffic shows who chose.
#[derive(Debug)]
struct PrefersSlow;

impl Predict for PrefersSlow {
    fn predict(&mut self, features: &[f32], out: &mut [Prediction]) -> Result<(), PredictError> {
        for (row, p) in features.chunks_exact(ROUTE_WIDTH).zip(out) {
            *p = Prediction {
                latency_ms: 1000.0 / (1.0 + row[1]),
                failure: 0.0,
            };
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Broken;

impl Predict for Broken {
    fn predict(&mut self, _: &[f32], _: &mut [Prediction]) -> Result<(), PredictError> {
        Err(PredictError("broken on purpose".into()))
    }
}

fn prefers_slow() -> RouteModel {
    Arc::new(|| Ok(Box::new(PrefersSlow) as Box<dyn Predict>))
}

fn broken() -> RouteModel {
    Arc::new(|| Ok(Box::new(Broken) as Box<dyn Predict>))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_model_chooses_and_is_swapped_under_load_without_a_failed_request() {
    let slow = Behaviour {
        delay: Duration::from_millis(30),
        ..Behaviour::default()
    };
    let (backends, port) = instances(&[Behaviour::default(), slow, Behaviour::default()]).await;
    let proxy = workload_proxy(&backends, port, RouteSettings::default()).await;
    let modes = |p: &TestProxy| p.proxy.route_modes();
    assert_eq!(modes(&proxy), [(Mode::Fallback(Fallback::NoModel), 1)]);

    // The model chooses: once each backend is measured, the slow one gets the traffic.
    proxy.proxy.set_route_model(prefers_slow());
    assert_eq!(modes(&proxy), [(Mode::Model, 1)]);
    for _ in 0..60 {
        assert_eq!(proxy.get("x", "/").await.0, 200);
    }
    let slow_hits = backends[1].hits();
    assert!(slow_hits >= 50, "the model's choice: {slow_hits} of 60");

    // Without a model, P2C: the fast ones.
    proxy
        .proxy
        .set_route_model(edge_proxy::proxy::no_route_model());
    let before: Vec<usize> = backends.iter().map(Backend::hits).collect();
    for _ in 0..60 {
        assert_eq!(proxy.get("x", "/").await.0, 200);
    }
    let slow_now = backends[1].hits() - before[1];
    assert!(
        slow_now <= 10,
        "P2C's choice: {slow_now} of 60 to the slow one"
    );

    // A broken model steps aside at its first choice, and the request still goes through.
    proxy.proxy.set_route_model(broken());
    assert_eq!(proxy.get("x", "/").await.0, 200);
    assert_eq!(modes(&proxy), [(Mode::Fallback(Fallback::Broken), 1)]);

    // Models swapped while four clients keep sending: not one request fails.
    let proxy = Arc::new(proxy);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..50 {
                    statuses.push(proxy.get("x", "/").await.0);
                }
                statuses
            })
        })
        .collect();
    let swapper = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let models = [
                prefers_slow(),
                edge_proxy::proxy::no_route_model(),
                broken(),
            ];
            let mut swaps = 0;
            for model in models.iter().cycle().take(300) {
                proxy.proxy.set_route_model(model.clone());
                swaps += 1;
                tokio::task::yield_now().await;
            }
            swaps
        })
    };
    for client in clients {
        let statuses = client.await.expect("a client");
        assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    }
    assert_eq!(swapper.await.expect("the swapper"), 300);
}

/// A routing model that keeps the features of its last run and finds every backend alike.
#[derive(Debug)]
struct Recorder(Arc<std::sync::Mutex<Vec<f32>>>);

impl Predict for Recorder {
    fn predict(&mut self, features: &[f32], out: &mut [Prediction]) -> Result<(), PredictError> {
        *self.0.lock().expect("not poisoned") = features.to_vec();
        out.fill(Prediction {
            latency_ms: 1.0,
            failure: 0.0,
        });
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_model_is_told_this_node_s_load_for_the_backends_that_run_here() {
    let (backends, port) = instances(&[Behaviour::default(), Behaviour::default()]).await;
    let proxy = workload_proxy(&backends, port, RouteSettings::default()).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let shown = seen.clone();
    proxy.proxy.set_route_model(Arc::new(move || {
        Ok(Box::new(Recorder(shown.clone())) as Box<dyn Predict>)
    }));
    let column = |name: &str| {
        ROUTE_FEATURES
            .iter()
            .position(|f| f.name == name)
            .expect("a routing feature")
    };
    let (local, cpu, memory) = (column("local"), column("host_cpu"), column("host_memory"));
    let host = || -> Vec<(f32, f32, f32)> {
        seen.lock()
            .expect("not poisoned")
            .chunks_exact(ROUTE_WIDTH)
            .map(|row| (row[local], row[cpu], row[memory]))
            .collect()
    };

    // The first requests measure each backend; then the model scores both, load unknown.
    for _ in 0..4 {
        assert_eq!(proxy.get("x", "/").await.0, 200);
    }
    assert_eq!(host(), [(1.0, 0.0, 0.0); 2], "local, load not yet measured");

    proxy.proxy.set_local_load(HostLoad {
        cpu: 0.25,
        memory: 0.5,
    });
    assert_eq!(proxy.get("x", "/").await.0, 200);
    assert_eq!(host(), [(1.0, 0.25, 0.5); 2], "this node's load, for both");
}

/// Sampling attempts for training: each sample is the chosen backend's features as the proxy
/// saw them and how the attempt went, read from real backends (one slow, one failing). Off
/// until the node turns it on; a taken window is gone.
#[tokio::test]
async fn sampled_attempts_carry_the_backend_s_features_and_what_happened() {
    let slow = Behaviour {
        delay: Duration::from_millis(20),
        ..Behaviour::default()
    };
    let failing = Behaviour {
        status: 503,
        ..Behaviour::default()
    };
    let (backends, port) = instances(&[slow, failing]).await;
    // Taken in turn, so both are sampled; the features do not depend on the strategy.
    let settings = RouteSettings {
        balance: Strategy::RoundRobin,
        ..RouteSettings::default()
    };
    let proxy = workload_proxy(&backends, port, settings).await;
    proxy.get("x", "/").await;
    assert_eq!(
        proxy.proxy.take_route_samples().attempts,
        0,
        "nothing is sampled until the node asks"
    );

    proxy.proxy.set_route_sampling(true);
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(proxy.get("x", "/").await.0);
    }
    let window = proxy.proxy.take_route_samples();
    assert!(
        (4..=8).contains(&window.attempts),
        "four requests, each tried once or twice: {}",
        window.attempts
    );
    assert_eq!(
        window.samples.len() as u64,
        window.attempts,
        "a quiet window keeps all"
    );
    let column = |name: &str| {
        ROUTE_FEATURES
            .iter()
            .position(|f| f.name == name)
            .expect("a routing feature")
    };
    for sample in &window.samples {
        assert_eq!(sample.features[column("local")], 1.0, "{sample:?}");
        assert_eq!(sample.features[column("in_flight")], 0.0, "{sample:?}");
        if sample.failed {
            assert!(
                sample.latency_ms < 20.0,
                "the failing one answers at once: {sample:?}"
            );
        } else {
            assert!(sample.latency_ms >= 20.0, "the slow one: {sample:?}");
        }
    }
    let answered = answers.iter().filter(|&&status| status == 200).count();
    assert_eq!(
        window.samples.iter().filter(|s| !s.failed).count(),
        answered,
        "one successful attempt per answered request: {answers:?}"
    );
    assert!(answered > 0, "the slow one answered: {answers:?}");
    assert!(
        window.samples.iter().any(|s| s.failed),
        "the failing one was tried"
    );
    assert!(
        proxy.proxy.take_route_samples().samples.is_empty(),
        "a taken window is gone"
    );
}
