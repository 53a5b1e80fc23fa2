//! The backend conformance suite: every case is written once, as an async function over
//! `Arc<dyn Queue>` or `Arc<dyn Kv>`, and instantiated for each backend by
//! [`conformance!`], which makes one `#[tokio::test]` per case and backend.
//!
//! Timing: cases that wait for time to pass (delays, leases, TTLs, windows) use short
//! durations and generous sleeps, and never assert an upper bound tighter than seconds.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netscript_runtime::kv::{AtomicWrite, Key, Kv, KvEvent, ListOptions, Versionstamp};
use netscript_runtime::queue::{ClaimRequest, Delivery, Enqueued, NewMessage, Queue, Settled, Settlement};

/// What a test must keep alive while its backend is in use (a temporary directory).
type Guard = Option<Box<dyn std::any::Any + Send>>;

const LONG_LEASE: Duration = Duration::from_secs(60);

fn msg(topic: &str, kind: &str) -> NewMessage {
    NewMessage::new(topic, kind, kind.as_bytes().to_vec())
}

fn request(max: usize) -> ClaimRequest {
    ClaimRequest { topics: Vec::new(), max, lease: LONG_LEASE }
}

async fn claim(q: &Arc<dyn Queue>, max: usize) -> Vec<Delivery> {
    q.claim(request(max)).await.unwrap()
}

fn kinds(ds: &[Delivery]) -> Vec<&str> {
    ds.iter().map(|d| d.kind.as_str()).collect()
}

async fn ack_all(q: &Arc<dyn Queue>, ds: &[Delivery]) {
    let out = q.settle(ds.iter().map(|d| Settlement::Ack(d.lease)).collect()).await.unwrap();
    assert!(out.iter().all(|s| *s == Settled::Ok), "{out:?}");
}

// ---------------------------------------------------------------------------------------
// Queue cases
// ---------------------------------------------------------------------------------------

async fn queue_priority_then_fifo(q: Arc<dyn Queue>) {
    let out = q
        .enqueue(vec![
            msg("t", "a").with_priority(0),
            msg("t", "b").with_priority(5),
            msg("t", "c").with_priority(0),
            msg("t", "d").with_priority(5),
            msg("t", "e").with_priority(-1),
        ])
        .await
        .unwrap();
    assert_eq!(out.len(), 5);
    assert!(out.iter().all(|e| matches!(e, Enqueued::Created(_))));
    q.enqueue_one(msg("t", "f").with_priority(0)).await.unwrap();
    let first = claim(&q, 3).await;
    assert_eq!(kinds(&first), ["b", "d", "a"]);
    let rest = claim(&q, 10).await;
    assert_eq!(kinds(&rest), ["c", "f", "e"]);
    assert!(claim(&q, 10).await.is_empty());
    let d = &first[0];
    assert_eq!(d.attempt, 1);
    assert_eq!(d.topic, "t");
    assert_eq!(d.payload, b"b");
    assert_eq!(d.priority, 5);
    assert_eq!(d.lease.message_id, d.id);
    assert_eq!(d.id, out[1].id());
}

async fn queue_delivery_carries_the_message(q: Arc<dyn Queue>) {
    let m = NewMessage::new("mail", "send", b"{\"to\":1}".to_vec())
        .with_header("correlation-id", "c-1")
        .with_header("traceparent", "00-abc-def-01")
        .with_priority(3)
        .with_idempotency_key("idem")
        .with_concurrency_key("conc");
    let id = m.id;
    let before = netscript_runtime::time::Timestamp::now();
    assert_eq!(q.enqueue_one(m).await.unwrap(), Enqueued::Created(id));
    let d = claim(&q, 1).await.remove(0);
    assert_eq!(d.id, id);
    assert_eq!(d.kind, "send");
    assert_eq!(d.payload, b"{\"to\":1}");
    assert_eq!(d.header("correlation-id"), Some("c-1"));
    assert_eq!(d.header("traceparent"), Some("00-abc-def-01"));
    assert_eq!(d.headers.len(), 2);
    assert_eq!(d.idempotency_key.as_deref(), Some("idem"));
    assert_eq!(d.concurrency_key.as_deref(), Some("conc"));
    assert_eq!(d.last_error, None);
    assert!(d.enqueued_at >= before && d.enqueued_at <= netscript_runtime::time::Timestamp::now());
}

async fn queue_delay_hides_then_shows(q: Arc<dyn Queue>) {
    q.enqueue_one(msg("t", "later").with_delay(Duration::from_millis(300))).await.unwrap();
    q.enqueue_one(msg("t", "now")).await.unwrap();
    let s = q.stats().await.unwrap();
    assert_eq!((s.ready, s.delayed), (1, 1));
    assert_eq!(kinds(&claim(&q, 10).await), ["now"]);
    assert!(claim(&q, 10).await.is_empty());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let s = q.stats().await.unwrap();
    assert_eq!((s.ready, s.delayed), (1, 0));
    assert_eq!(kinds(&claim(&q, 10).await), ["later"]);
}

async fn queue_idempotency_collapses(q: Arc<dyn Queue>) {
    let first = q.enqueue_one(msg("t", "a").with_idempotency_key("k")).await.unwrap();
    let Enqueued::Created(id) = first else { panic!("{first:?}") };
    // Pending.
    assert_eq!(q.enqueue_one(msg("t", "b").with_idempotency_key("k")).await.unwrap(), Enqueued::Duplicate(id));
    // Within one batch.
    let out = q
        .enqueue(vec![msg("t", "c").with_idempotency_key("k2"), msg("t", "d").with_idempotency_key("k2")])
        .await
        .unwrap();
    assert!(matches!(out[0], Enqueued::Created(_)));
    assert_eq!(out[1], Enqueued::Duplicate(out[0].id()));
    // Leased.
    let ds = claim(&q, 10).await;
    assert_eq!(kinds(&ds), ["a", "c"]);
    assert_eq!(q.enqueue_one(msg("t", "e").with_idempotency_key("k")).await.unwrap(), Enqueued::Duplicate(id));
    // Acked, within the window (the default: 24 h).
    ack_all(&q, &ds).await;
    assert_eq!(q.enqueue_one(msg("t", "f").with_idempotency_key("k")).await.unwrap(), Enqueued::Duplicate(id));
    assert_eq!(q.stats().await.unwrap().ready, 0);
    // Dead.
    let g = q.enqueue_one(msg("t", "g").with_idempotency_key("dead")).await.unwrap();
    let d = claim(&q, 1).await.remove(0);
    q.settle_one(Settlement::DeadLetter { lease: d.lease, error: "x".into() }).await.unwrap();
    assert_eq!(q.enqueue_one(msg("t", "h").with_idempotency_key("dead")).await.unwrap(), Enqueued::Duplicate(g.id()));
    // Messages without a key never collapse.
    let a = q.enqueue_one(msg("t", "x")).await.unwrap();
    let b = q.enqueue_one(msg("t", "x")).await.unwrap();
    assert!(matches!((a, b), (Enqueued::Created(_), Enqueued::Created(_))));
    assert_ne!(a.id(), b.id());
}

/// Runs with an idempotency window of [`SHORT_WINDOW`].
async fn queue_idempotency_window_expires(q: Arc<dyn Queue>) {
    let first = q.enqueue_one(msg("t", "a").with_idempotency_key("k")).await.unwrap();
    let ds = claim(&q, 1).await;
    ack_all(&q, &ds).await;
    tokio::time::sleep(SHORT_WINDOW * 4).await;
    let again = q.enqueue_one(msg("t", "b").with_idempotency_key("k")).await.unwrap();
    let Enqueued::Created(id) = again else { panic!("{again:?}") };
    assert_ne!(id, first.id());
    assert_eq!(kinds(&claim(&q, 1).await), ["b"]);
    // The new message holds the key again.
    assert_eq!(q.enqueue_one(msg("t", "c").with_idempotency_key("k")).await.unwrap(), Enqueued::Duplicate(id));
}

const SHORT_WINDOW: Duration = Duration::from_millis(150);

async fn queue_concurrency_key_exclusive(q: Arc<dyn Queue>) {
    q.enqueue(vec![
        msg("t", "k1-a").with_concurrency_key("k1"),
        msg("t", "k1-b").with_concurrency_key("k1"),
        msg("t", "k2-a").with_concurrency_key("k2"),
        msg("t", "free"),
        msg("t", "k1-c").with_concurrency_key("k1"),
    ])
    .await
    .unwrap();
    // Within a batch: one per key.
    let first = claim(&q, 10).await;
    assert_eq!(kinds(&first), ["k1-a", "k2-a", "free"]);
    // Across claims: a leased key blocks.
    assert!(claim(&q, 10).await.is_empty());
    // Ack releases the key, and the next of that key (in order) becomes claimable.
    q.settle_one(Settlement::Ack(first[0].lease)).await.unwrap();
    let second = claim(&q, 10).await;
    assert_eq!(kinds(&second), ["k1-b"]);
    assert!(claim(&q, 10).await.is_empty());
    // Retry releases it too.
    q.settle_one(Settlement::Retry { lease: second[0].lease, delay: Duration::ZERO, error: "e".into() }).await.unwrap();
    assert_eq!(kinds(&claim(&q, 10).await), ["k1-c"]);
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.ready, stats.leased), (1, 3));
}

async fn queue_lease_expiry_redelivers(q: Arc<dyn Queue>) {
    q.enqueue_one(msg("t", "a")).await.unwrap();
    let req = ClaimRequest { topics: Vec::new(), max: 1, lease: Duration::from_millis(200) };
    let first = q.claim(req.clone()).await.unwrap().remove(0);
    assert_eq!(first.attempt, 1);
    assert!(q.claim(req.clone()).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let second = q.claim(req).await.unwrap().remove(0);
    assert_eq!(second.id, first.id);
    assert_eq!(second.attempt, 2);
    assert_eq!(second.lease.token, first.lease.token + 1);
    // The old holder is fenced off; the new one is not.
    assert_eq!(q.settle_one(Settlement::Ack(first.lease)).await.unwrap(), Settled::Stale);
    assert_eq!(q.settle_one(Settlement::Ack(second.lease)).await.unwrap(), Settled::Ok);
}

async fn queue_lapsed_lease_frees_concurrency_key(q: Arc<dyn Queue>) {
    q.enqueue(vec![msg("t", "a").with_concurrency_key("k"), msg("t", "b").with_concurrency_key("k")]).await.unwrap();
    let short = ClaimRequest { topics: Vec::new(), max: 10, lease: Duration::from_millis(200) };
    assert_eq!(kinds(&q.claim(short.clone()).await.unwrap()), ["a"]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The lapsed lease no longer holds the key: `b` (visible since it was enqueued, before
    // `a` became visible again) is claimed, and `a` waits behind the key.
    let again = q.claim(short.clone()).await.unwrap();
    assert_eq!(kinds(&again), ["b"]);
    assert_eq!(again[0].attempt, 1);
    q.settle_one(Settlement::Ack(again[0].lease)).await.unwrap();
    let last = q.claim(short).await.unwrap();
    assert_eq!(kinds(&last), ["a"]);
    assert_eq!(last[0].attempt, 2);
}

async fn queue_stale_settlements_refused_and_counted(q: Arc<dyn Queue>) {
    q.enqueue_one(msg("t", "a")).await.unwrap();
    let d = claim(&q, 1).await.remove(0);
    let forged = netscript_runtime::queue::Lease { message_id: d.id, token: d.lease.token + 7 };
    let unknown = netscript_runtime::queue::Lease { message_id: netscript_runtime::queue::MessageId::new(), token: 1 };
    let out = q
        .settle(vec![
            Settlement::Ack(forged),
            Settlement::Retry { lease: forged, delay: Duration::ZERO, error: "e".into() },
            Settlement::DeadLetter { lease: unknown, error: "e".into() },
            Settlement::Release(forged),
        ])
        .await
        .unwrap();
    assert_eq!(out, [Settled::Stale; 4]);
    assert_eq!(q.extend(&[forged, unknown], LONG_LEASE).await.unwrap(), [Settled::Stale, Settled::Stale]);
    assert_eq!(q.stats().await.unwrap().stale_settlements, 6);
    // The real lease still works, once.
    assert_eq!(q.settle_one(Settlement::Ack(d.lease)).await.unwrap(), Settled::Ok);
    assert_eq!(q.settle_one(Settlement::Ack(d.lease)).await.unwrap(), Settled::Stale);
    assert_eq!(q.extend(&[d.lease], LONG_LEASE).await.unwrap(), [Settled::Stale]);
    let s = q.stats().await.unwrap();
    assert_eq!(s.stale_settlements, 8);
    assert_eq!((s.ready, s.leased, s.delayed, s.dead), (0, 0, 0, 0));
}

async fn queue_extend_keeps_lease(q: Arc<dyn Queue>) {
    q.enqueue_one(msg("t", "a")).await.unwrap();
    let req = ClaimRequest { topics: Vec::new(), max: 1, lease: Duration::from_millis(300) };
    let d = q.claim(req.clone()).await.unwrap().remove(0);
    assert_eq!(q.extend(&[d.lease], Duration::from_secs(30)).await.unwrap(), [Settled::Ok]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(q.claim(req).await.unwrap().is_empty());
    assert_eq!(q.stats().await.unwrap().leased, 1);
    assert_eq!(q.settle_one(Settlement::Ack(d.lease)).await.unwrap(), Settled::Ok);
    assert_eq!(q.stats().await.unwrap().stale_settlements, 0);
}

async fn queue_retry_with_delay_and_error(q: Arc<dyn Queue>) {
    q.enqueue_one(msg("t", "a")).await.unwrap();
    let d = claim(&q, 1).await.remove(0);
    let out = q
        .settle_one(Settlement::Retry { lease: d.lease, delay: Duration::from_millis(300), error: "boom".into() })
        .await
        .unwrap();
    assert_eq!(out, Settled::Ok);
    let s = q.stats().await.unwrap();
    assert_eq!((s.ready, s.delayed, s.leased), (0, 1, 0));
    assert!(claim(&q, 1).await.is_empty());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let again = claim(&q, 1).await.remove(0);
    assert_eq!(again.id, d.id);
    assert_eq!(again.attempt, 2);
    assert_eq!(again.last_error.as_deref(), Some("boom"));
    // A retry without delay is claimable at once.
    q.settle_one(Settlement::Retry { lease: again.lease, delay: Duration::ZERO, error: "bang".into() }).await.unwrap();
    let third = claim(&q, 1).await.remove(0);
    assert_eq!(third.attempt, 3);
    assert_eq!(third.last_error.as_deref(), Some("bang"));
}

async fn queue_cancel_removes_waiting_messages_only(q: Arc<dyn Queue>) {
    use netscript_runtime::queue::Cancelled;
    let ready = msg("t", "ready").with_idempotency_key("k-ready");
    let delayed = msg("t", "delayed").with_delay(Duration::from_secs(60));
    let (ready_id, delayed_id) = (ready.id, delayed.id);
    q.enqueue(vec![ready, delayed, msg("t", "leased")]).await.unwrap();
    assert_eq!(q.cancel(ready_id).await.unwrap(), Cancelled::Removed);
    assert_eq!(q.cancel(delayed_id).await.unwrap(), Cancelled::Removed);
    assert_eq!(q.cancel(ready_id).await.unwrap(), Cancelled::NotFound, "already gone");
    let ds = claim(&q, 10).await;
    assert_eq!(kinds(&ds), ["leased"], "cancelled messages are never delivered");
    assert_eq!(q.cancel(ds[0].id).await.unwrap(), Cancelled::Leased, "a leased message stays with its holder");
    assert_eq!(q.settle_one(Settlement::Ack(ds[0].lease)).await.unwrap(), Settled::Ok);
    assert_eq!(q.cancel(ds[0].id).await.unwrap(), Cancelled::NotFound);
    assert_eq!(q.cancel(netscript_runtime::queue::MessageId::new()).await.unwrap(), Cancelled::NotFound);
    let s = q.stats().await.unwrap();
    assert_eq!((s.ready, s.delayed, s.leased), (0, 0, 0), "{s:?}");
    // The idempotency key of a cancelled message is remembered, as after an ack.
    let again = q.enqueue_one(msg("t", "ready").with_idempotency_key("k-ready")).await.unwrap();
    assert_eq!(again, netscript_runtime::queue::Enqueued::Duplicate(ready_id));
}

async fn queue_topic_stats_count_each_topic(q: Arc<dyn Queue>) {
    q.enqueue(vec![msg("a", "1"), msg("a", "2"), msg("b", "3"), msg("b", "4").with_delay(Duration::from_secs(60))])
        .await
        .unwrap();
    let ds = q.claim(ClaimRequest { topics: vec!["a".into()], max: 1, lease: Duration::from_secs(30) }).await.unwrap();
    assert_eq!(ds.len(), 1);
    let by_topic = q.topic_stats().await.unwrap();
    assert_eq!(by_topic.keys().collect::<Vec<_>>(), ["a", "b"]);
    let (a, b) = (by_topic["a"], by_topic["b"]);
    assert_eq!((a.ready, a.delayed, a.leased, a.dead), (1, 0, 1, 0), "{a:?}");
    assert_eq!((b.ready, b.delayed, b.leased, b.dead), (1, 1, 0, 0), "{b:?}");
    q.settle_one(Settlement::DeadLetter { lease: ds[0].lease, error: "x".into() }).await.unwrap();
    assert_eq!(q.topic_stats().await.unwrap()["a"].dead, 1);
}

async fn queue_taken_ids_are_duplicates(q: Arc<dyn Queue>) {
    // An id twice in one batch: the first counts.
    let first = msg("t", "first");
    let mut twin = msg("t", "twin");
    twin.id = first.id;
    let out = q.enqueue(vec![first.clone(), twin, msg("t", "other")]).await.unwrap();
    assert_eq!(out[0], Enqueued::Created(first.id));
    assert_eq!(out[1], Enqueued::Duplicate(first.id));
    assert!(matches!(out[2], Enqueued::Created(_)), "{out:?}");
    // An id waiting already, and an id in the dead-letter store, are taken.
    let mut again = msg("t", "again");
    again.id = first.id;
    assert_eq!(q.enqueue_one(again).await.unwrap(), Enqueued::Duplicate(first.id));
    let ds = claim(&q, 10).await;
    assert_eq!(kinds(&ds), ["first", "other"]);
    q.settle_one(Settlement::DeadLetter { lease: ds[0].lease, error: "e".into() }).await.unwrap();
    ack_all(&q, &ds[1..]).await;
    let mut revived = msg("t", "revived");
    revived.id = first.id;
    assert_eq!(q.enqueue_one(revived).await.unwrap(), Enqueued::Duplicate(first.id));
    let s = q.stats().await.unwrap();
    assert_eq!((s.ready, s.leased, s.dead), (0, 0, 1), "{s:?}");
}

async fn queue_dead_letter_and_redrive(q: Arc<dyn Queue>) {
    q.enqueue(vec![msg("t", "a"), msg("t", "b"), msg("t", "c")]).await.unwrap();
    let ds = claim(&q, 3).await;
    assert_eq!(kinds(&ds), ["a", "b", "c"]);
    for (d, error) in ds.iter().zip(["ea", "eb", "ec"]) {
        let out = q.settle_one(Settlement::DeadLetter { lease: d.lease, error: error.into() }).await.unwrap();
        assert_eq!(out, Settled::Ok);
        // Distinct failure times, so "newest first" is well defined on every backend.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = q.stats().await.unwrap();
    assert_eq!((s.ready, s.leased, s.dead), (0, 0, 3));
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.iter().map(|d| d.message.kind.as_str()).collect::<Vec<_>>(), ["c", "b", "a"]);
    assert_eq!(dead[0].error, "ec");
    assert_eq!(dead[0].message.attempt, 1);
    assert_eq!(dead[0].message.id, ds[2].id);
    assert!(dead[0].failed_at >= dead[1].failed_at);
    assert_eq!(q.dead_letters(2).await.unwrap().len(), 2);
    // A dead letter's lease is dead too.
    assert_eq!(q.settle_one(Settlement::Ack(ds[1].lease)).await.unwrap(), Settled::Stale);

    assert!(q.redrive(ds[1].id).await.unwrap());
    assert!(!q.redrive(ds[1].id).await.unwrap());
    assert!(!q.redrive(netscript_runtime::queue::MessageId::new()).await.unwrap());
    let s = q.stats().await.unwrap();
    assert_eq!((s.ready, s.dead), (1, 2));
    let again = claim(&q, 10).await;
    assert_eq!(kinds(&again), ["b"]);
    assert_eq!(again[0].attempt, 1, "redrive resets attempts");
    assert!(again[0].lease.token > ds[1].lease.token);
    ack_all(&q, &again).await;
    assert_eq!(q.dead_letters(10).await.unwrap().len(), 2);
}

async fn queue_release_gives_attempt_back(q: Arc<dyn Queue>) {
    q.enqueue(vec![msg("t", "a"), msg("t", "b")]).await.unwrap();
    let d = claim(&q, 1).await.remove(0);
    assert_eq!((d.kind.as_str(), d.attempt), ("a", 1));
    assert_eq!(q.settle_one(Settlement::Release(d.lease)).await.unwrap(), Settled::Ok);
    let s = q.stats().await.unwrap();
    assert_eq!((s.ready, s.leased), (2, 0));
    // Released at once; it became visible again after `b`.
    let ds = claim(&q, 10).await;
    assert_eq!(kinds(&ds), ["b", "a"]);
    assert_eq!(ds[1].attempt, 1);
    assert_eq!(ds[1].lease.token, d.lease.token + 1);
}

async fn queue_topic_filter(q: Arc<dyn Queue>) {
    q.enqueue(vec![
        msg("mail", "m1"),
        msg("sms", "s1").with_priority(1),
        msg("push", "p1"),
        msg("mail", "m2").with_priority(2),
        msg("sms", "s2"),
    ])
    .await
    .unwrap();
    let one = |topics: &[&str], max| ClaimRequest {
        topics: topics.iter().map(|t| t.to_string()).collect(),
        max,
        lease: LONG_LEASE,
    };
    assert_eq!(kinds(&q.claim(one(&["mail"], 10)).await.unwrap()), ["m2", "m1"]);
    assert!(q.claim(one(&["mail"], 10)).await.unwrap().is_empty());
    assert!(q.claim(one(&["nothing"], 10)).await.unwrap().is_empty());
    // Several topics merge in priority-then-FIFO order.
    assert_eq!(kinds(&q.claim(one(&["push", "sms"], 2)).await.unwrap()), ["s1", "p1"]);
    assert_eq!(kinds(&q.claim(one(&[], 10)).await.unwrap()), ["s2"]);
}

async fn queue_stats_counts(q: Arc<dyn Queue>) {
    assert_eq!(q.stats().await.unwrap(), Default::default());
    q.enqueue(vec![
        msg("t", "a"),
        msg("t", "b"),
        msg("t", "c"),
        msg("t", "d"),
        msg("t", "later").with_delay(Duration::from_secs(3600)),
    ])
    .await
    .unwrap();
    let ds = claim(&q, 3).await;
    q.settle(vec![Settlement::Ack(ds[0].lease), Settlement::DeadLetter { lease: ds[1].lease, error: "x".into() }])
        .await
        .unwrap();
    let s = q.stats().await.unwrap();
    assert_eq!((s.ready, s.delayed, s.leased, s.dead, s.stale_settlements), (1, 1, 1, 1, 0));
}

async fn queue_wait_for_work_wakes_on_enqueue(q: Arc<dyn Queue>) {
    let waiter = {
        let q = Arc::clone(&q);
        tokio::spawn(async move {
            let start = Instant::now();
            q.wait_for_work(Duration::from_secs(20)).await;
            start.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "returned before anything happened");
    let sent = Instant::now();
    q.enqueue_one(msg("t", "a")).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap();
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    assert!(sent.elapsed() < Duration::from_secs(5), "woke {:?} after the enqueue", sent.elapsed());
}

async fn queue_wait_for_work_wakes_on_release(q: Arc<dyn Queue>) {
    q.enqueue_one(msg("t", "a")).await.unwrap();
    let d = claim(&q, 1).await.remove(0);
    // Let a pending wake from the enqueue be consumed.
    q.wait_for_work(Duration::from_millis(50)).await;
    let waiter = {
        let q = Arc::clone(&q);
        tokio::spawn(async move { q.wait_for_work(Duration::from_secs(20)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    q.settle_one(Settlement::Release(d.lease)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap();
}

async fn queue_wait_for_work_returns_at_timeout_or_due_time(q: Arc<dyn Queue>) {
    let start = Instant::now();
    q.wait_for_work(Duration::from_millis(100)).await;
    assert!(start.elapsed() < Duration::from_secs(5));
    // A delayed message due well before the timeout ends the wait.
    q.enqueue_one(msg("t", "later").with_delay(Duration::from_millis(300))).await.unwrap();
    q.wait_for_work(Duration::from_millis(10)).await; // consume the enqueue's wake
    let start = Instant::now();
    loop {
        q.wait_for_work(Duration::from_secs(30)).await;
        if !claim(&q, 1).await.is_empty() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the delayed message never woke the waiter");
    }
}

async fn queue_concurrent_claims_never_share(q: Arc<dyn Queue>) {
    let n = 300;
    q.enqueue((0..n).map(|i| msg("t", &format!("m{i}"))).collect()).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let q = Arc::clone(&q);
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let ds = q.claim(request(7)).await.unwrap();
                if ds.is_empty() {
                    return got;
                }
                q.settle(ds.iter().map(|d| Settlement::Ack(d.lease)).collect()).await.unwrap();
                got.extend(ds.into_iter().map(|d| d.id));
            }
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(seen.insert(id), "{id} delivered twice");
        }
    }
    assert_eq!(seen.len(), n);
}

// ---------------------------------------------------------------------------------------
// KV cases
// ---------------------------------------------------------------------------------------

fn k(parts: &[&str]) -> Key {
    parts.iter().fold(Key::default(), |key, p| key.with(*p))
}

async fn kv_get_set_delete(kv: Arc<dyn Kv>) {
    assert_eq!(kv.get(&k(&["a"])).await.unwrap(), None);
    let v1 = kv.set(k(&["a"]), b"1".to_vec()).await.unwrap();
    let e = kv.get(&k(&["a"])).await.unwrap().unwrap();
    assert_eq!((e.key, e.value, e.versionstamp, e.expires_at), (k(&["a"]), b"1".to_vec(), v1, None));
    let v2 = kv.set(k(&["a"]), b"2".to_vec()).await.unwrap();
    assert!(v2 > v1);
    assert_eq!(kv.get(&k(&["a"])).await.unwrap().unwrap().value, b"2");
    kv.set(k(&["b", "c"]), b"3".to_vec()).await.unwrap();
    let many = kv.get_many(&[k(&["b", "c"]), k(&["zz"]), k(&["a"])]).await.unwrap();
    assert_eq!(many.len(), 3);
    assert_eq!(many[0].as_ref().unwrap().value, b"3");
    assert!(many[1].is_none());
    assert_eq!(many[2].as_ref().unwrap().versionstamp, v2);
    kv.delete(k(&["a"])).await.unwrap();
    assert_eq!(kv.get(&k(&["a"])).await.unwrap(), None);
    // Deleting what is absent is fine.
    kv.delete(k(&["a"])).await.unwrap();
    // Typed parts round-trip.
    let typed = Key::default().with("x").with(-5i64).with(true).with(vec![0u8, 1, 0]);
    kv.set(typed.clone(), vec![]).await.unwrap();
    let listed = kv.list(ListOptions::prefix(k(&["x"]))).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, typed);
}

async fn kv_versionstamps_increase(kv: Arc<dyn Kv>) {
    let mut last = Versionstamp(0);
    for i in 0..20i64 {
        let key = Key::default().with("v").with(i % 3);
        let v = kv.set(key, vec![]).await.unwrap();
        assert!(v > last, "{v} after {last}");
        last = v;
    }
    let w = kv.atomic(AtomicWrite::new().set(k(&["p"]), b"1".to_vec()).set(k(&["q"]), b"2".to_vec())).await.unwrap();
    let w = w.unwrap();
    assert!(w > last);
    // One atomic write: one versionstamp for all its keys.
    let both = kv.get_many(&[k(&["p"]), k(&["q"])]).await.unwrap();
    assert!(both.iter().all(|e| e.as_ref().unwrap().versionstamp == w));
}

async fn kv_atomic_check_and_conflict(kv: Arc<dyn Kv>) {
    let v1 = kv.set(k(&["acct"]), b"10".to_vec()).await.unwrap();
    // Holds: commits every mutation.
    let v2 = kv
        .atomic(
            AtomicWrite::new()
                .check(k(&["acct"]), Some(v1))
                .set(k(&["acct"]), b"20".to_vec())
                .set(k(&["log", "1"]), b"+10".to_vec()),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(v2 > v1);
    assert_eq!(kv.get(&k(&["acct"])).await.unwrap().unwrap().versionstamp, v2);
    // Stale versionstamp: nothing is written.
    let out = kv
        .atomic(
            AtomicWrite::new()
                .check(k(&["acct"]), Some(v1))
                .set(k(&["acct"]), b"99".to_vec())
                .set(k(&["log", "2"]), b"x".to_vec())
                .delete(k(&["log", "1"])),
        )
        .await
        .unwrap();
    assert_eq!(out, None);
    assert_eq!(kv.get(&k(&["acct"])).await.unwrap().unwrap().value, b"20");
    assert_eq!(kv.get(&k(&["log", "2"])).await.unwrap(), None);
    assert!(kv.get(&k(&["log", "1"])).await.unwrap().is_some());
    // Several checks: all must hold.
    let out = kv
        .atomic(
            AtomicWrite::new()
                .check(k(&["acct"]), Some(v2))
                .check(k(&["log", "1"]), None)
                .set(k(&["acct"]), b"0".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(out, None);
    assert_eq!(kv.get(&k(&["acct"])).await.unwrap().unwrap().value, b"20");
    // A failed write does not consume the versionstamp order.
    let v3 = kv.set(k(&["other"]), vec![]).await.unwrap();
    assert!(v3 > v2);
}

async fn kv_atomic_many_applies_each_write_on_its_own(kv: Arc<dyn Kv>) {
    let taken = kv.set(k(&["seat", "2"]), b"someone".to_vec()).await.unwrap();
    let claim = |seat: &str, who: &str| {
        AtomicWrite::new().check(k(&["seat", seat]), None).set(k(&["seat", seat]), who.as_bytes().to_vec())
    };
    let out = kv
        .atomic_many(vec![
            claim("1", "ann"),
            claim("2", "bob"),
            // Two writes on one key in one batch: they apply in order, the second sees the first.
            claim("3", "cy"),
            claim("3", "dee"),
            AtomicWrite::new().check(k(&["seat", "2"]), Some(taken)).delete(k(&["seat", "2"])),
        ])
        .await
        .unwrap();
    assert_eq!(out.len(), 5);
    let (v1, v3, v5) = (out[0].unwrap(), out[2].unwrap(), out[4].unwrap());
    assert_eq!((out[1], out[3]), (None, None), "{out:?}");
    assert!(v1 > taken && v3 > v1 && v5 > v3, "versionstamps grow in batch order: {out:?}");
    let seat = |n: &'static str| {
        let kv = Arc::clone(&kv);
        async move { kv.get(&k(&["seat", n])).await.unwrap().map(|e| e.value) }
    };
    assert_eq!(seat("1").await.as_deref(), Some(&b"ann"[..]));
    assert_eq!(seat("2").await, None, "the failed claim wrote nothing; the later delete applied");
    assert_eq!(seat("3").await.as_deref(), Some(&b"cy"[..]));
    assert!(kv.atomic_many(Vec::new()).await.unwrap().is_empty());
}

async fn kv_check_absent(kv: Arc<dyn Kv>) {
    let create = || AtomicWrite::new().check(k(&["lock"]), None).set(k(&["lock"]), b"mine".to_vec());
    assert!(kv.atomic(create()).await.unwrap().is_some());
    assert_eq!(kv.atomic(create()).await.unwrap(), None);
    kv.delete(k(&["lock"])).await.unwrap();
    assert!(kv.atomic(create()).await.unwrap().is_some());
    // An expired key counts as absent.
    kv.set_with_ttl(k(&["lease"]), vec![], Duration::from_millis(100)).await.unwrap();
    let take = AtomicWrite::new().check(k(&["lease"]), None).set(k(&["lease"]), b"new".to_vec());
    assert_eq!(kv.atomic(take.clone()).await.unwrap(), None);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(kv.atomic(take).await.unwrap().is_some());
    assert_eq!(kv.get(&k(&["lease"])).await.unwrap().unwrap().expires_at, None);
}

async fn kv_concurrent_conditional_writes(kv: Arc<dyn Kv>) {
    let mut tasks = Vec::new();
    for i in 0..16i64 {
        let kv = Arc::clone(&kv);
        tasks.push(tokio::spawn(async move {
            let w = AtomicWrite::new()
                .check(k(&["winner"]), None)
                .set(k(&["winner"]), i.to_string().into_bytes())
                .set(Key::default().with("side").with(i), vec![]);
            // Unconditional writes interleaved with the conditional ones must all land.
            kv.set(Key::default().with("plain").with(i), vec![]).await.unwrap();
            kv.atomic(w).await.unwrap().map(|_| i)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        if let Some(i) = t.await.unwrap() {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let side = kv.list(ListOptions::prefix(k(&["side"]))).await.unwrap();
    assert_eq!(side.len(), 1);
    assert_eq!(side[0].key, Key::default().with("side").with(winners[0]));
    assert_eq!(kv.list(ListOptions::prefix(k(&["plain"]))).await.unwrap().len(), 16);
    let winner = kv.get(&k(&["winner"])).await.unwrap().unwrap();
    assert_eq!(winner.value, winners[0].to_string().into_bytes());
}

async fn kv_ttl_expiry(kv: Arc<dyn Kv>) {
    let before = netscript_runtime::time::Timestamp::now();
    kv.set_with_ttl(k(&["t", "short"]), b"x".to_vec(), Duration::from_millis(200)).await.unwrap();
    kv.set_with_ttl(k(&["t", "long"]), b"y".to_vec(), Duration::from_secs(3600)).await.unwrap();
    kv.set(k(&["t", "forever"]), b"z".to_vec()).await.unwrap();
    let e = kv.get(&k(&["t", "short"])).await.unwrap().unwrap();
    let expires = e.expires_at.unwrap();
    assert!(expires >= before.plus(Duration::from_millis(200)));
    assert_eq!(kv.list(ListOptions::prefix(k(&["t"]))).await.unwrap().len(), 3);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(kv.get(&k(&["t", "short"])).await.unwrap(), None);
    let listed = kv.list(ListOptions::prefix(k(&["t"]))).await.unwrap();
    assert_eq!(listed.iter().map(|e| e.key.clone()).collect::<Vec<_>>(), [k(&["t", "forever"]), k(&["t", "long"])]);
    // Setting again without a TTL revives the key for good.
    kv.set(k(&["t", "short"]), b"again".to_vec()).await.unwrap();
    assert_eq!(kv.get(&k(&["t", "short"])).await.unwrap().unwrap().expires_at, None);
}

async fn kv_list_prefix_limit_reverse_cursor(kv: Arc<dyn Kv>) {
    for key in
        [k(&["a"]), k(&["a", "1"]), k(&["a", "2"]), k(&["a", "3"]), k(&["a", "3", "x"]), k(&["ab", "1"]), k(&["b"])]
    {
        kv.set(key, vec![]).await.unwrap();
    }
    let keys = |es: Vec<netscript_runtime::kv::Entry>| es.into_iter().map(|e| e.key).collect::<Vec<_>>();
    // The prefix itself and the sibling prefix "ab" are excluded.
    let all = keys(kv.list(ListOptions::prefix(k(&["a"]))).await.unwrap());
    assert_eq!(all, [k(&["a", "1"]), k(&["a", "2"]), k(&["a", "3"]), k(&["a", "3", "x"])]);
    assert_eq!(keys(kv.list(ListOptions::prefix(k(&["a"])).limit(2)).await.unwrap()), [k(&["a", "1"]), k(&["a", "2"])]);
    assert_eq!(
        keys(kv.list(ListOptions::prefix(k(&["a"])).reverse().limit(2)).await.unwrap()),
        [k(&["a", "3", "x"]), k(&["a", "3"])]
    );
    // Cursor: resume after a key, in the listing's direction.
    assert_eq!(
        keys(kv.list(ListOptions::prefix(k(&["a"])).after(k(&["a", "2"]))).await.unwrap()),
        [k(&["a", "3"]), k(&["a", "3", "x"])]
    );
    assert_eq!(
        keys(kv.list(ListOptions::prefix(k(&["a"])).reverse().after(k(&["a", "3"]))).await.unwrap()),
        [k(&["a", "2"]), k(&["a", "1"])]
    );
    // Paging through with limit + cursor visits every key once.
    let mut paged = Vec::new();
    let mut opts = ListOptions::prefix(k(&["a"])).limit(3);
    loop {
        let page = kv.list(opts.clone()).await.unwrap();
        let Some(last) = page.last() else { break };
        opts = opts.after(last.key.clone());
        paged.extend(keys(page));
    }
    assert_eq!(paged, all);
    // A cursor outside the prefix's range lists nothing past it, and does not fail.
    assert!(kv.list(ListOptions::prefix(k(&["a"])).after(k(&["zzz"]))).await.unwrap().is_empty());
    assert!(kv.list(ListOptions::prefix(k(&["a"])).reverse().after(k(&["0"]))).await.unwrap().is_empty());
    assert_eq!(keys(kv.list(ListOptions::prefix(k(&["a"])).after(k(&["0"]))).await.unwrap()), all);
    // The empty prefix lists everything.
    assert_eq!(kv.list(ListOptions::prefix(Key::default())).await.unwrap().len(), 7);
    assert!(kv.list(ListOptions::prefix(k(&["a"])).limit(0)).await.unwrap().is_empty());
}

async fn next(w: &mut netscript_runtime::kv::KvWatch) -> KvEvent {
    tokio::time::timeout(Duration::from_secs(10), w.next()).await.unwrap().unwrap()
}

async fn kv_watch_sees_changes_under_prefix(kv: Arc<dyn Kv>) {
    let mut watch = kv.watch(&k(&["w"]));
    kv.set(k(&["outside"]), b"no".to_vec()).await.unwrap();
    kv.set(k(&["wx"]), b"no".to_vec()).await.unwrap();
    let v = kv.set(k(&["w", "1"]), b"yes".to_vec()).await.unwrap();
    kv.delete(k(&["outside"])).await.unwrap();
    kv.delete(k(&["w", "1"])).await.unwrap();
    kv.delete(k(&["w", "never-set"])).await.unwrap();
    kv.set(k(&["w", "2"]), b"last".to_vec()).await.unwrap();
    match next(&mut watch).await {
        KvEvent::Set(e) => {
            assert_eq!((e.key, e.value, e.versionstamp), (k(&["w", "1"]), b"yes".to_vec(), v));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(next(&mut watch).await, KvEvent::Deleted(k(&["w", "1"])));
    assert_eq!(next(&mut watch).await.key(), &k(&["w", "2"]));
    // A failed atomic write publishes nothing.
    let failed = AtomicWrite::new().check(k(&["w", "2"]), None).set(k(&["w", "3"]), vec![]);
    assert_eq!(kv.atomic(failed).await.unwrap(), None);
    kv.set(k(&["w", "4"]), vec![]).await.unwrap();
    assert_eq!(next(&mut watch).await.key(), &k(&["w", "4"]));
}

// ---------------------------------------------------------------------------------------
// Instantiation
// ---------------------------------------------------------------------------------------

/// Makes one `#[tokio::test]` per case for a backend. `$queue` and `$kv` are functions
/// returning the backend and what must outlive it; `$queue` takes the idempotency window.
/// Instantiates every case for one backend: `conformance!(name, queue: f, kv: g)` where
/// Runs with an idempotency window of [`PURGE_WINDOW`].
async fn queue_purge_dead_letters(q: Arc<dyn Queue>) {
    use netscript_runtime::time::Timestamp;
    let old = [msg("t", "a").with_idempotency_key("old"), msg("t", "b"), msg("u", "c")];
    let old_ids: Vec<_> = old.iter().map(|m| m.id).collect();
    q.enqueue(old.to_vec()).await.unwrap();
    q.enqueue_one(msg("t", "d").with_idempotency_key("new")).await.unwrap();
    let ds = claim(&q, 4).await;
    assert_eq!(kinds(&ds), ["a", "b", "c", "d"]);
    let dead_letter = |d: &Delivery| Settlement::DeadLetter { lease: d.lease, error: format!("e{}", d.kind) };
    for d in &ds[..3] {
        assert_eq!(q.settle_one(dead_letter(d)).await.unwrap(), Settled::Ok);
        // Distinct failure times, so "oldest first" is well defined on every backend.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cut = Timestamp::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(q.settle_one(dead_letter(&ds[3])).await.unwrap(), Settled::Ok);
    let dead_kinds =
        |dead: Vec<netscript_runtime::queue::DeadLetter>| dead.into_iter().map(|d| d.message.kind).collect::<Vec<_>>();
    assert_eq!(dead_kinds(q.dead_letters(10).await.unwrap()), ["d", "c", "b", "a"]);

    assert_eq!(q.purge_dead(cut, 0).await.unwrap(), 0);
    // `limit` bounds a call; the oldest go first.
    assert_eq!(q.purge_dead(cut, 2).await.unwrap(), 2);
    assert_eq!(dead_kinds(q.dead_letters(10).await.unwrap()), ["d", "c"]);
    assert_eq!(q.purge_dead(cut, 10).await.unwrap(), 1);
    assert_eq!(dead_kinds(q.dead_letters(10).await.unwrap()), ["d"]);
    assert_eq!(q.purge_dead(cut, 10).await.unwrap(), 0);
    let s = q.stats().await.unwrap();
    assert_eq!((s.ready, s.leased, s.dead), (0, 0, 1));
    let by_topic = q.topic_stats().await.unwrap();
    assert_eq!(by_topic.get("t").map_or(0, |s| s.dead), 1, "{by_topic:?}");
    assert_eq!(by_topic.get("u").map_or(0, |s| s.dead), 0, "{by_topic:?}");
    // A purged message is gone for good.
    for id in &old_ids {
        assert!(!q.redrive(*id).await.unwrap());
    }

    // The purged message's key is remembered for the window, as after an ack, then freed;
    // the key of a dead letter that was kept stays held.
    assert_eq!(q.enqueue_one(msg("t", "a2").with_idempotency_key("old")).await.unwrap(), Enqueued::Duplicate(ds[0].id));
    tokio::time::sleep(PURGE_WINDOW * 3).await;
    let again = q.enqueue_one(msg("t", "a3").with_idempotency_key("old")).await.unwrap();
    assert!(matches!(again, Enqueued::Created(id) if id != ds[0].id), "{again:?}");
    assert_eq!(q.enqueue_one(msg("t", "d2").with_idempotency_key("new")).await.unwrap(), Enqueued::Duplicate(ds[3].id));

    // What is left can still be redriven, and everything before now can be purged.
    assert!(q.redrive(ds[3].id).await.unwrap());
    let d = claim(&q, 10).await;
    assert_eq!(kinds(&d), ["a3", "d"]);
    assert_eq!(q.settle_one(dead_letter(&d[1])).await.unwrap(), Settled::Ok);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(q.purge_dead(Timestamp::now(), 10).await.unwrap(), 1);
    assert!(q.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(q.stats().await.unwrap().dead, 0);
}

/// Long enough for an enqueue right after a purge to land inside it on every backend.
const PURGE_WINDOW: Duration = Duration::from_millis(1000);

/// `f(idempotency_window)` and `g()` are async factories returning the backend and a guard
/// to keep alive. A backend that cannot pass a case names it in a `skip` function
/// (`skip: s`, `s(case) -> Option<&'static str>`) with the reason, printed when the test runs;
/// `kv: none` leaves out the KV cases for a backend that has no KV store.
macro_rules! conformance {
    ($backend:ident, queue: $queue:path, kv: $kv:tt) => {
        conformance!($backend, queue: $queue, kv: $kv, skip: $crate::no_skips);
    };
    ($backend:ident, queue: $queue:path, kv: $kv:tt, skip: $skip:path) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;

            macro_rules! queue_case {
                ($case:ident) => {
                    queue_case!($case, netscript_runtime::queue::memory::DEFAULT_IDEMPOTENCY_WINDOW);
                };
                ($case:ident, $window:expr) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $case() {
                        if let Some(reason) = $skip(stringify!($case)) {
                            eprintln!("skipped for {}: {reason}", stringify!($backend));
                            return;
                        }
                        let (q, _guard) = $queue($window).await;
                        $crate::$case(q).await;
                    }
                };
            }

            queue_case!(queue_priority_then_fifo);
            queue_case!(queue_topic_stats_count_each_topic);
            queue_case!(queue_cancel_removes_waiting_messages_only);
            queue_case!(queue_delivery_carries_the_message);
            queue_case!(queue_delay_hides_then_shows);
            queue_case!(queue_idempotency_collapses);
            queue_case!(queue_idempotency_window_expires, $crate::SHORT_WINDOW);
            queue_case!(queue_concurrency_key_exclusive);
            queue_case!(queue_lease_expiry_redelivers);
            queue_case!(queue_lapsed_lease_frees_concurrency_key);
            queue_case!(queue_stale_settlements_refused_and_counted);
            queue_case!(queue_extend_keeps_lease);
            queue_case!(queue_retry_with_delay_and_error);
            queue_case!(queue_dead_letter_and_redrive);
            queue_case!(queue_taken_ids_are_duplicates);
            queue_case!(queue_purge_dead_letters, $crate::PURGE_WINDOW);
            queue_case!(queue_release_gives_attempt_back);
            queue_case!(queue_topic_filter);
            queue_case!(queue_stats_counts);
            queue_case!(queue_wait_for_work_wakes_on_enqueue);
            queue_case!(queue_wait_for_work_wakes_on_release);
            queue_case!(queue_wait_for_work_returns_at_timeout_or_due_time);
            queue_case!(queue_concurrent_claims_never_share);

            conformance!(@kv $backend, $kv, $skip);
        }
    };
    (@kv $backend:ident, none, $skip:path) => {};
    (@kv $backend:ident, $kv:path, $skip:path) => {
        macro_rules! kv_case {
            ($case:ident) => {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(reason) = $skip(stringify!($case)) {
                        eprintln!("skipped for {}: {reason}", stringify!($backend));
                        return;
                    }
                    let (kv, _guard) = $kv().await;
                    $crate::$case(kv).await;
                }
            };
        }

        kv_case!(kv_get_set_delete);
        kv_case!(kv_versionstamps_increase);
        kv_case!(kv_atomic_check_and_conflict);
        kv_case!(kv_check_absent);
        kv_case!(kv_atomic_many_applies_each_write_on_its_own);
        kv_case!(kv_concurrent_conditional_writes);
        kv_case!(kv_ttl_expiry);
        kv_case!(kv_list_prefix_limit_reverse_cursor);
        kv_case!(kv_watch_sees_changes_under_prefix);
    };
}

/// The skip list of a backend that runs every case.
pub fn no_skips(_case: &str) -> Option<&'static str> {
    None
}

async fn memory_queue(window: Duration) -> (Arc<dyn Queue>, Guard) {
    let q = netscript_runtime::queue::memory::MemoryQueue::new().with_idempotency_window(window);
    (Arc::new(q), None)
}

async fn memory_kv() -> (Arc<dyn Kv>, Guard) {
    (Arc::new(netscript_runtime::kv::memory::MemoryKv::new()), None)
}

conformance!(memory, queue: memory_queue, kv: memory_kv);

#[cfg(feature = "embedded")]
fn embedded_db() -> (Arc<netscript_runtime::embedded::EmbeddedDb>, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let db = netscript_runtime::embedded::EmbeddedDb::open(dir.path()).unwrap();
    (Arc::new(db), Some(Box::new(dir)))
}

#[cfg(feature = "embedded")]
async fn embedded_queue(window: Duration) -> (Arc<dyn Queue>, Guard) {
    use netscript_runtime::queue::embedded::EmbeddedQueue;
    let (db, guard) = embedded_db();
    // A second queue in the same file: its messages must never show up in the one tested.
    let other = EmbeddedQueue::new(Arc::clone(&db), "other");
    let noise = async move {
        other.enqueue(vec![msg("t", "noise"), msg("mail", "noise"), msg("sms", "noise")]).await.unwrap();
    };
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(noise)
    })
    .join()
    .unwrap();
    (Arc::new(EmbeddedQueue::new(db, "jobs").with_idempotency_window(window)), guard)
}

#[cfg(feature = "embedded")]
async fn embedded_kv() -> (Arc<dyn Kv>, Guard) {
    let (db, guard) = embedded_db();
    (Arc::new(netscript_runtime::kv::embedded::EmbeddedKv::new(db)), guard)
}

#[cfg(feature = "embedded")]
conformance!(embedded, queue: embedded_queue, kv: embedded_kv);

#[cfg(feature = "amqp")]
mod amqp;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
