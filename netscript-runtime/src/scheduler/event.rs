use chrono::{DateTime, Utc};
use serde::Serialize;

use super::ScheduledTick;
use crate::job::JobErrorKind;
use crate::runtime::Receipt;

/// Something a [`Scheduler`](super::Scheduler) did, seen through
/// [`Scheduler::subscribe`](super::Scheduler::subscribe).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "camelCase")]
#[non_exhaustive]
pub enum SchedulerEvent {
    /// A schedule was added.
    #[serde(rename_all = "camelCase")]
    JobScheduled {
        /// The schedule.
        schedule_id: String,
        /// Its next fire time, if it is enabled and has one.
        next_fire: Option<DateTime<Utc>>,
    },
    /// A schedule was removed (or the scheduler stopped).
    #[serde(rename_all = "camelCase")]
    JobUnscheduled {
        /// The schedule.
        schedule_id: String,
    },
    /// A tick's handler succeeded and its actions were carried out.
    #[serde(rename_all = "camelCase")]
    JobRun {
        /// The tick.
        tick: ScheduledTick,
        /// Which attempt succeeded (1 for the first).
        attempt: u32,
        /// One receipt per enqueue action; `duplicate` is `true` where another process (or an
        /// earlier attempt) already enqueued this tick's job.
        receipts: Vec<Receipt>,
    },
    /// An attempt at a tick failed: the handler returned an error or an action failed.
    #[serde(rename_all = "camelCase")]
    JobError {
        /// The tick.
        tick: ScheduledTick,
        /// Which attempt failed (1 for the first).
        attempt: u32,
        /// Whether the failure was retryable.
        kind: JobErrorKind,
        /// What went wrong.
        message: String,
        /// When the next attempt runs, or `None` when this was the last one.
        retry_at: Option<DateTime<Utc>>,
    },
}

impl SchedulerEvent {
    /// The schedule the event is about.
    pub fn schedule_id(&self) -> &str {
        match self {
            SchedulerEvent::JobScheduled { schedule_id, .. } | SchedulerEvent::JobUnscheduled { schedule_id } => {
                schedule_id
            }
            SchedulerEvent::JobRun { tick, .. } | SchedulerEvent::JobError { tick, .. } => &tick.schedule_id,
        }
    }
}
