//! What several test files of this crate build their workloads from.

use orchestrator_core::workload::WorkloadSpec;
use serde_json::{Value, json};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
pub const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A valid spec named `web` (500 millicores, 256 MiB), with the fields of `extra` set on top.
pub fn spec(extra: Value) -> WorkloadSpec {
    let mut v = json!({
        "name": "web",
        "version": "1",
        "artifact": DIGEST,
        "resources": {"cpu_millis": 500, "memory_bytes": 256 * MIB}
    });
    for (k, x) in extra.as_object().expect("an object") {
        v[k] = x.clone();
    }
    let bytes = serde_json::to_vec(&v).expect("serializable");
    WorkloadSpec::from_json(&bytes).unwrap_or_else(|e| panic!("test spec {v}: {e}"))
}
