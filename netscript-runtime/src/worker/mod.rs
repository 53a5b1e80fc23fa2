//! Running jobs: the dispatcher claims messages and hands each to a runner; the recorder
//! writes what happened to the execution store and settles the messages with the queue.
//!
//! ```text
//! queue ──claim──► dispatcher ──► runner (in-process | thread-pool | subprocess) ──outcome──► recorder ──► store, then settle
//!   ▲                  │ heartbeat: extend leases of running jobs                      │
//!   └──────────────────┴──────────────── ack / retry / dead-letter / release ◄─────────┘
//! ```
//!
//! The recorder writes a record before it settles its message, so a crash between the two
//! re-runs the job (at least once) instead of losing its result. Records of one batch are
//! coalesced: a job that starts and ends within one batch is written once.
//!
//! Not here: the retry *policy* values (they belong to each job's descriptor) and the queue
//! backends (see [`crate::queue`]).

mod dispatcher;
mod policy;
mod recorder;
pub mod runner;

pub use dispatcher::{
    CANCEL_PREFIX, CORRELATION_HEADER, Dispatcher, DispatcherOptions, PAUSED_PREFIX, PausedTopics, TRACEPARENT_HEADER,
    TRACESTATE_HEADER, WorkerReport,
};
pub use policy::{Decision, decide};
pub use runner::{
    AttemptOutcome, CHILD_ENV, ChildRequest, InProcessRunner, Runner, SubprocessRunner, ThreadPoolRunner, serve_child,
};
