//! Tasks as jobs: each task a runtime is given becomes a [`JobDescriptor`] in its registry, so
//! it is enqueued, retried, recorded, listed and cancelled exactly like a `#[job]`.
//!
//! The descriptor's handler is one function for every task: it finds the task by the job id in
//! the runtime's [`TaskTable`] (kept in the runtime's state, so two runtimes in one process
//! keep their own tasks) and runs it with [`run_task`]. A task's payload is any JSON value; its
//! retries are fixed delays of `retry_delay`; `max_concurrency` bounds its runs at once in each
//! worker process. Descriptors are allocated once per runtime build and never freed (a few
//! hundred bytes per task).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::{TaskDefinition, TaskInput, TaskOutcome, run_task};
use crate::job::{Backoff, HandlerFuture, JobContext, JobDescriptor, JobError, Location, PayloadSpec, State, StateMap};

/// How long past its own timeout a task's job may run before the runner stops it: the task's
/// supervisor kills the process group at the task's timeout, and reports it.
const TIMEOUT_GRACE: Duration = Duration::from_secs(2);

/// The tasks of one runtime, by id.
#[derive(Debug, Default)]
pub struct TaskTable {
    tasks: BTreeMap<String, Entry>,
}

#[derive(Debug)]
struct Entry {
    definition: Arc<TaskDefinition>,
    /// `max_concurrency` permits.
    permits: Arc<Semaphore>,
}

impl TaskTable {
    /// A table of these tasks; the error names a task id given twice.
    pub fn new(tasks: impl IntoIterator<Item = TaskDefinition>) -> Result<Self, String> {
        let mut table = TaskTable::default();
        for task in tasks {
            let permits = Arc::new(Semaphore::new(task.max_concurrency.max(1)));
            let id = task.id.clone();
            if table.tasks.insert(id.clone(), Entry { definition: Arc::new(task), permits }).is_some() {
                return Err(format!("two tasks have the id `{id}`"));
            }
        }
        Ok(table)
    }

    /// The task with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<TaskDefinition>> {
        self.tasks.get(id).map(|e| &e.definition)
    }

    /// Every task, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<TaskDefinition>> {
        self.tasks.values().map(|e| &e.definition)
    }

    /// Number of tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// `true` when there is none.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// A job descriptor for each task (allocated for the life of the process).
    pub fn descriptors(&self) -> Vec<&'static JobDescriptor> {
        self.iter().map(|task| descriptor(task)).collect()
    }
}

fn descriptor(task: &TaskDefinition) -> &'static JobDescriptor {
    let leak = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
    let description = task.description.clone().unwrap_or_else(|| {
        format!("{} task `{}`", task.runtime.name(), task.entrypoint.lines().next().unwrap_or_default())
    });
    Box::leak(Box::new(JobDescriptor {
        id: leak(&task.id),
        name: leak(&task.id),
        topic: leak(&task.topic),
        description: leak(&description),
        tags: Box::leak(Box::new([leak("task"), task.runtime.name()])),
        timeout: Some(task.timeout.saturating_add(TIMEOUT_GRACE)),
        retries: task.retry,
        backoff: Backoff::Fixed(task.retry_delay),
        payload: Some(PayloadSpec { type_name: "serde_json::Value", schema: any_json, validate: |_| Ok(()) }),
        output_schema: any_json,
        states: &[],
        handler,
        location: Location { module_path: "netscript::tasks", file: "task definition", line: 0 },
    }))
}

/// The schema of any JSON value.
fn any_json() -> schemars::Schema {
    schemars::Schema::from(true)
}

/// The handler of every task's job.
fn handler(ctx: JobContext, payload: &[u8], states: &StateMap) -> Result<HandlerFuture, JobError> {
    let table: State<TaskTable> = states.get::<TaskTable>().ok_or_else(|| {
        JobError::fatal("this runtime has no task table; tasks run only on the runtime that defines them")
    })?;
    let Some(entry) = table.tasks.get(ctx.job_id()) else {
        return Err(JobError::fatal(format!("no task `{}` on this runtime", ctx.job_id())));
    };
    let (task, permits) = (Arc::clone(&entry.definition), Arc::clone(&entry.permits));
    let payload: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| JobError::fatal(format!("the payload is not JSON: {e}")))?;
    Ok(Box::pin(async move {
        let _permit = permits.acquire_owned().await.map_err(|_| JobError::retryable("the task's slots are closed"))?;
        let input = TaskInput {
            payload,
            execution_id: ctx.execution_id().to_string(),
            attempt: ctx.attempt(),
            max_attempts: ctx.max_attempts(),
            correlation_id: ctx.correlation_id().to_owned(),
            traceparent: ctx.traceparent().map(str::to_owned),
            tracestate: ctx.tracestate().map(str::to_owned),
        };
        let (progress, relay) = ctx.progress_relay();
        let run = run_task(&task, input, ctx.cancellation(), move |percent, message| progress.send(percent, message));
        let (outcome, ()) = tokio::join!(run, relay);
        match outcome {
            TaskOutcome::Succeeded(value) => Ok(value),
            TaskOutcome::Failed { message, fatal: true } => Err(JobError::fatal(message)),
            TaskOutcome::Failed { message, fatal: false } => Err(JobError::retryable(message)),
            TaskOutcome::TimedOut(d) => {
                Err(JobError::retryable(format!("task timed out after {}", humantime::format_duration(d))))
            }
            TaskOutcome::Cancelled => Err(JobError::retryable("task cancelled")),
        }
    }))
}
