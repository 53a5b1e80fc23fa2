//! `POST <path>` of each `#[webhook]`: verify, decode, run, carry out the actions.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use futures::FutureExt;

use super::{ApiError, routes};
use crate::runtime::Runtime;
use crate::webhook::{ArmedWebhook, Verifier, WebhookError, WebhookRequest};

/// A route per webhook of `runtime`. They are not behind the bearer token.
pub(super) fn routes(runtime: &Runtime) -> Router<Runtime> {
    runtime.webhooks().iter().fold(Router::new(), |router, webhook| {
        let webhook = webhook.clone();
        router.route(
            webhook.descriptor.path,
            post(move |State(rt): State<Runtime>, headers: HeaderMap, body: Result<Bytes, BytesRejection>| {
                receive(rt, webhook.clone(), headers, body)
            }),
        )
    })
}

/// 401 bad signature, 400 malformed body, 422 the handler or a job refused it for good,
/// 503 a retryable failure (the sender should retry), 202 with the execution ids.
async fn receive(
    rt: Runtime,
    webhook: ArmedWebhook,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let body = routes::read_body(&rt, body)?;
    let descriptor = webhook.descriptor;
    if let Verifier::HmacSha256(spec) = descriptor.verifier {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        // The runtime's clock (a test's `ManualClock` moves it to show replays refused).
        let now = rt.clock().now().timestamp();
        if let Err(e) = spec.verify(&webhook.secret, header, &body, now) {
            tracing::warn!(webhook = descriptor.id, error = %e, "webhook call refused");
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", e.to_string()));
        }
    }
    let request = WebhookRequest {
        webhook_id: descriptor.id.to_owned(),
        body: body.to_vec(),
        headers: header_map(&headers),
        received_at: rt.clock().now(),
    };
    let failed = |e: WebhookError| match e {
        WebhookError::Malformed(message) => ApiError::new(StatusCode::BAD_REQUEST, "malformed_body", message),
        WebhookError::Failed(e) if e.is_fatal() => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "webhook_failed", e.message())
        }
        WebhookError::Failed(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "webhook_failed", e.message()),
    };
    let future = (descriptor.handler)(request).map_err(failed)?;
    let actions = match AssertUnwindSafe(future).catch_unwind().await {
        Ok(result) => result.map_err(|e| failed(WebhookError::Failed(e)))?,
        Err(_) => {
            tracing::error!(webhook = descriptor.id, "webhook function panicked");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "webhook_panicked",
                "the webhook function panicked",
            ));
        }
    };
    let receipts =
        crate::scheduler::action::carry_out(&rt, actions, None).await.map_err(|e| failed(WebhookError::Failed(e)))?;
    let ids: Vec<_> = receipts.iter().map(|r| r.execution_id).collect();
    let duplicates = receipts.iter().filter(|r| r.duplicate).count();
    let answer = serde_json::json!({ "webhook": descriptor.id, "executionIds": ids, "duplicates": duplicates });
    Ok((StatusCode::ACCEPTED, axum::Json(answer)))
}

/// Headers by lowercase name; repeated ones joined with `, `; values that are not text skipped.
fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let Ok(value) = value.to_str() else { continue };
        map.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    }
    map
}
