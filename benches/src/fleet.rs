//! Where a generated fleet stands: the sites that the criterion placement bench scatters its
//! `NodeView`s over and that `api-placements` gives its simulated nodes, so a `site` label and
//! a `near` requirement mean the same places in both.

/// Twelve European sites: the `site` label and the centre (latitude, longitude in degrees)
/// that the site's nodes are scattered around.
pub const SITES: [(&str, f64, f64); 12] = [
    ("berlin", 52.52, 13.40),
    ("paris", 48.86, 2.35),
    ("rome", 41.90, 12.50),
    ("madrid", 40.42, -3.70),
    ("vienna", 48.21, 16.37),
    ("warsaw", 52.23, 21.01),
    ("oslo", 59.91, 10.75),
    ("lisbon", 38.72, -9.14),
    ("prague", 50.08, 14.44),
    ("dublin", 53.35, -6.26),
    ("helsinki", 60.17, 24.94),
    ("athens", 37.98, 23.73),
];
