//! `#[webhook]` over real HTTP: requests signed the way common providers sign them (GitHub's
//! `X-Hub-Signature-256: sha256=<hex>`, a Stripe-like signed timestamp with base64), a bad
//! signature and a replay refused (401), a malformed body (400), a payload a job refuses (422),
//! a redelivery that enqueues nothing new, an unverified webhook, a retryable failure (503) and
//! a panicking handler (500, the server serving on), and the startup errors.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use netscript::cron::{DateTime, Utc};
use netscript::prelude::*;
use netscript::scheduler::{Clock, ManualClock};
use netscript::webhook::sign_hex;
use netscript::{ExecutionStatus, QueueProvider, StartupError};
use serde_json::Value;

mod support;

const SECRET: &str = "whsec_0123456789";

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
struct Payment {
    order_id: String,
    amount_cents: u64,
}

/// Charges an order.
#[job(id = "charge-order", retries = 0)]
async fn charge_order(payment: Payment) -> JobResult<String> {
    Ok(format!("{}:{}", payment.order_id, payment.amount_cents))
}

/// GitHub-style: `X-Hub-Signature-256: sha256=<hex>` over the body.
#[webhook(
    id = "payment-webhook",
    path = "/webhooks/payment",
    verifier = "hmac-sha256",
    secret_env = "NETSCRIPT_TEST_WEBHOOK_SECRET",
    header = "X-Hub-Signature-256",
    tags = ["payments"]
)]
async fn payment_webhook(event: WebhookEvent<Payment>) -> Vec<Action> {
    let key = format!("order:{}", event.body.order_id);
    vec![charge_order::enqueue(event.body).idempotency_key(key).into()]
}

/// Stripe-like: a signed timestamp, base64 signature, a one-minute window.
#[webhook(
    id = "signed-webhook",
    path = "/webhooks/signed",
    verifier = "hmac-sha256",
    secret_env = "NETSCRIPT_TEST_WEBHOOK_SECRET",
    header = "X-Signature",
    timestamp_header = "X-Timestamp",
    tolerance = "1m"
)]
async fn signed_webhook(event: WebhookEvent<Payment>) -> JobResult<Vec<Action>> {
    if event.body.amount_cents == 0 {
        return Err(JobError::fatal("nothing to charge"));
    }
    Ok(vec![charge_order::enqueue(event.body).into()])
}

/// No verification at all.
#[webhook(id = "open-webhook", path = "/webhooks/open", verifier = "none")]
async fn open_webhook(event: WebhookEvent<Value>) -> Vec<Action> {
    // A payload the job refuses: the call answers 422.
    vec![Action::enqueue_json("charge-order", event.body, Default::default())]
}

/// Fails on purpose: `{"fail": "retry"}` is a retryable failure, `{"fail": "panic"}` panics.
#[webhook(id = "failing-webhook", path = "/webhooks/failing", verifier = "none")]
async fn failing_webhook(event: WebhookEvent<Value>) -> JobResult<Vec<Action>> {
    match event.body["fail"].as_str() {
        Some("retry") => Err(JobError::retryable("the ledger is busy")),
        Some("panic") => panic!("the webhook function fell over"),
        _ => Ok(Vec::new()),
    }
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

async fn serve(
    clock: Arc<ManualClock>,
) -> (
    Runtime,
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<netscript::worker::WorkerReport>,
) {
    let rt = Runtime::builder()
        .ignore_env()
        .provider(QueueProvider::Memory)
        .webhook_secret("NETSCRIPT_TEST_WEBHOOK_SECRET", SECRET)
        .clock(clock)
        .schedules(vec![])
        .build()
        .await
        .unwrap();
    let (addr, tx, server) = support::http::serve(&rt, true).await;
    (rt, addr, tx, server)
}

async fn post(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
    support::http::request(addr, "POST", path, headers, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_calls_enqueue_and_bad_ones_are_refused() {
    let clock = Arc::new(ManualClock::new(at("2026-06-01T12:00:00Z")));
    let (rt, addr, stop, server) = serve(clock.clone()).await;

    // GitHub-style signature: accepted, the job runs.
    let body = br#"{"order_id":"o-1","amount_cents":1250}"#;
    let signature = format!("sha256={}", sign_hex(SECRET.as_bytes(), None, body));
    let (status, answer) = post(addr, "/webhooks/payment", &[("X-Hub-Signature-256", &signature)], body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!((answer["webhook"].as_str(), answer["duplicates"].as_u64()), (Some("payment-webhook"), Some(0)));
    let id = answer["executionIds"][0].as_str().unwrap().parse().unwrap();
    let record = rt.wait_for(id, Duration::from_secs(10)).await.unwrap().unwrap();
    assert_eq!((record.status, record.result), (ExecutionStatus::Succeeded, Some(Value::from("o-1:1250"))));

    // The provider redelivers: the idempotency key collapses it onto the same execution.
    let (status, again) = post(addr, "/webhooks/payment", &[("X-Hub-Signature-256", &signature)], body).await;
    assert_eq!((status, again["duplicates"].as_u64()), (202, Some(1)), "{again}");
    assert_eq!(again["executionIds"][0], answer["executionIds"][0]);

    // A wrong secret, a tampered body, no signature: 401, nothing enqueued.
    let forged = format!("sha256={}", sign_hex(b"not the secret", None, body));
    for (headers, body) in [
        (vec![("X-Hub-Signature-256", forged.as_str())], &body[..]),
        (vec![("X-Hub-Signature-256", signature.as_str())], &br#"{"order_id":"o-1","amount_cents":1}"#[..]),
        (vec![], &body[..]),
    ] {
        let (status, error) = post(addr, "/webhooks/payment", &headers, body).await;
        assert_eq!((status, error["error"]["code"].as_str()), (401, Some("invalid_signature")), "{error}");
    }

    // A well-signed body that is not a payment: 400, naming the field.
    let bad = br#"{"order_id":"o-2"}"#;
    let signature = format!("sha256={}", sign_hex(SECRET.as_bytes(), None, bad));
    let (status, error) = post(addr, "/webhooks/payment", &[("X-Hub-Signature-256", &signature)], bad).await;
    assert_eq!((status, error["error"]["code"].as_str()), (400, Some("malformed_body")), "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("amount_cents"), "{error}");

    let executions = rt.store().list(&Default::default()).await.unwrap();
    assert_eq!(executions.len(), 1, "only the first call enqueued");

    // The OpenAPI document types each webhook's body, and stays valid.
    let (status, doc) = support::http::request(addr, "GET", "/api/v1/openapi.json", &[], b"").await;
    assert_eq!(status, 200);
    let hook = &doc["paths"]["/webhooks/payment"]["post"];
    let body = &hook["requestBody"]["content"]["application/json"]["schema"];
    assert!(body["properties"]["amount_cents"].is_object(), "{hook}");
    assert_eq!(hook["security"], serde_json::json!([]));
    support::http::check_openapi(&doc);
    stop.send(()).unwrap();
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_timestamp_stops_replays() {
    let clock = Arc::new(ManualClock::new(at("2026-06-01T12:00:00Z")));
    let (_rt, addr, stop, server) = serve(clock.clone()).await;
    let body = br#"{"order_id":"o-7","amount_cents":99}"#;
    let signed_at = clock.now().timestamp() - 20;
    let hex = sign_hex(SECRET.as_bytes(), Some(signed_at), body);
    let raw: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
    let signature = base64::engine::general_purpose::STANDARD.encode(raw);
    let timestamp = signed_at.to_string();
    let headers = [("X-Signature", signature.as_str()), ("X-Timestamp", timestamp.as_str())];
    let (status, answer) = post(addr, "/webhooks/signed", &headers, body).await;
    assert_eq!(status, 202, "{answer}");

    // Captured and sent again five minutes later: outside the one-minute window.
    clock.advance(Duration::from_secs(300));
    let (status, error) = post(addr, "/webhooks/signed", &headers, body).await;
    assert_eq!((status, error["error"]["code"].as_str()), (401, Some("invalid_signature")), "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("replay"), "{error}");

    // The function refuses the call for good: 422.
    let zero = br#"{"order_id":"o-8","amount_cents":0}"#;
    let now = clock.now().timestamp().to_string();
    let hex = sign_hex(SECRET.as_bytes(), Some(clock.now().timestamp()), zero);
    let (status, error) = post(addr, "/webhooks/signed", &[("X-Signature", &hex), ("X-Timestamp", &now)], zero).await;
    assert_eq!((status, error["error"]["code"].as_str()), (422, Some("webhook_failed")), "{error}");
    stop.send(()).unwrap();
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_webhook_skips_the_bearer_token_and_a_refused_payload_is_422() {
    let clock = Arc::new(ManualClock::new(at("2026-06-01T12:00:00Z")));
    let rt = Runtime::builder()
        .ignore_env()
        .provider(QueueProvider::Memory)
        .webhook_secret("NETSCRIPT_TEST_WEBHOOK_SECRET", SECRET)
        .configure(|c| c.api_token = Some(netscript::config::ApiToken::new("token")))
        .clock(clock)
        .build()
        .await
        .unwrap();
    let (addr, tx, server) = support::http::serve(&rt, false).await;
    // No bearer token needed for a webhook; the job refuses the payload.
    let (status, error) = post(addr, "/webhooks/open", &[], br#"{"order_id": 5}"#).await;
    assert_eq!((status, error["error"]["code"].as_str()), (422, Some("webhook_failed")), "{error}");
    // Every other route still wants the token.
    let (status, _) = support::http::request(addr, "GET", "/api/v1/workers/jobs", &[], b"").await;
    assert_eq!(status, 401);
    tx.send(()).unwrap();
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_failure_is_503_and_a_panic_is_500_and_the_server_serves_on() {
    let clock = Arc::new(ManualClock::new(at("2026-06-01T12:00:00Z")));
    let (_rt, addr, stop, server) = serve(clock).await;
    let (status, error) = post(addr, "/webhooks/failing", &[], br#"{"fail": "retry"}"#).await;
    assert_eq!((status, error["error"]["code"].as_str()), (503, Some("webhook_failed")), "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("the ledger is busy"), "{error}");
    let (status, error) = post(addr, "/webhooks/failing", &[], br#"{"fail": "panic"}"#).await;
    assert_eq!((status, error["error"]["code"].as_str()), (500, Some("webhook_panicked")), "{error}");
    // The panic took neither the connection handling nor the server down.
    let (status, answer) = post(addr, "/webhooks/failing", &[], br#"{}"#).await;
    assert_eq!((status, answer["executionIds"].as_array().map(Vec::len)), (202, Some(0)), "{answer}");
    let (status, _) = support::http::request(addr, "GET", "/health", &[], b"").await;
    assert_eq!(status, 200);
    stop.send(()).unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_missing_secret_stops_startup_naming_the_variable() {
    let e = Runtime::builder().ignore_env().provider(QueueProvider::Memory).build().await.err().unwrap();
    assert!(matches!(e, StartupError::Webhooks(_)), "{e}");
    assert!(e.to_string().contains("`NETSCRIPT_TEST_WEBHOOK_SECRET`, which is not set"), "{e}");
}

#[tokio::test]
async fn webhooks_register_at_link_time() {
    let ids: Vec<&str> = netscript::webhook::WEBHOOKS.iter().map(|w| w.id).collect();
    assert_eq!(ids.len(), 4);
    for id in ["payment-webhook", "signed-webhook", "open-webhook", "failing-webhook"] {
        assert!(ids.contains(&id), "{ids:?}");
    }
    let payment = netscript::webhook::WEBHOOKS.iter().find(|w| w.id == "payment-webhook").unwrap();
    assert_eq!((payment.path, payment.body_type, payment.tags), ("/webhooks/payment", "Payment", &["payments"][..]));
    assert_eq!(payment.description, "GitHub-style: `X-Hub-Signature-256: sha256=<hex>` over the body.");
}
