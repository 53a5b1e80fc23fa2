//! `GET /api/v1/workers/tasks`: the polyglot task registry.

use axum::Json;
use axum::extract::State;

use crate::runtime::Runtime;
use crate::tasks::TaskDefinition;

/// Every polyglot task, by id: runtime, entrypoint, limits, permissions (the names of its
/// environment variables, never their values). Each is triggered like a job, at
/// `POST /api/v1/workers/jobs/{id}/trigger`.
pub(super) async fn list_tasks(State(rt): State<Runtime>) -> Json<Vec<TaskDefinition>> {
    Json(rt.tasks().iter().map(|t| TaskDefinition::clone(t)).collect())
}
