//! The headers a proxy hop removes and adds: hop-by-hop fields, `X-Forwarded-*` and
//! `Forwarded`, `Via` and the loop guard it allows, and the W3C `traceparent`.
//!
//! - [`strip_hop_by_hop`]: the fields that describe one connection, not the message (RFC 9110
//!   §7.6.1), including every field the `Connection` header names. `Host` is never removed
//!   on a `Connection` header's say-so: a request without it is invalid (RFC 9112 §3.2).
//!   `TE` goes too, `TE: trailers` included: the proxy does not forward trailers.
//! - [`add_forwarded`]: who asked, in `X-Forwarded-For` (appended to the list), in an RFC 7239
//!   `Forwarded` element (appended), and in `X-Forwarded-Proto` and `X-Forwarded-Host`. Those
//!   two are *replaced*, never kept from the request: this node is the first hop the backend
//!   can trust, and a value the client sent is a claim anyone can make (an `https` that makes
//!   an application set secure cookies over plain HTTP, a host that poisons its links). The
//!   lists keep earlier hops, as they are meant to; the backend reads them from the right.
//! - [`add_via`] and [`loop_detected`]: our pseudonym in `Via` ([`ViaName`]), and a request
//!   that already passed through us, or through too many proxies, refused before it is sent
//!   round again. Parsing a hostile `Via` is bounded: at most [`MAX_VIA_BYTES`] bytes over at
//!   most [`MAX_VIA_LINES`] lines are read, without allocating; past that, it counts as a loop.
//! - [`TraceParent`]: the W3C Trace Context `traceparent`, parsed, continued with a new
//!   parent id, or started.
//!
//! All of it works on an `http::HeaderMap` in memory; nothing here does I/O, reads the clock
//! or draws randomness (new ids come from the caller's draws).

use edge_proto::NodeId;
use edge_proto::field::shown;
use http::header::{CONNECTION, FORWARDED, HOST, HeaderName, TE, TRANSFER_ENCODING, UPGRADE, VIA};
use http::{HeaderMap, HeaderValue};
use std::fmt::{self, Write as _};
use std::net::IpAddr;

/// `X-Forwarded-For`: the chain of client addresses, oldest first.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: the scheme the client used with this node.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`: the `Host` the client sent to this node.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `traceparent` (W3C Trace Context).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The fields RFC 9110 §7.6.1 names as connection-specific, `Connection` first.
const HOP_BY_HOP: [HeaderName; 6] = [
    CONNECTION,
    PROXY_CONNECTION,
    KEEP_ALIVE,
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// The most field names taken from `Connection` headers; any beyond are left in place. A
/// real client names one or two.
pub const MAX_CONNECTION_OPTIONS: usize = 64;

/// Removes the connection-specific fields: those of RFC 9110 §7.6.1 and every one a
/// `Connection` header names (up to [`MAX_CONNECTION_OPTIONS`]), except `Host`. Call it on a
/// request before it goes to the backend and on a response before it goes to the client,
/// before adding the proxy's own fields, so a client cannot have those removed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .filter_map(|option| HeaderName::from_bytes(trim_ows(option)).ok())
        .filter(|name| name != HOST)
        .take(MAX_CONNECTION_OPTIONS)
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
}

/// Records the hop from `client` (the peer address of the connection; an IPv4-mapped IPv6
/// address is written as IPv4), which asked for `host` (its `Host`, as sent) over `proto`
/// (`http` or `https`). See the module docs for what is appended and what is replaced. A
/// `host` or `proto` that cannot be a header value (control characters) is left out, and an
/// `X-Forwarded-Host` from the request is removed all the same.
pub fn add_forwarded(headers: &mut HeaderMap, client: IpAddr, host: Option<&str>, proto: &str) {
    let client = client.to_canonical();

    let xff = append_to_list(headers, &X_FORWARDED_FOR, &client.to_string());
    headers.insert(X_FORWARDED_FOR, xff);

    let mut element = String::from("for=");
    match client {
        IpAddr::V4(ip) => {
            let _ = write!(element, "{ip}");
        }
        // RFC 7239 §6: an IPv6 node is bracketed, and then it must be quoted.
        IpAddr::V6(ip) => {
            let _ = write!(element, "\"[{ip}]\"");
        }
    }
    if let Some(host) = host.and_then(forwarded_value) {
        element.push_str(";host=");
        element.push_str(&host);
    }
    if let Some(proto) = forwarded_value(proto) {
        element.push_str(";proto=");
        element.push_str(&proto);
    }
    let forwarded = append_to_list(headers, &FORWARDED, &element);
    headers.insert(FORWARDED, forwarded);

    match HeaderValue::from_str(proto) {
        Ok(value) if !proto.is_empty() => {
            headers.insert(X_FORWARDED_PROTO, value);
        }
        _ => {
            headers.remove(X_FORWARDED_PROTO);
        }
    }
    match host.map(HeaderValue::from_str) {
        Some(Ok(value)) => {
            headers.insert(X_FORWARDED_HOST, value);
        }
        _ => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

/// Every `name` field's value, joined with `, `, with `item` appended: one field holding the
/// whole list, since some applications read only the first.
fn append_to_list(headers: &HeaderMap, name: &HeaderName, item: &str) -> HeaderValue {
    let mut list: Vec<u8> = Vec::new();
    for value in headers.get_all(name) {
        let value = trim_ows(value.as_bytes());
        if !value.is_empty() {
            list.extend_from_slice(value);
            list.extend_from_slice(b", ");
        }
    }
    list.extend_from_slice(item.as_bytes());
    // Both parts are valid field values already (the old ones came in a HeaderValue, the new
    // one is an address or an element built from checked parts), so this cannot fail; if it
    // did, our item alone is better than nothing.
    HeaderValue::from_bytes(&list)
        .or_else(|_| HeaderValue::from_str(item))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// A `Forwarded` parameter's value (RFC 7239 §4): a token as is, anything else as a
/// quoted-string; `None` if it is empty or holds a character no quoted-string may (a
/// control character).
fn forwarded_value(s: &str) -> Option<String> {
    if s.is_empty() {
        return None;
    }
    if s.bytes().all(is_tchar) {
        return Some(s.to_owned());
    }
    if s.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return None;
    }
    let mut quoted = String::with_capacity(s.len() + 2);
    quoted.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    Some(quoted)
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    bytes.get(start..end).unwrap_or_default()
}

/// This proxy's name in `Via`: a pseudonym (RFC 9110 §7.6.3), so that the node's address
/// stays private, and fixed for the node, so that a request that comes back is recognized.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ViaName {
    name: String,
    /// `1.1 <name>`, made once: every request and answer carries it.
    via: HeaderValue,
}

/// A `Via` pseudonym that is not a token of at most [`ViaName::MAX_LEN`] characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Via name {shown} is not a token of 1 to 64 letters, digits and !#$%&'*+-.^_`|~")]
pub struct InvalidViaName {
    /// The name, quoted and cut as [`edge_proto::field::shown`] does.
    pub shown: String,
}

impl ViaName {
    /// The longest name.
    pub const MAX_LEN: usize = 64;

    /// `name`, if it is an RFC 9110 token of 1 to [`MAX_LEN`](Self::MAX_LEN) characters.
    pub fn new(name: &str) -> Result<Self, InvalidViaName> {
        if (1..=Self::MAX_LEN).contains(&name.len()) && name.bytes().all(is_tchar) {
            Ok(Self::token(name.to_owned()))
        } else {
            Err(InvalidViaName {
                shown: shown(name).to_string(),
            })
        }
    }

    /// `edge-` and the first 8 hex digits of the node's id: stable for the node, and short
    /// of what would identify it to a stranger.
    pub fn for_node(id: &NodeId) -> Self {
        let mut name = String::from("edge-");
        for byte in id.0.iter().take(4) {
            let _ = write!(name, "{byte:02x}");
        }
        Self::token(name)
    }

    /// `name`, known to be a token.
    fn token(name: String) -> Self {
        // A token after `1.1 `: always a valid field value.
        let via = HeaderValue::from_str(&format!("1.1 {name}"))
            .unwrap_or_else(|_| HeaderValue::from_static("1.1 edge"));
        Self { name, via }
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// `1.1 <name>`: the `Via` element this proxy adds.
    pub fn header_value(&self) -> &HeaderValue {
        &self.via
    }
}

impl fmt::Display for ViaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Adds `1.1 <name>` to the message's `Via`, as a field line of its own (the same list as
/// appending to the last one, without copying what is there).
pub fn add_via(headers: &mut HeaderMap, name: &ViaName) {
    headers.append(VIA, name.via.clone());
}

/// The most `Via` bytes [`loop_detected`] reads; more counts as a loop.
pub const MAX_VIA_BYTES: usize = 8 * 1024;
/// The most `Via` field lines [`loop_detected`] reads; more counts as a loop.
pub const MAX_VIA_LINES: usize = 64;

/// Whether the message has passed through this proxy already (`name` is the received-by of
/// a `Via` element, compared without regard to case) or through more than `max_hops`
/// proxies (elements). A `Via` longer than [`MAX_VIA_BYTES`] or [`MAX_VIA_LINES`] counts as a
/// loop too: no chain of real proxies writes that much. Comments (in parentheses, where a
/// comma does not separate elements) and empty elements are skipped; nothing is allocated.
pub fn loop_detected(headers: &HeaderMap, name: &ViaName, max_hops: usize) -> bool {
    let mut bytes = 0usize;
    let mut hops = 0usize;
    for (line, value) in headers.get_all(VIA).iter().enumerate() {
        bytes = bytes.saturating_add(value.len());
        if line >= MAX_VIA_LINES || bytes > MAX_VIA_BYTES {
            return true;
        }
        for element in via_elements(value.as_bytes()) {
            hops += 1;
            if hops > max_hops || received_by(element).eq_ignore_ascii_case(name.name.as_bytes()) {
                return true;
            }
        }
    }
    false
}

/// The non-empty elements of a `Via` line: split at commas outside comments.
fn via_elements(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = line;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let end = element_end(rest);
            let element = trim_ows(rest.get(..end).unwrap_or_default());
            rest = rest.get(end + 1..).unwrap_or_default();
            if !element.is_empty() {
                return Some(element);
            }
        }
    })
}

/// Where the first element of `s` ends: the first comma outside a comment (a comment nests,
/// and `\` escapes the next byte in it), or the end. An unclosed comment runs to the end.
fn element_end(s: &[u8]) -> usize {
    let mut depth = 0u32;
    let mut escaped = false;
    for (i, &b) in s.iter().enumerate() {
        if depth > 0 {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'(' => depth = depth.saturating_add(1),
                b')' => depth -= 1,
                _ => {}
            }
        } else {
            match b {
                b'(' => depth = 1,
                b',' => return i,
                _ => {}
            }
        }
    }
    s.len()
}

/// A `Via` element's received-by: the word after the protocol, `1.1 <received-by> (comment)`.
fn received_by(element: &[u8]) -> &[u8] {
    let is_space = |b: &u8| *b == b' ' || *b == b'\t';
    let after_protocol = element
        .iter()
        .position(is_space)
        .map_or(&[][..], |i| element.get(i..).unwrap_or_default());
    let start = after_protocol
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(after_protocol.len());
    let word = after_protocol.get(start..).unwrap_or_default();
    let end = word
        .iter()
        .position(|b| is_space(b) || *b == b'(')
        .unwrap_or(word.len());
    word.get(..end).unwrap_or_default()
}

/// A W3C Trace Context `traceparent`: the trace a request belongs to and the span that sent
/// it. Both ids are never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

impl TraceParent {
    /// The caller may have recorded the trace.
    pub const SAMPLED: u8 = 0x01;
    /// The trace id's right-most 7 bytes are random (Trace Context Level 2).
    pub const RANDOM_TRACE_ID: u8 = 0x02;
    /// The flags defined so far; the others are reserved and written as zero.
    const KNOWN_FLAGS: u8 = Self::SAMPLED | Self::RANDOM_TRACE_ID;
    /// `00-` + 32 + `-` + 16 + `-` + 2.
    const LEN: usize = 55;

    /// The `traceparent` in `value`, or `None` if it is not one. Version `00` must be exactly
    /// that; a later version (not `ff`) is read as far as `00`'s fields go, if a `-` or the end
    /// follows them, keeping only its sampled flag (the Trace Context rule for versions not
    /// yet known). Hex must be lower case; all-zero ids are refused. A request without a valid
    /// one starts a new trace ([`start`](Self::start)).
    pub fn parse(value: &HeaderValue) -> Option<Self> {
        Self::parse_bytes(value.as_bytes())
    }

    fn parse_bytes(s: &[u8]) -> Option<Self> {
        let head = s.get(..Self::LEN)?;
        let [v0, v1, b'-', ..] = *head else {
            return None;
        };
        let version = hex_byte(v0, v1)?;
        match version {
            0xff => return None,
            0x00 if s.len() != Self::LEN => return None,
            _ if s.len() > Self::LEN && s.get(Self::LEN) != Some(&b'-') => return None,
            _ => {}
        }
        if head.get(35) != Some(&b'-') || head.get(52) != Some(&b'-') {
            return None;
        }
        let trace_id: [u8; 16] = decode_hex(head.get(3..35)?)?;
        let parent_id: [u8; 8] = decode_hex(head.get(36..52)?)?;
        let [flags]: [u8; 1] = decode_hex(head.get(53..55)?)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        let known = if version == 0 {
            Self::KNOWN_FLAGS
        } else {
            Self::SAMPLED
        };
        Some(Self {
            trace_id,
            parent_id,
            flags: flags & known,
        })
    }

    /// The same trace, sent on by this hop: a new parent id from `draw`, the same flags.
    pub fn child(&self, draw: u64) -> Self {
        Self {
            parent_id: nonzero_id(draw),
            ..*self
        }
    }

    /// A new trace, from three random draws: the trace id from `draw_hi` and `draw_lo`, the
    /// parent id from `draw_span`. Not sampled (the proxy records no spans; see
    /// [`with_sampled`](Self::with_sampled)); its trace id is marked random.
    pub fn start(draw_hi: u64, draw_lo: u64, draw_span: u64) -> Self {
        let mut trace_id = [0u8; 16];
        let (hi, lo) = trace_id.split_at_mut(8);
        hi.copy_from_slice(&draw_hi.to_be_bytes());
        lo.copy_from_slice(&draw_lo.to_be_bytes());
        if trace_id == [0; 16] {
            // One chance in 2^128; the id must not be zero.
            trace_id[15] = 1;
        }
        Self {
            trace_id,
            parent_id: nonzero_id(draw_span),
            flags: Self::RANDOM_TRACE_ID,
        }
    }

    /// The same, with the sampled flag set or cleared.
    pub fn with_sampled(self, sampled: bool) -> Self {
        let flags = if sampled {
            self.flags | Self::SAMPLED
        } else {
            self.flags & !Self::SAMPLED
        };
        Self { flags, ..self }
    }

    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    pub fn parent_id(&self) -> [u8; 8] {
        self.parent_id
    }

    pub fn flags(&self) -> u8 {
        self.flags
    }

    pub fn sampled(&self) -> bool {
        self.flags & Self::SAMPLED != 0
    }

    /// The header's value, version `00`.
    pub fn to_header_value(&self) -> HeaderValue {
        // Lower-case hex digits and dashes only: always a valid field value.
        HeaderValue::from_bytes(&self.encode()).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// `00-<trace id>-<parent id>-<flags>` in lower-case hex, written without `fmt`: every
    /// forwarded request carries one.
    fn encode(&self) -> [u8; 55] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b'-'; 55];
        out[0] = b'0';
        out[1] = b'0';
        let bytes = self
            .trace_id
            .iter()
            .chain(&self.parent_id)
            .chain(std::slice::from_ref(&self.flags));
        // Where each byte's two digits go: after `00-`, then after each dash.
        let starts = (3..35).step_by(2).chain((36..52).step_by(2)).chain([53]);
        for (byte, start) in bytes.zip(starts) {
            out[start] = HEX[usize::from(byte >> 4)];
            out[start + 1] = HEX[usize::from(byte & 0x0f)];
        }
        out
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hex digits and dashes: always UTF-8.
        f.write_str(std::str::from_utf8(&self.encode()).unwrap_or_default())
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

fn nonzero_id(draw: u64) -> [u8; 8] {
    // One draw in 2^64 is zero, which the spec forbids; any fixed other value will do.
    draw.max(1).to_be_bytes()
}

/// `N` bytes from `2N` lower-case hex digits.
fn decode_hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let [hi, lo] = *pair else { return None };
        *byte = hex_byte(hi, lo)?;
    }
    Some(out)
}

fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    Some((lower_hex_digit(hi)? << 4) | lower_hex_digit(lo)?)
}

fn lower_hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn map(fields: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for &(name, value) in fields {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("a field name"),
                HeaderValue::from_str(value).expect("a field value"),
            );
        }
        headers
    }

    fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    fn via(name: &str) -> ViaName {
        ViaName::new(name).expect("a token")
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_removed() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Secret ,  x-other"),
            ("connection", "upgrade,,"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("host", "example.com"),
            ("accept", "*/*"),
            ("cache-control", "no-cache"),
        ]);
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "cache-control", "host"]);
    }

    #[test]
    fn connection_cannot_remove_host_and_its_garbage_is_ignored() {
        let mut headers = map(&[
            ("connection", "host, HOST, bad name, ()/, , x-gone"),
            ("host", "example.com"),
            ("x-gone", "1"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut headers);
        assert_eq!(values(&headers, "host"), ["example.com"]);
        assert!(headers.get("x-gone").is_none());
        assert!(headers.get("x-kept").is_some());

        // A huge Connection list: bounded work, no panic, and the fixed fields still go.
        let long = (0..10_000)
            .map(|i| format!("x-{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut headers = map(&[("connection", &long), ("x-1", "a"), ("te", "trailers")]);
        strip_hop_by_hop(&mut headers);
        assert!(headers.get("x-1").is_none());
        assert!(headers.get("te").is_none());
        assert!(headers.get("connection").is_none());
    }

    #[test]
    fn forwarded_fields_for_ipv4_append_to_lists_and_replace_claims() {
        let mut headers = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", " 198.51.100.2 "),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=203.0.113.9"),
        ]);
        let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 43));
        add_forwarded(&mut headers, client, Some("shop.example"), "http");
        assert_eq!(
            values(&headers, "x-forwarded-for"),
            ["203.0.113.9, 198.51.100.2, 192.0.2.43"]
        );
        assert_eq!(values(&headers, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&headers, "x-forwarded-host"), ["shop.example"]);
        assert_eq!(
            values(&headers, "forwarded"),
            ["for=203.0.113.9, for=192.0.2.43;host=shop.example;proto=http"]
        );
    }

    #[test]
    fn forwarded_quotes_ipv6_and_hosts_with_ports() {
        let mut headers = HeaderMap::new();
        let client: IpAddr = "2001:db8:cafe::17".parse().expect("an address");
        add_forwarded(&mut headers, client, Some("[::1]:8080"), "https");
        assert_eq!(values(&headers, "x-forwarded-for"), ["2001:db8:cafe::17"]);
        assert_eq!(
            values(&headers, "forwarded"),
            ["for=\"[2001:db8:cafe::17]\";host=\"[::1]:8080\";proto=https"]
        );

        // A dual-stack listener's IPv4 peer is written as IPv4.
        let mut headers = HeaderMap::new();
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        add_forwarded(&mut headers, mapped, None, "http");
        assert_eq!(values(&headers, "x-forwarded-for"), ["192.0.2.1"]);
        assert_eq!(values(&headers, "forwarded"), ["for=192.0.2.1;proto=http"]);
    }

    #[test]
    fn hostile_host_and_proto_are_left_out_and_claims_removed() {
        let mut headers = map(&[("x-forwarded-host", "evil"), ("x-forwarded-proto", "https")]);
        let client = IpAddr::V6(Ipv6Addr::LOCALHOST);
        add_forwarded(&mut headers, client, Some("a\r\nx-injected: 1"), "ht\ntp");
        assert!(headers.get("x-forwarded-host").is_none());
        assert!(headers.get("x-forwarded-proto").is_none());
        assert!(headers.get("x-injected").is_none());
        assert_eq!(values(&headers, "forwarded"), ["for=\"[::1]\""]);

        // Quotes and backslashes in a host are escaped inside the quoted-string.
        let mut headers = HeaderMap::new();
        add_forwarded(&mut headers, client, Some("a\"b\\c d"), "");
        assert_eq!(
            values(&headers, "forwarded"),
            ["for=\"[::1]\";host=\"a\\\"b\\\\c d\""]
        );
        assert!(headers.get("x-forwarded-proto").is_none(), "empty proto");
    }

    #[test]
    fn via_names_are_tokens_and_a_node_has_a_stable_pseudonym() {
        assert!(ViaName::new("edge-0a1b2c3d").is_ok());
        for bad in [
            "",
            "has space",
            "a,b",
            "ünï",
            "a(b)",
            "x\n",
            &"a".repeat(65),
        ] {
            let err = ViaName::new(bad).expect_err(bad);
            assert!(err.to_string().len() < 200);
        }
        let id = NodeId([
            0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ]);
        assert_eq!(ViaName::for_node(&id).as_str(), "edge-deadbeef");
        assert!(ViaName::new(ViaName::for_node(&id).as_str()).is_ok());
    }

    #[test]
    fn add_via_appends_our_element() {
        let mut headers = map(&[("via", "1.0 fred, 1.1 p.example.net")]);
        add_via(&mut headers, &via("edge-deadbeef"));
        assert_eq!(
            values(&headers, "via"),
            ["1.0 fred, 1.1 p.example.net", "1.1 edge-deadbeef"]
        );
        assert!(loop_detected(&headers, &via("edge-deadbeef"), 10));
        assert!(!loop_detected(&headers, &via("edge-00000000"), 10));
    }

    #[test]
    fn loops_are_our_name_in_any_element_or_too_many_hops() {
        let us = via("edge-deadbeef");
        let cases: &[(&[&str], bool)] = &[
            (&[], false),
            (&["1.1 fred"], false),
            (&["1.1 fred, HTTP/1.1 EDGE-DEADBEEF (node)"], true),
            (&["1.0 fred (a, 1.1 edge-deadbeef, comment)"], false),
            (&["1.0 fred (nested (edge-deadbeef), still) , 1.1 x"], false),
            (&["1.0 fred (esc \\) edge-deadbeef)"], false),
            (&["1.1 a", "1.1 b, 1.1 edge-deadbeef"], true),
            (&["1.1 edge-deadbeef-2"], false),
            (&["1.1 edge-deadbeef(comment)"], true),
            (&["edge-deadbeef"], false),
            (&[",,, ,", ""], false),
            (&["1.1 a, 1.1 b, 1.1 c"], false),
            (&["1.1 a, 1.1 b, 1.1 c, 1.1 d"], true),
            (&["1.1 a, 1.1 b", "1.1 c", "1.1 d"], true),
            (&["1.1 fred (unclosed, 1.1 edge-deadbeef"], false),
        ];
        for &(lines, want) in cases {
            let fields: Vec<_> = lines.iter().map(|l| ("via", *l)).collect();
            assert_eq!(loop_detected(&map(&fields), &us, 3), want, "{lines:?}");
        }
    }

    #[test]
    fn a_huge_or_endless_via_counts_as_a_loop() {
        let us = via("edge-deadbeef");
        // One huge comment: a single element, but too many bytes.
        let huge = format!("1.1 x ({})", "a".repeat(MAX_VIA_BYTES));
        assert!(loop_detected(&map(&[("via", &huge)]), &us, 100));
        // Many small lines.
        let many: Vec<_> = (0..=MAX_VIA_LINES).map(|_| ("via", "")).collect();
        assert!(loop_detected(&map(&many), &us, 100));
        // Just under both limits, no loop.
        let fine: Vec<_> = (0..MAX_VIA_LINES).map(|_| ("via", "1.1 a")).collect();
        assert!(!loop_detected(&map(&fine), &us, 100));
    }

    #[test]
    fn traceparent_parses_the_spec_examples() {
        let value =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let tp = TraceParent::parse(&value).expect("the spec's example");
        assert_eq!(
            tp.trace_id(),
            [
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36
            ]
        );
        assert_eq!(
            tp.parent_id(),
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(tp.sampled());
        assert_eq!(tp.to_header_value(), value);

        let unsampled =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        let tp = TraceParent::parse(&unsampled).expect("the spec's example");
        assert!(!tp.sampled());
        assert_eq!(tp.to_header_value(), unsampled);
    }

    #[test]
    fn traceparent_accepts_later_versions_as_the_spec_says() {
        let base = "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7";
        let parse = |s: String| TraceParent::parse(&HeaderValue::from_str(&s).expect("value"));
        let tp = parse(format!("01-{base}-ff")).expect("a later version");
        assert_eq!(
            tp.flags(),
            TraceParent::SAMPLED,
            "only the sampled bit is kept"
        );
        assert!(parse(format!("cc-{base}-01-what-the-future-holds")).is_some());
        assert!(parse(format!("cc-{base}-01what")).is_none());
        assert!(parse(format!("ff-{base}-01")).is_none());
        // Version 00 allows nothing after its fields.
        assert!(parse(format!("00-{base}-01-")).is_none());
        assert!(parse(format!("00-{base}-01x")).is_none());
        // Reserved flags of 00 are cleared, known ones kept.
        let tp = parse(format!("00-{base}-ff")).expect("00");
        assert_eq!(tp.flags(), 0x03);
        assert!(tp.to_string().ends_with("-03"));
    }

    #[test]
    fn traceparent_refuses_garbage() {
        let bad = [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47g6-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for s in bad {
            let value = HeaderValue::from_str(s).expect("a field value");
            assert_eq!(TraceParent::parse(&value), None, "{s:?}");
        }
        let huge = HeaderValue::from_str(&"0".repeat(100_000)).expect("value");
        assert_eq!(TraceParent::parse(&huge), None);
        let binary = HeaderValue::from_bytes(&[0xff; 60]).expect("obs-text is a value");
        assert_eq!(TraceParent::parse(&binary), None);
    }

    #[test]
    fn child_keeps_the_trace_and_start_makes_nonzero_ids() {
        let value =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let parent = TraceParent::parse(&value).expect("valid");
        let child = parent.child(0x0102_0304_0506_0708);
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_eq!(child.flags(), parent.flags());
        assert_eq!(
            child.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"
        );
        assert_ne!(parent.child(0).parent_id(), [0; 8]);

        let new = TraceParent::start(0, 0, 0);
        assert_ne!(new.trace_id(), [0; 16]);
        assert_ne!(new.parent_id(), [0; 8]);
        assert!(!new.sampled());
        assert!(TraceParent::parse(&new.to_header_value()).is_some());
        let sampled = TraceParent::start(1, 2, 3).with_sampled(true);
        assert_eq!(
            sampled.to_string(),
            "00-00000000000000010000000000000002-0000000000000003-03"
        );
        assert!(!sampled.with_sampled(false).sampled());
    }

    proptest! {
        #[test]
        fn started_and_continued_traces_round_trip(hi in any::<u64>(), lo in any::<u64>(), span in any::<u64>(), next in any::<u64>(), sampled in any::<bool>()) {
            let tp = TraceParent::start(hi, lo, span).with_sampled(sampled).child(next);
            let value = tp.to_header_value();
            prop_assert_eq!(value.len(), 55);
            prop_assert_eq!(TraceParent::parse(&value), Some(tp));
        }

        #[test]
        fn parsing_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(value) = HeaderValue::from_bytes(&bytes)
                && let Some(tp) = TraceParent::parse(&value)
            {
                prop_assert!(tp.trace_id() != [0; 16] && tp.parent_id() != [0; 8]);
            }
        }

        #[test]
        fn via_parsing_never_panics(lines in proptest::collection::vec("[ -~]{0,40}", 0..6), hops in 0usize..5) {
            let fields: Vec<_> = lines.iter().map(|l| ("via", l.as_str())).collect();
            let headers = map(&fields);
            let us = via("edge-deadbeef");
            loop_detected(&headers, &us, hops);
            let mut with_us = headers.clone();
            add_via(&mut with_us, &us);
            prop_assert!(loop_detected(&with_us, &us, hops), "our own Via is always found");
        }

        #[test]
        fn strip_never_panics_and_always_removes_the_fixed_fields(conn in "[ -~]{0,80}") {
            let mut headers = map(&[("connection", conn.as_str()), ("te", "trailers"), ("host", "h")]);
            strip_hop_by_hop(&mut headers);
            prop_assert!(headers.get("connection").is_none() && headers.get("te").is_none());
            prop_assert!(headers.get("host").is_some());
        }
    }
}
