use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};

use super::ApiError;
use crate::job::{EnqueueOptions, JobDescriptor};
use crate::runtime::{CancelOutcome, Runtime};
use crate::store::{ExecutionFilter, ExecutionId, ExecutionRecord, ExecutionStatus, StoreError};

pub(super) async fn health(State(rt): State<Runtime>) -> impl IntoResponse {
    Json(serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "providers": rt.providers(),
        "jobs": rt.registry().len(),
    }))
}

/// A registered job, as listed by `GET /api/v1/workers/jobs`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobInfo {
    /// Job id.
    pub id: &'static str,
    /// Display name.
    pub name: &'static str,
    /// Topic.
    pub topic: &'static str,
    /// Description.
    pub description: &'static str,
    /// Tags.
    pub tags: &'static [&'static str],
    /// Timeout of one attempt, in milliseconds (`null`: the runtime's default).
    pub timeout_ms: Option<u64>,
    /// Retries after the first attempt.
    pub retries: u32,
    /// Backoff policy.
    pub backoff: serde_json::Value,
    /// JSON Schema of the payload.
    pub payload_schema: schemars::Schema,
    /// JSON Schema of the output.
    pub output_schema: schemars::Schema,
}

impl JobInfo {
    /// Describes `job`.
    pub fn of(job: &'static JobDescriptor) -> Self {
        Self {
            id: job.id,
            name: job.name,
            topic: job.topic,
            description: job.description,
            tags: job.tags,
            timeout_ms: job.timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            retries: job.retries,
            backoff: serde_json::json!({
                "kind": job.backoff.kind(),
                "initialMs": u64::try_from(job.backoff.initial().as_millis()).unwrap_or(u64::MAX),
            }),
            payload_schema: job.payload_schema(),
            output_schema: (job.output_schema)(),
        }
    }
}

/// `?source=store`: the catalogue every binary seeded in the store, not this binary's jobs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JobsQuery {
    source: Option<String>,
}

pub(super) async fn list_jobs(
    State(rt): State<Runtime>,
    query: Result<Query<JobsQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let query = query.map_err(query_error)?;
    match query.0.source.as_deref() {
        None | Some("binary") => Ok(Json(
            serde_json::to_value(rt.registry().iter().map(JobInfo::of).collect::<Vec<_>>()).unwrap_or_default(),
        )),
        Some("store") => {
            let jobs = crate::catalogue::jobs(&rt).await.map_err(StoreError::from)?;
            Ok(Json(serde_json::Value::Array(jobs)))
        }
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("unknown source `{other}`: use `binary` (this process's jobs) or `store` (the seeded catalogue)"),
        )),
    }
}

/// Writes this binary's jobs and tasks to the store's catalogue.
pub(super) async fn seed(State(rt): State<Runtime>) -> Result<Json<crate::catalogue::Seeded>, ApiError> {
    Ok(Json(crate::catalogue::seed(&rt).await.map_err(StoreError::from)?))
}

/// The trigger body's envelope form: `{ "payload": ..., "idempotencyKey": ..., ... }`.
///
/// A body is read as an envelope when it is an object with a `payload` field and no field
/// outside the envelope's; any other body is the payload itself.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TriggerEnvelope {
    /// The job's payload.
    pub payload: serde_json::Value,
    /// The enqueue options.
    #[serde(flatten)]
    pub options: EnqueueOptions,
}

const ENVELOPE_FIELDS: &[&str] =
    &["payload", "idempotencyKey", "concurrencyKey", "priority", "delay", "correlationId", "traceparent", "tracestate"];

/// Splits a trigger body into payload and options.
pub(crate) fn parse_trigger_body(body: &[u8]) -> Result<(serde_json::Value, EnqueueOptions), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((serde_json::Value::Null, EnqueueOptions::default()));
    }
    let mut value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("request body is not valid JSON: {e}"))
    })?;
    integral_floats_as_integers(&mut value);
    let is_envelope = value
        .as_object()
        .is_some_and(|o| o.contains_key("payload") && o.keys().all(|k| ENVELOPE_FIELDS.contains(&k.as_str())));
    if !is_envelope {
        return Ok((value, EnqueueOptions::default()));
    }
    let envelope: TriggerEnvelope = serde_json::from_value(value).map_err(|e| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_envelope", format!("invalid trigger envelope: {e}"))
    })?;
    Ok((envelope.payload, envelope.options))
}

pub(super) async fn trigger(
    State(rt): State<Runtime>,
    id: Result<Path<String>, PathRejection>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Path(id) = id.map_err(path_error)?;
    let body = read_body(&rt, body)?;
    if rt.registry().get(&id).is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_job", format!("no job `{id}` is registered")));
    }
    let (payload, mut options) = parse_trigger_body(&body)?;
    // The W3C trace context headers, unless the envelope carries a traceparent of its own.
    if options.traceparent.is_none() {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        options.traceparent = header("traceparent");
        options.tracestate = options.tracestate.or_else(|| header("tracestate"));
    }
    let receipt = rt.enqueue_json(&id, payload, options).await?;
    let body = serde_json::json!({
        "executionId": receipt.execution_id,
        "duplicate": receipt.duplicate,
        "status": ExecutionStatus::Queued,
        "links": { "execution": format!("/api/v1/workers/executions/{}", receipt.execution_id) },
    });
    Ok((StatusCode::ACCEPTED, Json(body)))
}

/// Writes numbers such as `228.0` as `228`. JSON Schema counts them as integers (so the
/// document's `"type": "integer"` admits them), but serde refuses them for integer fields;
/// float fields take either form, so nothing that was accepted before changes meaning.
fn integral_floats_as_integers(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(n) if n.is_f64() => {
            let Some(f) = n.as_f64() else { return };
            // Beyond 2^53 an f64 is not an exact integer anyway; leave such numbers alone.
            const EXACT: f64 = 9_007_199_254_740_992.0;
            if f.fract() == 0.0 && f.abs() <= EXACT {
                // Integral and within ±2^53: the conversion is exact.
                let i = f as i64;
                *value = serde_json::Value::from(i);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

/// A query string that does not parse (a value of the wrong type, a repeated field): 400
/// `invalid_query` in the API's JSON error shape, not axum's plain-text rejection.
pub(super) fn query_error(e: QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text())
}

/// A path segment that does not decode (percent-encoded bytes that are not UTF-8): 400
/// `invalid_path` in the API's JSON error shape.
pub(super) fn path_error(e: PathRejection) -> ApiError {
    ApiError::new(e.status(), "invalid_path", e.body_text())
}

/// The body, or a JSON error: 413 past the limit, the rejection's status otherwise.
pub(super) fn read_body(rt: &Runtime, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than the limit of {} bytes", rt.config().api_body_limit),
        ),
        status => ApiError::new(status, "unreadable_body", e.body_text()),
    })
}

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    limit: Option<usize>,
    status: Option<String>,
    job: Option<String>,
    before: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ExecutionPage {
    executions: Vec<ExecutionRecord>,
    next_cursor: Option<ExecutionId>,
}

/// Largest page of executions.
const MAX_LIMIT: usize = 1000;

pub(super) async fn list_executions(
    State(rt): State<Runtime>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ExecutionPage>, ApiError> {
    let Query(q) = q.map_err(query_error)?;
    let limit = limit(&LimitQuery { limit: q.limit })?;
    let status = q
        .status
        .as_deref()
        .map(str::parse::<ExecutionStatus>)
        .transpose()
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", m))?;
    let before = q.before.as_deref().map(|b| b.parse::<ExecutionId>()).transpose().map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("before is not an execution id: {e}"))
    })?;
    let filter = ExecutionFilter { limit: Some(limit), status, job: q.job, before };
    let executions = rt.store().list(&filter).await?;
    let next_cursor = (executions.len() == limit).then(|| executions.last().map(|r| r.id)).flatten();
    Ok(Json(ExecutionPage { executions, next_cursor }))
}

pub(super) async fn get_execution(
    State(rt): State<Runtime>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ExecutionRecord>, ApiError> {
    let Path(id) = id.map_err(path_error)?;
    let id: ExecutionId = id
        .parse()
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "unknown_execution", format!("no execution `{id}`")))?;
    match rt.store().get(id).await? {
        Some(record) => Ok(Json(record)),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_execution", format!("no execution `{id}`"))),
    }
}

/// A dead letter, as listed by `GET /api/v1/workers/dead-letters`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterInfo {
    /// The execution (message) id.
    pub id: ExecutionId,
    /// The job (message kind).
    pub job_id: String,
    /// The topic.
    pub topic: String,
    /// Attempts made.
    pub attempt: u32,
    /// The error that sent it here.
    pub error: String,
    /// When.
    pub failed_at: crate::time::Timestamp,
    /// The payload, as JSON when it is JSON.
    pub payload: serde_json::Value,
}

impl From<crate::queue::DeadLetter> for DeadLetterInfo {
    fn from(d: crate::queue::DeadLetter) -> Self {
        let m = d.message;
        let payload = serde_json::from_slice(&m.payload)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&m.payload).into_owned()));
        Self {
            id: m.id,
            job_id: m.kind,
            topic: m.topic,
            attempt: m.attempt,
            error: d.error,
            failed_at: d.failed_at,
            payload,
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct LimitQuery {
    limit: Option<usize>,
}

fn limit(q: &LimitQuery) -> Result<usize, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must be between 1 and {MAX_LIMIT}"),
        ));
    }
    Ok(limit)
}

fn queue_error(e: crate::queue::QueueError) -> ApiError {
    tracing::error!(error = %e, "queue failed");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "backend_unavailable", e.to_string())
}

pub(super) async fn list_dead_letters(
    State(rt): State<Runtime>,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> Result<Json<Vec<DeadLetterInfo>>, ApiError> {
    let Query(q) = q.map_err(query_error)?;
    let dead = rt.queue().dead_letters(limit(&q)?).await.map_err(queue_error)?;
    Ok(Json(dead.into_iter().map(DeadLetterInfo::from).collect()))
}

pub(super) async fn redrive(
    State(rt): State<Runtime>,
    id: Result<Path<String>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Path(id) = id.map_err(path_error)?;
    let missing = || ApiError::new(StatusCode::NOT_FOUND, "unknown_dead_letter", format!("no dead letter `{id}`"));
    let parsed: ExecutionId = id.parse().map_err(|_| missing())?;
    if !rt.redrive(parsed).await? {
        return Err(missing());
    }
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "executionId": parsed, "status": ExecutionStatus::Queued }))))
}

pub(super) async fn redrive_all(State(rt): State<Runtime>) -> Result<impl IntoResponse, ApiError> {
    let n = rt.redrive_all(MAX_LIMIT).await?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "redriven": n }))))
}

pub(super) async fn queue_stats(State(rt): State<Runtime>) -> Result<Json<crate::queue::QueueStats>, ApiError> {
    Ok(Json(rt.queue().stats().await.map_err(queue_error)?))
}

pub(super) async fn list_topics(State(rt): State<Runtime>) -> Result<Json<serde_json::Value>, ApiError> {
    let paused = rt.paused_topics();
    let counts = rt.queue().topic_stats().await.map_err(queue_error)?;
    let throughput = rt.metrics().throughput();
    let window = crate::metrics::THROUGHPUT_WINDOW_SECS;
    let mut topics: Vec<String> = rt.registry().topics().into_iter().map(str::to_owned).collect();
    topics.extend(paused.iter().cloned());
    topics.extend(counts.keys().cloned());
    topics.extend(throughput.keys().cloned());
    topics.sort();
    topics.dedup();
    Ok(Json(serde_json::Value::Array(
        topics
            .into_iter()
            .map(|t| {
                let c = counts.get(&t).copied().unwrap_or_default();
                serde_json::json!({
                    "topic": t, "paused": paused.contains(&t),
                    "ready": c.ready, "delayed": c.delayed, "leased": c.leased, "dead": c.dead,
                    "throughput": {
                        "windowSeconds": window,
                        "finished": throughput.get(&t).copied().unwrap_or(0),
                        "perSecond": throughput.get(&t).map_or(0.0, |n| *n as f64 / window as f64),
                    },
                })
            })
            .collect(),
    )))
}

pub(super) async fn pause_topic(
    State(rt): State<Runtime>,
    topic: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(topic) = topic.map_err(path_error)?;
    rt.pause_topic(&topic).await?;
    Ok(Json(serde_json::json!({ "topic": topic, "paused": true })))
}

pub(super) async fn resume_topic(
    State(rt): State<Runtime>,
    topic: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(topic) = topic.map_err(path_error)?;
    rt.resume_topic(&topic).await?;
    Ok(Json(serde_json::json!({ "topic": topic, "paused": false })))
}

/// `GET /metrics`: the Prometheus text format (see [`crate::metrics`]).
pub(super) async fn metrics(State(rt): State<Runtime>) -> Result<impl IntoResponse, ApiError> {
    let depth = rt.queue().topic_stats().await.map_err(queue_error)?;
    let text = rt.metrics().render(&depth);
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text))
}

pub(super) async fn openapi(State(rt): State<Runtime>) -> Json<serde_json::Value> {
    Json(super::openapi::document(&rt))
}

pub(super) async fn cancel_execution(
    State(rt): State<Runtime>,
    id: Result<Path<String>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Path(id) = id.map_err(path_error)?;
    let missing = || ApiError::new(StatusCode::NOT_FOUND, "unknown_execution", format!("no execution `{id}`"));
    let parsed: ExecutionId = id.parse().map_err(|_| missing())?;
    let status = match rt.cancel(parsed).await? {
        CancelOutcome::Cancelled => "cancelled",
        CancelOutcome::Cancelling => "cancelling",
        CancelOutcome::Finished(status) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "already_finished",
                format!("execution `{parsed}` already ended: {status}"),
            ));
        }
        CancelOutcome::NotFound => return Err(missing()),
    };
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "executionId": parsed, "status": status }))))
}

pub(super) async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no route for {}", uri.path()))
}

pub(super) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_payloads_unless_they_are_envelopes() {
        let (p, o) = parse_trigger_body(br#"{"orderId":"o1"}"#).unwrap();
        assert_eq!(p, serde_json::json!({"orderId":"o1"}));
        assert_eq!(o, EnqueueOptions::default());

        let (p, o) =
            parse_trigger_body(br#"{"payload":{"a":1},"idempotencyKey":"k","priority":5,"delay":"2s"}"#).unwrap();
        assert_eq!(p, serde_json::json!({"a":1}));
        assert_eq!(o.idempotency_key.as_deref(), Some("k"));
        assert_eq!(o.priority, 5);
        assert_eq!(o.delay, Some(std::time::Duration::from_secs(2)));

        // A payload that merely has a `payload` field among others stays a payload.
        let (p, _) = parse_trigger_body(br#"{"payload":1,"other":2}"#).unwrap();
        assert_eq!(p, serde_json::json!({"payload":1,"other":2}));

        assert_eq!(parse_trigger_body(b"  ").unwrap().0, serde_json::Value::Null);
        assert_eq!(parse_trigger_body(b"{nope").unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(
            parse_trigger_body(br#"{"payload":1,"priority":"high"}"#).unwrap_err().status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }

    /// A payload travels as JSON text (body, then queue message, then the worker's parse): a
    /// float must read back exactly as it was read, and as Rust reads its text. Both inputs
    /// came out one step off before serde_json's `float_roundtrip` (found by
    /// fuzz/trigger_body).
    #[test]
    fn floats_read_back_exactly_as_written() {
        for (text, exact) in [
            ("4221474836484227409934242", "4221474836484227409934242"),
            ("4242290071424992.00071992547542", "4242290071424992.00071992547542"),
            ("0.1", "0.1"),
        ] {
            let (payload, _) = parse_trigger_body(format!("{{\"x\":{text}}}").as_bytes()).unwrap();
            let expected: f64 = exact.parse().unwrap();
            let first = payload["x"].as_f64().unwrap();
            assert_eq!(first.to_bits(), expected.to_bits(), "{text} read as {first}");
            let again = serde_json::to_vec(&payload).unwrap();
            let (reread, _) = parse_trigger_body(&again).unwrap();
            assert_eq!(reread, payload, "{text}: {} read back as {reread}", String::from_utf8_lossy(&again));
        }
    }
}
