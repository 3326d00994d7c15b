//! Purging the nodes' proxy caches: what an operator asks for (`POST /v1/cache/purge`,
//! `edgectl cache purge`), checked field by field, and which nodes it reaches.
//!
//! [`PurgeBody::validate`] turns the request into the wire's [`PurgeRequest`] and the
//! [`Targets`]; [`selector_matches`] says whether a node's labels are picked by a selector.
//! The answer's shape ([`PurgeAnswer`]) lives here too, so the API and `edgectl` speak the
//! same type. Hosts and paths follow `edge_proto::field`'s rules, so a purge names a cached
//! response the way a route names the requests it takes.

use edge_proto::field::{
    FieldError, FieldPath, check_host, check_labels, check_name, check_path_prefix, shown,
};
use edge_proto::{PurgeRequest, Str};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `POST /v1/cache/purge` as the operator writes it: one key (`host` and `path`) or every
/// key under a prefix (`path_prefix`, `host` optional), on one `node`, on the nodes a
/// `selector` picks, or with neither on the whole fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeBody {
    /// The host the responses were cached for (a DNS name or an IP address, no port).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub host: Option<String>,
    /// One target: a path with its query, as requested (`/menu.json?lang=de`).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub path: Option<String>,
    /// Every target whose path starts with this.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub path_prefix: Option<String>,
    /// Only this node (name or id).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub node: Option<String>,
    /// Only the nodes that carry every one of these labels.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub selector: Option<BTreeMap<String, String>>,
}

/// An optional field that, when present, holds a value: `null` is refused, as the OpenAPI
/// document says. Absent is `None`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// Which nodes a purge goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// The node with this name or id; unknown is the caller's error.
    Node(String),
    /// Every node whose labels include all of these.
    Selector(BTreeMap<String, String>),
    /// Every node.
    Fleet,
}

/// A purge that passed every check: what each node is told, and which nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    pub request: PurgeRequest,
    pub targets: Targets,
}

impl PurgeBody {
    /// Checks the request; an error names the field at fault.
    pub fn validate(&self) -> Result<Purge, FieldError> {
        let request = match (&self.path, &self.path_prefix) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    FieldPath::new("path_prefix"),
                    "give path (one response) or path_prefix (every response under it), not both",
                ));
            }
            (None, None) => {
                return Err(FieldError::new(
                    FieldPath::new("path"),
                    "missing: give path (one response) or path_prefix (every response under it)",
                ));
            }
            (Some(path), None) => {
                let Some(host) = &self.host else {
                    return Err(FieldError::new(
                        FieldPath::new("host"),
                        "missing: purging one path needs the host it was cached for",
                    ));
                };
                PurgeRequest::Key {
                    host: wire_host(host)?,
                    path_and_query: check_path_and_query(path)?,
                }
            }
            (None, Some(prefix)) => {
                let at = FieldPath::new("path_prefix");
                check_path_prefix(&at, prefix)?;
                PurgeRequest::Prefix {
                    host: self.host.as_deref().map(wire_host).transpose()?,
                    path_prefix: bounded(&at, prefix)?,
                }
            }
        };
        let targets = match (&self.node, &self.selector) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    FieldPath::new("selector"),
                    "give node or selector, not both; neither purges the whole fleet",
                ));
            }
            (Some(node), None) => {
                if node.is_empty() || node.len() > 64 || node.chars().any(char::is_control) {
                    // Neither a name (checked below) nor a 32-digit id.
                    check_name(&FieldPath::new("node"), node)?;
                }
                Targets::Node(node.clone())
            }
            (None, Some(selector)) => {
                let at = FieldPath::new("selector");
                if selector.is_empty() {
                    return Err(FieldError::new(
                        at,
                        "must name at least one label; leave selector out to purge every node",
                    ));
                }
                check_labels(&at, selector.iter())?;
                Targets::Selector(selector.clone())
            }
            (None, None) => Targets::Fleet,
        };
        Ok(Purge { request, targets })
    }
}

/// Whether a node with `labels` is picked by `selector`: it carries every label the
/// selector names, with the same value (as a workload's `requirements.labels` picks nodes).
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// `host` checked by `field`'s rule, in the form the node's cache keys carry: lower case,
/// an IPv6 address in brackets.
fn wire_host(host: &str) -> Result<Str<{ edge_proto::Expose::MAX_HOST_LEN }>, FieldError> {
    let at = FieldPath::new("host");
    let checked = check_host(&at, host)?;
    let keyed = if checked.contains(':') {
        format!("[{checked}]")
    } else {
        checked
    };
    bounded(&at, &keyed)
}

/// A path and query as a request line carries it: starts with `/`, printable ASCII (anything
/// else percent-encoded), no fragment, at most [`PurgeRequest::MAX_PATH_AND_QUERY_BYTES`].
fn check_path_and_query(
    value: &str,
) -> Result<Str<{ PurgeRequest::MAX_PATH_AND_QUERY_BYTES }>, FieldError> {
    let at = FieldPath::new("path");
    let invalid = |message: String| FieldError::new(at.clone(), message);
    if !value.starts_with('/') {
        return Err(invalid(format!("{} must start with '/'", shown(value))));
    }
    if let Some(c) = value.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(invalid(format!(
            "{} contains {c:?}; percent-encode it",
            shown(value)
        )));
    }
    if value.contains('#') {
        return Err(invalid(format!(
            "{} contains '#'; a cached response is named without a fragment",
            shown(value)
        )));
    }
    bounded(&at, value)
}

/// `value` in a wire string of at most `N` bytes, or an error at `at` that says the bound.
fn bounded<const N: usize>(at: &FieldPath, value: &str) -> Result<Str<N>, FieldError> {
    Str::new(value).ok_or_else(|| {
        FieldError::new(
            at.clone(),
            format!("is {} bytes long; at most {N} are allowed", value.len()),
        )
    })
}

/// The answer to a purge: each node targeted, by name, and the total removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeAnswer {
    pub nodes: Vec<NodePurge>,
    /// Stored responses removed, over every node that answered.
    pub purged: u64,
}

/// What one node did: `purged` when it answered, else `error` (offline, no proxy, no
/// answer in time, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePurge {
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PurgeAnswer {
    /// The answer from each node's result, sorted by node name.
    pub fn new(mut results: Vec<(String, Result<u64, String>)>) -> Self {
        results.sort_by(|a, b| a.0.cmp(&b.0));
        let purged = results
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .fold(0u64, |sum, n| sum.saturating_add(*n));
        let nodes = results
            .into_iter()
            .map(|(node, result)| match result {
                Ok(n) => NodePurge {
                    node,
                    purged: Some(n),
                    error: None,
                },
                Err(e) => NodePurge {
                    node,
                    purged: None,
                    error: Some(e),
                },
            })
            .collect();
        Self { nodes, purged }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> PurgeBody {
        serde_json::from_str(json).expect("a body")
    }

    fn refused(json: &str) -> String {
        body(json).validate().expect_err("refused").to_string()
    }

    #[test]
    fn one_key_on_every_node() {
        let p = body(r#"{"host": "Shop.Example.", "path": "/menu.json?lang=de"}"#)
            .validate()
            .expect("valid");
        assert_eq!(
            p.request,
            PurgeRequest::Key {
                host: Str::new("shop.example").expect("fits"),
                path_and_query: Str::new("/menu.json?lang=de").expect("fits"),
            }
        );
        assert_eq!(p.targets, Targets::Fleet);
    }

    #[test]
    fn a_prefix_on_any_host_or_one_and_ipv6_in_brackets() {
        let p = body(r#"{"path_prefix": "/img/", "node": "n1"}"#)
            .validate()
            .expect("valid");
        assert_eq!(
            p.request,
            PurgeRequest::Prefix {
                host: None,
                path_prefix: Str::new("/img/").expect("fits"),
            }
        );
        assert_eq!(p.targets, Targets::Node("n1".into()));
        let p = body(r#"{"host": "[::1]", "path_prefix": "/", "selector": {"site": "berlin"}}"#)
            .validate()
            .expect("valid");
        assert!(matches!(
            p.request,
            PurgeRequest::Prefix { host: Some(h), .. } if h.as_str() == "[::1]"
        ));
        assert!(matches!(p.targets, Targets::Selector(s) if s["site"] == "berlin"));
    }

    #[test]
    fn errors_name_the_field() {
        assert!(refused(r#"{"host": "a.b"}"#).starts_with("path: missing"));
        assert!(
            refused(r#"{"host": "a.b", "path": "/", "path_prefix": "/"}"#)
                .starts_with("path_prefix: ")
        );
        assert!(refused(r#"{"path": "/x"}"#).starts_with("host: missing"));
        assert!(refused(r#"{"host": "a b", "path": "/x"}"#).starts_with("host: "));
        assert!(refused(r#"{"host": "a.b:8080", "path": "/x"}"#).starts_with("host: "));
        assert!(refused(r#"{"host": "", "path_prefix": "/x"}"#).starts_with("host: "));
        assert!(refused(r#"{"host": "a.b", "path": "x"}"#).starts_with("path: "));
        assert!(refused(r#"{"host": "a.b", "path": "/a b"}"#).starts_with("path: "));
        assert!(refused(r#"{"host": "a.b", "path": "/a#b"}"#).starts_with("path: "));
        assert!(refused(r#"{"path_prefix": "/a?b"}"#).starts_with("path_prefix: "));
        assert!(refused(r#"{"path_prefix": "/../"}"#).starts_with("path_prefix: "));
        let long = format!(r#"{{"host": "a.b", "path": "/{}"}}"#, "x".repeat(8192));
        assert!(refused(&long).starts_with("path: is 8193 bytes long"));
        assert!(
            refused(r#"{"path_prefix": "/", "node": "n", "selector": {"a": "b"}}"#)
                .starts_with("selector: ")
        );
        assert!(refused(r#"{"path_prefix": "/", "selector": {}}"#).starts_with("selector: "));
        assert!(
            refused(r#"{"path_prefix": "/", "selector": {"bad key": "v"}}"#)
                .starts_with("selector.\"bad key\": ")
        );
        assert!(refused(r#"{"path_prefix": "/", "node": ""}"#).starts_with("node: "));
    }

    #[test]
    fn nulls_and_unknown_fields_are_refused() {
        assert!(serde_json::from_str::<PurgeBody>(r#"{"path": null}"#).is_err());
        assert!(serde_json::from_str::<PurgeBody>(r#"{"paths": "/"}"#).is_err());
    }

    #[test]
    fn a_selector_needs_every_label() {
        let labels: BTreeMap<String, String> = [("site", "berlin"), ("tier", "shop")]
            .map(|(k, v)| (k.into(), v.into()))
            .into();
        let sel = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect()
        };
        assert!(selector_matches(&sel(&[("site", "berlin")]), &labels));
        assert!(selector_matches(
            &sel(&[("site", "berlin"), ("tier", "shop")]),
            &labels
        ));
        assert!(!selector_matches(&sel(&[("site", "paris")]), &labels));
        assert!(!selector_matches(
            &sel(&[("site", "berlin"), ("x", "y")]),
            &labels
        ));
    }

    #[test]
    fn the_answer_sums_what_the_nodes_purged() {
        let a = PurgeAnswer::new(vec![
            ("n2".into(), Err("offline".into())),
            ("n1".into(), Ok(3)),
            ("n3".into(), Ok(2)),
        ]);
        assert_eq!(a.purged, 5);
        let json = serde_json::to_value(&a).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"nodes": [
                {"node": "n1", "purged": 3},
                {"node": "n2", "error": "offline"},
                {"node": "n3", "purged": 2},
            ], "purged": 5})
        );
    }
}
