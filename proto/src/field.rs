//! Field paths, field errors, and the rules for what operators name things.
//!
//! The node's config file and the orchestrator's workload spec are checked the same way: every
//! error names the field at fault by its path, as the file would write it (`labels."bad key"`,
//! `requirements.near.lat`, `args[3]`), and quotes at most [`SHOWN_CHARS`] characters of what
//! the user wrote, escaped, so that a hostile value can neither flood a log nor forge a line in
//! it. [`FieldPath`] builds such paths, [`FieldError`] carries one with its message, and
//! [`shown`] quotes a user's string.
//!
//! The rules for names, labels and coordinates live here once, and their bounds are the wire's:
//! [`MAX_NAME_LEN`], [`Label::MAX_KEY_LEN`], [`Label::MAX_VALUE_BYTES`],
//! [`Capabilities::MAX_LABELS`], [`Location::MAX_LAT`] and [`Location::MAX_LON`] are the
//! capacities of the fields that carry these values. So a value that passes a rule reaches the
//! peer whole, never cut to fit.
//!
//! So do the rules for the proxy's routes, which a workload's `[[expose]]` and a node's
//! `[[proxy.upstream]]` share: [`check_host`], [`check_path_prefix`], [`check_origin_url`],
//! and the bounds and defaults of a route's settings ([`ROUTE_WEIGHT`], [`ROUTE_TIMEOUT_SECS`],
//! [`ROUTE_RETRIES`], [`STALE_IF_OFFLINE_SECS`], [`SCALE_TO_ZERO_IDLE_SECS`]), each within the
//! wire type that carries it ([`Expose`]).
//!
//! Like the rest of the crate this is `no_std` + `alloc` and does no I/O. Paths and messages are
//! only built when a check fails.

use alloc::format;
use alloc::string::{String, ToString};
use core::fmt;
use core::net::{Ipv4Addr, Ipv6Addr};
use core::ops::RangeInclusive;

use crate::msg::{Assignment, Capabilities, Expose, Label, Location};

pub use crate::msg::MAX_NAME_LEN;

/// How many characters of a user's string an error may quote.
pub const SHOWN_CHARS: usize = 40;

/// The most labels a node carries, and a workload may require.
pub const MAX_LABELS: usize = Capabilities::MAX_LABELS;
/// The longest label key, in characters (keys are ASCII).
pub const MAX_LABEL_KEY_LEN: usize = Label::MAX_KEY_LEN;
/// The longest label value, in bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = Label::MAX_VALUE_BYTES;

/// The longest host name a route matches (RFC 1123), in bytes.
pub const MAX_HOST_LEN: usize = Expose::MAX_HOST_LEN;
/// The longest path prefix a route matches, and the longest base path of an origin, in bytes.
pub const MAX_PATH_PREFIX_BYTES: usize = Expose::MAX_PATH_PREFIX_BYTES;
/// The most `[[expose]]` routes of one workload.
pub const MAX_EXPOSE: usize = Assignment::MAX_EXPOSE;
/// The longest origin URL: `http://`, a bracketed IPv6 address or a host name, a port and a
/// base path, each at its longest.
pub const MAX_ORIGIN_URL_BYTES: usize =
    "http://".len() + MAX_HOST_LEN + "[]:65535".len() + MAX_PATH_PREFIX_BYTES;

/// A route's share among the workloads that expose the same host and path prefix.
pub const ROUTE_WEIGHT: RangeInclusive<i64> = 0..=1000;
pub const DEFAULT_ROUTE_WEIGHT: u16 = 100;
/// How long one attempt through a route may take, in seconds.
pub const ROUTE_TIMEOUT_SECS: RangeInclusive<i64> = 1..=3600;
pub const DEFAULT_ROUTE_TIMEOUT_SECS: u32 = 30;
/// How many times a failed idempotent request is tried again.
pub const ROUTE_RETRIES: RangeInclusive<i64> = 0..=10;
pub const DEFAULT_ROUTE_RETRIES: u8 = 2;
/// How long a cached answer may be served stale while its origin is down, in seconds; 0 turns
/// it off. At most a year: a node may be cut off for weeks, and its shop still open.
pub const STALE_IF_OFFLINE_SECS: RangeInclusive<i64> = 0..=365 * 86_400;
pub const DEFAULT_STALE_IF_OFFLINE_SECS: u32 = 86_400;
/// How long a workload scaled to zero may sit idle before it is stopped, in seconds.
pub const SCALE_TO_ZERO_IDLE_SECS: RangeInclusive<i64> = 1..=86_400;
/// The names of the balancing strategies, as operators write them; the first is the default.
pub const BALANCE_NAMES: [&str; 3] = ["peak-ewma", "round-robin", "least-requests"];

/// A user's string as an error message may quote it: Debug-escaped, so a newline shows as `\n`
/// and cannot start a forged log line, and cut after [`SHOWN_CHARS`] characters with `…`.
pub fn shown(s: &str) -> Shown<'_> {
    shown_max(s, SHOWN_CHARS)
}

/// [`shown`], cut after `max_chars` characters.
pub fn shown_max(s: &str, max_chars: usize) -> Shown<'_> {
    let end = s.char_indices().nth(max_chars).map_or(s.len(), |(i, _)| i);
    Shown {
        head: &s[..end],
        cut: end < s.len(),
    }
}

/// What [`shown`] returns: formats as the quoted, escaped, cut string.
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a> {
    head: &'a str,
    cut: bool,
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.head, f)?;
        if self.cut {
            f.write_str("…")?;
        }
        Ok(())
    }
}

/// Where a field sits in a document, written as TOML would: `location.lat`, `labels."bad key"`,
/// `args[3]`. Map keys chosen by the user are quoted with [`shown`] unless they are short bare
/// keys, so a path never carries more than [`SHOWN_CHARS`] characters of any one of them.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldPath(String);

impl FieldPath {
    /// The document itself, for an error about no field in particular.
    pub const fn root() -> Self {
        Self(String::new())
    }

    /// A field named by the program: `name`, or a nested one at once, `location.lat`.
    pub fn new(name: &str) -> Self {
        Self(name.into())
    }

    /// The field `name` of this one: `location` and `lat` make `location.lat`.
    pub fn field(&self, name: &str) -> Self {
        if self.is_root() {
            Self::new(name)
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    /// The entry `key` of this map: `labels.site`, or `labels."example.com/zone"` when the key
    /// is not a bare TOML key (or is too long to show whole).
    pub fn key(&self, key: &str) -> Self {
        let bare = !key.is_empty()
            && key.chars().count() <= SHOWN_CHARS
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let key = if bare {
            String::from(key)
        } else {
            format!("{}", shown(key))
        };
        self.field(&key)
    }

    /// The item at `index` of this list: `args` and 3 make `args[3]`.
    pub fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the document itself rather than a field in it.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FieldPath({})", self.0)
    }
}

impl From<&str> for FieldPath {
    fn from(name: &str) -> Self {
        Self::new(name)
    }
}

impl PartialEq<str> for FieldPath {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for FieldPath {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A field whose value is not acceptable, and why. Shown as `path: message`, or the message
/// alone for the document itself. Never worth retrying unchanged: the user has to fix the
/// value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    path: FieldPath,
    message: String,
}

impl FieldError {
    /// `message` says what is wrong with the value; it quotes the user's input only through
    /// [`shown`].
    pub fn new(path: impl Into<FieldPath>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The field at fault.
    pub fn path(&self) -> &FieldPath {
        &self.path
    }

    /// What is wrong with its value.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_root() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl core::error::Error for FieldError {}

/// A list or map at `path` has `count` entries; at most `max` are allowed. `what` names the
/// entries in the plural: "33 labels; at most 32 are allowed".
pub fn check_count(
    path: &FieldPath,
    count: usize,
    max: usize,
    what: &str,
) -> Result<(), FieldError> {
    if count > max {
        return Err(FieldError::new(
            path.clone(),
            format!("{count} {what}; at most {max} are allowed"),
        ));
    }
    Ok(())
}

/// A node's or a workload's name, unique in the fleet: a DNS label, 1 to [`MAX_NAME_LEN`] of
/// `[a-z0-9-]`, not starting or ending with `-`.
pub fn check_name(path: &FieldPath, name: &str) -> Result<(), FieldError> {
    let invalid = |message: String| FieldError::new(path.clone(), message);
    if name.is_empty() {
        return Err(invalid("must not be empty".into()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(invalid(format!(
            "{} contains {c:?}; use lowercase letters, digits and '-'",
            shown(name)
        )));
    }
    // ASCII only from here on, so bytes are characters.
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "is {} characters long; at most {MAX_NAME_LEN} are allowed",
            name.len()
        )));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(invalid(format!(
            "{} must not start or end with '-'",
            shown(name)
        )));
    }
    Ok(())
}

/// A set of labels at `path` (a map of key to value): at most [`MAX_LABELS`], each as
/// [`check_label`] wants it. Errors about one label name its entry, `labels."bad key"`.
pub fn check_labels<K, V>(
    path: &FieldPath,
    labels: impl ExactSizeIterator<Item = (K, V)>,
) -> Result<(), FieldError>
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    check_count(path, labels.len(), MAX_LABELS, "labels")?;
    for (key, value) in labels {
        check_label(path, key.as_ref(), value.as_ref())?;
    }
    Ok(())
}

/// One label of the set at `labels`: see [`check_label_key`] and [`check_label_value`].
pub fn check_label(labels: &FieldPath, key: &str, value: &str) -> Result<(), FieldError> {
    let entry = || labels.key(key);
    check_label_key(key).map_err(|message| FieldError::new(entry(), message))?;
    check_label_value(value).map_err(|message| FieldError::new(entry(), message))
}

/// A label key: 1 to [`MAX_LABEL_KEY_LEN`] letters, digits and `. _ / -`, so that
/// `example.com/zone` works. Returns the reason on failure; the caller knows the path.
pub fn check_label_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the key must not be empty".into());
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-')))
    {
        return Err(format!(
            "the key contains {c:?}; use letters, digits and . _ / -"
        ));
    }
    // ASCII only from here on, so bytes are characters.
    if key.len() > MAX_LABEL_KEY_LEN {
        return Err(format!(
            "the key is {} characters long; at most {MAX_LABEL_KEY_LEN} are allowed",
            key.len()
        ));
    }
    Ok(())
}

/// A label value: at most [`MAX_LABEL_VALUE_BYTES`] bytes of any text without control
/// characters; empty is allowed. Returns the reason on failure.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_LABEL_VALUE_BYTES {
        return Err(format!(
            "the value is {} bytes long; at most {MAX_LABEL_VALUE_BYTES} are allowed",
            value.len()
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(format!("the value contains the control character {c:?}"));
    }
    Ok(())
}

/// A number that must be finite: not NaN, not infinite (TOML can write both).
pub fn check_finite(path: &FieldPath, v: f64) -> Result<f64, FieldError> {
    if !v.is_finite() {
        return Err(FieldError::new(
            path.clone(),
            format!("{v} is not a finite number"),
        ));
    }
    Ok(v)
}

/// A latitude in WGS84 degrees: finite, within ±[`Location::MAX_LAT`].
pub fn check_latitude(path: &FieldPath, v: f64) -> Result<f64, FieldError> {
    check_coordinate(path, v, Location::MAX_LAT)
}

/// A longitude in WGS84 degrees: finite, within ±[`Location::MAX_LON`].
pub fn check_longitude(path: &FieldPath, v: f64) -> Result<f64, FieldError> {
    check_coordinate(path, v, Location::MAX_LON)
}

fn check_coordinate(path: &FieldPath, v: f64, bound: f64) -> Result<f64, FieldError> {
    check_finite(path, v)?;
    if !(-bound..=bound).contains(&v) {
        return Err(FieldError::new(
            path.clone(),
            format!("{v} is out of range -{bound}..={bound}"),
        ));
    }
    Ok(v)
}

/// A host a route matches: a DNS name (RFC 1123: labels of 1 to 63 letters, digits and `-`,
/// not starting or ending with `-`, at most [`MAX_HOST_LEN`] bytes in all, the last label not
/// all digits; a fully qualified name's final dot is dropped), or an IPv4 or IPv6 address (the
/// latter bare or in brackets). Names compare without regard to case, so the name comes back
/// in lower case, and an address in its canonical form (`::1`, without brackets): what a route
/// compares a request's `Host` with.
pub fn check_host(path: &FieldPath, host: &str) -> Result<String, FieldError> {
    let invalid = |message: String| FieldError::new(path.clone(), message);
    if host.is_empty() {
        return Err(invalid("must not be empty".into()));
    }
    if host.len() > MAX_HOST_LEN {
        return Err(invalid(format!(
            "is {} bytes long; at most {MAX_HOST_LEN} are allowed",
            host.len()
        )));
    }
    if let Some(inner) = host.strip_prefix('[') {
        return inner
            .strip_suffix(']')
            .and_then(|ip| ip.parse::<Ipv6Addr>().ok())
            .map(|ip| ip.to_string())
            .ok_or_else(|| invalid(format!("{} is not an IPv6 address", shown(host))));
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(ip.to_string());
    }
    if host.contains(':') {
        return match host.parse::<Ipv6Addr>() {
            Ok(ip) => Ok(ip.to_string()),
            Err(_) => Err(invalid(format!(
                "{} is neither a host name nor an IP address; a route's host has no port",
                shown(host)
            ))),
        };
    }
    if let Some(c) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(invalid(format!(
            "{} contains {c:?}; a host name has letters, digits, '-' and '.'",
            shown(host)
        )));
    }
    // ASCII only from here on, so bytes are characters.
    let name = host.strip_suffix('.').unwrap_or(host);
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err(invalid(format!(
                "{} has an empty label; write the name without leading, trailing or double dots",
                shown(host)
            )));
        }
        if label.len() > 63 {
            return Err(invalid(format!(
                "{} has a label of {} characters; at most 63 are allowed",
                shown(host),
                label.len()
            )));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid(format!(
                "{} has a label that starts or ends with '-'",
                shown(host)
            )));
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(format!(
            "{} is not an IP address, and a host name's last label is not all digits",
            shown(host)
        )));
    }
    Ok(name.to_ascii_lowercase())
}

/// A path prefix a route matches: starts with `/`, at most [`MAX_PATH_PREFIX_BYTES`], printable
/// ASCII as a request line carries it (anything else percent-encoded, every `%` followed by two
/// hex digits), no query (`?`) or fragment (`#`), and no `.` or `..` segment (written plainly
/// or percent-encoded): a request's path is compared once normalised, so such a prefix would
/// never match, and `..` is how a client tries to step out of one.
pub fn check_path_prefix(path: &FieldPath, prefix: &str) -> Result<(), FieldError> {
    check_path(path, prefix, "a path prefix")
}

fn check_path(path: &FieldPath, value: &str, what: &str) -> Result<(), FieldError> {
    let invalid = |message: String| FieldError::new(path.clone(), message);
    if !value.starts_with('/') {
        return Err(invalid(format!("{} must start with '/'", shown(value))));
    }
    if value.len() > MAX_PATH_PREFIX_BYTES {
        return Err(invalid(format!(
            "is {} bytes long; at most {MAX_PATH_PREFIX_BYTES} are allowed",
            value.len()
        )));
    }
    if let Some(c) = value.chars().find(|c| !c.is_ascii_graphic()) {
        let kind = if c.is_control() {
            "the control character"
        } else if c.is_whitespace() {
            "the whitespace"
        } else {
            "the character"
        };
        return Err(invalid(format!(
            "{} contains {kind} {c:?}; percent-encode it",
            shown(value)
        )));
    }
    if let Some(c) = value.chars().find(|c| matches!(c, '?' | '#')) {
        return Err(invalid(format!(
            "{} contains {c:?}; {what} has no query or fragment",
            shown(value)
        )));
    }
    let bytes = value.as_bytes();
    for (i, _) in value.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3);
        if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
            return Err(invalid(format!(
                "{} has a '%' not followed by two hex digits",
                shown(value)
            )));
        }
    }
    if value.split('/').any(is_dot_segment) {
        return Err(invalid(format!(
            "{} has a \".\" or \"..\" segment; write the path without them",
            shown(value)
        )));
    }
    Ok(())
}

/// `.` or `..`, with any dot percent-encoded (`%2e`, either case).
fn is_dot_segment(segment: &str) -> bool {
    let lower = segment.to_ascii_lowercase();
    let dots = lower.replace("%2e", ".");
    dots == "." || dots == ".."
}

/// An origin a node's proxy forwards to, from `http://HOST[:PORT][/PATH]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OriginUrl {
    /// As [`check_host`] returns it: a lower-case name or a canonical IP address.
    pub host: String,
    /// 1 to 65535; 80 when the URL names none.
    pub port: u16,
    /// What comes before every forwarded request's path: empty, or a path as
    /// [`check_path_prefix`] wants it, without a trailing `/`.
    pub base_path: String,
}

impl OriginUrl {
    /// `host:port`, with an IPv6 address in brackets: what to dial, and the `Host` an origin
    /// expects.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for OriginUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.base_path)
    }
}

/// An origin URL, `http://HOST[:PORT][/PATH]`: the scheme `http` (either case; `https` is
/// refused: the proxy speaks plain HTTP to origins for now), a host as [`check_host`] wants it
/// (an IPv6 address in brackets), a port of 1 to 65535 (default 80), and a base path as
/// [`check_path_prefix`] wants it; no user info, query or fragment. At most
/// [`MAX_ORIGIN_URL_BYTES`]. A URL with user info is never quoted back: it holds a password.
pub fn check_origin_url(path: &FieldPath, url: &str) -> Result<OriginUrl, FieldError> {
    let invalid = |message: String| FieldError::new(path.clone(), message);
    const SHAPE: &str = "write http://HOST[:PORT][/PATH]";
    if url.len() > MAX_ORIGIN_URL_BYTES {
        return Err(invalid(format!(
            "is {} bytes long; at most {MAX_ORIGIN_URL_BYTES} are allowed",
            url.len()
        )));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(invalid(format!("{} is not a URL; {SHAPE}", shown(url))));
    };
    if scheme.eq_ignore_ascii_case("https") {
        return Err(invalid(
            "https:// is not supported: the proxy speaks plain HTTP to origins for now; use http://"
                .into(),
        ));
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(invalid(format!(
            "the scheme {} is not supported; {SHAPE}",
            shown(scheme)
        )));
    }
    let (authority, base_path) = rest
        .find(['/', '?', '#'])
        .map_or((rest, ""), |i| rest.split_at(i));
    if authority.contains('@') {
        return Err(invalid(
            "has user info ('@'); an origin URL carries no credentials".into(),
        ));
    }
    if let Some(c) = base_path.chars().find(|c| matches!(c, '?' | '#')) {
        return Err(invalid(format!(
            "{} has a {}; {SHAPE}",
            shown(url),
            if c == '?' { "query" } else { "fragment" }
        )));
    }
    if authority.is_empty() {
        return Err(invalid(format!("{} has no host; {SHAPE}", shown(url))));
    }
    let (host, port) = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => {
                let (host, after) = authority.split_at(end + 1);
                match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None if after.is_empty() => (host, None),
                    None => {
                        return Err(invalid(format!(
                            "{} has something other than a port after the address; {SHAPE}",
                            shown(url)
                        )));
                    }
                }
            }
            None => {
                return Err(invalid(format!(
                    "{} opens an IPv6 address with '[' but never closes it",
                    shown(url)
                )));
            }
        }
    } else if authority.matches(':').count() > 1 {
        return Err(invalid(format!(
            "{} has an IPv6 address without brackets; write http://[ADDRESS]:PORT",
            shown(url)
        )));
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let host = check_host(path, host)?;
    let port = match port {
        None => 80,
        Some(port) => check_port(port).map_err(invalid)?,
    };
    let base_path = if base_path.is_empty() {
        String::new()
    } else {
        check_path(path, base_path, "an origin URL")?;
        base_path.trim_end_matches('/').to_string()
    };
    Ok(OriginUrl {
        host,
        port,
        base_path,
    })
}

/// A URL's port: 1 to 5 digits, 1 to 65535. Returns the reason on failure.
fn check_port(port: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Err("has an empty port after ':'".into());
    }
    if port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("the port {} is not 1 to 65535", shown(port)));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("the port {port} is out of range 1..=65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{
        AdmissionReply, Assignment, EnrollRequest, List, LogsRequest, Text, Unassign,
        WorkloadReport,
    };
    use alloc::string::ToString;
    use alloc::vec::Vec;

    /// The capacity of a text field, read from the field's type.
    fn text_cap<T, const N: usize>(_: fn(&T) -> &Text<N>) -> usize {
        N
    }

    fn list_cap<T, I, const N: usize>(_: fn(&T) -> &List<I, N>) -> usize {
        N
    }

    #[test]
    fn the_rules_bounds_are_the_wire_fields_capacities() {
        assert_eq!(text_cap(|m: &EnrollRequest| &m.name), MAX_NAME_LEN);
        assert_eq!(text_cap(|m: &Assignment| &m.workload), MAX_NAME_LEN);
        assert_eq!(text_cap(|m: &Unassign| &m.workload), MAX_NAME_LEN);
        assert_eq!(text_cap(|m: &AdmissionReply| &m.workload), MAX_NAME_LEN);
        assert_eq!(text_cap(|m: &WorkloadReport| &m.workload), MAX_NAME_LEN);
        assert_eq!(text_cap(|m: &LogsRequest| &m.workload), MAX_NAME_LEN);
        assert_eq!(text_cap(|l: &Label| &l.key), MAX_LABEL_KEY_LEN);
        assert_eq!(text_cap(|l: &Label| &l.value), MAX_LABEL_VALUE_BYTES);
        assert_eq!(list_cap(|c: &Capabilities| &c.labels), MAX_LABELS);
    }

    #[test]
    fn what_passes_the_rules_fits_the_wire_whole() {
        let path = FieldPath::new("x");
        let name = "a".repeat(MAX_NAME_LEN);
        check_name(&path, &name).expect("a name of the limit");
        assert!(Text::<MAX_NAME_LEN>::try_from(name.as_str()).is_ok());
        check_name(&path, &"a".repeat(MAX_NAME_LEN + 1)).expect_err("over the limit");

        let key = "k".repeat(MAX_LABEL_KEY_LEN);
        let value = "é".repeat(MAX_LABEL_VALUE_BYTES / 2);
        check_label(&path, &key, &value).expect("a label of the limit");
        let label = Label {
            key: key.as_str().try_into().expect("key fits"),
            value: value.as_str().try_into().expect("value fits"),
        };
        assert_eq!(label.key.len(), MAX_LABEL_KEY_LEN);
        check_label_key(&"k".repeat(MAX_LABEL_KEY_LEN + 1)).expect_err("key over the limit");
        check_label_value(&"é".repeat(MAX_LABEL_VALUE_BYTES / 2 + 1))
            .expect_err("value over the limit, counted in bytes");

        let labels: Vec<(String, String)> = (0..MAX_LABELS)
            .map(|i| (alloc::format!("k{i}"), String::new()))
            .collect();
        check_labels(&path, labels.iter().map(|(k, v)| (k, v))).expect("a full set");
        let wire: List<Label, { Capabilities::MAX_LABELS }> = labels
            .iter()
            .map(|(k, v)| Label {
                key: crate::msg::text(k),
                value: crate::msg::text(v),
            })
            .collect();
        assert_eq!(wire.len(), MAX_LABELS);
        let mut one_more = labels;
        one_more.push(("extra".into(), String::new()));
        check_labels(&path, one_more.iter().map(|(k, v)| (k, v))).expect_err("too many");

        for (lat, lon) in [(90.0, 180.0), (-90.0, -180.0), (0.0, 0.0), (52.52, 13.405)] {
            let location = Location {
                lat: check_latitude(&path, lat).expect("lat"),
                lon: check_longitude(&path, lon).expect("lon"),
                alt_m: None,
            };
            assert!(location.is_valid());
        }
        for bad in [90.0001, -91.0, f64::NAN, f64::INFINITY] {
            check_latitude(&path, bad).expect_err("lat off the globe");
        }
        for bad in [180.5, -181.0, f64::NEG_INFINITY] {
            check_longitude(&path, bad).expect_err("lon off the globe");
        }
    }

    fn str_cap<T, const N: usize>(_: fn(&T) -> &Option<crate::Str<N>>) -> usize {
        N
    }

    #[test]
    fn the_route_rules_bounds_are_the_wire_fields_capacities() {
        assert_eq!(str_cap(|e: &Expose| &e.host), MAX_HOST_LEN);
        assert_eq!(str_cap(|e: &Expose| &e.path_prefix), MAX_PATH_PREFIX_BYTES);
        fn seq_cap<T, I, const N: usize>(_: fn(&T) -> &crate::Seq<I, N>) -> usize {
            N
        }
        assert_eq!(seq_cap(|a: &Assignment| &a.expose), MAX_EXPOSE);
        // Every bound's end fits the wire field that carries the value.
        assert!(u16::try_from(*ROUTE_WEIGHT.end()).is_ok());
        assert!(u32::try_from(*ROUTE_TIMEOUT_SECS.end()).is_ok());
        assert!(u8::try_from(*ROUTE_RETRIES.end()).is_ok());
        assert!(u32::try_from(*STALE_IF_OFFLINE_SECS.end()).is_ok());
        assert!(u32::try_from(*SCALE_TO_ZERO_IDLE_SECS.end()).is_ok());
        for (range, default) in [
            (&ROUTE_WEIGHT, i64::from(DEFAULT_ROUTE_WEIGHT)),
            (&ROUTE_TIMEOUT_SECS, i64::from(DEFAULT_ROUTE_TIMEOUT_SECS)),
            (&ROUTE_RETRIES, i64::from(DEFAULT_ROUTE_RETRIES)),
            (
                &STALE_IF_OFFLINE_SECS,
                i64::from(DEFAULT_STALE_IF_OFFLINE_SECS),
            ),
        ] {
            assert!(range.contains(&default));
        }
        let host = alloc::format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(host.len(), MAX_HOST_LEN);
        let host = check_host(&FieldPath::new("x"), &host).expect("a name of the limit");
        assert!(crate::Str::<MAX_HOST_LEN>::new(host).is_some());
        let prefix = alloc::format!("/{}", "p".repeat(MAX_PATH_PREFIX_BYTES - 1));
        check_path_prefix(&FieldPath::new("x"), &prefix).expect("a prefix of the limit");
        assert!(crate::Str::<MAX_PATH_PREFIX_BYTES>::new(prefix).is_some());
    }

    #[test]
    fn hosts_are_names_or_addresses_in_one_form() {
        let path = FieldPath::new("expose[0].host");
        let ok = |h: &str| check_host(&path, h).expect(h);
        assert_eq!(ok("shop.example.com"), "shop.example.com");
        assert_eq!(
            ok("Shop.EXAMPLE.com"),
            "shop.example.com",
            "case-insensitive"
        );
        assert_eq!(ok("localhost"), "localhost");
        assert_eq!(ok("Shop.Example."), "shop.example", "fully qualified");
        assert_eq!(ok("a-1.b2"), "a-1.b2");
        assert_eq!(
            ok("123.example"),
            "123.example",
            "labels may start with a digit"
        );
        assert_eq!(ok("192.0.2.10"), "192.0.2.10");
        assert_eq!(ok("2001:DB8:0:0::1"), "2001:db8::1", "canonical form");
        assert_eq!(ok("[::1]"), "::1", "brackets are dropped");
        assert_eq!(ok(&"a".repeat(63)), "a".repeat(63));

        let bad = |h: &str, needle: &str| {
            let e = check_host(&path, h).expect_err(h);
            assert_eq!(e.path(), &"expose[0].host");
            assert!(e.message().contains(needle), "{h:?}: {e}");
            assert!(e.message().len() < 200, "{h:?}: a short message");
        };
        bad("", "must not be empty");
        bad(&"a".repeat(64), "at most 63");
        bad(&"a.".repeat(127), "at most 253");
        bad(&"x".repeat(10 * 1024), "at most 253");
        bad("-a.com", "starts or ends with '-'");
        bad("a-.com", "starts or ends with '-'");
        bad("a..com", "empty label");
        bad(".a.com", "empty label");
        bad("a.com..", "empty label");
        bad(".", "empty label");
        bad("under_score.com", "'_'");
        bad("*.example.com", "'*'");
        bad("a b", "' '");
        bad("a\0b", "'\\0'");
        bad("caf\u{e9}.de", "'\u{e9}'");
        bad("a\nb", "'\\n'");
        bad("example.com:80", "has no port");
        bad("1.2.3.256", "last label");
        bad("01.2.3.4", "last label");
        bad("999", "last label");
        bad("[::1", "not an IPv6");
        bad("[example.com]", "not an IPv6");
        bad("[1.2.3.4]", "not an IPv6");
        bad("fe80::1%eth0", "neither");
    }

    #[test]
    fn path_prefixes_are_request_paths() {
        let path = FieldPath::new("expose[1].path_prefix");
        for good in [
            "/",
            "/api",
            "/api/v1/",
            "/a%20b",
            "/%E2%82%AC",
            "/a..b/.c/..d",
            "/~user/x-y_z",
        ] {
            check_path_prefix(&path, good).expect(good);
        }
        let bad = |p: &str, needle: &str| {
            let e = check_path_prefix(&path, p).expect_err(p);
            assert_eq!(e.path(), &"expose[1].path_prefix");
            assert!(e.message().contains(needle), "{p:?}: {e}");
            assert!(e.message().len() < 200, "{p:?}: a short message");
        };
        bad("", "must start with '/'");
        bad("api", "must start with '/'");
        bad(&alloc::format!("/{}", "a".repeat(1024)), "at most 1024");
        bad(
            &alloc::format!("/{}", "a".repeat(10 * 1024)),
            "at most 1024",
        );
        bad("/a b", "whitespace");
        bad("/a\tb", "control character");
        bad("/a\0", "control character");
        bad("/a\u{85}", "control character");
        bad("/caf\u{e9}", "percent-encode");
        bad("/a\u{a0}b", "whitespace");
        bad("/a?b=1", "query or fragment");
        bad("/a#top", "query or fragment");
        bad("/a/../b", "segment");
        bad("/..", "segment");
        bad("/a/./b", "segment");
        bad("/a/%2e%2E/b", "segment");
        bad("/a/.%2e", "segment");
        bad("/a%2", "two hex digits");
        bad("/a%zz", "two hex digits");
        bad("/%", "two hex digits");
    }

    #[test]
    fn origin_urls_are_plain_http_to_a_host() {
        let path = FieldPath::new("proxy.upstream[0].origin");
        let ok = |u: &str| check_origin_url(&path, u).expect(u);
        let o = ok("http://origin.example.net");
        assert_eq!(
            (o.host.as_str(), o.port, o.base_path.as_str()),
            ("origin.example.net", 80, "")
        );
        assert_eq!(o.authority(), "origin.example.net:80");
        assert_eq!(o.to_string(), "http://origin.example.net:80");
        let o = ok("HTTP://Origin.Example.NET:8080/static/");
        assert_eq!(
            (o.host.as_str(), o.port, o.base_path.as_str()),
            ("origin.example.net", 8080, "/static")
        );
        let o = ok("http://10.0.0.5:65535/");
        assert_eq!(
            (o.host.as_str(), o.port, o.base_path.as_str()),
            ("10.0.0.5", 65535, "")
        );
        let o = ok("http://[2001:db8::1]:81/a/b");
        assert_eq!(o.host, "2001:db8::1");
        assert_eq!(o.authority(), "[2001:db8::1]:81");
        assert_eq!(o.to_string(), "http://[2001:db8::1]:81/a/b");
        assert_eq!(ok("http://[::1]").port, 80);
        assert_eq!(ok("http://h:1").port, 1);

        let bad = |u: &str, needle: &str| {
            let e = check_origin_url(&path, u).expect_err(u);
            assert_eq!(e.path(), &"proxy.upstream[0].origin");
            assert!(e.message().contains(needle), "{u:?}: {e}");
            assert!(e.message().len() < 300, "{u:?}: a short message");
            e
        };
        bad(
            "https://origin.example.net",
            "plain HTTP to origins for now",
        );
        bad("HTTPS://origin.example.net", "plain HTTP");
        bad("ftp://origin.example.net", "not supported");
        bad("origin.example.net", "not a URL");
        bad("origin.example.net:80", "not a URL");
        bad("", "not a URL");
        bad("http://", "no host");
        bad("http:///path", "no host");
        let e = bad("http://user:hunter2@origin.example.net", "user info");
        assert!(
            !e.to_string().contains("hunter2"),
            "never quotes a password: {e}"
        );
        bad("http://a@b", "user info");
        bad("http://a/b?c=1", "query");
        bad("http://a?c=1", "query");
        bad("http://a/b#c", "fragment");
        bad("http://a:0", "out of range");
        bad("http://a:65536", "out of range");
        bad("http://a:99999", "out of range");
        bad("http://a:123456", "not 1 to 65535");
        bad("http://a:-1", "not 1 to 65535");
        bad("http://a:", "empty port");
        bad("http://a:8o", "not 1 to 65535");
        bad("http://[::1", "never closes");
        bad("http://[::1]x", "other than a port");
        bad("http://::1", "without brackets");
        bad("http://[nope]:80", "not an IPv6");
        bad("http://bad_host", "'_'");
        bad("http://a/b c", "whitespace");
        bad("http://a/../etc", "segment");
        bad("http://a/\0", "control character");
        bad("http://caf\u{e9}.de/", "'\u{e9}'");
        bad(
            &alloc::format!("http://a/{}", "p".repeat(10 * 1024)),
            "at most",
        );
        bad(&alloc::format!("http://{}", "a".repeat(300)), "at most 253");
    }

    #[test]
    fn paths_render_as_toml_writes_them() {
        let labels = FieldPath::new("labels");
        assert_eq!(labels.key("site"), "labels.site");
        assert_eq!(labels.key("bad key"), r#"labels."bad key""#);
        assert_eq!(labels.key(""), r#"labels."""#);
        assert_eq!(labels.key("a\nb"), r#"labels."a\nb""#);
        assert_eq!(
            labels.key("example.com/zone"),
            r#"labels."example.com/zone""#
        );
        let long = "k".repeat(64);
        assert_eq!(
            labels.key(&long).to_string(),
            alloc::format!("labels.\"{}\"…", "k".repeat(40))
        );
        assert_eq!(
            FieldPath::new("requirements").field("near").field("lat"),
            "requirements.near.lat"
        );
        assert_eq!(FieldPath::new("args").index(3), "args[3]");
        assert_eq!(FieldPath::root().field("name"), "name");
        assert_eq!(FieldPath::root().key("bad key"), r#""bad key""#);
        assert_eq!(
            FieldPath::new("join_file").index(1).as_str(),
            "join_file[1]"
        );
    }

    #[test]
    fn errors_name_the_path_unless_it_is_the_document() {
        let e = FieldError::new("location.lat", "91 is out of range -90..=90");
        assert_eq!(e.to_string(), "location.lat: 91 is out of range -90..=90");
        assert_eq!(e.path(), &"location.lat");
        assert_eq!(e.message(), "91 is out of range -90..=90");
        let e = FieldError::new(FieldPath::root(), "expected a table");
        assert_eq!(e.to_string(), "expected a table");
    }

    #[test]
    fn shown_escapes_and_cuts() {
        assert_eq!(shown("plain").to_string(), r#""plain""#);
        assert_eq!(shown("a\nb\"").to_string(), r#""a\nb\"""#);
        let forty = "é".repeat(SHOWN_CHARS);
        assert_eq!(shown(&forty).to_string(), alloc::format!("\"{forty}\""));
        assert_eq!(
            shown(&"é".repeat(SHOWN_CHARS + 1)).to_string(),
            alloc::format!("\"{forty}\"…")
        );
        assert_eq!(shown_max("abcdef", 3).to_string(), r#""abc"…"#);
        assert_eq!(shown("").to_string(), r#""""#);
    }

    #[test]
    fn rule_messages() {
        let name = FieldPath::new("name");
        let msg = |r: Result<(), FieldError>| r.expect_err("refused").to_string();
        assert_eq!(msg(check_name(&name, "")), "name: must not be empty");
        assert_eq!(
            msg(check_name(&name, "Shop")),
            r#"name: "Shop" contains 'S'; use lowercase letters, digits and '-'"#
        );
        assert_eq!(
            msg(check_name(&name, &"a".repeat(64))),
            "name: is 64 characters long; at most 63 are allowed"
        );
        assert_eq!(
            msg(check_name(&name, "-a")),
            r#"name: "-a" must not start or end with '-'"#
        );
        let labels = FieldPath::new("labels");
        assert_eq!(
            msg(check_label(&labels, "a:b", "x")),
            r#"labels."a:b": the key contains ':'; use letters, digits and . _ / -"#
        );
        assert_eq!(
            msg(check_label(&labels, "site", "a\u{7}")),
            r"labels.site: the value contains the control character '\u{7}'"
        );
        assert_eq!(
            check_latitude(&FieldPath::new("lat"), 91.0)
                .expect_err("off the globe")
                .to_string(),
            "lat: 91 is out of range -90..=90"
        );
        assert_eq!(
            check_longitude(&FieldPath::new("lon"), f64::NAN)
                .expect_err("not a number")
                .to_string(),
            "lon: NaN is not a finite number"
        );
    }
}
