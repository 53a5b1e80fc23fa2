//! The attribute macros of NetScript. Use them through the `netscript` crate
//! (`use netscript::prelude::*;`), never directly: generated code names the runtime as
//! `::netscript::__private`, so it only compiles where `netscript` is a dependency.
//!
//! Each macro parses its arguments, validates them (literals included: ids, durations,
//! backoff policies, cron expressions, timezones) and then generates code, in separate steps. Every problem found is
//! reported at the token that causes it, all of them at once.

mod duration;
mod errors;
mod job;
mod scheduled;
mod trigger;
mod webhook;

use proc_macro::TokenStream;

/// Turns an `async fn` into a durable background job.
///
/// ```ignore
/// use netscript::prelude::*;
///
/// #[derive(Deserialize, JsonSchema)]
/// struct ProcessPayment { order_id: String, amount_cents: u64 }
///
/// #[derive(Serialize, JsonSchema)]
/// struct Charged { charge_id: String }
///
/// /// Charges a customer.
/// #[job(id = "process-payment", topic = "payments", timeout = "30s", retries = 3)]
/// async fn process_payment(ctx: JobContext, payload: ProcessPayment) -> JobResult<Charged> {
///     ctx.progress(10, "charging customer").await;
///     Ok(Charged { charge_id: "ch_1".into() })
/// }
///
/// // The function stays callable; the macro adds a typed handle with the same name:
/// let request = process_payment::enqueue(ProcessPayment { order_id: "o-1".into(), amount_cents: 995 })
///     .idempotency_key("o-1");
/// ```
///
/// # Arguments
///
/// | argument | value | default |
/// |---|---|---|
/// | `id` | kebab-case string: lowercase letters and digits in words joined by single `-` (`process-payment`); unique in the binary | required |
/// | `name` | non-empty string, for people | the function's name |
/// | `topic` | the worker group: lowercase letters and digits in words joined by single `-`, `.` or `_` (`payments`, `billing.invoices`) | `"default"` |
/// | `description` | string | the function's `///` doc comment, or `""` |
/// | `tags` | array of non-empty strings: `["billing", "critical"]` | `[]` |
/// | `timeout` | duration of one attempt: `"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"1h 30m"` | none (the runtime's default) |
/// | `retries` | integer: retries after the first attempt | `3` |
/// | `backoff` | `"fixed(<duration>)"`, `"linear(<duration>)"` or `"exponential(<duration>)"`; a bare `"fixed"`, `"linear"` or `"exponential"` starts at 1s | `"exponential(1s)"` |
///
/// # Parameters
///
/// Parameters are recognised by the last segment of their type, in any order, each optional:
///
/// - `JobContext`: the execution's context;
/// - `State<T>` (any pattern, like `State(db): State<Db>`): shared state registered on the
///   runtime builder;
/// - anything else: the payload, at most one, which must be `Deserialize + JsonSchema`.
///
/// The function must be a plain `async fn` (not generic, no `self`) returning
/// `JobResult<T>` with `T: Serialize + JsonSchema`.
///
/// # What it generates
///
/// - The function itself, unchanged: call it directly in unit tests.
/// - A handle with the same name (a struct, in the type namespace, beside the function):
///   `name::ID`, `name::enqueue(payload) -> EnqueueJob<Payload>` (no argument for a job
///   without payload) and `name::descriptor()`.
/// - A `JobDescriptor` registered at link time, which `Registry::linked()` finds.
///
/// Two jobs of one crate with the same id do not compile; across crates, the runtime refuses
/// to start and names both.
#[proc_macro_attribute]
pub fn job(args: TokenStream, item: TokenStream) -> TokenStream {
    job::expand(args.into(), item.into()).into()
}

/// Fires an `async fn` on a cron schedule; it returns the actions to carry out, such as
/// enqueueing a job through its typed handle.
///
/// ```ignore
/// use netscript::prelude::*;
///
/// /// Re-imports the catalogue every morning.
/// #[scheduled(id = "daily-resync", cron = "0 6 * * *", timezone = "UTC", tags = ["resync"])]
/// async fn daily_resync(tick: ScheduledTick) -> Vec<Action> {
///     vec![import_products::enqueue(ImportProducts::full()).into()]
/// }
/// ```
///
/// # Arguments
///
/// | argument | value | default |
/// |---|---|---|
/// | `id` | kebab-case string, unique in the binary | required |
/// | `cron` | a cron expression: 5 fields (`minute hour day-of-month month day-of-week`), 6 with a leading second, or `@daily` and the like (see `netscript::cron`) | required |
/// | `timezone` | an IANA timezone name (`Europe/Berlin`) | `"UTC"` |
/// | `description` | string | the function's `///` doc comment, or `""` |
/// | `tags` | array of non-empty strings | `[]` |
/// | `retries` | further attempts after the handler fails | `3` |
/// | `backoff` | `"fixed(<duration>)"`, `"linear(..)"` or `"exponential(..)"` | `"exponential(1s)"` |
/// | `missed` | ticks missed while no scheduler ran: `"skip"`, or `"fire-once"` on start | `"skip"` |
/// | `run_on_init` | also fire once whenever a scheduler starts | `false` |
/// | `enabled` | fire on its own (a disabled schedule is listed, and can be triggered) | `true` |
///
/// The expression, the timezone and every value are checked at compile time, with the error
/// at the literal.
///
/// # Signature
///
/// `async fn name(tick: ScheduledTick) -> Vec<Action>` (the tick is optional), or returning
/// `JobResult<Vec<Action>>`: an error is retried with the schedule's backoff.
///
/// # What it generates
///
/// The function, unchanged, and a `ScheduleDescriptor` registered at link time in
/// `SCHEDULES`: the workers (`serve`, `worker`) fire it. The enqueues of one tick carry the
/// idempotency key `schedule:<id>:<tick>`, so several processes enqueue each tick once. Two
/// schedules of one crate with the same id do not compile; across crates, the runtime refuses
/// to start and names both.
#[proc_macro_attribute]
pub fn scheduled(args: TokenStream, item: TokenStream) -> TokenStream {
    scheduled::expand(args.into(), item.into()).into()
}

/// Turns a verified HTTP call into actions: the API serves `POST <path>`, checks the
/// signature, decodes the JSON body as the event's type, runs the function, and carries out
/// the actions it returns (202 with the execution ids).
///
/// ```ignore
/// use netscript::prelude::*;
///
/// /// Payment provider events: each paid order is charged once.
/// #[webhook(id = "payment-webhook", path = "/webhooks/payment",
///           verifier = "hmac-sha256", secret_env = "WEBHOOK_SECRET")]
/// async fn payment_webhook(event: WebhookEvent<PaymentEvent>) -> Vec<Action> {
///     let order = event.body.order_id.clone();
///     vec![process_payment::enqueue(event.body.into()).idempotency_key(order).into()]
/// }
/// ```
///
/// # Arguments
///
/// | argument | value | default |
/// |---|---|---|
/// | `id` | kebab-case string, unique in the binary | required |
/// | `path` | the route: `/` and segments of letters, digits, `-_.~`; not `/health` or `/api/...` | required |
/// | `verifier` | `"hmac-sha256"`, or `"none"` (no check; a warning at startup) | required |
/// | `secret_env` | the variable holding the shared secret (`hmac-sha256`); unset at startup is an error | required for `hmac-sha256` |
/// | `header` | the signature's header: hex or base64, `sha256=` prefix optional | `"X-Signature"` |
/// | `timestamp_header` | a header with the Unix seconds the sender signed at; the signed content is then `<timestamp>.<body>` | none |
/// | `tolerance` | how far that timestamp may be from now before the call is refused as a replay | `"5m"` |
/// | `description` | string | the function's `///` doc comment |
/// | `tags` | array of non-empty strings | `[]` |
///
/// # Signature
///
/// `async fn name(event: WebhookEvent<Body>) -> Vec<Action>` (or `JobResult<Vec<Action>>`),
/// where `Body: DeserializeOwned + JsonSchema`. A body that does not decode is a 400 naming
/// where; a bad signature a 401; a fatal error from the function or a job that refuses its
/// payload a 422; a retryable one a 503 (the sender should redeliver).
#[proc_macro_attribute]
pub fn webhook(args: TokenStream, item: TokenStream) -> TokenStream {
    webhook::expand(args.into(), item.into()).into()
}
