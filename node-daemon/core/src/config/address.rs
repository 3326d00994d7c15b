//! The orchestrator's address, `host:port`, checked for shape only: never resolved here, so
//! this never touches the network. The dialer resolves what [`fmt::Display`] gives back.

use edge_proto::field::shown;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The longest DNS name (RFC 1035), and of one of its labels.
const MAX_DNS_NAME_LEN: usize = 253;
const MAX_DNS_LABEL_LEN: usize = 63;

/// How an address is written, for error messages.
const EXAMPLE: &str = "e.g. orchestrator.example.net:7443 or [2001:db8::1]:7443";

/// The orchestrator's QUIC endpoint, `host:port`. Not resolved: [`fmt::Display`] gives back a
/// `host:port` string (IPv6 in brackets) for the dialer to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrchestratorAddress {
    host: Host,
    port: u16,
}

/// The host part of [`OrchestratorAddress`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    /// A syntactically valid DNS name, as written (without a trailing dot).
    Dns(String),
}

impl OrchestratorAddress {
    /// Parses `host:port`: a DNS name, an IPv4 address or a bracketed IPv6 address, and a port
    /// in 1..=65535. Returns the reason on failure; the caller knows the field.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err(format!("must not be empty; expected host:port, {EXAMPLE}"));
        }
        if s.len() > MAX_DNS_NAME_LEN + ":65535".len() {
            return Err(format!("is {} bytes long; too long for host:port", s.len()));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(format!(
                "{} has a scheme; drop {} and write host:port, {EXAMPLE}",
                shown(s),
                shown(&format!("{scheme}://"))
            ));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let Some((inner, after)) = rest.split_once(']') else {
                return Err(format!("{} has '[' without ']'", shown(s)));
            };
            let Some(port) = after.strip_prefix(':') else {
                return Err(format!(
                    "{} has no port; expected [IPv6]:port, {EXAMPLE}",
                    shown(s)
                ));
            };
            let ip: Ipv6Addr = inner
                .parse()
                .map_err(|_| format!("{} is not an IPv6 address", shown(inner)))?;
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let Some((host, port)) = s.rsplit_once(':') else {
                return Err(format!(
                    "{} has no port; expected host:port, {EXAMPLE}",
                    shown(s)
                ));
            };
            if host.contains(':') {
                return Err(format!(
                    "{} looks like an IPv6 address without brackets; write it as [address]:port, {EXAMPLE}",
                    shown(s)
                ));
            }
            (parse_host(host)?, port)
        };
        let port = parse_port(port)?;
        Ok(Self { host, port })
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for OrchestratorAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Dns(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

fn parse_port(port: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Err("the port is empty; expected host:port with a port in 1..=65535".into());
    }
    match port.parse::<u16>() {
        Ok(0) => Err("port 0 is not allowed; expected 1..=65535".into()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("port {} is not a number in 1..=65535", shown(port))),
    }
}

fn parse_host(host: &str) -> Result<Host, String> {
    if host.is_empty() {
        return Err("the host is empty; expected host:port".into());
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let bad = || format!("host {} is not a valid DNS name or IP address", shown(host));
    if name.is_empty() || name.len() > MAX_DNS_NAME_LEN {
        return Err(bad());
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= MAX_DNS_LABEL_LEN
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if !labels_ok {
        return Err(bad());
    }
    // An all-numeric last label is no DNS name (RFC 3696 §2): this is a mistyped IPv4 address.
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("host {} is not a valid IPv4 address", shown(host)));
    }
    Ok(Host::Dns(name.to_owned()))
}
