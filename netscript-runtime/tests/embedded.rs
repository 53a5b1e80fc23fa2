//! Tests of the embedded store that only it can pass: durability across reopening, a damaged
//! file, and two connections to one file (what two processes see). The behaviour it shares
//! with every backend is in `conformance.rs`.

#![cfg(feature = "embedded")]
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netscript_runtime::embedded::{Durability, EmbeddedDb, EmbeddedError, EmbeddedOptions, FILE_NAME};
use netscript_runtime::kv::embedded::EmbeddedKv;
use netscript_runtime::kv::{AtomicWrite, Key, Kv, ListOptions};
use netscript_runtime::queue::embedded::EmbeddedQueue;
use netscript_runtime::queue::{ClaimRequest, Enqueued, NewMessage, Queue, Settled, Settlement};

fn open(dir: &std::path::Path) -> Arc<EmbeddedDb> {
    Arc::new(EmbeddedDb::open(dir).unwrap())
}

fn all(max: usize) -> ClaimRequest {
    ClaimRequest { topics: Vec::new(), max, lease: Duration::from_secs(60) }
}

#[tokio::test]
async fn data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let (ready_id, dead_id, last_version);
    {
        let db = open(dir.path());
        let q = EmbeddedQueue::new(Arc::clone(&db), "jobs");
        let kv = EmbeddedKv::new(Arc::clone(&db));
        let out = q
            .enqueue(vec![
                NewMessage::new("t", "ready", b"r".to_vec()).with_header("h", "v").with_idempotency_key("idem"),
                NewMessage::new("t", "dead", b"d".to_vec()).with_priority(9),
                NewMessage::new("t", "later", b"l".to_vec()).with_delay(Duration::from_secs(3600)),
            ])
            .await
            .unwrap();
        ready_id = out[0].id();
        dead_id = out[1].id();
        let d = q.claim(all(1)).await.unwrap().remove(0);
        assert_eq!(d.id, dead_id);
        q.settle_one(Settlement::DeadLetter { lease: d.lease, error: "gave up".into() }).await.unwrap();
        q.settle_one(Settlement::Ack(d.lease)).await.unwrap(); // stale, counted
        kv.set(Key::default().with("a"), b"1".to_vec()).await.unwrap();
        last_version = kv.set(Key::default().with("b"), b"2".to_vec()).await.unwrap();
    }
    let db = open(dir.path());
    let q = EmbeddedQueue::new(Arc::clone(&db), "jobs");
    let kv = EmbeddedKv::new(Arc::clone(&db));
    let s = q.stats().await.unwrap();
    assert_eq!((s.ready, s.delayed, s.leased, s.dead, s.stale_settlements), (1, 1, 0, 1, 1));
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].message.id, dead[0].error.as_str()), (dead_id, "gave up"));
    assert_eq!(
        q.enqueue_one(NewMessage::new("t", "dup", vec![]).with_idempotency_key("idem")).await.unwrap(),
        Enqueued::Duplicate(ready_id)
    );
    let d = q.claim(all(10)).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].id, d[0].header("h"), d[0].payload.as_slice()), (ready_id, Some("v"), &b"r"[..]));
    assert!(q.redrive(dead_id).await.unwrap());

    let listed = kv.list(ListOptions::prefix(Key::default())).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1].versionstamp, last_version);
    let next = kv.set(Key::default().with("c"), vec![]).await.unwrap();
    assert!(next > last_version, "{next} after {last_version}");
}

#[test]
fn a_file_that_is_not_a_database_is_a_clear_error() {
    for garbage in [vec![0xAB; 8192], b"hello, I am a text file\n".to_vec()] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, &garbage).unwrap();
        let err = EmbeddedDb::open(dir.path()).unwrap_err();
        let EmbeddedError::Open { path: reported, .. } = &err else { panic!("{err:?}") };
        assert_eq!(reported, &path);
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("not a database"), "{text}");
    }
}

#[test]
fn a_data_dir_that_cannot_be_created_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let err = EmbeddedDb::open(file.join("sub")).unwrap_err();
    assert!(matches!(err, EmbeddedError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("a-file"), "{err}");
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(EmbeddedDb::open(dir.path()).unwrap());
    let conn = rusqlite::Connection::open(dir.path().join(FILE_NAME)).unwrap();
    conn.execute_batch("PRAGMA user_version = 999").unwrap();
    drop(conn);
    let err = EmbeddedDb::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("999") && err.contains(FILE_NAME), "{err}");
}

#[test]
fn concurrent_first_opens_migrate_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || EmbeddedDb::open(&path).map(drop))
        })
        .collect();
    for o in opens {
        o.join().unwrap().unwrap();
    }
}

#[tokio::test]
async fn full_durability_opens_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db =
        Arc::new(EmbeddedDb::open_with(dir.path(), EmbeddedOptions::default().durability(Durability::Full)).unwrap());
    let q = EmbeddedQueue::new(db, "jobs");
    q.enqueue_one(NewMessage::new("t", "k", vec![])).await.unwrap();
    assert_eq!(q.stats().await.unwrap().ready, 1);
}

/// Two `EmbeddedDb`s on one file: separate connections and writer threads, as two processes
/// would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_from_another_connection_wakes_the_waiter() {
    let dir = tempfile::tempdir().unwrap();
    let serve = EmbeddedQueue::new(open(dir.path()), "jobs");
    let cli = EmbeddedQueue::new(open(dir.path()), "jobs");
    let mut delays = Vec::new();
    for round in 0..3 {
        let waiter = {
            let serve = serve.clone();
            tokio::spawn(async move {
                // `wait_for_work` may return early (the contract allows it, and a wake from the
                // previous round can arrive late); a worker re-checks, as this loop does.
                loop {
                    serve.wait_for_work(Duration::from_secs(20)).await;
                    if serve.stats().await.unwrap().ready > 0 {
                        return Instant::now();
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!waiter.is_finished(), "round {round}: saw a message before the enqueue");
        let sent = Instant::now();
        cli.enqueue_one(NewMessage::new("t", "from-cli", vec![])).await.unwrap();
        let woke = tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap();
        delays.push(woke.saturating_duration_since(sent));
        let got = serve.claim(all(10)).await.unwrap();
        assert_eq!(got.len(), 1);
        serve.settle_one(Settlement::Ack(got[0].lease)).await.unwrap();
    }
    // The writer polls every 25 ms; allow a loaded machine plenty more.
    assert!(delays.iter().all(|d| *d < Duration::from_secs(2)), "{delays:?}");
    eprintln!("cross-connection wake delays: {delays:?}");
}

/// The child half of [`a_real_second_process_wakes_the_waiter`]: enqueues one message into
/// the store named by `NETSCRIPT_TEST_CHILD_DIR`. Does nothing when run on its own.
#[tokio::test]
#[ignore = "run by a_real_second_process_wakes_the_waiter in a child process"]
async fn child_process_enqueue() {
    let Ok(dir) = std::env::var("NETSCRIPT_TEST_CHILD_DIR") else { return };
    let q = EmbeddedQueue::new(open(std::path::Path::new(&dir)), "jobs");
    q.enqueue_one(NewMessage::new("t", "from-child", vec![])).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_second_process_wakes_the_waiter() {
    let dir = tempfile::tempdir().unwrap();
    let q = EmbeddedQueue::new(open(dir.path()), "jobs");
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            q.wait_for_work(Duration::from_secs(30)).await;
            start.elapsed()
        })
    };
    let child_dir = dir.path().to_owned();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "child_process_enqueue", "--quiet"])
            .env("NETSCRIPT_TEST_CHILD_DIR", child_dir)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(status.success());
    let waited = tokio::time::timeout(Duration::from_secs(20), waiter).await.unwrap().unwrap();
    assert!(waited < Duration::from_secs(20), "{waited:?}");
    let got = q.claim(all(10)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].kind, "from-child");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connections_never_claim_one_message_twice() {
    let dir = tempfile::tempdir().unwrap();
    let a = EmbeddedQueue::new(open(dir.path()), "jobs");
    let b = EmbeddedQueue::new(open(dir.path()), "jobs");
    let n = 400;
    let msgs: Vec<_> = (0..n)
        .map(|i| {
            let m = NewMessage::new("t", "m", vec![]);
            if i % 10 == 0 { m.with_concurrency_key(format!("k{}", i % 3)) } else { m }
        })
        .collect();
    a.enqueue(msgs).await.unwrap();
    // Each connection takes one batch before either goes on, so both take part however the two tasks
    // are scheduled; after the barrier they race for the rest.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let worker = |q: EmbeddedQueue, barrier: Arc<tokio::sync::Barrier>| async move {
        let mut got = Vec::new();
        let mut idle = 0;
        let mut first = true;
        while idle < 20 {
            let ds = q.claim(all(5)).await.unwrap();
            if std::mem::take(&mut first) {
                assert!(!ds.is_empty(), "the first claim of each connection finds work");
                barrier.wait().await;
            }
            if ds.is_empty() {
                idle += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            idle = 0;
            // Two leases on one concurrency key would show as a key leased twice at once.
            let out = q.settle(ds.iter().map(|d| Settlement::Ack(d.lease)).collect()).await.unwrap();
            assert!(out.iter().all(|s| *s == Settled::Ok));
            got.extend(ds.into_iter().map(|d| d.id));
        }
        got
    };
    let ta = tokio::spawn(worker(a.clone(), barrier.clone()));
    let tb = tokio::spawn(worker(b.clone(), barrier));
    let (ga, gb) = (ta.await.unwrap(), tb.await.unwrap());
    assert!(!ga.is_empty() && !gb.is_empty(), "both connections should have claimed: {} / {}", ga.len(), gb.len());
    let mut seen = HashSet::new();
    for id in ga.iter().chain(&gb) {
        assert!(seen.insert(*id), "{id} claimed by both");
    }
    assert_eq!(seen.len(), n);
    assert_eq!(a.stats().await.unwrap(), Default::default());
}

#[tokio::test]
async fn versionstamps_grow_across_connections() {
    let dir = tempfile::tempdir().unwrap();
    let one = EmbeddedKv::new(open(dir.path()));
    let two = EmbeddedKv::new(open(dir.path()));
    let mut last = one.set(Key::default().with("x"), vec![]).await.unwrap();
    for i in 0..10i64 {
        let kv = if i % 2 == 0 { &two } else { &one };
        let v = kv.set(Key::default().with("x").with(i), vec![]).await.unwrap();
        assert!(v > last, "{v} after {last}");
        last = v;
    }
}

#[tokio::test]
async fn queues_in_one_file_are_separate() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let jobs = EmbeddedQueue::new(Arc::clone(&db), "jobs");
    let mail = EmbeddedQueue::new(Arc::clone(&db), "mail");
    jobs.enqueue_one(NewMessage::new("t", "j", vec![]).with_idempotency_key("same")).await.unwrap();
    let m = mail.enqueue_one(NewMessage::new("t", "m", vec![]).with_idempotency_key("same")).await.unwrap();
    assert!(matches!(m, Enqueued::Created(_)));
    let got = mail.claim(all(10)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].kind, "m");
    // A lease of one queue cannot settle a message of another.
    assert_eq!(jobs.settle_one(Settlement::Ack(got[0].lease)).await.unwrap(), Settled::Stale);
    assert_eq!(jobs.stats().await.unwrap().ready, 1);
}

#[tokio::test]
async fn an_enqueue_with_kv_writes_only_with_created_messages_in_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let q = EmbeddedQueue::new(Arc::clone(&db), "jobs");
    let kv = EmbeddedKv::new(Arc::clone(&db));
    q.enqueue_one(NewMessage::new("t", "first", vec![]).with_idempotency_key("k")).await.unwrap();
    let mut watch = kv.watch(&Key::from(("rec",)));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let messages =
        vec![NewMessage::new("t", "fresh", vec![]), NewMessage::new("t", "again", vec![]).with_idempotency_key("k")];
    let ids: Vec<_> = messages.iter().map(|m| m.id).collect();
    let writes = ids.iter().map(|id| AtomicWrite::new().set(Key::from(("rec", id.to_string())), b"queued".to_vec()));
    let out = q
        .enqueue_with_kv(&kv, messages, writes.collect(), move |outcomes: &[Enqueued]| {
            tx.send(outcomes.to_vec()).unwrap();
        })
        .await
        .unwrap();
    assert!(matches!(out[0], Enqueued::Created(id) if id == ids[0]));
    assert!(matches!(out[1], Enqueued::Duplicate(_)), "the key is held: {out:?}");
    assert_eq!(rx.await.unwrap(), out, "the hook ran once, with the outcomes");
    // The created message's write is there, the duplicate's is not.
    let fresh = kv.get(&Key::from(("rec", ids[0].to_string()))).await.unwrap();
    assert_eq!(fresh.unwrap().value, b"queued");
    assert!(kv.get(&Key::from(("rec", ids[1].to_string()))).await.unwrap().is_none());
    // Watchers hear of the write like any other.
    assert!(matches!(watch.next().await, Ok(netscript_runtime::kv::KvEvent::Set(_))));
    assert_eq!(q.stats().await.unwrap().ready, 2);

    // A store of another file, or a conditional write, is refused and nothing is written.
    let other = EmbeddedKv::new(open(tempfile::tempdir().unwrap().path()));
    let refused = q.enqueue_with_kv(
        &other,
        vec![NewMessage::new("t", "x", vec![])],
        vec![AtomicWrite::new()],
        |_: &[Enqueued]| {},
    );
    assert!(refused.await.unwrap_err().to_string().contains("own file"));
    let unpaired = q.enqueue_with_kv(&kv, vec![NewMessage::new("t", "x", vec![])], Vec::new(), |_: &[Enqueued]| {});
    assert!(unpaired.await.unwrap_err().to_string().contains("1 messages but 0 writes"));
    let conditional = AtomicWrite::new().check(Key::from(("rec", "c")), None).set(Key::from(("rec", "c")), vec![]);
    let refused =
        q.enqueue_with_kv(&kv, vec![NewMessage::new("t", "x", vec![])], vec![conditional], |_: &[Enqueued]| {});
    assert!(refused.await.unwrap_err().to_string().contains("unconditional"));
    assert_eq!(q.stats().await.unwrap().ready, 2);
}

/// A measurement, not a check: run it with
/// `cargo test --release -p netscript-runtime --test embedded measure -- --ignored --nocapture`
/// (`MEASURE=lifecycle,latency` runs only those parts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it by hand in release mode"]
async fn measure_throughput() {
    let want = |part: &str| std::env::var("MEASURE").map_or(true, |v| v.split(',').any(|p| p == part));
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let q = EmbeddedQueue::new(Arc::clone(&db), "jobs");
    if want("batches") {
        measure_batches(&q).await;
    }
    if want("topics") {
        measure_topics(&q).await;
    }
    if want("single") {
        measure_single_calls(&q).await;
    }
    if want("lifecycle") {
        measure_lifecycle(&q, &EmbeddedKv::new(Arc::clone(&db))).await;
    }
    if want("latency") {
        measure_pickup_latency(&q).await;
    }
    let size = |name: &str| std::fs::metadata(dir.path().join(name)).map_or(0, |m| m.len()) / 1_000_000;
    eprintln!("file sizes: db {} MB, wal {} MB", size(FILE_NAME), size(&format!("{FILE_NAME}-wal")));
}

fn sample_message(i: usize) -> NewMessage {
    NewMessage::new("payments", "process-payment", br#"{"orderId":"o-123456","amountCents":4200}"#.to_vec())
        .with_header("correlation-id", format!("c-{i}"))
        .with_header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
}

fn rate(n: usize, t: Duration) -> String {
    format!("{t:.2?} ({:.0}/s)", n as f64 / t.as_secs_f64())
}

/// Enqueue 100k in batches of 1,000, then claim 256 at a time and ack each batch.
async fn measure_batches(q: &EmbeddedQueue) {
    let n = 100_000;
    let start = Instant::now();
    for chunk in 0..n / 1000 {
        q.enqueue((0..1000).map(|i| sample_message(chunk * 1000 + i)).collect()).await.unwrap();
    }
    eprintln!("enqueue {n} in batches of 1000: {}", rate(n, start.elapsed()));
    let start = Instant::now();
    assert_eq!(claim_and_ack_all(q).await, n);
    eprintln!("claim 256 + settle 256 acks, {n}: {}", rate(n, start.elapsed()));
}

/// Claims 256 at a time and acks each batch until the queue is empty; returns the count.
async fn claim_and_ack_all(q: &EmbeddedQueue) -> usize {
    let mut done = 0;
    loop {
        let ds = q.claim(all(256)).await.unwrap();
        if ds.is_empty() {
            return done;
        }
        done += ds.len();
        q.settle(ds.iter().map(|d| Settlement::Ack(d.lease)).collect()).await.unwrap();
    }
}

/// Enqueue 100k over 5 topics, then claim from every topic 256 at a time and ack.
async fn measure_topics(q: &EmbeddedQueue) {
    let n = 100_000;
    for chunk in 0..n / 1000 {
        let batch = (0..1000)
            .map(|i| {
                let mut m = sample_message(i);
                m.topic = format!("topic-{}", (chunk * 1000 + i) % 5);
                m
            })
            .collect();
        q.enqueue(batch).await.unwrap();
    }
    let start = Instant::now();
    assert_eq!(claim_and_ack_all(q).await, n);
    eprintln!("claim 256 across 5 topics + settle 256 acks, {n}: {}", rate(n, start.elapsed()));
}

/// 64 tasks enqueueing one message per call (group commit at work), then 4 workers claiming
/// 64 and acking each message from its own task, as runners would.
async fn measure_single_calls(q: &EmbeddedQueue) {
    let (tasks, per) = (64, 1000);
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let q = q.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    q.enqueue_one(sample_message(t * per + i)).await.unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    let total = tasks * per;
    eprintln!("enqueue_one x {total} from {tasks} tasks: {}", rate(total, start.elapsed()));
    let start = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move {
                let mut done = 0;
                loop {
                    let ds = q.claim(all(64)).await.unwrap();
                    if ds.is_empty() {
                        return done;
                    }
                    done += ds.len();
                    let acks: Vec<_> = ds
                        .iter()
                        .map(|d| {
                            let q = q.clone();
                            let lease = d.lease;
                            tokio::spawn(async move { q.settle_one(Settlement::Ack(lease)).await.unwrap() })
                        })
                        .collect();
                    for a in acks {
                        a.await.unwrap();
                    }
                }
            })
        })
        .collect();
    let mut done = 0;
    for w in workers {
        done += w.await.unwrap();
    }
    eprintln!("4 workers: claim 64 + settle_one each, {done}: {}", rate(done, start.elapsed()));
}

/// The job lifecycle as the runtime drives it: enqueue 1,000 plus one conditional 400-byte
/// record write per message (issued together); two workers claim 256, write 256 "running"
/// records in one atomic write, then 256 "succeeded" records in one, and settle the 256 in
/// one call.
async fn measure_lifecycle(q: &EmbeddedQueue, kv: &EmbeddedKv) {
    use netscript_runtime::kv::AtomicWrite;
    let record = vec![b'x'; 400];
    let jobs = 50_000;
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let producer = {
        let (q, kv, record) = (q.clone(), kv.clone(), record.clone());
        tokio::spawn(async move {
            for chunk in 0..jobs / 1000 {
                let out = q.enqueue((0..1000).map(|i| sample_message(chunk * 1000 + i)).collect()).await.unwrap();
                let writes = out.iter().map(|e| {
                    let key = Key::default().with("executions").with(e.id());
                    kv.atomic(AtomicWrite::new().check(key.clone(), None).set(key, record.clone()))
                });
                // A worker may have written the record first: then the check fails, as meant.
                for w in futures::future::join_all(writes).await {
                    w.unwrap();
                }
            }
        })
    };
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (q, kv, record, done) = (q.clone(), kv.clone(), record.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                while done.load(std::sync::atomic::Ordering::Relaxed) < jobs {
                    let ds = q.claim(all(256)).await.unwrap();
                    if ds.is_empty() {
                        q.wait_for_work(Duration::from_millis(10)).await;
                        continue;
                    }
                    let records = || {
                        ds.iter().fold(AtomicWrite::new(), |w, d| {
                            w.set(Key::default().with("executions").with(d.id), record.clone())
                        })
                    };
                    kv.atomic(records()).await.unwrap();
                    kv.atomic(records()).await.unwrap();
                    q.settle(ds.iter().map(|d| Settlement::Ack(d.lease)).collect()).await.unwrap();
                    done.fetch_add(ds.len(), std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    producer.await.unwrap();
    for w in workers {
        w.await.unwrap();
    }
    eprintln!("job lifecycle (enqueue + record, claim, 2 record writes, ack), {jobs}: {}", rate(jobs, start.elapsed()));
}

/// Pickup latency: an idle worker waiting in `wait_for_work`; one message per millisecond.
async fn measure_pickup_latency(q: &EmbeddedQueue) {
    fn now_us() -> u128 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros()
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    let worker = {
        let q = q.clone();
        tokio::spawn(async move {
            loop {
                let ds = q.claim(all(16)).await.unwrap();
                if ds.is_empty() {
                    q.wait_for_work(Duration::from_millis(200)).await;
                    continue;
                }
                let now = now_us();
                for d in &ds {
                    if d.kind == "stop" {
                        return;
                    }
                    let sent: u128 = String::from_utf8_lossy(&d.payload).parse().unwrap();
                    tx.send(Duration::from_micros((now - sent) as u64)).unwrap();
                }
                q.settle(ds.iter().map(|d| Settlement::Ack(d.lease)).collect()).await.unwrap();
            }
        })
    };
    for _ in 0..2000 {
        q.enqueue_one(NewMessage::new("t", "ping", now_us().to_string().into_bytes())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    q.enqueue_one(NewMessage::new("t", "stop", b"0".to_vec())).await.unwrap();
    worker.await.unwrap();
    let mut lat = Vec::new();
    while let Ok(d) = rx.try_recv() {
        lat.push(d);
    }
    lat.sort();
    let p = |x: f64| lat[((lat.len() as f64 * x) as usize).min(lat.len() - 1)];
    eprintln!(
        "pickup latency (enqueue call -> claimed), {} samples: p50 {:?}, p99 {:?}, max {:?}",
        lat.len(),
        p(0.50),
        p(0.99),
        lat[lat.len() - 1]
    );
}
