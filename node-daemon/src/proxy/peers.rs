//! What the orchestrator says about workloads on other nodes (`OrchMsg::Routes`/`Unroute`):
//! how each exposed workload is exposed, and where its instances run, for the proxy to send a
//! request on when no instance runs here.
//!
//! Each `Routes` replaces what was known of its workload; `Unroute` forgets it; a new session
//! forgets everything ([`PeerRoutes::clear`]), since the orchestrator sends it all again after
//! the welcome. Routes are checked as an assignment's are (the workload's name, each route's
//! host, prefix and bounds): a bad message is dropped whole and logged, and never stops the
//! proxy from routing the rest. An instance on this node itself, or at an address no peer can
//! be dialled at, is left out. It keeps at most [`MAX_WORKLOADS`] workloads.
//!
//! It never dials anything: it only says where the proxy may.

use edge_proto::{Location, NodeId, WorkloadRoutes};
use edge_proxy::Peer;
use node_core::proxy::tiers;
use node_core::spec::{Balance, Expose, WorkloadSpec};
use std::collections::HashMap;
use std::net::SocketAddr;
use tracing::warn;

/// The most workloads the node keeps peer routes for: a bound on what one session's messages
/// can make it hold (each is at most a frame, 64 KiB).
pub const MAX_WORKLOADS: usize = 1024;

/// Why a `Routes` message was dropped.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// Its workload name or one of its routes breaks the rules an assignment's follow.
    #[error("routes of {workload}: {reason}")]
    Invalid { workload: String, reason: String },
    /// The node already holds routes for [`MAX_WORKLOADS`] others.
    #[error("routes of {workload}: already routing {MAX_WORKLOADS} workloads")]
    Full { workload: String },
}

/// One workload known from the orchestrator.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    /// Its routes, as its own spec would carry them.
    pub expose: Vec<Expose>,
    /// Its instances on other nodes, with their distance from this one.
    pub peers: Vec<Peer>,
    /// The message it came in: the distances are measured from it again when this node
    /// moves.
    source: WorkloadRoutes,
}

/// The peer routes of every exposed workload, as this node uses them.
#[derive(Debug, Clone, Default)]
pub struct PeerRoutes {
    /// This node: its own instances are not peers.
    own: Option<NodeId>,
    /// Where this node is, for the distances.
    here: Option<Location>,
    workloads: HashMap<String, Routed>,
}

impl PeerRoutes {
    pub fn new(own: Option<NodeId>, here: Option<Location>) -> Self {
        Self {
            own,
            here,
            workloads: HashMap::new(),
        }
    }

    /// This node moved (a receiver's report): every peer's distance is measured again from
    /// `here`. Whether anything was known to measure.
    pub fn set_here(&mut self, here: Option<Location>) -> bool {
        if self.here == here {
            return false;
        }
        self.here = here;
        let known: Vec<WorkloadRoutes> =
            self.workloads.values().map(|r| r.source.clone()).collect();
        for routes in &known {
            // Each was accepted before, and nothing it is checked against changed.
            let _ = self.set(routes);
        }
        !known.is_empty()
    }

    /// This node's id, once it has one (after enrollment).
    pub fn set_own(&mut self, own: NodeId) {
        self.own = Some(own);
        for routed in self.workloads.values_mut() {
            routed.peers.retain(|p| p.node != own);
        }
    }

    /// Replaces what was known of `routes.workload`.
    pub fn set(&mut self, routes: &WorkloadRoutes) -> Result<(), RoutesError> {
        let workload = routes.workload.as_str().to_owned();
        let invalid = |reason: String| RoutesError::Invalid {
            workload: edge_proto::field::shown(&workload).to_string(),
            reason,
        };
        let expose: Vec<Expose> = routes.expose.as_slice().iter().map(expose_of).collect();
        // The rules of an assignment's routes, by way of the spec that would carry them.
        let mut spec = WorkloadSpec::new(&workload, "routes", "/");
        spec.expose = expose.clone();
        spec.validate().map_err(|e| invalid(e.to_string()))?;
        if !self.workloads.contains_key(&workload) && self.workloads.len() >= MAX_WORKLOADS {
            return Err(RoutesError::Full {
                workload: edge_proto::field::shown(&workload).to_string(),
            });
        }
        let peers = routes
            .instances
            .as_slice()
            .iter()
            .filter(|i| Some(i.node) != self.own)
            .filter_map(|i| {
                let addr = SocketAddr::from(i.peer);
                let ip = addr.ip();
                if addr.port() == 0 || ip.is_unspecified() || ip.is_multicast() {
                    warn!(%workload, node = %i.node, %addr, "a peer address no one can dial; left out");
                    return None;
                }
                let distance_km = self
                    .here
                    .as_ref()
                    .zip(i.location.as_ref())
                    .and_then(|(here, there)| tiers::distance_km(here, there));
                Some(Peer {
                    node: i.node,
                    addr,
                    distance_km,
                })
            })
            .collect();
        self.workloads.insert(
            workload,
            Routed {
                expose,
                peers,
                source: routes.clone(),
            },
        );
        Ok(())
    }

    /// Forgets `workload`. Whether it was known.
    pub fn unroute(&mut self, workload: &str) -> bool {
        self.workloads.remove(workload).is_some()
    }

    /// Forgets every workload: a new session sends them all again.
    pub fn clear(&mut self) {
        self.workloads.clear();
    }

    /// Every workload known, by name.
    pub fn workloads(&self) -> &HashMap<String, Routed> {
        &self.workloads
    }
}

/// A route as the wire carries it, as a spec carries it.
fn expose_of(e: &edge_proto::Expose) -> Expose {
    Expose {
        port: e.port,
        host: e.host.as_ref().map(|h| h.to_string()),
        path_prefix: e.path_prefix.as_ref().map(|p| p.to_string()),
        weight: e.weight,
        timeout_secs: e.timeout_secs,
        retries: e.retries,
        cache: e.cache,
        stale_if_offline_secs: e.stale_if_offline_secs,
        balance: match e.balance {
            edge_proto::Balance::PeakEwma => Balance::PeakEwma,
            edge_proto::Balance::RoundRobin => Balance::RoundRobin,
            edge_proto::Balance::LeastRequests => Balance::LeastRequests,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::{IpBytes, PeerAddr, PeerInstance, Seq, Str, text};

    fn node(n: u8) -> NodeId {
        NodeId([n; 16])
    }

    fn at(lat: f64, lon: f64) -> Location {
        Location {
            lat,
            lon,
            alt_m: None,
        }
    }

    fn wire_route(port: u16, host: Option<&str>, prefix: Option<&str>) -> edge_proto::Expose {
        edge_proto::Expose {
            port,
            host: host.and_then(Str::new),
            path_prefix: prefix.and_then(Str::new),
            weight: 1,
            timeout_secs: 30,
            retries: 2,
            cache: true,
            stale_if_offline_secs: 0,
            balance: edge_proto::Balance::PeakEwma,
        }
    }

    fn instance(n: u8, ip: [u8; 4], port: u16, location: Option<Location>) -> PeerInstance {
        PeerInstance {
            node: node(n),
            peer: PeerAddr {
                ip: IpBytes::V4(ip),
                port,
            },
            location,
        }
    }

    fn routes(
        name: &str,
        expose: Vec<edge_proto::Expose>,
        instances: Vec<PeerInstance>,
    ) -> WorkloadRoutes {
        WorkloadRoutes {
            workload: text(name),
            generation: 1,
            expose: Seq::new(expose).expect("within the bound"),
            instances: Seq::new(instances).expect("within the bound"),
        }
    }

    const BERLIN: (f64, f64) = (52.52, 13.405);
    const POTSDAM: (f64, f64) = (52.39, 13.06);

    #[test]
    fn peers_come_with_their_distance_and_never_this_node() {
        let mut book = PeerRoutes::new(Some(node(1)), Some(at(BERLIN.0, BERLIN.1)));
        book.set(&routes(
            "shop",
            vec![wire_route(8080, Some("shop.example"), None)],
            vec![
                instance(1, [10, 0, 0, 1], 8443, Some(at(BERLIN.0, BERLIN.1))),
                instance(2, [10, 0, 0, 2], 8443, Some(at(POTSDAM.0, POTSDAM.1))),
                instance(3, [10, 0, 0, 3], 8443, None),
            ],
        ))
        .expect("valid routes");
        let shop = &book.workloads()["shop"];
        assert_eq!(shop.expose.len(), 1);
        assert_eq!(shop.expose[0].host.as_deref(), Some("shop.example"));
        let peers: Vec<(NodeId, String)> = shop
            .peers
            .iter()
            .map(|p| (p.node, p.addr.to_string()))
            .collect();
        assert_eq!(
            peers,
            [
                (node(2), "10.0.0.2:8443".to_owned()),
                (node(3), "10.0.0.3:8443".to_owned())
            ],
            "this node's own instance is no peer"
        );
        let km = shop.peers[0].distance_km.expect("both places known");
        assert!((20.0..35.0).contains(&km), "{km}");
        assert_eq!(shop.peers[1].distance_km, None);

        // This node drives to Potsdam: the peer there is near now.
        assert!(book.set_here(Some(at(POTSDAM.0, POTSDAM.1))));
        let km = book.workloads()["shop"].peers[0]
            .distance_km
            .expect("both places known");
        assert!(km < 0.001, "{km}");
        assert!(!book.set_here(Some(at(POTSDAM.0, POTSDAM.1))), "no move");
        assert!(book.set_here(None));
        assert_eq!(book.workloads()["shop"].peers[0].distance_km, None, "lost");
    }

    #[test]
    fn routes_replace_unroute_forgets_and_a_session_starts_empty() {
        let mut book = PeerRoutes::new(None, None);
        let two = vec![
            instance(2, [10, 0, 0, 2], 8443, None),
            instance(3, [10, 0, 0, 3], 8443, None),
        ];
        book.set(&routes("a", vec![wire_route(80, None, Some("/a"))], two))
            .expect("valid");
        book.set(&routes("b", vec![wire_route(80, None, Some("/b"))], vec![]))
            .expect("valid");
        book.set(&routes(
            "a",
            vec![wire_route(80, None, Some("/a"))],
            vec![instance(3, [10, 0, 0, 3], 8443, None)],
        ))
        .expect("valid");
        assert_eq!(book.workloads()["a"].peers.len(), 1, "replaced, not merged");
        assert!(book.unroute("b"));
        assert!(!book.unroute("b"));
        assert_eq!(book.workloads().len(), 1);
        book.clear();
        assert!(book.workloads().is_empty());
        // The node's id comes with enrollment: its own instances drop out then.
        book.set(&routes(
            "a",
            vec![wire_route(80, None, Some("/a"))],
            vec![instance(7, [10, 0, 0, 7], 8443, None)],
        ))
        .expect("valid");
        book.set_own(node(7));
        assert!(book.workloads()["a"].peers.is_empty());
    }

    #[test]
    fn hostile_routes_are_dropped_whole_and_the_rest_stay() {
        let mut book = PeerRoutes::new(None, None);
        book.set(&routes(
            "good",
            vec![wire_route(80, None, Some("/"))],
            vec![],
        ))
        .expect("valid");
        let long = "x".repeat(1000);
        for bad in [
            routes("Bad Name", vec![wire_route(80, None, Some("/"))], vec![]),
            routes("w", vec![wire_route(0, None, Some("/"))], vec![]),
            routes("w", vec![wire_route(80, None, None)], vec![]),
            routes("w", vec![wire_route(80, Some("a b"), None)], vec![]),
            routes(
                "w",
                vec![wire_route(80, Some("SHOP.example"), None)],
                vec![],
            ),
            routes("w", vec![wire_route(80, None, Some("/a/../b"))], vec![]),
            routes("w", vec![wire_route(80, None, Some("/x\0"))], vec![]),
            routes("w", vec![wire_route(80, Some(&long), None)], vec![]),
            routes(
                "w",
                vec![
                    wire_route(80, None, Some("/same")),
                    wire_route(81, None, Some("/same")),
                ],
                vec![],
            ),
        ] {
            let error = book.set(&bad).expect_err("refused");
            assert!(error.to_string().len() < 400, "{error}");
        }
        let mut timeout = wire_route(80, None, Some("/"));
        timeout.timeout_secs = 0;
        book.set(&routes("w", vec![timeout], vec![]))
            .expect_err("timeout 0");
        assert_eq!(
            book.workloads().keys().collect::<Vec<_>>(),
            ["good"],
            "nothing bad was taken, nothing good lost"
        );
    }

    #[test]
    fn addresses_no_one_can_dial_are_left_out() {
        let mut book = PeerRoutes::new(None, None);
        let mut v6 = instance(5, [0; 4], 8443, None);
        v6.peer.ip = IpBytes::V6(std::net::Ipv6Addr::LOCALHOST.octets());
        book.set(&routes(
            "w",
            vec![wire_route(80, None, Some("/"))],
            vec![
                instance(2, [0, 0, 0, 0], 8443, None),
                instance(3, [10, 0, 0, 3], 0, None),
                instance(4, [224, 0, 0, 1], 8443, None),
                instance(6, [10, 0, 0, 6], 8443, Some(at(f64::NAN, 400.0))),
                v6,
            ],
        ))
        .expect("the routes themselves are fine");
        let peers = &book.workloads()["w"].peers;
        let nodes: Vec<NodeId> = peers.iter().map(|p| p.node).collect();
        assert_eq!(nodes, [node(6), node(5)]);
        assert_eq!(peers[0].distance_km, None, "a place off the globe: unknown");
    }

    #[test]
    fn the_book_holds_a_bounded_number_of_workloads() {
        let mut book = PeerRoutes::new(None, None);
        for i in 0..MAX_WORKLOADS {
            book.set(&routes(
                &format!("w{i}"),
                vec![wire_route(80, None, Some("/"))],
                vec![],
            ))
            .expect("within the bound");
        }
        let error = book
            .set(&routes(
                "one-more",
                vec![wire_route(80, None, Some("/"))],
                vec![],
            ))
            .expect_err("full");
        assert!(matches!(error, RoutesError::Full { .. }), "{error}");
        book.set(&routes("w0", vec![wire_route(81, None, Some("/"))], vec![]))
            .expect("a known one may still change");
    }
}
