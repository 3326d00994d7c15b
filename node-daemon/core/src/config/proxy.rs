//! The `[proxy]` table: where the node's caching reverse proxy listens, how much it takes on,
//! how much it caches, and the static origins it forwards to (`[[proxy.upstream]]`). A config
//! without the table has no proxy.
//!
//! ```toml
//! [proxy]
//! listen = "0.0.0.0:80"
//! peer_listen = "0.0.0.0:8443"      # other nodes reach this node's workloads here (mTLS)
//! stale_if_offline_secs = 86400      # serve a cached answer this long while its origin is down
//! prewarm = true                     # start workloads that scale to zero before their requests
//! prewarm_threshold_percent = 50     # ... when a request within a minute is at least this likely
//! [proxy.cache]
//! memory_bytes = 8388608
//! disk_bytes = 268435456             # 0: no disk store
//! [[proxy.upstream]]
//! origin = "http://10.0.0.5:8080/static"
//! host = "shop.example.com"          # and/or path_prefix = "/static"
//! ```
//!
//! Hosts, path prefixes, origin URLs and the bounds of a route's settings are
//! [`edge_proto::field`]'s, the rules a workload's `[[expose]]` follows too. A workload's
//! routes come with its assignment, not from here.
//!
//! `peer_listen` is where other nodes of the fleet send requests for the workloads this node
//! runs, over TLS with the fleet's node certificates; without it the node neither serves
//! peers nor tells the orchestrator it could. Peers are told the address
//! [`advertised_peer_addr`] gives: `peer_listen` itself, or, for an unspecified IP
//! (`0.0.0.0`, `::`), `orchestrator.local_address`; with neither, no address is advertised.

use super::error::{ConfigError, invalid};
use super::raw::{RawProxy, RawProxyCache, RawUpstream};
use crate::spec::Balance;
use edge_proto::field::{
    self, DEFAULT_ROUTE_RETRIES, DEFAULT_ROUTE_TIMEOUT_SECS, DEFAULT_STALE_IF_OFFLINE_SECS,
    FieldPath, OriginUrl, ROUTE_RETRIES, ROUTE_TIMEOUT_SECS, STALE_IF_OFFLINE_SECS, shown,
};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

/// The most `[[proxy.upstream]]` tables.
pub const MAX_UPSTREAMS: usize = 64;
/// `max_connections` when the table leaves it out, and its bounds.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
const MAX_CONNECTIONS: RangeInclusive<i64> = 1..=65_536;
/// `header_timeout_secs` when the table leaves it out, and its bounds.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT_SECS: RangeInclusive<i64> = 1..=300;
/// `max_body_bytes` when the table leaves it out (16 MiB), and its bounds.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 16 << 20;
const MAX_BODY_BYTES: RangeInclusive<i64> = 1..=1 << 40;
/// `[proxy.cache]`'s sizes when left out: 8 MiB in memory, 256 MiB on disk, 8 MiB at most
/// per answer.
pub const DEFAULT_CACHE_MEMORY_BYTES: u64 = 8 << 20;
pub const DEFAULT_CACHE_DISK_BYTES: u64 = 256 << 20;
pub const DEFAULT_CACHE_MAX_OBJECT_BYTES: u64 = 8 << 20;
const CACHE_MEMORY_BYTES: RangeInclusive<i64> = 0..=1 << 40;
const CACHE_DISK_BYTES: RangeInclusive<i64> = 0..=16 << 40;
const CACHE_MAX_OBJECT_BYTES: RangeInclusive<i64> = 1..=1 << 40;
/// `route_samples_interval_secs` when the table leaves it out, and its bounds (0: off). Each
/// window with attempts is one small write to the outbox.
pub const DEFAULT_ROUTE_SAMPLES_INTERVAL_SECS: u32 = 60;
const ROUTE_SAMPLES_INTERVAL_SECS: RangeInclusive<i64> = 0..=86_400;
/// `prewarm_threshold_percent` when the table leaves it out, and its bounds: 0 and 100
/// would wake every workload at every tick, or none ever (`prewarm = false` says that).
pub const DEFAULT_PREWARM_THRESHOLD_PERCENT: u8 = 50;
const PREWARM_THRESHOLD_PERCENT: RangeInclusive<i64> = 1..=99;

/// The node's proxy, as the `[proxy]` table sets it. Built only by validation, so every value
/// is within the bounds its accessor states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    listen: SocketAddr,
    peer_listen: Option<SocketAddr>,
    stale_if_offline_secs: u32,
    max_connections: u32,
    header_timeout: Duration,
    max_body_bytes: u64,
    route_samples_interval_secs: u32,
    prewarm: bool,
    prewarm_threshold_percent: u8,
    cache: ProxyCache,
    upstreams: Vec<Upstream>,
}

/// `[proxy.cache]`: how much the proxy keeps. `max_object_bytes` fits the larger store
/// unless both are 0, which turns the cache off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyCache {
    /// In memory; 0: none.
    pub memory_bytes: u64,
    /// On disk, under the data dir; 0: no disk store.
    pub disk_bytes: u64,
    /// The largest answer kept; a larger one passes through uncached.
    pub max_object_bytes: u64,
}

/// One `[[proxy.upstream]]`: requests for `host` (any host when `None`) whose path starts with
/// `path_prefix` (any path when `None`; never both `None`) go to `origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Upstream {
    pub origin: OriginUrl,
    /// As [`field::check_host`] returns it: lower case, or a canonical IP address.
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    /// How long one attempt may take, to the answer's head: 1 to 3600, default 30.
    pub timeout_secs: u32,
    /// How many times a failed idempotent request is tried again: 0 to 10, default 2.
    pub retries: u8,
    /// Whether answers may be cached; default yes.
    pub cache: bool,
    /// How long a cached answer may be served stale while the origin is down; 0: never.
    /// Default: the `[proxy]` table's.
    pub stale_if_offline_secs: u32,
    pub balance: Balance,
}

impl ProxyConfig {
    /// Where the proxy serves. Port 0 (tests) takes any free port.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// Where other nodes reach this node's workloads over mutual TLS; `None`: no peer
    /// listener, and no address advertised. Never the port of `listen` or `status_listen`
    /// on an overlapping address. Port 0 (tests) takes any free port.
    pub fn peer_listen(&self) -> Option<SocketAddr> {
        self.peer_listen
    }

    /// How long a cached answer may be served stale while its origin is down, unless an
    /// upstream or a workload's route says otherwise; 0: never. Default a day.
    pub fn stale_if_offline_secs(&self) -> u32 {
        self.stale_if_offline_secs
    }

    /// Client connections at once: 1 to 65536, default 1024.
    pub fn max_connections(&self) -> u32 {
        self.max_connections
    }

    /// How long a client has to send a request's head: 1 to 300 s, default 10 s.
    pub fn header_timeout(&self) -> Duration {
        self.header_timeout
    }

    /// The largest request body taken: up to 1 TiB, default 16 MiB.
    pub fn max_body_bytes(&self) -> u64 {
        self.max_body_bytes
    }

    /// How often a sample of the proxy's attempts (at most eight, with their backends'
    /// routing features) goes into the outbox, for training routing models; `None`: never
    /// (`route_samples_interval_secs = 0`). Up to a day, default a minute.
    pub fn route_samples_interval(&self) -> Option<Duration> {
        (self.route_samples_interval_secs > 0)
            .then(|| Duration::from_secs(u64::from(self.route_samples_interval_secs)))
    }

    /// Whether workloads that scale to zero are started before the requests the warming
    /// model expects, and kept up past `idle_secs` while it expects one (`prewarm`, default
    /// on: in the simulation, a quarter fewer cold starts for a twelfth more memory). Off:
    /// started by a request only, asleep after `idle_secs`.
    pub fn prewarm(&self) -> bool {
        self.prewarm
    }

    /// The probability of a request within the next minute at which pre-warming starts a
    /// workload or keeps it up, in percent: 1 to 99, default 50. Lower: fewer cold starts,
    /// more memory.
    pub fn prewarm_threshold_percent(&self) -> u8 {
        self.prewarm_threshold_percent
    }

    pub fn cache(&self) -> ProxyCache {
        self.cache
    }

    /// The static origins, at most [`MAX_UPSTREAMS`], in the order the file gives them; no two
    /// match the same host and path prefix.
    pub fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }
}

impl ProxyCache {
    /// Whether anything is cached at all.
    pub fn enabled(&self) -> bool {
        self.memory_bytes > 0 || self.disk_bytes > 0
    }
}

impl Upstream {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.into())
    }

    /// How long a cached answer may be served stale; `None` when never.
    pub fn stale_if_offline(&self) -> Option<Duration> {
        (self.stale_if_offline_secs > 0)
            .then(|| Duration::from_secs(self.stale_if_offline_secs.into()))
    }
}

/// Where peers are told to reach this node's peer listener, bound at `bound`: `bound` itself,
/// or for an unspecified IP (`0.0.0.0`, `::`) the node's `local_address` on `bound`'s port.
/// `None` when the IP is unspecified and the node has no local address, or when that address
/// is one `bound` does not listen on (IPv6 behind `0.0.0.0`): advertising an address nobody
/// answers on would only send peers' requests into a timeout.
pub fn advertised_peer_addr(
    bound: SocketAddr,
    local_address: Option<IpAddr>,
) -> Option<SocketAddr> {
    if !bound.ip().is_unspecified() {
        return Some(bound);
    }
    let local = local_address.filter(|ip| !ip.is_unspecified())?;
    let reachable = match bound.ip() {
        IpAddr::V4(_) => local.is_ipv4(),
        // A `::` listener takes IPv4 too (dual stack, Linux's default).
        IpAddr::V6(_) => true,
    };
    reachable.then(|| SocketAddr::new(local, bound.port()))
}

/// Whether two listeners would fight for one socket: the same port on the same address or on
/// an unspecified one. Port 0 takes a free port, which never clashes.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The `[proxy]` table as the node uses it. `status_listen` is the status endpoint's address,
/// which the proxy must not share; `local_address` is what an unspecified `peer_listen` is
/// advertised as.
pub(super) fn validate_proxy(
    raw: RawProxy,
    status_listen: Option<SocketAddr>,
    local_address: Option<IpAddr>,
) -> Result<ProxyConfig, ConfigError> {
    let at = FieldPath::new("proxy");
    let listen_at = at.field("listen");
    let listen: SocketAddr = raw.listen.parse().map_err(|_| {
        invalid(
            listen_at.clone(),
            format!("{} is not IP:port, e.g. 0.0.0.0:80", shown(&raw.listen)),
        )
    })?;
    if let Some(status) = status_listen
        && clash(listen, status)
    {
        return Err(invalid(
            listen_at,
            format!("{listen} is where status_listen ({status}) serves; give each its own port"),
        ));
    }
    let peer_listen = raw
        .peer_listen
        .map(|a| {
            validate_peer_listen(
                &at.field("peer_listen"),
                &a,
                listen,
                status_listen,
                local_address,
            )
        })
        .transpose()?;
    let stale_if_offline_secs = number(
        &at.field("stale_if_offline_secs"),
        raw.stale_if_offline_secs,
        &STALE_IF_OFFLINE_SECS,
        DEFAULT_STALE_IF_OFFLINE_SECS,
    )?;
    let max_connections = number(
        &at.field("max_connections"),
        raw.max_connections,
        &MAX_CONNECTIONS,
        DEFAULT_MAX_CONNECTIONS,
    )?;
    let header_timeout_secs: u64 = number(
        &at.field("header_timeout_secs"),
        raw.header_timeout_secs,
        &HEADER_TIMEOUT_SECS,
        DEFAULT_HEADER_TIMEOUT.as_secs(),
    )?;
    let route_samples_interval_secs: u32 = number(
        &at.field("route_samples_interval_secs"),
        raw.route_samples_interval_secs,
        &ROUTE_SAMPLES_INTERVAL_SECS,
        DEFAULT_ROUTE_SAMPLES_INTERVAL_SECS,
    )?;
    let prewarm_threshold_percent: u8 = number(
        &at.field("prewarm_threshold_percent"),
        raw.prewarm_threshold_percent,
        &PREWARM_THRESHOLD_PERCENT,
        DEFAULT_PREWARM_THRESHOLD_PERCENT,
    )?;
    let max_body_bytes = number(
        &at.field("max_body_bytes"),
        raw.max_body_bytes,
        &MAX_BODY_BYTES,
        DEFAULT_MAX_BODY_BYTES,
    )?;
    let cache = validate_cache(&at.field("cache"), raw.cache)?;
    let upstreams = validate_upstreams(
        &at.field("upstream"),
        raw.upstream.unwrap_or_default(),
        stale_if_offline_secs,
    )?;
    Ok(ProxyConfig {
        listen,
        peer_listen,
        stale_if_offline_secs,
        max_connections,
        header_timeout: Duration::from_secs(header_timeout_secs),
        max_body_bytes,
        route_samples_interval_secs,
        prewarm: raw.prewarm.unwrap_or(true),
        prewarm_threshold_percent,
        cache,
        upstreams,
    })
}

fn validate_peer_listen(
    at: &FieldPath,
    raw: &str,
    listen: SocketAddr,
    status_listen: Option<SocketAddr>,
    local_address: Option<IpAddr>,
) -> Result<SocketAddr, ConfigError> {
    let peer: SocketAddr = raw.parse().map_err(|_| {
        invalid(
            at.clone(),
            format!("{} is not IP:port, e.g. 0.0.0.0:8443", shown(raw)),
        )
    })?;
    if clash(peer, listen) {
        return Err(invalid(
            at.clone(),
            format!("{peer} is where proxy.listen ({listen}) serves; give each its own port"),
        ));
    }
    if let Some(status) = status_listen
        && clash(peer, status)
    {
        return Err(invalid(
            at.clone(),
            format!("{peer} is where status_listen ({status}) serves; give each its own port"),
        ));
    }
    if let Some(local) = local_address
        && peer.ip() == IpAddr::from([0, 0, 0, 0])
        && local.is_ipv6()
        && !local.is_unspecified()
    {
        return Err(invalid(
            at.clone(),
            format!(
                "{peer} does not listen on orchestrator.local_address ({local}), the address \
                 peers would be told; listen on [::] or on {local} itself"
            ),
        ));
    }
    Ok(peer)
}

fn validate_cache(at: &FieldPath, raw: Option<RawProxyCache>) -> Result<ProxyCache, ConfigError> {
    let raw = raw.unwrap_or(RawProxyCache {
        memory_bytes: None,
        disk_bytes: None,
        max_object_bytes: None,
    });
    let cache = ProxyCache {
        memory_bytes: number(
            &at.field("memory_bytes"),
            raw.memory_bytes,
            &CACHE_MEMORY_BYTES,
            DEFAULT_CACHE_MEMORY_BYTES,
        )?,
        disk_bytes: number(
            &at.field("disk_bytes"),
            raw.disk_bytes,
            &CACHE_DISK_BYTES,
            DEFAULT_CACHE_DISK_BYTES,
        )?,
        max_object_bytes: number(
            &at.field("max_object_bytes"),
            raw.max_object_bytes,
            &CACHE_MAX_OBJECT_BYTES,
            DEFAULT_CACHE_MAX_OBJECT_BYTES,
        )?,
    };
    let largest = cache.memory_bytes.max(cache.disk_bytes);
    if cache.enabled() && cache.max_object_bytes > largest {
        let default = if raw.max_object_bytes.is_none() {
            " (the default)"
        } else {
            ""
        };
        return Err(invalid(
            at.field("max_object_bytes"),
            format!(
                "{}{default} is more than either store holds (memory_bytes {}, disk_bytes {})",
                cache.max_object_bytes, cache.memory_bytes, cache.disk_bytes
            ),
        ));
    }
    Ok(cache)
}

fn validate_upstreams(
    list: &FieldPath,
    raw: Vec<RawUpstream>,
    default_stale_secs: u32,
) -> Result<Vec<Upstream>, ConfigError> {
    field::check_count(list, raw.len(), MAX_UPSTREAMS, "upstreams")?;
    let mut out: Vec<Upstream> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let at = list.index(i);
        let origin = field::check_origin_url(&at.field("origin"), &r.origin)?;
        let host = r
            .host
            .map(|h| field::check_host(&at.field("host"), &h))
            .transpose()?;
        let path_prefix = r
            .path_prefix
            .map(|p| field::check_path_prefix(&at.field("path_prefix"), &p).map(|()| p))
            .transpose()?;
        if host.is_none() && path_prefix.is_none() {
            return Err(invalid(
                at,
                "give host, path_prefix or both: what the upstream serves",
            ));
        }
        if let Some(j) = out
            .iter()
            .position(|u| u.host == host && u.path_prefix == path_prefix)
        {
            return Err(invalid(
                at,
                format!("matches the same host and path_prefix as proxy.upstream[{j}]"),
            ));
        }
        let balance = match r.balance {
            None => Balance::default(),
            Some(b) => Balance::parse(&b).ok_or_else(|| {
                invalid(
                    at.field("balance"),
                    format!(
                        "{} is not a balance; use peak-ewma, round-robin or least-requests",
                        shown(&b)
                    ),
                )
            })?,
        };
        out.push(Upstream {
            timeout_secs: number(
                &at.field("timeout_secs"),
                r.timeout_secs,
                &ROUTE_TIMEOUT_SECS,
                DEFAULT_ROUTE_TIMEOUT_SECS,
            )?,
            retries: number(
                &at.field("retries"),
                r.retries,
                &ROUTE_RETRIES,
                DEFAULT_ROUTE_RETRIES,
            )?,
            stale_if_offline_secs: number(
                &at.field("stale_if_offline_secs"),
                r.stale_if_offline_secs,
                &STALE_IF_OFFLINE_SECS,
                default_stale_secs,
            )?,
            cache: r.cache.unwrap_or(true),
            origin,
            host,
            path_prefix,
            balance,
        });
    }
    Ok(out)
}

/// `v` within `range`, or `default` when the file leaves it out. Every range given here fits
/// the type asked for.
fn number<T: TryFrom<i64>>(
    path: &FieldPath,
    v: Option<i64>,
    range: &RangeInclusive<i64>,
    default: T,
) -> Result<T, ConfigError> {
    let Some(v) = v else {
        return Ok(default);
    };
    if !range.contains(&v) {
        return Err(invalid(
            path.clone(),
            format!("{v} is out of range {}..={}", range.start(), range.end()),
        ));
    }
    T::try_from(v).map_err(|_| {
        invalid(
            path.clone(),
            format!("{v} is out of range {}..={}", range.start(), range.end()),
        )
    })
}
