//! Route distribution: where every exposed workload runs, as the nodes' proxies need it to
//! send a request to the same workload on a peer node.
//!
//! [`RouteBook`] is fed with what the orchestrator learns (a workload's routes changed or it
//! was deleted, an instance changed state, a node came online or went offline, moved, or said
//! where its proxy listens for peers) and returns the [`OrchMsg`]s to broadcast to every
//! online node: a [`WorkloadRoutes`] for each exposed workload whose entry changed, an
//! [`Unroute`] for one that is no longer exposed. [`RouteBook::snapshot`] is what a node whose
//! session just opened gets: the node forgets its peer routes at every session and takes
//! what comes.
//!
//! An instance is listed while its node reports it `Running`, is online, and has advertised
//! a usable peer address. Everything here is derived and kept in memory: a node sends its
//! advert and its instances' states again with every session.
//!
//! **Invariants.** Pure: no I/O, no clock. A message goes out only when the entry nodes hold
//! would change, so a repeated report or advert costs nothing on the wire. Every route
//! message fits one frame (the bounds of [`WorkloadRoutes`], pinned by the wire tests).

use crate::fleet::NodeRecord;
use edge_proto::{
    Assignment, Expose, Location, NodeId, OrchMsg, PeerAddr, PeerInstance, ProxyAdvert, Seq,
    Unroute, WorkloadRoutes, WorkloadState, text,
};
use std::collections::{BTreeMap, BTreeSet};

/// Where every deployed workload runs and which of its instances peers can reach.
#[derive(Debug, Clone, Default)]
pub struct RouteBook {
    /// Every deployed workload, exposed or not: an instance's state is kept from its first
    /// report, so a workload that gains routes lists its running instances at once.
    workloads: BTreeMap<String, Workload>,
    /// Online nodes, and nodes that said something before their session was seen to open.
    nodes: BTreeMap<NodeId, Peer>,
}

#[derive(Debug, Clone)]
struct Workload {
    generation: u64,
    expose: Seq<Expose, { Assignment::MAX_EXPOSE }>,
    /// Nodes whose last report of this workload was `Running`.
    running: BTreeSet<NodeId>,
    /// What online nodes were last told; `None` while the workload is not exposed.
    sent: Option<WorkloadRoutes>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Peer {
    online: bool,
    /// From this session's advert; `None` until one names a usable address.
    addr: Option<PeerAddr>,
    location: Option<Location>,
}

impl RouteBook {
    pub fn new() -> Self {
        Self::default()
    }

    /// A workload was deployed or changed: its routes and generation are the assignment's.
    /// A workload whose spec has no routes any more is unrouted.
    pub fn workload_changed(&mut self, assignment: &Assignment) -> Vec<OrchMsg> {
        let name = assignment.workload.as_str();
        let entry = self
            .workloads
            .entry(name.to_owned())
            .or_insert_with(|| Workload {
                generation: assignment.generation,
                expose: Seq::default(),
                running: BTreeSet::new(),
                sent: None,
            });
        entry.generation = assignment.generation;
        entry.expose = assignment.expose.clone();
        self.refresh(name).into_iter().collect()
    }

    /// A workload was deleted: nodes forget its routes if it had any.
    pub fn workload_deleted(&mut self, name: &str) -> Vec<OrchMsg> {
        match self.workloads.remove(name) {
            Some(Workload { sent: Some(_), .. }) => vec![unroute(name)],
            _ => Vec::new(),
        }
    }

    /// A node reported an instance's state. A report of a workload that is not deployed
    /// (deleted while the report was on its way) is ignored.
    pub fn instance_state(
        &mut self,
        node: NodeId,
        workload: &str,
        state: WorkloadState,
    ) -> Vec<OrchMsg> {
        let Some(entry) = self.workloads.get_mut(workload) else {
            return Vec::new();
        };
        let changed = if state == WorkloadState::Running {
            entry.running.insert(node)
        } else {
            entry.running.remove(&node)
        };
        if changed {
            self.refresh(workload).into_iter().collect()
        } else {
            Vec::new()
        }
    }

    /// A node said where peers reach its proxy. An address no peer can dial (unspecified,
    /// multicast, broadcast, port 0) counts as none: the node's instances are not listed.
    pub fn proxy_advert(&mut self, node: NodeId, advert: ProxyAdvert) -> Vec<OrchMsg> {
        let addr = advert.peer.filter(|a| dialable(*a));
        let peer = self.nodes.entry(node).or_default();
        if peer.addr == addr {
            return Vec::new();
        }
        peer.addr = addr;
        self.refresh_node(node)
    }

    /// A node's session opened; `location` is where its record says it is. Its advert and
    /// its instances' states come with the session's first messages.
    pub fn node_online(&mut self, node: NodeId, location: Option<Location>) -> Vec<OrchMsg> {
        let peer = self.nodes.entry(node).or_default();
        let location = location.filter(Location::is_valid);
        if peer.online && peer.location == location {
            return Vec::new();
        }
        peer.online = true;
        peer.location = location;
        self.refresh_node(node)
    }

    /// A node's last session ended (or the node was deleted): its instances are no longer
    /// listed, and its advert and their states are forgotten until its next session sends
    /// them again.
    pub fn node_offline(&mut self, node: NodeId) -> Vec<OrchMsg> {
        self.nodes.remove(&node);
        let mut out = Vec::new();
        let names: Vec<String> = self
            .workloads
            .iter_mut()
            .filter_map(|(name, w)| w.running.remove(&node).then(|| name.clone()))
            .collect();
        for name in names {
            out.extend(self.refresh(&name));
        }
        out
    }

    /// A node's record changed; `location` is where it now says it is.
    pub fn node_moved(&mut self, node: NodeId, location: Option<Location>) -> Vec<OrchMsg> {
        let location = location.filter(Location::is_valid);
        match self.nodes.get_mut(&node) {
            Some(peer) if peer.location != location => {
                peer.location = location;
                self.refresh_node(node)
            }
            _ => Vec::new(),
        }
    }

    /// What a node whose session just opened must hold: the routes of every exposed
    /// workload, by name.
    pub fn snapshot(&self) -> Vec<OrchMsg> {
        self.workloads
            .values()
            .filter_map(|w| w.sent.clone())
            .map(|r| OrchMsg::Routes(Box::new(r)))
            .collect()
    }

    /// The nodes broadcasts go to: every node whose session is open.
    pub fn online(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes
            .iter()
            .filter(|(_, p)| p.online)
            .map(|(id, _)| *id)
    }

    /// Where peers reach an online node's proxy, if it said.
    pub fn peer_addr(&self, node: NodeId) -> Option<PeerAddr> {
        self.nodes.get(&node).filter(|p| p.online)?.addr
    }

    /// The routes nodes hold for a workload; `None` if it is not exposed.
    pub fn routes_of(&self, workload: &str) -> Option<&WorkloadRoutes> {
        self.workloads.get(workload)?.sent.as_ref()
    }

    /// Recomputes every workload `node` runs.
    fn refresh_node(&mut self, node: NodeId) -> Vec<OrchMsg> {
        let names: Vec<String> = self
            .workloads
            .iter()
            .filter(|(_, w)| w.running.contains(&node))
            .map(|(name, _)| name.clone())
            .collect();
        names.iter().filter_map(|n| self.refresh(n)).collect()
    }

    /// Recomputes one workload's entry; the message to broadcast if it changed.
    fn refresh(&mut self, name: &str) -> Option<OrchMsg> {
        let w = self.workloads.get(name)?;
        let now = (!w.expose.as_slice().is_empty()).then(|| WorkloadRoutes {
            workload: text(name),
            generation: w.generation,
            expose: w.expose.clone(),
            instances: self.instances(w),
        });
        let w = self.workloads.get_mut(name)?;
        if w.sent == now {
            return None;
        }
        let msg = match &now {
            Some(r) => OrchMsg::Routes(Box::new(r.clone())),
            None => unroute(name),
        };
        w.sent = now;
        Some(msg)
    }

    /// The instances peers can reach, by node id; the first
    /// [`WorkloadRoutes::MAX_INSTANCES`] when there are more.
    fn instances(&self, w: &Workload) -> Seq<PeerInstance, { WorkloadRoutes::MAX_INSTANCES }> {
        let listed: Vec<PeerInstance> = w
            .running
            .iter()
            .filter_map(|node| {
                let peer = self.nodes.get(node).filter(|p| p.online)?;
                Some(PeerInstance {
                    node: *node,
                    peer: peer.addr?,
                    location: peer.location,
                })
            })
            .take(WorkloadRoutes::MAX_INSTANCES)
            .collect();
        // Invariant: `take` keeps it within the bound.
        Seq::new(listed).unwrap_or_default()
    }
}

/// Where the registry says a node is, as the wire carries it.
pub fn location(record: &NodeRecord) -> Option<Location> {
    record.info.location.map(|g| Location {
        lat: g.lat,
        lon: g.lon,
        alt_m: g.alt_m,
    })
}

fn unroute(name: &str) -> OrchMsg {
    OrchMsg::Unroute(Unroute {
        workload: text(name),
    })
}

/// Whether another node could dial `addr`.
fn dialable(addr: PeerAddr) -> bool {
    let ip = core::net::IpAddr::from(addr.ip);
    let broadcast = matches!(ip, core::net::IpAddr::V4(v4) if v4.is_broadcast());
    addr.port != 0 && !ip.is_unspecified() && !ip.is_multicast() && !broadcast
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::{Balance, IpBytes, Str};

    fn id(i: u8) -> NodeId {
        NodeId([i; 16])
    }

    fn addr(i: u8) -> PeerAddr {
        PeerAddr {
            ip: IpBytes::V4([10, 0, 0, i]),
            port: 8443,
        }
    }

    fn advert(i: u8) -> ProxyAdvert {
        ProxyAdvert {
            peer: Some(addr(i)),
        }
    }

    fn at(lat: f64, lon: f64) -> Option<Location> {
        Some(Location {
            lat,
            lon,
            alt_m: None,
        })
    }

    fn route(prefix: &str) -> Expose {
        Expose {
            port: 8080,
            host: None,
            path_prefix: Some(Str::new(prefix).expect("short")),
            weight: 100,
            timeout_secs: 30,
            retries: 2,
            cache: false,
            stale_if_offline_secs: 0,
            balance: Balance::PeakEwma,
        }
    }

    fn assignment(name: &str, generation: u64, routes: &[&str]) -> Assignment {
        Assignment {
            workload: text(name),
            version: text("1"),
            generation,
            artifact: [1; 32],
            artifact_size: 1,
            args: Seq::default(),
            env: Seq::default(),
            working_dir: None,
            cpu_millis: None,
            memory_bytes: None,
            disk_bytes: None,
            restart: edge_proto::RestartPolicy::Always,
            health: None,
            expose: Seq::new(routes.iter().map(|p| route(p)).collect()).expect("few"),
            scale_to_zero_idle_secs: None,
            image: None,
        }
    }

    /// The routes in `msgs`, which must be exactly one `Routes` message.
    fn only_routes(msgs: Vec<OrchMsg>) -> WorkloadRoutes {
        match <[OrchMsg; 1]>::try_from(msgs) {
            Ok([OrchMsg::Routes(r)]) => *r,
            other => panic!("one Routes message expected, got {other:?}"),
        }
    }

    fn listed(r: &WorkloadRoutes) -> Vec<NodeId> {
        r.instances.as_slice().iter().map(|i| i.node).collect()
    }

    /// Nodes 1..=n online at distinct places with adverts, and `web` exposed on `/`.
    fn book(n: u8) -> RouteBook {
        let mut b = RouteBook::new();
        for i in 1..=n {
            b.node_online(id(i), at(f64::from(i), 10.0));
            b.proxy_advert(id(i), advert(i));
        }
        b.workload_changed(&assignment("web", 1, &["/"]));
        b
    }

    #[test]
    fn an_exposed_workload_lists_its_running_instances_and_nothing_else() {
        let mut b = book(3);
        assert_eq!(b.online().collect::<Vec<_>>(), [id(1), id(2), id(3)]);
        let empty = b.routes_of("web").expect("exposed");
        assert_eq!(empty.generation, 1);
        assert!(empty.instances.as_slice().is_empty());

        // Starting is not serving yet.
        assert!(
            b.instance_state(id(2), "web", WorkloadState::Starting)
                .is_empty()
        );
        let r = only_routes(b.instance_state(id(2), "web", WorkloadState::Running));
        assert_eq!(r.workload.as_str(), "web");
        assert_eq!(r.expose.as_slice(), [route("/")]);
        assert_eq!(
            r.instances.as_slice(),
            [PeerInstance {
                node: id(2),
                peer: addr(2),
                location: at(2.0, 10.0),
            }]
        );
        // The same state again changes nothing, so nothing is sent.
        assert!(
            b.instance_state(id(2), "web", WorkloadState::Running)
                .is_empty()
        );
        let r = only_routes(b.instance_state(id(1), "web", WorkloadState::Running));
        assert_eq!(listed(&r), [id(1), id(2)]);
        // Unhealthy, failed or stopped: off the list.
        for (i, state) in [(1, WorkloadState::Unhealthy), (2, WorkloadState::Stopped)] {
            let r = only_routes(b.instance_state(id(i), "web", state));
            assert!(!listed(&r).contains(&id(i)));
        }
    }

    #[test]
    fn only_nodes_online_with_a_usable_advert_are_listed() {
        let mut b = RouteBook::new();
        b.workload_changed(&assignment("web", 1, &["/"]));
        // Running, but neither online nor advertised yet: listed by nobody.
        assert!(
            b.instance_state(id(1), "web", WorkloadState::Running)
                .is_empty()
        );
        assert!(b.node_online(id(1), None).is_empty());
        let r = only_routes(b.proxy_advert(id(1), advert(1)));
        assert_eq!(listed(&r), [id(1)]);
        assert_eq!(b.peer_addr(id(1)), Some(addr(1)));
        // The same advert again: nothing to send.
        assert!(b.proxy_advert(id(1), advert(1)).is_empty());
        // A new address is news.
        let moved = PeerAddr {
            ip: IpBytes::V6([0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]),
            port: 443,
        };
        let r = only_routes(b.proxy_advert(id(1), ProxyAdvert { peer: Some(moved) }));
        assert_eq!(r.instances.as_slice()[0].peer, moved);
        // The listener went away.
        let r = only_routes(b.proxy_advert(id(1), ProxyAdvert { peer: None }));
        assert!(listed(&r).is_empty());
        assert_eq!(b.peer_addr(id(1)), None);
    }

    #[test]
    fn addresses_no_peer_can_dial_count_as_no_advert() {
        let mut b = book(1);
        only_routes(b.instance_state(id(1), "web", WorkloadState::Running));
        let hostile = [
            PeerAddr {
                ip: IpBytes::V4([0, 0, 0, 0]),
                port: 8443,
            },
            PeerAddr {
                ip: IpBytes::V6([0; 16]),
                port: 8443,
            },
            PeerAddr {
                ip: IpBytes::V4([10, 0, 0, 1]),
                port: 0,
            },
            PeerAddr {
                ip: IpBytes::V4([224, 0, 0, 1]),
                port: 8443,
            },
            PeerAddr {
                ip: IpBytes::V4([255, 255, 255, 255]),
                port: 8443,
            },
            PeerAddr {
                ip: IpBytes::V6([0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
                port: 8443,
            },
        ];
        let r = only_routes(b.proxy_advert(
            id(1),
            ProxyAdvert {
                peer: Some(hostile[0]),
            },
        ));
        assert!(listed(&r).is_empty());
        for bad in &hostile[1..] {
            assert!(
                b.proxy_advert(id(1), ProxyAdvert { peer: Some(*bad) })
                    .is_empty(),
                "{bad} is no address either"
            );
            assert_eq!(b.peer_addr(id(1)), None);
        }
        // Loopback is a real address (nodes on one host, as tests run them).
        let local = PeerAddr {
            ip: IpBytes::V4([127, 0, 0, 2]),
            port: 8443,
        };
        let r = only_routes(b.proxy_advert(id(1), ProxyAdvert { peer: Some(local) }));
        assert_eq!(r.instances.as_slice()[0].peer, local);
    }

    #[test]
    fn a_node_going_offline_takes_its_instances_advert_and_states_along() {
        let mut b = book(2);
        b.instance_state(id(1), "web", WorkloadState::Running);
        only_routes(b.instance_state(id(2), "web", WorkloadState::Running));
        let r = only_routes(b.node_offline(id(1)));
        assert_eq!(listed(&r), [id(2)]);
        assert_eq!(b.online().collect::<Vec<_>>(), [id(2)]);
        assert_eq!(b.peer_addr(id(1)), None);
        // Back online: nothing is listed until its new session advertises and reports.
        assert!(b.node_online(id(1), at(1.0, 10.0)).is_empty());
        assert!(b.proxy_advert(id(1), advert(1)).is_empty());
        let r = only_routes(b.instance_state(id(1), "web", WorkloadState::Running));
        assert_eq!(listed(&r), [id(1), id(2)]);
        // A node with nothing listed goes without a message.
        assert!(b.node_offline(id(3)).is_empty());
    }

    #[test]
    fn a_session_replaced_while_online_keeps_what_the_node_said() {
        let mut b = book(1);
        only_routes(b.instance_state(id(1), "web", WorkloadState::Running));
        // The node's new session opened before its old one was seen to end.
        assert!(b.node_online(id(1), at(1.0, 10.0)).is_empty());
        assert_eq!(listed(b.routes_of("web").expect("exposed")), [id(1)]);
    }

    #[test]
    fn a_move_updates_the_location_peers_measure_from() {
        let mut b = book(2);
        only_routes(b.instance_state(id(1), "web", WorkloadState::Running));
        let r = only_routes(b.node_moved(id(1), at(48.85, 2.35)));
        assert_eq!(r.instances.as_slice()[0].location, at(48.85, 2.35));
        assert!(b.node_moved(id(1), at(48.85, 2.35)).is_empty());
        // A node that runs nothing moves silently.
        assert!(b.node_moved(id(2), at(0.0, 0.0)).is_empty());
        // A location off the globe, or not a number, is no location.
        for bad in [at(91.0, 0.0), at(f64::NAN, 0.0), at(0.0, f64::INFINITY)] {
            let r = b.node_moved(id(1), bad);
            if let Some(OrchMsg::Routes(r)) = r.first() {
                assert_eq!(r.instances.as_slice()[0].location, None);
            }
            assert_eq!(
                b.routes_of("web").expect("exposed").instances.as_slice()[0].location,
                None
            );
        }
        // NaN never equals itself: were it kept, every refresh would look like a change.
        assert!(b.node_moved(id(1), at(f64::NAN, 0.0)).is_empty());
    }

    #[test]
    fn workload_changes_send_routes_and_unroute_only_when_the_entry_changes() {
        let mut b = book(1);
        only_routes(b.instance_state(id(1), "web", WorkloadState::Running));
        // The same assignment again (a placement change, say): nothing to send.
        assert!(b.workload_changed(&assignment("web", 1, &["/"])).is_empty());
        // A new generation with new routes replaces the entry, instances kept.
        let r = only_routes(b.workload_changed(&assignment("web", 2, &["/api", "/v2"])));
        assert_eq!(r.generation, 2);
        assert_eq!(r.expose.as_slice(), [route("/api"), route("/v2")]);
        assert_eq!(listed(&r), [id(1)]);
        // No routes any more: unrouted, once.
        assert_eq!(
            b.workload_changed(&assignment("web", 3, &[])),
            [OrchMsg::Unroute(Unroute {
                workload: text("web")
            })]
        );
        assert!(b.routes_of("web").is_none());
        assert!(b.workload_changed(&assignment("web", 4, &[])).is_empty());
        // Instances of an unexposed workload send nothing, yet count once it is exposed.
        assert!(
            b.instance_state(id(1), "web", WorkloadState::Stopped)
                .is_empty()
        );
        assert!(
            b.instance_state(id(1), "web", WorkloadState::Running)
                .is_empty()
        );
        let r = only_routes(b.workload_changed(&assignment("web", 5, &["/"])));
        assert_eq!(listed(&r), [id(1)]);
    }

    #[test]
    fn deleting_a_workload_unroutes_it_and_forgets_its_instances() {
        let mut b = book(1);
        b.workload_changed(&assignment("batch", 1, &[]));
        only_routes(b.instance_state(id(1), "web", WorkloadState::Running));
        assert_eq!(
            b.workload_deleted("web"),
            [OrchMsg::Unroute(Unroute {
                workload: text("web")
            })]
        );
        assert!(b.workload_deleted("web").is_empty());
        // A workload that never had routes goes silently.
        assert!(b.workload_deleted("batch").is_empty());
        // A late report of a deleted workload is not a deployment.
        assert!(
            b.instance_state(id(1), "web", WorkloadState::Running)
                .is_empty()
        );
        // Deployed again by the same name: it starts with no instances.
        let r = only_routes(b.workload_changed(&assignment("web", 1, &["/"])));
        assert!(listed(&r).is_empty());
    }

    #[test]
    fn a_node_event_refreshes_every_workload_it_runs_and_no_other() {
        let mut b = book(2);
        b.workload_changed(&assignment("api", 1, &["/api"]));
        b.workload_changed(&assignment("other", 1, &["/other"]));
        b.instance_state(id(1), "web", WorkloadState::Running);
        b.instance_state(id(1), "api", WorkloadState::Running);
        b.instance_state(id(2), "other", WorkloadState::Running);
        let msgs = b.proxy_advert(id(1), advert(9));
        let names: Vec<&str> = msgs
            .iter()
            .map(|m| match m {
                OrchMsg::Routes(r) => r.workload.as_str(),
                other => panic!("only routes: {other:?}"),
            })
            .collect();
        assert_eq!(names, ["api", "web"]);
    }

    #[test]
    fn the_snapshot_holds_every_exposed_workload_as_last_sent() {
        let mut b = book(2);
        b.workload_changed(&assignment("api", 7, &["/api"]));
        b.workload_changed(&assignment("batch", 1, &[]));
        b.instance_state(id(2), "api", WorkloadState::Running);
        let snapshot = b.snapshot();
        let routes: Vec<(&str, u64, Vec<NodeId>)> = snapshot
            .iter()
            .map(|m| match m {
                OrchMsg::Routes(r) => (r.workload.as_str(), r.generation, listed(r)),
                other => panic!("only routes: {other:?}"),
            })
            .collect();
        assert_eq!(routes, [("api", 7, vec![id(2)]), ("web", 1, vec![])]);
        assert!(RouteBook::new().snapshot().is_empty());
    }

    #[test]
    fn a_workload_on_more_nodes_than_a_message_holds_lists_the_first_by_id() {
        let mut b = book(70);
        for i in 1..=70 {
            b.instance_state(id(i), "web", WorkloadState::Running);
        }
        let r = b.routes_of("web").expect("exposed");
        assert_eq!(r.instances.as_slice().len(), WorkloadRoutes::MAX_INSTANCES);
        assert_eq!(listed(r), (1..=64).map(id).collect::<Vec<_>>());
        // One of those leaving makes room for the next.
        let r = only_routes(b.node_offline(id(3)));
        assert_eq!(r.instances.as_slice().len(), WorkloadRoutes::MAX_INSTANCES);
        assert!(listed(&r).contains(&id(65)));
        // A change beyond the first 64 changes nothing nodes hold.
        assert!(b.node_offline(id(70)).is_empty());
        let frame = edge_proto::try_encode(&OrchMsg::Routes(Box::new(r)));
        assert!(frame.is_ok(), "the fullest entry fits one frame");
    }

    #[test]
    fn a_record_location_becomes_the_wire_location() {
        let stored = serde_json::json!({
            "id": id(1).to_string(),
            "name": "n1",
            "enrolled_unix": 0,
            "last_seen_unix": 0,
            "info": {
                "arch": "aarch64", "os": "linux", "os_version": "", "kernel": "", "hostname": "",
                "cpus": 4, "cpu_model": "", "memory_bytes": 1, "disk_bytes": 1,
                "disk_free_bytes": 1, "accelerators": [], "board": null, "labels": {},
                "location": {"lat": 52.52, "lon": 13.405, "alt_m": 34.0}
            }
        });
        let record: NodeRecord = serde_json::from_str(&stored.to_string()).expect("a node record");
        assert_eq!(
            location(&record),
            Some(Location {
                lat: 52.52,
                lon: 13.405,
                alt_m: Some(34.0)
            })
        );
        let mut nowhere = record;
        nowhere.info.location = None;
        assert_eq!(location(&nowhere), None);
    }
}
