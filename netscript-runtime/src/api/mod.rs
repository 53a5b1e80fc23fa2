//! The HTTP API (axum), default 127.0.0.1:8091.
//!
//! | route | purpose |
//! |---|---|
//! | `GET /health` | liveness, with the active providers |
//! | `GET /metrics` | Prometheus text format: attempts per topic, durations, pickup latency, queue depth |
//! | `GET /api/v1/workers/jobs?source=` | registered jobs with their payload JSON Schema (`store`: every binary's seeded catalogue) |
//! | `POST /api/v1/workers/jobs/{id}/trigger` | enqueue; 202 with the execution id |
//! | `GET /api/v1/workers/executions?limit=&status=&job=&before=` | executions, newest first |
//! | `GET /api/v1/workers/executions/{id}` | one execution |
//! | `POST /api/v1/workers/executions/{id}/cancel` | cancel a waiting or running execution |
//! | `GET /api/v1/workers/dead-letters?limit=` | dead letters, newest first, with their last error |
//! | `POST /api/v1/workers/dead-letters/{id}/redrive` | put one back in the queue |
//! | `POST /api/v1/workers/dead-letters/redrive` | put them all back |
//! | `GET /api/v1/workers/queue` | queue counts: ready, delayed, leased, dead |
//! | `GET /api/v1/workers/topics` | each topic: paused or not, ready, delayed, leased, dead, and `throughput` (executions this process's workers finished in the last 60 s) |
//! | `POST /api/v1/workers/topics/{topic}/pause`, `.../resume` | stop or restart claiming a topic |
//! | `GET /api/v1/workers/subscribe?job=&execution=` | execution changes as server-sent events |
//! | `GET /api/v1/workers/schedules` | registered schedules: expression, timezone, next five fire times |
//! | `POST /api/v1/workers/seed` | write this binary's jobs and tasks to the store's catalogue |
//! | `GET /api/v1/workers/tasks` | polyglot tasks: runtime, entrypoint, limits, permissions |
//! | `POST <path>` of each `#[webhook]` | verified call: 202 with the execution ids (no bearer token) |
//! | `GET /api/v1/openapi.json` | OpenAPI 3.1, each job's trigger body typed by its schema |
//!
//! Errors are JSON `{ "error": { "code", "message" } }` with the matching status, for
//! unknown routes (404) and methods (405) too. Request bodies are limited (1 MiB by default,
//! `WorkersConfig::api_body_limit`; 413 beyond). When `NETSCRIPT_API_TOKEN` is set, every
//! route but `/health` and the webhooks requires `Authorization: Bearer <token>` (401
//! otherwise); a webhook's verifier is its authentication.

mod auth;
mod error;
pub mod openapi;
mod routes;
mod schedules;
mod sse;
mod tasks;
mod webhooks;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};

pub use error::ApiError;
pub(crate) use routes::parse_trigger_body;
pub use routes::{DeadLetterInfo, JobInfo, TriggerEnvelope};

use crate::runtime::Runtime;

/// The API's routes, over `runtime`.
pub fn router(runtime: Runtime) -> Router {
    let api = Router::new()
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .route("/api/v1/workers/jobs", get(routes::list_jobs))
        .route("/api/v1/workers/jobs/{id}/trigger", post(routes::trigger))
        .route("/api/v1/workers/executions", get(routes::list_executions))
        .route("/api/v1/workers/executions/{id}", get(routes::get_execution))
        .route("/api/v1/workers/executions/{id}/cancel", post(routes::cancel_execution))
        .route("/api/v1/workers/dead-letters", get(routes::list_dead_letters))
        .route("/api/v1/workers/dead-letters/redrive", post(routes::redrive_all))
        .route("/api/v1/workers/dead-letters/{id}/redrive", post(routes::redrive))
        .route("/api/v1/workers/queue", get(routes::queue_stats))
        .route("/api/v1/workers/topics", get(routes::list_topics))
        .route("/api/v1/workers/topics/{topic}/pause", post(routes::pause_topic))
        .route("/api/v1/workers/topics/{topic}/resume", post(routes::resume_topic))
        .route("/api/v1/workers/subscribe", get(sse::subscribe))
        .route("/api/v1/workers/schedules", get(schedules::list_schedules))
        .route("/api/v1/workers/tasks", get(tasks::list_tasks))
        .route("/api/v1/workers/seed", post(routes::seed))
        .route("/api/v1/openapi.json", get(routes::openapi));
    api.merge(webhooks::routes(&runtime))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(middleware::from_fn_with_state(runtime.clone(), auth::require_token))
        .layer(DefaultBodyLimit::max(runtime.config().api_body_limit))
        .with_state(runtime)
}
