//! The proxy's side of scale to zero, against real sockets: a request for a dormant workload
//! waits for the waker and goes to the instance the wake routed; a wake that fails or takes
//! longer than the route's timeout is a 503; a fresh cached answer wakes nothing; and the
//! workload counts as busy until an answer's body has been passed on. Every request that
//! reaches the workload's way in is counted for pre-warming, one the cache answers is not.
//!
//! The waker here plays the node: it starts a backend on the workload's port, sets the
//! routing that has it, and opens the workload's activity, in that order.

use edge_proxy::cache::{Cache, CacheConfig, Clock};
use edge_proxy::{Activity, Limits, Proxy, ProxyMetrics, Routing, Settings, WakeError, Waker};
use node_core::proxy::cache_status::CacheName;
use node_core::proxy::headers::ViaName;
use node_core::proxy::route::{Route, RouteSettings, RouteTable, Target, WeightedTarget};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};

const PATIENCE: Duration = Duration::from_secs(10);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// How the workload's instance answers.
#[derive(Clone)]
enum Answer {
    /// `body`, with these extra header lines.
    Whole {
        body: &'static str,
        headers: &'static str,
    },
    /// `first`, then `rest` once notified, in one body of their combined length.
    Held {
        first: &'static str,
        rest: &'static str,
        go: Arc<Notify>,
    },
}

/// The workload's instance: a plain HTTP/1.1 server on its port that counts requests.
struct Instance {
    hits: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl Instance {
    async fn start(port: u16, answer: Answer) -> Self {
        let listener = TcpListener::bind((LOCALHOST, port))
            .await
            .expect("bind the workload's port");
        let hits = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let counted = hits.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    _ = &mut stopped => return,
                };
                let (hits, answer) = (counted.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    hits.fetch_add(1, Ordering::SeqCst);
                    let _ = match answer {
                        Answer::Whole { body, headers } => {
                            let reply = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
                                body.len()
                            );
                            stream.write_all(reply.as_bytes()).await
                        }
                        Answer::Held { first, rest, go } => {
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{first}",
                                first.len() + rest.len()
                            );
                            if stream.write_all(head.as_bytes()).await.is_err() {
                                return;
                            }
                            go.notified().await;
                            stream.write_all(rest.as_bytes()).await
                        }
                    };
                });
            }
        });
        Self { hits, _stop: stop }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// What the test waker does when asked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wakes {
    /// Starts the instance (once), routes to it, opens the activity.
    Start,
    /// Answers that the workload exited.
    Fail,
    /// Never answers.
    Hang,
}

/// The node, as far as the proxy can tell.
struct TestWaker {
    proxy: Proxy,
    port: u16,
    settings: RouteSettings,
    activity: Arc<Activity>,
    answer: Answer,
    wakes: Wakes,
    calls: AtomicUsize,
    instance: tokio::sync::Mutex<Option<Instance>>,
}

impl TestWaker {
    /// Routes `/` to the workload `shop` on `port`, running on this node when `running`.
    fn route(&self, running: bool) {
        let route = Route {
            name: "shop".into(),
            host: None,
            path_prefix: Some("/".into()),
            targets: vec![WeightedTarget {
                target: Target::Workload {
                    workload: "shop".into(),
                    port: self.port,
                },
                weight: 1,
            }],
            settings: self.settings.clone(),
        };
        let mut local = HashMap::new();
        if running {
            local.insert("shop".to_owned(), vec![LOCALHOST]);
        }
        self.proxy.set_routing(Routing {
            table: RouteTable::new(vec![route]).expect("a valid table"),
            local,
            scale_to_zero: HashMap::from([("shop".to_owned(), self.activity.clone())]),
            ..Routing::default()
        });
    }

    async fn start(&self) -> Result<(), WakeError> {
        let mut instance = self.instance.lock().await;
        if instance.is_none() {
            *instance = Some(Instance::start(self.port, self.answer.clone()).await);
        }
        self.route(true);
        self.activity.open();
        Ok(())
    }

    fn hits(&self) -> usize {
        self.instance
            .try_lock()
            .ok()
            .and_then(|i| i.as_ref().map(Instance::hits))
            .unwrap_or(0)
    }
}

struct Shared(Arc<TestWaker>);

impl Waker for Shared {
    fn wake(&self, workload: &str) -> Pin<Box<dyn Future<Output = Result<(), WakeError>> + Send>> {
        assert_eq!(workload, "shop");
        let waker = self.0.clone();
        waker.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            match waker.wakes {
                Wakes::Start => waker.start().await,
                Wakes::Fail => Err(WakeError::NotReady("exited with code 3".into())),
                Wakes::Hang => std::future::pending().await,
            }
        })
    }
}

struct Setup {
    addr: std::net::SocketAddr,
    waker: Arc<TestWaker>,
    _stop: oneshot::Sender<()>,
}

async fn setup(wakes: Option<Wakes>, settings: RouteSettings, answer: Answer) -> Setup {
    let cache = Cache::open(CacheConfig {
        name: "test-node".into(),
        memory_bytes: 1 << 20,
        disk: None,
        max_object_bytes: 1 << 20,
        clock: Clock::system(),
    })
    .expect("open the cache");
    let proxy = Proxy::new(
        Settings {
            via: ViaName::new("test-node").expect("a token"),
            cache_name: CacheName::new("test-node").expect("a token"),
            max_body_bytes: 1024,
        },
        cache,
        ProxyMetrics::default(),
    );
    let port = std::net::TcpListener::bind((LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let waker = Arc::new(TestWaker {
        proxy: proxy.clone(),
        port,
        settings,
        activity: Arc::new(Activity::dormant(Instant::now())),
        answer,
        wakes: wakes.unwrap_or(Wakes::Hang),
        calls: AtomicUsize::new(0),
        instance: tokio::sync::Mutex::new(None),
    });
    waker.route(false);
    if wakes.is_some() {
        proxy.set_waker(Arc::new(Shared(waker.clone())));
    }
    let listener = TcpListener::bind((LOCALHOST, 0))
        .await
        .expect("bind the proxy");
    let addr = listener.local_addr().expect("proxy address");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(edge_proxy::serve(
        listener,
        Limits::default(),
        proxy,
        async {
            let _ = stopped.await;
        },
    ));
    Setup {
        addr,
        waker,
        _stop: stop,
    }
}

fn uncached() -> RouteSettings {
    RouteSettings {
        cache: false,
        timeout: Duration::from_secs(5),
        retries: 0,
        ..RouteSettings::default()
    }
}

fn hello() -> Answer {
    Answer::Whole {
        body: "hello from shop",
        headers: "cache-control: no-store\r\n",
    }
}

/// `GET path` through the proxy: the status and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: shop\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

#[tokio::test]
async fn a_request_for_a_dormant_workload_wakes_it_and_goes_to_the_instance_the_wake_routed() {
    let s = setup(Some(Wakes::Start), uncached(), hello()).await;
    assert!(s.waker.activity.is_closed());
    let requests: Vec<_> = (0..5).map(|_| tokio::spawn(get(s.addr, "/cart"))).collect();
    for request in requests {
        let answer = request.await.expect("no panic");
        assert_eq!(answer, (200, "hello from shop".to_owned()));
    }
    assert!(s.waker.calls.load(Ordering::SeqCst) >= 1);
    assert_eq!(s.waker.hits(), 5, "every request reached the instance");
    // Awake: the next request goes straight through, without a wake.
    let calls = s.waker.calls.load(Ordering::SeqCst);
    assert_eq!(get(s.addr, "/").await.0, 200);
    assert_eq!(s.waker.calls.load(Ordering::SeqCst), calls);
    assert_eq!(s.waker.activity.in_flight(), 0);
    assert_eq!(
        s.waker.activity.arrivals(),
        6,
        "pre-warming sees every request, those that woke it and the one that found it up"
    );
}

#[tokio::test]
async fn a_wake_that_fails_is_a_503_that_says_so() {
    let s = setup(Some(Wakes::Fail), uncached(), hello()).await;
    let (status, body) = get(s.addr, "/").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "the workload could not be started\n")
    );
    assert_eq!(s.waker.calls.load(Ordering::SeqCst), 1);
    assert!(s.waker.activity.is_closed());
}

#[tokio::test]
async fn a_wake_longer_than_the_route_timeout_is_a_503_at_the_timeout() {
    let settings = RouteSettings {
        timeout: Duration::from_millis(300),
        ..uncached()
    };
    let s = setup(Some(Wakes::Hang), settings, hello()).await;
    let started = Instant::now();
    let (status, body) = get(s.addr, "/").await;
    let took = started.elapsed();
    assert_eq!(
        (status, body.as_str()),
        (503, "the workload did not start in time\n")
    );
    assert!(
        took >= Duration::from_millis(300) && took < PATIENCE,
        "answered after {took:?}"
    );
}

#[tokio::test]
async fn without_a_waker_a_dormant_workload_is_a_503() {
    let s = setup(None, uncached(), hello()).await;
    let (status, body) = get(s.addr, "/").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "the workload is scaled to zero\n")
    );
}

#[tokio::test]
async fn a_fresh_cached_answer_does_not_wake_the_workload() {
    let settings = RouteSettings {
        cache: true,
        ..uncached()
    };
    let answer = Answer::Whole {
        body: "catalogue",
        headers: "cache-control: max-age=600\r\n",
    };
    let s = setup(Some(Wakes::Start), settings, answer).await;
    assert_eq!(
        get(s.addr, "/catalogue").await,
        (200, "catalogue".to_owned())
    );
    assert_eq!(s.waker.calls.load(Ordering::SeqCst), 1);
    // Back to sleep, as the node would put it: closed, and no instance in the routing.
    assert!(s.waker.activity.close_if_idle(
        Instant::now() + Duration::from_secs(3600),
        Duration::from_secs(1)
    ));
    s.waker.route(false);
    assert_eq!(
        get(s.addr, "/catalogue").await,
        (200, "catalogue".to_owned())
    );
    assert_eq!(
        s.waker.calls.load(Ordering::SeqCst),
        1,
        "served from the cache"
    );
    assert_eq!(s.waker.hits(), 1);
    assert_eq!(
        s.waker.activity.arrivals(),
        1,
        "an answer from the cache is no request for the workload"
    );
    // A miss wakes it.
    assert_eq!(get(s.addr, "/other").await.0, 200);
    assert_eq!(s.waker.calls.load(Ordering::SeqCst), 2);
    assert_eq!(s.waker.activity.arrivals(), 2);
}

#[tokio::test]
async fn the_workload_is_busy_until_the_answer_body_has_been_passed_on() {
    let go = Arc::new(Notify::new());
    let answer = Answer::Held {
        first: "first half, ",
        rest: "second half",
        go: go.clone(),
    };
    let s = setup(Some(Wakes::Start), uncached(), answer).await;
    let mut stream = TcpStream::connect(s.addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: shop\r\nconnection: close\r\n\r\n")
        .await
        .expect("send");
    // The head and the first half arrive; the rest is held at the instance.
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("first half, ") {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("the first half in time")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let activity = &s.waker.activity;
    assert_eq!(activity.in_flight(), 1);
    assert!(
        !activity.close_if_idle(
            Instant::now() + Duration::from_secs(3600),
            Duration::from_secs(1)
        ),
        "an answer still streaming keeps the workload up"
    );
    go.notify_one();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut got))
        .await
        .expect("the rest in time")
        .expect("read");
    assert!(String::from_utf8_lossy(&got).ends_with("first half, second half"));
    let deadline = Instant::now() + PATIENCE;
    let mut poll = tokio::time::interval(Duration::from_millis(10));
    while activity.in_flight() > 0 {
        assert!(Instant::now() < deadline, "the request never ended");
        poll.tick().await;
    }
    let ended = activity.last_request();
    assert!(
        !activity.close_if_idle(ended, Duration::from_secs(1)),
        "idle from the answer's end"
    );
    assert!(activity.close_if_idle(ended + Duration::from_secs(1), Duration::from_secs(1)));
}
