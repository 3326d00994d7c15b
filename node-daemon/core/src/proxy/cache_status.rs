//! The `Cache-Status` response header (RFC 9211): how the node's cache handled a request.
//!
//! The field is a structured-field list (RFC 8941) with one member per cache that handled
//! the request: the first is the cache nearest the origin, the last the one nearest the
//! client (RFC 9211 section 2). So the node keeps what an upstream cache wrote and adds its
//! own member at the end ([`CacheStatus::add_to`]). A member is the cache's name and its
//! parameters, e.g. `edge-node; hit; ttl=42`, `edge-node; fwd=uri-miss; stored` or
//! `edge-node; fwd=stale; fwd-status=304; ttl=60`.
//!
//! The product's contract for stale answers: a stale response served without the origin's
//! confirmation (while revalidating, on an error, while the origin is down) says `hit` with
//! a negative `ttl` (the seconds it has been stale) and a `detail` naming why.
//!
//! **Never** here: text from a peer in our member. The name is the node's own, checked once
//! ([`CacheName`]); every other value is a number or a fixed token.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The header's name.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// How much of an upstream `Cache-Status` is kept: beyond it, the upstream members are
/// dropped rather than grow every answer without bound.
pub const MAX_UPSTREAM_LEN: usize = 4 * 1024;

/// The longest cache name taken.
pub const MAX_NAME_LEN: usize = 64;

/// Why a name cannot be a cache's name in `Cache-Status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheNameError {
    /// Empty, longer than [`MAX_NAME_LEN`], or with a character that is not a `tchar`.
    #[error("a cache name is 1 to {MAX_NAME_LEN} token characters (RFC 9110 section 5.6.2)")]
    NotAToken,
}

/// The name a cache gives itself in `Cache-Status`: an RFC 9110 token (the node's name).
/// Written as a structured-field token when it is one (it starts with a letter or `*`, as
/// most names do), else as a quoted string, which any token fits in unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheName(String);

impl CacheName {
    pub fn new(name: &str) -> Result<Self, CacheNameError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || !name.bytes().all(is_tchar) {
            return Err(CacheNameError::NotAToken);
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// RFC 9110 section 5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 8941 section 3.3.4: a token starts with a letter or `*`, then tchars, `:` and `/`.
fn is_sf_token(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'*')
        && bytes.all(|b| is_tchar(b) || b == b':' || b == b'/')
}

/// Writes `s` as a structured-field token if it is one, else as a string: quoted, `"` and
/// `\` escaped, bytes that a string cannot hold dropped.
fn write_item(out: &mut String, s: &str) {
    if is_sf_token(s) {
        out.push_str(s);
        return;
    }
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => {}
        }
    }
    out.push('"');
}

/// Why the request went to the origin (RFC 9211 section 2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fwd {
    /// Nothing was stored for the target.
    UriMiss,
    /// Something was stored for the target, but no variant matched the request's headers.
    VaryMiss,
    /// A miss the cache did not tell apart further.
    Miss,
    /// The request asked for it (`no-cache`, `max-age`, `min-fresh`).
    Request,
    /// The stored response was stale (or had to be revalidated).
    Stale,
    /// The cache was set not to handle this request (the route, a range request).
    Bypass,
    /// The method is not answered from a cache (RFC 9211's `method`).
    Method,
}

impl Fwd {
    /// The RFC 9211 token; also a fixed metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Miss => "miss",
            Fwd::Request => "request",
            Fwd::Stale => "stale",
            Fwd::Bypass => "bypass",
            Fwd::Method => "method",
        }
    }
}

/// How the cache handled one request: the parameters of its `Cache-Status` member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStatus {
    /// Answered from the cache, without the origin.
    pub hit: bool,
    /// Went to the origin, and why.
    pub fwd: Option<Fwd>,
    /// The origin's status, where it differs from the answer's (a 304 behind a 200).
    pub fwd_status: Option<u16>,
    /// Seconds of freshness left; negative when the answer is stale.
    pub ttl: Option<i64>,
    /// The origin's answer was stored.
    pub stored: bool,
    /// The request waited for another one's trip to the origin and was answered from it.
    pub collapsed: bool,
    /// More about the answer, from a fixed set (`origin-down`, `stale-if-error`, ...).
    pub detail: Option<&'static str>,
}

impl CacheStatus {
    /// A fresh hit with `ttl` seconds left.
    pub fn hit(ttl: i64) -> Self {
        Self {
            hit: true,
            ttl: Some(ttl),
            ..Self::default()
        }
    }

    /// A request forwarded to the origin for `why`.
    pub fn forwarded(why: Fwd) -> Self {
        Self {
            fwd: Some(why),
            ..Self::default()
        }
    }

    /// This cache's member: `name` and the parameters that are set, in RFC 9211's order.
    pub fn member(&self, name: &CacheName) -> String {
        // Room for the name and the usual parameters: one allocation per answer.
        let mut out = String::with_capacity(name.as_str().len() + 48);
        write_item(&mut out, name.as_str());
        if self.hit {
            out.push_str("; hit");
        }
        if let Some(fwd) = self.fwd {
            out.push_str("; fwd=");
            out.push_str(fwd.as_str());
        }
        if let Some(status) = self.fwd_status {
            out.push_str("; fwd-status=");
            out.push_str(itoa::Buffer::new().format(status));
        }
        if let Some(ttl) = self.ttl {
            out.push_str("; ttl=");
            out.push_str(itoa::Buffer::new().format(ttl));
        }
        if self.stored {
            out.push_str("; stored");
        }
        if self.collapsed {
            out.push_str("; collapsed");
        }
        if let Some(detail) = self.detail {
            out.push_str("; detail=");
            write_item(&mut out, detail);
        }
        out
    }

    /// Adds this cache's member to `headers`' `Cache-Status`, after any members an upstream
    /// cache wrote (all its field lines, joined, kept as they are), in one field line.
    /// Upstream members longer than [`MAX_UPSTREAM_LEN`] in all are dropped.
    pub fn add_to(&self, name: &CacheName, headers: &mut HeaderMap) {
        let ours = self.member(name);
        if !headers.contains_key(CACHE_STATUS) {
            // The common case, a cache of our own answer: no copy of the member.
            let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(ours))
                .unwrap_or(HeaderValue::from_static("-"));
            headers.insert(CACHE_STATUS, value);
            return;
        }
        let mut value: Vec<u8> = Vec::new();
        let upstream: Vec<&[u8]> = headers
            .get_all(CACHE_STATUS)
            .iter()
            .map(|v| trim_ows(v.as_bytes()))
            .filter(|v| !v.is_empty())
            .collect();
        let upstream_len: usize = upstream.iter().map(|v| v.len() + 2).sum();
        if upstream_len <= MAX_UPSTREAM_LEN {
            for member in upstream {
                value.extend_from_slice(member);
                value.extend_from_slice(b", ");
            }
        }
        value.extend_from_slice(ours.as_bytes());
        let value = HeaderValue::from_bytes(&value)
            .or_else(|_| HeaderValue::from_str(&ours))
            .unwrap_or(HeaderValue::from_static("-"));
        headers.insert(CACHE_STATUS, value);
    }
}

/// A field line without the optional whitespace and list separators around it.
fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b',', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b','] = v {
        v = rest;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> CacheName {
        CacheName::new("edge-node").expect("a token")
    }

    #[test]
    fn members_read_as_in_the_product_contract() {
        assert_eq!(
            CacheStatus::hit(42).member(&name()),
            "edge-node; hit; ttl=42"
        );
        let stored = CacheStatus {
            stored: true,
            ..CacheStatus::forwarded(Fwd::UriMiss)
        };
        assert_eq!(stored.member(&name()), "edge-node; fwd=uri-miss; stored");
        let stale = CacheStatus {
            detail: Some("origin-down"),
            ..CacheStatus::hit(-30)
        };
        assert_eq!(
            stale.member(&name()),
            "edge-node; hit; ttl=-30; detail=origin-down"
        );
        let revalidated = CacheStatus {
            fwd_status: Some(304),
            ..CacheStatus::forwarded(Fwd::Stale)
        };
        assert_eq!(
            revalidated.member(&name()),
            "edge-node; fwd=stale; fwd-status=304"
        );
        let everything = CacheStatus {
            hit: false,
            fwd: Some(Fwd::VaryMiss),
            fwd_status: Some(200),
            ttl: Some(0),
            stored: true,
            collapsed: true,
            detail: Some("a detail with spaces \"quoted\""),
        };
        assert_eq!(
            everything.member(&name()),
            "edge-node; fwd=vary-miss; fwd-status=200; ttl=0; stored; collapsed; \
             detail=\"a detail with spaces \\\"quoted\\\"\""
        );
        assert_eq!(CacheStatus::default().member(&name()), "edge-node");
    }

    #[test]
    fn every_fwd_reason_is_its_rfc_9211_token() {
        let all = [
            (Fwd::UriMiss, "uri-miss"),
            (Fwd::VaryMiss, "vary-miss"),
            (Fwd::Miss, "miss"),
            (Fwd::Request, "request"),
            (Fwd::Stale, "stale"),
            (Fwd::Bypass, "bypass"),
            (Fwd::Method, "method"),
        ];
        for (fwd, token) in all {
            assert_eq!(fwd.as_str(), token);
            assert!(is_sf_token(token));
        }
    }

    #[test]
    fn names_are_tokens_and_those_sf_cannot_hold_as_tokens_are_quoted() {
        assert_eq!(
            CacheName::new("pi-7.site_3").map(|n| n.0),
            Ok("pi-7.site_3".into())
        );
        assert!(CacheName::new("").is_err());
        assert!(CacheName::new("has space").is_err());
        assert!(CacheName::new("semi;colon").is_err());
        assert!(CacheName::new("quote\"").is_err());
        assert!(CacheName::new("caf\u{e9}").is_err());
        assert!(CacheName::new("a\r\nSet-Cookie: x").is_err());
        assert!(CacheName::new(&"a".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(CacheName::new(&"a".repeat(MAX_NAME_LEN)).is_ok());
        let digit = CacheName::new("7node").expect("an RFC 9110 token");
        assert_eq!(CacheStatus::hit(1).member(&digit), "\"7node\"; hit; ttl=1");
    }

    #[test]
    fn our_member_goes_after_an_upstream_caches_members() {
        let mut headers = HeaderMap::new();
        headers.append(
            CACHE_STATUS,
            HeaderValue::from_static("OriginCache; hit; ttl=1100"),
        );
        headers.append(
            CACHE_STATUS,
            HeaderValue::from_static(" CDN; fwd=uri-miss, "),
        );
        CacheStatus::hit(5).add_to(&name(), &mut headers);
        let all: Vec<_> = headers.get_all(CACHE_STATUS).iter().collect();
        assert_eq!(
            all,
            ["OriginCache; hit; ttl=1100, CDN; fwd=uri-miss, edge-node; hit; ttl=5"]
        );

        let mut none = HeaderMap::new();
        CacheStatus::forwarded(Fwd::Bypass).add_to(&name(), &mut none);
        assert_eq!(
            none.get(CACHE_STATUS).map(HeaderValue::as_bytes),
            Some(&b"edge-node; fwd=bypass"[..])
        );
    }

    #[test]
    fn hostile_or_oversized_upstream_values_do_not_break_ours() {
        let mut odd = HeaderMap::new();
        odd.insert(
            CACHE_STATUS,
            HeaderValue::from_bytes(b"weird\xff;;; \"unterminated").expect("obs-text"),
        );
        CacheStatus::hit(1).add_to(&name(), &mut odd);
        assert_eq!(
            odd.get(CACHE_STATUS).map(HeaderValue::as_bytes),
            Some(&b"weird\xff;;; \"unterminated, edge-node; hit; ttl=1"[..]),
            "kept as it came, ours after it"
        );

        let mut huge = HeaderMap::new();
        let big = "x".repeat(MAX_UPSTREAM_LEN);
        huge.insert(CACHE_STATUS, HeaderValue::from_str(&big).expect("ascii"));
        CacheStatus::hit(1).add_to(&name(), &mut huge);
        assert_eq!(
            huge.get(CACHE_STATUS).map(HeaderValue::as_bytes),
            Some(&b"edge-node; hit; ttl=1"[..])
        );

        let mut blank = HeaderMap::new();
        blank.insert(CACHE_STATUS, HeaderValue::from_static(" , "));
        CacheStatus::hit(1).add_to(&name(), &mut blank);
        assert_eq!(
            blank.get(CACHE_STATUS).map(HeaderValue::as_bytes),
            Some(&b"edge-node; hit; ttl=1"[..])
        );
    }
}
