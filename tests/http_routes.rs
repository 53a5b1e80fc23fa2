//! Every route of the HTTP API over a real socket (`serve_on` on 127.0.0.1:0), each success
//! path and each error path: status, the JSON error shape `{ "error": { "code", "message" } }`
//! and its code, and the fields a client reads. `tests/api.rs` covers the same routes
//! in-process; `scripts/fuzz-api.sh` fuzzes them from the OpenAPI document.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use netscript::prelude::*;
use netscript::tasks::{TaskRuntime, define_task};
use netscript::{QueueProvider, WorkersConfig};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct Invoice {
    customer: String,
    amount_cents: u32,
}

/// Sends an invoice.
#[job(id = "send-invoice", topic = "billing", retries = 0)]
async fn send_invoice(payload: Invoice) -> JobResult<String> {
    Ok(format!("{}:{}", payload.customer, payload.amount_cents))
}

/// Always fails for good, to fill the dead letters.
#[job(id = "doomed", topic = "doom", retries = 0)]
async fn doomed() -> JobResult<()> {
    Err(JobError::fatal("the printer is on fire"))
}

/// Once a year, so it never fires during a test.
#[scheduled(id = "yearly-close", cron = "0 0 1 1 *", timezone = "UTC", tags = ["books"])]
async fn yearly_close(_tick: ScheduledTick) -> Vec<Action> {
    Vec::new()
}

const TOKEN: &str = "fuzz-token";

/// A memory runtime with a shell task, configured further by `configure`.
async fn runtime_with(configure: impl FnOnce(&mut WorkersConfig)) -> Runtime {
    runtime_on(QueueProvider::Memory, configure).await
}

/// A runtime on `provider` with a shell task, configured further by `configure`.
async fn runtime_on(provider: QueueProvider, configure: impl FnOnce(&mut WorkersConfig)) -> Runtime {
    let task = define_task("echo-task")
        .runtime(TaskRuntime::Shell)
        .entrypoint("echo hello")
        .topic("tasks")
        .description("Says hello.")
        .build()
        .unwrap();
    Runtime::builder().ignore_env().provider(provider).configure(configure).task(task).build().await.expect("runtime")
}

struct Served {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    server: JoinHandle<netscript::worker::WorkerReport>,
}

impl Served {
    async fn call(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        support::http::request(self.addr, method, path, &[], body.as_bytes()).await
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.server).await.expect("server stops").unwrap();
    }
}

/// Serves `rt` on a free loopback port; `workers` runs the dispatcher (and scheduler) too.
async fn serve(rt: &Runtime, workers: bool) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let server = tokio::spawn({
        let rt = rt.clone();
        async move { rt.serve_on(listener, workers, async move { rx.await.unwrap_or(()) }).await }
    });
    Served { addr, stop, server }
}

/// Asserts an error answer: the status, and `{ "error": { "code", "message" } }` with `code`
/// and a non-empty message, which it returns.
#[track_caller]
fn assert_error(answer: &(u16, Value), status: u16, code: &str) -> String {
    let (got, body) = answer;
    assert_eq!(*got, status, "{body}");
    let error = body["error"].as_object().unwrap_or_else(|| panic!("not an error body: {body}"));
    assert_eq!(error.len(), 2, "only code and message: {body}");
    assert_eq!(error["code"], code, "{body}");
    let message = error["message"].as_str().unwrap().to_owned();
    assert!(!message.is_empty(), "{body}");
    message
}

const UNKNOWN_ID: &str = "0191f0a0-0000-7000-8000-000000000000";

#[tokio::test]
async fn the_read_routes_and_their_query_errors() {
    let rt = runtime_with(|_| {}).await;
    let api = serve(&rt, false).await;

    let (status, health) = api.call("GET", "/health", "").await;
    assert_eq!(status, 200);
    assert_eq!((health["status"].as_str(), health["providers"]["queue"].as_str()), (Some("ok"), Some("memory")));
    assert_eq!(health["jobs"], rt.registry().len());

    let (status, jobs) = api.call("GET", "/api/v1/workers/jobs", "").await;
    assert_eq!(status, 200);
    let invoice = jobs.as_array().unwrap().iter().find(|j| j["id"] == "send-invoice").unwrap();
    assert_eq!((invoice["topic"].as_str(), invoice["retries"].as_u64()), (Some("billing"), Some(0)));
    assert!(invoice["payloadSchema"]["properties"]["amountCents"].is_object(), "{invoice}");
    assert!(jobs.as_array().unwrap().iter().any(|j| j["id"] == "echo-task"), "tasks are jobs: {jobs}");
    assert_eq!(api.call("GET", "/api/v1/workers/jobs?source=binary", "").await.1, jobs);
    assert_error(&api.call("GET", "/api/v1/workers/jobs?source=elsewhere", "").await, 400, "invalid_query");
    assert_error(&api.call("GET", "/api/v1/workers/jobs?colour=red", "").await, 400, "invalid_query");

    // Seeding writes this binary's jobs and tasks to the catalogue `source=store` lists.
    assert_eq!(api.call("GET", "/api/v1/workers/jobs?source=store", "").await, (200, json!([])));
    let (status, seeded) = api.call("POST", "/api/v1/workers/seed", "").await;
    assert_eq!(status, 200, "{seeded}");
    assert_eq!(seeded, json!({ "jobs": rt.registry().len(), "tasks": 1 }), "tasks are among the jobs too");
    let (status, stored) = api.call("GET", "/api/v1/workers/jobs?source=store", "").await;
    assert_eq!(status, 200);
    assert!(stored.as_array().unwrap().iter().any(|j| j["id"] == "send-invoice"), "{stored}");

    let (status, schedules) = api.call("GET", "/api/v1/workers/schedules", "").await;
    assert_eq!(status, 200);
    let yearly = &schedules.as_array().unwrap()[0];
    assert_eq!((yearly["id"].as_str(), yearly["expression"].as_str()), (Some("yearly-close"), Some("0 0 1 1 *")));
    assert_eq!(yearly["nextFireTimes"].as_array().unwrap().len(), 5, "{yearly}");
    assert_eq!(yearly["tags"], json!(["books"]));

    let (status, tasks) = api.call("GET", "/api/v1/workers/tasks", "").await;
    assert_eq!(status, 200);
    assert_eq!(tasks.as_array().unwrap().len(), 1, "{tasks}");
    assert_eq!((tasks[0]["id"].as_str(), tasks[0]["runtime"].as_str()), (Some("echo-task"), Some("shell")));
    assert_eq!(tasks[0]["topic"], "tasks");

    let (status, queue) = api.call("GET", "/api/v1/workers/queue", "").await;
    assert_eq!(status, 200);
    assert_eq!((queue["ready"].as_u64(), queue["dead"].as_u64()), (Some(0), Some(0)), "{queue}");

    // Executions: a page, its filters, and every query value that is refused.
    let (status, page) = api.call("GET", "/api/v1/workers/executions", "").await;
    assert_eq!(status, 200);
    assert_eq!(page["executions"], json!([]));
    assert_eq!(page["nextCursor"], Value::Null);
    for bad in [
        "limit=0",
        "limit=1001",
        "limit=abc",
        "limit=-1",
        "status=sleeping",
        "before=yesterday",
        "status=queued&status=dead",
    ] {
        let answer = api.call("GET", &format!("/api/v1/workers/executions?{bad}"), "").await;
        assert_error(&answer, 400, "invalid_query");
    }
    assert_error(&api.call("GET", "/api/v1/workers/dead-letters?limit=0", "").await, 400, "invalid_query");
    // Before the fix these were axum's plain-text rejections, not the JSON error shape.
    assert_error(&api.call("GET", "/api/v1/workers/dead-letters?limit=null", "").await, 400, "invalid_query");

    // Unknown executions, in either form of id.
    let missing = format!("/api/v1/workers/executions/{UNKNOWN_ID}");
    assert_error(&api.call("GET", &missing, "").await, 404, "unknown_execution");
    assert_error(&api.call("GET", "/api/v1/workers/executions/not-an-id", "").await, 404, "unknown_execution");
    // A path segment that is not UTF-8 once decoded: JSON 400, not axum's plain text.
    assert_error(&api.call("GET", "/api/v1/workers/executions/%FF", "").await, 400, "invalid_path");
    assert_error(&api.call("POST", "/api/v1/workers/topics/%FF/pause", "").await, 400, "invalid_path");

    // Unknown routes and methods.
    assert!(assert_error(&api.call("GET", "/api/v2/nothing", "").await, 404, "not_found").contains("/api/v2/nothing"));
    assert_error(&api.call("GET", "/api/v1/workers/jobs/send-invoice/trigger", "").await, 405, "method_not_allowed");
    assert_error(&api.call("DELETE", "/api/v1/workers/executions", "").await, 405, "method_not_allowed");
    assert_error(&api.call("PUT", "/health", "").await, 405, "method_not_allowed");

    let (status, doc) = api.call("GET", "/api/v1/openapi.json", "").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/v1/workers/jobs/send-invoice/trigger"]["post"].is_object());
    assert!(doc["paths"]["/api/v1/workers/jobs/echo-task/trigger"]["post"].is_object());
    assert!(doc.get("security").is_none(), "no token, no security requirement");
    support::http::check_openapi(&doc);

    api.stop().await;
}

#[tokio::test]
async fn triggers_cancels_and_topics() {
    let rt = runtime_with(|_| {}).await;
    let api = serve(&rt, false).await;
    let trigger = "/api/v1/workers/jobs/send-invoice/trigger";

    let (status, accepted) = api.call("POST", trigger, r#"{"customer":"c1","amountCents":120}"#).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!((accepted["status"].as_str(), accepted["duplicate"].as_bool()), (Some("queued"), Some(false)));
    let id = accepted["executionId"].as_str().unwrap().to_owned();
    assert_eq!(accepted["links"]["execution"], format!("/api/v1/workers/executions/{id}"));
    let (status, record) = api.call("GET", &format!("/api/v1/workers/executions/{id}"), "").await;
    assert_eq!(status, 200);
    assert_eq!((record["jobId"].as_str(), record["status"].as_str()), (Some("send-invoice"), Some("queued")));
    assert_eq!(record["payload"], json!({"customer":"c1","amountCents":120}));

    // The envelope form: options beside the payload; the idempotency key collapses a repeat.
    let envelope =
        r#"{"payload":{"customer":"c2","amountCents":5},"idempotencyKey":"inv-2","priority":7,"delay":"1h"}"#;
    let (status, first) = api.call("POST", trigger, envelope).await;
    assert_eq!(status, 202, "{first}");
    let (status, again) = api.call("POST", trigger, envelope).await;
    assert_eq!((status, again["duplicate"].as_bool()), (202, Some(true)));
    assert_eq!(again["executionId"], first["executionId"]);
    let (_, queue) = api.call("GET", "/api/v1/workers/queue", "").await;
    assert_eq!((queue["ready"].as_u64(), queue["delayed"].as_u64()), (Some(1), Some(1)), "{queue}");

    // A number written as a float with no fraction is an integer (JSON Schema's reading, which
    // the document's `"type": "integer"` promises); before the fix serde refused it with 422.
    let (status, body) =
        api.call("POST", trigger, r#"{"payload":{"customer":"c3","amountCents":9.0},"priority":2.0}"#).await;
    assert_eq!(status, 202, "{body}");
    let float_id = body["executionId"].as_str().unwrap().to_owned();
    let (_, record) = api.call("GET", &format!("/api/v1/workers/executions/{float_id}"), "").await;
    assert_eq!(record["payload"], json!({"customer":"c3","amountCents":9}));
    let (status, body) = api.call("POST", "/api/v1/workers/jobs/doomed/trigger", "").await;
    assert_eq!(status, 202, "no payload: an empty body");
    let doomed_id = body["executionId"].as_str().unwrap().to_owned();

    // 422 names the failing path and the reason; nothing is enqueued.
    let message = assert_error(
        &api.call("POST", trigger, r#"{"customer":"c4","amountCents":"lots"}"#).await,
        422,
        "invalid_payload",
    );
    assert!(message.contains("amountCents") && message.contains("invalid type"), "{message}");
    let message = assert_error(&api.call("POST", trigger, r#"{"customer":"c4"}"#).await, 422, "invalid_payload");
    assert!(message.contains("amountCents"), "{message}");
    let bad_envelope = r#"{"payload":{"customer":"c5","amountCents":1},"delay":"soon"}"#;
    assert!(assert_error(&api.call("POST", trigger, bad_envelope).await, 422, "invalid_envelope").contains("soon"));
    assert_error(&api.call("POST", "/api/v1/workers/jobs/doomed/trigger", r#"{"x":1}"#).await, 422, "invalid_payload");
    assert_error(&api.call("POST", trigger, r#"{"customer": "#).await, 400, "malformed_json");
    assert_error(&api.call("POST", "/api/v1/workers/jobs/no-such-job/trigger", "{}").await, 404, "unknown_job");
    let (_, page) = api.call("GET", "/api/v1/workers/executions?limit=10", "").await;
    assert_eq!(page["executions"].as_array().unwrap().len(), 4, "{page}");

    // Listing: newest first, filtered by job and status, paged by cursor.
    let (_, page) = api.call("GET", "/api/v1/workers/executions?job=send-invoice&status=queued&limit=2", "").await;
    let ids: Vec<&str> = page["executions"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [float_id.as_str(), first["executionId"].as_str().unwrap()]);
    let cursor = page["nextCursor"].as_str().unwrap();
    let (_, rest) = api.call("GET", &format!("/api/v1/workers/executions?job=send-invoice&before={cursor}"), "").await;
    assert_eq!(rest["executions"][0]["id"], id.as_str());

    // Cancel: a waiting execution is cancelled, an ended one conflicts, an unknown one is 404.
    let cancel = format!("/api/v1/workers/executions/{doomed_id}/cancel");
    let (status, body) = api.call("POST", &cancel, "").await;
    assert_eq!((status, body["status"].as_str()), (202, Some("cancelled")), "{body}");
    assert_eq!(body["executionId"], doomed_id.as_str());
    let (_, record) = api.call("GET", &format!("/api/v1/workers/executions/{doomed_id}"), "").await;
    assert_eq!(record["status"], "cancelled");
    assert_error(&api.call("POST", &cancel, "").await, 409, "already_finished");
    let unknown = format!("/api/v1/workers/executions/{UNKNOWN_ID}/cancel");
    assert_error(&api.call("POST", &unknown, "").await, 404, "unknown_execution");
    assert_error(&api.call("POST", "/api/v1/workers/executions/nope/cancel", "").await, 404, "unknown_execution");

    // Topics: counts per topic; pause and resume.
    let (status, topics) = api.call("GET", "/api/v1/workers/topics", "").await;
    assert_eq!(status, 200);
    let billing = topics.as_array().unwrap().iter().find(|t| t["topic"] == "billing").unwrap().clone();
    assert_eq!((billing["paused"].as_bool(), billing["ready"].as_u64()), (Some(false), Some(2)), "{topics}");
    let (status, body) = api.call("POST", "/api/v1/workers/topics/billing/pause", "").await;
    assert_eq!((status, body), (200, json!({ "topic": "billing", "paused": true })));
    let (_, topics) = api.call("GET", "/api/v1/workers/topics", "").await;
    assert!(topics.as_array().unwrap().iter().any(|t| t["topic"] == "billing" && t["paused"] == true), "{topics}");
    let (status, body) = api.call("POST", "/api/v1/workers/topics/billing/resume", "").await;
    assert_eq!((status, body), (200, json!({ "topic": "billing", "paused": false })));
    assert!(rt.paused_topics().is_empty());

    api.stop().await;
}

#[tokio::test]
async fn dead_letters_are_listed_and_redriven() {
    let rt = runtime_with(|_| {}).await;
    let api = serve(&rt, true).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, body) = api.call("POST", "/api/v1/workers/jobs/doomed/trigger", "").await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["executionId"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let mut status = Value::Null;
        for _ in 0..200 {
            status = api.call("GET", &format!("/api/v1/workers/executions/{id}"), "").await.1["status"].clone();
            if status == "dead" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(status, "dead");
    }
    // Pause the topic so redriven letters stay in the queue to be counted.
    assert_eq!(api.call("POST", "/api/v1/workers/topics/doom/pause", "").await.0, 200);

    let (status, dead) = api.call("GET", "/api/v1/workers/dead-letters?limit=10", "").await;
    assert_eq!(status, 200);
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!((dead[0]["jobId"].as_str(), dead[0]["topic"].as_str()), (Some("doomed"), Some("doom")));
    assert_eq!((dead[0]["error"].as_str(), dead[0]["attempt"].as_u64()), (Some("the printer is on fire"), Some(1)));
    assert_eq!(api.call("GET", "/api/v1/workers/dead-letters?limit=1", "").await.1.as_array().unwrap().len(), 1);

    let redrive = format!("/api/v1/workers/dead-letters/{}/redrive", ids[0]);
    let (status, body) = api.call("POST", &redrive, "").await;
    assert_eq!((status, body), (202, json!({ "executionId": ids[0], "status": "queued" })));
    assert_error(&api.call("POST", &redrive, "").await, 404, "unknown_dead_letter");
    assert_error(
        &api.call("POST", "/api/v1/workers/dead-letters/not-an-id/redrive", "").await,
        404,
        "unknown_dead_letter",
    );
    let (_, queue) = api.call("GET", "/api/v1/workers/queue", "").await;
    assert_eq!((queue["dead"].as_u64(), queue["ready"].as_u64()), (Some(1), Some(1)), "{queue}");

    let (status, body) = api.call("POST", "/api/v1/workers/dead-letters/redrive", "").await;
    assert_eq!((status, body), (202, json!({ "redriven": 1 })));
    let (_, queue) = api.call("GET", "/api/v1/workers/queue", "").await;
    assert_eq!((queue["dead"].as_u64(), queue["ready"].as_u64()), (Some(0), Some(2)), "{queue}");
    let (_, record) = api.call("GET", &format!("/api/v1/workers/executions/{}", ids[1]), "").await;
    assert_eq!(record["status"], "queued");

    api.stop().await;
}

/// The broker goes away under a serving API (a `redis-server` of the test's own, killed):
/// every route that needs it answers 503 `backend_unavailable` promptly, never a 500 or a hung
/// request; `/health` and the routes that need no backend still answer; and once the server
/// is back every route works again with nothing lost.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_is_503_where_the_broker_is_needed_and_then_recovers() {
    let mut redis = support::own_redis::OwnRedis::start();
    let url = redis.url();
    let namespace = support::unique_namespace("outage");
    let rt = runtime_on(QueueProvider::Redis, |c| {
        support::configure(c, QueueProvider::Redis, &namespace);
        c.brokers.redis = Some(netscript::config::BrokerUrl::new(url));
    })
    .await;
    let api = serve(&rt, false).await;
    let trigger = "/api/v1/workers/jobs/send-invoice/trigger";
    let (status, body) = api.call("POST", trigger, r#"{"customer":"c1","amountCents":1}"#).await;
    assert_eq!(status, 202, "{body}");
    let id = body["executionId"].as_str().unwrap().to_owned();

    tokio::task::block_in_place(|| redis.kill());
    let execution = format!("/api/v1/workers/executions/{id}");
    let cancel = format!("/api/v1/workers/executions/{id}/cancel");
    let redrive = format!("/api/v1/workers/dead-letters/{id}/redrive");
    let needs_the_broker: [(&str, &str, &str); 12] = [
        ("POST", trigger, r#"{"customer":"c2","amountCents":2}"#),
        ("GET", "/api/v1/workers/executions", ""),
        ("GET", &execution, ""),
        ("POST", &cancel, ""),
        ("GET", "/api/v1/workers/dead-letters", ""),
        ("POST", "/api/v1/workers/dead-letters/redrive", ""),
        ("POST", &redrive, ""),
        ("GET", "/api/v1/workers/queue", ""),
        ("GET", "/api/v1/workers/topics", ""),
        ("GET", "/metrics", ""),
        ("POST", "/api/v1/workers/seed", ""),
        ("GET", "/api/v1/workers/jobs?source=store", ""),
    ];
    for (method, path, body) in needs_the_broker {
        let began = std::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(30), api.call(method, path, body))
            .await
            .unwrap_or_else(|_| panic!("{method} {path} hung with the broker down"));
        let message = assert_error(&answer, 503, "backend_unavailable");
        assert!(began.elapsed() < Duration::from_secs(15), "{method} {path} took {:?}", began.elapsed());
        assert!(!message.contains("panicked"), "{method} {path}: {message}");
    }
    let (status, health) = api.call("GET", "/health", "").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")), "{health}");
    assert_eq!(api.call("GET", "/api/v1/workers/jobs", "").await.0, 200, "this binary's jobs need no broker");
    assert_eq!(api.call("GET", "/api/v1/openapi.json", "").await.0, 200);

    tokio::task::block_in_place(|| redis.spawn());
    let mut back = (0, Value::Null);
    for _ in 0..300 {
        back = api.call("GET", &execution, "").await;
        if back.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((back.0, back.1["status"].as_str()), (200, Some("queued")), "the record survived: {}", back.1);
    let (status, body) = api.call("POST", trigger, r#"{"customer":"c3","amountCents":3}"#).await;
    assert_eq!(status, 202, "{body}");
    let (status, queue) = api.call("GET", "/api/v1/workers/queue", "").await;
    assert_eq!((status, queue["ready"].as_u64()), (200, Some(2)), "{queue}");
    assert_eq!(api.call("GET", "/metrics", "").await.0, 200);
    assert_eq!(api.call("POST", "/api/v1/workers/seed", "").await.0, 200);
    api.stop().await;
}

#[tokio::test]
async fn a_token_guards_every_route_but_health() {
    let rt = runtime_with(|c| c.api_token = Some(netscript::config::ApiToken::new(TOKEN))).await;
    let api = serve(&rt, false).await;
    let bearer = format!("Bearer {TOKEN}");
    let guarded = [
        ("GET", "/api/v1/workers/jobs"),
        ("POST", "/api/v1/workers/jobs/send-invoice/trigger"),
        ("GET", "/api/v1/workers/executions"),
        ("GET", "/api/v1/workers/executions/not-an-id"),
        ("POST", "/api/v1/workers/executions/not-an-id/cancel"),
        ("GET", "/api/v1/workers/dead-letters"),
        ("POST", "/api/v1/workers/dead-letters/redrive"),
        ("POST", "/api/v1/workers/dead-letters/not-an-id/redrive"),
        ("GET", "/api/v1/workers/queue"),
        ("GET", "/api/v1/workers/topics"),
        ("POST", "/api/v1/workers/topics/billing/pause"),
        ("POST", "/api/v1/workers/topics/billing/resume"),
        ("GET", "/api/v1/workers/subscribe"),
        ("GET", "/api/v1/workers/schedules"),
        ("GET", "/api/v1/workers/tasks"),
        ("POST", "/api/v1/workers/seed"),
        ("GET", "/api/v1/openapi.json"),
        ("GET", "/no/such/route"),
    ];
    for (method, path) in guarded {
        let answer = support::http::request(api.addr, method, path, &[], b"").await;
        assert_error(&answer, 401, "unauthorized");
        let wrong = support::http::request(api.addr, method, path, &[("Authorization", "Bearer nope")], b"").await;
        assert!(assert_error(&wrong, 401, "unauthorized").contains("not valid"), "{path}");
    }
    assert_eq!(api.call("GET", "/health", "").await.0, 200, "health stays open");

    let auth = [("Authorization", bearer.as_str())];
    let (status, jobs) = support::http::request(api.addr, "GET", "/api/v1/workers/jobs", &auth, b"").await;
    assert_eq!(status, 200);
    assert!(jobs.as_array().unwrap().iter().any(|j| j["id"] == "send-invoice"));
    let body = br#"{"customer":"c","amountCents":1}"#;
    let (status, _) =
        support::http::request(api.addr, "POST", "/api/v1/workers/jobs/send-invoice/trigger", &auth, body).await;
    assert_eq!(status, 202);
    let (status, doc) = support::http::request(api.addr, "GET", "/api/v1/openapi.json", &auth, b"").await;
    assert_eq!(status, 200);
    assert_eq!(doc["security"], json!([{ "bearer": [] }]));
    // With the token, errors behind it are the route's own.
    let answer = support::http::request(api.addr, "GET", "/no/such/route", &auth, b"").await;
    assert_error(&answer, 404, "not_found");

    api.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let rt = runtime_with(|c| c.api_body_limit = 64).await;
    let api = serve(&rt, false).await;
    let big = format!(r#"{{"customer":"{}","amountCents":1}}"#, "x".repeat(100));
    let message =
        assert_error(&api.call("POST", "/api/v1/workers/jobs/send-invoice/trigger", &big).await, 413, "body_too_large");
    assert!(message.contains("64"), "{message}");
    let (status, _) =
        api.call("POST", "/api/v1/workers/jobs/send-invoice/trigger", r#"{"customer":"c","amountCents":1}"#).await;
    assert_eq!(status, 202, "a body under the limit passes");
    assert_eq!(rt.queue().stats().await.unwrap().ready, 1, "the large one enqueued nothing");
    api.stop().await;
}

#[tokio::test]
async fn subscribe_streams_the_first_event_and_refuses_bad_filters() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let rt = runtime_with(|_| {}).await;
    let api = serve(&rt, false).await;
    assert_error(&api.call("GET", "/api/v1/workers/subscribe?execution=nope", "").await, 400, "invalid_query");
    assert_error(&api.call("GET", "/api/v1/workers/subscribe?job=a&job=b", "").await, 400, "invalid_query");

    let mut stream = tokio::net::TcpStream::connect(api.addr).await.unwrap();
    let request = "GET /api/v1/workers/subscribe?job=send-invoice HTTP/1.1\r\nHost: localhost\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut lines = BufReader::new(stream).lines();
    let status = lines.next_line().await.unwrap().unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let mut content_type = String::new();
    loop {
        let line = lines.next_line().await.unwrap().unwrap();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(": ")
            && name.eq_ignore_ascii_case("content-type")
        {
            content_type = value.to_owned();
        }
    }
    assert_eq!(content_type, "text/event-stream");

    rt.enqueue(doomed::enqueue()).await.unwrap(); // filtered out
    let (_, accepted) =
        api.call("POST", "/api/v1/workers/jobs/send-invoice/trigger", r#"{"customer":"s","amountCents":3}"#).await;
    let id = accepted["executionId"].as_str().unwrap().to_owned();
    let first = async {
        let (mut event, mut data) = (None, None);
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(name) = line.strip_prefix("event: ") {
                event = Some(name.to_owned());
            } else if let Some(json) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str::<Value>(json).unwrap());
            } else if line.is_empty() && event.is_some() {
                break;
            }
        }
        (event, data)
    };
    let (event, data) = tokio::time::timeout(Duration::from_secs(5), first).await.expect("an event arrives");
    assert_eq!(event.as_deref(), Some("queued"));
    let data = data.unwrap();
    assert_eq!((data["id"].as_str(), data["jobId"].as_str()), (Some(id.as_str()), Some("send-invoice")));
    drop(lines);
    api.stop().await;
}
