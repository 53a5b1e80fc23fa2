//! Bearer-token authentication, on when `NETSCRIPT_API_TOKEN` is set.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::runtime::Runtime;

/// Routes anyone may call, token or not.
const OPEN_PATHS: &[&str] = &["/health"];

/// Refuses requests without the configured bearer token (401, JSON body,
/// `WWW-Authenticate: Bearer`). Passes everything through when no token is configured.
pub(super) async fn require_token(State(rt): State<Runtime>, request: Request, next: Next) -> Response {
    let Some(token) = rt.config().api_token.as_ref() else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    // A webhook's verifier is its authentication.
    if OPEN_PATHS.contains(&path) || rt.webhooks().iter().any(|w| w.descriptor.path == path) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    match presented {
        Some(candidate) if token.matches(candidate.trim()) => next.run(request).await,
        Some(_) => unauthorized("the bearer token is not valid"),
        None => unauthorized("this API requires `Authorization: Bearer <token>`"),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}
