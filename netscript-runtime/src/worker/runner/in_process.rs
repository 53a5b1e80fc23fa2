//! The in-process runner: attempts run as tokio tasks of the serving process.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{AttemptOutcome, panic_message};
use crate::job::{JobContext, JobDescriptor, StateMap};

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
