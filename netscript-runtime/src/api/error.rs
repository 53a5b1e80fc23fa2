use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::runtime::EnqueueError;
use crate::store::StoreError;

/// An error answer: `{ "error": { "code", "message" } }` with `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, such as `unknown_job`.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

impl From<EnqueueError> for ApiError {
    fn from(e: EnqueueError) -> Self {
        match e {
            EnqueueError::UnknownJob(_) => Self::new(StatusCode::NOT_FOUND, "unknown_job", e.to_string()),
            EnqueueError::InvalidPayload { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_payload", e.to_string())
            }
            EnqueueError::Queue(_) | EnqueueError::Store(_) => {
                tracing::error!(error = %e, "enqueue failed");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "backend_unavailable", e.to_string())
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "execution store failed");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "backend_unavailable", e.to_string())
    }
}
