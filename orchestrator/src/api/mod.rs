//! The operator API: JSON over HTTP, versioned under `/v1`, plus `/healthz` and `/metrics`.
//!
//! A thin shell over the orchestrator's handles ([`ApiState`]): handlers check the caller's
//! role, validate the request and turn the registry's and the deployments' state into the
//! JSON views in [`views`]. It changes nothing except through those handles, which persist
//! what they change. Every error is JSON `{"error": CODE, "message": TEXT}` (see
//! [`error::ErrorBody`]); every request is counted in `edge_api_requests` by status code.
//!
//! It is served by [`edge_shell::http::Server`] within [`LIMITS`]: a request head has 10 s
//! and 16 KiB, one request per connection, and a slow client is closed to make room for
//! another before any request being served is. A head the HTTP layer refuses gets the same
//! JSON error (`bad_request`, `headers_too_large`) and is counted like any other answer.
//!
//! - `nodes`, `tokens`, `workloads`, `artifacts`, `cache` (purging the nodes' proxy caches): the routes and their handlers.
//! - [`error`]: the error type and the JSON error shape; `extract`: the role and JSON body
//!   extractors; `body`: reading bodies within bounds; [`views`]: what the API shows and
//!   takes, public so that `edgectl` speaks the same types; `time`: durations and dates.

use crate::artifacts::ArtifactStore;
use crate::auth::ApiAuth;
use crate::deployer::Deployer;
use crate::links::NodeLinks;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::reports::Reports;
use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use edge_shell::exposition::Format;
pub use edge_shell::http::Limits;
use edge_shell::http::Server;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

mod artifacts;
mod body;
mod ca;
mod cache;
pub mod error;
mod events;
mod extract;
mod images;
pub mod models;
mod nodes;
mod telemetry;
pub mod time;
mod tokens;
pub mod views;
mod workloads;

use error::{ApiError, count_and_json};
use extract::{Authed, Viewer};

/// Largest request body accepted (an artifact upload streams past it).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How the API's listener is bounded. Log streams that follow hold a connection each, so
/// the cap is well above what operators and dashboards use at once.
pub const LIMITS: Limits = Limits {
    max_connections: 256,
    header_timeout: Duration::from_secs(10),
    max_header_bytes: 16 * 1024,
};

/// Every route the router serves, as (method, path). `openapi.json` documents exactly these;
/// a test checks both directions.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/v1/nodes"),
    ("GET", "/v1/nodes/{name_or_id}"),
    ("DELETE", "/v1/nodes/{name_or_id}"),
    ("GET", "/v1/tokens"),
    ("POST", "/v1/tokens"),
    ("GET", "/v1/api-tokens"),
    ("POST", "/v1/api-tokens"),
    ("DELETE", "/v1/api-tokens/{id}"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/artifacts"),
    ("POST", "/v1/artifacts"),
    ("GET", "/v1/images"),
    ("POST", "/v1/images"),
    ("GET", "/v1/images/{digest}"),
    ("GET", "/v1/models"),
    ("POST", "/v1/models"),
    ("GET", "/v1/workloads"),
    ("POST", "/v1/workloads"),
    ("GET", "/v1/workloads/{name}"),
    ("DELETE", "/v1/workloads/{name}"),
    ("GET", "/v1/workloads/{name}/logs"),
    ("POST", "/v1/nodes/{name_or_id}/cordon"),
    ("POST", "/v1/nodes/{name_or_id}/uncordon"),
    ("POST", "/v1/nodes/{name_or_id}/drain"),
    ("GET", "/v1/nodes/{name_or_id}/track"),
    ("POST", "/v1/cache/purge"),
    ("GET", "/v1/events"),
    ("GET", "/v1/telemetry/route-samples"),
    ("GET", "/v1/ca"),
    ("POST", "/v1/ca/rotate"),
];

/// The OpenAPI 3.0 document served at `/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// What the API works with: handles it shares with the QUIC server, and its own token
/// authority.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub registry: Arc<Registry>,
    pub deployments: Arc<Deployer>,
    /// To reach a node: its log streams, and closing a deleted node's session.
    pub links: Arc<NodeLinks>,
    pub reports: Arc<Reports>,
    pub metrics: Arc<Metrics>,
    /// `None` when the orchestrator has no artifact store: `/v1/artifacts` answers 503 and a
    /// deploy cannot check its artifact.
    pub artifacts: Option<Arc<ArtifactStore>>,
    /// Container images, whose blobs live in `artifacts`; `None` with it.
    pub images: Option<Arc<crate::images::ImageStore>>,
    /// Routing and placement models, whose bytes live in `artifacts`; `None` with it.
    pub models: Option<Arc<crate::models::ModelStore>>,
    pub auth: Arc<ApiAuth>,
}

/// The operator API's routes over `state`.
pub fn router(state: ApiState) -> axum::Router {
    // Merged after the layers below: uploads stream past the 64 KiB body buffer.
    let artifact_routes = artifacts::router(state.clone());
    let image_routes = images::router(state.clone());
    let model_routes = models::router(state.clone());
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .merge(nodes::routes())
        .merge(tokens::routes())
        .merge(workloads::routes())
        .merge(cache::routes())
        .merge(events::routes())
        .merge(telemetry::routes())
        .merge(ca::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.clone(), finish))
        .with_state(state)
        .merge(artifact_routes)
        .merge(image_routes)
        .merge(model_routes)
}

/// Serves the API over `state` on an already-bound listener, within [`LIMITS`].
pub async fn serve(listener: tokio::net::TcpListener, state: ApiState) {
    serve_with(listener, state, LIMITS, std::future::pending()).await;
}

/// Serves the API over `state` on `listener` within `limits` until `shutdown` completes,
/// then returns once the requests being served are answered.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: ApiState,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let metrics = state.metrics.clone();
    let router = router(state);
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let mut router = router.clone();
        async move { tower_service::Service::call(&mut router, request).await }
    });
    Server::new(limits)
        .on_refused(move |status| metrics.api_request(status.as_u16()))
        .serve(listener, service, shutdown)
        .await;
}

/// Around every request: reads the body first (see [`body::buffer_body`]), counts the
/// request, and turns any error response that is not already JSON (axum's own 405, a path
/// that does not decode, ...) into an [`error::ErrorBody`], keeping its headers (`Allow`).
async fn finish(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let response = match body::buffer_body(request).await {
        Ok(request) => next.run(request).await,
        Err(e) => e.into_response(),
    };
    count_and_json(&state.metrics, response).await
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(format!("no route for {}", request.uri().path()))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// The text format 0.0.4, or OpenMetrics for a scraper that asks for it.
async fn metrics(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let (online, offline) = state.registry.fleet().counts();
    state.metrics.set_node_counts(online, offline);
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        )],
        state.metrics.encode_as(format),
    )
        .into_response()
}

async fn openapi(_: Authed<Viewer>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Body::from(OPENAPI_JSON),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_is_json() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).expect("valid JSON");
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    }
}
