//! What the node's HTTP cache may store and serve, as a shared cache (RFC 9111).
//!
//! Freshness, storability, `Vary` matching, `Age` and revalidation are
//! [`http_cache_semantics`]'s: this module builds its [`CachePolicy`] with [`policy_options`]
//! (a shared cache) and the time the caller passes, and adds what that crate leaves to its
//! user:
//!
//! - [`CacheKey`]: what one stored resource is called. The host is normalised (lower case,
//!   port 80 dropped, any other port kept); the path and query are kept exactly as received,
//!   since `/a?x=1&y=2` and `/a?y=2&x=1` may be different resources to the origin.
//! - [`admit`]: whether a response may be stored, with the extra refusals of a cache that
//!   answers many users ([`NotStored`]): partial content and range requests (the cache keeps
//!   whole representations only), `Set-Cookie` (another user's session), `Vary: *`.
//!   What is kept of the request is only what matching needs (the host and the headers the
//!   response varies on), so credentials and cookies never reach the disk store.
//! - [`revalidated`]: a stored response brought up to date by a `304 Not Modified`.
//! - [`invalidations`]: what an unsafe method's success makes stale (RFC 9111 section 4.4).
//! - [`stale_grant`]: whether a stale response may answer now, and why.
//!
//! ## Serving stale responses
//! A stale response may answer in three cases:
//! 1. `stale-while-revalidate=N` on the stored response (RFC 5861 section 3, a response
//!    directive only), within `N` seconds of becoming stale, before the origin is asked; the
//!    caller revalidates behind it. Not when the request says `no-cache`: that client asked
//!    for an answer the origin has confirmed.
//! 2. `stale-if-error=N` (RFC 5861 section 4), on the stored response or on the request,
//!    within `N` seconds of becoming stale, when the origin failed: unreachable, timed out,
//!    or answered 500, 502, 503 or 504.
//! 3. Our own rule, for a node whose uplink comes and goes: on the same failures, within the
//!    route's `stale_if_offline` (default [`DEFAULT_STALE_IF_OFFLINE`]; `None` turns it off).
//!
//! None of them applies to a response that said `must-revalidate`, `proxy-revalidate` or
//! `no-cache` (or `Pragma: no-cache` without `Cache-Control`): RFC 9111 section 4.2.4 says a
//! cache must not serve stale what an explicit directive forbids, and 5.2.2.2 that such a
//! response, when the origin cannot be reached, gets a 504 instead. An application that asks
//! for that is told its data must not outlive a check, and an edge node that is offline is no
//! reason to break that promise. `s-maxage` carries `proxy-revalidate`'s meaning for a shared
//! cache (RFC 9111 section 5.2.2.10), so a response with `s-maxage` is not served stale by
//! the offline rule, by the request's `stale-if-error`, nor by its `max-stale`; its own
//! `stale-while-revalidate` and `stale-if-error` still apply, since the origin that sent both
//! directives asked for exactly that.
//!
//! **Never** here: a clock read, a file or a socket. Every time is a `now` argument.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, request, response};
use http_cache_semantics::{AfterResponse, CacheOptions, CachePolicy};
use serde::{Deserialize, Serialize};

/// How long a stale response may stand in for an origin that cannot be reached, unless the
/// route says otherwise.
pub const DEFAULT_STALE_IF_OFFLINE: Duration = Duration::from_secs(24 * 3600);

/// The longest host a [`CacheKey`] takes (a DNS name is at most 253 bytes; with a port).
pub const MAX_HOST_LEN: usize = 260;

/// The longest path and query a [`CacheKey`] takes. Longer targets are not cached: keys live
/// in memory and in every disk file, and so long a target is rarely a resource worth keeping.
pub const MAX_PATH_AND_QUERY_LEN: usize = 8 * 1024;

/// The largest delta-seconds value read from a directive: RFC 9111 section 1.2.2 caps them at
/// 2^31, and it keeps additions to a `SystemTime` far from overflowing.
const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// The policy options of the node's cache: a shared cache (`private` is not stored,
/// `s-maxage` counts), 10% of the time since `Last-Modified` as the heuristic lifetime,
/// a day for `immutable` responses without a lifetime.
pub fn policy_options() -> CacheOptions {
    CacheOptions {
        shared: true,
        cache_heuristic: 0.1,
        immutable_min_time_to_live: Duration::from_secs(24 * 3600),
        ignore_cargo_cult: false,
    }
}

/// Whether answers to `method` may come from the cache: GET, and HEAD (answered from a
/// stored GET, without the body).
pub fn is_cacheable_method(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// RFC 9110 section 9.2.1: GET, HEAD, OPTIONS and TRACE. Every other method, known or not,
/// counts as unsafe for invalidation.
pub fn is_safe_method(method: &Method) -> bool {
    method == Method::GET
        || method == Method::HEAD
        || method == Method::OPTIONS
        || method == Method::TRACE
}

/// Why a request has no [`CacheKey`]; such a request passes the cache by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Neither the target URI nor a `Host` header names a host.
    #[error("the request names no host")]
    NoHost,
    /// The host is not `name[:port]` or `[ipv6][:port]`, or is too long.
    #[error("the host is not a valid host[:port]")]
    BadHost,
    /// The target is not an absolute path (with an optional query).
    #[error("the target is not an absolute path")]
    BadTarget,
    /// The path and query are longer than [`MAX_PATH_AND_QUERY_LEN`].
    #[error("the target is longer than {MAX_PATH_AND_QUERY_LEN} bytes")]
    TooLong,
}

/// What one stored resource is called: the normalised host and the path and query as
/// received. All variants of a resource (its `Vary`) share one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawKey", into = "RawKey")]
pub struct CacheKey {
    host: String,
    path_and_query: PathAndQuery,
}

/// A [`CacheKey`] as written: read back through [`CacheKey::new`], so that a key from a file
/// is checked like one from a request.
#[derive(Serialize, Deserialize)]
struct RawKey {
    host: String,
    path_and_query: String,
}

impl TryFrom<RawKey> for CacheKey {
    type Error = KeyError;
    fn try_from(raw: RawKey) -> Result<Self, KeyError> {
        CacheKey::new(&raw.host, &raw.path_and_query)
    }
}

impl From<CacheKey> for RawKey {
    fn from(key: CacheKey) -> Self {
        RawKey {
            host: key.host,
            path_and_query: key.path_and_query.as_str().to_owned(),
        }
    }
}

impl CacheKey {
    /// The key of `host` (normalised) and `path_and_query` (kept as given; it must start
    /// with `/`).
    pub fn new(host: &str, path_and_query: &str) -> Result<Self, KeyError> {
        let host = normalise_host(host)?;
        check_target(path_and_query)?;
        let path_and_query =
            PathAndQuery::try_from(path_and_query).map_err(|_| KeyError::BadTarget)?;
        Ok(Self {
            host,
            path_and_query,
        })
    }

    /// The key of a request: the host from an absolute-form target, else from the one `Host`
    /// header (RFC 9112 section 3.2.2), and the target's path and query.
    pub fn from_request(uri: &Uri, headers: &HeaderMap) -> Result<Self, KeyError> {
        let host = match uri.authority() {
            Some(authority) => authority.as_str(),
            None => {
                let mut hosts = headers.get_all(header::HOST).iter();
                let (Some(host), None) = (hosts.next(), hosts.next()) else {
                    return Err(KeyError::NoHost);
                };
                host.to_str().map_err(|_| KeyError::BadHost)?
            }
        };
        if uri.authority().is_some() && host.contains('@') {
            // Credentials in the target are not part of what is named.
            return Err(KeyError::BadHost);
        }
        match uri.path_and_query() {
            // Parsed already: checked as a key's, and shared rather than parsed again.
            Some(parsed) if !parsed.as_str().is_empty() => {
                check_target(parsed.as_str())?;
                Ok(Self {
                    host: normalise_host(host)?,
                    path_and_query: parsed.clone(),
                })
            }
            _ => Self::new(host, "/"),
        }
    }

    /// The normalised host: lower case, with its port unless that is 80.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The path and query, as received.
    pub fn path_and_query(&self) -> &str {
        self.path_and_query.as_str()
    }

    /// Whether this key is under `path_prefix` (a plain string prefix of the path and
    /// query) and, when `host` is given, on that host (compared normalised; a host that does
    /// not normalise matches nothing).
    pub fn is_under(&self, host: Option<&str>, path_prefix: &str) -> bool {
        let host_matches = match host {
            None => true,
            Some(host) => normalise_host(host).is_ok_and(|h| h == self.host),
        };
        host_matches && self.path_and_query().starts_with(path_prefix)
    }

    /// The target as the policy sees it: origin-form, the host goes in the `Host` header.
    fn uri(&self) -> Uri {
        Uri::from(self.path_and_query.clone())
    }
}

/// The length of a target up to a fragment, which `PathAndQuery` would drop.
fn path_and_query_len(raw: &str) -> usize {
    raw.find('#').unwrap_or(raw.len())
}

/// `name[:port]` or `[ipv6][:port]`, lower-cased, port 80 dropped.
fn normalise_host(raw: &str) -> Result<String, KeyError> {
    if raw.is_empty() {
        return Err(KeyError::NoHost);
    }
    if raw.len() > MAX_HOST_LEN {
        return Err(KeyError::BadHost);
    }
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or(KeyError::BadHost)?;
        let ipv6 = |c: char| c.is_ascii_hexdigit() || c == ':' || c == '.';
        if inside.is_empty() || !inside.chars().all(ipv6) {
            return Err(KeyError::BadHost);
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(KeyError::BadHost)?),
        };
        let mut host = String::with_capacity(raw.len());
        host.push('[');
        host.push_str(inside);
        host.push(']');
        host.make_ascii_lowercase();
        (host, port)
    } else {
        let (name, port) = match raw.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (raw, None),
        };
        let reg_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~');
        if name.is_empty() || !name.chars().all(reg_name) {
            return Err(KeyError::BadHost);
        }
        let mut host = String::with_capacity(raw.len());
        host.push_str(name);
        host.make_ascii_lowercase();
        (host, port)
    };
    match port {
        None => Ok(host),
        Some(port) => {
            if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(KeyError::BadHost);
            }
            match port.parse::<u16>() {
                Ok(80) => Ok(host),
                Ok(0) | Err(_) => Err(KeyError::BadHost),
                Ok(port) => {
                    // Written again rather than copied: `:080` and `:80` are one port.
                    let mut host = host;
                    host.push(':');
                    host.push_str(itoa::Buffer::new().format(port));
                    Ok(host)
                }
            }
        }
    }
}

/// The request the policy judges a lookup by: `method` on the key's target, with the
/// request's headers and the key's host as `Host`, so that two spellings of one host find
/// the same entries. For a HEAD, pass GET: a HEAD is answered from a stored GET.
pub fn lookup_request(key: &CacheKey, method: Method, headers: &HeaderMap) -> request::Parts {
    let mut parts = bare_request(key, method);
    parts.headers = headers.clone();
    set_host(&mut parts.headers, key);
    parts
}

/// `headers` without the `max-stale` request directive: the request to judge a stored
/// response by when its [`StaleRules::allows_max_stale`] is false.
pub fn without_max_stale(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    let kept: Vec<String> = Directives::of(headers)
        .0
        .into_iter()
        .filter(|(name, _)| name != "max-stale")
        .map(|(name, value)| match value {
            Some(value) => format!("{name}={value}"),
            None => name,
        })
        .collect();
    out.remove(header::CACHE_CONTROL);
    if !kept.is_empty()
        && let Ok(value) = HeaderValue::from_str(&kept.join(", "))
    {
        out.insert(header::CACHE_CONTROL, value);
    }
    out
}

/// What is kept of a request with the response stored for it: the key's target and host and
/// the headers the response varies on. Nothing else (credentials, cookies) is kept, on disk
/// or in memory.
fn stored_request(key: &CacheKey, request: &HeaderMap, response: &HeaderMap) -> request::Parts {
    let mut parts = bare_request(key, Method::GET);
    for name in vary_names(response) {
        for value in request.get_all(&name) {
            parts.headers.append(name.clone(), value.clone());
        }
    }
    set_host(&mut parts.headers, key);
    parts
}

fn bare_request(key: &CacheKey, method: Method) -> request::Parts {
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = key.uri();
    request.into_parts().0
}

fn set_host(headers: &mut HeaderMap, key: &CacheKey) {
    match HeaderValue::from_str(key.host()) {
        Ok(host) => {
            headers.insert(header::HOST, host);
        }
        // A normalised host is visible ASCII; were it not, no lookup could match it.
        Err(_) => {
            headers.remove(header::HOST);
        }
    }
}

/// The header names a response varies on, lower case, sorted, once each. `*` is among them
/// when the response said so.
fn vary_names(response: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = response
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty() && *n != "*")
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

fn varies_on_everything(response: &HeaderMap) -> bool {
    response
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|n| n.trim() == "*")
}

/// Which variant of a resource a response is: the request's values of the headers the
/// response varies on, one `name: value` line each, bytes outside visible ASCII written
/// `%XX`. Responses of one key with the same signature replace each other.
pub fn vary_signature(request: &HeaderMap, response: &HeaderMap) -> String {
    let mut out = String::new();
    for name in vary_names(response) {
        out.push_str(name.as_str());
        out.push(':');
        for (i, value) in request.get_all(&name).iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            for &b in value.as_bytes() {
                if (0x21..0x7f).contains(&b) && b != b'%' {
                    out.push(char::from(b));
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
        }
        out.push('\n');
    }
    out
}

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// Only answers to GET are stored (a HEAD's answer has no body to serve a GET with).
    Method,
    /// A range request or a partial answer: the cache keeps whole representations only.
    Partial,
    /// The answer sets a cookie: it belongs to one user's session.
    SetCookie,
    /// `Vary: *`: no later request can ever match it.
    VariesOnEverything,
    /// RFC 9111 says no (`no-store`, `private`, `Authorization` without `public`/`s-maxage`/
    /// `must-revalidate`, a status not cacheable without explicit freshness, ...).
    Policy,
}

impl NotStored {
    /// A fixed label, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Method => "method",
            NotStored::Partial => "partial",
            NotStored::SetCookie => "set_cookie",
            NotStored::VariesOnEverything => "vary_star",
            NotStored::Policy => "policy",
        }
    }
}

/// A response the cache may store, with what serving it later needs.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The policy, built from what is kept of the request (see the module docs).
    pub policy: CachePolicy,
    /// How long the response is fresh for, counted like its age.
    pub lifetime: Duration,
    /// What the response says about serving it stale.
    pub rules: StaleRules,
    /// The variant this response is among its key's ([`vary_signature`]).
    pub vary: String,
    /// The response's headers as kept: without hop-by-hop fields (RFC 9110 section 7.6.1)
    /// and `Age`, which is worked out again whenever the response is served.
    pub headers: HeaderMap,
}

/// Whether the response `status`/`response` to a request (`method`, `request` headers) for
/// `key`, received at `response_time`, may be stored, and how.
pub fn admit(
    key: &CacheKey,
    method: &Method,
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
    response_time: SystemTime,
) -> Result<Admitted, NotStored> {
    if method != Method::GET {
        return Err(NotStored::Method);
    }
    if request.contains_key(header::RANGE)
        || status == StatusCode::PARTIAL_CONTENT
        || response.contains_key(header::CONTENT_RANGE)
    {
        return Err(NotStored::Partial);
    }
    if response.contains_key(header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    if varies_on_everything(response) {
        return Err(NotStored::VariesOnEverything);
    }
    let head = head(status, response);
    // Storability is judged on the whole request (its Authorization, its no-store) ...
    let full = lookup_request(key, Method::GET, request);
    if !CachePolicy::new_options(&full, &head, response_time, policy_options()).is_storable() {
        return Err(NotStored::Policy);
    }
    // ... and the policy kept is built from what matching needs only.
    let stored = stored_request(key, request, response);
    let policy = CachePolicy::new_options(&stored, &head, response_time, policy_options());
    let lifetime = freshness_lifetime(&policy, &stored, &head, response_time);
    Ok(Admitted {
        policy,
        lifetime,
        rules: StaleRules::of_response(response),
        vary: vary_signature(request, response),
        headers: end_to_end(response),
    })
}

/// `headers` without the hop-by-hop fields (the fixed ones and those `Connection` names)
/// and `Age`: what a stored response keeps.
fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    let mut kept = headers.clone();
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::AGE,
    ] {
        kept.remove(name);
    }
    for name in ["keep-alive", "proxy-connection"]
        .into_iter()
        .map(str::to_owned)
        .chain(named)
    {
        kept.remove(name.as_str());
    }
    kept
}

/// A stored response after a revalidation.
#[derive(Debug)]
pub enum Revalidation {
    /// The origin said `304` for this stored response: keep the body, take these.
    NotModified(Box<Refreshed>),
    /// The answer is a new response (or a 304 that is not about this one): treat it as a
    /// response to a miss.
    Modified,
}

/// A stored response brought up to date by a `304`: everything but the body is new.
#[derive(Debug)]
pub struct Refreshed {
    pub policy: CachePolicy,
    pub lifetime: Duration,
    pub rules: StaleRules,
    /// The stored head with the 304's headers merged in (RFC 9111 section 4.3.4), as the
    /// policy computed it: `Date` as of the revalidation, no `Age`.
    pub head: response::Parts,
}

/// The stored response (`policy`, whose head is `stored_head`) after the origin answered
/// `status`/`response` at `response_time` to a revalidation of `key` on behalf of a request
/// with `request` headers.
pub fn revalidated(
    policy: &CachePolicy,
    key: &CacheKey,
    request: &HeaderMap,
    stored_head: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
    response_time: SystemTime,
) -> Revalidation {
    if status != StatusCode::NOT_MODIFIED {
        return Revalidation::Modified;
    }
    let varies_on = if response.contains_key(header::VARY) {
        response
    } else {
        stored_head
    };
    let stored = stored_request(key, request, varies_on);
    match policy.after_response(&stored, &head(status, response), response_time) {
        AfterResponse::NotModified(policy, mut head) => {
            let lifetime = freshness_lifetime(&policy, &stored, &head, response_time);
            head.headers.remove(header::AGE);
            Revalidation::NotModified(Box::new(Refreshed {
                rules: StaleRules::of_response(&head.headers),
                policy,
                lifetime,
                head,
            }))
        }
        AfterResponse::Modified(..) => Revalidation::Modified,
    }
}

fn head(status: StatusCode, headers: &HeaderMap) -> response::Parts {
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.headers = headers.clone();
    parts
}

/// How long a stored response is fresh for, counted like [`CachePolicy::age`]: stale once
/// the age reaches it. The policy only tells the time left; while that is positive, the
/// lifetime is the time left plus the age. A response stale on arrival (its `Age` beyond its
/// lifetime) is measured by a policy of the same response without `Age`, whose age at
/// `response_time` is zero.
fn freshness_lifetime(
    policy: &CachePolicy,
    request: &request::Parts,
    head: &response::Parts,
    response_time: SystemTime,
) -> Duration {
    let left = policy.time_to_live(response_time);
    if !left.is_zero() {
        return left.saturating_add(policy.age(response_time));
    }
    let mut without_age = self::head(head.status, &head.headers);
    without_age.headers.remove(header::AGE);
    CachePolicy::new_options(request, &without_age, response_time, policy_options())
        .time_to_live(response_time)
}

/// Whether `path_and_query` may be a key's: an absolute path, short enough, no fragment.
fn check_target(path_and_query: &str) -> Result<(), KeyError> {
    if path_and_query.len() > MAX_PATH_AND_QUERY_LEN {
        return Err(KeyError::TooLong);
    }
    // The parser would drop a fragment; a key names what was asked for, exactly.
    if !path_and_query.starts_with('/') || path_and_query.contains('#') {
        return Err(KeyError::BadTarget);
    }
    Ok(())
}

/// The RFC 9211 `ttl` of a stored response at `now`: whole seconds of freshness left,
/// negative once stale.
pub fn ttl_secs(policy: &CachePolicy, lifetime: Duration, now: SystemTime) -> i64 {
    let lifetime = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
    let age = i64::try_from(policy.age(now).as_secs()).unwrap_or(i64::MAX);
    lifetime.saturating_sub(age)
}

/// A stored response as a plain request finds it, worked out once so that answering such a
/// request does not ask the policy to read the stored headers again.
///
/// A plain request is a GET or HEAD without `Cache-Control`, `Pragma` or `Authorization`:
/// nothing in it can change what the policy decides, so a fresh stored response answers it
/// with the head the policy gave at [`QuickHit::new`]'s `now`, its `Age` counted on from
/// there. Anything else, and any doubt (a response that varies, the clock going back, an age
/// past a day, where RFC 9111 warns of heuristic freshness), is left to the policy.
#[derive(Debug, Clone)]
pub struct QuickHit {
    /// When it was worked out, and the response's age then.
    at: SystemTime,
    age_at: Duration,
    lifetime: Duration,
    status: StatusCode,
    /// The head the policy answers a plain request with, without `Age` and `Date`: the
    /// first is added per answer, the second is the server's own.
    headers: HeaderMap,
}

/// What a [`QuickHit`] answers a plain request with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuickAnswer {
    /// The `Age` to send, in whole seconds.
    pub age_secs: u64,
    /// The RFC 9211 `ttl`, as [`ttl_secs`] counts it: always positive here.
    pub ttl_secs: i64,
}

/// The age past which [`QuickHit`] leaves answering to the policy (RFC 9111 section 4.2.2:
/// a heuristic lifetime over a day warns once the age is past a day).
const QUICK_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

impl QuickHit {
    /// The stored response (`policy`, fresh for `lifetime`, stored for `key`) as a plain
    /// request at `now` finds it; `None` if it is stale then, or varies.
    pub fn new(
        policy: &CachePolicy,
        lifetime: Duration,
        key: &CacheKey,
        now: SystemTime,
    ) -> Option<Self> {
        let lookup = lookup_request(key, Method::GET, &HeaderMap::new());
        let http_cache_semantics::BeforeRequest::Fresh(head) = policy.before_request(&lookup, now)
        else {
            return None;
        };
        let age_at = policy.age(now);
        if head.headers.contains_key(header::VARY) || age_at >= lifetime {
            return None;
        }
        let mut headers = head.headers;
        headers.remove(header::AGE);
        headers.remove(header::DATE);
        Some(Self {
            at: now,
            age_at,
            lifetime,
            status: head.status,
            headers,
        })
    }

    /// The answer to a plain request with `request` headers at `now`, if it is plain and the
    /// response still fresh; `None` sends it to the policy.
    pub fn answer(&self, request: &HeaderMap, now: SystemTime) -> Option<QuickAnswer> {
        if request.contains_key(header::CACHE_CONTROL)
            || request.contains_key(header::PRAGMA)
            || request.contains_key(header::AUTHORIZATION)
        {
            return None;
        }
        let age = self.age_at.checked_add(now.duration_since(self.at).ok()?)?;
        if age >= self.lifetime || age > QUICK_MAX_AGE {
            return None;
        }
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        Some(QuickAnswer {
            age_secs: age.as_secs(),
            ttl_secs: secs(self.lifetime).saturating_sub(secs(age)),
        })
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The head to answer with, without `Age` and `Date`.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

/// How long a stored response has been stale at `now` (zero while fresh).
pub fn staleness(policy: &CachePolicy, lifetime: Duration, now: SystemTime) -> Duration {
    policy.age(now).saturating_sub(lifetime)
}

/// What a stored response says about being served stale, read once when it is stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleRules {
    /// `must-revalidate`, `proxy-revalidate` or `no-cache` (or `Pragma: no-cache` without
    /// `Cache-Control`): never served stale.
    pub never_stale: bool,
    /// `s-maxage`: no stale answers but the ones the response itself allows.
    pub shared_max_age: bool,
    /// `stale-while-revalidate`.
    pub while_revalidate: Option<Duration>,
    /// `stale-if-error`.
    pub if_error: Option<Duration>,
}

impl StaleRules {
    /// The rules of a response with these headers.
    pub fn of_response(headers: &HeaderMap) -> Self {
        let cc = Directives::of(headers);
        let pragma_no_cache = !headers.contains_key(header::CACHE_CONTROL)
            && headers
                .get_all(header::PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("no-cache"));
        Self {
            never_stale: cc.has("must-revalidate")
                || cc.has("proxy-revalidate")
                || cc.has("no-cache")
                || pragma_no_cache,
            shared_max_age: cc.has("s-maxage"),
            while_revalidate: cc.seconds("stale-while-revalidate"),
            if_error: cc.seconds("stale-if-error"),
        }
    }

    /// Whether a request's `max-stale` may have a stale response served (the policy honours
    /// it unless `must-revalidate`; a shared cache must also refuse it for
    /// `proxy-revalidate`, `no-cache` and `s-maxage`).
    pub fn allows_max_stale(&self) -> bool {
        !self.never_stale && !self.shared_max_age
    }
}

/// The `Cache-Control` directives of a message, names lower-cased.
struct Directives(Vec<(String, Option<String>)>);

impl Directives {
    fn of(headers: &HeaderMap) -> Self {
        let directives = headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|part| {
                let (name, value) = match part.split_once('=') {
                    Some((name, value)) => (name, Some(value.trim().trim_matches('"'))),
                    None => (part, None),
                };
                let name = name.trim();
                (!name.is_empty()).then(|| (name.to_ascii_lowercase(), value.map(str::to_owned)))
            })
            .collect();
        Self(directives)
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    /// A delta-seconds directive. Given twice with different values, or with a value that is
    /// not a number, it is invalid (RFC 9111 section 4.2.1) and counts as absent: a stale
    /// answer is allowed only by what the origin said clearly.
    fn seconds(&self, name: &str) -> Option<Duration> {
        let mut found = None;
        for (n, value) in &self.0 {
            if n != name {
                continue;
            }
            let value = value.as_deref()?;
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let secs = value.parse::<u64>().unwrap_or(MAX_DELTA_SECONDS);
            match found {
                Some(earlier) if earlier != secs => return None,
                _ => found = Some(secs),
            }
        }
        found.map(|secs| Duration::from_secs(secs.min(MAX_DELTA_SECONDS)))
    }
}

/// How the origin failed a request the cache forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginFailure {
    /// No connection could be made, or it broke before an answer.
    Unreachable,
    /// No answer in time.
    Timeout,
    /// An answer of 500, 502, 503 or 504 (the errors RFC 5861 means).
    Status(StatusCode),
}

impl OriginFailure {
    /// The failure an answer with `status` is, if it is one a stale response may replace.
    pub fn of_status(status: StatusCode) -> Option<Self> {
        matches!(status.as_u16(), 500 | 502 | 503 | 504).then_some(OriginFailure::Status(status))
    }
}

/// When a stale response is considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Situation {
    /// Before the origin is asked: may the stale response answer now, revalidated behind?
    BeforeRevalidation,
    /// The origin was asked and failed.
    OriginFailed(OriginFailure),
}

/// Why a stale response may answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleGrant {
    /// The response's `stale-while-revalidate`.
    WhileRevalidate,
    /// The response's or the request's `stale-if-error`.
    IfError,
    /// The route's `stale_if_offline`.
    Offline,
}

impl StaleGrant {
    /// The RFC 9211 `detail` this answer carries.
    pub fn detail(self) -> &'static str {
        match self {
            StaleGrant::WhileRevalidate => "stale-while-revalidate",
            StaleGrant::IfError => "stale-if-error",
            StaleGrant::Offline => "origin-down",
        }
    }
}

/// Whether a stored response with `rules`, stale for `staleness`, may answer a request with
/// `request` headers in `situation`, the route allowing `stale_if_offline`. See the module
/// docs for the rules.
pub fn stale_grant(
    rules: &StaleRules,
    staleness: Duration,
    request: &HeaderMap,
    situation: Situation,
    stale_if_offline: Option<Duration>,
) -> Option<StaleGrant> {
    if rules.never_stale {
        return None;
    }
    let within = |limit: Option<Duration>| limit.is_some_and(|limit| staleness <= limit);
    match situation {
        Situation::BeforeRevalidation => {
            let no_cache = Directives::of(request).has("no-cache")
                || (!request.contains_key(header::CACHE_CONTROL)
                    && request
                        .get_all(header::PRAGMA)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .any(|v| v.contains("no-cache")));
            (!no_cache && within(rules.while_revalidate)).then_some(StaleGrant::WhileRevalidate)
        }
        Situation::OriginFailed(_) => {
            if within(rules.if_error) {
                Some(StaleGrant::IfError)
            } else if rules.shared_max_age {
                None
            } else if within(Directives::of(request).seconds("stale-if-error")) {
                Some(StaleGrant::IfError)
            } else if within(stale_if_offline) {
                Some(StaleGrant::Offline)
            } else {
                None
            }
        }
    }
}

/// Whether a request carries `only-if-cached`: answer from the cache or with 504, never
/// from the origin.
pub fn only_if_cached(request: &HeaderMap) -> bool {
    Directives::of(request).has("only-if-cached")
}

/// The keys an answer to an unsafe request makes stale (RFC 9111 section 4.4): for a
/// non-error status (1xx to 3xx), the target, and the `Location` and `Content-Location`
/// when they name a resource on the same host. Nothing for a safe method or an error.
pub fn invalidations(
    method: &Method,
    target: &CacheKey,
    status: StatusCode,
    response: &HeaderMap,
) -> Vec<CacheKey> {
    if is_safe_method(method) || status.is_client_error() || status.is_server_error() {
        return Vec::new();
    }
    let mut keys = vec![target.clone()];
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(reference) = response.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        if let Some(key) = same_host_reference(target, reference)
            && !keys.contains(&key)
        {
            keys.push(key);
        }
    }
    keys
}

/// A `Location`/`Content-Location` value resolved against `target`, if it names a resource
/// on the same host over plain HTTP. A relative reference with dot segments is left alone:
/// invalidation is a courtesy, and guessing how an origin resolves `..` is not.
fn same_host_reference(target: &CacheKey, reference: &str) -> Option<CacheKey> {
    if reference.len() > MAX_PATH_AND_QUERY_LEN + MAX_HOST_LEN + 8 {
        return None;
    }
    let reference = &reference[..path_and_query_len(reference)];
    if reference.starts_with("//") {
        return None;
    }
    if reference.starts_with('/') {
        return CacheKey::new(target.host(), reference).ok();
    }
    if let Ok(uri) = reference.parse::<Uri>()
        && let Some(authority) = uri.authority()
    {
        if uri.scheme_str() != Some("http") || authority.as_str().contains('@') {
            return None;
        }
        let key = CacheKey::new(authority.as_str(), uri.path_and_query()?.as_str()).ok()?;
        return (key.host() == target.host()).then_some(key);
    }
    if reference.contains(':') || reference.split(['/', '?']).any(|s| s == "." || s == "..") {
        return None;
    }
    let path = target.path_and_query();
    let path = &path[..path.find('?').unwrap_or(path.len())];
    let base = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    CacheKey::new(target.host(), &format!("{base}{reference}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{
        AGE, AUTHORIZATION, CACHE_CONTROL, CONTENT_LOCATION, COOKIE, DATE, ETAG, HOST,
        LAST_MODIFIED, LOCATION, RANGE, SET_COOKIE, VARY,
    };

    const T0: Duration = Duration::from_secs(1_800_000_000);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(secs)
    }

    fn headers(pairs: &[(HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                name.clone(),
                HeaderValue::from_str(value).expect("test header"),
            );
        }
        map
    }

    fn key(host: &str, path: &str) -> CacheKey {
        CacheKey::new(host, path).expect("a valid key")
    }

    fn admit_get(req: &HeaderMap, status: u16, res: &HeaderMap) -> Result<Admitted, NotStored> {
        let status = StatusCode::from_u16(status).expect("status");
        admit(
            &key("example.com", "/a"),
            &Method::GET,
            req,
            status,
            res,
            at(0),
        )
    }

    #[test]
    fn hosts_are_normalised_to_lower_case_without_port_80() {
        assert_eq!(key("Example.COM", "/").host(), "example.com");
        assert_eq!(key("example.com:80", "/").host(), "example.com");
        assert_eq!(key("example.com:080", "/").host(), "example.com");
        assert_eq!(key("example.com:8080", "/").host(), "example.com:8080");
        assert_eq!(key("example.com:443", "/").host(), "example.com:443");
        assert_eq!(key("[::1]:80", "/").host(), "[::1]");
        assert_eq!(key("[FE80::1]:81", "/").host(), "[fe80::1]:81");
        assert_eq!(key("a", "/"), key("A:80", "/"));
    }

    #[test]
    fn paths_and_queries_are_kept_exactly_as_received() {
        assert_eq!(key("h", "/A/b?y=2&x=1").path_and_query(), "/A/b?y=2&x=1");
        assert_ne!(key("h", "/a?x=1&y=2"), key("h", "/a?y=2&x=1"));
        assert_ne!(key("h", "/a%2Fb"), key("h", "/a/b"));
    }

    #[test]
    fn malformed_hostile_and_oversized_keys_are_refused() {
        for host in [
            "",
            ":80",
            "exa mple.com",
            "user@example.com",
            "example.com:",
            "example.com:0",
            "example.com:65536",
            "example.com:99999999999999999999",
            "example.com:8x",
            "example.com:80:80",
            "[::1",
            "[::1]x",
            "[zz::1]",
            "[]",
            "ex\u{e9}mple.com",
            "example.com/evil",
        ] {
            assert!(CacheKey::new(host, "/").is_err(), "{host:?}");
        }
        assert_eq!(
            CacheKey::new(&"a".repeat(MAX_HOST_LEN + 1), "/"),
            Err(KeyError::BadHost)
        );
        assert_eq!(CacheKey::new("h", "a"), Err(KeyError::BadTarget));
        assert_eq!(CacheKey::new("h", ""), Err(KeyError::BadTarget));
        assert_eq!(CacheKey::new("h", "/a#frag"), Err(KeyError::BadTarget));
        assert_eq!(CacheKey::new("h", "/a b"), Err(KeyError::BadTarget));
        let long = format!("/{}", "a".repeat(MAX_PATH_AND_QUERY_LEN));
        assert_eq!(CacheKey::new("h", &long), Err(KeyError::TooLong));
    }

    #[test]
    fn a_request_is_keyed_by_its_absolute_target_else_its_one_host_header() {
        let uri: Uri = "/p?q=1".parse().expect("uri");
        let k = CacheKey::from_request(&uri, &headers(&[(HOST, "Node.Local:80")]));
        assert_eq!(k, Ok(key("node.local", "/p?q=1")));

        let absolute: Uri = "http://Other.Example:8080/x".parse().expect("uri");
        let k = CacheKey::from_request(&absolute, &headers(&[(HOST, "ignored")]));
        assert_eq!(k, Ok(key("other.example:8080", "/x")));

        let bare: Uri = "http://h.example".parse().expect("uri");
        assert_eq!(
            CacheKey::from_request(&bare, &HeaderMap::new()),
            Ok(key("h.example", "/"))
        );

        assert_eq!(
            CacheKey::from_request(&uri, &HeaderMap::new()),
            Err(KeyError::NoHost)
        );
        let two = headers(&[(HOST, "a"), (HOST, "b")]);
        assert_eq!(CacheKey::from_request(&uri, &two), Err(KeyError::NoHost));
        let mut bad = HeaderMap::new();
        bad.insert(HOST, HeaderValue::from_bytes(b"h\xffx").expect("obs-text"));
        assert_eq!(CacheKey::from_request(&uri, &bad), Err(KeyError::BadHost));
        let creds: Uri = "http://u:p@h.example/".parse().expect("uri");
        assert_eq!(
            CacheKey::from_request(&creds, &HeaderMap::new()),
            Err(KeyError::BadHost)
        );
    }

    #[test]
    fn a_key_read_back_from_json_is_checked_like_a_new_one() {
        let k = key("example.com:8080", "/a?b");
        let json = serde_json::to_string(&k).expect("serialize");
        assert_eq!(serde_json::from_str::<CacheKey>(&json).expect("read"), k);
        let hostile = r#"{"host":"EVIL COM","path_and_query":"/"}"#;
        assert!(serde_json::from_str::<CacheKey>(hostile).is_err());
        let not_a_path = r#"{"host":"a","path_and_query":"x"}"#;
        assert!(serde_json::from_str::<CacheKey>(not_a_path).is_err());
    }

    #[test]
    fn prefixes_match_on_the_normalised_host_and_the_raw_path() {
        let k = key("example.com", "/img/a.png?v=1");
        assert!(k.is_under(None, "/img/"));
        assert!(k.is_under(Some("EXAMPLE.com:80"), "/img"));
        assert!(k.is_under(Some("example.com"), ""));
        assert!(!k.is_under(Some("other.com"), "/img/"));
        assert!(!k.is_under(Some("bad host"), "/"));
        assert!(!k.is_under(None, "/css/"));
    }

    #[test]
    fn only_get_and_head_are_answered_from_the_cache() {
        assert!(is_cacheable_method(&Method::GET));
        assert!(is_cacheable_method(&Method::HEAD));
        for m in [
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
        ] {
            assert!(!is_cacheable_method(&m), "{m}");
        }
        let custom = Method::from_bytes(b"PURGE").expect("method");
        assert!(!is_cacheable_method(&custom));
        assert!(!is_safe_method(&custom));
    }

    #[test]
    fn policy_is_that_of_a_shared_cache() {
        let options = policy_options();
        assert!(options.shared);
        assert!((options.cache_heuristic - 0.1).abs() < f32::EPSILON);
        let private = headers(&[(CACHE_CONTROL, "private, max-age=60")]);
        assert_eq!(
            admit_get(&HeaderMap::new(), 200, &private).map(|_| ()),
            Err(NotStored::Policy)
        );
    }

    #[test]
    fn storable_responses_are_admitted_with_their_lifetime() {
        let res = headers(&[(CACHE_CONTROL, "max-age=60")]);
        let admitted = admit_get(&HeaderMap::new(), 200, &res).expect("storable");
        assert_eq!(admitted.lifetime, Duration::from_secs(60));
        assert_eq!(ttl_secs(&admitted.policy, admitted.lifetime, at(0)), 60);
        assert_eq!(ttl_secs(&admitted.policy, admitted.lifetime, at(90)), -30);
        assert_eq!(
            staleness(&admitted.policy, admitted.lifetime, at(90)),
            Duration::from_secs(30)
        );
        assert_eq!(
            staleness(&admitted.policy, admitted.lifetime, at(10)),
            Duration::ZERO
        );
    }

    #[test]
    fn s_maxage_is_the_lifetime_of_a_shared_cache() {
        let res = headers(&[(CACHE_CONTROL, "max-age=10, s-maxage=100")]);
        let admitted = admit_get(&HeaderMap::new(), 200, &res).expect("storable");
        assert_eq!(admitted.lifetime, Duration::from_secs(100));
        assert!(admitted.rules.shared_max_age);
    }

    #[test]
    fn a_response_stale_on_arrival_still_knows_its_lifetime() {
        let res = headers(&[(CACHE_CONTROL, "max-age=60"), (AGE, "100")]);
        let admitted = admit_get(&HeaderMap::new(), 200, &res).expect("storable");
        assert_eq!(admitted.lifetime, Duration::from_secs(60));
        assert_eq!(ttl_secs(&admitted.policy, admitted.lifetime, at(0)), -40);
        assert_eq!(
            staleness(&admitted.policy, admitted.lifetime, at(0)),
            Duration::from_secs(40)
        );
        let fresh_for_20 = headers(&[(CACHE_CONTROL, "max-age=120"), (AGE, "100")]);
        let admitted = admit_get(&HeaderMap::new(), 200, &fresh_for_20).expect("storable");
        assert_eq!(ttl_secs(&admitted.policy, admitted.lifetime, at(0)), 20);
    }

    #[test]
    fn the_heuristic_lifetime_is_a_tenth_of_the_time_since_last_modified() {
        let res = headers(&[
            (DATE, "Thu, 01 Jan 2026 00:16:40 GMT"),
            (LAST_MODIFIED, "Thu, 01 Jan 2026 00:00:00 GMT"),
        ]);
        let admitted = admit_get(&HeaderMap::new(), 200, &res).expect("storable");
        assert_eq!(admitted.lifetime, Duration::from_secs(100));
    }

    #[test]
    fn partial_cookie_setting_and_vary_star_responses_are_not_stored() {
        let res = headers(&[(CACHE_CONTROL, "max-age=60")]);
        let range = headers(&[(RANGE, "bytes=0-1")]);
        assert_eq!(
            admit_get(&range, 200, &res).map(|_| ()),
            Err(NotStored::Partial)
        );
        assert_eq!(
            admit_get(&HeaderMap::new(), 206, &res).map(|_| ()),
            Err(NotStored::Partial)
        );
        let cookie = headers(&[(CACHE_CONTROL, "public, max-age=60"), (SET_COOKIE, "s=1")]);
        assert_eq!(
            admit_get(&HeaderMap::new(), 200, &cookie).map(|_| ()),
            Err(NotStored::SetCookie)
        );
        let star = headers(&[(CACHE_CONTROL, "max-age=60"), (VARY, "accept, *")]);
        assert_eq!(
            admit_get(&HeaderMap::new(), 200, &star).map(|_| ()),
            Err(NotStored::VariesOnEverything)
        );
        let head = admit(
            &key("h", "/"),
            &Method::HEAD,
            &HeaderMap::new(),
            StatusCode::OK,
            &res,
            at(0),
        );
        assert_eq!(head.map(|_| ()), Err(NotStored::Method));
    }

    #[test]
    fn an_authorized_request_is_stored_only_when_the_response_allows_it() {
        let auth = headers(&[(AUTHORIZATION, "Bearer secret")]);
        let plain = headers(&[(CACHE_CONTROL, "max-age=60")]);
        assert_eq!(
            admit_get(&auth, 200, &plain).map(|_| ()),
            Err(NotStored::Policy)
        );
        for cc in [
            "public, max-age=60",
            "s-maxage=60",
            "must-revalidate, max-age=60",
        ] {
            let res = headers(&[(CACHE_CONTROL, cc)]);
            assert!(admit_get(&auth, 200, &res).is_ok(), "{cc}");
        }
    }

    #[test]
    fn hop_by_hop_fields_and_age_are_not_kept() {
        let res = headers(&[
            (CACHE_CONTROL, "max-age=60"),
            (header::CONNECTION, "close, X-Hop"),
            (HeaderName::from_static("x-hop"), "1"),
            (HeaderName::from_static("keep-alive"), "timeout=5"),
            (header::TRANSFER_ENCODING, "chunked"),
            (AGE, "3"),
            (ETAG, "\"e\""),
        ]);
        let kept = admit_get(&HeaderMap::new(), 200, &res)
            .expect("storable")
            .headers;
        let names: Vec<&str> = kept.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["cache-control", "etag"]);
    }

    #[test]
    fn credentials_and_cookies_are_not_kept_with_a_stored_response() {
        let req = headers(&[
            (AUTHORIZATION, "Bearer secret"),
            (COOKIE, "session=secret"),
            (HeaderName::from_static("accept-language"), "fr"),
        ]);
        let res = headers(&[
            (CACHE_CONTROL, "public, max-age=60"),
            (VARY, "Accept-Language"),
        ]);
        let admitted = admit_get(&req, 200, &res).expect("storable");
        let json = serde_json::to_string(&admitted.policy).expect("serialize");
        assert!(!json.contains("secret"), "{json}");
        assert!(json.contains("fr"), "the varied-on header is kept: {json}");
        assert_eq!(admitted.vary, "accept-language:fr\n");
    }

    #[test]
    fn heuristically_cacheable_statuses_are_stored_without_a_lifetime_and_others_not() {
        let res = headers(&[(LAST_MODIFIED, "Thu, 01 Jan 2026 00:00:00 GMT")]);
        for status in [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501] {
            assert!(
                admit_get(&HeaderMap::new(), status, &res).is_ok(),
                "{status}"
            );
        }
        for status in [201, 302, 303, 307, 400, 403, 500, 502, 503, 504] {
            assert_eq!(
                admit_get(&HeaderMap::new(), status, &res).map(|_| ()),
                Err(NotStored::Policy),
                "{status}"
            );
        }
        let explicit = headers(&[(CACHE_CONTROL, "max-age=60")]);
        assert!(admit_get(&HeaderMap::new(), 302, &explicit).is_ok());
    }

    #[test]
    fn vary_signatures_tell_variants_apart_and_escape_odd_bytes() {
        let res = headers(&[
            (VARY, "Accept-Language, accept-encoding"),
            (VARY, "accept-language"),
        ]);
        let fr = headers(&[(HeaderName::from_static("accept-language"), "fr")]);
        let de = headers(&[(HeaderName::from_static("accept-language"), "de")]);
        assert_ne!(vary_signature(&fr, &res), vary_signature(&de, &res));
        assert_eq!(
            vary_signature(&fr, &res),
            "accept-encoding:\naccept-language:fr\n"
        );
        let mut odd = HeaderMap::new();
        odd.insert(
            HeaderName::from_static("accept-language"),
            HeaderValue::from_bytes(b"a b%\xff").expect("obs-text"),
        );
        assert_eq!(
            vary_signature(&odd, &res),
            "accept-encoding:\naccept-language:a%20b%25%FF\n"
        );
        assert_eq!(vary_signature(&fr, &HeaderMap::new()), "");
    }

    #[test]
    fn a_304_updates_the_stored_headers_and_lifetime() {
        let res = headers(&[
            (CACHE_CONTROL, "max-age=10"),
            (ETAG, "\"v1\""),
            (HeaderName::from_static("x-version"), "1"),
        ]);
        let admitted = admit_get(&HeaderMap::new(), 200, &res).expect("storable");
        let not_modified = headers(&[
            (CACHE_CONTROL, "max-age=100"),
            (ETAG, "\"v1\""),
            (HeaderName::from_static("x-version"), "2"),
        ]);
        let k = key("example.com", "/a");
        match revalidated(
            &admitted.policy,
            &k,
            &HeaderMap::new(),
            &res,
            StatusCode::NOT_MODIFIED,
            &not_modified,
            at(50),
        ) {
            Revalidation::NotModified(refreshed) => {
                let Refreshed {
                    policy,
                    lifetime,
                    head,
                    ..
                } = *refreshed;
                assert_eq!(head.status, StatusCode::OK);
                assert_eq!(
                    head.headers.get("x-version").map(HeaderValue::as_bytes),
                    Some(&b"2"[..])
                );
                assert!(!head.headers.contains_key(AGE));
                assert_eq!(lifetime, Duration::from_secs(100));
                assert_eq!(ttl_secs(&policy, lifetime, at(60)), 90);
            }
            Revalidation::Modified => panic!("a matching 304"),
        }
        let other_etag = headers(&[(ETAG, "\"v2\"")]);
        assert!(matches!(
            revalidated(
                &admitted.policy,
                &k,
                &HeaderMap::new(),
                &res,
                StatusCode::NOT_MODIFIED,
                &other_etag,
                at(50)
            ),
            Revalidation::Modified
        ));
        assert!(matches!(
            revalidated(
                &admitted.policy,
                &k,
                &HeaderMap::new(),
                &res,
                StatusCode::OK,
                &not_modified,
                at(50)
            ),
            Revalidation::Modified
        ));
    }

    #[test]
    fn stale_rules_read_the_directives_that_matter() {
        let rules = StaleRules::of_response(&headers(&[(
            CACHE_CONTROL,
            "max-age=1, Stale-While-Revalidate=30, stale-if-error=\"600\"",
        )]));
        assert_eq!(rules.while_revalidate, Some(Duration::from_secs(30)));
        assert_eq!(rules.if_error, Some(Duration::from_secs(600)));
        assert!(!rules.never_stale && !rules.shared_max_age);
        assert!(rules.allows_max_stale());
        for cc in [
            "must-revalidate",
            "proxy-revalidate",
            "no-cache",
            "No-Cache=\"set-cookie\"",
        ] {
            let rules = StaleRules::of_response(&headers(&[(CACHE_CONTROL, cc)]));
            assert!(rules.never_stale, "{cc}");
            assert!(!rules.allows_max_stale(), "{cc}");
        }
        let pragma = StaleRules::of_response(&headers(&[(header::PRAGMA, "no-cache")]));
        assert!(pragma.never_stale);
        let s_maxage = StaleRules::of_response(&headers(&[(CACHE_CONTROL, "s-maxage=5")]));
        assert!(!s_maxage.allows_max_stale());
    }

    #[test]
    fn malformed_and_conflicting_stale_directives_count_as_absent() {
        for cc in [
            "stale-if-error",
            "stale-if-error=",
            "stale-if-error=-5",
            "stale-if-error=1e3",
            "stale-if-error=10, stale-if-error=20",
            "stale-if-error=0x10",
        ] {
            let rules = StaleRules::of_response(&headers(&[(CACHE_CONTROL, cc)]));
            assert_eq!(rules.if_error, None, "{cc}");
        }
        let same_twice = StaleRules::of_response(&headers(&[
            (CACHE_CONTROL, "stale-if-error=10"),
            (CACHE_CONTROL, "stale-if-error=10"),
        ]));
        assert_eq!(same_twice.if_error, Some(Duration::from_secs(10)));
        let huge = StaleRules::of_response(&headers(&[(
            CACHE_CONTROL,
            "stale-if-error=99999999999999999999999999",
        )]));
        assert_eq!(huge.if_error, Some(Duration::from_secs(MAX_DELTA_SECONDS)));
        let mut junk = HeaderMap::new();
        junk.insert(
            CACHE_CONTROL,
            HeaderValue::from_bytes(b"\xff, ,=, stale-if-error=5").expect("obs-text"),
        );
        assert_eq!(StaleRules::of_response(&junk), StaleRules::default());
    }

    fn grant(
        rules: &StaleRules,
        stale_secs: u64,
        req: &HeaderMap,
        situation: Situation,
        offline: Option<Duration>,
    ) -> Option<StaleGrant> {
        stale_grant(
            rules,
            Duration::from_secs(stale_secs),
            req,
            situation,
            offline,
        )
    }

    const DOWN: Situation = Situation::OriginFailed(OriginFailure::Unreachable);
    const DAY: Option<Duration> = Some(DEFAULT_STALE_IF_OFFLINE);

    #[test]
    fn stale_while_revalidate_answers_within_its_window_unless_the_client_wants_a_check() {
        let rules = StaleRules::of_response(&headers(&[(
            CACHE_CONTROL,
            "max-age=1, stale-while-revalidate=30",
        )]));
        let none = HeaderMap::new();
        let before = Situation::BeforeRevalidation;
        assert_eq!(
            grant(&rules, 30, &none, before, None),
            Some(StaleGrant::WhileRevalidate)
        );
        assert_eq!(grant(&rules, 31, &none, before, DAY), None);
        let no_cache = headers(&[(CACHE_CONTROL, "no-cache")]);
        assert_eq!(grant(&rules, 1, &no_cache, before, None), None);
        let pragma = headers(&[(header::PRAGMA, "no-cache")]);
        assert_eq!(grant(&rules, 1, &pragma, before, None), None);
        // The offline rule waits for the origin to fail.
        assert_eq!(grant(&StaleRules::default(), 1, &none, before, DAY), None);
    }

    #[test]
    fn stale_if_error_answers_from_the_response_or_the_request() {
        let rules =
            StaleRules::of_response(&headers(&[(CACHE_CONTROL, "max-age=1, stale-if-error=60")]));
        let none = HeaderMap::new();
        assert_eq!(
            grant(&rules, 60, &none, DOWN, None),
            Some(StaleGrant::IfError)
        );
        assert_eq!(grant(&rules, 61, &none, DOWN, None), None);
        let plain = StaleRules::default();
        let asks = headers(&[(CACHE_CONTROL, "stale-if-error=120")]);
        assert_eq!(
            grant(&plain, 100, &asks, DOWN, None),
            Some(StaleGrant::IfError)
        );
        assert_eq!(grant(&plain, 121, &asks, DOWN, None), None);
        let status =
            Situation::OriginFailed(OriginFailure::Status(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(
            grant(&rules, 10, &none, status, None),
            Some(StaleGrant::IfError)
        );
        assert_eq!(
            grant(&rules, 10, &none, Situation::BeforeRevalidation, None),
            None
        );
    }

    #[test]
    fn only_server_errors_of_rfc_5861_count_as_origin_failures() {
        for code in [500, 502, 503, 504] {
            let status = StatusCode::from_u16(code).expect("status");
            assert_eq!(
                OriginFailure::of_status(status),
                Some(OriginFailure::Status(status))
            );
        }
        for code in [200, 304, 404, 501, 505, 599] {
            let status = StatusCode::from_u16(code).expect("status");
            assert_eq!(OriginFailure::of_status(status), None, "{code}");
        }
    }

    #[test]
    fn an_offline_origin_gets_stale_answers_within_the_route_limit_only() {
        let plain = StaleRules::default();
        let none = HeaderMap::new();
        let day = 24 * 3600;
        assert_eq!(
            grant(&plain, day, &none, DOWN, DAY),
            Some(StaleGrant::Offline)
        );
        assert_eq!(grant(&plain, day + 1, &none, DOWN, DAY), None);
        assert_eq!(
            grant(&plain, 1, &none, DOWN, None),
            None,
            "off for the route"
        );
        let timeout = Situation::OriginFailed(OriginFailure::Timeout);
        assert_eq!(
            grant(&plain, 5, &none, timeout, DAY),
            Some(StaleGrant::Offline)
        );
        assert_eq!(StaleGrant::Offline.detail(), "origin-down");
    }

    #[test]
    fn revalidation_directives_forbid_every_stale_answer() {
        let none = HeaderMap::new();
        let asks = headers(&[(CACHE_CONTROL, "stale-if-error=100")]);
        for cc in [
            "max-age=1, must-revalidate, stale-if-error=100, stale-while-revalidate=100",
            "max-age=1, proxy-revalidate",
            "no-cache",
        ] {
            let rules = StaleRules::of_response(&headers(&[(CACHE_CONTROL, cc)]));
            for situation in [Situation::BeforeRevalidation, DOWN] {
                assert_eq!(grant(&rules, 1, &none, situation, DAY), None, "{cc}");
                assert_eq!(grant(&rules, 1, &asks, situation, DAY), None, "{cc}");
            }
        }
    }

    #[test]
    fn s_maxage_keeps_only_the_stale_answers_the_response_itself_allows() {
        let none = HeaderMap::new();
        let asks = headers(&[(CACHE_CONTROL, "stale-if-error=100")]);
        let bare = StaleRules::of_response(&headers(&[(CACHE_CONTROL, "s-maxage=1")]));
        assert_eq!(grant(&bare, 1, &none, DOWN, DAY), None);
        assert_eq!(grant(&bare, 1, &asks, DOWN, DAY), None);
        let explicit = StaleRules::of_response(&headers(&[(
            CACHE_CONTROL,
            "s-maxage=1, stale-while-revalidate=10, stale-if-error=10",
        )]));
        assert_eq!(
            grant(&explicit, 5, &none, DOWN, DAY),
            Some(StaleGrant::IfError)
        );
        assert_eq!(
            grant(&explicit, 5, &none, Situation::BeforeRevalidation, None),
            Some(StaleGrant::WhileRevalidate)
        );
        assert_eq!(grant(&explicit, 11, &none, DOWN, DAY), None);
    }

    #[test]
    fn max_stale_is_taken_out_and_the_other_directives_kept() {
        let req = headers(&[(CACHE_CONTROL, "Max-Stale=30, min-fresh=5"), (HOST, "h")]);
        let out = without_max_stale(&req);
        assert_eq!(
            out.get(CACHE_CONTROL).map(HeaderValue::as_bytes),
            Some(&b"min-fresh=5"[..])
        );
        assert!(out.contains_key(HOST));
        let only = without_max_stale(&headers(&[(CACHE_CONTROL, "max-stale")]));
        assert!(!only.contains_key(CACHE_CONTROL));
    }

    #[test]
    fn only_if_cached_is_read_from_the_request() {
        assert!(only_if_cached(&headers(&[(
            CACHE_CONTROL,
            "max-stale, Only-If-Cached"
        )])));
        assert!(!only_if_cached(&headers(&[(CACHE_CONTROL, "no-cache")])));
        assert!(!only_if_cached(&HeaderMap::new()));
    }

    fn invalidated(method: Method, status: u16, res: &HeaderMap) -> Vec<CacheKey> {
        let status = StatusCode::from_u16(status).expect("status");
        invalidations(&method, &key("example.com", "/dir/item?x=1"), status, res)
    }

    #[test]
    fn unsafe_methods_that_succeed_invalidate_the_target() {
        let target = key("example.com", "/dir/item?x=1");
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            assert_eq!(
                invalidated(method.clone(), 200, &HeaderMap::new()),
                vec![target.clone()]
            );
            assert_eq!(
                invalidated(method.clone(), 303, &HeaderMap::new()),
                vec![target.clone()]
            );
            assert!(invalidated(method.clone(), 404, &HeaderMap::new()).is_empty());
            assert!(invalidated(method, 500, &HeaderMap::new()).is_empty());
        }
        let unknown = Method::from_bytes(b"FROB").expect("method");
        assert_eq!(invalidated(unknown, 204, &HeaderMap::new()), vec![target]);
        for method in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE] {
            assert!(invalidated(method, 200, &HeaderMap::new()).is_empty());
        }
    }

    #[test]
    fn location_and_content_location_are_invalidated_on_the_same_host_only() {
        let res = headers(&[
            (LOCATION, "/new/1"),
            (CONTENT_LOCATION, "http://EXAMPLE.com:80/cl"),
        ]);
        assert_eq!(
            invalidated(Method::POST, 201, &res),
            vec![
                key("example.com", "/dir/item?x=1"),
                key("example.com", "/new/1"),
                key("example.com", "/cl")
            ]
        );
        let relative = headers(&[(LOCATION, "sibling?y=2")]);
        assert_eq!(
            invalidated(Method::PUT, 200, &relative)[1],
            key("example.com", "/dir/sibling?y=2")
        );
        for hostile in [
            "http://other.example/x",
            "https://example.com/x",
            "//example.com/x",
            "http://user@example.com/x",
            "javascript:alert(1)",
            "../up",
            "./here",
            "/bad path",
        ] {
            let res = headers(&[(LOCATION, hostile)]);
            assert_eq!(invalidated(Method::POST, 200, &res).len(), 1, "{hostile}");
        }
        let long = format!(
            "/{}",
            "a".repeat(MAX_PATH_AND_QUERY_LEN + MAX_HOST_LEN + 10)
        );
        assert_eq!(
            invalidated(Method::POST, 200, &headers(&[(LOCATION, &long)])).len(),
            1
        );
        let mut binary = HeaderMap::new();
        binary.insert(
            LOCATION,
            HeaderValue::from_bytes(b"/\xff").expect("obs-text"),
        );
        assert_eq!(invalidated(Method::POST, 200, &binary).len(), 1);
        let same = headers(&[(LOCATION, "/dir/item?x=1")]);
        assert_eq!(
            invalidated(Method::POST, 200, &same).len(),
            1,
            "no duplicate"
        );
    }

    #[test]
    fn lookups_find_a_response_stored_under_another_spelling_of_the_host() {
        let res = headers(&[(CACHE_CONTROL, "max-age=60")]);
        let admitted = admit(
            &key("Example.com:80", "/a"),
            &Method::GET,
            &headers(&[(HOST, "Example.com:80")]),
            StatusCode::OK,
            &res,
            at(0),
        )
        .expect("storable");
        let lookup = lookup_request(
            &key("example.COM", "/a"),
            Method::GET,
            &headers(&[(HOST, "example.COM")]),
        );
        assert!(matches!(
            admitted.policy.before_request(&lookup, at(1)),
            http_cache_semantics::BeforeRequest::Fresh(_)
        ));
    }

    /// The policy's own answer to `request` at `now`: its `Age`, and the head otherwise.
    fn policy_answer(
        admitted: &Admitted,
        request: &HeaderMap,
        now: SystemTime,
    ) -> Option<(u64, HeaderMap)> {
        let lookup = lookup_request(&key("example.com", "/a"), Method::GET, request);
        match admitted.policy.before_request(&lookup, now) {
            http_cache_semantics::BeforeRequest::Fresh(mut head) => {
                let age = head.headers.remove(AGE)?.to_str().ok()?.parse().ok()?;
                head.headers.remove(DATE);
                Some((age, head.headers))
            }
            http_cache_semantics::BeforeRequest::Stale { .. } => None,
        }
    }

    #[test]
    fn a_quick_hit_answers_plain_requests_as_the_policy_does() {
        let res = headers(&[
            (CACHE_CONTROL, "max-age=100"),
            (AGE, "10"),
            (ETAG, "\"v1\""),
            (DATE, "Thu, 01 Jan 2027 00:00:00 GMT"),
        ]);
        let admitted = admit_get(&HeaderMap::new(), 200, &res).expect("storable");
        let k = key("example.com", "/a");
        let quick = QuickHit::new(&admitted.policy, admitted.lifetime, &k, at(5)).expect("fresh");
        assert_eq!(quick.status(), StatusCode::OK);
        assert!(!quick.headers().contains_key(AGE) && !quick.headers().contains_key(DATE));
        let plain = HeaderMap::new();
        for secs in [5, 6, 50, 89] {
            let (age, head) = policy_answer(&admitted, &plain, at(secs)).expect("fresh");
            let answer = quick.answer(&plain, at(secs)).expect("a quick answer");
            assert_eq!(answer.age_secs, age, "at {secs}");
            assert_eq!(
                answer.ttl_secs,
                ttl_secs(&admitted.policy, admitted.lifetime, at(secs))
            );
            assert_eq!(&head, quick.headers());
        }
        // Stale by the clock: the policy decides (revalidation, stale rules).
        assert!(policy_answer(&admitted, &plain, at(90)).is_none());
        assert_eq!(quick.answer(&plain, at(90)), None);
        // The clock went back past when it was worked out.
        assert_eq!(quick.answer(&plain, at(4)), None);
    }

    #[test]
    fn requests_with_directives_or_credentials_and_varying_responses_go_to_the_policy() {
        let res = headers(&[(CACHE_CONTROL, "max-age=100")]);
        let admitted = admit_get(&HeaderMap::new(), 200, &res).expect("storable");
        let k = key("example.com", "/a");
        let quick = QuickHit::new(&admitted.policy, admitted.lifetime, &k, at(0)).expect("fresh");
        for request in [
            headers(&[(CACHE_CONTROL, "max-age=0")]),
            headers(&[(CACHE_CONTROL, "no-cache")]),
            headers(&[(header::PRAGMA, "no-cache")]),
            headers(&[(AUTHORIZATION, "Bearer x")]),
        ] {
            assert_eq!(quick.answer(&request, at(1)), None, "{request:?}");
        }
        assert!(quick.answer(&headers(&[(COOKIE, "a=b")]), at(1)).is_some());

        let varies = headers(&[(CACHE_CONTROL, "max-age=100"), (VARY, "accept-encoding")]);
        let admitted = admit_get(&HeaderMap::new(), 200, &varies).expect("storable");
        assert!(QuickHit::new(&admitted.policy, admitted.lifetime, &k, at(0)).is_none());
        // Stale when worked out: never quick.
        let admitted = admit_get(&HeaderMap::new(), 200, &res).expect("storable");
        assert!(QuickHit::new(&admitted.policy, admitted.lifetime, &k, at(100)).is_none());
    }

    #[test]
    fn a_quick_hit_stops_at_a_day_of_age() {
        let res = headers(&[(CACHE_CONTROL, "max-age=604800")]);
        let admitted = admit_get(&HeaderMap::new(), 200, &res).expect("storable");
        let k = key("example.com", "/a");
        let quick = QuickHit::new(&admitted.policy, admitted.lifetime, &k, at(0)).expect("fresh");
        assert!(quick.answer(&HeaderMap::new(), at(24 * 3600)).is_some());
        assert_eq!(quick.answer(&HeaderMap::new(), at(24 * 3600 + 1)), None);
    }
}
