//! The in-process runner: attempts run as tokio tasks of the serving process.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;

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
        // The attempt's span is entered on every poll through a second handle on the context
        // (an Arc's count), not a second handle on the span, which costs the log's registry a
        // lookup to take and another to drop.
        let scope = ctx.clone();
        let future = match (job.handler)(ctx, payload, states) {
            Ok(f) => f,
            Err(e) => return AttemptOutcome::Failed(e),
        };
        let mut caught = std::pin::pin!(AssertUnwindSafe(future).catch_unwind());
        let guarded = std::future::poll_fn(|cx| {
            let _entered = scope.span().enter();
            caught.as_mut().poll(cx)
        });
        tokio::select! {
            biased;
            r = tokio::time::timeout(timeout, guarded) => match r {
                Ok(Ok(Ok(value))) => AttemptOutcome::Succeeded(value),
                Ok(Ok(Err(e))) => AttemptOutcome::Failed(e),
                Ok(Err(panic)) => AttemptOutcome::Panicked(panic_message(panic.as_ref())),
                Err(_) => {
                    scope.cancellation().cancel();
                    AttemptOutcome::TimedOut(timeout)
                }
            },
            () = stop.cancelled() => AttemptOutcome::Abandoned,
        }
    }
}
