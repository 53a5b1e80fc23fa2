//! The thread-pool runner: one dedicated OS thread per slot, each driving a single-threaded
//! tokio runtime, so a CPU-bound job never stalls the API, the dispatcher or the other slots.
//!
//! An attempt is handed to whichever thread is free as a boxed future; the thread runs it with
//! the [`InProcessRunner`]'s rules (panic caught, timeout, abandonment) and sends the outcome
//! back. A job's I/O made on its thread's runtime works as usual; shared state built on the
//! main runtime (a connection pool) is usable from every thread, since tokio's I/O resources
//! are driven by the runtime that made them.
//!
//! As in process, a timeout can only fire when the job yields: a job stuck in a blocking loop
//! holds its slot until it ends. Use the subprocess runner to bound such a job.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{AttemptOutcome, InProcessRunner};
use crate::job::{JobContext, JobDescriptor, JobError, StateMap};

/// One attempt, ready to run on a pool thread.
type Work = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs attempts on a pool of dedicated OS threads. Cheap to clone: clones share the pool.
/// The threads end when the last clone is dropped (after the attempt they run, if any).
#[derive(Clone)]
pub struct ThreadPoolRunner {
    work: mpsc::UnboundedSender<Work>,
    threads: usize,
}

impl std::fmt::Debug for ThreadPoolRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPoolRunner").field("threads", &self.threads).finish()
    }
}

impl ThreadPoolRunner {
    /// Starts `threads` threads (at least one), named `netscript-job-<n>`. Fails only when the
    /// system refuses a thread or a runtime, and then starts none.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let (work, queue) = mpsc::unbounded_channel::<Work>();
        let queue = Arc::new(tokio::sync::Mutex::new(queue));
        let mut runtimes = Vec::with_capacity(threads);
        for _ in 0..threads {
            runtimes.push(tokio::runtime::Builder::new_current_thread().enable_all().build()?);
        }
        for (n, runtime) in runtimes.into_iter().enumerate() {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new().name(format!("netscript-job-{n}")).spawn(move || {
                runtime.block_on(async move {
                    loop {
                        // One thread waits on the queue at a time; the rest wait for the lock.
                        let next = queue.lock().await.recv().await;
                        match next {
                            Some(attempt) => attempt.await,
                            None => return,
                        }
                    }
                });
            })?;
        }
        Ok(Self { work, threads })
    }

    /// How many threads the pool runs.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs one attempt of `job` on a pool thread (see [`InProcessRunner::run`] for what the
    /// outcomes mean). The caller's task only waits.
    pub async fn run(
        &self,
        job: &'static JobDescriptor,
        ctx: JobContext,
        payload: &[u8],
        states: &Arc<StateMap>,
        timeout: Duration,
        stop: &CancellationToken,
    ) -> AttemptOutcome {
        let (reply, outcome) = oneshot::channel();
        let (payload, states, stop) = (payload.to_vec(), Arc::clone(states), stop.clone());
        let attempt: Work = Box::pin(async move {
            let outcome = InProcessRunner.run(job, ctx, &payload, &states, timeout, &stop).await;
            // The dispatcher may have gone (shutdown); the outcome then has no reader.
            let _ = reply.send(outcome);
        });
        if self.work.send(attempt).is_err() {
            return AttemptOutcome::Failed(JobError::retryable("the thread-pool runner has stopped"));
        }
        match outcome.await {
            Ok(outcome) => outcome,
            // The thread died outside the attempt's own panic guard.
            Err(_) => AttemptOutcome::Panicked("the runner thread ended before the attempt did".into()),
        }
    }
}
