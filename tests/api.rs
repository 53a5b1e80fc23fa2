//! The HTTP API: every route and its error paths in-process (tower `oneshot`), and a trigger
//! → run → read round trip over a real socket.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use netscript::prelude::*;
use netscript::{ExecutionStatus, QueueProvider};
use serde_json::{Value, json};
use tower::ServiceExt;

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct Charge {
    order_id: String,
    amount_cents: u64,
}

/// Charges an order.
#[job(id = "charge", topic = "payments", timeout = "5s", retries = 1, tags = ["billing"])]
async fn charge(payload: Charge) -> JobResult<String> {
    Ok(format!("{}:{}", payload.order_id, payload.amount_cents))
}

/// Takes no payload.
#[job(id = "tick")]
async fn tick() -> JobResult<()> {
    Ok(())
}

/// Always fails, for good.
#[job(id = "broken", retries = 0)]
async fn broken() -> JobResult<()> {
    Err(JobError::fatal("the ledger is closed"))
}

async fn runtime() -> Runtime {
    Runtime::builder().ignore_env().provider(QueueProvider::Memory).build().await.expect("runtime")
}

async fn call(rt: &Runtime, method: Method, uri: &str, body: &str) -> (StatusCode, Value) {
    let req = Request::builder().method(method).uri(uri).body(Body::from(body.to_owned())).unwrap();
    let (status, _, value) = call_with(rt, req).await;
    (status, value)
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error body: {v}"))
}

#[tokio::test]
async fn health_names_the_providers() {
    let rt = runtime().await;
    let (status, body) = call(&rt, Method::GET, "/health", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["providers"]["queue"], "memory");
    assert_eq!(body["providers"]["kv"], "memory");
}

#[tokio::test]
async fn jobs_are_listed_with_their_payload_schema() {
    let rt = runtime().await;
    let (status, body) = call(&rt, Method::GET, "/api/v1/workers/jobs", "").await;
    assert_eq!(status, StatusCode::OK);
    let jobs = body.as_array().unwrap();
    let charge = jobs.iter().find(|j| j["id"] == "charge").expect("charge listed");
    assert_eq!(charge["topic"], "payments");
    assert_eq!(charge["description"], "Charges an order.");
    assert_eq!(charge["timeoutMs"], 5000);
    assert_eq!(charge["retries"], 1);
    assert_eq!(charge["tags"], json!(["billing"]));
    let schema = &charge["payloadSchema"];
    assert!(schema["properties"]["orderId"].is_object(), "{schema}");
    assert!(schema["properties"]["amountCents"].is_object(), "{schema}");
    let tick = jobs.iter().find(|j| j["id"] == "tick").unwrap();
    assert_eq!(tick["payloadSchema"]["type"], "null");
}

#[tokio::test]
async fn trigger_accepts_a_bare_payload_or_an_envelope() {
    let rt = runtime().await;
    let (status, body) =
        call(&rt, Method::POST, "/api/v1/workers/jobs/charge/trigger", r#"{"orderId":"o1","amountCents":5}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["executionId"].as_str().unwrap().to_owned();
    assert_eq!(body["duplicate"], false);

    let envelope = r#"{"payload":{"orderId":"o2","amountCents":7},"idempotencyKey":"o2","priority":3}"#;
    let (status, first) = call(&rt, Method::POST, "/api/v1/workers/jobs/charge/trigger", envelope).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, again) = call(&rt, Method::POST, "/api/v1/workers/jobs/charge/trigger", envelope).await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["executionId"], first["executionId"]);

    let (status, record) = call(&rt, Method::GET, &format!("/api/v1/workers/executions/{id}"), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(record["status"], "queued");
    assert_eq!(record["jobId"], "charge");
    assert_eq!(record["payload"], json!({"orderId":"o1","amountCents":5}));

    let (status, _) = call(&rt, Method::POST, "/api/v1/workers/jobs/tick/trigger", "").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(rt.queue().stats().await.unwrap().ready, 3);
}

#[tokio::test]
async fn bad_triggers_are_refused_and_enqueue_nothing() {
    let rt = runtime().await;
    let (status, body) = call(&rt, Method::POST, "/api/v1/workers/jobs/nope/trigger", "{}").await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "unknown_job"));
    let (status, body) = call(&rt, Method::POST, "/api/v1/workers/jobs/charge/trigger", r#"{"orderId":"o1"}"#).await;
    assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_payload"));
    assert!(body["error"]["message"].as_str().unwrap().contains("amountCents"), "{body}");
    let (status, body) = call(&rt, Method::POST, "/api/v1/workers/jobs/charge/trigger", r#"{"orderId": "#).await;
    assert_eq!((status, error_code(&body)), (StatusCode::BAD_REQUEST, "malformed_json"));
    let (status, body) = call(&rt, Method::POST, "/api/v1/workers/jobs/tick/trigger", r#"{"x":1}"#).await;
    assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_payload"));
    assert_eq!(rt.queue().stats().await.unwrap().ready, 0);
    assert!(rt.store().list(&Default::default()).await.unwrap().is_empty());
}

#[tokio::test]
async fn executions_are_listed_newest_first_with_filters_and_a_cursor() {
    let rt = runtime().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = rt.enqueue(charge::enqueue(Charge { order_id: format!("o{i}"), amount_cents: i })).await.unwrap();
        ids.push(r.execution_id.to_string());
    }
    rt.enqueue(tick::enqueue()).await.unwrap();
    let (status, body) = call(&rt, Method::GET, "/api/v1/workers/executions?limit=2&job=charge", "").await;
    assert_eq!(status, StatusCode::OK);
    let page: Vec<&str> = body["executions"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(page, [ids[4].as_str(), ids[3].as_str()]);
    let cursor = body["nextCursor"].as_str().unwrap();
    let (_, next) =
        call(&rt, Method::GET, &format!("/api/v1/workers/executions?limit=10&job=charge&before={cursor}"), "").await;
    let rest: Vec<&str> = next["executions"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(rest, [ids[2].as_str(), ids[1].as_str(), ids[0].as_str()]);
    assert!(next["nextCursor"].is_null());
    let (_, all) = call(&rt, Method::GET, "/api/v1/workers/executions?status=queued", "").await;
    assert_eq!(all["executions"].as_array().unwrap().len(), 6);
    let (_, none) = call(&rt, Method::GET, "/api/v1/workers/executions?status=succeeded", "").await;
    assert!(none["executions"].as_array().unwrap().is_empty());

    for bad in ["limit=0", "limit=5000", "status=weird", "before=xyz"] {
        let (status, body) = call(&rt, Method::GET, &format!("/api/v1/workers/executions?{bad}"), "").await;
        assert_eq!((status, error_code(&body)), (StatusCode::BAD_REQUEST, "invalid_query"), "{bad}");
    }
    let (status, body) =
        call(&rt, Method::GET, "/api/v1/workers/executions/0191f0a0-0000-7000-8000-000000000000", "").await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "unknown_execution"));
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let rt = runtime().await;
    let (status, body) = call(&rt, Method::GET, "/api/v1/nothing", "").await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = call(&rt, Method::DELETE, "/api/v1/workers/jobs", "").await;
    assert_eq!((status, error_code(&body)), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
}

/// Sends one HTTP/1.1 request over a fresh connection and returns status and JSON body.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    support::http::request(addr, method, path, &[], body.as_bytes()).await
}

#[tokio::test]
async fn trigger_run_and_read_over_a_real_socket() {
    let rt = runtime().await;
    let (addr, tx, server) = support::http::serve(&rt, true).await;
    let (status, body) =
        http(addr, "POST", "/api/v1/workers/jobs/charge/trigger", r#"{"orderId":"o9","amountCents":12}"#).await;
    assert_eq!(status, 202, "{body}");
    let id = body["executionId"].as_str().unwrap().to_owned();
    let mut record = Value::Null;
    for _ in 0..200 {
        let (_, r) = http(addr, "GET", &format!("/api/v1/workers/executions/{id}"), "").await;
        record = r;
        if record["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["result"], "o9:12");
    let (status, list) = http(addr, "GET", "/api/v1/workers/executions?limit=5", "").await;
    assert_eq!(status, 200);
    assert_eq!(list["executions"][0]["id"], id.as_str());
    tx.send(()).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), server).await.expect("server stops").unwrap();
    assert_eq!(report.started, 1);
    let r = rt.store().get(id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(r.status, ExecutionStatus::Succeeded);
}

#[tokio::test]
async fn seed_writes_the_catalogue_that_source_store_lists() {
    let rt = runtime().await;
    let (status, body) = call(&rt, Method::GET, "/api/v1/workers/jobs?source=store", "").await;
    assert_eq!((status, body.clone()), (StatusCode::OK, json!([])), "nothing seeded yet");
    let (status, seeded) = call(&rt, Method::POST, "/api/v1/workers/seed", "").await;
    assert_eq!(status, StatusCode::OK);
    let jobs = rt.registry().len();
    assert_eq!(seeded, json!({ "jobs": jobs, "tasks": 0 }));
    let (_, listed) = call(&rt, Method::GET, "/api/v1/workers/jobs?source=store", "").await;
    let (_, local) = call(&rt, Method::GET, "/api/v1/workers/jobs", "").await;
    assert_eq!(listed, local, "the catalogue holds this binary's jobs, schemas included");
    let (status, body) = call(&rt, Method::GET, "/api/v1/workers/jobs?source=elsewhere", "").await;
    assert_eq!((status, error_code(&body)), (StatusCode::BAD_REQUEST, "invalid_query"));
}

#[tokio::test]
async fn serve_shuts_down_the_api_then_the_workers_then_the_apps_resources() {
    let rt = runtime().await;
    // Finished in order, priority after priority: the pool closes once the workers drained.
    rt.shutdown_manager().register("database pool", netscript::SHUTDOWN_APP, || async { Ok(()) });
    let (addr, tx, server) = support::http::serve(&rt, true).await;
    let (status, _) = http(addr, "GET", "/health", "").await;
    assert_eq!(status, 200);
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server).await.expect("server stops").unwrap();
    let report = rt.shutdown_manager().wait_for_shutdown().await;
    assert_eq!(report.stopped, ["api", "workers", "database pool"], "{report:?}");
    assert!(report.is_clean(), "{report:?}");
}

async fn runtime_with(configure: impl FnOnce(&mut netscript::WorkersConfig)) -> Runtime {
    Runtime::builder().ignore_env().provider(QueueProvider::Memory).configure(configure).build().await.expect("runtime")
}

async fn call_with(rt: &Runtime, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let res = netscript::api::router(rt.clone()).oneshot(req).await.unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON body") };
    (status, headers, value)
}

#[tokio::test]
async fn a_configured_token_is_required_everywhere_but_health() {
    let rt = runtime_with(|c| c.api_token = Some(netscript::config::ApiToken::new("s3cret"))).await;
    let get = |uri: &str, auth: Option<&str>| {
        let mut b = Request::builder().uri(uri);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(Body::empty()).unwrap()
    };
    let (status, _, _) = call_with(&rt, get("/health", None)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, headers, body) = call_with(&rt, get("/api/v1/workers/jobs", None)).await;
    assert_eq!((status, error_code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _, body) = call_with(&rt, get("/api/v1/workers/jobs", Some("Bearer wrong"))).await;
    assert_eq!((status, error_code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let (status, _, _) = call_with(&rt, get("/api/v1/workers/jobs", Some("Basic czNjcmV0"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = call_with(&rt, get("/api/v1/workers/jobs", Some("Bearer s3cret"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Unknown routes do not reveal themselves to callers without the token.
    let (status, _, _) = call_with(&rt, get("/api/v1/nothing", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_and_enqueue_nothing() {
    let rt = runtime_with(|c| c.api_body_limit = 64).await;
    let big = format!(r#"{{"orderId":"{}","amountCents":1}}"#, "x".repeat(100));
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/workers/jobs/charge/trigger")
        .body(Body::from(big))
        .unwrap();
    let (status, _, body) = call_with(&rt, req).await;
    assert_eq!((status, error_code(&body)), (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"));
    assert_eq!(rt.queue().stats().await.unwrap().ready, 0);
    let small = r#"{"orderId":"o","amountCents":1}"#;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/workers/jobs/charge/trigger")
        .body(Body::from(small))
        .unwrap();
    assert_eq!(call_with(&rt, req).await.0, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn subscribers_see_an_execution_queued_then_succeeded() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let rt = runtime().await;
    let (addr, tx, server) = support::http::serve(&rt, true).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /api/v1/workers/subscribe?job=charge HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut lines = BufReader::new(stream).lines();
    // The response head, up to the blank line.
    let status = lines.next_line().await.unwrap().unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    while !lines.next_line().await.unwrap().unwrap().is_empty() {}
    // Subscribed: now enqueue one job of another kind and one charge.
    rt.enqueue(tick::enqueue()).await.unwrap();
    let id = rt.enqueue(charge::enqueue(Charge { order_id: "o5".into(), amount_cents: 5 })).await.unwrap().execution_id;
    let mut events = Vec::new();
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(name) = line.strip_prefix("event: ") {
                events.push(name.to_owned());
            } else if let Some(data) = line.strip_prefix("data: ") {
                let record: Value = serde_json::from_str(data).unwrap();
                assert_eq!(record["jobId"], "charge", "filtered by job");
                assert_eq!(record["id"], id.to_string());
            } else if let Some(event_id) = line.strip_prefix("id: ") {
                assert!(event_id.starts_with(&id.to_string()), "{event_id}");
            }
            if events.last().map(String::as_str) == Some("succeeded") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("events arrive");
    assert_eq!(events.first().map(String::as_str), Some("queued"), "{events:?}");
    assert_eq!(events.last().map(String::as_str), Some("succeeded"), "{events:?}");
    // Shutting down ends the open stream, so the server drains with the subscriber still
    // connected.
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server).await.expect("server stops").unwrap();
    drop(lines);
}

#[tokio::test]
async fn the_openapi_document_types_each_trigger_by_its_payload() {
    let rt = runtime().await;
    let (status, doc) = call(&rt, Method::GET, "/api/v1/openapi.json", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let charge = &doc["paths"]["/api/v1/workers/jobs/charge/trigger"]["post"];
    let body = &charge["requestBody"]["content"]["application/json"]["schema"]["oneOf"];
    assert!(body[0]["properties"]["orderId"].is_object(), "bare payload: {body}");
    assert_eq!(body[1]["allOf"][1]["properties"]["payload"], body[0], "envelope around the same payload");
    assert_eq!(charge["requestBody"]["required"], true);
    assert_eq!(doc["paths"]["/api/v1/workers/jobs/tick/trigger"]["post"]["requestBody"]["required"], false);
    assert!(
        doc["components"]["schemas"]["ExecutionRecord"]["properties"]["status"].is_object(),
        "{}",
        doc["components"]
    );
    assert!(doc.get("security").is_none(), "no token, no security requirement");

    support::http::check_openapi(&doc);
}

#[tokio::test]
async fn the_openapi_document_declares_bearer_auth_when_a_token_is_set() {
    let rt = runtime_with(|c| c.api_token = Some(netscript::config::ApiToken::new("t"))).await;
    let req =
        Request::builder().uri("/api/v1/openapi.json").header("authorization", "Bearer t").body(Body::empty()).unwrap();
    let (status, _, doc) = call_with(&rt, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert_eq!(doc["paths"]["/health"]["get"]["security"], json!([]));
}

#[tokio::test]
async fn dead_letters_are_listed_and_redriven() {
    let rt = runtime().await;
    let workers = rt.spawn_workers();
    let first = rt.enqueue(broken::enqueue()).await.unwrap().execution_id;
    let second = rt.enqueue(broken::enqueue()).await.unwrap().execution_id;
    for id in [first, second] {
        let r = rt.wait_for(id, Duration::from_secs(10)).await.unwrap().unwrap();
        assert_eq!(r.status, ExecutionStatus::Dead);
    }
    workers.stop().await;

    let (status, dead) = call(&rt, Method::GET, "/api/v1/workers/dead-letters?limit=10", "").await;
    assert_eq!(status, StatusCode::OK);
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0]["jobId"], "broken");
    assert_eq!(dead[0]["error"], "the ledger is closed");
    let (_, stats) = call(&rt, Method::GET, "/api/v1/workers/queue", "").await;
    assert_eq!((stats["dead"].as_u64(), stats["ready"].as_u64()), (Some(2), Some(0)), "{stats}");

    let (status, body) = call(&rt, Method::POST, &format!("/api/v1/workers/dead-letters/{first}/redrive"), "").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let record = rt.store().get(first).await.unwrap().unwrap();
    assert_eq!(record.status, ExecutionStatus::Queued);
    assert_eq!(record.attempts.len(), 1, "the failed attempt stays in the history");
    let (_, stats) = call(&rt, Method::GET, "/api/v1/workers/queue", "").await;
    assert_eq!((stats["dead"].as_u64(), stats["ready"].as_u64()), (Some(1), Some(1)), "{stats}");

    let (status, body) = call(&rt, Method::POST, &format!("/api/v1/workers/dead-letters/{first}/redrive"), "").await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "unknown_dead_letter"));
    let (status, body) = call(&rt, Method::POST, "/api/v1/workers/dead-letters/not-an-id/redrive", "").await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "unknown_dead_letter"));
    let (status, body) = call(&rt, Method::POST, "/api/v1/workers/dead-letters/redrive", "").await;
    assert_eq!((status, body["redriven"].as_u64()), (StatusCode::ACCEPTED, Some(1)));
    assert_eq!(rt.queue().stats().await.unwrap().ready, 2);
    let (status, body) = call(&rt, Method::GET, "/api/v1/workers/dead-letters?limit=0", "").await;
    assert_eq!((status, error_code(&body)), (StatusCode::BAD_REQUEST, "invalid_query"));
}

#[tokio::test]
async fn a_subscriber_reconnecting_with_last_event_id_gets_what_it_missed() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let rt = runtime().await;
    let seen = rt.enqueue(charge::enqueue(Charge { order_id: "seen".into(), amount_cents: 1 })).await.unwrap();
    let seen = rt.store().get(seen.execution_id).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let b = rt.enqueue(charge::enqueue(Charge { order_id: "b".into(), amount_cents: 2 })).await.unwrap().execution_id;
    let c = rt.enqueue(charge::enqueue(Charge { order_id: "c".into(), amount_cents: 3 })).await.unwrap().execution_id;
    rt.enqueue(tick::enqueue()).await.unwrap();

    // Served without workers, so nothing changes while we read.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let rt = rt.clone();
        async move { rt.serve_on(listener, false, async move { rx.await.unwrap_or(()) }).await }
    });
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let last_event_id = format!("{}/{}", seen.id, seen.updated_at.as_millis());
    let request = format!(
        "GET /api/v1/workers/subscribe?job=charge HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: {last_event_id}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut lines = BufReader::new(stream).lines();
    while !lines.next_line().await.unwrap().unwrap().is_empty() {}
    let mut replayed = Vec::new();
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(data) = line.strip_prefix("data: ") {
                let record: Value = serde_json::from_str(data).unwrap();
                replayed.push(record["id"].as_str().unwrap().to_owned());
                if replayed.len() == 2 {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("replayed events arrive");
    assert_eq!(
        replayed,
        [b.to_string(), c.to_string()],
        "missed charges, oldest first; not the one seen, not other jobs"
    );
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server).await.expect("server stops").unwrap();
}

#[tokio::test]
async fn executions_can_be_cancelled() {
    let rt = runtime().await;
    let id = rt
        .enqueue(charge::enqueue(Charge { order_id: "later".into(), amount_cents: 1 }).delay(Duration::from_secs(60)))
        .await
        .unwrap()
        .execution_id;
    let uri = format!("/api/v1/workers/executions/{id}/cancel");
    let (status, body) = call(&rt, Method::POST, &uri, "").await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::ACCEPTED, Some("cancelled")), "{body}");
    let (_, record) = call(&rt, Method::GET, &format!("/api/v1/workers/executions/{id}"), "").await;
    assert_eq!(record["status"], "cancelled");
    let (status, body) = call(&rt, Method::POST, &uri, "").await;
    assert_eq!((status, error_code(&body)), (StatusCode::CONFLICT, "already_finished"));
    let (status, body) =
        call(&rt, Method::POST, "/api/v1/workers/executions/0191f0a0-0000-7000-8000-000000000000/cancel", "").await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "unknown_execution"));
    assert_eq!(rt.queue().stats().await.unwrap().delayed, 0);
}

#[tokio::test]
async fn topics_can_be_paused_and_resumed() {
    let rt = runtime().await;
    rt.enqueue(charge::enqueue(Charge { order_id: "o".into(), amount_cents: 1 })).await.unwrap();
    let topic = |topics: &Value, name: &str| {
        topics.as_array().unwrap().iter().find(|t| t["topic"] == name).cloned().unwrap_or(Value::Null)
    };
    let (status, topics) = call(&rt, Method::GET, "/api/v1/workers/topics", "").await;
    assert_eq!(status, StatusCode::OK);
    let payments = topic(&topics, "payments");
    assert_eq!((payments["paused"].as_bool(), payments["ready"].as_u64()), (Some(false), Some(1)), "{topics}");
    assert_eq!(topic(&topics, "default")["ready"], 0, "{topics}");
    let (status, body) = call(&rt, Method::POST, "/api/v1/workers/topics/payments/pause", "").await;
    assert_eq!((status, body["paused"].as_bool()), (StatusCode::OK, Some(true)));
    let (_, topics) = call(&rt, Method::GET, "/api/v1/workers/topics", "").await;
    assert_eq!(topic(&topics, "payments")["paused"], true, "{topics}");
    let (status, body) = call(&rt, Method::POST, "/api/v1/workers/topics/payments/resume", "").await;
    assert_eq!((status, body["paused"].as_bool()), (StatusCode::OK, Some(false)));
    assert!(rt.paused_topics().is_empty());
}

#[tokio::test]
async fn topics_show_what_this_process_finished_in_the_last_minute() {
    let rt = runtime().await;
    let workers = rt.spawn_workers();
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(rt.enqueue(charge::enqueue(Charge { order_id: format!("o{n}"), amount_cents: 1 })).await.unwrap());
    }
    ids.push(rt.enqueue(broken::enqueue()).await.unwrap());
    for receipt in ids {
        let r = rt.wait_for(receipt.execution_id, Duration::from_secs(10)).await.unwrap().unwrap();
        assert!(r.status.is_final(), "{r:?}");
    }
    workers.stop().await;
    let (status, topics) = call(&rt, Method::GET, "/api/v1/workers/topics", "").await;
    assert_eq!(status, StatusCode::OK);
    let throughput = |name: &str| {
        topics.as_array().unwrap().iter().find(|t| t["topic"] == name).map(|t| t["throughput"].clone()).unwrap()
    };
    // Three charges succeeded on `payments`; the broken job went dead on `default`.
    assert_eq!(throughput("payments"), json!({ "windowSeconds": 60, "finished": 3, "perSecond": 0.05 }), "{topics}");
    assert_eq!(throughput("default")["finished"], 1, "{topics}");
    // The store-wide count (what the CLI's `topics` shows) agrees.
    let finished = rt.finished_per_topic(Duration::from_secs(60)).await.unwrap();
    assert_eq!((finished.get("payments"), finished.get("default")), (Some(&3), Some(&1)));
}
