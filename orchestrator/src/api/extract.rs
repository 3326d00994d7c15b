//! Extractors: who the caller is ([`Authed`], checked against the role a handler needs) and
//! JSON bodies decoded with the path of any bad field in the error.

use crate::auth::{self, AuthError, Claims, Role};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use std::marker::PhantomData;

use super::ApiState;
use super::error::ApiError;

/// Which role a handler needs.
pub(super) trait Access {
    const ROLE: Role;
}
#[derive(Debug)]
pub(super) struct Viewer;
/// Changing workloads and artifacts.
#[derive(Debug)]
pub(super) struct Operator;
#[derive(Debug)]
pub(super) struct Admin;
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
pub(super) struct Authed<A>(pub(super) Claims, PhantomData<A>);

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
pub(super) struct JsonBody<T>(pub(super) T);

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
pub(super) fn json_content_type(
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
pub(super) fn no_json_content_type() -> ApiError {
    ApiError::UnsupportedMediaType("expected content-type application/json".into())
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
pub(super) fn is_json_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::views::{CreateApiTokenRequest, CreateTokenRequest};

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
}
