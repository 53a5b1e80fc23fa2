//! Items used by code that `#[job]` and `#[scheduled]` generate. Not a public API: names and signatures here
//! change without notice. Generated code reaches them as `::netscript::__private::...`.

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::job::{
    Backoff, EnqueueJob, FromStateMap, HandlerFuture, JOBS, JobContext, JobDescriptor, JobError, Location, PayloadSpec,
    StateMap, StateSpec,
};
pub use crate::scheduler::{Action, MissedTicks, SCHEDULES, ScheduleDescriptor, ScheduleFuture, ScheduledTick};
pub use crate::webhook::{
    HmacSpec, Verifier, WEBHOOKS, WebhookDescriptor, WebhookError, WebhookFuture, WebhookRequest,
    decode as decode_webhook,
};
pub use linkme;
pub use schemars;
pub use serde;
pub use serde_json;
pub use std::time::Duration;

/// Decodes a job's payload; a payload that does not decode is a fatal error (retrying the
/// same bytes cannot help).
pub fn decode_payload<P: DeserializeOwned>(bytes: &[u8]) -> Result<P, JobError> {
    serde_json::from_slice(bytes).map_err(|e| JobError::fatal(format!("payload does not match the job's type: {e}")))
}

/// The JSON Schema of a payload type.
pub fn payload_schema<P: schemars::JsonSchema>() -> schemars::Schema {
    schemars::SchemaGenerator::new(schemars::generate::SchemaSettings::draft2020_12()).into_root_schema_for::<P>()
}

/// Checks that `value` decodes as `P`.
pub fn validate_payload<P: DeserializeOwned>(value: &serde_json::Value) -> Result<(), String> {
    crate::job::check_payload::<P>(value)
}

/// The return type of a job function: `JobResult<T>` with `T: Serialize + JsonSchema`.
#[diagnostic::on_unimplemented(
    message = "a job must return `JobResult<T>`, where `T: Serialize + JsonSchema`; found `{Self}`",
    label = "not a `JobResult<T>` with a serializable, schema-described `T`",
    note = "derive `Serialize` and `JsonSchema` on the output type, or return `JobResult<()>`"
)]
pub trait JobReturn {
    /// The output as JSON, or the error.
    fn into_output(self) -> Result<serde_json::Value, JobError>;
    /// The output's JSON Schema.
    fn output_schema() -> schemars::Schema;
}

impl<T: Serialize + schemars::JsonSchema> JobReturn for Result<T, JobError> {
    fn into_output(self) -> Result<serde_json::Value, JobError> {
        let value = self?;
        serde_json::to_value(value).map_err(|e| JobError::fatal(format!("job output could not be serialized: {e}")))
    }

    fn output_schema() -> schemars::Schema {
        payload_schema::<T>()
    }
}

/// The JSON Schema of a job's output, from its return type.
pub fn output_schema<R: JobReturn>() -> schemars::Schema {
    R::output_schema()
}

/// A `StateSpec` for a `State<T>` parameter.
pub const fn state_spec<S: FromStateMap>() -> StateSpec {
    StateSpec { type_id: S::type_id, type_name: S::type_name }
}

/// Compile-time check that a payload type can be decoded. Generated code calls it at the
/// payload type's span, so the error names the user's type.
pub fn assert_payload_deserialize<P: DeserializeOwned>() {}

/// Compile-time check that a payload type has a JSON Schema.
pub fn assert_payload_schema<P: schemars::JsonSchema>() {}

/// Compile-time check of a job's return type.
pub fn assert_job_return<R: JobReturn>() {}

/// The return type of a trigger (a `#[scheduled]` or `#[webhook]` function): `Vec<Action>`
/// or `JobResult<Vec<Action>>`.
#[diagnostic::on_unimplemented(
    message = "a `#[scheduled]` or `#[webhook]` function must return `Vec<Action>` or `JobResult<Vec<Action>>`; found `{Self}`",
    label = "not `Vec<Action>` or `JobResult<Vec<Action>>`",
    note = "return the actions to carry out, e.g. `vec![my_job::enqueue(payload).into()]`, or `vec![]` for none"
)]
pub trait ScheduleReturn {
    /// The actions, or the error.
    fn into_actions(self) -> Result<Vec<Action>, JobError>;
}

impl ScheduleReturn for Vec<Action> {
    fn into_actions(self) -> Result<Vec<Action>, JobError> {
        Ok(self)
    }
}

impl ScheduleReturn for Result<Vec<Action>, JobError> {
    fn into_actions(self) -> Result<Vec<Action>, JobError> {
        self
    }
}

/// Compile-time check of a trigger's return type.
pub fn assert_schedule_return<R: ScheduleReturn>() {}
