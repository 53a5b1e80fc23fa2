//! The typed queue and its consumer (`queue::typed`), against the memory and embedded
//! backends and a real Redis: schema checks on enqueue and on claim, the invalid-payload
//! policies, and the consumer's concurrency, retries, panics, lease extension and stop.
//!
//! `cargo test -p netscript-runtime --features redis --test typed_queue`

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use netscript_runtime::Backoff;
use netscript_runtime::queue::typed::{ConsumeReport, OnInvalid, TypedQueue, TypedQueueError};
use netscript_runtime::queue::{NewMessage, Queue, QueueStats};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// What a test keeps alive while its backend is in use (a directory, a Redis namespace).
type Guard = Option<Box<dyn std::any::Any + Send>>;

const TOPIC: &str = "orders";
const LEASE: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Order {
    #[schemars(range(min = 1))]
    n: u32,
    #[schemars(length(min = 1, max = 20))]
    name: String,
}

fn order(n: u32) -> Order {
    Order { n, name: format!("order-{n}") }
}

fn typed(q: &Arc<dyn Queue>) -> TypedQueue<Order> {
    TypedQueue::new(Arc::clone(q), TOPIC).unwrap()
}

/// A payload written past the typed queue, as another producer would.
async fn raw_enqueue(q: &Arc<dyn Queue>, payload: &str) {
    q.enqueue_one(NewMessage::new(TOPIC, "Order", payload.as_bytes().to_vec())).await.unwrap();
}

async fn stats(q: &Arc<dyn Queue>) -> QueueStats {
    let mut s = q.stats().await.unwrap();
    s.stale_settlements = 0;
    s
}

fn counts(ready: u64, leased: u64, dead: u64) -> QueueStats {
    QueueStats { ready, delayed: 0, leased, dead, stale_settlements: 0 }
}

/// Waits up to 20 s for `done`.
async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Enqueue and claim
// ---------------------------------------------------------------------------------------

async fn round_trip(q: Arc<dyn Queue>) {
    let orders = typed(&q);
    assert_eq!(orders.kind(), "Order");
    orders.enqueue(&order(1)).await.unwrap();
    orders.enqueue_with(&order(2), |m| m.with_priority(5).with_header("correlation-id", "c-2")).await.unwrap();
    let claimed = orders.claim(10, LEASE).await.unwrap();
    let got: Vec<_> = claimed.into_iter().map(Result::unwrap).collect();
    assert_eq!(got.iter().map(|d| d.value.clone()).collect::<Vec<_>>(), [order(2), order(1)], "priority first");
    assert_eq!(got[0].header("correlation-id"), Some("c-2"));
    assert_eq!(got[0].attempt(), 1);
    assert_eq!(got[0].delivery().kind, "Order");
    assert_eq!(stats(&q).await, counts(0, 2, 0));
    for d in got {
        d.ack().await.unwrap();
    }
    assert_eq!(stats(&q).await, counts(0, 0, 0));

    // A named kind, and the options the closure sets.
    let named = typed(&q).with_kind("order.v1");
    let id = named.enqueue_with(&order(3), |m| m.with_idempotency_key("k")).await.unwrap().id();
    assert_eq!(named.enqueue_with(&order(3), |m| m.with_idempotency_key("k")).await.unwrap().id(), id);
    let d = named.claim(10, LEASE).await.unwrap().pop().unwrap().unwrap();
    assert_eq!((d.id(), d.delivery().kind.as_str()), (id, "order.v1"));
    d.ack().await.unwrap();
}

async fn enqueue_json_is_checked(q: Arc<dyn Queue>) {
    let orders = typed(&q);
    let invalid = |e: TypedQueueError| match e {
        TypedQueueError::Invalid { path, reason } => (path, reason),
        other => panic!("not Invalid: {other}"),
    };
    // Wrong type.
    let (path, reason) =
        invalid(orders.enqueue_json(serde_json::json!({ "n": "one", "name": "a" })).await.unwrap_err());
    assert_eq!(path, "/n");
    assert!(reason.contains("integer"), "{reason}");
    // `range(min = 1)`: a u32 of 0 is a valid Rust value but not a valid Order.
    let (path, reason) = invalid(orders.enqueue_json(serde_json::json!({ "n": 0, "name": "a" })).await.unwrap_err());
    assert_eq!(path, "/n");
    assert!(reason.contains("minimum"), "{reason}");
    // `length(min = 1, max = 20)`.
    let long = "x".repeat(21);
    let (path, _) = invalid(orders.enqueue_json(serde_json::json!({ "n": 1, "name": long })).await.unwrap_err());
    assert_eq!(path, "/name");
    // Missing field: the whole object fails.
    let (path, reason) = invalid(orders.enqueue_json(serde_json::json!({ "n": 1 })).await.unwrap_err());
    assert_eq!(path, "");
    assert!(reason.contains("name"), "{reason}");
    // The typed path checks the schema too.
    let (path, _) = invalid(orders.enqueue(&Order { n: 0, name: "a".into() }).await.unwrap_err());
    assert_eq!(path, "/n");
    let err = orders.enqueue(&Order { n: 1, name: String::new() }).await.unwrap_err();
    assert_eq!(err.to_string().split(':').next(), Some("invalid payload at `/name`"));
    assert_eq!(stats(&q).await, counts(0, 0, 0), "nothing invalid was enqueued");

    orders.enqueue_json(serde_json::json!({ "n": 7, "name": "ok" })).await.unwrap();
    let d = orders.claim(1, LEASE).await.unwrap().pop().unwrap().unwrap();
    assert_eq!(d.value, Order { n: 7, name: "ok".into() });
    d.ack().await.unwrap();
}

async fn invalid_on_claim_is_dead_lettered(q: Arc<dyn Queue>) {
    let orders = typed(&q);
    raw_enqueue(&q, r#"{"n":0,"name":"zero"}"#).await;
    orders.enqueue(&order(1)).await.unwrap();
    let got = orders.claim(10, LEASE).await.unwrap();
    assert_eq!(got.len(), 1);
    let d = got.into_iter().next().unwrap().unwrap();
    assert_eq!(d.value, order(1));
    d.ack().await.unwrap();
    assert_eq!(stats(&q).await, counts(0, 0, 1));
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].error.starts_with("payload does not match the schema of Order: /n: "), "{}", dead[0].error);
    assert_eq!(dead[0].message.payload, br#"{"n":0,"name":"zero"}"#);
}

async fn invalid_on_claim_is_discarded(q: Arc<dyn Queue>) {
    let orders = typed(&q).on_invalid(OnInvalid::Discard);
    raw_enqueue(&q, "not json").await;
    raw_enqueue(&q, r#"{"n":1,"name":""}"#).await;
    assert!(orders.claim(10, LEASE).await.unwrap().is_empty());
    assert_eq!(stats(&q).await, counts(0, 0, 0));
    assert!(q.dead_letters(10).await.unwrap().is_empty());
}

async fn invalid_on_claim_is_returned(q: Arc<dyn Queue>) {
    let orders = typed(&q).on_invalid(OnInvalid::Error);
    raw_enqueue(&q, r#"{"n":"x","name":"a"}"#).await;
    let invalid = orders.claim(10, LEASE).await.unwrap().pop().unwrap().unwrap_err();
    assert_eq!(invalid.path(), "/n");
    assert_eq!(invalid.delivery().payload, br#"{"n":"x","name":"a"}"#);
    assert_eq!(stats(&q).await, counts(0, 1, 0), "handed over still leased");
    invalid.release().await.unwrap();
    assert_eq!(stats(&q).await, counts(1, 0, 0), "released: not lost");
    let again = orders.claim(10, LEASE).await.unwrap().pop().unwrap().unwrap_err();
    assert_eq!(again.delivery().attempt, 1, "a release does not count");
    let message = again.to_string();
    again.dead_letter().await.unwrap();
    assert_eq!(stats(&q).await, counts(0, 0, 1));
    assert_eq!(q.dead_letters(10).await.unwrap()[0].error, message);
}

// ---------------------------------------------------------------------------------------
// The consumer
// ---------------------------------------------------------------------------------------

/// Runs `consumer` in a task; stops it when `done` holds, and returns its report.
async fn run_until<Fut>(
    consume: impl FnOnce(CancellationToken) -> Fut,
    what: &str,
    done: impl AsyncFnMut() -> bool,
) -> ConsumeReport
where
    Fut: Future<Output = ConsumeReport> + Send + 'static,
{
    let stop = CancellationToken::new();
    let task = tokio::spawn(consume(stop.clone()));
    eventually(what, done).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task).await.expect("the consumer stops").unwrap()
}

async fn consumer_bounds_its_concurrency(q: Arc<dyn Queue>) {
    let orders = typed(&q);
    for n in 1..=24 {
        orders.enqueue(&order(n)).await.unwrap();
    }
    let (now, max, seen) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (h_now, h_max, h_seen) = (Arc::clone(&now), Arc::clone(&max), Arc::clone(&seen));
    let handler = move |o: Order| {
        let (now, max, seen) = (Arc::clone(&h_now), Arc::clone(&h_max), Arc::clone(&h_seen));
        async move {
            let running = now.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(running, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(40)).await;
            now.fetch_sub(1, Ordering::SeqCst);
            seen.fetch_add(o.n as usize, Ordering::SeqCst);
            Ok::<(), String>(())
        }
    };
    let qq = Arc::clone(&q);
    let report = run_until(
        move |stop| orders.consumer().concurrency(3).run(handler, stop),
        "24 messages",
        async || stats(&qq).await == counts(0, 0, 0),
    )
    .await;
    assert_eq!(report, ConsumeReport { processed: 24, ..ConsumeReport::default() });
    assert_eq!(seen.load(Ordering::SeqCst), (1..=24).sum::<usize>(), "each once");
    let max = max.load(Ordering::SeqCst);
    assert!((2..=3).contains(&max), "at most 3 at once, and in parallel: {max}");
}

async fn consumer_retries_then_dead_letters(q: Arc<dyn Queue>) {
    let orders = typed(&q);
    orders.enqueue(&order(1)).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let handler = move |_: Order| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        async move { Err::<(), String>(format!("boom {n}")) }
    };
    let qq = Arc::clone(&q);
    let report = run_until(
        move |stop| orders.consumer().retries(2).backoff(Backoff::Fixed(Duration::from_millis(20))).run(handler, stop),
        "the dead letter",
        async || stats(&qq).await.dead == 1,
    )
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 3, "one attempt and two retries");
    assert_eq!(report, ConsumeReport { processed: 0, failed: 3, dead_lettered: 1, invalid: 0 });
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead[0].error, "boom 3");
    assert_eq!(dead[0].message.attempt, 3);
    assert_eq!(stats(&q).await, counts(0, 0, 1));
}

async fn consumer_catches_a_panic(q: Arc<dyn Queue>) {
    let orders = typed(&q);
    orders.enqueue(&order(1)).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let handler = move |_: Order| {
        let call = c.fetch_add(1, Ordering::SeqCst) + 1;
        assert!(call != 2, "the second attempt panics before it has a future");
        async move {
            assert!(call != 1, "the first attempt panics while it runs");
            Ok::<(), String>(())
        }
    };
    let qq = Arc::clone(&q);
    let report = run_until(
        move |stop| orders.consumer().backoff(Backoff::Fixed(Duration::from_millis(20))).run(handler, stop),
        "the third attempt to succeed",
        async || stats(&qq).await == counts(0, 0, 0),
    )
    .await;
    assert_eq!(report, ConsumeReport { processed: 1, failed: 2, dead_lettered: 0, invalid: 0 });
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

async fn consumer_extends_leases(q: Arc<dyn Queue>) {
    let orders = typed(&q);
    for n in 1..=3 {
        orders.enqueue(&order(n)).await.unwrap();
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let handler = move |_: Order| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<(), String>(())
        }
    };
    let qq = Arc::clone(&q);
    // A free slot keeps it claiming while the three run: a lapsed lease would be claimed again.
    let report = run_until(
        move |stop| orders.consumer().concurrency(4).lease(Duration::from_millis(300)).run(handler, stop),
        "three slow handlers",
        async || stats(&qq).await == counts(0, 0, 0),
    )
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 3, "none delivered twice");
    assert_eq!(report, ConsumeReport { processed: 3, ..ConsumeReport::default() });
    // No `stale_settlements == 0` check: a heartbeat may extend a lease the handler's ack
    // settles at the same moment, which the backend counts as stale; harmless, and not a lapse.
}

async fn consumer_stops_cleanly(q: Arc<dyn Queue>) {
    let orders = typed(&q);
    raw_enqueue(&q, r#"{"n":1}"#).await;
    for n in 1..=5 {
        orders.enqueue_with(&order(n), |m| m.with_priority(-1)).await.unwrap();
    }
    let started = Arc::new(AtomicUsize::new(0));
    let s = Arc::clone(&started);
    let handler = move |_: Order| {
        s.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok::<(), String>(())
        }
    };
    let report = run_until(
        move |stop| orders.consumer().concurrency(2).run(handler, stop),
        "two running",
        async || started.load(Ordering::SeqCst) == 2,
    )
    .await;
    // The two running ones finished; the rest were never claimed.
    assert_eq!(report, ConsumeReport { processed: 2, failed: 0, dead_lettered: 0, invalid: 1 });
    assert_eq!(stats(&q).await, counts(3, 0, 1));
    assert!(q.dead_letters(1).await.unwrap()[0].error.contains("payload does not match the schema of Order"));
}

// ---------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------

macro_rules! cases {
    ($backend:ident: $make:path) => {
        mod $backend {
            use super::*;
            cases!(@each $make; round_trip, enqueue_json_is_checked, invalid_on_claim_is_dead_lettered,
                invalid_on_claim_is_discarded, invalid_on_claim_is_returned, consumer_bounds_its_concurrency,
                consumer_retries_then_dead_letters, consumer_catches_a_panic, consumer_extends_leases,
                consumer_stops_cleanly);
        }
    };
    (@each $make:path; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (q, _guard) = $make().await;
                super::$case(q).await;
            }
        )*
    };
}

async fn memory_queue() -> (Arc<dyn Queue>, Guard) {
    (Arc::new(netscript_runtime::queue::memory::MemoryQueue::new()), None)
}

cases!(memory: memory_queue);

#[cfg(feature = "embedded")]
async fn embedded_queue() -> (Arc<dyn Queue>, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(netscript_runtime::embedded::EmbeddedDb::open(dir.path()).unwrap());
    (Arc::new(netscript_runtime::queue::embedded::EmbeddedQueue::new(db, "jobs")), Some(Box::new(dir)))
}

#[cfg(feature = "embedded")]
cases!(embedded: embedded_queue);

#[cfg(feature = "redis")]
#[path = "support/redis_namespace.rs"]
mod redis_namespace;

#[cfg(feature = "redis")]
async fn redis_queue() -> (Arc<dyn Queue>, Guard) {
    let namespace = redis_namespace::Namespace::new();
    let db = namespace.db().await;
    (Arc::new(netscript_runtime::queue::redis::RedisQueue::new(db, "jobs")), Some(Box::new(namespace)))
}

#[cfg(feature = "redis")]
cases!(redis: redis_queue);
