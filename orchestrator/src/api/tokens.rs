//! `/v1/tokens` and `/v1/api-tokens`: join tokens for nodes, and the operator API's own
//! tokens: issued (viewer or operator, never admin), listed (never their text) and revoked.
//! Who may have which token is `orchestrator_core::access`'s to decide.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use orchestrator_core::access::{Actor, IssueError, RevokeError};
use std::time::{Duration, SystemTime};

use super::ApiState;
use super::error::{ApiError, internal};
use super::extract::{Admin, Authed, JsonBody};
use super::time::{rfc3339, ttl_from};
use super::views::{
    ApiTokenCreated, ApiTokenView, CreateApiTokenRequest, CreateTokenRequest, TokenCreated,
    TokenView,
};
use crate::auth::{IssueFailed, RevokeFailed};

pub(super) fn routes() -> axum::Router<ApiState> {
    axum::Router::new()
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route(
            "/v1/api-tokens",
            get(list_api_tokens).post(create_api_token),
        )
        .route("/v1/api-tokens/{id}", delete(revoke_api_token))
}

/// Join tokens: default and longest lifetime, and the range of uses.
pub const JOIN_TOKEN_DEFAULT_TTL_SECS: u64 = 3600;
pub const JOIN_TOKEN_MAX_TTL_SECS: u64 = 30 * 86_400;
pub const JOIN_TOKEN_MAX_USES: u32 = 10_000;
pub const DESCRIPTION_MAX_CHARS: usize = 200;
/// API tokens: default and longest lifetime.
pub const API_TOKEN_DEFAULT_TTL_SECS: u64 = 86_400;
pub const API_TOKEN_MAX_TTL_SECS: u64 = 365 * 86_400;

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
    let auth = state.auth.clone();
    let (role, subject) = (request.role, request.subject);
    // The record is stored (flushed) before the token exists: off the async workers.
    let issued = tokio::task::spawn_blocking(move || {
        let issuer = Actor::Api {
            role: caller.role,
            subject: &caller.sub,
        };
        auth.issue_as(
            issuer,
            &subject,
            role,
            SystemTime::now(),
            Duration::from_secs(ttl_secs),
        )
    })
    .await
    .map_err(internal)?
    .map_err(|e| match e {
        IssueFailed::Refused(IssueError::Invalid(e)) => ApiError::BadRequest(e.to_string()),
        other => internal(other),
    })?;
    let record = issued.record;
    tracing::info!(
        token_id = %record.id,
        subject = %record.subject,
        role = %record.role,
        by = %record.issued_by,
        "API token issued"
    );
    Ok((
        StatusCode::CREATED,
        Json(ApiTokenCreated {
            token: issued.token,
            id: record.id,
            role: record.role,
            subject: record.subject,
            expires_at: rfc3339(record.expires_unix),
            expires_unix: record.expires_unix,
        }),
    ))
}

async fn list_api_tokens(
    _: Authed<Admin>,
    State(state): State<ApiState>,
) -> Json<Vec<ApiTokenView>> {
    let now = crate::clock::now_unix();
    let mut tokens: Vec<ApiTokenView> = state
        .auth
        .records()
        .iter()
        .map(|r| ApiTokenView::new(r, now))
        .collect();
    tokens.sort_by(|a, b| (a.issued_unix, &a.id).cmp(&(b.issued_unix, &b.id)));
    Json(tokens)
}

async fn revoke_api_token(
    authed: Authed<Admin>,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let auth = state.auth.clone();
    let wanted = id.clone();
    let caller = authed.0;
    // The revocation is in effect at once and stored before the answer: off the workers.
    let record = tokio::task::spawn_blocking(move || {
        let by = Actor::Api {
            role: caller.role,
            subject: &caller.sub,
        };
        auth.revoke(by, &wanted, SystemTime::now())
            .map(|record| (record, caller.sub.clone()))
    })
    .await
    .map_err(internal)?;
    match record {
        Ok((record, by)) => {
            tracing::info!(
                token_id = %record.id,
                subject = %record.subject,
                role = %record.role,
                %by,
                "API token revoked"
            );
            Ok(StatusCode::NO_CONTENT)
        }
        Err(RevokeFailed::Refused(RevokeError::Unknown)) => Err(ApiError::NotFound(format!(
            "no API token with id {}",
            edge_proto::field::shown(&id)
        ))),
        Err(RevokeFailed::Refused(e @ RevokeError::AdminToken)) => {
            Err(ApiError::Refused(e.to_string()))
        }
        Err(e @ RevokeFailed::Store(_)) => Err(internal(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `ttl` pattern of a request schema in the OpenAPI document.
    fn ttl_pattern(schema: &str) -> regex::Regex {
        let doc: serde_json::Value =
            serde_json::from_str(super::super::OPENAPI_JSON).expect("the document is JSON");
        let pattern = doc["components"]["schemas"][schema]["properties"]["ttl"]["pattern"]
            .as_str()
            .expect("a ttl pattern");
        regex::Regex::new(pattern).expect("the pattern compiles")
    }

    /// Durations around every bound: each unit's limit, zero, leading zeros, overflow, and
    /// what is not a duration at all.
    fn durations(max_secs: u64) -> Vec<String> {
        let mut out = Vec::new();
        for (unit, secs) in [("", 1), ("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)] {
            let limit = max_secs / secs;
            let numbers = (0..=1000)
                .chain(limit.saturating_sub(1000)..=limit + 1000)
                .chain([limit * 10, u64::MAX / secs, u64::MAX]);
            for n in numbers {
                out.push(format!("{n}{unit}"));
                out.push(format!("00{n}{unit}"));
            }
            out.push(format!("99999999999999999999{unit}"));
        }
        for odd in [
            "", "s", "h", "0", "00", "1x", "1hs", "1.5h", "-1h", "+1h", " 1h", "1h ", "1 h", "1H",
            "1h30m", "１h", "٣h",
        ] {
            out.push(odd.to_owned());
        }
        out
    }

    /// The document's `ttl` patterns accept exactly the durations the server takes.
    #[test]
    fn ttl_patterns_are_the_servers_bounds() {
        for (schema, default, max) in [
            (
                "CreateToken",
                JOIN_TOKEN_DEFAULT_TTL_SECS,
                JOIN_TOKEN_MAX_TTL_SECS,
            ),
            (
                "CreateApiToken",
                API_TOKEN_DEFAULT_TTL_SECS,
                API_TOKEN_MAX_TTL_SECS,
            ),
        ] {
            let pattern = ttl_pattern(schema);
            for ttl in durations(max) {
                let server = ttl_from(Some(&ttl), None, default, max).is_ok();
                assert_eq!(
                    pattern.is_match(&ttl),
                    server,
                    "{schema}.ttl {ttl:?}: the document says {}, the server {server}",
                    pattern.is_match(&ttl)
                );
            }
        }
    }
}
