//! `GET /api/v1/openapi.json`: the API as an OpenAPI 3.1 document, in which each job's
//! trigger route carries that job's payload schema.
//!
//! Every job gets its own concrete path (`/api/v1/workers/jobs/process-payment/trigger`)
//! whose request body is the job's payload, or the envelope around it; the templated
//! `/api/v1/workers/jobs/{id}/trigger` stays for clients that do not know the jobs. Schemas
//! come from `schemars` (JSON Schema 2020-12, which OpenAPI 3.1 uses); a payload's own
//! definitions are moved under `components/schemas`, prefixed with the job id.

use serde_json::{Map, Value, json};

use crate::job::JobDescriptor;
use crate::runtime::Runtime;
use crate::store::ExecutionRecord;

/// The document for this runtime's jobs and settings.
pub fn document(rt: &Runtime) -> Value {
    let mut schemas = Map::new();
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    let mut generator = settings.into_generator();
    // Adds ExecutionRecord and the types it uses to the generator's definitions.
    generator.subschema_for::<ExecutionRecord>();
    schemas.extend(generator.take_definitions(true));
    schemas.insert("Error".into(), error_schema());
    schemas.insert("TriggerAccepted".into(), trigger_accepted_schema());
    schemas.insert("EnqueueOptions".into(), enqueue_options_schema());

    let mut paths = Map::new();
    paths.insert("/health".into(), json!({ "get": {
        "operationId": "health", "summary": "Liveness, with the active providers", "security": [],
        "responses": { "200": { "description": "The service is up", "content": { "application/json": {
            "schema": { "type": "object", "properties": {
                "status": { "const": "ok" }, "version": { "type": "string" }, "jobs": { "type": "integer" },
                "providers": { "type": "object", "properties": {
                    "queue": { "type": "string" }, "kv": { "type": "string" }, "reason": { "type": "string" } } } } } } } } }
    } }));
    paths.insert("/metrics".into(), json!({ "get": {
        "operationId": "metrics", "summary": "Prometheus text format: attempts per topic, durations, pickup latency, queue depth",
        "responses": { "200": { "description": "The metrics", "content": { "text/plain": { "schema": { "type": "string" } } } },
                       "401": error_response("Missing or wrong token"), "503": error_response("The queue is unavailable") }
    } }));
    paths.insert("/api/v1/workers/jobs".into(), json!({ "get": {
        "operationId": "listJobs", "summary": "Registered jobs with their payload schemas",
        "parameters": [ { "name": "source", "in": "query", "description": "`binary` (this process's jobs, the default) or `store` (the catalogue every binary seeded)",
                          "schema": { "enum": ["binary", "store"] } } ],
        "responses": { "200": { "description": "The jobs", "content": { "application/json": {
            "schema": { "type": "array", "items": job_info_schema() } } } },
            "400": error_response("Unknown source"), "401": error_response("Missing or wrong token") }
    } }));
    paths.insert(
        "/api/v1/workers/seed".into(),
        json!({ "post": {
        "operationId": "seed", "summary": "Write this binary's jobs and tasks to the store's catalogue",
        "responses": { "200": { "description": "What was written", "content": { "application/json": { "schema": {
            "type": "object", "required": ["jobs", "tasks"], "properties": {
                "jobs": { "type": "integer", "minimum": 0 }, "tasks": { "type": "integer", "minimum": 0 } } } } } },
            "401": error_response("Missing or wrong token"), "503": error_response("The store is unavailable") }
    } }),
    );
    let job_ids: Vec<&str> = rt.registry().iter().map(|j| j.id).collect();
    paths.insert("/api/v1/workers/jobs/{id}/trigger".into(), json!({ "post": {
        "operationId": "triggerJob", "summary": "Enqueue a job by id (any payload; see the per-job paths for typed bodies)",
        "description": "A registered job's id matches its own path above (concrete paths match first), which types the body; what reaches this operation names no job and is answered 404.",
        "parameters": [ { "name": "id", "in": "path", "required": true, "schema": { "type": "string", "not": { "enum": job_ids } } } ],
        "requestBody": { "required": false, "content": { "application/json": { "schema": {} } } },
        "responses": trigger_responses()
    } }));
    for job in rt.registry().iter() {
        let payload = payload_schema(job, &mut schemas);
        // The server reads an object as the envelope only when it has `payload` and no field
        // outside the envelope's, hence `additionalProperties: false` on that side.
        let body = json!({ "oneOf": [
            payload.clone(),
            { "allOf": [ { "$ref": "#/components/schemas/EnqueueOptions" }, envelope_schema(payload) ] }
        ] });
        paths.insert(
            format!("/api/v1/workers/jobs/{}/trigger", job.id),
            json!({ "post": {
            "operationId": format!("trigger_{}", job.id.replace('-', "_")),
            "summary": format!("Enqueue `{}`", job.id),
            "description": job.description,
            "tags": [job.topic],
            "requestBody": { "required": job.payload.is_some(), "content": { "application/json": { "schema": body } } },
            "responses": trigger_responses()
        } }),
        );
    }
    for webhook in rt.webhooks() {
        let w = webhook.descriptor;
        let body = inline_schema((w.body_schema)(), w.id, &mut schemas);
        let accepted = json!({ "description": "Verified; the actions ran", "content": { "application/json": { "schema": {
            "type": "object", "required": ["webhook", "executionIds", "duplicates"], "properties": {
                "webhook": { "type": "string" },
                "executionIds": { "type": "array", "items": { "type": "string", "format": "uuid" } },
                "duplicates": { "type": "integer", "minimum": 0 } } } } } });
        paths.insert(
            w.path.into(),
            json!({ "post": {
            "operationId": format!("webhook_{}", w.id.replace('-', "_")),
            "summary": format!("Webhook `{}`", w.id),
            "description": w.description,
            "tags": ["webhooks"],
            "security": [],
            "requestBody": { "required": true, "content": { "application/json": { "schema": body } } },
            "responses": {
                "202": accepted,
                "400": error_response("The body is not JSON of the webhook's type"),
                "401": error_response("Missing, wrong or expired signature"),
                "413": error_response("Body too large"),
                "422": error_response("The webhook or a job refused the call"),
                "503": error_response("A retryable failure: deliver again later")
            }
        } }),
        );
    }
    paths.insert("/api/v1/workers/executions".into(), json!({ "get": {
        "operationId": "listExecutions", "summary": "Executions, newest first",
        "parameters": [
            { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000, "default": 50 } },
            { "name": "status", "in": "query", "schema": { "enum": ["queued", "running", "succeeded", "retrying", "failed", "dead", "cancelled"] } },
            { "name": "job", "in": "query", "schema": { "type": "string" } },
            { "name": "before", "in": "query", "description": "Cursor: the nextCursor of the previous page", "schema": { "type": "string", "format": "uuid" } }
        ],
        "responses": {
            "200": { "description": "A page of executions", "content": { "application/json": { "schema": {
                "type": "object", "required": ["executions"], "properties": {
                    "executions": { "type": "array", "items": { "$ref": "#/components/schemas/ExecutionRecord" } },
                    "nextCursor": { "type": ["string", "null"], "format": "uuid" } } } } } },
            "400": error_response("A query parameter is invalid"),
            "401": error_response("Missing or wrong token")
        }
    } }));
    paths.insert("/api/v1/workers/executions/{id}".into(), json!({ "get": {
        "operationId": "getExecution", "summary": "One execution",
        "parameters": [ { "name": "id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } } ],
        "responses": {
            "200": { "description": "The execution", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ExecutionRecord" } } } },
            "401": error_response("Missing or wrong token"),
            "404": error_response("No such execution")
        }
    } }));
    paths.insert(
        "/api/v1/workers/executions/{id}/cancel".into(),
        json!({ "post": {
            "operationId": "cancelExecution", "summary": "Cancel a waiting or running execution",
            "parameters": [ { "name": "id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } } ],
            "responses": {
                "202": { "description": "Cancelled (it was waiting) or cancelling (a worker is stopping it)", "content": { "application/json": { "schema": { "type": "object", "properties": {
                    "executionId": { "type": "string", "format": "uuid" }, "status": { "enum": ["cancelled", "cancelling"] } } } } } },
                "401": error_response("Missing or wrong token"),
                "404": error_response("No such execution"),
                "409": error_response("The execution already ended")
            }
        } }),
    );
    let topic_state = json!({ "type": "object", "required": ["topic", "paused"], "properties": {
        "topic": { "type": "string" }, "paused": { "type": "boolean" },
        "ready": { "type": "integer" }, "delayed": { "type": "integer" },
        "leased": { "type": "integer" }, "dead": { "type": "integer" },
        "throughput": { "type": "object", "description": "Executions this process's workers finished (succeeded, dead or cancelled) in the last windowSeconds",
            "required": ["windowSeconds", "finished", "perSecond"], "properties": {
            "windowSeconds": { "type": "integer" }, "finished": { "type": "integer" }, "perSecond": { "type": "number" } } } } });
    paths.insert(
        "/api/v1/workers/topics".into(),
        json!({ "get": {
            "operationId": "listTopics", "summary": "Topics: paused or not, and their message counts",
            "responses": {
                "200": { "description": "Topics", "content": { "application/json": { "schema": { "type": "array", "items": topic_state } } } },
                "401": error_response("Missing or wrong token")
            }
        } }),
    );
    for (action, summary) in [
        ("pause", "Stop claiming a topic's messages (running jobs finish)"),
        ("resume", "Claim a topic's messages again"),
    ] {
        paths.insert(
            format!("/api/v1/workers/topics/{{topic}}/{action}"),
            json!({ "post": {
                "operationId": format!("{action}Topic"), "summary": summary,
                "parameters": [ { "name": "topic", "in": "path", "required": true, "schema": { "type": "string" } } ],
                "responses": {
                    "200": { "description": "The topic's state", "content": { "application/json": { "schema": topic_state } } },
                    "401": error_response("Missing or wrong token")
                }
            } }),
        );
    }
    paths.insert(
        "/api/v1/workers/dead-letters".into(),
        json!({ "get": {
            "operationId": "listDeadLetters", "summary": "Dead letters, newest first, with their last error",
            "parameters": [ { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000, "default": 50 } } ],
            "responses": {
                "200": { "description": "The dead letters", "content": { "application/json": { "schema": { "type": "array", "items": {
                    "type": "object", "required": ["id", "jobId", "topic", "attempt", "error", "failedAt", "payload"], "properties": {
                        "id": { "type": "string", "format": "uuid" }, "jobId": { "type": "string" }, "topic": { "type": "string" },
                        "attempt": { "type": "integer" }, "error": { "type": "string" },
                        "failedAt": { "type": "string", "format": "date-time" }, "payload": {} } } } } } },
                "400": error_response("A query parameter is invalid"),
                "401": error_response("Missing or wrong token")
            }
        } }),
    );
    paths.insert(
        "/api/v1/workers/dead-letters/{id}/redrive".into(),
        json!({ "post": {
            "operationId": "redrive", "summary": "Put one dead letter back in the queue, attempts reset",
            "parameters": [ { "name": "id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } } ],
            "responses": {
                "202": { "description": "Back in the queue", "content": { "application/json": { "schema": { "type": "object", "properties": {
                    "executionId": { "type": "string", "format": "uuid" }, "status": { "const": "queued" } } } } } },
                "401": error_response("Missing or wrong token"),
                "404": error_response("No such dead letter")
            }
        } }),
    );
    paths.insert(
        "/api/v1/workers/dead-letters/redrive".into(),
        json!({ "post": {
            "operationId": "redriveAll", "summary": "Put every dead letter back in the queue",
            "responses": {
                "202": { "description": "How many went back", "content": { "application/json": { "schema": { "type": "object", "properties": {
                    "redriven": { "type": "integer" } } } } } },
                "401": error_response("Missing or wrong token")
            }
        } }),
    );
    paths.insert(
        "/api/v1/workers/queue".into(),
        json!({ "get": {
            "operationId": "queueStats", "summary": "Queue counts",
            "responses": {
                "200": { "description": "Counts", "content": { "application/json": { "schema": { "type": "object", "properties": {
                    "ready": { "type": "integer" }, "delayed": { "type": "integer" }, "leased": { "type": "integer" },
                    "dead": { "type": "integer" }, "staleSettlements": { "type": "integer" } } } } } },
                "401": error_response("Missing or wrong token")
            }
        } }),
    );
    paths.insert(
        "/api/v1/workers/schedules".into(),
        json!({ "get": {
            "operationId": "listSchedules", "summary": "Registered schedules with their next five fire times",
            "responses": {
                "200": { "description": "The schedules", "content": { "application/json": { "schema": { "type": "array", "items": {
                    "type": "object", "required": ["id", "expression", "timezone", "nextFireTimes"], "properties": {
                        "id": { "type": "string" }, "expression": { "type": "string" }, "timezone": { "type": "string" },
                        "enabled": { "type": "boolean" },
                        "nextFireTimes": { "type": "array", "items": { "type": "string", "format": "date-time" } },
                        "missed": { "type": "string" }, "description": { "type": ["string", "null"] },
                        "tags": { "type": "array", "items": { "type": "string" } },
                        "metadata": { "type": "object", "additionalProperties": { "type": "string" } } } } } } } },
                "401": error_response("Missing or wrong token")
            }
        } }),
    );
    paths.insert(
        "/api/v1/workers/tasks".into(),
        json!({ "get": {
            "operationId": "listTasks", "summary": "Polyglot tasks (each triggered like a job, by its id)",
            "responses": {
                "200": { "description": "The tasks", "content": { "application/json": { "schema": { "type": "array", "items": {
                    "type": "object", "required": ["id", "runtime", "entrypoint", "timeoutMs", "retry", "topic"], "properties": {
                        "id": { "type": "string" },
                        "runtime": { "type": "string", "enum": ["deno", "python", "dotnet", "cmd", "powershell", "shell", "executable"] },
                        "entrypoint": { "type": "string" }, "args": { "type": "array", "items": { "type": "string" } },
                        "timeoutMs": { "type": "integer" }, "retry": { "type": "integer" }, "retryDelayMs": { "type": "integer" },
                        "maxConcurrency": { "type": "integer" }, "priority": { "type": "integer", "minimum": 0, "maximum": 100 },
                        "topic": { "type": "string" },
                        "permissions": { "type": "object", "properties": {
                            "enforced": { "type": "boolean" }, "flags": { "type": "array", "items": { "type": "string" } } } },
                        "envAllow": { "type": "array", "items": { "type": "string" } },
                        "env": { "type": "array", "items": { "type": "string" } },
                        "cwd": { "type": "string" }, "description": { "type": "string" } } } } } } },
                "401": error_response("Missing or wrong token")
            }
        } }),
    );
    paths.insert("/api/v1/workers/subscribe".into(), json!({ "get": {
        "operationId": "subscribe", "summary": "Execution changes as server-sent events",
        "parameters": [
            { "name": "job", "in": "query", "schema": { "type": "string" } },
            { "name": "execution", "in": "query", "schema": { "type": "string", "format": "uuid" } }
        ],
        "responses": {
            "200": { "description": "An event stream; each event's data is an ExecutionRecord", "content": { "text/event-stream": { "schema": { "type": "string" } } } },
            "400": error_response("A query parameter is invalid"),
            "401": error_response("Missing or wrong token")
        }
    } }));
    paths.insert("/api/v1/openapi.json".into(), json!({ "get": {
        "operationId": "openapi", "summary": "This document",
        "responses": { "200": { "description": "OpenAPI 3.1", "content": { "application/json": { "schema": { "type": "object" } } } },
                       "401": error_response("Missing or wrong token") }
    } }));

    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "NetScript workers API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Trigger jobs, read executions and follow them live."
        },
        "paths": paths,
        "components": { "schemas": schemas }
    });
    if rt.config().api_token.is_some() {
        doc["components"]["securitySchemes"] = json!({ "bearer": { "type": "http", "scheme": "bearer" } });
        doc["security"] = json!([ { "bearer": [] } ]);
    }
    doc
}

/// The job's payload schema, its definitions moved into `schemas` under `<job id>.<name>`.
fn payload_schema(job: &JobDescriptor, schemas: &mut Map<String, Value>) -> Value {
    inline_schema(job.payload_schema(), job.id, schemas)
}

/// A schema for a request body: its definitions moved under `components/schemas`, prefixed
/// with `owner` (a job's or a webhook's id).
fn inline_schema(schema: schemars::Schema, owner: &str, schemas: &mut Map<String, Value>) -> Value {
    let mut schema = without_schema_keyword(schema.to_value());
    let prefix = format!("{owner}.");
    if let Some(Value::Object(defs)) = schema.as_object_mut().and_then(|o| o.remove("$defs")) {
        for (name, mut def) in defs {
            rewrite_refs(&mut def, &prefix);
            schemas.insert(format!("{prefix}{name}"), def);
        }
    }
    rewrite_refs(&mut schema, &prefix);
    schema
}

/// Points `#/$defs/X` references at `#/components/schemas/<prefix>X`.
fn rewrite_refs(value: &mut Value, prefix: &str) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("$ref")
                && let Some(name) = r.strip_prefix("#/$defs/")
            {
                *r = format!("#/components/schemas/{prefix}{name}");
            }
            map.values_mut().for_each(|v| rewrite_refs(v, prefix));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_refs(v, prefix)),
        _ => {}
    }
}

fn without_schema_keyword(mut schema: Value) -> Value {
    if let Some(map) = schema.as_object_mut() {
        map.remove("$schema");
    }
    schema
}

fn error_response(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn trigger_responses() -> Value {
    json!({
        "202": { "description": "Enqueued", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/TriggerAccepted" } } },
                 "links": {
                     "GetExecution": { "operationId": "getExecution", "parameters": { "id": "$response.body#/executionId" } },
                     "CancelExecution": { "operationId": "cancelExecution", "parameters": { "id": "$response.body#/executionId" } } } },
        "400": error_response("The body is not JSON"),
        "401": error_response("Missing or wrong token"),
        "404": error_response("No such job"),
        "413": error_response("The body is over the size limit"),
        "422": error_response("The payload does not fit the job's payload type")
    })
}

fn error_schema() -> Value {
    json!({ "type": "object", "required": ["error"], "properties": { "error": {
        "type": "object", "required": ["code", "message"],
        "properties": { "code": { "type": "string" }, "message": { "type": "string" } } } } })
}

fn trigger_accepted_schema() -> Value {
    json!({ "type": "object", "required": ["executionId", "duplicate", "status"], "properties": {
        "executionId": { "type": "string", "format": "uuid" },
        "duplicate": { "type": "boolean", "description": "An earlier enqueue with the same idempotency key" },
        "status": { "const": "queued" },
        "links": { "type": "object", "properties": { "execution": { "type": "string" } } } } })
}

/// The durations `delay` takes as text: spans such as `250ms`, `10s` or `1h 30m` (a subset of
/// what `humantime` parses, in units up to days), each at most nine digits.
const DURATION_PATTERN: &str = "^[0-9]{1,9}(ns|us|ms|s|m|h|d)( [0-9]{1,9}(ns|us|ms|s|m|h|d))*$";

fn enqueue_options_schema() -> Value {
    json!({ "type": "object", "properties": {
        "idempotencyKey": { "type": ["string", "null"] },
        "concurrencyKey": { "type": ["string", "null"] },
        "priority": { "type": "integer", "format": "int32" },
        "delay": { "description": "A duration such as \"10s\" or \"1m 30s\", or milliseconds", "oneOf": [
            { "type": "string", "pattern": DURATION_PATTERN },
            { "type": "integer", "minimum": 0, "maximum": u64::MAX },
            { "type": "null" } ] },
        "correlationId": { "type": ["string", "null"] },
        "traceparent": { "type": ["string", "null"] },
        "tracestate": { "type": ["string", "null"] } } })
}

/// The envelope's own part: `payload`, beside the enqueue options (typed by `EnqueueOptions`)
/// and nothing else.
fn envelope_schema(payload: Value) -> Value {
    let mut fields = Map::new();
    if let Some(options) = enqueue_options_schema()["properties"].as_object() {
        fields.extend(options.keys().map(|k| (k.clone(), Value::Bool(true))));
    }
    fields.insert("payload".into(), payload);
    json!({ "type": "object", "required": ["payload"], "properties": fields, "additionalProperties": false })
}

fn job_info_schema() -> Value {
    json!({ "type": "object", "required": ["id", "name", "topic", "retries", "payloadSchema", "outputSchema"], "properties": {
        "id": { "type": "string" }, "name": { "type": "string" }, "topic": { "type": "string" },
        "description": { "type": "string" }, "tags": { "type": "array", "items": { "type": "string" } },
        "timeoutMs": { "type": ["integer", "null"] }, "retries": { "type": "integer" },
        "backoff": { "type": "object" }, "payloadSchema": {}, "outputSchema": {} } })
}
