//! Polyglot tasks: jobs whose code is an external program (Deno, Python, .NET, PowerShell,
//! a shell script, any executable), run as supervised child processes.
//!
//! A task is defined in code with [`define_task`] or in a manifest
//! (`workers/runtime/tasks/vX.Y.Z.json`, see [`load_manifests`]), and one attempt runs with
//! [`run_task`]. This module builds the command line, the environment and the input, and
//! reads the outcome; queueing, retries and records are the worker's business.
//!
//! # What the child gets
//!
//! - stdin: the payload as one line of JSON, then end of file;
//! - environment: `NETSCRIPT_EXECUTION_ID`, `NETSCRIPT_JOB_ID` (the task id),
//!   `NETSCRIPT_ATTEMPT` (from 1), `NETSCRIPT_MAX_ATTEMPTS`, `NETSCRIPT_CORRELATION_ID`, and
//!   `TRACEPARENT`/`TRACESTATE` when the run is traced; plus the task's own `env` values.
//!   Deno inherits the worker's environment (its `--allow-env` governs access). Every other
//!   runtime gets a cleared environment: only the variables named in `env_allow` are copied
//!   from the worker, not even `PATH`, `HOME` or `LANG` unless listed (the program itself is
//!   found with the worker's `PATH` before the environment is cleared);
//! - working directory: the task's `cwd`, else the worker's.
//!
//! The child answers on stdout with the [line protocol](crate::process#line-protocol)
//! (`@netscript {"result": ...}` and friends); [`run_task`] says how that becomes a
//! [`TaskOutcome`].
//!
//! # Permissions
//!
//! [`Permissions`] become `deno run --allow-*` flags and are enforced by Deno only. Python,
//! .NET, PowerShell, `cmd`, shell scripts and executables run with the full rights of the
//! worker's user: they can read any file it can, open any connection, start any program.
//! What they do not get is the worker's environment (so its secrets) beyond `env_allow`.
//! Run such tasks under a dedicated user or in a container when that matters.

mod definition;
mod job;
mod manifest;
mod permissions;
mod run;
mod runtime;

pub use definition::{
    DEFAULT_PRIORITY, DEFAULT_RETRY_DELAY, DEFAULT_TIMEOUT, PYTHON_ENV, TaskBuilder, TaskDefinition, TaskError,
    define_task, is_kebab_case,
};
pub use job::TaskTable;
pub use manifest::{MANIFEST_DIR, ManifestError, latest_manifest, load_manifests, parse_manifest};
pub use permissions::{Access, PRESETS, Permissions, UnknownPreset};
pub use run::{TaskInput, TaskOutcome, run_task};
pub use runtime::{TaskRuntime, UnknownRuntime};
