//! The cache in front of a real origin (a hyper server on 127.0.0.1:0, reached through
//! hyper-util's client), on a manual clock: minutes of cache time pass without waiting.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use edge_proxy::Body;
use edge_proxy::cache::{
    Cache, CacheConfig, CacheOutcome, Clock, DiskConfig, Origin, Purge, RouteCache,
};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use support::{ClientOrigin, Gate, Reply, ReplyBody, TestOrigin, whole};

/// The manual clock's start, and the same instant and 1000 s before it as HTTP dates.
const T0: u64 = 1_800_000_000;
const T0_DATE: &str = "Fri, 15 Jan 2027 08:00:00 GMT";
const T0_MINUS_1000: &str = "Fri, 15 Jan 2027 07:43:20 GMT";

/// How long any one step may take before the test fails rather than hangs.
const DEADLINE: Duration = Duration::from_secs(10);

struct Harness {
    origin: TestOrigin,
    cache: Cache,
    config: CacheConfig,
    clock: Clock,
    upstream: Arc<dyn Origin>,
    route: RouteCache,
    dir: tempfile::TempDir,
}

/// A received answer.
#[derive(Debug)]
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    outcome: CacheOutcome,
}

impl Got {
    fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The `Via` a proxy would have its quick hits carry.
fn via() -> http::HeaderValue {
    http::HeaderValue::from_static("1.1 edge-test")
}

fn request(method: Method, path: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "example.com");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(whole(Bytes::new())).expect("request")
}

async fn collect(response: http::Response<Body>, outcome: CacheOutcome) -> Got {
    let (head, body) = response.into_parts();
    let body = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .expect("the body in time")
        .expect("the body")
        .to_bytes();
    Got {
        status: head.status,
        headers: head.headers,
        body,
        outcome,
    }
}

impl Harness {
    async fn new() -> Self {
        Self::build(|_| {}, Duration::from_secs(5)).await
    }

    async fn with(adjust: impl FnOnce(&mut CacheConfig)) -> Self {
        Self::build(adjust, Duration::from_secs(5)).await
    }

    async fn build(adjust: impl FnOnce(&mut CacheConfig), origin_timeout: Duration) -> Self {
        let origin = TestOrigin::start().await;
        let clock = Clock::manual(SystemTime::UNIX_EPOCH + Duration::from_secs(T0));
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = CacheConfig {
            name: "edge-node".into(),
            memory_bytes: 1 << 20,
            disk: None,
            max_object_bytes: 64 << 10,
            clock: clock.clone(),
        };
        adjust(&mut config);
        let cache = Cache::open(config.clone()).expect("the cache opens");
        let upstream: Arc<dyn Origin> = Arc::new(ClientOrigin::new(origin.addr, origin_timeout));
        Self {
            origin,
            cache,
            config,
            clock,
            upstream,
            route: RouteCache::default(),
            dir,
        }
    }

    fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn disk(&self, max_bytes: u64) -> Option<DiskConfig> {
        Some(DiskConfig {
            dir: self.cache_dir(),
            max_bytes,
        })
    }

    /// Opens the cache again on the same configuration: a restart.
    fn reopen(&mut self) {
        self.cache = Cache::open(self.config.clone()).expect("the cache opens again");
    }

    fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }

    /// Sends `req` through the cache. Where the quick path answers it too, its answer must
    /// be the one the policy gives: every test here checks both.
    async fn send(&self, req: Request<Body>) -> Got {
        let quick = self.quick(&req).await;
        let serve = self.cache.serve(req, &self.route, &self.upstream);
        let (response, outcome) = tokio::time::timeout(DEADLINE, serve)
            .await
            .expect("an answer in time");
        let got = collect(response, outcome).await;
        if let Some(quick) = quick {
            assert_eq!(got.outcome, CacheOutcome::Hit, "only a hit is quick");
            assert_eq!(quick.status, got.status);
            assert_eq!(quick.body, got.body);
            let mut policy_headers = got.headers.clone();
            // The policy writes `Date`; a quick answer leaves it to the server, and carries
            // the proxy's `Via`, which the proxy adds to every other answer itself.
            policy_headers.remove("date");
            let mut quick_headers = quick.headers.clone();
            assert_eq!(quick_headers.remove("via").as_ref(), Some(&via()));
            assert_eq!(quick_headers, policy_headers);
        }
        got
    }

    /// The quick path's answer to `req`, if it has one.
    async fn quick(&self, req: &Request<Body>) -> Option<Got> {
        let response = self.cache.quick_hit(req, &self.route, &via())?;
        Some(collect(response, CacheOutcome::Hit).await)
    }

    async fn get(&self, path: &str) -> Got {
        self.send(request(Method::GET, path, &[])).await
    }

    async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Got {
        self.send(request(Method::GET, path, headers)).await
    }
}

/// A harness whose cache keeps a disk tier in its temporary directory.
async fn with_disk(memory_bytes: u64, disk_bytes: u64) -> Harness {
    let mut h = Harness::new().await;
    h.config.memory_bytes = memory_bytes;
    h.config.disk = h.disk(disk_bytes);
    h.reopen();
    h
}

/// Polls `condition` until it holds, failing the test at the deadline.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read the cache dir")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// The disk file holding the response for `path`.
fn file_of(dir: &Path, path: &str) -> PathBuf {
    let needle = format!("\"path_and_query\":\"{path}\"");
    files_in(dir)
        .into_iter()
        .find(|f| {
            std::fs::read(f)
                .map(|b| String::from_utf8_lossy(&b).contains(&needle))
                .unwrap_or(false)
        })
        .expect("a file for the path")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

#[tokio::test]
async fn a_fresh_response_answers_again_without_the_origin() {
    let h = Harness::new().await;
    h.origin.set(
        "/a",
        Reply::ok("hello").header("cache-control", "max-age=60"),
    );

    let first = h.get("/a").await;
    assert_eq!(
        (first.status, &first.body[..]),
        (StatusCode::OK, &b"hello"[..])
    );
    assert_eq!(first.outcome, CacheOutcome::Miss);
    assert_eq!(
        first.cache_status(),
        "edge-node; fwd=uri-miss; ttl=60; stored"
    );

    h.advance(10);
    let second = h.get("/a").await;
    assert_eq!(
        (second.status, &second.body[..]),
        (StatusCode::OK, &b"hello"[..])
    );
    assert_eq!(second.outcome, CacheOutcome::Hit);
    assert_eq!(second.cache_status(), "edge-node; hit; ttl=50");
    assert_eq!(second.header("age"), Some("10"));
    assert_eq!(h.origin.count("/a"), 1);
}

#[tokio::test]
async fn a_plain_request_for_a_fresh_response_is_answered_quickly_and_others_by_the_policy() {
    let h = Harness::new().await;
    h.origin.set(
        "/q",
        Reply::ok("quick").header("cache-control", "max-age=60"),
    );
    let plain = || request(Method::GET, "/q", &[]);
    assert!(h.quick(&plain()).await.is_none(), "nothing stored yet");
    h.get("/q").await;
    h.advance(10);
    let quick = h.quick(&plain()).await.expect("a quick answer");
    assert_eq!(&quick.body[..], b"quick");
    assert_eq!(quick.cache_status(), "edge-node; hit; ttl=50");
    assert_eq!(quick.header("age"), Some("10"));
    let head = h
        .quick(&request(Method::HEAD, "/q", &[]))
        .await
        .expect("HEAD");
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some("5"));
    for (method, headers) in [
        (Method::GET, &[("cache-control", "no-cache")][..]),
        (Method::GET, &[("cache-control", "max-age=5")][..]),
        (Method::GET, &[("pragma", "no-cache")][..]),
        (Method::GET, &[("range", "bytes=0-1")][..]),
        (Method::GET, &[("authorization", "Bearer x")][..]),
        (Method::POST, &[][..]),
    ] {
        let req = request(method.clone(), "/q", headers);
        assert!(h.quick(&req).await.is_none(), "{method} {headers:?}");
    }
    let mut off = h.route.clone();
    off.enabled = false;
    assert!(
        h.cache.quick_hit(&plain(), &off, &via()).is_none(),
        "caching off"
    );
    h.advance(50);
    assert!(
        h.quick(&plain()).await.is_none(),
        "stale: the policy decides"
    );
    assert_eq!(h.origin.count("/q"), 1);
}

#[tokio::test]
async fn an_expired_response_is_fetched_again() {
    let h = Harness::new().await;
    h.origin
        .set("/a", Reply::ok("v1").header("cache-control", "max-age=60"));
    h.get("/a").await;
    h.origin
        .set("/a", Reply::ok("v2").header("cache-control", "max-age=60"));
    h.advance(61);
    let again = h.get("/a").await;
    assert_eq!(&again.body[..], b"v2");
    assert_eq!(again.outcome, CacheOutcome::Miss);
    assert_eq!(again.cache_status(), "edge-node; fwd=stale; ttl=60; stored");
    assert_eq!(h.origin.count("/a"), 2);
    assert_eq!(h.get("/a").await.outcome, CacheOutcome::Hit);
}

#[tokio::test]
async fn a_stale_response_is_revalidated_by_etag_and_takes_the_304s_headers() {
    let h = Harness::new().await;
    h.origin.set(
        "/e",
        Reply::ok("body")
            .header("cache-control", "max-age=10")
            .header("etag", "\"v1\"")
            .header("x-version", "1")
            .not_modified(&[
                ("cache-control", "max-age=100"),
                ("etag", "\"v1\""),
                ("x-version", "2"),
            ]),
    );
    h.get("/e").await;
    h.advance(20);

    let revalidated = h.get("/e").await;
    assert_eq!(h.origin.last("/e").headers["if-none-match"], "\"v1\"");
    assert_eq!(revalidated.status, StatusCode::OK);
    assert_eq!(&revalidated.body[..], b"body");
    assert_eq!(revalidated.header("x-version"), Some("2"));
    assert_eq!(revalidated.outcome, CacheOutcome::Revalidated);
    assert_eq!(
        revalidated.cache_status(),
        "edge-node; fwd=stale; fwd-status=304; ttl=100"
    );

    h.advance(50);
    let hit = h.get("/e").await;
    assert_eq!(hit.outcome, CacheOutcome::Hit);
    assert_eq!(hit.header("x-version"), Some("2"));
    assert_eq!(hit.cache_status(), "edge-node; hit; ttl=50");
    assert_eq!(h.origin.count("/e"), 2);
}

#[tokio::test]
async fn a_stale_response_is_revalidated_by_last_modified() {
    let h = Harness::new().await;
    h.origin.set(
        "/lm",
        Reply::ok("body")
            .header("cache-control", "max-age=10")
            .header("last-modified", T0_MINUS_1000)
            .header("x-version", "1")
            .not_modified(&[
                ("cache-control", "max-age=100"),
                ("last-modified", T0_MINUS_1000),
                ("x-version", "2"),
            ]),
    );
    h.get("/lm").await;
    h.advance(20);

    let revalidated = h.get("/lm").await;
    assert_eq!(
        h.origin.last("/lm").headers["if-modified-since"],
        T0_MINUS_1000
    );
    assert_eq!(&revalidated.body[..], b"body");
    assert_eq!(revalidated.header("x-version"), Some("2"));
    assert_eq!(revalidated.outcome, CacheOutcome::Revalidated);
    h.advance(50);
    assert_eq!(h.get("/lm").await.outcome, CacheOutcome::Hit);
    assert_eq!(h.origin.count("/lm"), 2);
}

#[tokio::test]
async fn each_vary_variant_is_stored_and_another_value_misses() {
    let h = Harness::new().await;
    h.origin.set(
        "/v",
        Reply::ok("lang=")
            .header("cache-control", "max-age=60")
            .header("vary", "Accept-Language")
            .echo("accept-language"),
    );
    let fr = h.get_with("/v", &[("accept-language", "fr")]).await;
    assert_eq!(&fr.body[..], b"lang=fr");
    let de = h.get_with("/v", &[("accept-language", "de")]).await;
    assert_eq!(&de.body[..], b"lang=de");
    assert_eq!(
        de.cache_status(),
        "edge-node; fwd=vary-miss; ttl=60; stored"
    );

    let fr = h.get_with("/v", &[("accept-language", "fr")]).await;
    assert_eq!(
        (fr.outcome, &fr.body[..]),
        (CacheOutcome::Hit, &b"lang=fr"[..])
    );
    let de = h.get_with("/v", &[("accept-language", "de")]).await;
    assert_eq!(
        (de.outcome, &de.body[..]),
        (CacheOutcome::Hit, &b"lang=de"[..])
    );
    assert_eq!(h.origin.count("/v"), 2);

    let es = h.get_with("/v", &[("accept-language", "es")]).await;
    assert_eq!(&es.body[..], b"lang=es");
    assert!(es.cache_status().starts_with("edge-node; fwd=vary-miss"));
    assert_eq!(h.origin.count("/v"), 3);
    assert_eq!(h.cache.usage().entries, 3);
}

#[tokio::test]
async fn no_store_responses_are_never_stored() {
    let h = Harness::new().await;
    h.origin.set(
        "/n",
        Reply::ok("x").header("cache-control", "no-store, max-age=60"),
    );
    let first = h.get("/n").await;
    assert_eq!(first.outcome, CacheOutcome::Uncacheable);
    assert_eq!(first.cache_status(), "edge-node; fwd=uri-miss");
    h.get("/n").await;
    assert_eq!(h.origin.count("/n"), 2);
    assert_eq!(h.cache.usage().entries, 0);
}

#[tokio::test]
async fn private_responses_are_not_stored_by_a_shared_cache() {
    let h = Harness::new().await;
    h.origin.set(
        "/p",
        Reply::ok("mine").header("cache-control", "private, max-age=60"),
    );
    h.get("/p").await;
    h.get("/p").await;
    assert_eq!(h.origin.count("/p"), 2);
}

#[tokio::test]
async fn authorized_requests_are_stored_only_when_the_response_allows_a_shared_cache() {
    let h = Harness::new().await;
    let auth = [("authorization", "Bearer secret")];
    h.origin.set(
        "/plain",
        Reply::ok("x").header("cache-control", "max-age=60"),
    );
    h.get_with("/plain", &auth).await;
    h.get_with("/plain", &auth).await;
    assert_eq!(h.origin.count("/plain"), 2);

    for (path, cc) in [
        ("/public", "public, max-age=60"),
        ("/shared", "s-maxage=60"),
        ("/must", "must-revalidate, max-age=60"),
    ] {
        h.origin
            .set(path, Reply::ok("x").header("cache-control", cc));
        h.get_with(path, &auth).await;
        assert_eq!(h.get(path).await.outcome, CacheOutcome::Hit, "{cc}");
        assert_eq!(h.origin.count(path), 1, "{cc}");
    }
}

#[tokio::test]
async fn s_maxage_beats_max_age() {
    let h = Harness::new().await;
    h.origin.set(
        "/s",
        Reply::ok("x").header("cache-control", "max-age=1, s-maxage=100"),
    );
    h.get("/s").await;
    h.advance(50);
    let hit = h.get("/s").await;
    assert_eq!(hit.cache_status(), "edge-node; hit; ttl=50");
    assert_eq!(h.origin.count("/s"), 1);
}

#[tokio::test]
async fn heuristic_freshness_is_a_tenth_of_the_time_since_last_modified() {
    let h = Harness::new().await;
    h.origin.set(
        "/h",
        Reply::ok("x")
            .header("date", T0_DATE)
            .header("last-modified", T0_MINUS_1000),
    );
    assert_eq!(
        h.get("/h").await.cache_status(),
        "edge-node; fwd=uri-miss; ttl=100; stored"
    );
    h.advance(99);
    assert_eq!(h.get("/h").await.cache_status(), "edge-node; hit; ttl=1");
    h.advance(2);
    h.get("/h").await;
    assert_eq!(h.origin.count("/h"), 2);
}

#[tokio::test]
async fn only_heuristically_cacheable_statuses_are_stored_without_a_lifetime() {
    let h = Harness::new().await;
    let reply = |status| {
        Reply::ok("")
            .status(status)
            .header("date", T0_DATE)
            .header("last-modified", T0_MINUS_1000)
    };
    for status in [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501] {
        let path = format!("/status/{status}");
        h.origin.set(&path, reply(status));
        h.get(&path).await;
        let again = h.get(&path).await;
        assert_eq!(again.status.as_u16(), status);
        assert_eq!(again.outcome, CacheOutcome::Hit, "{status}");
        assert_eq!(h.origin.count(&path), 1, "{status}");
    }
    for status in [201, 302, 303, 307, 400, 403, 500, 502, 503] {
        let path = format!("/status/{status}");
        h.origin.set(&path, reply(status));
        h.get(&path).await;
        h.get(&path).await;
        assert_eq!(h.origin.count(&path), 2, "{status}");
    }
}

#[tokio::test]
async fn age_from_the_origin_counts_against_max_age() {
    let h = Harness::new().await;
    h.origin.set(
        "/aged",
        Reply::ok("x")
            .header("cache-control", "max-age=120")
            .header("age", "100"),
    );
    assert_eq!(
        h.get("/aged").await.cache_status(),
        "edge-node; fwd=uri-miss; ttl=20; stored"
    );
    h.advance(19);
    let hit = h.get("/aged").await;
    assert_eq!(hit.cache_status(), "edge-node; hit; ttl=1");
    assert_eq!(hit.header("age"), Some("119"));
    h.advance(2);
    h.get("/aged").await;
    assert_eq!(h.origin.count("/aged"), 2);
}

#[tokio::test]
async fn request_max_age_zero_goes_to_the_origin() {
    let h = Harness::new().await;
    h.origin
        .set("/r", Reply::ok("x").header("cache-control", "max-age=60"));
    h.get("/r").await;
    h.advance(1);
    let forced = h.get_with("/r", &[("cache-control", "max-age=0")]).await;
    assert_eq!(
        forced.cache_status(),
        "edge-node; fwd=request; ttl=60; stored"
    );
    assert_eq!(h.origin.count("/r"), 2);
}

#[tokio::test]
async fn request_max_stale_accepts_a_stale_response_within_it() {
    let h = Harness::new().await;
    h.origin
        .set("/r", Reply::ok("x").header("cache-control", "max-age=10"));
    h.get("/r").await;
    h.advance(20);
    let stale = h.get_with("/r", &[("cache-control", "max-stale=30")]).await;
    assert_eq!(stale.outcome, CacheOutcome::Stale);
    assert_eq!(stale.cache_status(), "edge-node; hit; ttl=-10");
    assert_eq!(h.origin.count("/r"), 1);
    h.get_with("/r", &[("cache-control", "max-stale=5")]).await;
    assert_eq!(h.origin.count("/r"), 2);
}

#[tokio::test]
async fn max_stale_does_not_serve_what_a_shared_cache_must_revalidate() {
    let h = Harness::new().await;
    h.origin
        .set("/r", Reply::ok("x").header("cache-control", "s-maxage=10"));
    h.get("/r").await;
    h.advance(20);
    let asked = h.get_with("/r", &[("cache-control", "max-stale=30")]).await;
    assert!(
        asked.cache_status().contains("fwd=stale"),
        "{}",
        asked.cache_status()
    );
    assert_eq!(h.origin.count("/r"), 2);
}

#[tokio::test]
async fn request_min_fresh_goes_to_the_origin_when_too_little_is_left() {
    let h = Harness::new().await;
    h.origin
        .set("/r", Reply::ok("x").header("cache-control", "max-age=100"));
    h.get("/r").await;
    assert_eq!(
        h.get_with("/r", &[("cache-control", "min-fresh=50")])
            .await
            .outcome,
        CacheOutcome::Hit
    );
    let forced = h
        .get_with("/r", &[("cache-control", "min-fresh=200")])
        .await;
    assert!(forced.cache_status().starts_with("edge-node; fwd=request"));
    assert_eq!(h.origin.count("/r"), 2);
}

#[tokio::test]
async fn request_no_cache_revalidates_a_fresh_response() {
    let h = Harness::new().await;
    h.origin.set(
        "/r",
        Reply::ok("x")
            .header("cache-control", "max-age=100")
            .header("etag", "\"1\"")
            .not_modified(&[("etag", "\"1\""), ("cache-control", "max-age=100")]),
    );
    h.get("/r").await;
    let checked = h.get_with("/r", &[("cache-control", "no-cache")]).await;
    assert_eq!(checked.outcome, CacheOutcome::Revalidated);
    assert_eq!(
        checked.cache_status(),
        "edge-node; fwd=request; fwd-status=304; ttl=100"
    );
    assert_eq!(h.origin.count("/r"), 2);
}

#[tokio::test]
async fn only_if_cached_answers_504_without_the_origin_when_nothing_is_stored() {
    let h = Harness::new().await;
    h.origin
        .set("/o", Reply::ok("x").header("cache-control", "max-age=60"));
    let nothing = h
        .get_with("/o", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(nothing.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(nothing.cache_status(), "edge-node; detail=only-if-cached");
    assert_eq!(h.origin.count("/o"), 0);
    h.get("/o").await;
    let stored = h
        .get_with("/o", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(
        (stored.status, stored.outcome),
        (StatusCode::OK, CacheOutcome::Hit)
    );
    assert_eq!(h.origin.count("/o"), 1);
}

#[tokio::test]
async fn a_successful_post_invalidates_its_target_and_same_host_content_location() {
    let h = Harness::new().await;
    h.origin.set(
        "/item",
        Reply::ok("item")
            .header("cache-control", "max-age=60")
            .header("content-location", "/list"),
    );
    h.origin.set(
        "/list",
        Reply::ok("list").header("cache-control", "max-age=60"),
    );
    h.origin.set(
        "/other",
        Reply::ok("other").header("cache-control", "max-age=60"),
    );
    for path in ["/item", "/list", "/other"] {
        h.get(path).await;
    }

    let post = h.send(request(Method::POST, "/item", &[])).await;
    assert_eq!(h.origin.last("/item").method, "POST");
    assert_eq!(post.outcome, CacheOutcome::Uncacheable);
    assert_eq!(post.cache_status(), "edge-node; fwd=method");

    for path in ["/item", "/list", "/other"] {
        h.get(path).await;
    }
    assert_eq!(
        h.origin.count("/item"),
        3,
        "one GET, the POST, the GET after"
    );
    assert_eq!(h.origin.count("/list"), 2);
    assert_eq!(h.origin.count("/other"), 1);
}

#[tokio::test]
async fn a_failed_post_invalidates_nothing() {
    let h = Harness::new().await;
    h.origin.set(
        "/item",
        Reply::ok("item").header("cache-control", "max-age=60"),
    );
    h.get("/item").await;
    h.origin.set("/item", Reply::ok("no").status(409));
    h.send(request(Method::PUT, "/item", &[])).await;
    assert_eq!(h.get("/item").await.outcome, CacheOutcome::Hit);
}

#[tokio::test]
async fn stale_while_revalidate_answers_stale_at_once_and_refreshes_behind() {
    let h = Harness::new().await;
    let cc = "max-age=1, stale-while-revalidate=60";
    h.origin
        .set("/w", Reply::ok("v1").header("cache-control", cc));
    h.get("/w").await;
    h.origin
        .set("/w", Reply::ok("v2").header("cache-control", cc));
    h.advance(10);

    let stale = h.get("/w").await;
    assert_eq!(&stale.body[..], b"v1");
    assert_eq!(stale.outcome, CacheOutcome::Stale);
    assert_eq!(
        stale.cache_status(),
        "edge-node; hit; ttl=-9; detail=stale-while-revalidate"
    );
    eventually("the revalidation behind", || h.origin.count("/w") == 2).await;

    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let got = h.get("/w").await;
        if got.outcome == CacheOutcome::Hit {
            assert_eq!(&got.body[..], b"v2");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never refreshed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(h.origin.count("/w"), 2);
}

#[tokio::test]
async fn stale_if_error_answers_stale_on_a_server_error_within_its_window() {
    let mut h = Harness::new().await;
    h.route.stale_if_offline = None;
    h.origin.set(
        "/e",
        Reply::ok("v1").header("cache-control", "max-age=1, stale-if-error=60"),
    );
    h.get("/e").await;
    h.origin.set("/e", Reply::ok("down").status(503));
    h.advance(10);

    let stale = h.get("/e").await;
    assert_eq!(
        (stale.status, &stale.body[..]),
        (StatusCode::OK, &b"v1"[..])
    );
    assert_eq!(stale.outcome, CacheOutcome::Stale);
    assert_eq!(
        stale.cache_status(),
        "edge-node; hit; ttl=-9; detail=stale-if-error"
    );

    h.advance(60);
    let error = h.get("/e").await;
    assert_eq!(
        (error.status, &error.body[..]),
        (StatusCode::SERVICE_UNAVAILABLE, &b"down"[..])
    );
}

#[tokio::test]
async fn a_down_origin_gets_stale_answers_within_the_route_limit_and_502_beyond() {
    let mut h = Harness::new().await;
    h.route.stale_if_offline = Some(Duration::from_secs(3600));
    h.origin.set(
        "/d",
        Reply::ok("kept").header("cache-control", "max-age=10"),
    );
    h.get("/d").await;
    h.origin.stop().await;

    h.advance(100);
    let stale = h.get("/d").await;
    assert_eq!(
        (stale.status, &stale.body[..]),
        (StatusCode::OK, &b"kept"[..])
    );
    assert_eq!(stale.outcome, CacheOutcome::Stale);
    assert_eq!(
        stale.cache_status(),
        "edge-node; hit; ttl=-90; detail=origin-down"
    );

    h.advance(3600);
    let gone = h.get("/d").await;
    assert_eq!(
        (gone.status, &gone.body[..]),
        (StatusCode::BAD_GATEWAY, &b"origin unreachable\n"[..])
    );
    assert_eq!(
        gone.cache_status(),
        "edge-node; fwd=stale; detail=origin-unreachable"
    );
}

#[tokio::test]
async fn a_route_without_stale_if_offline_answers_502_when_the_origin_is_down() {
    let mut h = Harness::new().await;
    h.route.stale_if_offline = None;
    h.origin.set(
        "/d",
        Reply::ok("kept").header("cache-control", "max-age=10"),
    );
    h.get("/d").await;
    h.origin.stop().await;
    h.advance(11);
    assert_eq!(h.get("/d").await.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn must_revalidate_is_not_served_stale_even_when_the_origin_is_down() {
    let mut h = Harness::new().await;
    h.origin.set(
        "/m",
        Reply::ok("kept").header("cache-control", "max-age=1, must-revalidate"),
    );
    h.get("/m").await;
    h.origin.stop().await;
    h.advance(5);
    assert_eq!(h.get("/m").await.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn a_timed_out_origin_without_a_stored_response_answers_504() {
    let h = Harness::build(|_| {}, Duration::from_millis(200)).await;
    let never = Gate::new();
    h.origin.set("/slow", Reply::ok("late").gated(&never));
    let got = h.get("/slow").await;
    assert_eq!(
        (got.status, &got.body[..]),
        (StatusCode::GATEWAY_TIMEOUT, &b"origin timed out\n"[..])
    );
    assert_eq!(
        got.cache_status(),
        "edge-node; fwd=uri-miss; detail=origin-timeout"
    );
    never.open();
}

#[tokio::test]
async fn a_restarted_cache_serves_what_it_stored_on_disk() {
    let mut h = with_disk(1 << 20, 1 << 20).await;
    h.origin.set(
        "/keep",
        Reply::ok("on disk").header("cache-control", "max-age=600"),
    );
    h.get("/keep").await;
    h.reopen();
    h.origin.stop().await;
    assert_eq!(h.cache.usage().entries, 1);
    h.advance(10);
    let hit = h.get("/keep").await;
    assert_eq!(
        (hit.outcome, &hit.body[..]),
        (CacheOutcome::Hit, &b"on disk"[..])
    );
    assert_eq!(hit.cache_status(), "edge-node; hit; ttl=590");
}

#[tokio::test]
async fn fifty_concurrent_misses_make_one_origin_request() {
    let h = Harness::new().await;
    let gate = Gate::new();
    h.origin.set(
        "/hot",
        Reply::ok("hot")
            .header("cache-control", "max-age=60")
            .gated(&gate),
    );
    let started = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (cache, route, upstream) =
                (h.cache.clone(), h.route.clone(), Arc::clone(&h.upstream));
            let started = Arc::clone(&started);
            tokio::spawn(async move {
                started.fetch_add(1, Ordering::SeqCst);
                let (response, outcome) = cache
                    .serve(request(Method::GET, "/hot", &[]), &route, &upstream)
                    .await;
                collect(response, outcome).await
            })
        })
        .collect();
    // On this single-threaded runtime a task joins the flight in its first poll.
    eventually("all started and one at the origin", || {
        started.load(Ordering::SeqCst) == 50 && h.origin.count("/hot") == 1
    })
    .await;
    gate.open();
    let mut collapsed = 0;
    for task in tasks {
        let got = tokio::time::timeout(DEADLINE, task)
            .await
            .expect("in time")
            .expect("task");
        assert_eq!((got.status, &got.body[..]), (StatusCode::OK, &b"hot"[..]));
        if got.cache_status().contains("; collapsed") {
            collapsed += 1;
            assert_eq!(
                got.cache_status(),
                "edge-node; fwd=uri-miss; ttl=60; collapsed"
            );
        }
    }
    assert_eq!(collapsed, 49);
    assert_eq!(h.origin.count("/hot"), 1);
}

#[tokio::test]
async fn a_dropped_leader_does_not_hang_the_waiters_or_its_key() {
    let h = Harness::new().await;
    let gate = Gate::new();
    h.origin.set(
        "/slow",
        Reply::ok("slow")
            .header("cache-control", "max-age=60")
            .gated(&gate),
    );
    let spawn = |started: Arc<AtomicUsize>| {
        let (cache, route, upstream) = (h.cache.clone(), h.route.clone(), Arc::clone(&h.upstream));
        tokio::spawn(async move {
            started.fetch_add(1, Ordering::SeqCst);
            let (response, outcome) = cache
                .serve(request(Method::GET, "/slow", &[]), &route, &upstream)
                .await;
            collect(response, outcome).await
        })
    };
    let leader = spawn(Arc::new(AtomicUsize::new(0)));
    eventually("the leader at the origin", || h.origin.count("/slow") == 1).await;
    let started = Arc::new(AtomicUsize::new(0));
    let waiters = [spawn(Arc::clone(&started)), spawn(Arc::clone(&started))];
    eventually("the waiters started", || {
        started.load(Ordering::SeqCst) == 2
    })
    .await;
    tokio::task::yield_now().await;

    // The leader's client goes away.
    leader.abort();
    assert!(leader.await.expect_err("aborted").is_cancelled());
    eventually("the waiters at the origin themselves", || {
        h.origin.count("/slow") == 3
    })
    .await;
    gate.open();
    for waiter in waiters {
        let got = tokio::time::timeout(DEADLINE, waiter)
            .await
            .expect("in time")
            .expect("task");
        assert_eq!((got.status, &got.body[..]), (StatusCode::OK, &b"slow"[..]));
    }

    // Nothing is left in flight for the key: two new misses collapse into one request again.
    h.cache.purge(&Purge::Key {
        host: "example.com".into(),
        path_and_query: "/slow".into(),
    });
    let gate = Gate::new();
    h.origin.set(
        "/slow",
        Reply::ok("again")
            .header("cache-control", "max-age=60")
            .gated(&gate),
    );
    let started = Arc::new(AtomicUsize::new(0));
    let pair = [spawn(Arc::clone(&started)), spawn(Arc::clone(&started))];
    eventually("both started, one at the origin", || {
        started.load(Ordering::SeqCst) == 2 && h.origin.count("/slow") == 4
    })
    .await;
    gate.open();
    let mut collapsed = 0;
    for task in pair {
        let got = tokio::time::timeout(DEADLINE, task)
            .await
            .expect("in time")
            .expect("task");
        assert_eq!(&got.body[..], b"again");
        collapsed += usize::from(got.cache_status().contains("collapsed"));
    }
    assert_eq!(collapsed, 1);
    assert_eq!(h.origin.count("/slow"), 4);
}

#[tokio::test]
async fn memory_usage_stays_within_its_bound() {
    let h = Harness::with(|c| c.memory_bytes = 20_000).await;
    let body = "m".repeat(1000);
    for i in 0..50 {
        let path = format!("/mem/{i}");
        h.origin.set(
            &path,
            Reply::ok(&body).header("cache-control", "max-age=600"),
        );
        h.get(&path).await;
        assert!(
            h.cache.usage().memory_bytes <= 20_000,
            "{:?}",
            h.cache.usage()
        );
    }
    let usage = h.cache.usage();
    assert!(usage.entries > 5 && usage.entries < 50, "{usage:?}");
    assert_eq!(h.get("/mem/49").await.outcome, CacheOutcome::Hit);
    h.get("/mem/0").await;
    assert_eq!(h.origin.count("/mem/0"), 2, "the oldest was evicted");
}

#[tokio::test]
async fn disk_usage_stays_within_its_bound() {
    let h = with_disk(0, 20_000).await;
    let body = "d".repeat(1000);
    for i in 0..50 {
        let path = format!("/disk/{i}");
        h.origin.set(
            &path,
            Reply::ok(&body).header("cache-control", "max-age=600"),
        );
        h.get(&path).await;
        let usage = h.cache.usage();
        assert!(usage.disk_bytes <= 20_000, "{usage:?}");
        let on_disk: u64 = files_in(&h.cache_dir())
            .iter()
            .map(|f| std::fs::metadata(f).expect("stat").len())
            .sum();
        assert_eq!(on_disk, usage.disk_bytes);
    }
    let usage = h.cache.usage();
    assert_eq!(usage.memory_bytes, 0);
    assert!(usage.entries > 5 && usage.entries < 50, "{usage:?}");
    assert_eq!(files_in(&h.cache_dir()).len(), usage.entries);
    assert_eq!(h.get("/disk/49").await.outcome, CacheOutcome::Hit);
    h.get("/disk/0").await;
    assert_eq!(h.origin.count("/disk/0"), 2, "the oldest was evicted");
}

#[tokio::test]
async fn corrupt_truncated_and_foreign_disk_files_are_never_served_and_are_removed() {
    let mut h = with_disk(0, 1 << 20).await;
    for path in ["/intact", "/truncated", "/flipped"] {
        h.origin.set(
            path,
            Reply::ok(&format!("body of {path}")).header("cache-control", "max-age=600"),
        );
        h.get(path).await;
    }
    let dir = h.cache_dir();
    let truncated = file_of(&dir, "/truncated");
    let bytes = std::fs::read(&truncated).expect("read");
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).expect("truncate");
    let flipped = file_of(&dir, "/flipped");
    let mut bytes = std::fs::read(&flipped).expect("read");
    let at = bytes.len() - 40; // in the body, before the checksum
    bytes[at] ^= 0x20;
    std::fs::write(&flipped, &bytes).expect("flip");
    let foreign = dir.join("notes.txt");
    std::fs::write(&foreign, "not a cache file").expect("write");
    let named_like_one = dir.join("ab".repeat(32));
    std::fs::write(&named_like_one, b"edgeC\0\0\x01\xff\xff\xff\xff").expect("write");
    let leftover = dir.join(".tmp-leftover");
    std::fs::write(&leftover, "half").expect("write");

    h.reopen();
    for gone in [&truncated, &foreign, &named_like_one, &leftover] {
        assert!(!gone.exists(), "{} was removed", gone.display());
    }
    for path in ["/intact", "/truncated", "/flipped"] {
        let got = h.get(path).await;
        assert_eq!(got.body, format!("body of {path}"), "never a wrong answer");
    }
    assert_eq!(h.origin.count("/intact"), 1);
    assert_eq!(h.origin.count("/truncated"), 2);
    assert_eq!(h.origin.count("/flipped"), 2);
}

#[tokio::test]
async fn a_body_larger_than_max_object_bytes_streams_through_unstored() {
    let h = Harness::with(|c| c.max_object_bytes = 1024).await;
    let gate = Gate::new();
    let (first, rest) = ("a".repeat(2000), "b".repeat(3000));
    h.origin.set(
        "/big",
        Reply::ok("")
            .header("cache-control", "max-age=60")
            .body(ReplyBody::Streamed {
                first: Bytes::from(first.clone()),
                gate: gate.clone(),
                rest: Bytes::from(rest.clone()),
            }),
    );
    // The answer starts while the origin still holds most of the body: nothing waited for
    // the whole of it.
    let serve = h
        .cache
        .serve(request(Method::GET, "/big", &[]), &h.route, &h.upstream);
    let (response, outcome) = tokio::time::timeout(DEADLINE, serve)
        .await
        .expect("the head in time");
    assert_eq!(outcome, CacheOutcome::Uncacheable);
    assert_eq!(
        response.headers()["cache-status"],
        "edge-node; fwd=uri-miss"
    );
    gate.open();
    let got = collect(response, outcome).await;
    assert_eq!(got.body, format!("{first}{rest}"));
    assert_eq!(h.cache.usage().entries, 0);
    h.get("/big").await;
    assert_eq!(h.origin.count("/big"), 2);
}

#[tokio::test]
async fn the_disk_directory_is_0700_and_its_files_0600_whatever_they_were() {
    let mut h = Harness::new().await;
    let dir = h.cache_dir();
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    h.config.disk = h.disk(1 << 20);
    h.reopen();
    assert_eq!(mode(&dir), 0o700);
    h.origin
        .set("/f", Reply::ok("x").header("cache-control", "max-age=60"));
    h.get("/f").await;
    let files = files_in(&dir);
    assert_eq!(files.len(), 1);
    assert_eq!(mode(&files[0]), 0o600);

    let nested = h.dir.path().join("a/b/cache");
    h.config.disk = Some(DiskConfig {
        dir: nested.clone(),
        max_bytes: 1 << 20,
    });
    h.reopen();
    assert_eq!(mode(&nested), 0o700);
    assert_eq!(mode(&h.dir.path().join("a/b")), 0o700);
}

#[tokio::test]
async fn head_is_answered_from_a_stored_get_without_a_body() {
    let h = Harness::new().await;
    h.origin.set(
        "/g",
        Reply::ok("payload").header("cache-control", "max-age=60"),
    );
    h.get("/g").await;
    let head = h.send(request(Method::HEAD, "/g", &[])).await;
    assert_eq!(
        (head.status, head.outcome),
        (StatusCode::OK, CacheOutcome::Hit)
    );
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some("7"));
    assert_eq!(h.origin.count("/g"), 1);
}

#[tokio::test]
async fn range_requests_bypass_the_cache() {
    let h = Harness::new().await;
    h.origin.set(
        "/r",
        Reply::ok("0123456789").header("cache-control", "max-age=60"),
    );
    let ranged = h.get_with("/r", &[("range", "bytes=0-3")]).await;
    assert_eq!(ranged.outcome, CacheOutcome::Bypass);
    assert_eq!(ranged.cache_status(), "edge-node; fwd=bypass");
    assert_eq!(h.origin.last("/r").headers["range"], "bytes=0-3");
    assert_eq!(h.cache.usage().entries, 0);
    h.get("/r").await;
    assert_eq!(h.origin.count("/r"), 2);
}

#[tokio::test]
async fn a_route_with_caching_off_and_a_request_without_a_usable_host_pass_by() {
    let mut h = Harness::new().await;
    h.origin
        .set("/x", Reply::ok("x").header("cache-control", "max-age=60"));
    let bad_host = Request::builder()
        .uri("/x")
        .header("host", "bad host!")
        .body(whole(Bytes::new()))
        .expect("request");
    let got = h.send(bad_host).await;
    assert_eq!(
        (got.outcome, got.cache_status()),
        (CacheOutcome::Bypass, "edge-node; fwd=bypass")
    );

    h.route.enabled = false;
    h.get("/x").await;
    let got = h.get("/x").await;
    assert_eq!(got.outcome, CacheOutcome::Bypass);
    assert_eq!(h.origin.count("/x"), 3);
    assert_eq!(h.cache.usage().entries, 0);
}

#[tokio::test]
async fn purge_removes_one_target_or_everything_under_a_prefix() {
    let h = with_disk(1 << 20, 1 << 20).await;
    for path in ["/img/a", "/img/b", "/css/c"] {
        h.origin
            .set(path, Reply::ok(path).header("cache-control", "max-age=600"));
        h.get(path).await;
    }
    let prefix = Purge::Prefix {
        host: Some("EXAMPLE.com:80".into()),
        path_prefix: "/img/".into(),
    };
    assert_eq!(h.cache.purge(&prefix), 2);
    assert_eq!(files_in(&h.cache_dir()).len(), 1);
    let key = Purge::Key {
        host: "example.com".into(),
        path_and_query: "/css/c".into(),
    };
    assert_eq!(h.cache.purge(&key), 1);
    assert_eq!(h.cache.purge(&key), 0);
    assert_eq!(h.cache.usage(), Default::default());
    assert!(files_in(&h.cache_dir()).is_empty());
    h.get("/img/a").await;
    assert_eq!(h.origin.count("/img/a"), 2);
}

#[tokio::test]
async fn an_upstream_cache_status_is_kept_before_ours() {
    let h = Harness::new().await;
    h.origin.set(
        "/u",
        Reply::ok("x")
            .header("cache-control", "max-age=60")
            .header("cache-status", "Upstream; hit; ttl=30"),
    );
    let miss = h.get("/u").await;
    assert_eq!(
        miss.cache_status(),
        "Upstream; hit; ttl=30, edge-node; fwd=uri-miss; ttl=60; stored"
    );
    let hit = h.get("/u").await;
    assert_eq!(
        hit.cache_status(),
        "Upstream; hit; ttl=30, edge-node; hit; ttl=60"
    );
}

#[tokio::test]
async fn a_304_for_other_validators_is_not_handed_to_a_client_that_asked_for_none() {
    let h = Harness::new().await;
    h.origin.set(
        "/odd",
        Reply::ok("v1")
            .header("cache-control", "max-age=10")
            .header("etag", "\"v1\""),
    );
    h.get("/odd").await;
    // The origin now says 304 to the stored validator, but names another one.
    h.origin.set(
        "/odd",
        Reply::ok("v2")
            .header("cache-control", "max-age=10")
            .header("etag", "\"v1\"")
            .not_modified(&[("etag", "\"v2\"")]),
    );
    h.advance(20);
    let got = h.get("/odd").await;
    assert_eq!((got.status, &got.body[..]), (StatusCode::OK, &b"v2"[..]));
    assert!(!h.origin.last("/odd").headers.contains_key("if-none-match"));
    assert_eq!(h.origin.count("/odd"), 3);
}
