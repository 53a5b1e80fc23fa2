use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::job::{JobContext, JobDescriptor, JobError, StateMap};

/// How one attempt ended.
#[derive(Debug)]
pub enum AttemptOutcome {
    /// The job returned its output.
    Succeeded(serde_json::Value),
    /// The job returned an error (or its payload did not decode).
    Failed(JobError),
    /// The job panicked; the panic's message.
    Panicked(String),
    /// The job ran past its timeout; its cancellation signal was fired and the run dropped.
    TimedOut(Duration),
    /// The run was stopped from outside (shutdown past its grace period, or the lease was
    /// lost to another worker) before it finished.
    Abandoned,
}

impl AttemptOutcome {
    /// The error to record, and whether it is fatal; `None` for success and abandonment.
    pub fn error(&self) -> Option<(String, bool)> {
        match self {
            Self::Succeeded(_) | Self::Abandoned => None,
            Self::Failed(e) => Some((e.message().to_owned(), e.is_fatal())),
            Self::Panicked(msg) => Some((format!("job panicked: {msg}"), false)),
            Self::TimedOut(d) => Some((format!("job timed out after {}", humantime::format_duration(*d)), false)),
        }
    }
}

/// Runs attempts as tokio tasks in this process: a panic is caught and reported, a timeout
/// fires the job's cancellation signal and drops the run.
#[derive(Clone, Copy, Debug, Default)]
pub struct InProcessRunner;

impl InProcessRunner {
    /// Runs one attempt of `job`. `stop` abandons the run when fired.
    pub async fn run(
        &self,
        job: &'static JobDescriptor,
        ctx: JobContext,
        payload: &[u8],
        states: &StateMap,
        timeout: Duration,
        stop: &CancellationToken,
    ) -> AttemptOutcome {
        let span = ctx.span().clone();
        let cancel = ctx.cancellation().clone();
        let future = match (job.handler)(ctx, payload, states) {
            Ok(f) => f,
            Err(e) => return AttemptOutcome::Failed(e),
        };
        let guarded = AssertUnwindSafe(future).catch_unwind().instrument(span);
        tokio::select! {
            biased;
            r = tokio::time::timeout(timeout, guarded) => match r {
                Ok(Ok(Ok(value))) => AttemptOutcome::Succeeded(value),
                Ok(Ok(Err(e))) => AttemptOutcome::Failed(e),
                Ok(Err(panic)) => AttemptOutcome::Panicked(panic_message(panic.as_ref())),
                Err(_) => {
                    cancel.cancel();
                    AttemptOutcome::TimedOut(timeout)
                }
            },
            () = stop.cancelled() => AttemptOutcome::Abandoned,
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}
