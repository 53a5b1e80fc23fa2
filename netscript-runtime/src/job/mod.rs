//! What a job is: the handler's context, its result and error, its static description, the
//! link-time registry, shared application state, and the typed handle used to enqueue it.
//!
//! This module knows nothing about queues or runners; the [`worker`](crate::worker) module
//! runs what is described here.

mod backoff;
mod context;
mod descriptor;
mod error;
mod handle;
mod registry;
mod state;

pub use backoff::Backoff;
pub use context::{ContextParts, JobContext, JobLogger, Progress, ProgressSender, ProgressSink};
pub use descriptor::{HandlerFuture, JobDescriptor, JobHandler, Location, PayloadSpec, StateSpec, check_payload};
pub use error::{JobError, JobErrorKind, JobResult};
pub use handle::{EnqueueJob, EnqueueOptions};
pub use registry::{JOBS, Registry, RegistryError};
pub use state::{FromStateMap, State, StateMap};
