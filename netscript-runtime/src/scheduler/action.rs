use serde::Serialize;

use crate::job::{EnqueueJob, EnqueueOptions, JobError};
use crate::runtime::{EnqueueError, Receipt, Runtime};

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

    pub(crate) fn into_parts(self) -> (String, Result<serde_json::Value, String>, EnqueueOptions) {
        (self.job_id, self.payload, self.options)
    }
}

/// Carries out actions in order; the first failure stops the rest (a retry redoes them all,
/// and idempotency keys collapse what was already enqueued). With `key`, enqueues without an
/// idempotency key of their own get `key` (the first) and `key:<i>` (the others). An error
/// that another attempt cannot fix (an unknown job, a payload the job refuses) is fatal.
pub(crate) async fn carry_out(
    runtime: &Runtime,
    actions: Vec<Action>,
    key: Option<&str>,
) -> Result<Vec<Receipt>, JobError> {
    let mut receipts = Vec::with_capacity(actions.len());
    for (i, action) in actions.into_iter().enumerate() {
        match action {
            Action::Enqueue(enqueue) => {
                let (job_id, payload, mut options) = enqueue.into_parts();
                let payload = payload.map_err(|e| {
                    JobError::fatal(format!("the payload for job `{job_id}` could not be serialized: {e}"))
                })?;
                if options.idempotency_key.is_none() {
                    options.idempotency_key = key.map(|k| if i == 0 { k.to_owned() } else { format!("{k}:{i}") });
                }
                let receipt = runtime.enqueue_json(&job_id, payload, options).await.map_err(|e| match e {
                    EnqueueError::UnknownJob(_) | EnqueueError::InvalidPayload { .. } => JobError::fatal(e.to_string()),
                    _ => JobError::retryable(format!("enqueue of job `{job_id}` failed: {e}")),
                })?;
                receipts.push(receipt);
            }
        }
    }
    Ok(receipts)
}
