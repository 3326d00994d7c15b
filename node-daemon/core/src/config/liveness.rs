//! `liveness`: how often the node proves it is alive and how soon a silent link counts as
//! dead (see [`edge_proto::liveness`]). `"fast"` (the default), `"metered"`, or
//! `{ keep_alive_secs = N, idle_timeout_secs = M }`.

use super::error::{ConfigError, invalid};
use edge_proto::field::{FieldPath, shown};
use edge_proto::liveness::Liveness;
use std::time::Duration;

/// What `liveness` may be, for the error that names another value.
const EXPECTED: &str =
    "expected \"fast\", \"metered\" or { keep_alive_secs = N, idle_timeout_secs = M }";

/// Bounds of `keep_alive_secs`: a keep-alive at least every 5 minutes.
const MAX_KEEP_ALIVE_SECS: i64 = 300;

pub(super) fn validate_liveness(raw: Option<toml::Value>) -> Result<Liveness, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Liveness::FAST);
    };
    match raw {
        toml::Value::String(name) => match name.as_str() {
            "fast" => Ok(Liveness::FAST),
            "metered" => Ok(Liveness::METERED),
            _ => Err(invalid(
                "liveness",
                format!("{EXPECTED}, not {}", shown(&name)),
            )),
        },
        toml::Value::Table(table) => {
            if let Some(unknown) = table
                .keys()
                .find(|k| !matches!(k.as_str(), "keep_alive_secs" | "idle_timeout_secs"))
            {
                return Err(invalid(
                    FieldPath::new("liveness").key(unknown),
                    "unknown field; expected keep_alive_secs and idle_timeout_secs",
                ));
            }
            let keep_alive = secs(&table, "keep_alive_secs", 1..=MAX_KEEP_ALIVE_SECS)?;
            let idle_timeout = secs(&table, "idle_timeout_secs", 2..=600)?;
            let liveness = Liveness {
                keep_alive,
                idle_timeout,
            };
            liveness
                .check()
                .map_err(|reason| invalid("liveness.idle_timeout_secs", reason))?;
            Ok(liveness)
        }
        _ => Err(invalid("liveness", EXPECTED)),
    }
}

/// The whole seconds `key` of `table` holds, within `range`.
fn secs(
    table: &toml::Table,
    key: &str,
    range: std::ops::RangeInclusive<i64>,
) -> Result<Duration, ConfigError> {
    let at = FieldPath::new("liveness").field(key);
    let Some(value) = table.get(key) else {
        return Err(invalid(
            at,
            "missing; give both keep_alive_secs and idle_timeout_secs",
        ));
    };
    let Some(secs) = value.as_integer() else {
        return Err(invalid(at, "expected a whole number of seconds"));
    };
    if !range.contains(&secs) {
        return Err(invalid(
            at,
            format!("{secs} is out of range {}..={}", range.start(), range.end()),
        ));
    }
    // Invariant: the range is positive.
    Ok(Duration::from_secs(secs.unsigned_abs()))
}
