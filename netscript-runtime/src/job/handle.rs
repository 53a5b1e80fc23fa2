use std::marker::PhantomData;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How one enqueue is done: keys, priority, delay, correlation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnqueueOptions {
    /// Enqueues with the same key collapse into one execution while the key is remembered
    /// (see the queue's idempotency window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Executions sharing a concurrency key never run at the same time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    /// Higher runs first; 0 by default.
    #[serde(default)]
    pub priority: i32,
    /// Not visible to workers until this much time has passed.
    #[serde(default, with = "crate::queue::duration_opt", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub delay: Option<Duration>,
    /// Ties executions of one request together; defaults to the execution id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// W3C trace context to continue in the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// W3C `tracestate` that goes with `traceparent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// A typed request to enqueue one job, made by the job's handle:
/// `process_payment::enqueue(payload)`.
///
/// The payload type is fixed by the job's signature, so enqueueing the wrong payload does not
/// compile. Send it with `Runtime::enqueue`, or turn it into a trigger action.
#[must_use = "an EnqueueJob does nothing until it is given to `Runtime::enqueue`"]
#[derive(Clone, Debug)]
pub struct EnqueueJob<P> {
    job_id: &'static str,
    payload: P,
    options: EnqueueOptions,
    _payload: PhantomData<fn(P)>,
}

impl<P: Serialize> EnqueueJob<P> {
    /// A request to run `job_id` with `payload`. Prefer the handle `#[job]` generates.
    pub fn new(job_id: &'static str, payload: P) -> Self {
        Self { job_id, payload, options: EnqueueOptions::default(), _payload: PhantomData }
    }

    /// Collapse duplicate enqueues that carry the same key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.options.idempotency_key = Some(key.into());
        self
    }

    /// Never run at the same time as another execution with the same key.
    pub fn concurrency_key(mut self, key: impl Into<String>) -> Self {
        self.options.concurrency_key = Some(key.into());
        self
    }

    /// Higher runs first (default 0).
    pub fn priority(mut self, priority: i32) -> Self {
        self.options.priority = priority;
        self
    }

    /// Run no sooner than `delay` from now.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.options.delay = Some(delay);
        self
    }

    /// Tie this execution to others of the same request.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.options.correlation_id = Some(id.into());
        self
    }

    /// Continue a W3C trace in the job.
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.options.traceparent = Some(traceparent.into());
        self
    }

    /// The W3C `tracestate` that goes with the `traceparent`.
    pub fn tracestate(mut self, tracestate: impl Into<String>) -> Self {
        self.options.tracestate = Some(tracestate.into());
        self
    }

    /// The job's id.
    pub fn job_id(&self) -> &'static str {
        self.job_id
    }

    /// The payload.
    pub fn payload(&self) -> &P {
        &self.payload
    }

    /// The options set so far.
    pub fn options(&self) -> &EnqueueOptions {
        &self.options
    }

    /// Splits the request into its parts.
    pub fn into_parts(self) -> (&'static str, P, EnqueueOptions) {
        (self.job_id, self.payload, self.options)
    }
}
