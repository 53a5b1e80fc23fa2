use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Action;
use crate::job::JobError;

/// One firing of a schedule, handed to its handler.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledTick {
    /// The schedule's id.
    pub schedule_id: String,
    /// The fire time the expression named (for [`Scheduler::trigger`](super::Scheduler::trigger)
    /// and `run_on_init`, the moment of the request).
    pub scheduled_at: DateTime<Utc>,
    /// When the handler was actually called (later than `scheduled_at` on a retry, or when the
    /// scheduler was busy).
    pub fired_at: DateTime<Utc>,
}

/// The future a [`ScheduleHandler`] returns.
pub type ScheduleFuture = Pin<Box<dyn Future<Output = Result<Vec<Action>, JobError>> + Send + 'static>>;

/// What runs when a schedule fires: it receives the tick and returns the actions to carry out.
///
/// Implemented for every `Fn(ScheduledTick) -> impl Future<Output = Result<Vec<Action>,
/// JobError>>`, so an async closure or an `async fn` is a handler. An `Err` is retried after
/// the schedule's backoff, up to its `max_retries` (never, when the error is fatal).
pub trait ScheduleHandler: Send + Sync + 'static {
    /// Handles one tick.
    fn call(&self, tick: ScheduledTick) -> ScheduleFuture;
}

impl<F, Fut> ScheduleHandler for F
where
    F: Fn(ScheduledTick) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Action>, JobError>> + Send + 'static,
{
    fn call(&self, tick: ScheduledTick) -> ScheduleFuture {
        Box::pin(self(tick))
    }
}
