//! Runners: where one attempt of a job runs. The dispatcher hands every attempt to the
//! [`Runner`] of its worker group; the job's code is the same in each mode.
//!
//! | mode | where the attempt runs | isolation | costs |
//! |---|---|---|---|
//! | [`InProcessRunner`] | a tokio task of the serving process | none: a job that blocks its thread stalls its neighbours | nothing extra |
//! | [`ThreadPoolRunner`] | a dedicated OS thread with its own single-threaded runtime, one per slot | a CPU-bound job stalls only its own slot, never the API or the dispatcher | one thread per slot |
//! | [`SubprocessRunner`] | a child process re-executing this binary | a crash, an abort or a leak ends with the child | a process start per attempt |
//!
//! Polyglot tasks (see [`crate::tasks`]) are child processes of their own: the subprocess
//! runner runs them as the in-process runner does, without a second process around them.
//!
//! Each mode reports an [`AttemptOutcome`]; timeouts, panics and shutdown mean the same in
//! all three (see [`AttemptOutcome`]).

mod in_process;
mod subprocess;
mod thread_pool;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use in_process::InProcessRunner;
pub use subprocess::{CHILD_ENV, ChildRequest, SubprocessRunner, serve_child};
pub use thread_pool::ThreadPoolRunner;

use crate::config::RunnerMode;
use crate::job::{JobContext, JobDescriptor, JobError, StateMap};
use crate::tasks::TaskTable;

/// How one attempt ended.
#[derive(Debug)]
pub enum AttemptOutcome {
    /// The job returned its output.
    Succeeded(serde_json::Value),
    /// The job returned an error (or its payload did not decode, or its child process
    /// failed).
    Failed(JobError),
    /// The job panicked; the panic's message.
    Panicked(String),
    /// The job ran past its timeout; its cancellation signal was fired and the run dropped
    /// (or its child process killed).
    TimedOut(Duration),
    /// The run was stopped from outside (shutdown past its grace period, a cancel request,
    /// or the lease lost to another worker) before it finished.
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

/// The runner of one worker group: one of the three modes.
#[derive(Clone, Debug)]
pub enum Runner {
    /// Tokio tasks in this process.
    InProcess(InProcessRunner),
    /// Dedicated OS threads.
    ThreadPool(ThreadPoolRunner),
    /// Child processes.
    Subprocess(SubprocessRunner),
}

impl Default for Runner {
    fn default() -> Self {
        Runner::InProcess(InProcessRunner)
    }
}

impl Runner {
    /// The runner for `mode` with `slots` slots: a thread pool starts its threads now; a
    /// subprocess runner re-executes this binary (see [`SubprocessRunner::current_exe`]).
    pub fn new(mode: RunnerMode, slots: usize) -> std::io::Result<Self> {
        Ok(match mode {
            RunnerMode::InProcess => Runner::InProcess(InProcessRunner),
            RunnerMode::ThreadPool => Runner::ThreadPool(ThreadPoolRunner::new(slots)?),
            RunnerMode::Subprocess => Runner::Subprocess(SubprocessRunner::current_exe()?),
        })
    }

    /// The mode's name: `in-process`, `thread-pool` or `subprocess`.
    pub fn mode(&self) -> &'static str {
        match self {
            Runner::InProcess(_) => "in-process",
            Runner::ThreadPool(_) => "thread-pool",
            Runner::Subprocess(_) => "subprocess",
        }
    }

    /// Runs one attempt of `job` on `payload` within `timeout`. `stop` abandons the run when
    /// fired (the subprocess runner kills the child).
    pub async fn run(
        &self,
        job: &'static JobDescriptor,
        ctx: JobContext,
        payload: &[u8],
        states: &Arc<StateMap>,
        timeout: Duration,
        stop: &CancellationToken,
    ) -> AttemptOutcome {
        match self {
            Runner::InProcess(r) => r.run(job, ctx, payload, states, timeout, stop).await,
            Runner::ThreadPool(r) => r.run(job, ctx, payload, states, timeout, stop).await,
            // A polyglot task is a child process already: it needs no second one around it.
            Runner::Subprocess(_) if is_task(job, states) => {
                InProcessRunner.run(job, ctx, payload, states, timeout, stop).await
            }
            // Boxed: supervising a child is a 10 KB future, and inline it made every attempt's
            // future that large, whatever its runner (copied a few times per job).
            Runner::Subprocess(r) => Box::pin(r.run(job, ctx, payload, timeout, stop)).await,
        }
    }
}

/// Whether `job` is one of the runtime's polyglot tasks.
fn is_task(job: &JobDescriptor, states: &StateMap) -> bool {
    states.get::<TaskTable>().is_some_and(|tasks| tasks.get(job.id).is_some())
}

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}
