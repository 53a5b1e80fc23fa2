use serde::Serialize;

use crate::job::{EnqueueJob, EnqueueOptions};

/// What a schedule asks for when it fires. The scheduler carries the actions out in order.
///
/// Build one from a job's typed handle: `import_products::enqueue(payload).into()`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// Enqueue a job.
    Enqueue(EnqueueAction),
}

impl Action {
    /// An action that enqueues `job_id` with a JSON payload (checked against the job's
    /// payload type when the action runs). Prefer the typed handle where there is one.
    pub fn enqueue_json(job_id: impl Into<String>, payload: serde_json::Value, options: EnqueueOptions) -> Self {
        Action::Enqueue(EnqueueAction { job_id: job_id.into(), payload: Ok(payload), options })
    }
}

impl<P: Serialize> From<EnqueueJob<P>> for Action {
    /// Serializes the payload now; a payload that cannot be serialized makes the action fail
    /// when it runs, with the serializer's message.
    fn from(job: EnqueueJob<P>) -> Self {
        let (job_id, payload, options) = job.into_parts();
        let payload = serde_json::to_value(payload).map_err(|e| e.to_string());
        Action::Enqueue(EnqueueAction { job_id: job_id.to_owned(), payload, options })
    }
}

/// An [`Action::Enqueue`]: a job id, its payload as JSON, and the enqueue options.
#[derive(Clone, Debug, PartialEq)]
pub struct EnqueueAction {
    job_id: String,
    payload: Result<serde_json::Value, String>,
    options: EnqueueOptions,
}

impl EnqueueAction {
    /// The job to enqueue.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// The payload as JSON, or why it could not be serialized.
    pub fn payload(&self) -> Result<&serde_json::Value, &str> {
        self.payload.as_ref().map_err(String::as_str)
    }

    /// The enqueue options (idempotency key, priority, delay, ...).
    pub fn options(&self) -> &EnqueueOptions {
        &self.options
    }

    pub(super) fn into_parts(self) -> (String, Result<serde_json::Value, String>, EnqueueOptions) {
        (self.job_id, self.payload, self.options)
    }
}
