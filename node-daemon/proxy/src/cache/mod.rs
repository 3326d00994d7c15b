//! The HTTP cache, as a layer in front of an origin: a shared cache by RFC 9111, in memory
//! and on disk.
//!
//! [`Cache::serve`] answers one request. GET and HEAD go through the policy
//! (`node_core::proxy::cache`, over `http-cache-semantics`): a fresh stored response answers
//! without the origin (a HEAD from a stored GET, without its body); a stale one is
//! revalidated (its headers updated from a `304`) or, when the policy and the route allow,
//! served stale. Other methods go straight to the origin, and their success invalidates what
//! they changed. Every answer carries `Cache-Status` (RFC 9211, `node_core::proxy::
//! cache_status`), and every answer from the cache its `Age`.
//!
//! - **Range requests and `206` answers pass by** (`fwd=bypass`): the cache keeps whole
//!   representations only, and the origin answers ranges better than a cache that would have
//!   to fetch the whole first.
//! - **Concurrent misses for one key collapse** into one trip to the origin ([`flight`]);
//!   the others wait and then look again. If what came back was not stored, each goes to the
//!   origin itself. A leader whose client went away (its future dropped) releases the
//!   waiters as it is dropped.
//! - **Bodies are read up to `max_object_bytes`**, never further: a larger one goes to the
//!   client as it comes (what was read, then the rest) and is not stored.
//! - **`stale-while-revalidate`** answers at once and revalidates in a task of its own,
//!   which is why [`Cache::serve`] takes the origin as an `Arc`.
//! - **A client's own conditional request** (`If-None-Match`, `If-Modified-Since`) that a
//!   stored response answers gets that response whole: the cache does not make `304`s of
//!   its own. On a miss the condition goes to the origin, whose `304` passes through.
//! - **When the origin fails** and nothing may be served stale: 502 when it is unreachable
//!   (or failed otherwise), 504 when it timed out, with a short text body. `only-if-cached`
//!   with nothing usable stored: 504.
//!
//! The tiers, their bounds and how they share the work are in [`store`]; the files in
//! [`disk`].
//!
//! **Never** here: a decision the core makes (what is stored, fresh, or may be stale), a
//! body read without a bound, or a metric label from a peer's text ([`CacheOutcome`] is the
//! label).

mod body;
mod clock;
mod disk;
mod entry;
mod flight;
mod origin;
mod store;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, request, response};
use http_cache_semantics::BeforeRequest;
use node_core::proxy::cache::{
    self as policy, CacheKey, DEFAULT_STALE_IF_OFFLINE, OriginFailure, Revalidation, Situation,
    StaleGrant,
};
use node_core::proxy::cache_status::{CacheName, CacheNameError, CacheStatus, Fwd};

pub use clock::Clock;
pub use origin::{Origin, OriginError};
pub use store::Usage;

use crate::Body;
use body::Limited;
use entry::Entry;
use flight::{Flight, Flights, Role};
use store::{Candidate, Store};

/// How the cache is set up.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// The cache's name in `Cache-Status` (the node's name): an RFC 9110 token.
    pub name: String,
    /// The memory tier's bound: bodies, heads and keys of what it holds.
    pub memory_bytes: u64,
    /// The disk tier, if any.
    pub disk: Option<DiskConfig>,
    /// The largest body stored; larger ones stream through.
    pub max_object_bytes: u64,
    /// Where `now` comes from.
    pub clock: Clock,
}

/// The disk tier.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// The cache's own directory: made 0700; files in it that are not the cache's are
    /// removed.
    pub dir: PathBuf,
    /// The bound on its files' bytes.
    pub max_bytes: u64,
}

/// What a route says about caching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCache {
    /// Whether the route's answers go through the cache at all.
    pub enabled: bool,
    /// How long a stale response may stand in for an origin that is down (see
    /// `node_core::proxy::cache`); `None` turns that off for the route.
    pub stale_if_offline: Option<Duration>,
}

impl Default for RouteCache {
    fn default() -> Self {
        Self {
            enabled: true,
            stale_if_offline: Some(DEFAULT_STALE_IF_OFFLINE),
        }
    }
}

/// How a request was answered, for a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheOutcome {
    /// From a fresh stored response.
    Hit,
    /// From the origin, for a request the cache could have answered had it held a fresh
    /// response (also a request that waited for another's trip to the origin).
    Miss,
    /// From a stale stored response (while revalidating, on an error, while the origin is
    /// down, or within the request's `max-stale`).
    Stale,
    /// From a stored response the origin confirmed with a `304`.
    Revalidated,
    /// Past the cache: caching is off for the route, a range request, no usable key.
    Bypass,
    /// From the origin, and not storable: another method, or an answer the policy or its
    /// size keeps out.
    Uncacheable,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Stale => "stale",
            CacheOutcome::Revalidated => "revalidated",
            CacheOutcome::Bypass => "bypass",
            CacheOutcome::Uncacheable => "uncacheable",
        }
    }
}

/// What to remove from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    /// Every variant stored for one target. The host is normalised as a request's is.
    Key {
        host: String,
        path_and_query: String,
    },
    /// Every target whose path and query start with `path_prefix` (a plain string prefix),
    /// on `host` or on any host.
    Prefix {
        host: Option<String>,
        path_prefix: String,
    },
}

/// Why the cache could not open.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The configured name cannot go in `Cache-Status`.
    #[error("the cache name: {0}")]
    Name(#[from] CacheNameError),
    /// The disk directory could not be made, tightened or read.
    #[error("the cache directory {}: {source}", dir.display())]
    Disk {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The cache. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: CacheName,
    store: Store,
    flights: Flights,
    clock: Clock,
    max_object_bytes: u64,
}

/// An answer and how it came about.
struct Answer {
    response: Response<Body>,
    status: CacheStatus,
    outcome: CacheOutcome,
}

/// What a lookup found for a request.
enum Found {
    /// A stored response that answers it now, with the head to answer with.
    Fresh(Arc<Entry>, response::Parts),
    /// A stored response for it that must be revalidated first, with the request to do it.
    Stale(Arc<Entry>, request::Parts),
    /// Responses for the target, none for this request's variant.
    VaryMiss,
    /// Nothing for the target.
    UriMiss,
}

/// One trip to the origin for a cacheable request.
struct Forward<'a> {
    key: CacheKey,
    /// What goes to the origin: the client's request, or its revalidation.
    request: Request<Body>,
    /// The client's request headers, for the policy.
    client: HeaderMap,
    /// The stored response being revalidated.
    stale: Option<Arc<Entry>>,
    fwd: Fwd,
    flight: Option<Flight>,
    route: &'a RouteCache,
    origin: &'a dyn Origin,
    head_only: bool,
}

impl Cache {
    /// Opens the cache: checks the name, and with a disk tier makes its directory and scans
    /// it, so that what an earlier run stored is served again. Blocking (the scan).
    pub fn open(config: CacheConfig) -> Result<Cache, CacheError> {
        let name = CacheName::new(&config.name)?;
        let disk = config.disk.as_ref().map(|d| (d.dir.as_path(), d.max_bytes));
        let store =
            Store::open(config.memory_bytes, disk, config.max_object_bytes).map_err(|source| {
                CacheError::Disk {
                    dir: config.disk.map(|d| d.dir).unwrap_or_default(),
                    source,
                }
            })?;
        Ok(Cache {
            inner: Arc::new(Inner {
                name,
                store,
                flights: Flights::default(),
                clock: config.clock,
                max_object_bytes: config.max_object_bytes,
            }),
        })
    }

    /// Answers `req` from the cache or through `origin`, as the module docs say; the
    /// answer carries `Cache-Status`. Cancel-safe: dropping the future leaves nothing
    /// waiting on it.
    pub async fn serve(
        &self,
        req: Request<Body>,
        route: &RouteCache,
        origin: &Arc<dyn Origin>,
    ) -> (Response<Body>, CacheOutcome) {
        let Answer {
            mut response,
            status,
            outcome,
        } = self.answer(req, route, origin).await;
        status.add_to(&self.inner.name, response.headers_mut());
        (response, outcome)
    }

    /// The answer to a plain request (see `node_core::proxy::cache::QuickHit`) that a fresh
    /// response in memory answers, worked out without the policy, with `via` as its last
    /// `Via` (the proxy's own, which it adds to every other answer on its way out); `None`
    /// for any other request, which [`serve`](Self::serve) answers. Only the request's head
    /// is read.
    pub fn quick_hit<B>(
        &self,
        req: &Request<B>,
        route: &RouteCache,
        via: &HeaderValue,
    ) -> Option<Response<Body>> {
        let head_only = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => return None,
        };
        if !route.enabled || req.headers().contains_key(header::RANGE) {
            return None;
        }
        let key = CacheKey::from_request(req.uri(), req.headers()).ok()?;
        let entry = self.inner.store.only_in_memory(&key)?;
        let now = self.inner.clock.now();
        let quick = entry.quick(now)?;
        let answer = quick.answer(req.headers(), now)?;
        self.inner.store.touch(&entry.id());
        let body = if head_only {
            body::empty()
        } else {
            body::full(entry.body.clone())
        };
        let mut response = Response::new(body);
        *response.status_mut() = quick.status();
        *response.headers_mut() = entry.quick_head(answer.age_secs, || {
            let mut headers = HeaderMap::with_capacity(quick.headers().len() + 3);
            for (name, value) in quick.headers() {
                headers.append(name, value.clone());
            }
            headers.insert(header::AGE, HeaderValue::from(answer.age_secs));
            CacheStatus::hit(answer.ttl_secs).add_to(&self.inner.name, &mut headers);
            headers.append(header::VIA, via.clone());
            headers
        });
        Some(response)
    }

    /// Removes what `target` names; returns how many stored responses went. Blocking: the
    /// files are gone when it returns.
    pub fn purge(&self, target: &Purge) -> usize {
        match target {
            Purge::Key {
                host,
                path_and_query,
            } => CacheKey::new(host, path_and_query)
                .map_or(0, |key| self.inner.store.remove_key(&key)),
            Purge::Prefix { host, path_prefix } => {
                self.inner.store.remove_prefix(host.as_deref(), path_prefix)
            }
        }
    }

    /// How much the cache holds.
    pub fn usage(&self) -> Usage {
        self.inner.store.usage()
    }

    async fn answer(
        &self,
        req: Request<Body>,
        route: &RouteCache,
        origin: &Arc<dyn Origin>,
    ) -> Answer {
        if !route.enabled {
            return pass(req, &**origin, Fwd::Bypass, CacheOutcome::Bypass).await;
        }
        let Ok(key) = CacheKey::from_request(req.uri(), req.headers()) else {
            return pass(req, &**origin, Fwd::Bypass, CacheOutcome::Bypass).await;
        };
        if !policy::is_cacheable_method(req.method()) {
            return self.unsafe_method(key, req, &**origin).await;
        }
        if req.headers().contains_key(header::RANGE) {
            return pass(req, &**origin, Fwd::Bypass, CacheOutcome::Bypass).await;
        }
        self.cacheable(key, req, route, origin).await
    }

    /// Any method but GET and HEAD: to the origin, then invalidate what it changed.
    async fn unsafe_method(
        &self,
        key: CacheKey,
        req: Request<Body>,
        origin: &dyn Origin,
    ) -> Answer {
        let method = req.method().clone();
        let response = match origin.fetch(req).await {
            Ok(response) => response,
            Err(error) => return failed(&error, Fwd::Method, CacheOutcome::Uncacheable),
        };
        let stale = policy::invalidations(&method, &key, response.status(), response.headers());
        if !stale.is_empty() {
            let inner = Arc::clone(&self.inner);
            let _ = tokio::task::spawn_blocking(move || {
                for key in &stale {
                    inner.store.remove_key(key);
                }
            })
            .await;
        }
        Answer {
            response,
            status: CacheStatus::forwarded(Fwd::Method),
            outcome: CacheOutcome::Uncacheable,
        }
    }

    async fn cacheable(
        &self,
        key: CacheKey,
        req: Request<Body>,
        route: &RouteCache,
        origin: &Arc<dyn Origin>,
    ) -> Answer {
        let (parts, body) = req.into_parts();
        let head_only = parts.method == Method::HEAD;
        // A HEAD is answered from a stored GET: look up as a GET.
        let lookup = policy::lookup_request(&key, Method::GET, &parts.headers);
        let mut waited: Option<Fwd> = None;
        loop {
            let now = self.inner.clock.now();
            let (stale, fwd) = match self.find(&key, &lookup, now).await {
                Found::Fresh(entry, head) => return self.hit(&entry, head, now, head_only, waited),
                Found::Stale(entry, revalidation) => {
                    let fwd = if entry.policy.is_stale(now) {
                        Fwd::Stale
                    } else {
                        Fwd::Request
                    };
                    (Some((entry, revalidation)), fwd)
                }
                Found::VaryMiss => (None, Fwd::VaryMiss),
                Found::UriMiss => (None, Fwd::UriMiss),
            };
            if policy::only_if_cached(&parts.headers) {
                return not_cached();
            }
            if let Some((entry, _)) = &stale
                && fwd == Fwd::Stale
                && policy::stale_grant(
                    &entry.rules,
                    policy::staleness(&entry.policy, entry.lifetime, now),
                    &parts.headers,
                    Situation::BeforeRevalidation,
                    route.stale_if_offline,
                ) == Some(StaleGrant::WhileRevalidate)
            {
                let entry = Arc::clone(entry);
                if let Some((_, revalidation)) = stale {
                    self.revalidate_behind(&key, &parts, &entry, revalidation, route, origin);
                }
                self.inner.store.touch(&entry.id());
                return stale_answer(&entry, now, head_only, StaleGrant::WhileRevalidate);
            }
            // A HEAD's own answer is not stored, so it leads only a revalidation (a GET).
            let may_lead = !head_only || stale.is_some();
            let flight = if waited.is_some() {
                None
            } else {
                match self.inner.flights.join(&key, may_lead) {
                    Role::Wait(wait) => {
                        wait.done().await;
                        waited = Some(fwd);
                        continue;
                    }
                    Role::Lead(flight) => Some(flight),
                    Role::Alone => None,
                }
            };
            let client = parts.headers.clone();
            let (stale, request) = match stale {
                Some((entry, revalidation)) => {
                    (Some(entry), revalidation_request(parts, revalidation, body))
                }
                None => (None, Request::from_parts(parts, body)),
            };
            return self
                .forward(Forward {
                    key,
                    request,
                    client,
                    stale,
                    fwd,
                    flight,
                    route,
                    origin: &**origin,
                    head_only,
                })
                .await;
        }
    }

    /// The stored responses for `key` that the policy lets answer `lookup` now, or the one to
    /// revalidate.
    async fn find(&self, key: &CacheKey, lookup: &request::Parts, now: SystemTime) -> Found {
        let candidates = self.inner.store.candidates(key);
        let mut any = false;
        let mut stale = None;
        for candidate in candidates {
            let entry = match candidate {
                Candidate::Memory(entry) => entry,
                Candidate::Disk(id, generation) => {
                    let inner = Arc::clone(&self.inner);
                    let load = move || inner.store.load(&id, generation);
                    match tokio::task::spawn_blocking(load).await {
                        Ok(Some(entry)) => entry,
                        _ => continue,
                    }
                }
            };
            any = true;
            match entry.policy.before_request(lookup, now) {
                BeforeRequest::Fresh(head) => {
                    if !entry.policy.is_stale(now) || entry.rules.allows_max_stale() {
                        return Found::Fresh(entry, head);
                    }
                    // Stale by the request's max-stale, which this response does not allow.
                    let mut strict = policy::lookup_request(key, Method::GET, &HeaderMap::new());
                    strict.headers = policy::without_max_stale(&lookup.headers);
                    if stale.is_none()
                        && let BeforeRequest::Stale {
                            request,
                            matches: true,
                        } = entry.policy.before_request(&strict, now)
                    {
                        stale = Some((entry, request));
                    }
                }
                BeforeRequest::Stale {
                    request,
                    matches: true,
                } => {
                    if stale.is_none() {
                        stale = Some((entry, request));
                    }
                }
                BeforeRequest::Stale { .. } => {}
            }
        }
        match stale {
            Some((entry, request)) => Found::Stale(entry, request),
            None if any => Found::VaryMiss,
            None => Found::UriMiss,
        }
    }

    fn hit(
        &self,
        entry: &Arc<Entry>,
        head: response::Parts,
        now: SystemTime,
        head_only: bool,
        waited: Option<Fwd>,
    ) -> Answer {
        self.inner.store.touch(&entry.id());
        let ttl = policy::ttl_secs(&entry.policy, entry.lifetime, now);
        let body = if head_only {
            body::empty()
        } else {
            body::full(entry.body.clone())
        };
        // Fresh for this request, stale by the clock: the client's max-stale allowed it.
        let outcome = if entry.policy.is_stale(now) {
            CacheOutcome::Stale
        } else {
            CacheOutcome::Hit
        };
        let (status, outcome) = match waited {
            None => (CacheStatus::hit(ttl), outcome),
            Some(fwd) => (
                CacheStatus {
                    fwd: Some(fwd),
                    ttl: Some(ttl),
                    collapsed: true,
                    ..CacheStatus::default()
                },
                CacheOutcome::Miss,
            ),
        };
        Answer {
            response: Response::from_parts(head, body),
            status,
            outcome,
        }
    }

    /// Revalidates `entry` in a task of its own (`stale-while-revalidate`), unless a trip to
    /// the origin for `key` is on its way already.
    fn revalidate_behind(
        &self,
        key: &CacheKey,
        parts: &request::Parts,
        entry: &Arc<Entry>,
        revalidation: request::Parts,
        route: &RouteCache,
        origin: &Arc<dyn Origin>,
    ) {
        let Role::Lead(flight) = self.inner.flights.join(key, true) else {
            return;
        };
        let mut request = Request::new(body::empty());
        *request.method_mut() = revalidation.method;
        *request.uri_mut() = parts.uri.clone();
        *request.version_mut() = parts.version;
        *request.headers_mut() = revalidation.headers;
        let (cache, key, client, entry) = (
            self.clone(),
            key.clone(),
            parts.headers.clone(),
            Arc::clone(entry),
        );
        let (route, origin) = (route.clone(), Arc::clone(origin));
        tokio::spawn(async move {
            let answer = cache
                .forward(Forward {
                    key,
                    request,
                    client,
                    stale: Some(entry),
                    fwd: Fwd::Stale,
                    flight: Some(flight),
                    route: &route,
                    origin: &*origin,
                    head_only: false,
                })
                .await;
            tracing::debug!(status = %answer.response.status(), "revalidated behind a stale answer");
        });
    }

    /// Sends the request to the origin and makes the answer: from the origin's response
    /// (stored if it may be), from the stored response it confirmed, or stale when it
    /// failed and that is allowed.
    async fn forward(&self, f: Forward<'_>) -> Answer {
        let Forward {
            key,
            request,
            client,
            stale,
            fwd,
            flight,
            route,
            origin,
            head_only,
        } = f;
        let method_sent = request.method().clone();
        let (uri, version) = (request.uri().clone(), request.version());
        let result = origin.fetch(request).await;
        let now = self.inner.clock.now();
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                return self.origin_failed(
                    &error,
                    stale.as_deref(),
                    &client,
                    fwd,
                    flight,
                    route,
                    head_only,
                    now,
                );
            }
        };
        if let Some(entry) = &stale {
            if response.status() == StatusCode::NOT_MODIFIED {
                match self
                    .not_modified(&key, entry, &client, response, now, fwd, flight, head_only)
                    .await
                {
                    Ok(answer) => return answer,
                    Err((unrelated, flight)) => {
                        if asks_conditionally(&client) {
                            // The answer to the client's own condition.
                            drop(flight);
                            return Answer {
                                response: unrelated,
                                status: CacheStatus::forwarded(fwd),
                                outcome: CacheOutcome::Miss,
                            };
                        }
                        // A 304 for validators the stored response does not have: ask again
                        // without any, rather than hand a 304 to a client that asked for none.
                        let mut again = Request::new(body::empty());
                        *again.uri_mut() = uri;
                        *again.version_mut() = version;
                        *again.headers_mut() = client.clone();
                        match origin.fetch(again).await {
                            Ok(fresh) => {
                                let now = self.inner.clock.now();
                                let replaces = Some(entry.id());
                                return self
                                    .fill(
                                        key,
                                        &Method::GET,
                                        &client,
                                        fresh,
                                        now,
                                        fwd,
                                        flight,
                                        replaces,
                                        head_only,
                                    )
                                    .await;
                            }
                            Err(error) => {
                                return self.origin_failed(
                                    &error,
                                    Some(entry),
                                    &client,
                                    fwd,
                                    flight,
                                    route,
                                    head_only,
                                    now,
                                );
                            }
                        }
                    }
                }
            }
            if let Some(failure) = OriginFailure::of_status(response.status())
                && let Some(answer) =
                    stale_on_failure(entry, now, &client, failure, route, head_only)
            {
                drop(flight);
                return answer;
            }
        }
        let replaces = stale.as_ref().map(|e| e.id());
        self.fill(
            key,
            &method_sent,
            &client,
            response,
            now,
            fwd,
            flight,
            replaces,
            head_only,
        )
        .await
    }

    /// The origin gave no answer: the stored response if it may be served stale, else 502
    /// or 504.
    #[allow(clippy::too_many_arguments)]
    fn origin_failed(
        &self,
        error: &OriginError,
        stale: Option<&Entry>,
        client: &HeaderMap,
        fwd: Fwd,
        flight: Option<Flight>,
        route: &RouteCache,
        head_only: bool,
        now: SystemTime,
    ) -> Answer {
        drop(flight);
        let failure = match error {
            OriginError::Timeout => OriginFailure::Timeout,
            OriginError::Unreachable | OriginError::Other(_) => OriginFailure::Unreachable,
        };
        if let Some(entry) = stale
            && let Some(answer) = stale_on_failure(entry, now, client, failure, route, head_only)
        {
            return answer;
        }
        failed(error, fwd, CacheOutcome::Miss)
    }

    /// The origin answered a revalidation with `304`.
    #[allow(clippy::too_many_arguments)]
    async fn not_modified(
        &self,
        key: &CacheKey,
        entry: &Arc<Entry>,
        client: &HeaderMap,
        response: Response<Body>,
        now: SystemTime,
        fwd: Fwd,
        flight: Option<Flight>,
        head_only: bool,
    ) -> Result<Answer, (Response<Body>, Option<Flight>)> {
        let refreshed = match policy::revalidated(
            &entry.policy,
            key,
            client,
            &entry.headers,
            response.status(),
            response.headers(),
            now,
        ) {
            Revalidation::NotModified(refreshed) => *refreshed,
            // Not about the stored response: the caller decides.
            Revalidation::Modified => return Err((response, flight)),
        };
        let updated = Arc::new(Entry {
            key: key.clone(),
            vary: entry.vary.clone(),
            policy: refreshed.policy,
            lifetime: refreshed.lifetime,
            rules: refreshed.rules,
            status: refreshed.head.status,
            headers: refreshed.head.headers,
            body: entry.body.clone(),
            memo: Default::default(),
        });
        self.store(Arc::clone(&updated)).await;
        drop(flight);
        let mut answer = from_entry(&updated, now, head_only);
        answer.status = CacheStatus {
            fwd: Some(fwd),
            fwd_status: Some(StatusCode::NOT_MODIFIED.as_u16()),
            ttl: Some(policy::ttl_secs(&updated.policy, updated.lifetime, now)),
            ..CacheStatus::default()
        };
        answer.outcome = CacheOutcome::Revalidated;
        Ok(answer)
    }

    /// A new response from the origin: stored if the policy admits it and its body fits,
    /// and passed on either way.
    #[allow(clippy::too_many_arguments)]
    async fn fill(
        &self,
        key: CacheKey,
        method_sent: &Method,
        client: &HeaderMap,
        response: Response<Body>,
        now: SystemTime,
        fwd: Fwd,
        flight: Option<Flight>,
        replaces: Option<entry::VariantId>,
        head_only: bool,
    ) -> Answer {
        let (head, body) = response.into_parts();
        let admitted = policy::admit(&key, method_sent, client, head.status, &head.headers, now);
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(why) => {
                drop(flight);
                tracing::debug!(why = why.as_str(), "answer not stored");
                // The resource changed into something not to be kept: so goes the old copy.
                if let Some(id) = replaces
                    && !head.status.is_server_error()
                {
                    self.inner.store.remove_variant(&id);
                }
                let body = if head_only { body::empty() } else { body };
                return Answer {
                    response: Response::from_parts(head, body),
                    status: CacheStatus::forwarded(fwd),
                    outcome: CacheOutcome::Uncacheable,
                };
            }
        };
        match body::read_limited(body, self.inner.max_object_bytes).await {
            Limited::Complete(bytes) => {
                let ttl = policy::ttl_secs(&admitted.policy, admitted.lifetime, now);
                let entry = Arc::new(Entry {
                    key,
                    vary: admitted.vary,
                    policy: admitted.policy,
                    lifetime: admitted.lifetime,
                    rules: admitted.rules,
                    status: head.status,
                    headers: admitted.headers,
                    body: bytes.clone(),
                    memo: Default::default(),
                });
                let stored = self.store(entry).await;
                drop(flight);
                let body = if head_only {
                    body::empty()
                } else {
                    body::full(bytes)
                };
                Answer {
                    response: Response::from_parts(head, body),
                    status: CacheStatus {
                        fwd: Some(fwd),
                        stored,
                        ttl: stored.then_some(ttl),
                        ..CacheStatus::default()
                    },
                    outcome: CacheOutcome::Miss,
                }
            }
            Limited::TooLong(body) => {
                drop(flight);
                Answer {
                    response: Response::from_parts(head, body),
                    status: CacheStatus::forwarded(fwd),
                    outcome: CacheOutcome::Uncacheable,
                }
            }
            Limited::Failed(body) => {
                drop(flight);
                Answer {
                    response: Response::from_parts(head, body),
                    status: CacheStatus::forwarded(fwd),
                    outcome: CacheOutcome::Miss,
                }
            }
        }
    }

    async fn store(&self, entry: Arc<Entry>) -> bool {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.store.insert(entry))
            .await
            .unwrap_or(false)
    }
}

/// The client's request turned into the policy's revalidation of it: its method and
/// headers (with the validators), the client's target and body.
fn revalidation_request(
    mut parts: request::Parts,
    revalidation: request::Parts,
    body: Body,
) -> Request<Body> {
    parts.method = revalidation.method;
    parts.headers = revalidation.headers;
    Request::from_parts(parts, body)
}

/// Whether the client's request carries a validator of its own.
fn asks_conditionally(client: &HeaderMap) -> bool {
    client.contains_key(header::IF_NONE_MATCH) || client.contains_key(header::IF_MODIFIED_SINCE)
}

/// Straight to the origin and back.
async fn pass(req: Request<Body>, origin: &dyn Origin, fwd: Fwd, outcome: CacheOutcome) -> Answer {
    match origin.fetch(req).await {
        Ok(response) => Answer {
            response,
            status: CacheStatus::forwarded(fwd),
            outcome,
        },
        Err(error) => failed(&error, fwd, outcome),
    }
}

/// A stored response as an answer: its head with `Age` as of `now`.
fn from_entry(entry: &Entry, now: SystemTime, head_only: bool) -> Answer {
    let mut response = Response::new(if head_only {
        body::empty()
    } else {
        body::full(entry.body.clone())
    });
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers.clone();
    response.headers_mut().insert(
        header::AGE,
        HeaderValue::from(entry.policy.age(now).as_secs()),
    );
    Answer {
        response,
        status: CacheStatus::default(),
        outcome: CacheOutcome::Hit,
    }
}

/// A stale stored response as an answer: `hit`, a negative `ttl`, and why.
fn stale_answer(entry: &Entry, now: SystemTime, head_only: bool, why: StaleGrant) -> Answer {
    let mut answer = from_entry(entry, now, head_only);
    answer.status = CacheStatus {
        detail: Some(why.detail()),
        ..CacheStatus::hit(policy::ttl_secs(&entry.policy, entry.lifetime, now))
    };
    answer.outcome = CacheOutcome::Stale;
    answer
}

/// `entry` as the answer to a request whose origin failed, if it may be served stale.
fn stale_on_failure(
    entry: &Entry,
    now: SystemTime,
    client: &HeaderMap,
    failure: OriginFailure,
    route: &RouteCache,
    head_only: bool,
) -> Option<Answer> {
    let staleness = policy::staleness(&entry.policy, entry.lifetime, now);
    let grant = policy::stale_grant(
        &entry.rules,
        staleness,
        client,
        Situation::OriginFailed(failure),
        route.stale_if_offline,
    )?;
    Some(stale_answer(entry, now, head_only, grant))
}

/// The answer when the origin gave none: 504 for a timeout, 502 otherwise.
fn failed(error: &OriginError, fwd: Fwd, outcome: CacheOutcome) -> Answer {
    let (status, text, detail) = match error {
        OriginError::Timeout => (
            StatusCode::GATEWAY_TIMEOUT,
            "origin timed out\n",
            "origin-timeout",
        ),
        OriginError::Unreachable => (
            StatusCode::BAD_GATEWAY,
            "origin unreachable\n",
            "origin-unreachable",
        ),
        OriginError::Other(reason) => {
            tracing::debug!(%reason, "origin failed");
            (StatusCode::BAD_GATEWAY, "origin failed\n", "origin-failed")
        }
    };
    Answer {
        response: text_response(status, text),
        status: CacheStatus {
            detail: Some(detail),
            ..CacheStatus::forwarded(fwd)
        },
        outcome,
    }
}

/// `only-if-cached` and nothing stored that may answer: 504 (RFC 9111 section 5.2.1.7).
fn not_cached() -> Answer {
    Answer {
        response: text_response(StatusCode::GATEWAY_TIMEOUT, "not in the cache\n"),
        status: CacheStatus {
            detail: Some("only-if-cached"),
            ..CacheStatus::default()
        },
        outcome: CacheOutcome::Miss,
    }
}

fn text_response(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(body::full(bytes::Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
