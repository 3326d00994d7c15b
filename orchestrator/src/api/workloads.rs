//! `/v1/workloads`: deploy, list, show, delete, logs.
//!
//! `POST /v1/workloads` (role operator) takes a workload spec as JSON, refuses an invalid one
//! with 400 naming the field, and answers once the deployment and its assignments are stored:
//! 201 for a new workload, 200 for a changed or unchanged one. The views say, per node, what
//! the node last reported, and for every node without an instance, why not.
//!
//! `GET /v1/workloads/NAME/logs` streams the log as `text/plain`, read from each node over its
//! QUIC connection: the last `tail` lines, then with `follow=true` each new line until the
//! client goes away. From several nodes, each line starts with the node's name.
//!
//! A thin shell: decisions are the core's `deploy`, effects go through the [`Deployer`].
//!
//! [`Deployer`]: crate::deployer::Deployer

use crate::deployer::ApplyError;
use crate::metrics::WorkloadEvent;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use edge_proto::NodeId;
use orchestrator_core::deploy::{Admission, ArtifactFacts, DeploymentView, ImageFacts, state_name};
use orchestrator_core::workload::{Driver, SpecError, WorkloadSpec};
use serde::Deserialize;
use std::collections::BTreeMap;

use super::ApiState;
use super::error::{ApiError, internal};
use super::extract::{Authed, Operator, Viewer, json_content_type, no_json_content_type};
use super::nodes::no_such_node;
use super::time::rfc3339;
use super::views::{InstanceView, RefusalView, UnplacedView, WorkloadView};

pub(super) fn routes() -> axum::Router<ApiState> {
    axum::Router::new()
        .route("/v1/workloads", get(list).post(deploy))
        .route("/v1/workloads/{name}", get(show).delete(delete))
        .route("/v1/workloads/{name}/logs", get(logs))
}

/// A deployment as the API shows it, with what its nodes last reported.
fn view(state: &ApiState, d: DeploymentView) -> WorkloadView {
    let reports: BTreeMap<NodeId, _> = state.reports.of(&d.name).into_iter().collect();
    let names: BTreeMap<NodeId, String> = {
        let fleet = state.registry.fleet();
        d.nodes
            .iter()
            .map(|(id, _)| *id)
            .chain(d.refusals.iter().map(|(id, _)| *id))
            .chain(d.replaced.iter().flat_map(|(a, b)| [*a, *b]))
            .filter_map(|id| fleet.node(id).map(|n| (id, n.name.clone())))
            .collect()
    };
    let name_of = |id: &NodeId| names.get(id).cloned().unwrap_or_else(|| id.to_string());
    let mut instances: Vec<InstanceView> = d
        .nodes
        .iter()
        .map(|(id, admission)| {
            let pending = match admission {
                Admission::Pending => "pending",
                Admission::Admitted => "admitted",
            };
            match reports.get(id) {
                Some(r) => InstanceView {
                    node: name_of(id),
                    node_id: id.to_string(),
                    state: state_name(r.report.state).to_owned(),
                    restarts: r.report.restarts,
                    pid: r.report.pid,
                    exit_code: r.report.exit_code,
                    message: r.report.message.to_string(),
                    generation: r.report.generation,
                    updated_at: Some(rfc3339(r.at_unix)),
                },
                None => InstanceView {
                    node: name_of(id),
                    node_id: id.to_string(),
                    state: pending.to_owned(),
                    restarts: 0,
                    pid: None,
                    exit_code: None,
                    message: String::new(),
                    generation: d.generation,
                    updated_at: None,
                },
            }
        })
        .collect();
    instances.sort_by(|a, b| a.node.cmp(&b.node));
    let running = instances.iter().filter(|i| i.state == "running").count();
    let placement = match d.spec.get("placement").and_then(|p| p.as_str()) {
        Some(p) => p.to_owned(),
        None => "replicas".to_owned(),
    };
    let traffic =
        state
            .reports
            .traffic
            .of_route(&d.name)
            .map(|(counts, at)| super::views::TrafficView {
                traffic: (&counts).into(),
                reported_at: super::time::rfc3339(at),
            });
    WorkloadView {
        name: d.name,
        version: d.version,
        generation: d.generation,
        placement,
        wanted: d.wanted,
        running: u32::try_from(running).unwrap_or(u32::MAX),
        instances,
        refusals: d
            .refusals
            .iter()
            .map(|(id, reason)| RefusalView {
                node: name_of(id),
                node_id: id.to_string(),
                reason: reason.clone(),
            })
            .collect(),
        unplaced: d
            .unplaced_reasons
            .iter()
            .map(|r| UnplacedView {
                node: r.name.clone(),
                node_id: r.node.to_string(),
                reason: r.reason.to_string(),
                detail: serde_json::to_value(&r.reason).unwrap_or_default(),
            })
            .collect(),
        replaced: d
            .replaced
            .iter()
            .map(|(node, replacement)| super::views::ReplacedView {
                node: name_of(node),
                node_id: node.to_string(),
                replacement: name_of(replacement),
                replacement_id: replacement.to_string(),
            })
            .collect(),
        traffic,
        spec: d.spec,
    }
}

fn no_such_workload(name: &str) -> ApiError {
    ApiError::NotFound(format!("no workload named {name:?}"))
}

async fn list(
    _: Authed<Viewer>,
    State(state): State<ApiState>,
) -> Result<Json<Vec<WorkloadView>>, ApiError> {
    let all = state.deployments.lock().list();
    Ok(Json(all.into_iter().map(|d| view(&state, d)).collect()))
}

async fn show(
    _: Authed<Viewer>,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<WorkloadView>, ApiError> {
    let d = state
        .deployments
        .lock()
        .get(&name)
        .ok_or_else(|| no_such_workload(&name))?;
    Ok(Json(view(&state, d)))
}

/// The message for a spec error: `field: reason`, as [`SpecError`] displays it.
fn bad_spec(e: SpecError) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

async fn deploy(
    _: Authed<Operator>,
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<WorkloadView>), ApiError> {
    json_content_type(&headers)?.ok_or_else(no_json_content_type)?;
    let spec = WorkloadSpec::from_json(&body).map_err(bad_spec)?;
    // What the wire cannot carry is the spec's fault too: say so before anything else (an
    // image's platforms, not known yet, take a few bytes at most).
    let unknown = ArtifactFacts {
        size: 0,
        image: (spec.driver() == Driver::Oci).then(|| ImageFacts {
            platforms: Vec::new(),
        }),
    };
    orchestrator_core::deploy::assignment(&spec, 0, &unknown).map_err(bad_spec)?;
    let facts = match spec.driver() {
        Driver::Exec => artifact_facts(&state, &spec).await?,
        Driver::Oci => image_facts(&state, &spec).await?,
    };
    let name = spec.name().to_owned();
    let applied = state
        .deployments
        .apply(spec, facts, &state.metrics)
        .await
        .map_err(|e| match e {
            ApplyError::Spec(e) => bad_spec(e),
            ApplyError::Store(e) => internal(e),
        })?;
    let shown = applied.shown.ok_or_else(|| no_such_workload(&name))?;
    let status = if applied.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view(&state, shown))))
}

/// The executable's size, from the artifact store.
async fn artifact_facts(state: &ApiState, spec: &WorkloadSpec) -> Result<ArtifactFacts, ApiError> {
    let digest = *spec.artifact().as_bytes();
    let store = state
        .artifacts
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("this orchestrator has no artifact store".into()))?;
    match store.size(&digest).await.map_err(internal)? {
        Some(size) => Ok(size.into()),
        None => Err(ApiError::BadRequest(format!(
            "artifact: {} is not in the artifact store; push it first (edgectl artifact push)",
            spec.artifact()
        ))),
    }
}

/// The image's platforms, from the image store.
async fn image_facts(state: &ApiState, spec: &WorkloadSpec) -> Result<ArtifactFacts, ApiError> {
    let store = state
        .images
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("this orchestrator has no image store".into()))?;
    match store
        .get(spec.artifact().as_bytes())
        .await
        .map_err(internal)?
    {
        Some(record) => {
            if !spec.allow_setuid()
                && let Some(p) = record.platforms.iter().find(|p| p.has_setuid)
            {
                return Err(ApiError::BadRequest(format!(
                    "image: its {} platform holds setuid or setgid files; set allow_setuid = true \
                     to run it anyway (containers run with no_new_privileges, which keeps them inert)",
                    p.platform
                )));
            }
            Ok(crate::images::facts(&record))
        }
        None => Err(ApiError::BadRequest(format!(
            "image: {} is not in the image store; push it first (edgectl image push)",
            spec.artifact()
        ))),
    }
}

async fn delete(
    _: Authed<Operator>,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (found, committed) = state.deployments.deploy(|d| match d.delete(&name) {
        Some(effects) => (true, effects),
        None => (false, Vec::new()),
    });
    if !found {
        return Err(no_such_workload(&name));
    }
    committed.wait().await.map_err(internal)?;
    state.reports.forget(&name);
    state
        .metrics
        .workload(&WorkloadEvent::Deleted { workload: &name });
    Ok(StatusCode::NO_CONTENT)
}

/// Lines a log request sends first when it does not say.
pub const DEFAULT_TAIL_LINES: u32 = 100;
/// The most lines a log request may ask for first; the node keeps fewer anyway.
pub const MAX_TAIL_LINES: u32 = 10_000;

/// `GET /v1/workloads/NAME/logs` query parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    node: Option<String>,
    tail: Option<u32>,
    follow: Option<bool>,
}

/// Log text as it arrives; ends when every node's stream has.
struct LogBody(tokio::sync::mpsc::Receiver<Bytes>);

impl futures_core::Stream for LogBody {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|line| line.map(Ok))
    }
}

async fn logs(
    _: Authed<Viewer>,
    State(state): State<ApiState>,
    Path(name): Path<String>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let tail = query.tail.unwrap_or(DEFAULT_TAIL_LINES);
    if tail > MAX_TAIL_LINES {
        return Err(ApiError::BadRequest(format!(
            "tail: at most {MAX_TAIL_LINES} lines, got {tail}"
        )));
    }
    let follow = query.follow.unwrap_or(false);
    let holders: Vec<NodeId> = state
        .deployments
        .lock()
        .get(&name)
        .ok_or_else(|| no_such_workload(&name))?
        .nodes
        .iter()
        .map(|(id, _)| *id)
        .collect();
    let targets: Vec<(NodeId, String)> = {
        let fleet = state.registry.fleet();
        let named = |id: &NodeId| fleet.node(*id).map(|n| (*id, n.name.clone()));
        match &query.node {
            None => holders.iter().filter_map(named).collect(),
            Some(wanted) => {
                let node = fleet.find(wanted).ok_or_else(|| no_such_node(wanted))?;
                if !holders.contains(&node.id) {
                    return Err(ApiError::NotFound(format!(
                        "node {} has no instance of {name}",
                        node.name
                    )));
                }
                vec![(node.id, node.name.clone())]
            }
        }
    };
    if targets.is_empty() {
        return Err(ApiError::NotFound(format!("{name} has no instances")));
    }
    let prefixed = targets.len() > 1;
    let mut streams = Vec::with_capacity(targets.len());
    for (id, node) in targets {
        let opened = match state.links.connection(id) {
            None => Err("offline".to_owned()),
            Some(conn) => {
                let req = edge_proto::LogsRequest {
                    workload: edge_proto::text(&name),
                    tail_lines: tail,
                    follow,
                };
                crate::logs::open_logs(&conn, req)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        match opened {
            Ok(stream) => streams.push((node, Ok(stream))),
            // One node: its failure is the answer. Several: the others still speak.
            Err(why) if !prefixed => {
                return Err(ApiError::Unavailable(format!("node {node}: {why}")));
            }
            Err(why) => streams.push((node, Err(why))),
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    for (node, stream) in streams {
        let tx = tx.clone();
        let prefix = if prefixed {
            format!("{node} | ")
        } else {
            String::new()
        };
        tokio::spawn(async move {
            let mut stream = match stream {
                Ok(s) => s,
                Err(why) => {
                    let _ = tx.send(Bytes::from(format!("{prefix}# {why}\n"))).await;
                    return;
                }
            };
            loop {
                match stream.next().await {
                    Ok(Some(lines)) => {
                        let mut chunk = String::new();
                        for line in lines {
                            chunk.push_str(&prefix);
                            chunk.push_str(&line);
                            chunk.push('\n');
                        }
                        // The client went away: dropping the stream stops the node.
                        if tx.send(Bytes::from(chunk)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(error) => {
                        let _ = tx
                            .send(Bytes::from(format!(
                                "{prefix}# log stream ended: {error}\n"
                            )))
                            .await;
                        return;
                    }
                }
            }
        });
    }
    drop(tx);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        axum::body::Body::from_stream(LogBody(rx)),
    )
        .into_response())
}
