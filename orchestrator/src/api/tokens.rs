//! `/v1/tokens` and `/v1/api-tokens`: join tokens for nodes, and API tokens of a role no
//! higher than the caller's.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use std::time::{Duration, SystemTime};

use axum::routing::{get, post};

use super::ApiState;
use super::error::{ApiError, internal};
use super::extract::{Admin, Authed, JsonBody};
use super::time::{rfc3339, ttl_from};
use super::views::{
    ApiTokenCreated, CreateApiTokenRequest, CreateTokenRequest, TokenCreated, TokenView,
};
use orchestrator_core::session::unix_secs;

pub(super) fn routes() -> axum::Router<ApiState> {
    axum::Router::new()
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/api-tokens", post(create_api_token))
}

/// Join tokens: default and longest lifetime, and the range of uses.
pub const JOIN_TOKEN_DEFAULT_TTL_SECS: u64 = 3600;
pub const JOIN_TOKEN_MAX_TTL_SECS: u64 = 30 * 86_400;
pub const JOIN_TOKEN_MAX_USES: u32 = 10_000;
pub const DESCRIPTION_MAX_CHARS: usize = 200;
/// API tokens: default and longest lifetime.
pub const API_TOKEN_DEFAULT_TTL_SECS: u64 = 86_400;
pub const API_TOKEN_MAX_TTL_SECS: u64 = 365 * 86_400;
pub const SUBJECT_MAX_CHARS: usize = 64;

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
    authed: Authed<Admin>,
    State(state): State<ApiState>,
    JsonBody(request): JsonBody<CreateApiTokenRequest>,
) -> Result<(StatusCode, Json<ApiTokenCreated>), ApiError> {
    let caller = authed.0;
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
