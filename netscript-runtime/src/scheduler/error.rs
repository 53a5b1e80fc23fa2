use crate::cron::CronError;
use crate::kv::KvError;

/// Why a scheduler call was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchedulerError {
    /// The cron expression of a schedule is invalid; the source names the field and why.
    #[error("schedule `{id}`: invalid cron expression: {source}")]
    InvalidExpression {
        /// The schedule.
        id: String,
        /// What is wrong.
        source: CronError,
    },
    /// The timezone of a schedule is not an IANA name.
    #[error("schedule `{id}`: invalid timezone: {source}")]
    InvalidTimezone {
        /// The schedule.
        id: String,
        /// What is wrong.
        source: CronError,
    },
    /// The id is empty.
    #[error("a schedule id must not be empty")]
    EmptyId,
    /// A schedule with this id is already running on this scheduler.
    #[error("a schedule `{0}` already exists; unschedule it first or pick another id")]
    DuplicateId(String),
    /// No schedule has this id.
    #[error("no schedule `{0}`")]
    UnknownSchedule(String),
    /// The scheduler was stopped.
    #[error("the scheduler is stopped")]
    Stopped,
    /// A triggered fire failed on its last attempt.
    #[error("schedule `{id}` failed after {attempts} attempt(s): {message}")]
    Failed {
        /// The schedule.
        id: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        message: String,
    },
    /// A registered schedule is invalid.
    #[error(transparent)]
    Registered(#[from] super::ScheduleSetError),
    /// The key-value store (which keeps each schedule's last fired tick) failed.
    #[error("schedule state: {0}")]
    Store(#[from] KvError),
}
