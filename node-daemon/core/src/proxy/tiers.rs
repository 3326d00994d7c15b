//! Where a request for a workload may go when this node is one of several that run it: its
//! instances here, else the same workload on the nearest peer nodes, else the route's origins.
//!
//! A route's [`Target::Workload`] is served by three tiers of backends, each tried only when
//! the one before has nothing available (every backend gone or shut out by its breaker):
//! 1. [`Place::Local`]: the workload's instances on this node;
//! 2. [`Place::Peer`]: its instances on other nodes, the nearest first. Of the available peers
//!    whose distance is known, those within [`NEAR_KM`] or [`NEAR_RATIO`] of the nearest one
//!    (whichever reaches further) are eligible, so that two peers in one city share the load
//!    while one across the continent waits; peers of unknown location come after every known
//!    one;
//! 3. [`Place::Origin`]: the route's origins (a `[[proxy.upstream]]` with the workload's host
//!    and path prefix, merged into its route), as a fallback rather than a share of a split.
//!
//! Within the eligible tier, the route's balance strategy chooses
//! ([`crate::proxy::balance::Choose`]). [`pick`] is the matching choice of target: among a
//! route's workloads by weight, its origins only when no workload has a weight.
//!
//! Nothing here reads the clock or draws randomness: availability and draws come from the
//! caller.

use crate::proxy::balance::below_u64;
use crate::proxy::route::{Origin, Route, Target, WeightedTarget};
use edge_proto::Location;

/// A peer this much further than the nearest one is still as near (25 km: the same metro).
pub const NEAR_KM: f64 = 25.0;
/// A peer this many times as far as the nearest one is still as near (a quarter further).
pub const NEAR_RATIO: f64 = 1.25;

/// The mean radius of the Earth, in kilometres (IUGG).
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// The great-circle distance between two places, by the haversine formula. `None` when either
/// is not a place on the globe (out of range or not finite), as a peer's report might be.
pub fn distance_km(a: &Location, b: &Location) -> Option<f64> {
    if !a.is_valid() || !b.is_valid() {
        return None;
    }
    let (lat1, lat2) = (a.lat.to_radians(), b.lat.to_radians());
    let d_lat = lat2 - lat1;
    let d_lon = (b.lon - a.lon).to_radians();
    let h = (d_lat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (d_lon / 2.0).sin().powi(2);
    // Rounding can push `h` a hair past 1 for antipodes; the clamp keeps `asin` defined.
    let km = 2.0 * EARTH_RADIUS_KM * h.clamp(0.0, 1.0).sqrt().asin();
    km.is_finite().then_some(km)
}

/// Where a backend is, as the choice of tier sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Place {
    /// An instance on this node.
    Local,
    /// An instance on another node, this far away if both locations are known.
    Peer { distance_km: Option<f64> },
    /// An origin outside the fleet.
    Origin,
}

/// Which of `places` a request may be sent to now, given which are `available` (their
/// breakers let a request through; a missing entry counts as unavailable): the available
/// backends of the first tier that has any, and of the peers only the nearest (see the module
/// docs). All `false` when nothing is available.
pub fn eligible(places: &[Place], available: &[bool]) -> Vec<bool> {
    let up = |i: usize| available.get(i).copied().unwrap_or(false);
    let mut out = vec![false; places.len()];
    let locals: Vec<usize> = (0..places.len())
        .filter(|&i| up(i) && places.get(i) == Some(&Place::Local))
        .collect();
    if !locals.is_empty() {
        for i in locals {
            out[i] = true;
        }
        return out;
    }
    let peers: Vec<(usize, Option<f64>)> = places
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match p {
            Place::Peer { distance_km } if up(i) => {
                Some((i, distance_km.filter(|d| d.is_finite() && *d >= 0.0)))
            }
            _ => None,
        })
        .collect();
    let nearest = peers.iter().filter_map(|(_, d)| *d).min_by(f64::total_cmp);
    match nearest {
        Some(nearest) => {
            let reach = (nearest + NEAR_KM).max(nearest * NEAR_RATIO);
            for (i, d) in &peers {
                out[*i] = d.is_some_and(|d| d <= reach);
            }
            return out;
        }
        None if !peers.is_empty() => {
            for (i, _) in &peers {
                out[*i] = true;
            }
            return out;
        }
        None => {}
    }
    for (i, place) in places.iter().enumerate() {
        out[i] = up(i) && *place == Place::Origin;
    }
    out
}

/// The target of `route` a request takes, by weight from `draw` (a uniformly random `u64`):
/// among the route's workloads when any has a weight above 0, their origins being the
/// fallback ([`fallback`]); else among its origins, as a split between them. `None` when no
/// target has a weight above 0.
pub fn pick(route: &Route, draw: u64) -> Option<&WeightedTarget> {
    let workloads = || {
        route
            .targets
            .iter()
            .filter(|t| matches!(t.target, Target::Workload { .. }))
    };
    let total: u64 = workloads().map(|t| u64::from(t.weight)).sum();
    if total == 0 {
        return route.pick(draw);
    }
    let mut point = below_u64(draw, total);
    for target in workloads() {
        let weight = u64::from(target.weight);
        if point < weight {
            return Some(target);
        }
        point -= weight;
    }
    // Unreachable: `point < total`, the sum of the weights walked above.
    None
}

/// The origins a workload target of `route` falls back to: the route's origins that take a
/// share (weight above 0).
pub fn fallback(route: &Route) -> impl Iterator<Item = &Origin> {
    route.targets.iter().filter_map(|t| match &t.target {
        Target::Origin(origin) if t.weight > 0 => Some(origin),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::route::RouteSettings;
    use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest};

    fn at(lat: f64, lon: f64) -> Location {
        Location {
            lat,
            lon,
            alt_m: None,
        }
    }

    const BERLIN: (f64, f64) = (52.52, 13.405);
    const PARIS: (f64, f64) = (48.8566, 2.3522);
    const MUNICH: (f64, f64) = (48.1351, 11.582);

    #[test]
    fn distances_match_known_ones() {
        let km = |a: (f64, f64), b: (f64, f64)| {
            distance_km(&at(a.0, a.1), &at(b.0, b.1)).expect("valid places")
        };
        assert!(
            (km(BERLIN, PARIS) - 878.0).abs() < 5.0,
            "{}",
            km(BERLIN, PARIS)
        );
        assert!(
            (km(BERLIN, MUNICH) - 504.0).abs() < 5.0,
            "{}",
            km(BERLIN, MUNICH)
        );
        assert_eq!(km(BERLIN, BERLIN), 0.0);
        assert!(
            (km(BERLIN, PARIS) - km(PARIS, BERLIN)).abs() < 1e-9,
            "symmetric"
        );
        let half_way_round = km((0.0, 0.0), (0.0, 180.0));
        assert!((half_way_round - 20_015.1).abs() < 1.0, "{half_way_round}");
    }

    #[test]
    fn a_place_off_the_globe_has_no_distance() {
        let berlin = at(BERLIN.0, BERLIN.1);
        for bad in [
            at(f64::NAN, 0.0),
            at(0.0, f64::INFINITY),
            at(91.0, 0.0),
            at(0.0, -180.5),
        ] {
            assert_eq!(distance_km(&berlin, &bad), None, "{bad:?}");
            assert_eq!(distance_km(&bad, &berlin), None, "{bad:?}");
        }
    }

    fn peer(km: f64) -> Place {
        Place::Peer {
            distance_km: Some(km),
        }
    }

    const UNKNOWN: Place = Place::Peer { distance_km: None };

    #[test]
    fn local_instances_come_first() {
        let places = [peer(0.0), Place::Local, Place::Origin, Place::Local];
        assert_eq!(
            eligible(&places, &[true; 4]),
            [false, true, false, true],
            "a peer next door still waits for the local instances"
        );
        assert_eq!(
            eligible(&places, &[true, false, true, true]),
            [false, false, false, true]
        );
    }

    #[test]
    fn without_local_instances_the_nearest_peers_share() {
        let places = [
            peer(900.0),
            peer(10.0),
            peer(30.0),
            peer(40.0),
            Place::Origin,
        ];
        assert_eq!(
            eligible(&places, &[true; 5]),
            [false, true, true, false, false],
            "within 25 km of the nearest"
        );
        let places = [peer(400.0), peer(490.0), peer(510.0), Place::Local];
        assert_eq!(
            eligible(&places, &[true, true, true, false]),
            [true, true, false, false],
            "within a quarter further than the nearest"
        );
    }

    #[test]
    fn a_nearest_peer_shut_out_hands_over_to_the_next() {
        let places = [peer(5.0), peer(300.0), peer(310.0)];
        assert_eq!(eligible(&places, &[false, true, true]), [false, true, true]);
    }

    #[test]
    fn peers_of_unknown_place_come_after_the_known_ones() {
        let places = [UNKNOWN, peer(5000.0), UNKNOWN];
        assert_eq!(eligible(&places, &[true; 3]), [false, true, false]);
        assert_eq!(eligible(&places, &[true, false, true]), [true, false, true]);
    }

    #[test]
    fn origins_when_no_instance_is_available_and_nothing_when_none_is() {
        let places = [Place::Local, peer(1.0), Place::Origin, Place::Origin];
        assert_eq!(
            eligible(&places, &[false, false, true, true]),
            [false, false, true, true]
        );
        assert_eq!(eligible(&places, &[false; 4]), [false; 4]);
        assert_eq!(
            eligible(&places, &[false]),
            [false; 4],
            "a short availability list leaves the rest out"
        );
        assert_eq!(eligible(&[], &[true]), Vec::<bool>::new());
    }

    #[test]
    fn hostile_distances_count_as_unknown() {
        let places = [peer(f64::NAN), peer(-3.0), peer(f64::INFINITY), peer(70.0)];
        assert_eq!(eligible(&places, &[true; 4]), [false, false, false, true]);
    }

    fn workload(name: &str, weight: u32) -> WeightedTarget {
        WeightedTarget {
            target: Target::Workload {
                workload: name.into(),
                port: 8080,
            },
            weight,
        }
    }

    fn origin(host: &str, weight: u32) -> WeightedTarget {
        WeightedTarget {
            target: Target::Origin(Origin {
                host: host.into(),
                port: 80,
                base_path: String::new(),
            }),
            weight,
        }
    }

    fn route(targets: Vec<WeightedTarget>) -> Route {
        Route {
            name: "r".into(),
            host: None,
            path_prefix: Some("/".into()),
            targets,
            settings: RouteSettings::default(),
        }
    }

    #[test]
    fn an_origin_beside_a_workload_is_its_fallback_not_a_share() {
        let r = route(vec![origin("o", 1000), workload("w", 1)]);
        for draw in [0, u64::MAX / 2, u64::MAX] {
            assert_eq!(pick(&r, draw), Some(&workload("w", 1)));
        }
        let hosts: Vec<&str> = fallback(&r).map(|o| o.host.as_str()).collect();
        assert_eq!(hosts, ["o"]);
    }

    #[test]
    fn workloads_split_by_weight_and_origins_alone_too() {
        let r = route(vec![workload("a", 1), origin("o", 5), workload("b", 3)]);
        assert_eq!(pick(&r, 0), Some(&workload("a", 1)));
        assert_eq!(pick(&r, u64::MAX), Some(&workload("b", 3)));
        let r = route(vec![origin("o1", 1), origin("o2", 1)]);
        assert_eq!(pick(&r, 0), Some(&origin("o1", 1)));
        assert_eq!(pick(&r, u64::MAX), Some(&origin("o2", 1)));
        let drained = route(vec![workload("w", 0), origin("o", 1), origin("off", 0)]);
        assert_eq!(
            pick(&drained, 7),
            Some(&origin("o", 1)),
            "a drained workload leaves the origins"
        );
        assert_eq!(
            fallback(&drained).count(),
            1,
            "an origin of weight 0 takes nothing"
        );
        assert_eq!(pick(&route(vec![workload("w", 0)]), 7), None);
    }

    proptest! {
        #[test]
        fn choices_stay_in_one_tier_and_never_pick_the_unavailable(
            spec in proptest::collection::vec((0u8..4, any::<bool>(), any::<f64>()), 0..16),
        ) {
            let places: Vec<Place> = spec
                .iter()
                .map(|(kind, _, km)| match kind {
                    0 => Place::Local,
                    1 => Place::Origin,
                    2 => Place::Peer { distance_km: None },
                    _ => Place::Peer { distance_km: Some(*km) },
                })
                .collect();
            let available: Vec<bool> = spec.iter().map(|(_, up, _)| *up).collect();
            let out = eligible(&places, &available);
            prop_assert_eq!(out.len(), places.len());
            let chosen: Vec<&Place> = places
                .iter()
                .zip(&out)
                .filter(|(_, e)| **e)
                .map(|(p, _)| p)
                .collect();
            for (i, e) in out.iter().enumerate() {
                prop_assert!(!*e || available[i]);
            }
            let tier = |p: &Place| match p {
                Place::Local => 0,
                Place::Peer { .. } => 1,
                Place::Origin => 2,
            };
            if let Some(first) = chosen.first() {
                prop_assert!(chosen.iter().all(|p| tier(p) == tier(first)));
                prop_assert!(
                    places
                        .iter()
                        .zip(&available)
                        .all(|(p, up)| !*up || tier(p) >= tier(first)),
                    "no available backend of an earlier tier is passed over"
                );
            } else {
                prop_assert!(available.iter().all(|up| !up));
            }
        }

        #[test]
        fn any_location_gives_a_distance_or_none_never_a_panic(
            a in (any::<f64>(), any::<f64>()),
            b in (-90.0f64..=90.0, -180.0f64..=180.0),
        ) {
            let d = distance_km(&at(a.0, a.1), &at(b.0, b.1));
            if let Some(d) = d {
                prop_assert!((0.0..=20_016.0).contains(&d), "{}", d);
            }
        }
    }
}
