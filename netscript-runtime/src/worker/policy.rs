use std::time::Duration;

use crate::job::JobDescriptor;

/// What to do with a message after a failed attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Try again after `delay`.
    Retry {
        /// Backoff before the next attempt.
        delay: Duration,
    },
    /// Give up: move it to the dead-letter store.
    DeadLetter,
}

/// The retry policy: a fatal error, or a failure of the last allowed attempt, dead-letters;
/// anything else retries after the job's backoff for this attempt.
pub fn decide(job: &JobDescriptor, attempt: u32, fatal: bool) -> Decision {
    if fatal || attempt >= job.max_attempts() {
        Decision::DeadLetter
    } else {
        Decision::Retry { delay: job.backoff.delay(attempt) }
    }
}
