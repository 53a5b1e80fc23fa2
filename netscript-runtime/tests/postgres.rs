//! Tests of the PostgreSQL store that only it can pass: enqueue inside the application's own
//! transaction, wake-ups and concurrency keys across two stores on one schema (two
//! processes), migrations, damaged rows, connection errors. The behaviour it shares with
//! every backend is in `conformance/`. Needs a server: `NETSCRIPT_TEST_POSTGRES_URL`, default
//! `postgres://root@127.0.0.1:5432/test`. Every test uses a schema of its own and drops it.
//!
//! `measure` (ignored) prints the storage layer's rates:
//! `cargo test --release -p netscript-runtime --no-default-features --features postgres,embedded --test postgres measure -- --ignored --nocapture`

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netscript_runtime::kv::postgres::PostgresKv;
use netscript_runtime::kv::{AtomicWrite, Key, Kv};
use netscript_runtime::postgres::{PostgresDb, PostgresError, PostgresOptions, SCHEMA_VERSION, redact};
use netscript_runtime::queue::postgres::PostgresQueue;
use netscript_runtime::queue::{ClaimRequest, Enqueued, MessageId, NewMessage, Queue, Settled, Settlement};

#[path = "support/postgres_schema.rs"]
mod postgres_schema;

use postgres_schema::{Schema, url};

fn all(max: usize) -> ClaimRequest {
    ClaimRequest { topics: Vec::new(), max, lease: Duration::from_secs(60) }
}

fn msg(kind: &str) -> NewMessage {
    NewMessage::new("t", kind, kind.as_bytes().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_in_commits_with_the_transaction() {
    let schema = Schema::new();
    let db = schema.connect().await;
    let q = PostgresQueue::new(Arc::clone(&db), "jobs");
    let mut conn = db.pool().get().await.unwrap();

    // Rolled back: the message never exists, not even its idempotency key.
    let tx = conn.transaction().await.unwrap();
    let out = q.enqueue_in(&*tx, vec![msg("rolled-back").with_idempotency_key("k")]).await.unwrap();
    let Enqueued::Created(rolled_back) = out[0] else { panic!("{out:?}") };
    tx.rollback().await.unwrap();
    assert!(q.claim(all(10)).await.unwrap().is_empty());
    assert_eq!(q.stats().await.unwrap().ready, 0);
    let again = q.enqueue_one(msg("after").with_idempotency_key("k")).await.unwrap();
    assert!(matches!(again, Enqueued::Created(id) if id != rolled_back), "{again:?}");
    let ds = q.claim(all(10)).await.unwrap();
    assert_eq!(ds.iter().map(|d| d.kind.as_str()).collect::<Vec<_>>(), ["after"]);
    q.settle(ds.iter().map(|d| Settlement::Ack(d.lease)).collect()).await.unwrap();

    // Committed: claimable, and invisible to claims until the commit.
    tokio::time::sleep(Duration::from_millis(100)).await;
    q.wait_for_work(Duration::from_millis(1)).await; // consume the wakes of the work above
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move {
            q.wait_for_work(Duration::from_secs(20)).await;
            Instant::now()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let tx = conn.transaction().await.unwrap();
    tx.batch_execute("CREATE TEMP TABLE app_orders (id int8) ON COMMIT DROP; INSERT INTO app_orders VALUES (42)")
        .await
        .unwrap();
    let out = q.enqueue_in(&*tx, vec![msg("committed"), msg("committed-2").with_topic_hint()]).await.unwrap();
    assert!(out.iter().all(|e| matches!(e, Enqueued::Created(_))));
    assert!(q.claim(all(10)).await.unwrap().is_empty(), "visible before the commit");
    assert!(!waiter.is_finished(), "woken before the commit");
    let committed_at = Instant::now();
    tx.commit().await.unwrap();
    let woke_at = tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap();
    assert!(woke_at.duration_since(committed_at) < Duration::from_secs(2));
    let ds = q.claim(all(10)).await.unwrap();
    let mut kinds: Vec<_> = ds.iter().map(|d| d.kind.as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["committed", "committed-2"]);
    // A topic first written by the transaction is claimable by "every topic" claims too.
    assert_eq!(ds.iter().filter(|d| d.topic == "other-topic").count(), 1);
}

/// Messages in their own topic, to check the topic registry written inside a transaction.
trait TopicHint {
    fn with_topic_hint(self) -> Self;
}

impl TopicHint for NewMessage {
    fn with_topic_hint(mut self) -> Self {
        self.topic = "other-topic".into();
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_with_kv_writes_only_with_created_messages_in_one_transaction() {
    let schema = Schema::new();
    let db = schema.connect().await;
    let q = PostgresQueue::new(Arc::clone(&db), "jobs");
    let kv = PostgresKv::new(Arc::clone(&db));
    let rec = |id: &MessageId| Key::from(("rec", id.to_string()));
    q.enqueue_one(msg("first").with_idempotency_key("k")).await.unwrap();
    let mut watch = kv.watch(&Key::from(("rec",)));
    let messages = vec![msg("fresh"), msg("again").with_idempotency_key("k"), msg("third")];
    let ids: Vec<_> = messages.iter().map(|m| m.id).collect();
    let writes = ids.iter().map(|id| AtomicWrite::new().set(rec(id), b"queued".to_vec())).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = q
        .enqueue_with_kv(&kv, messages, writes, move |outcomes: &[Enqueued]| tx.send(outcomes.to_vec()).unwrap())
        .await
        .unwrap();
    assert!(matches!(out[0], Enqueued::Created(id) if id == ids[0]), "{out:?}");
    assert!(matches!(out[1], Enqueued::Duplicate(_)), "the key is held: {out:?}");
    assert!(matches!(out[2], Enqueued::Created(id) if id == ids[2]), "{out:?}");
    assert_eq!(rx.recv().unwrap(), out, "the hook ran with the outcomes");
    assert!(rx.try_recv().is_err(), "the hook ran once");
    // The created messages' writes are there, the duplicate's is not.
    let got = kv.get_many(&[rec(&ids[0]), rec(&ids[1]), rec(&ids[2])]).await.unwrap();
    assert_eq!(got[0].as_ref().unwrap().value, b"queued");
    assert!(got[1].is_none());
    assert_eq!(got[2].as_ref().unwrap().value, b"queued");
    // Watchers hear of the writes like any other.
    let event = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.unwrap();
    assert!(matches!(event, Ok(netscript_runtime::kv::KvEvent::Set(_))), "{event:?}");
    assert_eq!(q.stats().await.unwrap().ready, 3);

    // A batch the server refuses leaves neither messages nor writes, and runs no hook: the
    // enqueue refused (a NUL byte in a topic is not valid text)...
    let hooked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hook = |hooked: &Arc<std::sync::atomic::AtomicBool>| {
        let hooked = Arc::clone(hooked);
        move |_: &[Enqueued]| hooked.store(true, std::sync::atomic::Ordering::SeqCst)
    };
    let bad = NewMessage::new("t\0bad", "x", vec![]);
    let bad_id = bad.id;
    let good = msg("good");
    let good_id = good.id;
    let writes = vec![AtomicWrite::new().set(rec(&good_id), vec![1]), AtomicWrite::new().set(rec(&bad_id), vec![2])];
    let failed = q.enqueue_with_kv(&kv, vec![good, bad], writes, hook(&hooked));
    assert!(failed.await.is_err());
    assert!(kv.get_many(&[rec(&good_id), rec(&bad_id)]).await.unwrap().iter().all(Option::is_none));
    assert_eq!(q.stats().await.unwrap().ready, 3);
    // ... or the write refused after the enqueue ran (a key too large for the index): the
    // messages go with it.
    let huge = Key::from(("rec", (0..20_000).map(|_| fastrand::alphanumeric()).collect::<String>()));
    let orphan = msg("orphan");
    let orphan_id = orphan.id;
    let writes = vec![AtomicWrite::new().set(huge, vec![3])];
    let failed = q.enqueue_with_kv(&kv, vec![orphan], writes, hook(&hooked)).await;
    assert!(failed.unwrap_err().to_string().contains("index row"), "refused by the key's index");
    assert_eq!(q.stats().await.unwrap().ready, 3, "the message {orphan_id} left without its write");
    assert!(!hooked.load(std::sync::atomic::Ordering::SeqCst), "a hook ran for a batch that did not commit");
    // The connection went back to the pool outside a transaction: the next one commits.
    let next = msg("next");
    let next_id = next.id;
    q.enqueue_with_kv(&kv, vec![next], vec![AtomicWrite::new().set(rec(&next_id), vec![3])], |_: &[Enqueued]| {})
        .await
        .unwrap();
    assert!(kv.get(&rec(&next_id)).await.unwrap().is_some());
    assert_eq!(q.stats().await.unwrap().ready, 4);

    // A store of another database, unpaired writes, a conditional write or a delete are
    // refused, and nothing is written.
    let other_schema = Schema::new();
    let other = PostgresKv::new(other_schema.connect().await);
    let refused = q.enqueue_with_kv(&other, vec![msg("x")], vec![AtomicWrite::new()], |_: &[Enqueued]| {});
    assert!(refused.await.unwrap_err().to_string().contains("own database"));
    let unpaired = q.enqueue_with_kv(&kv, vec![msg("x")], Vec::new(), |_: &[Enqueued]| {});
    assert!(unpaired.await.unwrap_err().to_string().contains("1 messages but 0 writes"));
    let conditional = AtomicWrite::new().check(Key::from(("rec", "c")), None).set(Key::from(("rec", "c")), vec![]);
    let refused = q.enqueue_with_kv(&kv, vec![msg("x")], vec![conditional], |_: &[Enqueued]| {});
    assert!(refused.await.unwrap_err().to_string().contains("unconditional sets"));
    let delete = AtomicWrite::new().delete(Key::from(("rec", "c")));
    let refused = q.enqueue_with_kv(&kv, vec![msg("x")], vec![delete], |_: &[Enqueued]| {});
    assert!(refused.await.unwrap_err().to_string().contains("unconditional sets"));
    assert_eq!(q.stats().await.unwrap().ready, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_with_kv_whose_caller_stops_waiting_still_commits_and_frees_its_connection() {
    let schema = Schema::new();
    // One connection: the next statement gets the one the abandoned enqueue used.
    let db = Arc::new(PostgresDb::connect(schema.options().pool_size(1)).await.unwrap());
    let q = PostgresQueue::new(Arc::clone(&db), "jobs");
    let kv = PostgresKv::new(Arc::clone(&db));
    let mut abandoned = 0;
    for _ in 0..20 {
        let m = msg("abandoned");
        let key = Key::from(("rec", m.id.to_string()));
        let write = AtomicWrite::new().set(key.clone(), b"queued".to_vec());
        // Given up on somewhere between its first request and its answer.
        let waited = tokio::time::timeout(
            Duration::from_micros(fastrand::u64(50..400)),
            q.enqueue_with_kv(&kv, vec![m], vec![write], |_: &[Enqueued]| {}),
        )
        .await;
        abandoned += usize::from(waited.is_err());
        // A savepoint is refused outside a transaction block.
        let client = db.pool().get().await.unwrap();
        let probe = client.batch_execute("SAVEPOINT probe").await;
        assert!(probe.is_err(), "the pooled connection was left inside a transaction");
        drop(client);
        // The message and its write committed together all the same.
        let record = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(e) = kv.get(&key).await.unwrap() {
                    return e;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the abandoned enqueue committed");
        assert_eq!(record.value, b"queued");
    }
    assert!(abandoned > 0, "no enqueue was given up on: the test checked nothing");
    assert_eq!(q.stats().await.unwrap().ready, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaxed_settlements_settle_as_usual() {
    let schema = Schema::new();
    let db = Arc::new(PostgresDb::connect(schema.options().relaxed_settlements(true)).await.unwrap());
    let q = PostgresQueue::new(db, "jobs");
    q.enqueue(vec![msg("a"), msg("b"), msg("c")]).await.unwrap();
    let ds = q.claim(all(3)).await.unwrap();
    assert_eq!(q.extend(&[ds[0].lease], Duration::from_secs(30)).await.unwrap(), [Settled::Ok]);
    let out = q
        .settle(vec![
            Settlement::Ack(ds[0].lease),
            Settlement::Retry { lease: ds[1].lease, delay: Duration::ZERO, error: "e".into() },
            Settlement::DeadLetter { lease: ds[2].lease, error: "x".into() },
            Settlement::Ack(ds[0].lease),
        ])
        .await
        .unwrap();
    assert_eq!(out, [Settled::Ok, Settled::Ok, Settled::Ok, Settled::Stale]);
    let s = q.stats().await.unwrap();
    assert_eq!((s.ready, s.leased, s.dead, s.stale_settlements), (1, 0, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_worker_in_another_process_wakes_within_milliseconds() {
    let schema = Schema::new();
    let producer = PostgresQueue::new(schema.connect().await, "jobs");
    let consumer = PostgresQueue::new(schema.connect().await, "jobs");
    let mut pickups = Vec::new();
    for i in 0..20 {
        consumer.wait_for_work(Duration::from_millis(1)).await; // consume the previous wake
        let waiter = {
            let c = consumer.clone();
            tokio::spawn(async move {
                c.wait_for_work(Duration::from_secs(20)).await;
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        let sent = Instant::now();
        producer.enqueue_one(msg(&format!("m{i}"))).await.unwrap();
        let woke = tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap();
        pickups.push(woke.duration_since(sent));
        let ds = consumer.claim(all(1)).await.unwrap();
        assert_eq!(ds.len(), 1);
        consumer.settle_one(Settlement::Ack(ds[0].lease)).await.unwrap();
    }
    pickups.sort_unstable();
    println!("cross-process wake after enqueue (incl. the enqueue): p50 {:?}, max {:?}", pickups[10], pickups[19]);
    assert!(pickups[10] < Duration::from_millis(500), "{pickups:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_keys_hold_across_processes() {
    let schema = Schema::new();
    let a = PostgresQueue::new(schema.connect().await, "jobs");
    let b = PostgresQueue::new(schema.connect().await, "jobs");
    let n = 120;
    a.enqueue(
        (0..n)
            .map(|i| {
                let m = msg(&format!("m{i}"));
                if i % 4 == 0 { m } else { m.with_concurrency_key(format!("key-{}", i % 5)) }
            })
            .collect(),
    )
    .await
    .unwrap();
    let active: Arc<Mutex<HashSet<String>>> = Arc::default();
    let done: Arc<Mutex<HashSet<_>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let q = if w % 2 == 0 { a.clone() } else { b.clone() };
        let (active, done) = (Arc::clone(&active), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            let mut idle = 0;
            while idle < 20 {
                let ds = q.claim(all(3)).await.unwrap();
                if ds.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                idle = 0;
                for d in &ds {
                    if let Some(k) = &d.concurrency_key {
                        assert!(active.lock().unwrap().insert(k.clone()), "key {k} leased twice at once");
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                for d in &ds {
                    if let Some(k) = &d.concurrency_key {
                        active.lock().unwrap().remove(k);
                    }
                    assert!(done.lock().unwrap().insert(d.id), "{} delivered twice", d.id);
                }
                let out = q.settle(ds.iter().map(|d| Settlement::Ack(d.lease)).collect()).await.unwrap();
                assert!(out.iter().all(|s| *s == Settled::Ok));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(done.lock().unwrap().len(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_recovers_when_the_server_drops_its_connections() {
    let schema = Schema::new();
    let producer = PostgresQueue::new(schema.connect().await, "jobs");
    // The consumer's connections carry a name of their own, so the test can drop them.
    let app = format!("ns_drop_{:08x}", fastrand::u32(..));
    let separator = if url().contains('?') { '&' } else { '?' };
    let options = PostgresOptions::new(format!("{}{separator}application_name={app}", url())).schema(schema.0.clone());
    let consumer = PostgresQueue::new(Arc::new(PostgresDb::connect(options).await.unwrap()), "jobs");
    producer.enqueue_one(msg("before")).await.unwrap();
    let ds = consumer.claim(all(1)).await.unwrap();
    assert_eq!(ds.len(), 1);

    let admin = producer.db().pool().get().await.unwrap();
    let dropped: i64 = admin
        .query_one("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1", &[&app])
        .await
        .unwrap()
        .get(0);
    assert!(dropped >= 2, "pool and listener connections: {dropped}");

    // The pool replaces dead connections (a call may fail while it notices), and the
    // listener reconnects: a later enqueue from the other store wakes the consumer again.
    let mut settled = None;
    for _ in 0..50 {
        match consumer.settle_one(Settlement::Ack(ds[0].lease)).await {
            Ok(s) => {
                settled = Some(s);
                break;
            }
            Err(e) => {
                assert!(e.to_string().contains("127.0.0.1") || e.to_string().contains("PostgreSQL"), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(settled, Some(Settled::Ok));
    tokio::time::sleep(Duration::from_millis(500)).await;
    consumer.wait_for_work(Duration::from_millis(1)).await; // the reconnection's wake
    let waiter = {
        let c = consumer.clone();
        tokio::spawn(async move {
            c.wait_for_work(Duration::from_secs(20)).await;
            Instant::now()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished());
    let sent = Instant::now();
    producer.enqueue_one(msg("after")).await.unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap();
    assert!(woke.duration_since(sent) < Duration::from_secs(2));
    assert_eq!(consumer.claim(all(1)).await.unwrap()[0].kind, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_connects_migrate_once_and_newer_schemas_are_refused() {
    let schema = Schema::new();
    let connects: Vec<_> = (0..6).map(|_| PostgresDb::connect(schema.options())).collect();
    for db in futures::future::join_all(connects).await {
        db.unwrap();
    }
    let db = schema.connect().await;
    let client = db.pool().get().await.unwrap();
    let versions: Vec<i32> = client
        .query(&format!("SELECT version FROM \"{}\".migrations ORDER BY version", schema.0), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
    client
        .execute(&format!("INSERT INTO \"{}\".migrations (version) VALUES ($1)", schema.0), &[&(SCHEMA_VERSION + 1)])
        .await
        .unwrap();
    match PostgresDb::connect(schema.options()).await {
        Err(PostgresError::SchemaTooNew { found, known, .. }) => {
            assert_eq!((found, known), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_a_clear_error_without_the_password() {
    let options =
        PostgresOptions::new("postgres://app:s3cret@127.0.0.1:1/test").connect_timeout(Duration::from_secs(2));
    let err = PostgresDb::connect(options).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, PostgresError::Connect { .. }), "{err:?}");
    assert!(text.contains("postgres://app:***@127.0.0.1:1/test"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    let bad = PostgresDb::connect(PostgresOptions::new(url()).schema("Robert'); DROP")).await.unwrap_err();
    assert!(matches!(bad, PostgresError::Options(_)), "{bad:?}");
}

#[test]
fn urls_are_redacted() {
    assert_eq!(redact("postgres://u:p@h:5432/db"), "postgres://u:***@h:5432/db");
    assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    assert_eq!(redact("postgres://h/db?user=u&password=p&x=1"), "postgres://h/db?user=u&password=***&x=1");
    assert_eq!(redact("host=h user=u password=p dbname=d"), "host=h user=u password=*** dbname=d");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_rows_go_to_the_dead_letter_store() {
    let schema = Schema::new();
    let db = schema.connect().await;
    let q = PostgresQueue::new(Arc::clone(&db), "jobs");
    let bad = q.enqueue_one(msg("bad")).await.unwrap().id();
    q.enqueue_one(msg("good")).await.unwrap();
    let client = db.pool().get().await.unwrap();
    client
        .execute(
            &format!("UPDATE \"{}\".queue_messages SET headers = '\\x7b6e6f'::bytea WHERE id = $1", schema.0),
            &[&bad.0],
        )
        .await
        .unwrap();
    let ds = q.claim(all(10)).await.unwrap();
    assert_eq!(ds.iter().map(|d| d.kind.as_str()).collect::<Vec<_>>(), ["good"]);
    let s = q.stats().await.unwrap();
    assert_eq!((s.ready, s.leased, s.dead), (0, 1, 1));
    let dead = q.dead_letters(10).await;
    // The dead letter keeps the damaged headers: listing it reports them as corrupt.
    assert!(matches!(dead, Err(netscript_runtime::queue::QueueError::Corrupt { .. })), "{dead:?}");
    let client = db.pool().get().await.unwrap();
    let row = client
        .query_one(&format!("SELECT last_error FROM \"{}\".queue_dead WHERE id = $1", schema.0), &[&bad.0])
        .await
        .unwrap();
    let error: String = row.get(0);
    assert!(error.starts_with("corrupt message: invalid headers"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_watch_sees_writes_from_another_process() {
    let schema = Schema::new();
    let a = PostgresKv::new(schema.connect().await);
    let b = PostgresKv::new(schema.connect().await);
    let mut watch = b.watch(&Key::default().with("w"));
    // Another process's writes notify a watch once its prefix is registered, a round trip
    // after `watch` returned.
    let client = a.db().pool().get().await.unwrap();
    let registered = format!("SELECT count(*) FROM \"{}\".kv_watchers WHERE expires_at > now()", schema.0);
    let start = Instant::now();
    while client.query_one(registered.as_str(), &[]).await.unwrap().get::<_, i64>(0) == 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "the watch was never registered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(client);
    let big = vec![7u8; 20_000];
    let v1 = a.set(Key::default().with("w").with(1i64), b"small".to_vec()).await.unwrap();
    let v2 = a.set(Key::default().with("w").with(2i64), big.clone()).await.unwrap();
    a.delete(Key::default().with("w").with(1i64)).await.unwrap();
    let e1 = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap().unwrap();
    let e2 = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap().unwrap();
    let e3 = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap().unwrap();
    match (e1, e2, e3) {
        (
            netscript_runtime::kv::KvEvent::Set(s1),
            netscript_runtime::kv::KvEvent::Set(s2),
            netscript_runtime::kv::KvEvent::Deleted(k),
        ) => {
            assert_eq!((s1.value, s1.versionstamp), (b"small".to_vec(), v1));
            assert_eq!((s2.value, s2.versionstamp), (big, v2), "large values are read back");
            assert_eq!(k, Key::default().with("w").with(1i64));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_writes_notify_only_watched_prefixes() {
    use futures::StreamExt;
    let schema = Schema::new();
    let kv = PostgresKv::new(schema.connect().await);
    // A raw listener on the KV channel, as another process's store would be.
    let (client, mut conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    client.batch_execute(&format!("LISTEN \"{}_kv\"", schema.0)).await.unwrap();
    kv.set(Key::default().with("a").with(1i64), b"unwatched".to_vec()).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv()).await.is_err(),
        "a write no one watches sends no notification"
    );
    // Watched from another store: once registered, changes under the prefix are sent, others not.
    let other = PostgresKv::new(schema.connect().await);
    let _watch = other.watch(&Key::default().with("w"));
    let registered = format!("SELECT count(*) FROM \"{}\".kv_watchers", schema.0);
    let start = Instant::now();
    while client.query_one(registered.as_str(), &[]).await.unwrap().get::<_, i64>(0) == 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "the watch was never registered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    kv.set(Key::default().with("a").with(2i64), b"unwatched".to_vec()).await.unwrap();
    kv.set(Key::default().with("w").with(1i64), b"watched".to_vec()).await.unwrap();
    let note = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert!(note.contains(&hex(b"watched")), "{note}");
    assert!(tokio::time::timeout(Duration::from_millis(300), rx.recv()).await.is_err(), "only the watched change");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_many_applies_each_write_on_its_own_checks_in_order() {
    use netscript_runtime::kv::AtomicWrite;
    let schema = Schema::new();
    let kv = PostgresKv::new(schema.connect().await);
    let k = |s: &str| Key::default().with("m").with(s.to_owned());
    kv.set(k("taken"), b"old".to_vec()).await.unwrap();
    kv.set(k("gone"), b"x".to_vec()).await.unwrap();
    let results = kv
        .atomic_many(vec![
            AtomicWrite::new().check(k("a"), None).set(k("a"), b"a1".to_vec()),
            // Fails its own check: nothing of it is written, not even the other key.
            AtomicWrite::new().check(k("taken"), None).set(k("taken"), b"new".to_vec()).set(k("b"), b"b".to_vec()),
            AtomicWrite::new().set(k("c"), b"c".to_vec()),
            // Sees the first write, as one after the other would: its check fails.
            AtomicWrite::new().check(k("a"), None).set(k("a"), b"a2".to_vec()),
            AtomicWrite::new().delete(k("gone")),
        ])
        .await
        .unwrap();
    assert_eq!(results.iter().map(Option::is_some).collect::<Vec<_>>(), [true, false, true, false, true]);
    let stamps: Vec<_> = results.iter().flatten().collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "versionstamps follow the write order: {stamps:?}");
    let got = kv.get_many(&[k("a"), k("taken"), k("b"), k("c"), k("gone")]).await.unwrap();
    let values: Vec<Option<&[u8]>> = got.iter().map(|e| e.as_ref().map(|e| e.value.as_slice())).collect();
    assert_eq!(values, [Some(&b"a1"[..]), Some(&b"old"[..]), None, Some(&b"c"[..]), None]);
    assert_eq!(got[0].as_ref().unwrap().versionstamp, *stamps[0]);
    // Concurrent batches of inserts-if-absent on the same keys: each key is written once.
    let writes = |tag: &'static str| {
        (0..50)
            .map(move |i| AtomicWrite::new().check(k(&format!("r{i}")), None).set(k(&format!("r{i}")), tag))
            .collect()
    };
    let (x, y) = tokio::join!(kv.atomic_many(writes("x")), kv.atomic_many(writes("y")));
    let (x, y) = (x.unwrap(), y.unwrap());
    for i in 0..50 {
        assert!(x[i].is_some() != y[i].is_some(), "key r{i} written by exactly one batch");
    }
}

/// The storage layer's rates, in one process with PostgreSQL on the same host.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement: run with --release --ignored --nocapture"]
async fn measure() {
    const N: usize = 20_000;
    for (synchronous_commit, relaxed) in [(true, false), (true, true), (false, false)] {
        let schema = Schema::new();
        let options =
            schema.options().pool_size(16).synchronous_commit(synchronous_commit).relaxed_settlements(relaxed);
        let db = Arc::new(PostgresDb::connect(options).await.unwrap());
        let mode = format!("synchronous_commit={synchronous_commit} relaxed_settlements={relaxed}");
        let q = PostgresQueue::new(Arc::clone(&db), "jobs");
        let start = Instant::now();
        for chunk in 0..N / 100 {
            let batch = (0..100).map(|i| msg(&format!("m{}", chunk * 100 + i))).collect();
            q.enqueue(batch).await.unwrap();
        }
        let enqueue = start.elapsed();

        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                let (mut n, mut claiming, mut acking) = (0, Duration::ZERO, Duration::ZERO);
                loop {
                    let t = Instant::now();
                    let ds = q.claim(all(32)).await.unwrap();
                    claiming += t.elapsed();
                    if ds.is_empty() {
                        return (n, claiming, acking);
                    }
                    n += ds.len();
                    let t = Instant::now();
                    q.settle(ds.iter().map(|d| Settlement::Ack(d.lease)).collect()).await.unwrap();
                    acking += t.elapsed();
                }
            }));
        }
        let (mut total, mut claiming, mut acking) = (0, Duration::ZERO, Duration::ZERO);
        for t in tasks {
            let (n, c, a) = t.await.unwrap();
            total += n;
            claiming += c;
            acking += a;
        }
        let claim_ack = start.elapsed();
        assert_eq!(total, N);
        let calls = (N / 32) as u32;
        println!(
            "{mode}: enqueue {:.0} msg/s (batches of 100, one task); \
             claim+ack {:.0} msg/s (claim 32, ack in batches, 4 tasks; a claim call {:?}, an ack call {:?})",
            N as f64 / enqueue.as_secs_f64(),
            N as f64 / claim_ack.as_secs_f64(),
            claiming / calls,
            acking / calls,
        );

        // Many producers enqueueing one message each: commits that notify inside the
        // transaction (what `enqueue_in` does) serialize on the server; the pooled enqueue
        // notifies after its commit.
        for in_transaction in [false, true] {
            let start = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..16 {
                let q = q.clone();
                tasks.push(tokio::spawn(async move {
                    // Each task on a connection of its own, as separate producers would be.
                    let client = if in_transaction { Some(q.db().pool().get().await.unwrap()) } else { None };
                    for i in 0..125 {
                        let m = vec![msg(&format!("one{i}"))];
                        match &client {
                            Some(c) => q.enqueue_in(&***c, m).await,
                            None => q.enqueue(m).await,
                        }
                        .unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            println!(
                "{mode}: enqueue_one by 16 tasks, notify {}: {:.0} msg/s",
                if in_transaction { "in the transaction" } else { "after the commit" },
                2000.0 / start.elapsed().as_secs_f64()
            );
        }
    }

    // Pickup across processes: an idle waiter in another store wakes on the notification.
    {
        let schema = Schema::new();
        let producer = PostgresQueue::new(schema.connect().await, "jobs");
        let consumer = PostgresQueue::new(schema.connect().await, "jobs");
        let (mut enqueues, mut pickups) = (Vec::new(), Vec::new());
        for i in 0..100 {
            consumer.wait_for_work(Duration::from_millis(1)).await; // consume the previous wake
            let waiter = {
                let c = consumer.clone();
                tokio::spawn(async move {
                    c.wait_for_work(Duration::from_secs(20)).await;
                    Instant::now()
                })
            };
            tokio::time::sleep(Duration::from_millis(5)).await;
            let sent = Instant::now();
            producer.enqueue_one(msg(&format!("m{i}"))).await.unwrap();
            enqueues.push(sent.elapsed());
            let woke = waiter.await.unwrap();
            pickups.push(woke.duration_since(sent));
            let ds = consumer.claim(all(1)).await.unwrap();
            consumer.settle_one(Settlement::Ack(ds[0].lease)).await.unwrap();
        }
        enqueues.sort_unstable();
        pickups.sort_unstable();
        println!(
            "cross-process pickup: enqueue call p50 {:?}; waiter woken after the enqueue started p50 {:?}, p90 {:?}",
            enqueues[50], pickups[50], pickups[90]
        );
    }

    // A backlog of 1,000,000 waiting messages claims as fast as one of 100.
    let schema = Schema::new();
    let db = schema.connect().await;
    let q = PostgresQueue::new(Arc::clone(&db), "jobs");
    let small = PostgresQueue::new(Arc::clone(&db), "small");
    small.enqueue((0..100).map(|i| msg(&format!("s{i}"))).collect()).await.unwrap();
    q.enqueue(vec![msg("first")]).await.unwrap();
    let client = db.pool().get().await.unwrap();
    let start = Instant::now();
    client
        .execute(
            &format!(
                "INSERT INTO \"{s}\".queue_messages (id, queue, topic, kind, payload, priority, visible_at, seq, enqueued_at)
                 SELECT gen_random_uuid(), 'jobs', 't', 'bulk', '\\x00'::bytea, 0, now(), nextval('\"{s}\".queue_seq'), now()
                 FROM generate_series(1, 1000000)",
                s = schema.0
            ),
            &[],
        )
        .await
        .unwrap();
    println!("backlog of 1,000,000 inserted in {:?}", start.elapsed());
    // With statistics, as autovacuum would gather them.
    client.batch_execute(&format!("ANALYZE \"{}\".queue_messages", schema.0)).await.unwrap();
    for (name, queue) in [("100", &small), ("1,000,000", &q)] {
        let mut times = Vec::new();
        for _ in 0..50 {
            let start = Instant::now();
            let ds = queue.claim(all(32)).await.unwrap();
            times.push(start.elapsed());
            assert_eq!(ds.len(), 32);
            queue.settle(ds.iter().map(|d| Settlement::Ack(d.lease)).collect()).await.unwrap();
            if name == "100" {
                queue.enqueue((0..ds.len()).map(|i| msg(&format!("r{i}"))).collect()).await.unwrap();
            }
        }
        times.sort_unstable();
        println!("claim of 32 from a backlog of {name}: p50 {:?}, p90 {:?}", times[25], times[45]);
    }
}
