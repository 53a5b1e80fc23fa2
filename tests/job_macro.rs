//! What `#[job]` generates, at run time: the registered descriptors, their handlers, the
//! typed handles, and the functions themselves.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Mutex;
use std::time::Duration;

use netscript::jobs::{JobDescriptor, Location, StateMap};
use netscript::prelude::*;
use netscript::{Registry, jobs::RegistryError};
use serde_json::json;

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ProcessPayment {
    order_id: String,
    amount_cents: u64,
}

#[derive(Debug, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct Charged {
    order_id: String,
    charge_id: String,
    attempt: u32,
}

/// Charges a customer.
///
/// Retries on network errors.
#[job(
    id = "process-payment",
    name = "Process payment",
    topic = "payments",
    timeout = "30s",
    retries = 5,
    backoff = "linear(250ms)",
    tags = ["billing", "critical"]
)]
async fn process_payment(ctx: JobContext, payload: ProcessPayment) -> JobResult<Charged> {
    if payload.amount_cents == 0 {
        return Err(JobError::fatal("nothing to charge"));
    }
    ctx.progress(50, "charging").await;
    Ok(Charged {
        order_id: payload.order_id,
        charge_id: format!("ch_{}", payload.amount_cents),
        attempt: ctx.attempt(),
    })
}

static CLEANUPS: Mutex<u32> = Mutex::new(0);

/// Removes expired sessions.
#[job(id = "nightly-cleanup")]
async fn nightly_cleanup() -> JobResult<()> {
    *CLEANUPS.lock().map_err(|e| JobError::retryable(e.to_string()))? += 1;
    Ok(())
}

/// A mail sender, shared by the jobs that send mail.
#[derive(Debug)]
struct Mailer {
    from: String,
    sent: Mutex<Vec<String>>,
}

#[derive(Deserialize, JsonSchema)]
struct Welcome {
    to: String,
}

/// This doc comment is not the description.
#[job(
    id = "send-welcome",
    description = "Sends the welcome mail.",
    topic = "mail.outbound",
    retries = 0,
    backoff = "fixed"
)]
async fn send_welcome(State(mailer): State<Mailer>, payload: Welcome, ctx: JobContext) -> JobResult<String> {
    let line = format!("{} -> {} ({})", mailer.from, payload.to, ctx.job_id());
    mailer.sent.lock().map_err(|e| JobError::retryable(e.to_string()))?.push(line.clone());
    Ok(line)
}

#[derive(Deserialize, JsonSchema)]
struct Numbers {
    values: Vec<u64>,
}

#[job(id = "sum-2", timeout = "1h 30m", backoff = "exponential(2s)")]
async fn sum(numbers: Numbers) -> JobResult<u64> {
    Ok(numbers.values.iter().sum())
}

fn registry() -> Registry {
    Registry::linked().expect("the test binary's jobs have distinct ids")
}

fn job(id: &str) -> &'static JobDescriptor {
    registry().get(id).unwrap_or_else(|| panic!("job `{id}` is registered"))
}

/// Runs a job's handler the way a worker does.
async fn run(id: &str, payload: &[u8], states: &StateMap) -> Result<serde_json::Value, JobError> {
    let future = (job(id).handler)(JobContext::for_tests(id), payload, states)?;
    future.await
}

/// The line of `needle` in this file, 1-based.
fn line_of(needle: &str) -> u32 {
    let index = include_str!("job_macro.rs").lines().position(|l| l.contains(needle)).expect("needle is in this file");
    u32::try_from(index + 1).expect("small file")
}

#[test]
fn every_job_is_registered() {
    let ids: Vec<&str> = registry().iter().map(|j| j.id).collect();
    assert_eq!(ids, ["nightly-cleanup", "process-payment", "send-welcome", "sum-2"]);
}

#[test]
fn descriptors_carry_the_arguments() {
    let job = job("process-payment");
    assert_eq!(job.name, "Process payment");
    assert_eq!(job.topic, "payments");
    assert_eq!(job.timeout, Some(Duration::from_secs(30)));
    assert_eq!(job.retries, 5);
    assert_eq!(job.max_attempts(), 6);
    assert_eq!(job.backoff, Backoff::Linear(Duration::from_millis(250)));
    assert_eq!(job.description, "Charges a customer.\n\nRetries on network errors.");
    assert_eq!(job.tags, ["billing", "critical"]);
    assert_eq!(job.states.len(), 0);
    assert_eq!(job.payload.map(|p| p.type_name), Some("ProcessPayment"));

    let job = self::job("send-welcome");
    assert_eq!(job.description, "Sends the welcome mail.");
    assert_eq!(job.topic, "mail.outbound");
    assert_eq!(job.retries, 0);
    assert_eq!(job.backoff, Backoff::Fixed(Duration::from_secs(1)));
    assert_eq!(job.states.len(), 1);
    assert_eq!((job.states[0].type_id)(), std::any::TypeId::of::<Mailer>());
    assert!((job.states[0].type_name)().ends_with("Mailer"));

    let job = self::job("sum-2");
    assert_eq!(job.timeout, Some(Duration::from_secs(5400)));
    assert_eq!(job.backoff, Backoff::Exponential(Duration::from_secs(2)));
    assert_eq!(job.description, "", "no doc comment, no description");
}

#[test]
fn unset_arguments_take_their_defaults() {
    let job = job("nightly-cleanup");
    assert_eq!(job.name, "nightly_cleanup");
    assert_eq!(job.topic, "default");
    assert_eq!(job.timeout, None);
    assert_eq!(job.retries, 3);
    assert_eq!(job.backoff, Backoff::Exponential(Duration::from_secs(1)));
    assert_eq!(job.description, "Removes expired sessions.");
    assert!(job.tags.is_empty());
    assert!(job.payload.is_none());
    assert!(job.states.is_empty());
}

#[test]
fn location_is_the_function() {
    let location = job("process-payment").location;
    assert_eq!(location.module_path, "job_macro");
    assert!(location.file.ends_with("job_macro.rs"), "{}", location.file);
    assert_eq!(location.line, line_of("async fn process_payment("));
}

#[tokio::test]
async fn handler_decodes_the_payload_and_encodes_the_output() {
    let output = run("process-payment", br#"{"orderId":"o-1","amountCents":995}"#, &StateMap::default()).await;
    assert_eq!(output.expect("job succeeds"), json!({ "orderId": "o-1", "chargeId": "ch_995", "attempt": 1 }));

    let output = run("sum-2", br#"{"values":[1,2,39]}"#, &StateMap::default()).await;
    assert_eq!(output.expect("job succeeds"), json!(42));
}

#[tokio::test]
async fn handler_of_a_job_without_payload_ignores_the_bytes_and_returns_null() {
    let before = *CLEANUPS.lock().expect("not poisoned");
    let output = run("nightly-cleanup", b"null", &StateMap::default()).await;
    assert_eq!(output.expect("job succeeds"), serde_json::Value::Null);
    assert!(*CLEANUPS.lock().expect("not poisoned") > before);
}

#[tokio::test]
async fn handler_passes_state_and_context_in_the_functions_order() {
    let mut states = StateMap::default();
    states.insert(Mailer { from: "hello@example.com".into(), sent: Mutex::new(Vec::new()) });
    let output = run("send-welcome", br#"{"to":"ada@example.com"}"#, &states).await;
    let expected = "hello@example.com -> ada@example.com (send-welcome)";
    assert_eq!(output.expect("job succeeds"), json!(expected));
    let mailer = states.get::<Mailer>().expect("registered above");
    assert_eq!(*mailer.sent.lock().expect("not poisoned"), [expected]);
}

#[test]
fn a_payload_that_does_not_decode_is_a_fatal_error_before_the_job_runs() {
    let handler = job("process-payment").handler;
    for bad in [&br#"{"orderId":"o-1"}"#[..], b"not json", b""] {
        let error = handler(JobContext::for_tests("process-payment"), bad, &StateMap::default())
            .err()
            .expect("the payload is refused");
        assert!(error.is_fatal(), "{error:?}");
        assert!(error.message().contains("payload"), "{error:?}");
    }
}

#[test]
fn missing_state_is_an_error_not_a_panic() {
    let handler = job("send-welcome").handler;
    let error = handler(JobContext::for_tests("send-welcome"), br#"{"to":"a@b.c"}"#, &StateMap::default())
        .err()
        .expect("the state is missing");
    assert!(error.message().contains("Mailer"), "{error:?}");

    let error = registry().check_states(&StateMap::default()).expect_err("Mailer is missing");
    assert!(matches!(error, RegistryError::MissingState { job: "send-welcome", .. }), "{error:?}");
}

#[tokio::test]
async fn errors_of_the_job_come_out_of_the_handler() {
    let error = run("process-payment", br#"{"orderId":"o-1","amountCents":0}"#, &StateMap::default())
        .await
        .expect_err("nothing to charge");
    assert!(error.is_fatal());
    assert_eq!(error.message(), "nothing to charge");
}

#[test]
fn schemas_describe_payload_and_output() {
    let schema = job("process-payment").payload_schema();
    let properties = schema.get("properties").expect("an object schema");
    assert!(properties.get("orderId").is_some(), "{schema:?}");
    assert!(properties.get("amountCents").is_some(), "{schema:?}");

    let output = (job("process-payment").output_schema)();
    let properties = output.get("properties").expect("an object schema");
    assert!(properties.get("chargeId").is_some(), "{output:?}");

    assert_eq!(job("nightly-cleanup").payload_schema().get("type"), Some(&json!("null")));
    assert_eq!((job("sum-2").output_schema)().get("type"), Some(&json!("integer")));

    let job = job("process-payment");
    assert_eq!(job.validate_payload(&json!({ "orderId": "o-1", "amountCents": 1 })), Ok(()));
    assert!(job.validate_payload(&json!({ "orderId": 1 })).is_err());
}

#[tokio::test]
async fn the_function_stays_callable() {
    let payload = ProcessPayment { order_id: "o-2".into(), amount_cents: 100 };
    let charged = process_payment(JobContext::for_tests("process-payment"), payload).await.expect("charged");
    assert_eq!(charged, Charged { order_id: "o-2".into(), charge_id: "ch_100".into(), attempt: 1 });

    assert_eq!(sum(Numbers { values: vec![2, 3] }).await.expect("summed"), 5);
    nightly_cleanup().await.expect("cleaned");

    let mailer = State::new(Mailer { from: "me".into(), sent: Mutex::new(Vec::new()) });
    let line = send_welcome(mailer, Welcome { to: "you".into() }, JobContext::for_tests("send-welcome")).await;
    assert_eq!(line.expect("sent"), "me -> you (send-welcome)");
}

#[test]
fn the_handle_makes_typed_enqueue_requests() {
    let request = process_payment::enqueue(ProcessPayment { order_id: "o-3".into(), amount_cents: 1 })
        .idempotency_key("order-o-3")
        .concurrency_key("customer-7")
        .priority(5)
        .delay(Duration::from_secs(10))
        .correlation_id("req-1");
    assert_eq!(request.job_id(), "process-payment");
    assert_eq!(request.payload().order_id, "o-3");
    let options = request.options();
    assert_eq!(options.idempotency_key.as_deref(), Some("order-o-3"));
    assert_eq!(options.concurrency_key.as_deref(), Some("customer-7"));
    assert_eq!(options.priority, 5);
    assert_eq!(options.delay, Some(Duration::from_secs(10)));
    assert_eq!(options.correlation_id.as_deref(), Some("req-1"));

    let request: EnqueueJob<()> = nightly_cleanup::enqueue();
    assert_eq!(request.job_id(), "nightly-cleanup");
    assert_eq!(request.options().priority, 0);
}

#[test]
fn the_handle_names_the_job() {
    assert_eq!(process_payment::ID, "process-payment");
    assert_eq!(sum::ID, "sum-2");
    assert!(std::ptr::eq(process_payment::descriptor(), job("process-payment")));
    assert!(std::ptr::eq(nightly_cleanup::descriptor(), job("nightly-cleanup")));
}

/// A second job with the id of `process-payment`, as another crate of the binary could
/// declare (within one crate, the duplicate is a compile error).
static IMPOSTOR: JobDescriptor = JobDescriptor {
    id: "process-payment",
    name: "impostor",
    topic: "default",
    description: "",
    tags: &[],
    timeout: None,
    retries: 0,
    backoff: Backoff::Fixed(Duration::ZERO),
    payload: None,
    output_schema: null_schema,
    states: &[],
    handler: |_, _, _| Err(JobError::fatal("never runs")),
    location: Location { module_path: "other_crate::jobs", file: "other_crate/src/jobs.rs", line: 7 },
};

fn null_schema() -> schemars::Schema {
    schemars::json_schema!({ "type": "null" })
}

#[test]
fn duplicate_ids_are_refused_at_startup_naming_both_places() {
    let error = Registry::new([job("process-payment"), &IMPOSTOR]).expect_err("duplicate id");
    let RegistryError::DuplicateId { id, first, second } = &error else { panic!("{error:?}") };
    assert_eq!(*id, "process-payment");
    assert!(first.starts_with("job_macro (") && first.contains("job_macro.rs"), "{first}");
    assert_eq!(second, "other_crate::jobs (other_crate/src/jobs.rs:7)");
    let message = error.to_string();
    assert!(message.contains(first) && message.contains(second), "{message}");
}
