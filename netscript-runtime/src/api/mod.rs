//! The HTTP API (axum), default 127.0.0.1:8091.
//!
//! | route | purpose |
//! |---|---|
//! | `GET /health` | liveness, with the active providers |
//! | `GET /api/v1/workers/jobs` | registered jobs with their payload JSON Schema |
//! | `POST /api/v1/workers/jobs/{id}/trigger` | enqueue; 202 with the execution id |
//! | `GET /api/v1/workers/executions?limit=&status=&job=&before=` | executions, newest first |
//! | `GET /api/v1/workers/executions/{id}` | one execution |
//!
//! Errors are JSON `{ "error": { "code", "message" } }` with the matching status, for
//! unknown routes (404) and methods (405) too. Request bodies are limited to 1 MiB.

mod error;
mod routes;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

pub use error::ApiError;
pub use routes::{JobInfo, TriggerEnvelope};

use crate::runtime::Runtime;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// The API's routes, over `runtime`.
pub fn router(runtime: Runtime) -> Router {
    Router::new()
        .route("/health", get(routes::health))
        .route("/api/v1/workers/jobs", get(routes::list_jobs))
        .route("/api/v1/workers/jobs/{id}/trigger", post(routes::trigger))
        .route("/api/v1/workers/executions", get(routes::list_executions))
        .route("/api/v1/workers/executions/{id}", get(routes::get_execution))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(runtime)
}
