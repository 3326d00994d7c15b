//! The operator API: JSON over HTTP, versioned under `/v1`, plus `/healthz` and `/metrics`.
//!
//! A thin shell over the orchestrator's handles ([`ApiState`]): handlers check the caller's
//! role, validate the request and turn the registry's and the deployments' state into the JSON
//! views below. It changes nothing except through those handles, which persist what they
//! change. Every error is JSON
//! `{"error": CODE, "message": TEXT}` (see [`ErrorBody`]); every request is counted in
//! `edge_api_requests` by status code.
//!
//! The views and request bodies are public so `edgectl` speaks the same types.

use crate::artifacts::ArtifactStore;
use crate::auth::{self, ApiAuth, AuthError, Claims, Role};
use crate::deployer::Deployer;
use crate::links::NodeLinks;
use crate::metrics::Metrics;
use crate::metrics::Reason;
use crate::registry::Registry;
use crate::reports::Reports;
use axum::Json;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use orchestrator_core::fleet::{AcceleratorInfo, GeoPoint, IdentityConflict, NodeRecord};
use orchestrator_core::session::unix_secs;
use orchestrator_core::tokens::TokenRecord;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Join tokens: default and longest lifetime, and the range of uses.
pub const JOIN_TOKEN_DEFAULT_TTL_SECS: u64 = 3600;
pub const JOIN_TOKEN_MAX_TTL_SECS: u64 = 30 * 86_400;
pub const JOIN_TOKEN_MAX_USES: u32 = 10_000;
pub const DESCRIPTION_MAX_CHARS: usize = 200;
/// API tokens: default and longest lifetime.
pub const API_TOKEN_DEFAULT_TTL_SECS: u64 = 86_400;
pub const API_TOKEN_MAX_TTL_SECS: u64 = 365 * 86_400;
pub const SUBJECT_MAX_CHARS: usize = 64;

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
    ("POST", "/v1/api-tokens"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/artifacts"),
    ("POST", "/v1/artifacts"),
    ("GET", "/v1/workloads"),
    ("POST", "/v1/workloads"),
    ("GET", "/v1/workloads/{name}"),
    ("DELETE", "/v1/workloads/{name}"),
    ("GET", "/v1/workloads/{name}/logs"),
    ("POST", "/v1/nodes/{name_or_id}/cordon"),
    ("POST", "/v1/nodes/{name_or_id}/uncordon"),
    ("POST", "/v1/nodes/{name_or_id}/drain"),
];

/// The OpenAPI 3.0 document served at `/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

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
    pub auth: Arc<ApiAuth>,
}

/// The operator API's routes over `state`.
pub fn router(state: ApiState) -> axum::Router {
    // Merged after the layers below: uploads stream past the 64 KiB body buffer.
    let artifact_routes = crate::api_artifacts::router(state.clone());
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{name_or_id}", get(get_node).delete(delete_node))
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/api-tokens", axum::routing::post(create_api_token))
        .route("/v1/openapi.json", get(openapi))
        .merge(crate::api_workloads::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.clone(), finish))
        .with_state(state)
        .merge(artifact_routes)
}

/// Serves `router` on an already-bound listener until the listener fails.
pub async fn serve(listener: tokio::net::TcpListener, router: axum::Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}

/// Like [`serve`], but stops accepting when `shutdown` completes and returns once in-flight
/// requests are done.
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

// ---------------------------------------------------------------------------------------------
// Errors

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable code: `bad_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `method_not_allowed`, `too_large`, `unsupported_media_type`, `internal`, `unavailable`.
    pub error: String,
    /// What went wrong, for a person; names the field for a bad request.
    pub message: String,
}

/// Why a request failed. Each variant is one status code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or a field is invalid; the message names the field. 400.
    #[error("{0}")]
    BadRequest(String),
    /// No usable bearer token. 401.
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    /// The token is good but its role is too low. 403.
    #[error("this needs the {need} role; the token has {have}")]
    Forbidden { need: Role, have: Role },
    /// No such node or route. 404.
    #[error("{0}")]
    NotFound(String),
    /// The body is over [`MAX_BODY_BYTES`]. 413.
    #[error("request body is over the limit of {MAX_BODY_BYTES} bytes")]
    TooLarge,
    /// The body is not JSON. 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Our fault (storage, a panicked task); the request may be retried. 500.
    #[error("internal error: {0}")]
    Internal(String),
    /// What the request needs is out of reach now (a node is offline); retry later. 503.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(detail) = &self {
            tracing::error!(error = %detail, "API request failed");
        }
        let status = self.status();
        let mut response = error_response(status, self.to_string());
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The stable code for a status.
fn error_code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "error",
    }
}

pub(crate) fn error_response(status: StatusCode, message: String) -> Response {
    let body = ErrorBody {
        error: error_code(status).to_owned(),
        message,
    };
    (status, Json(body)).into_response()
}

pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// Reads the whole body (at most [`MAX_BODY_BYTES`]) before anything looks at the request.
/// A handler may refuse a request without reading its body (a bad token, say); had the body not
/// been read, the connection would close with unread data and the client, still sending, could
/// see a reset instead of our answer.
async fn buffer_body(request: Request) -> Result<Request, ApiError> {
    let declared_len = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (parts, body) = request.into_parts();
    let bytes = read_body(body, declared_len).await?;
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// Around every request: reads the body first (see [`buffer_body`]), counts the request, and
/// turns any error response that is not already JSON (axum's own 405, a path that does not
/// decode, ...) into an [`ErrorBody`], keeping its headers (`Allow`).
async fn finish(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let response = match buffer_body(request).await {
        Ok(request) => next.run(request).await,
        Err(e) => e.into_response(),
    };
    count_and_json(&state.metrics, response).await
}

/// Counts a finished request by status, and turns an error response that is not already JSON
/// into an [`ErrorBody`] carrying its text (or the status's reason), keeping its headers.
pub(crate) async fn count_and_json(metrics: &Metrics, response: Response) -> Response {
    let status = response.status();
    metrics
        .api_requests
        .get_or_create(&Reason {
            reason: status.as_str().to_owned(),
        })
        .inc();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json_type);
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase()
    } else {
        text
    };
    let fresh = error_response(status, message);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, fresh.into_body())
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(format!("no route for {}", request.uri().path()))
}

// ---------------------------------------------------------------------------------------------
// Extractors

/// Which role a handler needs.
pub(crate) trait Access {
    const ROLE: Role;
}
#[derive(Debug)]
pub(crate) struct Viewer;
/// Changing workloads and artifacts.
#[derive(Debug)]
pub(crate) struct Operator;
#[derive(Debug)]
struct Admin;
impl Access for Viewer {
    const ROLE: Role = Role::Viewer;
}
impl Access for Operator {
    const ROLE: Role = Role::Operator;
}
impl Access for Admin {
    const ROLE: Role = Role::Admin;
}

/// The verified claims of a caller with at least `A::ROLE`. Extracted before the body is
/// decoded, so a caller without the role learns nothing about what a valid body looks like.
#[derive(Debug)]
pub(crate) struct Authed<A>(pub(crate) Claims, PhantomData<A>);

impl<A: Access> FromRequestParts<ApiState> for Authed<A> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let header = match parts.headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| AuthError::Malformed)?),
        };
        let claims = state.auth.verify(auth::bearer_token(header)?)?;
        if claims.role < A::ROLE {
            return Err(ApiError::Forbidden {
                need: A::ROLE,
                have: claims.role,
            });
        }
        Ok(Self(claims, PhantomData))
    }
}

/// A JSON body, decoded with the path of any bad field in the error. An empty body without a
/// content type is read as `{}`, so `POST /v1/tokens` with no body makes a default token.
#[derive(Debug)]
struct JsonBody<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = json_content_type(request.headers())?;
        // The body was read and bounded by `finish`.
        let bytes = Bytes::from_request(request, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge
            } else {
                ApiError::BadRequest(format!("reading the body: {}", r.body_text()))
            }
        })?;
        let text: &[u8] = if bytes.is_empty() {
            if content_type.is_some() {
                return Err(ApiError::BadRequest(
                    "malformed JSON: the body is empty".into(),
                ));
            }
            b"{}"
        } else if content_type.is_none() {
            return Err(no_json_content_type());
        } else {
            &bytes
        };
        decode_json(text).map(Self).map_err(ApiError::BadRequest)
    }
}

/// The request's content type if it has one and it is JSON; 415 if it is something else.
pub(crate) fn json_content_type(
    headers: &axum::http::HeaderMap,
) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Ok(None);
    };
    let ct = v
        .to_str()
        .map_err(|_| ApiError::UnsupportedMediaType("content-type is not readable".into()))?;
    if !is_json_type(ct) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "expected content-type application/json, got {ct}"
        )));
    }
    Ok(Some(ct.to_owned()))
}

/// A body that must be JSON came without a content type.
pub(crate) fn no_json_content_type() -> ApiError {
    ApiError::UnsupportedMediaType("expected content-type application/json".into())
}

/// Reads a body of at most [`MAX_BODY_BYTES`]. A body over that is refused, but the rest of
/// it is read and dropped (within limits), so a client still sending sees our 413 rather than
/// a reset connection.
async fn read_body(mut body: Body, declared_len: Option<u64>) -> Result<Vec<u8>, ApiError> {
    let limit = MAX_BODY_BYTES as u64;
    if let Some(len) = declared_len
        && len > limit
    {
        if len <= DRAIN_MAX_BYTES {
            drain(&mut body).await;
        }
        return Err(ApiError::TooLarge);
    }
    let mut buf = Vec::new();
    while let Some(frame) = next_frame(&mut body).await {
        let frame = frame.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        if let Some(data) = frame {
            if (buf.len() + data.len()) as u64 > limit {
                drain(&mut body).await;
                return Err(ApiError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

/// How much of a too-large body is read and dropped, and for how long at most.
pub(crate) const DRAIN_MAX_BYTES: u64 = 1 << 20;
const DRAIN_MAX_TIME: Duration = Duration::from_secs(2);

pub(crate) async fn drain(body: &mut Body) {
    let _ = tokio::time::timeout(DRAIN_MAX_TIME, async {
        let mut seen = 0u64;
        while seen <= DRAIN_MAX_BYTES {
            match next_frame(body).await {
                Some(Ok(data)) => seen += data.map_or(0, |d| d.len() as u64),
                _ => break,
            }
        }
    })
    .await;
}

/// The next frame's data (`None` for a trailers frame); `None` at the end.
pub(crate) async fn next_frame(body: &mut Body) -> Option<Result<Option<Bytes>, axum::Error>> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *body).poll_frame(cx))
        .await
        .map(|frame| frame.map(|f| f.into_data().ok()))
}

/// Decodes `bytes`, naming the path of the field at fault: `uses: invalid type: ...`.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(describe_json_error)?;
    de.end().map_err(|e| format!("malformed JSON: {e}"))?;
    Ok(value)
}

fn describe_json_error(e: serde_path_to_error::Error<serde_json::Error>) -> String {
    use serde_json::error::Category;
    let path = e.path().to_string();
    let inner = e.inner();
    match inner.classify() {
        Category::Syntax | Category::Eof | Category::Io => format!("malformed JSON: {inner}"),
        Category::Data if path == "." => inner.to_string(),
        Category::Data => format!("{path}: {inner}"),
    }
}

/// `application/json`, with or without parameters, or any `+json` type.
pub(crate) fn is_json_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

// ---------------------------------------------------------------------------------------------
// Views and request bodies

/// A node as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// 32 hex digits, from the node's certificate.
    pub id: String,
    pub name: String,
    pub arch: String,
    pub os: String,
    pub os_version: String,
    pub kernel: String,
    pub hostname: String,
    pub cpus: u16,
    pub cpu_model: String,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub disk_free_bytes: u64,
    pub accelerators: Vec<AcceleratorInfo>,
    pub board: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub location: Option<GeoPoint>,
    /// `online` or `offline`.
    pub status: String,
    /// RFC 3339, UTC.
    pub last_seen: String,
    pub last_seen_unix: u64,
    /// RFC 3339, UTC.
    pub enrolled_at: String,
    pub load: Option<LoadView>,
    /// No new instances are placed here.
    #[serde(default)]
    pub cordoned: bool,
    /// Another machine presents this node's identity; absent when none did lately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<ConflictView>,
}

/// Another machine presented this node's identity while the node's session was live (a
/// cloned SD card or data dir), and its sessions were refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictView {
    /// RFC 3339, UTC: the first and the last session refused.
    pub first_seen: String,
    pub last_seen: String,
    pub last_seen_unix: u64,
    /// Sessions refused so far.
    pub refused: u64,
    /// Where the last refused session came from.
    pub remote: Option<String>,
    /// What to do about it.
    pub message: String,
}

impl From<&IdentityConflict> for ConflictView {
    fn from(c: &IdentityConflict) -> Self {
        Self {
            first_seen: rfc3339(c.first_unix),
            last_seen: rfc3339(c.last_unix),
            last_seen_unix: c.last_unix,
            refused: c.refused,
            remote: c.remote.map(|r| r.to_string()),
            message: "another machine presents this node's identity and is refused while this \
                      node's session is live; one of them is a copy: enroll the copy again \
                      (delete its identity/ and give it a new join token and name)"
                .into(),
        }
    }
}

/// The node's last status report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoadView {
    pub cpu_percent: f32,
    pub memory_used_bytes: u64,
    pub disk_free_bytes: u64,
    pub uptime_secs: u64,
}

impl NodeView {
    pub fn new(node: &NodeRecord, online: bool) -> Self {
        let info = &node.info;
        Self {
            id: node.id.to_string(),
            name: node.name.clone(),
            arch: info.arch.clone(),
            os: info.os.clone(),
            os_version: info.os_version.clone(),
            kernel: info.kernel.clone(),
            hostname: info.hostname.clone(),
            cpus: info.cpus,
            cpu_model: info.cpu_model.clone(),
            memory_bytes: info.memory_bytes,
            disk_bytes: info.disk_bytes,
            disk_free_bytes: info.disk_free_bytes,
            accelerators: info.accelerators.clone(),
            board: info.board.clone(),
            labels: info.labels.clone(),
            location: info.location,
            status: if online { "online" } else { "offline" }.to_owned(),
            last_seen: rfc3339(node.last_seen_unix),
            last_seen_unix: node.last_seen_unix,
            enrolled_at: rfc3339(node.enrolled_unix),
            load: node.load.map(|l| LoadView {
                cpu_percent: l.cpu_percent,
                memory_used_bytes: l.memory_used_bytes,
                disk_free_bytes: l.disk_free_bytes,
                uptime_secs: l.uptime_secs,
            }),
            cordoned: node.cordoned,
            conflict: None,
        }
    }

    /// The view with the node's identity conflict, if there is one.
    pub fn with_conflict(mut self, conflict: Option<&IdentityConflict>) -> Self {
        self.conflict = conflict.map(ConflictView::from);
        self
    }
}

/// `POST /v1/tokens`: a join token for nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// A duration such as `90s`, `15m`, `1h`, `7d`. Default 1h, at most 30d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// The same in seconds; give one of `ttl` and `ttl_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// How many nodes may join with it: 1 to 10000, default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A join token, as created. The token text is shown only here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    /// `ID.SECRET`, for the node's `[join] token`.
    pub token: String,
    /// `sha256:...` of the fleet CA, for the node's `[join] ca_hash`.
    pub ca_hash: String,
    pub id: String,
    pub expires_at: String,
    pub expires_unix: u64,
    pub uses: u32,
    pub description: String,
}

/// A join token as listed: never the secret nor its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: String,
    pub description: String,
    pub created_at: String,
    pub expires_at: String,
    pub expires_unix: u64,
    pub uses_left: u32,
}

impl From<&TokenRecord> for TokenView {
    fn from(t: &TokenRecord) -> Self {
        Self {
            id: t.id.clone(),
            description: t.description.clone(),
            created_at: rfc3339(t.created_unix),
            expires_at: rfc3339(t.expires_unix),
            expires_unix: t.expires_unix,
            uses_left: t.uses_left,
        }
    }
}

/// `POST /v1/api-tokens`: an API token with a role no higher than the caller's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApiTokenRequest {
    pub role: Role,
    /// Who it is for, e.g. `ci` or `grafana`: 1 to 64 printable characters.
    pub subject: String,
    /// A duration such as `24h`; default 24h, at most 365d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenCreated {
    /// The bearer token (a JWT).
    pub token: String,
    pub role: Role,
    pub subject: String,
    pub expires_at: String,
    pub expires_unix: u64,
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let (online, offline) = state.registry.fleet().counts();
    state.metrics.set_node_counts(online, offline);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// Which nodes `GET /v1/nodes` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusFilter {
    Online,
    Offline,
}

fn parse_node_query(query: &BTreeMap<String, String>) -> Result<Option<StatusFilter>, ApiError> {
    let mut filter = None;
    for (key, value) in query {
        match key.as_str() {
            "status" => {
                filter = Some(match value.as_str() {
                    "online" => StatusFilter::Online,
                    "offline" => StatusFilter::Offline,
                    other => {
                        return Err(ApiError::BadRequest(format!(
                            "status: {other:?} is not a status; use online or offline"
                        )));
                    }
                });
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "{other}: unknown query parameter; the only one is status"
                )));
            }
        }
    }
    Ok(filter)
}

async fn list_nodes(
    _: Authed<Viewer>,
    State(state): State<ApiState>,
    query: Result<Query<BTreeMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<NodeView>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let filter = parse_node_query(&query)?;
    let now = crate::clock::now_unix();
    let mut nodes: Vec<NodeView> = {
        let fleet = state.registry.fleet();
        fleet
            .nodes()
            .map(|n| (n, fleet.is_online(n.id)))
            .filter(|(_, online)| match filter {
                None => true,
                Some(StatusFilter::Online) => *online,
                Some(StatusFilter::Offline) => !*online,
            })
            .map(|(n, online)| NodeView::new(n, online).with_conflict(fleet.conflict(n.id, now)))
            .collect()
    };
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(nodes))
}

async fn get_node(
    _: Authed<Viewer>,
    State(state): State<ApiState>,
    Path(name_or_id): Path<String>,
) -> Result<Json<NodeView>, ApiError> {
    let fleet = state.registry.fleet();
    let node = fleet
        .find(&name_or_id)
        .ok_or_else(|| no_such_node(&name_or_id))?;
    let conflict = fleet.conflict(node.id, crate::clock::now_unix());
    Ok(Json(
        NodeView::new(node, fleet.is_online(node.id)).with_conflict(conflict),
    ))
}

pub(crate) fn no_such_node(name_or_id: &str) -> ApiError {
    ApiError::NotFound(format!("no node named or with id {name_or_id:?}"))
}

async fn delete_node(
    _: Authed<Admin>,
    State(state): State<ApiState>,
    Path(name_or_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = state
        .registry
        .fleet()
        .find(&name_or_id)
        .map(|n| n.id)
        .ok_or_else(|| no_such_node(&name_or_id))?;
    // The store flushes to disk; keep that off the async workers.
    let deleted = tokio::task::spawn_blocking(move || {
        crate::node_admin::delete_node(&state.registry, &state.links, &state.deployments, id)
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    if deleted {
        tracing::info!(node = %id, name = %name_or_id, "node deleted by the API");
        Ok(StatusCode::NO_CONTENT)
    } else {
        // Deleted by a concurrent request between the lookup and now.
        Err(no_such_node(&name_or_id))
    }
}

async fn create_token(
    _: Authed<Admin>,
    State(state): State<ApiState>,
    JsonBody(request): JsonBody<CreateTokenRequest>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let ttl_secs = ttl_from(
        request.ttl.as_deref(),
        request.ttl_secs,
        JOIN_TOKEN_DEFAULT_TTL_SECS,
        JOIN_TOKEN_MAX_TTL_SECS,
    )?;
    let uses = request.uses.unwrap_or(1);
    if !(1..=JOIN_TOKEN_MAX_USES).contains(&uses) {
        return Err(ApiError::BadRequest(format!(
            "uses: must be 1 to {JOIN_TOKEN_MAX_USES}, got {uses}"
        )));
    }
    let description = request.description.unwrap_or_default();
    let chars = description.chars().count();
    if chars > DESCRIPTION_MAX_CHARS {
        return Err(ApiError::BadRequest(format!(
            "description: {chars} characters; at most {DESCRIPTION_MAX_CHARS}"
        )));
    }
    if description.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "description: control characters are not allowed".into(),
        ));
    }
    let registry = state.registry.clone();
    let (token, record) =
        tokio::task::spawn_blocking(move || registry.create_token(ttl_secs, uses, description))
            .await
            .map_err(internal)?
            .map_err(internal)?;
    tracing::info!(token_id = %record.id, uses, ttl_secs, "join token created by the API");
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            token,
            ca_hash: state.registry.ca().hash(),
            id: record.id,
            expires_at: rfc3339(record.expires_unix),
            expires_unix: record.expires_unix,
            uses: record.uses_left,
            description: record.description,
        }),
    ))
}

async fn list_tokens(_: Authed<Admin>, State(state): State<ApiState>) -> Json<Vec<TokenView>> {
    let mut tokens: Vec<TokenView> = state
        .registry
        .fleet()
        .tokens()
        .map(TokenView::from)
        .collect();
    tokens.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
    Json(tokens)
}

async fn create_api_token(
    Authed(caller, _): Authed<Admin>,
    State(state): State<ApiState>,
    JsonBody(request): JsonBody<CreateApiTokenRequest>,
) -> Result<(StatusCode, Json<ApiTokenCreated>), ApiError> {
    let ttl_secs = ttl_from(
        request.ttl.as_deref(),
        request.ttl_secs,
        API_TOKEN_DEFAULT_TTL_SECS,
        API_TOKEN_MAX_TTL_SECS,
    )?;
    if request.role > caller.role {
        return Err(ApiError::Forbidden {
            need: request.role,
            have: caller.role,
        });
    }
    let subject = request.subject;
    let chars = subject.chars().count();
    if chars == 0 || chars > SUBJECT_MAX_CHARS || subject.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "subject: use 1 to {SUBJECT_MAX_CHARS} printable characters"
        )));
    }
    let now = SystemTime::now();
    let token = state
        .auth
        .issue_at(&subject, request.role, now, Duration::from_secs(ttl_secs));
    let expires_unix = unix_secs(now).saturating_add(ttl_secs);
    tracing::info!(subject = %subject, role = %request.role, by = %caller.sub, "API token issued");
    Ok((
        StatusCode::CREATED,
        Json(ApiTokenCreated {
            token,
            role: request.role,
            subject,
            expires_at: rfc3339(expires_unix),
            expires_unix,
        }),
    ))
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

// ---------------------------------------------------------------------------------------------
// Durations and dates

/// The lifetime a request asks for: `ttl` (a duration) or `ttl_secs`, else `default`; between
/// 1 second and `max`.
fn ttl_from(
    ttl: Option<&str>,
    ttl_secs: Option<u64>,
    default: u64,
    max: u64,
) -> Result<u64, ApiError> {
    let (field, secs) = match (ttl, ttl_secs) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "ttl: give ttl or ttl_secs, not both".into(),
            ));
        }
        (Some(text), None) => (
            "ttl",
            parse_duration(text).map_err(|e| ApiError::BadRequest(format!("ttl: {e}")))?,
        ),
        (None, Some(secs)) => ("ttl_secs", secs),
        (None, None) => return Ok(default),
    };
    if secs == 0 {
        return Err(ApiError::BadRequest(format!("{field}: must be positive")));
    }
    if secs > max {
        return Err(ApiError::BadRequest(format!(
            "{field}: {secs}s is over the maximum of {max}s ({}d)",
            max / 86_400
        )));
    }
    Ok(secs)
}

/// Parses `90s`, `15m`, `1h`, `7d` (or plain seconds) into seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a duration; use a number with s, m, h or d, e.g. 1h");
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let multiplier = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    if digits.is_empty() {
        return Err(bad());
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(bad)
}

/// Unix seconds as RFC 3339 UTC, e.g. `2026-11-25T22:30:09Z`.
pub fn rfc3339(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`,
/// for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_645_809), "2026-11-25T22:30:09Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(rfc3339(68_256_000), "1972-03-01T00:00:00Z");
    }

    #[test]
    fn dates_agree_with_a_day_by_day_walk() {
        let mut ymd = (1970u64, 1u64, 1u64);
        for days in 0..200_000u64 {
            assert_eq!(civil_from_days(days), ymd, "day {days}");
            let (y, m, d) = ymd;
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            ymd = if d < len {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("1h"), Ok(3600));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert_eq!(parse_duration("120"), Ok(120));
        for bad in [
            "",
            "h",
            "banana",
            "1x",
            "1.5h",
            "-1h",
            "1h30m",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = decode_json::<CreateTokenRequest>(br#"{"uses": "x"}"#).expect_err("bad type");
        assert!(e.starts_with("uses: invalid type"), "{e}");
        let e = decode_json::<CreateTokenRequest>(br#"{"usez": 1}"#).expect_err("unknown");
        assert!(e.contains("usez"), "{e}");
        let e = decode_json::<CreateTokenRequest>(br#"{"uses": 1"#).expect_err("eof");
        assert!(e.starts_with("malformed JSON"), "{e}");
        let e = decode_json::<CreateTokenRequest>(br#"{} x"#).expect_err("trailing");
        assert!(e.starts_with("malformed JSON"), "{e}");
        let e = decode_json::<CreateApiTokenRequest>(br#"{"subject": "ci"}"#).expect_err("role");
        assert!(e.contains("role"), "{e}");
    }

    #[test]
    fn json_content_types() {
        assert!(is_json_type("application/json"));
        assert!(is_json_type("Application/JSON; charset=utf-8"));
        assert!(is_json_type("application/merge-patch+json"));
        assert!(!is_json_type("text/plain"));
        assert!(!is_json_type("application/x-www-form-urlencoded"));
    }

    #[test]
    fn the_openapi_document_is_json() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).expect("valid JSON");
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    }
}
