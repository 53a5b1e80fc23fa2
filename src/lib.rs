//! # NetScript
//!
//! Durable background jobs for Rust. Annotate a plain `async fn` with [`#[job]`](job) and get
//! a production job system: a durable queue (embedded SQLite by default, no server needed),
//! retries with backoff, dead letters, an execution history with live updates, an HTTP API
//! and a CLI, all from your own binary.
//!
//! ```no_run
//! use netscript::prelude::*;
//!
//! #[derive(Deserialize, JsonSchema)]
//! struct Greet {
//!     name: String,
//! }
//!
//! /// Says hello.
//! #[job(id = "greet", retries = 2, timeout = "10s")]
//! async fn greet(ctx: JobContext, payload: Greet) -> JobResult<String> {
//!     ctx.progress(50, "greeting").await;
//!     Ok(format!("hello, {}", payload.name))
//! }
//!
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     // `serve`, `jobs`, `trigger greet --payload '{"name":"Ada"}'`, `executions`
//!     netscript::run().await
//! }
//! ```
//!
//! See the README for the tour, and `ARCHITECTURE.md` for how the pieces fit.

pub use netscript_macros::{job, scheduled, webhook};
/// The PostgreSQL connection, schema and options (feature `postgres`).
#[cfg(feature = "postgres")]
pub use netscript_runtime::postgres;
/// The Redis connection and options (feature `redis`).
#[cfg(feature = "redis")]
pub use netscript_runtime::redis;
pub use netscript_runtime::runtime::{
    CancelOutcome, EnqueueError, Providers, Receipt, SHUTDOWN_API, SHUTDOWN_APP, SHUTDOWN_WORKERS,
};
pub use netscript_runtime::{
    Backoff, CancellationToken, EnqueueJob, EnqueueOptions, ExecutionId, ExecutionRecord, ExecutionStatus, JobContext,
    JobDescriptor, JobError, JobErrorKind, JobResult, QueueProvider, Registry, RunnerMode, RunningWorkers, Runtime,
    RuntimeBuilder, StartupError, State, WorkerPool, WorkerSelection, WorkersConfig, api, backends, cli, config, cron,
    job as jobs, kv, metrics, process, queue, scheduler, shutdown, store, tasks, telemetry, time, webhook, worker,
};

/// Runs the app: parses the command line (`serve`, `jobs`, `trigger`, `executions`, ...) and
/// runs the command on a runtime with the default configuration, overridden by the
/// environment. Apps with shared state use `Runtime::builder().state(...).run()` instead.
///
/// Returns the process's exit code: 0 on success, 1 on failure.
pub async fn run() -> std::process::ExitCode {
    Runtime::builder().run().await
}

/// What a job file needs: `use netscript::prelude::*;`.
pub mod prelude {
    pub use crate::{job, scheduled, webhook};
    pub use netscript_runtime::scheduler::{Action, ScheduledTick};
    pub use netscript_runtime::webhook::WebhookEvent;
    pub use netscript_runtime::{Backoff, EnqueueJob, JobContext, JobError, JobErrorKind, JobResult, Runtime, State};
    pub use schemars::JsonSchema;
    pub use serde::{Deserialize, Serialize};
}

#[doc(hidden)]
pub use netscript_runtime::__private;
