//! The route table: which route a request takes, by its host and path, and which target of
//! that route serves it.
//!
//! A [`Route`] matches a host, a path prefix, both, or neither (a catch-all), and sends its
//! requests to weighted [`Target`]s: a workload's port on this node's fleet, or a plain-HTTP
//! [`Origin`]. Routes declared for the same host and path prefix are one route whose targets
//! are the union of theirs: that is how two versions of a workload that expose the same host
//! and path, each with a weight, become a canary split.
//!
//! [`RouteTable::find`] picks, for a request:
//! 1. a route with a host over one without: a route naming the request's host wins, and the
//!    routes without a host serve what no route of that host matches;
//! 2. among those, the longest path prefix that matches on a segment boundary (`/api` matches
//!    `/api`, `/api/`, `/api/x` and `/api?q`, not `/apix`).
//!
//! Hosts are compared as [`normalize_host`] writes them: lower case, without a port or a
//! trailing dot, IPv6 literals bracketed in their canonical form. Paths are compared byte for
//! byte as the request sent them, without decoding `%xx` or resolving `..`: a prefix chooses a
//! backend, it is no access control.
//!
//! What operators write (host names, path prefixes, origin URLs) is validated where the config
//! is read (`edge_proto::field`); the table still refuses what it cannot match on, and no
//! input, from the config or a request, makes it panic. It never does I/O or reads the clock;
//! a weighted pick takes the caller's random draw.

use crate::proxy::balance::{Strategy, below_u64};
use edge_proto::field::shown;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::Ipv6Addr;
use std::time::Duration;

/// The longest host name, as DNS allows (253 characters, without the trailing dot).
pub const MAX_HOST_LEN: usize = 253;

/// Requests for one host and/or path prefix, and where they go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// What logs and metrics call the route, e.g. the workload that exposes it. In a merged
    /// route, the first declaration's.
    pub name: String,
    /// The host it serves (any host if `None`). In a [`RouteTable`], as [`normalize_host`]
    /// writes it.
    pub host: Option<String>,
    /// The path prefix it serves (any path if `None`). In a [`RouteTable`], without a trailing
    /// `/`; `/` alone is `None`.
    pub path_prefix: Option<String>,
    pub targets: Vec<WeightedTarget>,
    pub settings: RouteSettings,
}

/// A target and its share of a route's requests: `weight` over the sum of the route's
/// weights. A weight of 0 takes no requests (a version drained before it is removed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WeightedTarget {
    pub target: Target,
    pub weight: u32,
}

/// Where a route's requests go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A port of a workload's instances, wherever they run; the shell finds its backends.
    Workload { workload: String, port: u16 },
    /// A server outside the fleet, over plain HTTP.
    Origin(Origin),
}

/// A plain-HTTP origin server, as the config's validation parsed it from a URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// A host name, or an IP address (IPv6 with or without brackets).
    pub host: String,
    pub port: u16,
    /// The path the origin serves the route under, e.g. `/v1`; empty or `/` for its root.
    pub base_path: String,
}

impl Origin {
    /// `host:port` for the request's URI and `Host` header; an IPv6 address in brackets.
    pub fn authority(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The path and query to ask the origin for: the base path joined with the request's
    /// path and query by exactly one `/`. With base `/v1`: `/x?q` becomes `/v1/x?q`, `/`
    /// becomes `/v1/`, and an empty path (or a bare query) counts as `/`. The request's path
    /// is kept as sent, without decoding or resolving. A server-wide `OPTIONS *` stays `*`
    /// for an origin's root, and asks for the base path's root otherwise.
    pub fn target_path(&self, request_path_and_query: &str) -> String {
        let base = self.base_path.trim_end_matches('/');
        let mut out = String::with_capacity(base.len() + request_path_and_query.len() + 2);
        if !base.is_empty() && !base.starts_with('/') {
            out.push('/');
        }
        out.push_str(base);
        match request_path_and_query.as_bytes().first() {
            Some(b'/') => out.push_str(request_path_and_query),
            Some(b'*') if request_path_and_query == "*" => {
                if out.is_empty() {
                    out.push('*');
                } else {
                    out.push('/');
                }
            }
            _ => {
                out.push('/');
                out.push_str(request_path_and_query);
            }
        }
        out
    }
}

/// How a route's requests are handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSettings {
    /// How long one attempt may take, to the response's head.
    pub timeout: Duration,
    /// How many times a failed request may be tried again (within the retry budget).
    pub retries: u32,
    /// Whether responses may be cached.
    pub cache: bool,
    /// How long past its freshness a cached response may still be served while the backend
    /// cannot be reached; `None` never serves it stale for that.
    pub stale_if_offline: Option<Duration>,
    /// How the backends of a target share its requests.
    pub balance: Strategy,
}

impl Default for RouteSettings {
    /// 30 s timeout, 2 retries, cached, stale for up to 24 h while offline, peak-EWMA.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            retries: 2,
            cache: true,
            stale_if_offline: Some(Duration::from_secs(24 * 60 * 60)),
            balance: Strategy::default(),
        }
    }
}

impl Route {
    /// The target for a request, chosen by weight from `draw`, a uniformly random `u64`.
    /// `None` when no target has a weight above 0.
    pub fn pick(&self, draw: u64) -> Option<&WeightedTarget> {
        let total = self.total_weight();
        if total == 0 {
            return None;
        }
        let mut point = below_u64(draw, total);
        for target in &self.targets {
            let weight = u64::from(target.weight);
            if point < weight {
                return Some(target);
            }
            point -= weight;
        }
        // Unreachable: `point < total`, the sum of the weights walked above.
        None
    }

    /// The sum of the targets' weights.
    pub fn total_weight(&self) -> u64 {
        self.targets.iter().map(|t| u64::from(t.weight)).sum()
    }
}

/// Why a [`RouteTable`] could not be built. The operator's config is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// A route's host is not a host name (ASCII letters, digits, `-`, `_` and dots) or an IP
    /// address.
    #[error("route {route}: host {host} is not a host name or an IP address")]
    Host {
        /// The route's name, quoted and cut.
        route: String,
        /// The host, quoted and cut.
        host: String,
    },
    /// A route's path prefix does not start with `/`, or holds a query, a fragment, a space
    /// or a control character.
    #[error(
        "route {route}: path prefix {prefix} must start with '/' and hold no '?', '#', space or control character"
    )]
    PathPrefix {
        /// The route's name, quoted and cut.
        route: String,
        /// The prefix, quoted and cut.
        prefix: String,
    },
}

/// The routes of a node, merged and indexed for [`find`](Self::find). See the module docs.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Routes by host, each list longest prefix first.
    by_host: HashMap<String, Vec<usize>>,
    /// Routes without a host, longest prefix first.
    any_host: Vec<usize>,
}

impl RouteTable {
    /// The table for `routes`, in the order given. Hosts and prefixes are normalized (see
    /// [`Route`]); routes with the same host and prefix are merged into the first of them: its
    /// name and settings, and the union of their targets, where a target listed more than
    /// once has the sum of its weights.
    pub fn new(routes: Vec<Route>) -> Result<RouteTable, RouteError> {
        let mut merged: Vec<Route> = Vec::with_capacity(routes.len());
        let mut index: HashMap<(Option<String>, Option<String>), usize> = HashMap::new();
        for mut route in routes {
            route.host = match route.host.take() {
                None => None,
                Some(host) => Some(normalize_host(&host).ok_or_else(|| RouteError::Host {
                    route: shown(&route.name).to_string(),
                    host: shown(&host).to_string(),
                })?),
            };
            route.path_prefix = match route.path_prefix.take() {
                None => None,
                Some(prefix) => normalize_prefix(&prefix).map_err(|()| RouteError::PathPrefix {
                    route: shown(&route.name).to_string(),
                    prefix: shown(&prefix).to_string(),
                })?,
            };
            match index.entry((route.host.clone(), route.path_prefix.clone())) {
                Entry::Vacant(slot) => {
                    slot.insert(merged.len());
                    let targets = std::mem::take(&mut route.targets);
                    merged.push(route);
                    if let Some(first) = merged.last_mut() {
                        add_targets(first, targets);
                    }
                }
                Entry::Occupied(slot) => {
                    if let Some(first) = merged.get_mut(*slot.get()) {
                        add_targets(first, route.targets);
                    }
                }
            }
        }

        let mut by_host: HashMap<String, Vec<usize>> = HashMap::new();
        let mut any_host = Vec::new();
        for (i, route) in merged.iter().enumerate() {
            match &route.host {
                Some(host) => by_host.entry(host.clone()).or_default().push(i),
                None => any_host.push(i),
            }
        }
        let prefix_len = |i: &usize| {
            merged
                .get(*i)
                .and_then(|r| r.path_prefix.as_ref())
                .map_or(0, String::len)
        };
        // Longest first; each (host, prefix) is there once, so no two in a list tie on a
        // prefix that could match the same path.
        for list in by_host.values_mut().chain([&mut any_host]) {
            list.sort_by_key(|i| std::cmp::Reverse(prefix_len(i)));
        }
        Ok(RouteTable {
            routes: merged,
            by_host,
            any_host,
        })
    }

    /// The route for a request to `host` (a `Host` header's value or a URI's authority, as
    /// sent) and `path` (its origin-form path, with or without the query). A host that is not
    /// one ([`normalize_host`] says `None`) matches only routes without a host; a path that
    /// does not start with `/` (`*`) only routes without a prefix.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        // Routes by host are checked only when there are some: the host is copied to be
        // normalised.
        let for_host = host
            .filter(|_| !self.by_host.is_empty())
            .and_then(normalize_host)
            .and_then(|host| self.by_host.get(&host));
        for_host
            .into_iter()
            .flatten()
            .chain(&self.any_host)
            .filter_map(|&i| self.routes.get(i))
            .find(|route| {
                route
                    .path_prefix
                    .as_deref()
                    .is_none_or(|prefix| prefix_matches(prefix, path))
            })
    }

    /// Every route, merged, in the order first declared.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// Adds `targets` to `route`'s, summing the weights of a target it has already.
fn add_targets(route: &mut Route, targets: Vec<WeightedTarget>) {
    for new in targets {
        match route.targets.iter_mut().find(|t| t.target == new.target) {
            Some(known) => known.weight = known.weight.saturating_add(new.weight),
            None => route.targets.push(new),
        }
    }
}

/// `prefix` matches `path` on a segment boundary: `path` is `prefix` or continues it with `/`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let (prefix, path) = (prefix.as_bytes(), path.as_bytes());
    path.starts_with(prefix) && matches!(path.get(prefix.len()), None | Some(b'/'))
}

/// A prefix as the table keeps it: trailing `/`s removed, and `/` alone (every path) as
/// `None`.
fn normalize_prefix(prefix: &str) -> Result<Option<String>, ()> {
    let valid = prefix.starts_with('/')
        && !prefix
            .chars()
            .any(|c| c == '?' || c == '#' || c.is_whitespace() || c.is_control());
    if !valid {
        return Err(());
    }
    let trimmed = prefix.trim_end_matches('/');
    Ok((!trimmed.is_empty()).then(|| trimmed.to_owned()))
}

/// A `Host` header's value or a URI's authority in the form routes are compared in: lower
/// case, without the port or a trailing dot; an IPv6 address in brackets in its canonical
/// form (`[::1]`, from `[0:0::1]:8080` or a bare `::1` alike). `None` for anything that is
/// not a host name (ASCII letters, digits, `-` and `_` in dot-separated labels of at most 63,
/// [`MAX_HOST_LEN`] in all), an IPv4 address or a bracketed IPv6 address, with an optional
/// numeric port: user info, spaces, empty labels, zone ids and non-ASCII names (which go in
/// their `xn--` form) are refused.
pub fn normalize_host(raw: &str) -> Option<String> {
    // The longest valid form: a bracketed IPv6 address (at most 47 bytes), or a name with its
    // trailing dot, and `:65535`.
    if raw.is_empty() || raw.len() > MAX_HOST_LEN + 1 + 6 {
        return None;
    }
    if let Some(rest) = raw.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = inside.parse().ok()?;
        return valid_port(after).then(|| format!("[{ip}]"));
    }
    if raw.bytes().filter(|&b| b == b':').count() > 1 {
        // Only an IPv6 address has more than one colon; a Host header brackets it, a route
        // may not.
        let ip: Ipv6Addr = raw.parse().ok()?;
        return Some(format!("[{ip}]"));
    }
    let (name, port) = match raw.find(':') {
        Some(colon) => raw.split_at(colon),
        None => (raw, ""),
    };
    if !valid_port(port) {
        return None;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty()
        && name.len() <= MAX_HOST_LEN
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then(|| name.to_ascii_lowercase())
}

/// Empty, or `:` and a port number (`:` alone is allowed, as RFC 3986 allows it).
fn valid_port(s: &str) -> bool {
    match s.strip_prefix(':') {
        None => s.is_empty(),
        Some(digits) => {
            digits.is_empty()
                || (digits.len() <= 5
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && digits.parse::<u16>().is_ok())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest};

    fn workload(name: &str, weight: u32) -> WeightedTarget {
        WeightedTarget {
            target: Target::Workload {
                workload: name.into(),
                port: 8080,
            },
            weight,
        }
    }

    fn route(name: &str, host: Option<&str>, prefix: Option<&str>) -> Route {
        Route {
            name: name.into(),
            host: host.map(Into::into),
            path_prefix: prefix.map(Into::into),
            targets: vec![workload(name, 1)],
            settings: RouteSettings::default(),
        }
    }

    fn table(routes: Vec<Route>) -> RouteTable {
        RouteTable::new(routes).expect("valid routes")
    }

    fn found<'a>(table: &'a RouteTable, host: Option<&str>, path: &str) -> Option<&'a str> {
        table.find(host, path).map(|r| r.name.as_str())
    }

    #[test]
    fn hosts_are_normalized_for_comparison() {
        let cases = [
            ("Example.COM", Some("example.com")),
            ("example.com:8080", Some("example.com")),
            ("example.com.", Some("example.com")),
            ("example.com.:80", Some("example.com")),
            ("example.com:", Some("example.com")),
            ("my_host-1.local", Some("my_host-1.local")),
            ("10.0.0.1:80", Some("10.0.0.1")),
            ("[::1]:80", Some("[::1]")),
            ("[::1]", Some("[::1]")),
            ("[0:0:0:0::1]:8080", Some("[::1]")),
            ("[2001:DB8::1]", Some("[2001:db8::1]")),
            ("::1", Some("[::1]")),
            ("2001:db8::1", Some("[2001:db8::1]")),
            ("", None),
            (".", None),
            (":80", None),
            ("a..b", None),
            ("example.com..", None),
            ("user@example.com", None),
            ("example.com:http", None),
            ("example.com:65536", None),
            ("example.com:+80", None),
            ("example.com:80:80", None),
            ("exa mple.com", None),
            ("example.com\r\nX: y", None),
            ("bücher.example", None),
            ("[::1", None),
            ("[::1]x", None),
            ("[::1]:99999", None),
            ("[fe80::1%25eth0]", None),
            ("[1.2.3.4]", None),
            ("::1:80:", None),
            ("*.example.com", None),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_host(raw).as_deref(), want, "{raw:?}");
        }
        let label = "a".repeat(63);
        let long = [label.as_str(); 4].join(".");
        assert_eq!(long.len(), 255);
        assert_eq!(normalize_host(&long), None);
        assert!(normalize_host(&long[..MAX_HOST_LEN]).is_some());
        assert_eq!(normalize_host(&"a".repeat(64)), None, "a label of 64");
        assert_eq!(normalize_host(&"a.".repeat(1_000_000)), None);
    }

    #[test]
    fn a_route_with_the_host_beats_one_without_and_the_longest_prefix_wins() {
        let table = table(vec![
            route("catch-all", None, None),
            route("any-api", None, Some("/api")),
            route("site", Some("example.com"), None),
            route("site-api", Some("example.com"), Some("/api")),
            route("site-api-v2", Some("example.com"), Some("/api/v2/")),
            route("other", Some("other.example"), Some("/only")),
        ]);
        let cases = [
            (Some("example.com"), "/", "site"),
            (Some("EXAMPLE.com:443"), "/api", "site-api"),
            (Some("example.com."), "/api/", "site-api"),
            (Some("example.com"), "/api/x", "site-api"),
            (Some("example.com"), "/api?q=1", "site-api"),
            (Some("example.com"), "/api#top", "site-api"),
            (Some("example.com"), "/apix", "site"),
            (Some("example.com"), "/api/v2", "site-api-v2"),
            (Some("example.com"), "/api/v2/items?x", "site-api-v2"),
            (Some("example.com"), "/api/v20", "site-api"),
            // A host with routes, none of which matches the path: the hostless ones serve it.
            (Some("other.example"), "/only/x", "other"),
            (Some("other.example"), "/api/x", "any-api"),
            (Some("other.example"), "/elsewhere", "catch-all"),
            (Some("unknown.example"), "/api", "any-api"),
            (None, "/api", "any-api"),
            (Some("bad host!"), "/", "catch-all"),
            (Some("example.com"), "*", "site"),
            (None, "*", "catch-all"),
            (None, "", "catch-all"),
        ];
        for (host, path, want) in cases {
            assert_eq!(found(&table, host, path), Some(want), "{host:?} {path:?}");
        }
    }

    #[test]
    fn without_a_catch_all_an_unmatched_request_has_no_route() {
        let table = table(vec![
            route("site", Some("example.com"), Some("/app")),
            route("api", None, Some("/api")),
        ]);
        assert_eq!(found(&table, Some("example.com"), "/"), None);
        assert_eq!(found(&table, Some("example.org"), "/app"), None);
        assert_eq!(found(&table, None, "/ap"), None);
        assert_eq!(found(&table, None, "api"), None);
        assert!(RouteTable::new(Vec::new()).expect("empty").is_empty());
        assert_eq!(found(&RouteTable::default(), None, "/"), None);
    }

    #[test]
    fn a_root_prefix_is_a_catch_all_and_trailing_slashes_do_not_count() {
        let table = table(vec![
            route("root", None, Some("/")),
            route("any", None, None),
            route("api", None, Some("/api///")),
            route("api2", None, Some("/api")),
        ]);
        // `/` and no prefix are one route, as are `/api///` and `/api`.
        assert_eq!(table.routes().len(), 2);
        assert_eq!(found(&table, None, "/x"), Some("root"));
        let api = table.find(None, "/api/x").expect("api route");
        assert_eq!(api.name, "api");
        assert_eq!(api.path_prefix.as_deref(), Some("/api"));
        assert_eq!(api.targets, [workload("api", 1), workload("api2", 1)]);
    }

    #[test]
    fn versions_exposing_the_same_host_and_path_become_one_weighted_split() {
        let mut v1 = route("shop", Some("Shop.example"), Some("/"));
        v1.targets = vec![workload("shop-v1", 90)];
        let mut v2 = route("shop-canary", Some("shop.example."), None);
        v2.targets = vec![workload("shop-v2", 10)];
        v2.settings.timeout = Duration::from_secs(1);
        let table = table(vec![v1, v2]);
        assert_eq!(table.routes().len(), 1);
        let shop = table.find(Some("shop.example"), "/cart").expect("route");
        assert_eq!(shop.name, "shop", "the first declaration names it");
        assert_eq!(shop.settings, RouteSettings::default(), "and sets it");
        assert_eq!(
            shop.targets,
            [workload("shop-v1", 90), workload("shop-v2", 10)]
        );

        let mut rng = fastrand::Rng::with_seed(11);
        let draws = 100_000;
        let v2_share = (0..draws)
            .filter(|_| shop.pick(rng.u64(..)) == Some(&workload("shop-v2", 10)))
            .count();
        let share = v2_share as f64 / f64::from(draws);
        assert!((0.08..=0.12).contains(&share), "{share}");
    }

    #[test]
    fn a_target_declared_twice_adds_its_weights() {
        let mut a = route("a", None, Some("/x"));
        a.targets = vec![workload("w", 3), workload("w", u32::MAX)];
        let mut b = route("b", None, Some("/x"));
        b.targets = vec![workload("w", 2), workload("v", 1)];
        let table = table(vec![a, b]);
        let x = table.find(None, "/x").expect("route");
        assert_eq!(x.targets, [workload("w", u32::MAX), workload("v", 1)]);
    }

    #[test]
    fn weight_zero_is_never_picked_and_all_zero_picks_nothing() {
        let mut r = route("r", None, None);
        r.targets = vec![workload("a", 0), workload("b", 5), workload("c", 0)];
        for draw in [0, 1, u64::MAX / 2, u64::MAX] {
            assert_eq!(r.pick(draw), Some(&workload("b", 5)));
        }
        r.targets = vec![workload("a", 0), workload("c", 0)];
        assert_eq!(r.pick(7), None);
        r.targets.clear();
        assert_eq!(r.pick(7), None);

        // Huge weights do not overflow, and the edges of the draw land on the edges.
        r.targets = vec![workload("a", u32::MAX), workload("b", u32::MAX)];
        assert_eq!(r.pick(0), Some(&workload("a", u32::MAX)));
        assert_eq!(r.pick(u64::MAX), Some(&workload("b", u32::MAX)));
    }

    #[test]
    fn hosts_and_prefixes_the_table_cannot_match_on_are_refused() {
        for host in ["", "exa mple", "a/b", "[::1", "x".repeat(300).as_str()] {
            let err = RouteTable::new(vec![route("r", Some(host), None)]).expect_err(host);
            assert!(matches!(err, RouteError::Host { .. }), "{err}");
            assert!(err.to_string().len() < 200, "{err}");
        }
        for prefix in ["", "api", "/a?b", "/a#b", "/a b", "/a\nb", "*"] {
            let err = RouteTable::new(vec![route("r", None, Some(prefix))]).expect_err(prefix);
            assert!(matches!(err, RouteError::PathPrefix { .. }), "{err}");
        }
    }

    #[test]
    fn origin_authority_brackets_ipv6() {
        let origin = |host: &str| Origin {
            host: host.into(),
            port: 8080,
            base_path: String::new(),
        };
        assert_eq!(origin("example.com").authority(), "example.com:8080");
        assert_eq!(origin("10.0.0.1").authority(), "10.0.0.1:8080");
        assert_eq!(origin("::1").authority(), "[::1]:8080");
        assert_eq!(origin("[::1]").authority(), "[::1]:8080");
    }

    #[test]
    fn origin_target_path_joins_with_exactly_one_slash() {
        let at = |base: &str, request: &str| {
            Origin {
                host: "o".into(),
                port: 80,
                base_path: base.into(),
            }
            .target_path(request)
        };
        let cases = [
            ("", "/x?q=1", "/x?q=1"),
            ("/", "/x", "/x"),
            ("", "/", "/"),
            ("", "", "/"),
            ("", "?q", "/?q"),
            ("/v1", "/x?q", "/v1/x?q"),
            ("/v1/", "/x", "/v1/x"),
            ("/v1//", "/x/", "/v1/x/"),
            ("/v1", "/", "/v1/"),
            ("/v1", "", "/v1/"),
            ("/v1", "?q=/", "/v1/?q=/"),
            ("v1", "/x", "/v1/x"),
            ("/v1", "x", "/v1/x"),
            ("/v1", "//x", "/v1//x"),
            ("", "*", "*"),
            ("/v1", "*", "/v1/"),
            ("/v1", "*x", "/v1/*x"),
        ];
        for (base, request, want) in cases {
            assert_eq!(at(base, request), want, "{base:?} + {request:?}");
        }
    }

    #[test]
    fn settings_have_the_documented_defaults() {
        let s = RouteSettings::default();
        assert_eq!(s.timeout, Duration::from_secs(30));
        assert_eq!(s.retries, 2);
        assert!(s.cache);
        assert_eq!(s.stale_if_offline, Some(Duration::from_secs(86_400)));
        assert_eq!(s.balance, Strategy::PeakEwma);
    }

    proptest! {
        #[test]
        fn normalizing_a_normalized_host_changes_nothing(raw in "\\PC{0,40}|[a-zA-Z0-9.:\\[\\]_-]{0,40}") {
            if let Some(host) = normalize_host(&raw) {
                prop_assert_eq!(normalize_host(&host), Some(host.clone()));
                prop_assert!(!host.ends_with('.'));
                prop_assert!(!host.bytes().any(|b| b.is_ascii_uppercase()));
            }
        }

        #[test]
        fn find_never_panics_and_returns_the_longest_matching_prefix(
            prefixes in proptest::collection::vec("/[a-c/]{0,6}", 0..8),
            host in proptest::option::of("\\PC{0,20}"),
            path in "\\PC{0,12}|/[a-c/?]{0,10}",
        ) {
            let routes: Vec<Route> = prefixes
                .iter()
                .enumerate()
                .map(|(i, p)| route(&i.to_string(), None, Some(p)))
                .collect();
            let table = table(routes);
            let bare = path.split(['?', '#']).next().unwrap_or(&path);
            let longest = table
                .routes()
                .iter()
                .filter(|r| r.path_prefix.as_deref().is_none_or(|p| prefix_matches(p, bare)))
                .map(|r| r.path_prefix.as_ref().map_or(0, String::len))
                .max();
            let got = table.find(host.as_deref(), &path);
            prop_assert_eq!(got.map(|r| r.path_prefix.as_ref().map_or(0, String::len)), longest);
        }

        #[test]
        fn pick_only_returns_targets_with_weight(
            weights in proptest::collection::vec(0u32..4, 0..6),
            draw in any::<u64>(),
        ) {
            let mut r = route("r", None, None);
            r.targets = weights.iter().enumerate().map(|(i, &w)| workload(&i.to_string(), w)).collect();
            match r.pick(draw) {
                Some(t) => prop_assert!(t.weight > 0),
                None => prop_assert!(weights.iter().all(|&w| w == 0)),
            }
        }
    }
}
