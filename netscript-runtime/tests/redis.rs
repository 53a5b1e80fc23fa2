//! Redis backend tests beyond the conformance suite: backlog independence, corrupt data,
//! connection errors, several processes on one server, and an ignored `measure` that prints
//! throughput (`cargo test --release --features redis --test redis measure -- --ignored --nocapture`).

#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant};

use netscript_runtime::kv::redis::RedisKv;
use netscript_runtime::kv::{Key, Kv, KvEvent};
use netscript_runtime::queue::redis::RedisQueue;
use netscript_runtime::queue::{ClaimRequest, NewMessage, Queue, Settled, Settlement};
use netscript_runtime::redis::{RedisDb, RedisError, RedisOptions};

#[path = "support/redis_namespace.rs"]
mod redis_namespace;

use redis_namespace::{Namespace, redis_url};

/// A plain connection, to look at or damage the stored data by hand.
fn raw() -> ::redis::Connection {
    ::redis::Client::open(redis_url().as_str()).unwrap().get_connection().unwrap()
}

/// The server's CPU time so far (user + system), from `INFO cpu`.
fn server_cpu(conn: &mut ::redis::Connection) -> Duration {
    let info: String = ::redis::cmd("INFO").arg("cpu").query(conn).unwrap();
    let secs: f64 = info
        .lines()
        .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum();
    Duration::from_secs_f64(secs)
}

fn msg(i: usize) -> NewMessage {
    NewMessage::new("t", "work", format!("{{\"n\":{i}}}").into_bytes())
}

fn request(max: usize) -> ClaimRequest {
    ClaimRequest { topics: Vec::new(), max, lease: Duration::from_secs(60) }
}

async fn enqueue_many(q: &RedisQueue, n: usize, batch: usize) {
    let mut i = 0;
    while i < n {
        let end = (i + batch).min(n);
        q.enqueue((i..end).map(msg).collect()).await.unwrap();
        i = end;
    }
}

/// Times `rounds` claims of 32 (acked at once), returning the slowest and the last.
async fn time_claims(q: &RedisQueue, rounds: usize) -> (Duration, Duration) {
    let mut slowest = Duration::ZERO;
    let mut last = Duration::ZERO;
    for _ in 0..rounds {
        let start = Instant::now();
        let ds = q.claim(request(32)).await.unwrap();
        last = start.elapsed();
        slowest = slowest.max(last);
        assert_eq!(ds.len(), 32);
        q.settle(ds.iter().map(|d| Settlement::Ack(d.lease)).collect()).await.unwrap();
    }
    (slowest, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_backlog_claims_as_fast_as_a_small_one() {
    let ns = Namespace::new();
    let db = ns.db().await;
    let small = RedisQueue::new(Arc::clone(&db), "small");
    let large = RedisQueue::new(Arc::clone(&db), "large");
    enqueue_many(&small, 200, 200).await;
    let start = Instant::now();
    enqueue_many(&large, 100_000, 1000).await;
    println!("enqueued 100,000 in {:?}", start.elapsed());
    // Warm the scripts and the connection.
    time_claims(&small, 1).await;
    let (small_slowest, small_last) = time_claims(&small, 5).await;
    let (large_slowest, large_last) = time_claims(&large, 5).await;
    println!("claim of 32 from 195 waiting: slowest {small_slowest:?}, last {small_last:?}");
    println!("claim of 32 from 100,000 waiting: slowest {large_slowest:?}, last {large_last:?}");
    assert!(large_last < Duration::from_millis(50), "the last claim batch took {large_last:?}");
    assert_eq!(large.stats().await.unwrap().ready, 100_000 - 5 * 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_messages_are_dead_lettered_not_fatal() {
    let ns = Namespace::new();
    let db = ns.db().await;
    let q = RedisQueue::new(Arc::clone(&db), "jobs");
    let bad_headers = NewMessage::new("t", "bad-headers", b"1".to_vec()).with_header("a", "b");
    let bad_token = NewMessage::new("t", "bad-token", b"2".to_vec());
    let bad_priority = NewMessage::new("t", "bad-priority", b"3".to_vec());
    let vanished = NewMessage::new("t", "vanished", b"4".to_vec());
    let good = NewMessage::new("t", "good", b"5".to_vec());
    let ids = [bad_headers.id, bad_token.id, bad_priority.id, vanished.id, good.id];
    q.enqueue(vec![bad_headers, bad_token, bad_priority, vanished, good]).await.unwrap();

    let mut raw = raw();
    let key = |id: &netscript_runtime::queue::MessageId| format!("{}m:{id}", q.key_prefix());
    let _: () = ::redis::cmd("HSET").arg(key(&ids[0])).arg("h").arg("{not json").query(&mut raw).unwrap();
    let _: () = ::redis::cmd("HSET").arg(key(&ids[1])).arg("tk").arg("seven").query(&mut raw).unwrap();
    let _: () = ::redis::cmd("HSET").arg(key(&ids[2])).arg("pr").arg("high").query(&mut raw).unwrap();
    let _: () = ::redis::cmd("DEL").arg(key(&ids[3])).query(&mut raw).unwrap();

    let ds = q.claim(request(10)).await.unwrap();
    assert_eq!(ds.iter().map(|d| d.kind.as_str()).collect::<Vec<_>>(), ["good"]);
    assert_eq!(q.settle_one(Settlement::Ack(ds[0].lease)).await.unwrap(), Settled::Ok);

    let dead = q.dead_letters(10).await.unwrap();
    let reason = |id| dead.iter().find(|d| d.message.id == id).map(|d| d.error.clone()).unwrap();
    assert_eq!(dead.len(), 3, "{dead:?}");
    for d in &dead {
        println!("{} -> {}", d.message.kind, d.error);
    }
    assert!(reason(ids[0]).contains("invalid headers"), "{}", reason(ids[0]));
    assert!(reason(ids[1]).contains("fencing token"), "{}", reason(ids[1]));
    assert!(reason(ids[2]).contains("invalid priority `high`"), "{}", reason(ids[2]));
    let s = q.stats().await.unwrap();
    assert_eq!((s.ready, s.leased, s.dead), (0, 0, 3), "{s:?}");
    assert!(q.claim(request(10)).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_is_a_clear_error_without_the_password() {
    let options = RedisOptions::new("redis://app:hunter2@127.0.0.1:1/0").connect_timeout(Duration::from_secs(2));
    let start = Instant::now();
    let err = RedisDb::connect(options).await.unwrap_err();
    let text = err.to_string();
    println!("{text} (after {:?})", start.elapsed());
    assert!(matches!(err, RedisError::Connect { .. }), "{err:?}");
    assert!(text.contains("redis://app:***@127.0.0.1:1/0"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(start.elapsed() < Duration::from_secs(10));
    let bad = RedisDb::connect(RedisOptions::new("http://nope")).await.unwrap_err();
    assert!(matches!(bad, RedisError::Url { .. }), "{bad:?}");
    let tls = RedisDb::connect(RedisOptions::new("rediss://u:pw@127.0.0.1:1")).await.unwrap_err();
    println!("{tls}");
    assert!(!tls.to_string().contains("pw@"), "{tls}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_queue_wakeups_and_kv_changes() {
    let ns = Namespace::new();
    // Two connections with the same prefix stand for two worker processes.
    let (a, b) = (ns.db().await, ns.db().await);
    let qa = Arc::new(RedisQueue::new(Arc::clone(&a), "jobs"));
    let qb = RedisQueue::new(Arc::clone(&b), "jobs");
    let waiter = {
        let qa = Arc::clone(&qa);
        tokio::spawn(async move {
            let start = Instant::now();
            qa.wait_for_work(Duration::from_secs(20)).await;
            start.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished());
    let sent = Instant::now();
    qb.enqueue_one(msg(1)).await.unwrap();
    waiter.await.unwrap();
    println!("woken {:?} after the other process enqueued", sent.elapsed());
    assert!(sent.elapsed() < Duration::from_secs(2));
    assert_eq!(qa.claim(request(10)).await.unwrap().len(), 1);

    let (kva, kvb) = (RedisKv::new(a), RedisKv::new(b));
    let mut watch = kva.watch(&Key::from(("exec",)));
    let v = kvb.set(Key::from(("exec", 1i64)), b"x".to_vec()).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.unwrap().unwrap();
    match event {
        KvEvent::Set(e) => assert_eq!((e.key, e.value, e.versionstamp), (Key::from(("exec", 1i64)), b"x".to_vec(), v)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_names_do_not_collide() {
    let ns = Namespace::new();
    let db = ns.db().await;
    // `a:r` would share keys with queue `a` if names were not delimited.
    let a = RedisQueue::new(Arc::clone(&db), "a");
    let ar = RedisQueue::new(Arc::clone(&db), "a}:r");
    let braces = RedisQueue::new(Arc::clone(&db), "a\\");
    a.enqueue_one(NewMessage::new("delayed", "k", vec![])).await.unwrap();
    assert!(ar.claim(request(10)).await.unwrap().is_empty());
    assert!(braces.claim(request(10)).await.unwrap().is_empty());
    assert_eq!(a.claim(request(10)).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_concurrency_key_parks_its_backlog() {
    let ns = Namespace::new();
    let db = ns.db().await;
    let q = RedisQueue::new(Arc::clone(&db), "jobs");
    let mut batch: Vec<_> = (0..2000).map(|i| msg(i).with_concurrency_key("tenant-1")).collect();
    batch.push(NewMessage::new("t", "free", vec![]));
    q.enqueue(batch).await.unwrap();
    let first = q.claim(request(32)).await.unwrap();
    assert_eq!(first.len(), 1, "one per key");
    // The blocked messages are parked as they are met, so later claims do not walk them again.
    let mut free = Vec::new();
    for _ in 0..5 {
        free.extend(q.claim(request(32)).await.unwrap());
        if !free.is_empty() {
            break;
        }
    }
    assert_eq!(free.iter().map(|d| d.kind.as_str()).collect::<Vec<_>>(), ["free"]);
    let start = Instant::now();
    assert!(q.claim(request(32)).await.unwrap().is_empty());
    println!("claim with 1,999 parked messages: {:?}", start.elapsed());
    assert_eq!(q.stats().await.unwrap().ready, 1999);
    // Freeing the key hands out the next message of that key, in order.
    q.settle_one(Settlement::Ack(first[0].lease)).await.unwrap();
    let next = q.claim(request(32)).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].payload, b"{\"n\":1}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_due_messages_than_one_promotion_moves_are_all_delivered_once() {
    const N: usize = 2500;
    let ns = Namespace::new();
    let db = ns.db().await;
    let q = RedisQueue::new(Arc::clone(&db), "jobs");
    q.enqueue((0..N).map(|i| msg(i).with_delay(Duration::from_millis(200))).collect()).await.unwrap();
    assert_eq!(q.stats().await.unwrap().delayed, N as u64);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let short = ClaimRequest { topics: Vec::new(), max: 300, lease: Duration::from_millis(1500) };
    let mut first = Vec::new();
    let start = Instant::now();
    loop {
        let ds = q.claim(short.clone()).await.unwrap();
        if ds.is_empty() {
            break;
        }
        first.extend(ds);
    }
    let took = start.elapsed();
    println!("claimed {N} due messages in {took:?}");
    let ids: std::collections::HashSet<_> = first.iter().map(|d| d.id).collect();
    assert!(took < Duration::from_millis(1500), "leases may have lapsed meanwhile");
    assert_eq!((first.len(), ids.len()), (N, N));
    // Due messages come out in due order (they were enqueued together, so in enqueue order).
    assert!(first.windows(2).all(|w| w[0].id < w[1].id));
    // Every lease lapses; the messages come back once each, on their second attempt.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let mut second = Vec::new();
    loop {
        let ds = q.claim(request(1000)).await.unwrap();
        if ds.is_empty() {
            break;
        }
        second.extend(ds);
    }
    assert_eq!(second.len(), N);
    assert!(second.iter().all(|d| d.attempt == 2 && ids.contains(&d.id)));
    let stale = q.settle(first.iter().map(|d| Settlement::Ack(d.lease)).collect()).await.unwrap();
    assert!(stale.iter().all(|s| *s == Settled::Stale));
    q.settle(second.iter().map(|d| Settlement::Ack(d.lease)).collect()).await.unwrap();
    let s = q.stats().await.unwrap();
    assert_eq!((s.ready, s.delayed, s.leased, s.dead, s.stale_settlements), (0, 0, 0, 0, N as u64), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_payloads_and_keys_round_trip() {
    let ns = Namespace::new();
    let db = ns.db().await;
    let q = RedisQueue::new(Arc::clone(&db), "jobs");
    let payload: Vec<u8> = (0..=255u8).chain([0, 0xff, 0]).collect();
    let m = NewMessage::new("tópico", "kind\n\u{1F600}", payload.clone())
        .with_header("h\0", "v\n\"'")
        .with_idempotency_key("key with spaces:and:colons}{")
        .with_concurrency_key("c\\}");
    q.enqueue_one(m).await.unwrap();
    let d = q.claim(request(1)).await.unwrap().remove(0);
    assert_eq!(d.payload, payload);
    assert_eq!((d.topic.as_str(), d.kind.as_str()), ("tópico", "kind\n\u{1F600}"));
    assert_eq!(d.header("h\0"), Some("v\n\"'"));
    assert_eq!(d.concurrency_key.as_deref(), Some("c\\}"));

    let kv = RedisKv::new(db);
    let key = Key::from(("bin", vec![0u8, 0xff, 0, 1])).with(-1i64).with(true);
    let v = kv.set(key.clone(), payload.clone()).await.unwrap();
    let e = kv.get(&key).await.unwrap().unwrap();
    assert_eq!((e.value, e.versionstamp), (payload, v));
    let listed = kv.list(netscript_runtime::kv::ListOptions::prefix(Key::from(("bin",)))).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_sleeps_until_the_next_due_time() {
    let ns = Namespace::new();
    let db = ns.db().await;
    let q = RedisQueue::new(Arc::clone(&db), "jobs");
    q.enqueue_one(msg(1).with_delay(Duration::from_millis(700))).await.unwrap();
    let start = Instant::now();
    let mut waits = 0;
    let got = loop {
        q.wait_for_work(Duration::from_secs(10)).await;
        waits += 1;
        let ds = q.claim(request(1)).await.unwrap();
        if !ds.is_empty() {
            break ds;
        }
        assert!(waits < 20, "the waiter spins");
    };
    println!("claimed after {:?} and {waits} waits", start.elapsed());
    assert_eq!(got.len(), 1);
    assert!(start.elapsed() >= Duration::from_millis(600), "{:?}", start.elapsed());
    // The enqueue's own wake-up, then the due time: never more than a few rounds.
    assert!(waits <= 4, "{waits} waits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_kv_writes_share_calls_but_not_outcomes() {
    use netscript_runtime::kv::AtomicWrite;
    let ns = Namespace::new();
    let kv = Arc::new(RedisKv::new(ns.db().await));
    // 64 tasks race for 8 keys, each write checked for absence: one winner per key, and every
    // other write of a key fails alone, without failing its neighbours in the same call.
    let mut tasks = Vec::new();
    for i in 0..64i64 {
        let kv = Arc::clone(&kv);
        tasks.push(tokio::spawn(async move {
            let key = Key::from(("slot", i % 8));
            let write = AtomicWrite::new().check(key.clone(), None).set(key, i.to_string().into_bytes());
            (i, kv.atomic(write).await.unwrap())
        }));
    }
    let mut winners = std::collections::BTreeMap::new();
    let mut stamps = std::collections::HashSet::new();
    for t in tasks {
        if let (i, Some(v)) = t.await.unwrap() {
            assert!(winners.insert(i % 8, i).is_none(), "two winners for slot {}", i % 8);
            assert!(stamps.insert(v), "versionstamp {v} given twice");
        }
    }
    assert_eq!(winners.len(), 8);
    for (slot, i) in winners {
        let e = kv.get(&Key::from(("slot", slot))).await.unwrap().unwrap();
        assert_eq!(e.value, i.to_string().into_bytes());
    }
}

#[test]
fn a_store_whose_runtime_is_gone_answers_instead_of_hanging() {
    let ns = Namespace::new();
    let first = tokio::runtime::Runtime::new().unwrap();
    let kv = first.block_on(async {
        let kv = RedisKv::new(ns.db().await);
        kv.set(Key::from(("a",)), b"1".to_vec()).await.unwrap();
        kv
    });
    drop(first);
    // The writer task and the connection died with their runtime: a write through the old
    // store answers (an error, or success once reconnected) rather than hanging, and a store
    // made in this runtime works.
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let fresh = RedisKv::new(ns.db().await);
        fresh.set(Key::from(("b",)), b"2".to_vec()).await.unwrap();
        assert_eq!(fresh.get(&Key::from(("a",))).await.unwrap().unwrap().value, b"1");
        let stale = tokio::time::timeout(Duration::from_secs(10), kv.set(Key::from(("c",)), b"3".to_vec())).await;
        println!("a store whose runtime is gone: {stale:?}");
        assert!(stale.is_ok(), "the write hung");
    });
}

/// A TCP proxy in front of Redis whose connections the test can cut, as a network failure
/// or a server restart would.
struct Proxy {
    port: u16,
    links: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = redis_url().trim_start_matches("redis://").split('/').next().unwrap().to_owned();
        let links = Arc::new(std::sync::Mutex::new(Vec::new()));
        let accept = {
            let links = Arc::clone(&links);
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let target = target.clone();
                    let link = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    links.lock().unwrap().push(link);
                }
            })
        };
        Self { port, links, accept }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Closes every connection made so far; new ones are accepted.
    fn cut(&self) -> usize {
        let links: Vec<_> = self.links.lock().unwrap().drain(..).collect();
        for l in &links {
            l.abort();
        }
        links.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_are_reopened() {
    let ns = Namespace::new();
    let proxy = Proxy::start().await;
    let via_proxy = Arc::new(RedisDb::connect(RedisOptions::new(proxy.url()).prefix(ns.prefix.clone())).await.unwrap());
    let direct = ns.db().await;
    let q = Arc::new(RedisQueue::new(Arc::clone(&via_proxy), "jobs"));
    let other = RedisQueue::new(Arc::clone(&direct), "jobs");
    q.enqueue((0..10).map(msg).collect()).await.unwrap();
    let held = q.claim(request(4)).await.unwrap();
    assert_eq!(held.len(), 4);

    assert_eq!(proxy.cut(), 2, "the command and the pub/sub connection");
    // Commands fail while the connection is re-opened, then work again, with nothing lost.
    let start = Instant::now();
    let mut failures = 0;
    let settled = loop {
        match q.settle(held.iter().map(|d| Settlement::Ack(d.lease)).collect()).await {
            Ok(out) => break out,
            Err(e) => {
                failures += 1;
                println!("while reconnecting: {e}");
                assert!(start.elapsed() < Duration::from_secs(10), "no reconnection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    println!("commands work again after {:?} ({failures} failed calls)", start.elapsed());
    assert!(settled.iter().all(|s| *s == Settled::Ok));
    assert_eq!(q.stats().await.unwrap().ready, 6);

    // The pub/sub connection comes back too: wake-ups from another process arrive again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    q.claim(request(100)).await.unwrap();
    q.wait_for_work(Duration::from_millis(10)).await; // a wake from the reconnection
    let waiter = {
        let q = Arc::clone(&q);
        tokio::spawn(async move { q.wait_for_work(Duration::from_secs(20)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished());
    other.enqueue_one(msg(99)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(3), waiter).await.unwrap().unwrap();
    let kv = RedisKv::new(Arc::clone(&via_proxy));
    let mut watch = kv.watch(&Key::from(("w",)));
    RedisKv::new(direct).set(Key::from(("w", 1i64)), vec![]).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(3), watch.next()).await.unwrap().unwrap();
    assert_eq!(event.key(), &Key::from(("w", 1i64)));
}

/// Throughput of the storage layer. Run in release mode:
/// `cargo test --release -p netscript-runtime --no-default-features --features redis,embedded
/// --test redis measure -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "measurement; run by hand in release mode"]
async fn measure() {
    const N: usize = 20_000;
    let ns = Namespace::new();
    let db = ns.db().await;
    let q = Arc::new(RedisQueue::new(Arc::clone(&db), "jobs"));
    let mut raw = raw();
    // Server CPU per message tells whether Redis or the client bounds a phase (the server is
    // shared with other tests, so run this alone for clean figures).
    let cpu = |raw: &mut ::redis::Connection, before: Duration, took: Duration| {
        let used = server_cpu(raw).saturating_sub(before);
        format!(
            "server CPU {:.1} µs/msg, {:.0}% of one core",
            used.as_secs_f64() * 1e6 / N as f64,
            used.as_secs_f64() * 100.0 / took.as_secs_f64()
        )
    };

    let (start, before) = (Instant::now(), server_cpu(&mut raw));
    enqueue_many(&q, N, 100).await;
    let took = start.elapsed();
    println!(
        "enqueue: {N} messages in batches of 100, one task: {:.0} msg/s ({took:?}; {})",
        N as f64 / took.as_secs_f64(),
        cpu(&mut raw, before, took)
    );

    let (start, before) = (Instant::now(), server_cpu(&mut raw));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let q = Arc::clone(&q);
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            loop {
                let ds = q.claim(request(32)).await.unwrap();
                if ds.is_empty() {
                    return n;
                }
                n += ds.len();
                let out = q.settle(ds.iter().map(|d| Settlement::Ack(d.lease)).collect()).await.unwrap();
                assert!(out.iter().all(|s| *s == Settled::Ok));
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let took = start.elapsed();
    assert_eq!(total, N);
    println!(
        "claim+ack: {N} messages, claims of 32 by 4 tasks, acks per batch: {:.0} msg/s ({took:?}; {})",
        N as f64 / took.as_secs_f64(),
        cpu(&mut raw, before, took)
    );

    // The same with 4 enqueuing tasks, as several producers would.
    let (start, before) = (Instant::now(), server_cpu(&mut raw));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let q = Arc::clone(&q);
        tasks.push(tokio::spawn(async move { enqueue_many(&q, N / 4, 100).await }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = start.elapsed();
    println!(
        "enqueue: {N} messages in batches of 100, 4 tasks: {:.0} msg/s ({took:?}; {})",
        N as f64 / took.as_secs_f64(),
        cpu(&mut raw, before, took)
    );

    // Pickup latency: an idle worker woken by an enqueue, one message at a time.
    let drained = q.claim(request(1000)).await.unwrap();
    let mut left = drained;
    while !left.is_empty() {
        q.settle(left.iter().map(|d| Settlement::Ack(d.lease)).collect()).await.unwrap();
        left = q.claim(request(1000)).await.unwrap();
    }
    let mut pickups = Vec::new();
    for i in 0..200 {
        let worker = {
            let q = Arc::clone(&q);
            tokio::spawn(async move {
                loop {
                    let ds = q.claim(request(1)).await.unwrap();
                    if let Some(d) = ds.into_iter().next() {
                        let at = Instant::now();
                        q.settle_one(Settlement::Ack(d.lease)).await.unwrap();
                        return at;
                    }
                    q.wait_for_work(Duration::from_secs(5)).await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(2)).await;
        let sent = Instant::now();
        q.enqueue_one(msg(i)).await.unwrap();
        let got = worker.await.unwrap();
        pickups.push(got.saturating_duration_since(sent));
    }
    pickups.sort();
    println!(
        "pickup (enqueue -> claimed by an idle waiter): p50 {:?}, p99 {:?}",
        pickups[pickups.len() / 2],
        pickups[pickups.len() * 99 / 100]
    );

    // Claim and ack apart, to see which half costs what on the server.
    enqueue_many(&q, N, 1000).await;
    let (start, before) = (Instant::now(), server_cpu(&mut raw));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let q = Arc::clone(&q);
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let ds = q.claim(request(32)).await.unwrap();
                if ds.is_empty() {
                    return got;
                }
                got.extend(ds.into_iter().map(|d| d.lease));
            }
        }));
    }
    let mut leases = Vec::new();
    for t in tasks {
        leases.extend(t.await.unwrap());
    }
    let took = start.elapsed();
    assert_eq!(leases.len(), N);
    println!(
        "claim only (32 per call, 4 tasks): {:.0} msg/s ({})",
        N as f64 / took.as_secs_f64(),
        cpu(&mut raw, before, took)
    );
    let (start, before) = (Instant::now(), server_cpu(&mut raw));
    for chunk in leases.chunks(32) {
        q.settle(chunk.iter().map(|l| Settlement::Ack(*l)).collect()).await.unwrap();
    }
    let took = start.elapsed();
    println!(
        "ack only (32 per call, one task): {:.0} msg/s ({})",
        N as f64 / took.as_secs_f64(),
        cpu(&mut raw, before, took)
    );

    // KV writes as the execution store makes them: one record per write, checked against
    // its previous versionstamp, by 4 and by 64 tasks (concurrent writes share calls).
    let kv = Arc::new(RedisKv::new(Arc::clone(&db)));
    let record = vec![b'x'; 300];
    for writers in [4i64, 64] {
        let (start, before) = (Instant::now(), server_cpu(&mut raw));
        let mut tasks = Vec::new();
        for t in 0..writers {
            let (kv, record) = (Arc::clone(&kv), record.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..N as i64 / writers {
                    let key = Key::from(("executions", writers)).with(t * 1_000_000 + i);
                    let write =
                        netscript_runtime::kv::AtomicWrite::new().check(key.clone(), None).set(key, record.clone());
                    assert!(kv.atomic(write).await.unwrap().is_some());
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let took = start.elapsed();
        println!(
            "kv: {N} checked writes of 300 bytes, one per call, {writers} tasks: {:.0} writes/s ({})",
            N as f64 / took.as_secs_f64(),
            cpu(&mut raw, before, took)
        );
    }

    // Claim speed against a large backlog.
    let backlog: usize =
        std::env::var("NETSCRIPT_MEASURE_BACKLOG").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let big = RedisQueue::new(Arc::clone(&db), "backlog");
    let start = Instant::now();
    enqueue_many(&big, backlog, 1000).await;
    println!("backlog: enqueued {backlog} in {:?}", start.elapsed());
    let (slowest, last) = time_claims(&big, 20).await;
    println!("claim of 32 from a backlog of {backlog}: slowest {slowest:?}, last {last:?}");
    let small = RedisQueue::new(Arc::clone(&db), "small");
    enqueue_many(&small, 1000, 1000).await;
    let (slowest, last) = time_claims(&small, 20).await;
    println!("claim of 32 from a backlog of 1000: slowest {slowest:?}, last {last:?}");
}

/// A `redis-server` of the test's own that speaks only TLS, with a certificate from a CA made
/// for the test (`openssl`); killed on drop.
struct TlsRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl TlsRedis {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl").args(args).current_dir(dir.path()).output().unwrap();
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=netscript test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(dir.path().join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--tls-cert-file", "server.crt", "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.crt"])
            .args(["--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (is it installed?)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server with TLS on port {port} did not come up");
            std::thread::sleep(Duration::from_millis(10));
        }
        TlsRedis { port, dir, child }
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.crt")
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `rediss://` with the server's CA: the queue and the KV store work over TLS. Without the CA
/// (the system's roots do not know it) connecting fails with a clear error, and a plain
/// `redis://` to the TLS port never gets a `PONG`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_works_and_an_unknown_ca_is_refused() {
    let server = TlsRedis::start();
    let options = RedisOptions::new(server.url()).prefix("tls").tls_ca_file(server.ca());
    let db = Arc::new(RedisDb::connect(options).await.expect("TLS connection with the test's CA"));
    let queue = RedisQueue::new(Arc::clone(&db), "tls-jobs");
    queue.enqueue(vec![msg(1), msg(2)]).await.unwrap();
    let claimed = queue.claim(request(10)).await.unwrap();
    assert_eq!(claimed.len(), 2);
    for d in claimed {
        assert_eq!(queue.settle_one(Settlement::Ack(d.lease)).await.unwrap(), Settled::Ok);
    }
    let kv = RedisKv::new(Arc::clone(&db));
    let key = Key::from(("tls", "greeting"));
    kv.set(key.clone(), b"over TLS".to_vec()).await.unwrap();
    assert_eq!(kv.get(&key).await.unwrap().unwrap().value, b"over TLS");

    let unknown =
        RedisDb::connect(RedisOptions::new(server.url()).prefix("tls").connect_timeout(Duration::from_secs(3))).await;
    let message = match unknown {
        Ok(_) => panic!("a server whose CA nobody trusts was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains(&format!("127.0.0.1:{}", server.port)), "{message}");
    assert!(message.contains("UnknownIssuer"), "the reason is the certificate: {message}");
    let missing =
        RedisDb::connect(RedisOptions::new(server.url()).tls_ca_file(server.dir.path().join("nope.pem"))).await;
    match missing {
        Ok(_) => panic!("a missing CA file was accepted"),
        Err(e) => assert!(e.to_string().contains("nope.pem"), "{e}"),
    }
    let plain = RedisDb::connect(
        RedisOptions::new(format!("redis://127.0.0.1:{}", server.port)).connect_timeout(Duration::from_secs(2)),
    )
    .await;
    assert!(plain.is_err(), "plain text to a TLS port");
}

/// The runtime reaches a `rediss://` server from its configuration alone (the URL and the CA
/// file that `REDIS_URL` and `REDIS_TLS_CA_FILE` set): its queue and its store work over TLS.
/// Without the CA it does not start, and the error names the server and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_configured_for_rediss_works_over_tls() {
    use netscript_runtime::config::BrokerUrl;
    use netscript_runtime::{QueueProvider, Runtime};

    let server = TlsRedis::start();
    let build = |ca: Option<std::path::PathBuf>| {
        let url = server.url();
        Runtime::builder()
            .ignore_env()
            .provider(QueueProvider::Redis)
            .configure(move |c| {
                c.brokers.redis = Some(BrokerUrl::new(url));
                c.brokers.redis_tls_ca = ca;
                c.namespace = "tls_runtime".into();
            })
            .build()
    };
    let rt = build(Some(server.ca())).await.expect("a runtime over TLS with the test's CA");
    assert_eq!(rt.queue().provider(), "redis");
    rt.queue().enqueue(vec![msg(1)]).await.unwrap();
    let claimed = rt.queue().claim(request(10)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(rt.queue().settle_one(Settlement::Ack(claimed[0].lease)).await.unwrap(), Settled::Ok);
    let key = Key::from(("tls", "runtime"));
    rt.store().kv().set(key.clone(), b"over TLS".to_vec()).await.unwrap();
    assert_eq!(rt.store().kv().get(&key).await.unwrap().unwrap().value, b"over TLS");
    drop(rt);

    let refused = match build(None).await {
        Ok(_) => panic!("a runtime trusted a server whose CA nobody gave it"),
        Err(e) => e.to_string(),
    };
    assert!(refused.contains(&format!("127.0.0.1:{}", server.port)), "{refused}");
    assert!(refused.contains("UnknownIssuer"), "the reason is the certificate: {refused}");
}
