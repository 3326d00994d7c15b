//! Tables and summaries of the API's views, for people; `--json` bypasses all of this.

use orchestrator::api::models::ModelList;
use orchestrator::api::views::{
    ApiTokenCreated, ApiTokenView, ArtifactView, NodeView, TokenCreated, TokenView,
    TrafficCountsView, WorkloadView,
};
use orchestrator::images::{ImageRecord, PushedView};
use orchestrator::models::PushedModel;
use std::fmt::Write as _;

/// Columns padded to their widest cell; the last column is not padded.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub(crate) fn nodes_table(nodes: &[NodeView], now: u64) -> String {
    let mut rows = vec![
        [
            "NAME",
            "STATUS",
            "ARCH",
            "CPUS",
            "MEMORY",
            "LOCATION",
            "LAST SEEN",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for n in nodes {
        rows.push(vec![
            n.name.clone(),
            status(n),
            n.arch.clone(),
            n.cpus.to_string(),
            human_bytes(n.memory_bytes),
            n.location
                .map_or_else(|| "-".to_owned(), |l| format!("{:.3},{:.3}", l.lat, l.lon)),
            ago(now.saturating_sub(n.last_seen_unix)),
        ]);
    }
    let mut out = table(&rows);
    if nodes.is_empty() {
        out.push_str("(no nodes yet: `edgectl token create` makes a join token for one)\n");
    }
    out
}

/// `online` or `offline`, and `,cordoned` when no new instances go there.
fn status(n: &NodeView) -> String {
    let mut s = n.status.clone();
    if n.cordoned {
        s.push_str(",cordoned");
    }
    if n.conflict.is_some() {
        s.push_str(" (identity conflict)");
    }
    s
}

/// What a drain did to each workload that had an instance on `node`, from the workloads just
/// before and just after it: a replicated one moved to other nodes, or found none (and why);
/// a per-node one stopped there, since it runs only on uncordoned nodes.
pub(crate) fn drained(node: &NodeView, before: &[WorkloadView], after: &[WorkloadView]) -> String {
    let on_node = |w: &WorkloadView| w.instances.iter().any(|i| i.node_id == node.id);
    let held: Vec<&WorkloadView> = before.iter().filter(|w| on_node(w)).collect();
    if held.is_empty() {
        return format!(
            "{} cordoned and drained: it ran no instances; no new ones go there\n",
            node.name
        );
    }
    let mut out = format!("{} cordoned and drained:\n", node.name);
    for was in held {
        let Some(now) = after.iter().find(|w| w.name == was.name) else {
            let _ = writeln!(out, "  {}: deleted meanwhile", was.name);
            continue;
        };
        if now.placement == "per-node" {
            let _ = writeln!(
                out,
                "  {}: stopped there (a per-node workload runs on the uncordoned nodes that match)",
                now.name
            );
            continue;
        }
        let moved_to: Vec<&str> = now
            .instances
            .iter()
            .filter(|i| i.node_id != node.id)
            .filter(|i| !was.instances.iter().any(|old| old.node_id == i.node_id))
            .map(|i| i.node.as_str())
            .collect();
        if moved_to.is_empty() {
            let _ = writeln!(
                out,
                "  {}: stopped there; no other node can take it{}",
                now.name,
                if now.unplaced.is_empty() { "" } else { ":" }
            );
            for u in &now.unplaced {
                let _ = writeln!(out, "    {}: {}", u.node, u.reason);
            }
        } else {
            let _ = writeln!(out, "  {}: moves to {}", now.name, moved_to.join(", "));
        }
    }
    out
}

pub(crate) fn node_summary(n: &NodeView, now: u64) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "{:<14}{value}", format!("{key}:"));
    };
    line("Name", n.name.clone());
    line("ID", n.id.clone());
    line(
        "Status",
        format!(
            "{}, last seen {} ({})",
            status(n).replace(',', ", "),
            ago(now.saturating_sub(n.last_seen_unix)),
            n.last_seen
        ),
    );
    if let Some(c) = &n.conflict {
        let from = c.remote.as_deref().unwrap_or("elsewhere");
        let ago_text = ago(now.saturating_sub(c.last_seen_unix));
        line(
            "Conflict",
            format!(
                "{} sessions from {from} refused, the last {ago_text}: {}",
                c.refused, c.message
            ),
        );
    }
    line("Enrolled", n.enrolled_at.clone());
    line("Hostname", n.hostname.clone());
    line("Arch", n.arch.clone());
    line(
        "OS",
        if n.os_version.is_empty() {
            format!("{} (kernel {})", n.os, n.kernel)
        } else {
            format!("{} ({}, kernel {})", n.os_version, n.os, n.kernel)
        },
    );
    line("Board", n.board.clone().unwrap_or_else(|| "-".into()));
    line(
        "CPU",
        if n.cpu_model.is_empty() {
            format!("{} cores", n.cpus)
        } else {
            format!("{} x {}", n.cpus, n.cpu_model)
        },
    );
    line("Memory", human_bytes(n.memory_bytes));
    line(
        "Disk",
        format!(
            "{} ({} free)",
            human_bytes(n.disk_bytes),
            human_bytes(n.disk_free_bytes)
        ),
    );
    line(
        "Location",
        match n.location {
            None => "-".into(),
            Some(l) => match l.alt_m {
                Some(alt) => format!("{:.3},{:.3} ({alt:.0} m)", l.lat, l.lon),
                None => format!("{:.3},{:.3}", l.lat, l.lon),
            },
        },
    );
    line(
        "Labels",
        if n.labels.is_empty() {
            "-".into()
        } else {
            n.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    if n.accelerators.is_empty() {
        line("Accelerators", "-".into());
    } else {
        for (i, a) in n.accelerators.iter().enumerate() {
            let key = if i == 0 { "Accelerators" } else { "" };
            let text = format!("{} {} ({})", a.kind, a.name, a.path);
            if key.is_empty() {
                let _ = writeln!(out, "{:<14}{text}", "");
            } else {
                let _ = writeln!(out, "{:<14}{text}", format!("{key}:"));
            }
        }
    }
    let load = match n.load {
        None => "- (no status report yet)".to_owned(),
        Some(l) => format!(
            "cpu {:.1}%, memory {} used, disk {} free, up {}",
            l.cpu_percent,
            human_bytes(l.memory_used_bytes),
            human_bytes(l.disk_free_bytes),
            duration(l.uptime_secs)
        ),
    };
    let _ = writeln!(out, "{:<14}{load}", "Load:");
    if let Some(p) = &n.proxy {
        let _ = writeln!(out, "{:<14}reported {}", "Proxy:", p.reported_at);
        let mut rows = vec![traffic_header("ROUTE")];
        for r in &p.routes {
            rows.push(traffic_row(&r.route, &r.traffic));
        }
        out.push_str(&table(&rows));
    }
    out
}

fn traffic_header(first: &str) -> Vec<String> {
    [
        first, "REQUESTS", "HIT", "MISS", "STALE", "REVAL", "5XX", "RETRIES", "P50", "P99",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn traffic_row(first: &str, t: &TrafficCountsView) -> Vec<String> {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}ms"));
    vec![
        first.to_owned(),
        t.requests.to_string(),
        t.hit.to_string(),
        t.miss.to_string(),
        t.stale.to_string(),
        t.revalidated.to_string(),
        t.errors_5xx.to_string(),
        t.retries.to_string(),
        ms(t.p50_ms),
        ms(t.p99_ms),
    ]
}

pub(crate) fn token_created(t: &TokenCreated) -> String {
    let uses = if t.uses == 1 {
        "1 use".to_owned()
    } else {
        format!("{} uses", t.uses)
    };
    format!(
        "Join token: {token}\n\
         CA hash:    {ca_hash}\n\
         Expires:    {expires} ({uses})\n\
         \n\
         The token is shown only now. Put this in the node's config file (it is used on the\n\
         node's first start only):\n\
         \n\
         [join]\n\
         token = {token_toml}\n\
         ca_hash = {ca_toml}\n",
        token = t.token,
        ca_hash = t.ca_hash,
        expires = t.expires_at,
        token_toml = toml_string(&t.token),
        ca_toml = toml_string(&t.ca_hash),
    )
}

pub(crate) fn artifact_pushed(a: &ArtifactView) -> String {
    format!(
        "Digest: {digest}\n\
         Size:   {size} bytes ({human})\n\
         \n\
         Name it in a workload spec:\n\
         artifact = {digest_toml}\n",
        digest = a.digest,
        size = a.size,
        human = human_bytes(a.size),
        digest_toml = toml_string(&a.digest),
    )
}

pub(crate) fn model_pushed(p: &PushedModel) -> String {
    let m = &p.model;
    let ports = |ports: &[orchestrator::models::PortRecord]| {
        ports
            .iter()
            .map(|p| {
                let schema = if p.features.is_some() {
                    ", schema declared"
                } else {
                    ""
                };
                format!("{} [{}{schema}]", p.name, p.width)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = format!(
        "Digest:    {digest}\n\
         Size:      {size}\n\
         Inputs:    {inputs}\n\
         Outputs:   {outputs}\n\
         Operators: {operators}\n\
         Golden:    {golden}\n",
        digest = m.digest,
        size = human_bytes(m.size),
        inputs = ports(&m.inputs),
        outputs = ports(&m.outputs),
        operators = m.operators.join(", "),
        golden = if m.golden_rows == 0 {
            "none declared; both readers agree on rows of their own".to_owned()
        } else {
            format!("{} rows, reproduced by both readers", m.golden_rows)
        },
    );
    let _ = match &p.active_for {
        Some(purpose) => writeln!(out, "\nThe fleet now uses it to {purpose}."),
        None => writeln!(
            out,
            "\nStored; it declares no purpose: push it with --purpose route|place to use it."
        ),
    };
    if p.active_for.as_deref() == Some("route") {
        let _ = writeln!(
            out,
            "Sent to {} online node(s); the others get it when they next connect.",
            p.offered_nodes
        );
        if !p.cannot_run.is_empty() {
            let _ = writeln!(
                out,
                "Their model reader cannot run it, so they keep the model they have: {}",
                p.cannot_run.join(", ")
            );
        }
    }
    out
}

pub(crate) fn models_table(list: &ModelList) -> String {
    let mut rows = vec![vec![
        "DIGEST".to_owned(),
        "PURPOSE".to_owned(),
        "SIZE".to_owned(),
        "INPUTS".to_owned(),
        "ACTIVE".to_owned(),
    ]];
    for m in &list.models {
        let active: Vec<&str> = list
            .active
            .iter()
            .filter(|(_, digest)| **digest == m.digest)
            .map(|(purpose, _)| purpose.as_str())
            .collect();
        rows.push(vec![
            m.digest.clone(),
            m.purpose.clone().unwrap_or_else(|| "-".to_owned()),
            human_bytes(m.size),
            m.inputs
                .iter()
                .map(|p| format!("{}[{}]", p.name, p.width))
                .collect::<Vec<_>>()
                .join(" "),
            if active.is_empty() {
                "-".to_owned()
            } else {
                active.join(",")
            },
        ]);
    }
    let mut out = table(&rows);
    if let Some(p) = &list.placement {
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&placement_line(p));
    }
    out
}

/// Who places workloads: `Placement: model sha256:...`, or the fallback and why.
fn placement_line(p: &orchestrator::deployer::PlacementView) -> String {
    match p.reason.as_deref() {
        None => format!("Placement: model {}\n", p.model.as_deref().unwrap_or("-")),
        Some(reason) => {
            let detail = p
                .detail
                .as_deref()
                .map(|d| format!(" ({})", edge_proto::field::shown_max(d, 200)))
                .unwrap_or_default();
            format!("Placement: fallback (least allocated), because {reason}{detail}\n")
        }
    }
}

pub(crate) fn image_pushed(p: &PushedView) -> String {
    let mut out = format!(
        "Digest:    {digest}\n\
         Platforms: {platforms}\n\
         Stored:    {new} new blobs ({new_bytes}); {shared} already stored ({shared_bytes})\n",
        digest = p.image.digest,
        platforms = p
            .image
            .platforms
            .iter()
            .map(|x| format!("{} ({})", x.arch, x.platform))
            .collect::<Vec<_>>()
            .join(", "),
        new = p.blobs_new,
        new_bytes = human_bytes(p.bytes_new),
        shared = p.blobs_shared,
        shared_bytes = human_bytes(p.bytes_shared),
    );
    let _ = write!(
        out,
        "\nName it in a workload spec:\n\
         driver = \"oci\"\n\
         image = {}\n",
        toml_string(&p.image.digest)
    );
    out
}

pub(crate) fn images_table(images: &[ImageRecord]) -> String {
    let mut rows = vec![
        ["DIGEST", "ARCH", "LAYERS", "DOWNLOAD", "UNPACKED"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for i in images {
        for p in &i.platforms {
            rows.push(vec![
                i.digest.clone(),
                p.arch.clone(),
                p.layers.len().to_string(),
                human_bytes(p.download_bytes),
                human_bytes(p.unpacked_bytes),
            ]);
        }
    }
    let mut out = table(&rows);
    if images.is_empty() {
        out.push_str("(no images yet: `edgectl image push FILE` uploads one)\n");
    }
    out
}

pub(crate) fn deployed(w: &WorkloadView) -> String {
    let mut out = format!(
        "deployed {} {} (generation {}): {} of {} instances placed",
        w.name,
        w.version,
        w.generation,
        w.instances.len(),
        w.wanted
    );
    if !w.instances.is_empty() {
        let nodes: Vec<&str> = w.instances.iter().map(|i| i.node.as_str()).collect();
        let _ = write!(out, " on {}", nodes.join(", "));
    }
    out.push('\n');
    out.push_str(&unplaced(w));
    let _ = writeln!(out, "watch it with `edgectl workloads {}`", w.name);
    out
}

/// Why the missing instances have no node, one line per node.
fn unplaced(w: &WorkloadView) -> String {
    let mut out = String::new();
    if w.unplaced.is_empty() && w.refusals.is_empty() {
        return out;
    }
    let missing = w
        .wanted
        .saturating_sub(u32::try_from(w.instances.len()).unwrap_or(u32::MAX));
    if missing > 0 {
        let _ = writeln!(out, "{missing} not placed:");
    }
    for r in &w.refusals {
        let _ = writeln!(out, "  {}: refused: {}", r.node, r.reason);
    }
    for u in &w.unplaced {
        let _ = writeln!(out, "  {}: {}", u.node, u.reason);
    }
    out
}

pub(crate) fn workloads_table(all: &[WorkloadView]) -> String {
    let mut rows = vec![
        [
            "NAME",
            "VERSION",
            "PLACEMENT",
            "WANTED",
            "PLACED",
            "RUNNING",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for w in all {
        rows.push(vec![
            w.name.clone(),
            w.version.clone(),
            w.placement.clone(),
            w.wanted.to_string(),
            w.instances.len().to_string(),
            w.running.to_string(),
        ]);
    }
    let mut out = table(&rows);
    if all.is_empty() {
        out.push_str("(no workloads yet: `edgectl deploy -f FILE` deploys one)\n");
    }
    out
}

pub(crate) fn workload_summary(w: &WorkloadView) -> String {
    let mut out = format!(
        "{} {} (generation {}): {} of {} running\n",
        w.name, w.version, w.generation, w.running, w.wanted
    );
    if !w.instances.is_empty() {
        let mut rows = vec![
            ["NODE", "STATE", "RESTARTS", "PID", "MESSAGE"]
                .map(str::to_owned)
                .to_vec(),
        ];
        for i in &w.instances {
            rows.push(vec![
                i.node.clone(),
                i.state.clone(),
                i.restarts.to_string(),
                i.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                i.message.clone(),
            ]);
        }
        out.push_str(&table(&rows));
    }
    for r in &w.replaced {
        let _ = writeln!(
            out,
            "{}: away too long, replaced on {} (one is kept when it returns)",
            r.node, r.replacement
        );
    }
    out.push_str(&routes(&w.spec));
    if let Some(t) = &w.traffic {
        let rows = [
            traffic_header("TRAFFIC"),
            traffic_row("all nodes", &t.traffic),
        ];
        out.push_str(&table(&rows));
    }
    out.push_str(&unplaced(w));
    out
}

/// The routes each node's proxy sends to the workload, and whether it scales to zero, from
/// the spec as the API shows it. Nothing for a workload without either.
fn routes(spec: &serde_json::Value) -> String {
    let mut out = String::new();
    let routes = spec
        .get("expose")
        .and_then(serde_json::Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    if !routes.is_empty() {
        let mut rows = vec![
            ["ROUTE", "PORT", "WEIGHT", "CACHE", "BALANCE"]
                .map(str::to_owned)
                .to_vec(),
        ];
        for r in routes {
            let host = match r["host"].as_str() {
                None => "*".to_owned(),
                Some(ip6) if ip6.contains(':') => format!("[{ip6}]"),
                Some(name) => name.to_owned(),
            };
            let path = r["path_prefix"].as_str().unwrap_or_default();
            let cache = match (r["cache"].as_bool(), r["stale_if_offline_secs"].as_u64()) {
                (Some(false), _) => "no".to_owned(),
                (_, Some(0) | None) => "yes, never stale".to_owned(),
                (_, Some(secs)) => format!("yes, stale up to {}", duration(secs)),
            };
            rows.push(vec![
                format!("{host}{path}"),
                r["port"].to_string(),
                r["weight"].to_string(),
                cache,
                r["balance"].as_str().unwrap_or("-").to_owned(),
            ]);
        }
        out.push_str(&table(&rows));
    }
    if let Some(idle) = spec["scale_to_zero"]["idle_secs"].as_u64() {
        let _ = writeln!(
            out,
            "scales to zero after {} without a request",
            duration(idle)
        );
    }
    out
}

pub(crate) fn artifacts_table(artifacts: &[ArtifactView]) -> String {
    let mut rows = vec![["DIGEST", "SIZE"].map(str::to_owned).to_vec()];
    for a in artifacts {
        rows.push(vec![a.digest.clone(), human_bytes(a.size)]);
    }
    let mut out = table(&rows);
    if artifacts.is_empty() {
        out.push_str("(no artifacts yet: `edgectl artifact push PATH` uploads one)\n");
    }
    out
}

pub(crate) fn tokens_table(tokens: &[TokenView], now: u64) -> String {
    let mut rows = vec![
        ["ID", "USES LEFT", "EXPIRES", "DESCRIPTION"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for t in tokens {
        let expires = if t.expires_unix <= now {
            "expired".to_owned()
        } else {
            format!("in {}", duration(t.expires_unix - now))
        };
        rows.push(vec![
            t.id.clone(),
            t.uses_left.to_string(),
            expires,
            t.description.clone(),
        ]);
    }
    table(&rows)
}

pub(crate) fn api_token_created(t: &ApiTokenCreated) -> String {
    format!(
        "API token: {token}\n\
         ID:        {id}\n\
         Role:      {role}\n\
         Subject:   {subject}\n\
         Expires:   {expires}\n\
         \n\
         The token is shown only now. Use it as `--token` or EDGE_TOKEN; revoke it with\n\
         `edgectl api-token revoke {id}`.\n",
        token = t.token,
        id = t.id,
        role = t.role,
        subject = t.subject,
        expires = t.expires_at,
    )
}

pub(crate) fn api_tokens_table(tokens: &[ApiTokenView], now: u64) -> String {
    let mut rows = vec![
        ["ID", "ROLE", "SUBJECT", "STATE", "EXPIRES", "ISSUED BY"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for t in tokens {
        let expires = if t.expires_unix <= now {
            t.expires_at.clone()
        } else {
            format!("in {}", duration(t.expires_unix - now))
        };
        rows.push(vec![
            t.id.clone(),
            t.role.to_string(),
            t.subject.clone(),
            t.state.clone(),
            expires,
            t.issued_by.clone(),
        ]);
    }
    table(&rows)
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `3.8 GiB`: binary units, one decimal.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `3s ago`, `5m ago`, `2h ago`, `4d ago`.
fn ago(secs: u64) -> String {
    let text = match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    };
    format!("{text} ago")
}

/// `45s`, `12m 3s`, `4h 12m`, `3d 4h`.
fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h {}m", secs / 3600, secs / 60 % 60),
        _ => format!("{}d {}h", secs / 86_400, secs / 3600 % 24),
    }
}

/// `edgectl events`: one line per event, oldest first.
pub(crate) fn events_table(events: &[serde_json::Value]) -> String {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    let mut rows = vec![
        ["AT", "NODE", "WORKLOAD", "STATE", "RESTARTS", "MESSAGE"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for e in events {
        if e["kind"] == "gap" {
            rows.push(vec![
                text(&e["at"]),
                text(&e["node"]),
                "-".to_owned(),
                "(dropped)".to_owned(),
                "-".to_owned(),
                format!(
                    "{} events dropped, the node's outbox was full (seq {}..{})",
                    e["count"], e["seq"], e["last"]
                ),
            ]);
            continue;
        }
        if e["kind"] == "replaced" {
            rows.push(vec![
                text(&e["at"]),
                text(&e["node"]),
                text(&e["workload"]),
                "(replaced)".to_owned(),
                "-".to_owned(),
                format!(
                    "away {}s: a replacement was placed on {}",
                    e["offline_secs"],
                    text(&e["replacement_name"])
                ),
            ]);
            continue;
        }
        if e["kind"] == "refused" {
            rows.push(vec![
                text(&e["at"]),
                text(&e["node"]),
                text(&e["workload"]),
                "(refused)".to_owned(),
                "-".to_owned(),
                text(&e["reason"]),
            ]);
            continue;
        }
        if e["kind"] == "operator" {
            let uid = match e["uid"].as_u64() {
                Some(uid) => format!(" (uid {uid})"),
                None => String::new(),
            };
            rows.push(vec![
                text(&e["at"]),
                text(&e["node"]),
                text(&e["workload"]),
                format!("({})", text(&e["action"])),
                "-".to_owned(),
                format!("a local operator{uid}, through edge-node ctl"),
            ]);
            continue;
        }
        if e["kind"] == "status" {
            rows.push(vec![
                text(&e["at"]),
                text(&e["node"]),
                "-".to_owned(),
                "(load)".to_owned(),
                "-".to_owned(),
                format!(
                    "offline: cpu {:.0}%, memory {}, disk free {}",
                    e["cpu_percent"].as_f64().unwrap_or(0.0),
                    human_bytes(e["memory_used_bytes"].as_u64().unwrap_or(0)),
                    human_bytes(e["disk_free_bytes"].as_u64().unwrap_or(0))
                ),
            ]);
            continue;
        }
        if e["kind"] == "metrics" {
            let cpu = &e["cpu_percent"];
            let memory = &e["memory_used_bytes"];
            rows.push(vec![
                text(&e["at"]),
                text(&e["node"]),
                "-".to_owned(),
                "(metrics)".to_owned(),
                "-".to_owned(),
                format!(
                    "{} over {}: cpu {:.0}/{:.0}/{:.0}%, memory {}/{}/{} (min/mean/max)",
                    e["samples"],
                    duration(e["window_secs"].as_u64().unwrap_or(0)),
                    cpu["min"].as_f64().unwrap_or(0.0),
                    cpu["mean"].as_f64().unwrap_or(0.0),
                    cpu["max"].as_f64().unwrap_or(0.0),
                    human_bytes(memory["min"].as_u64().unwrap_or(0)),
                    human_bytes(memory["mean"].as_u64().unwrap_or(0)),
                    human_bytes(memory["max"].as_u64().unwrap_or(0))
                ),
            ]);
            continue;
        }
        if e["kind"] == "reconciled" {
            let stopped = match e["stopped_name"].as_str() {
                Some(s) => format!(", stopped on {s}"),
                None => String::new(),
            };
            rows.push(vec![
                text(&e["at"]),
                text(&e["node"]),
                text(&e["workload"]),
                "(reconciled)".to_owned(),
                "-".to_owned(),
                format!(
                    "back: {} kept by {}{stopped}",
                    text(&e["kept"]),
                    text(&e["rule"])
                ),
            ]);
            continue;
        }
        rows.push(vec![
            text(&e["at"]),
            text(&e["node"]),
            text(&e["workload"]),
            text(&e["state"]),
            e["restarts"].to_string(),
            text(&e["message"]),
        ]);
    }
    let mut out = table(&rows);
    if events.is_empty() {
        out.push_str("(no events)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_show_each_change_and_each_gap_on_a_line() {
        let events: Vec<serde_json::Value> = serde_json::from_str(
            r#"[
              {"node": "shop-1", "node_id": "ab", "seq": 3, "at": "2026-12-01T10:00:00Z",
               "at_ms": 0, "received": "2026-12-06T10:00:00Z", "kind": "gap", "last": 5,
               "count": 2, "last_at_ms": 0},
              {"node": "shop-1", "node_id": "ab", "seq": 7, "at": "2026-12-01T10:00:05Z",
               "at_ms": 0, "received": "2026-12-06T10:00:00Z", "kind": "instance",
               "workload": "till", "generation": 2, "state": "running", "restarts": 3,
               "pid": 42, "exit_code": null, "message": "restarted"},
              {"node": "shop-2", "node_id": "cd", "origin": "orchestrator", "seq": 1,
               "at": "2026-12-01T10:01:00Z", "at_ms": 0, "received": "2026-12-01T10:01:00Z",
               "kind": "replaced", "workload": "till", "generation": 2, "replacement": "ef",
               "replacement_name": "shop-3", "offline_secs": 300},
              {"node": "shop-2", "node_id": "cd", "origin": "orchestrator", "seq": 2,
               "at": "2026-12-01T10:09:00Z", "at_ms": 0, "received": "2026-12-01T10:09:00Z",
               "kind": "reconciled", "workload": "till", "generation": 2,
               "rule": "keep_original", "kept": "original", "replacement": "ef",
               "stopped": "ef", "stopped_name": "shop-3"},
              {"node": "shop-1", "node_id": "ab", "seq": 8, "at": "2026-12-01T10:10:00Z",
               "at_ms": 0, "received": "2026-12-06T10:00:00Z", "kind": "status",
               "cpu_percent": 12.4, "memory_used_bytes": 104857600,
               "disk_free_bytes": 1073741824, "uptime_secs": 60},
              {"node": "shop-1", "node_id": "ab", "seq": 9, "at": "2026-12-01T10:15:00Z",
               "at_ms": 0, "received": "2026-12-06T10:00:00Z", "kind": "metrics",
               "window_secs": 300, "samples": 30,
               "cpu_percent": {"min": 1.0, "mean": 5.0, "max": 80.0},
               "memory_used_bytes": {"min": 1048576, "mean": 2097152, "max": 3145728},
               "disk_free_bytes_min": 0}
            ]"#,
        )
        .expect("json");
        let out = events_table(&events);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 7, "{out}");
        assert!(
            lines[5].contains("(load)") && lines[5].contains("cpu 12%"),
            "{out}"
        );
        assert!(
            lines[6].contains("30 over 5m 0s") && lines[6].contains("cpu 1/5/80%"),
            "{out}"
        );
        assert!(
            lines[3].contains("(replaced)")
                && lines[3].contains("away 300s")
                && lines[3].contains("shop-3"),
            "{out}"
        );
        assert!(
            lines[4].contains("original kept by keep_original, stopped on shop-3"),
            "{out}"
        );
        assert!(
            lines[1].contains("2 events dropped") && lines[1].contains("seq 3..5"),
            "{out}"
        );
        assert!(
            lines[2].contains("2026-12-01T10:00:05Z")
                && lines[2].contains("till")
                && lines[2].contains("running"),
            "{out}"
        );
        assert!(events_table(&[]).contains("(no events)"));
    }

    #[test]
    fn a_replaced_instance_shows_under_the_instances() {
        let w: WorkloadView = serde_json::from_value(serde_json::json!({
            "name": "till", "version": "1", "generation": 1, "placement": "replicas",
            "wanted": 2, "running": 2,
            "instances": [
                {"node": "shop-2", "node_id": "b", "state": "running", "restarts": 0,
                 "pid": 7, "exit_code": null, "message": "", "generation": 1,
                 "updated_at": null}
            ],
            "refusals": [], "unplaced": [],
            "replaced": [{"node": "shop-1", "node_id": "a", "replacement": "shop-2",
                          "replacement_id": "b"}],
            "spec": {}
        }))
        .expect("a view");
        let out = workload_summary(&w);
        assert!(
            out.contains("shop-1: away too long, replaced on shop-2"),
            "{out}"
        );
        let mut before: serde_json::Value = serde_json::to_value(&w).expect("json");
        before.as_object_mut().expect("object").remove("replaced");
        let old: WorkloadView = serde_json::from_value(before).expect("a server without it");
        assert!(!workload_summary(&old).contains("away too long"));
    }

    #[test]
    fn humane_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(4_080_218_931), "3.8 GiB");
        assert_eq!(human_bytes(512 << 20), "512.0 MiB");
        assert_eq!(ago(3), "3s ago");
        assert_eq!(ago(3600 * 5 + 1), "5h ago");
        assert_eq!(duration(3 * 86_400 + 4 * 3600 + 5), "3d 4h");
    }

    #[test]
    fn routes_and_scale_to_zero_show_under_the_instances() {
        let spec = serde_json::json!({
            "expose": [
                {"port": 8080, "host": "shop.example.com", "path_prefix": "/api", "weight": 10,
                 "timeout_secs": 30, "retries": 2, "cache": true, "stale_if_offline_secs": 86400,
                 "balance": "round-robin"},
                {"port": 8081, "host": null, "path_prefix": "/", "weight": 100,
                 "timeout_secs": 30, "retries": 2, "cache": false, "stale_if_offline_secs": 0,
                 "balance": "peak-ewma"},
                {"port": 8082, "host": "2001:db8::1", "path_prefix": null, "weight": 0,
                 "timeout_secs": 30, "retries": 2, "cache": true, "stale_if_offline_secs": 0,
                 "balance": "least-requests"}
            ],
            "scale_to_zero": {"idle_secs": 300}
        });
        assert_eq!(
            routes(&spec),
            "ROUTE                 PORT  WEIGHT  CACHE                   BALANCE\n\
             shop.example.com/api  8080  10      yes, stale up to 1d 0h  round-robin\n\
             */                    8081  100     no                      peak-ewma\n\
             [2001:db8::1]         8082  0       yes, never stale        least-requests\n\
             scales to zero after 5m 0s without a request\n"
        );
        let none = serde_json::json!({"expose": [], "scale_to_zero": null});
        assert_eq!(routes(&none), "");
        assert_eq!(
            routes(&serde_json::json!({})),
            "",
            "a spec from before routes"
        );
    }
}
