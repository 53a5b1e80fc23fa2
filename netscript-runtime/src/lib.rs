//! The NetScript engine.
//!
//! Most applications use it through the `netscript` facade crate, which re-exports what is
//! public here together with the `#[job]` attribute. The data flows one way:
//!
//! ```text
//! enqueue ─► queue (a backend) ─► dispatcher ─► runner ─► execution store ─► change feed / API
//! ```
//!
//! Each concept has its own module: [`job`] (what a job is), [`queue`] (the queue contract and
//! its backends), [`kv`] (the key-value contract and its backends), [`store`] (execution
//! records and their change feed), [`worker`] (dispatcher, retry policy, runners), [`api`]
//! (the HTTP API), [`cron`] (cron expressions and next fire times), [`scheduler`] (fires cron
//! schedules and enqueues what they ask for), [`config`], [`cli`] and
//! [`runtime`] (the builder that wires it together).

pub mod api;
pub mod backends;
pub mod catalogue;
pub mod cli;
pub mod config;
/// Cron expressions, timezones and next fire times: the `netscript-cron` crate, which the
/// macros also use to check expressions at compile time.
pub use netscript_cron as cron;
#[cfg(feature = "embedded")]
pub mod embedded;
/// Entry points for the cargo-fuzz targets in `fuzz/`: not a stable API.
#[doc(hidden)]
pub mod fuzzing;
pub mod job;
pub mod kv;
mod log_fields;
pub mod metrics;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod process;
pub mod queue;
#[cfg(feature = "redis")]
pub mod redis;
pub mod runtime;
pub mod scheduler;
pub mod shutdown;
pub mod store;
pub mod tasks;
pub mod telemetry;
pub mod time;
pub mod webhook;
pub mod worker;

pub use config::{QueueProvider, RunnerMode, WorkersConfig};
pub use job::{
    Backoff, EnqueueJob, EnqueueOptions, JobContext, JobDescriptor, JobError, JobErrorKind, JobResult, Registry, State,
};

pub use runtime::{RunningWorkers, Runtime, RuntimeBuilder, StartupError, WorkerPool, WorkerSelection};
pub use store::{ExecutionId, ExecutionRecord, ExecutionStatus};
/// Fires once to stop something: workers (`Runtime::run_workers`), a job (`JobContext::cancellation`).
pub use tokio_util::sync::CancellationToken;

#[doc(hidden)]
pub mod __private;
