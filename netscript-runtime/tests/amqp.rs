//! Tests of the RabbitMQ queue that only it can pass: two processes on one queue (fencing,
//! concurrency keys and orphan recovery across connections), an unreadable delivery, a
//! dropped broker connection, a broker that is down, and short delays behind long ones. The
//! behaviour it shares with every backend is in `conformance/`.
//!
//! `measure` (ignored) prints throughput: `cargo test --release -p netscript-runtime
//! --no-default-features --features amqp,embedded --test amqp measure -- --ignored --nocapture`.

#![cfg(feature = "amqp")]
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant};

use netscript_runtime::kv::Kv;
use netscript_runtime::kv::memory::MemoryKv;
use netscript_runtime::queue::amqp::{AmqpOptions, AmqpQueue};
use netscript_runtime::queue::{ClaimRequest, Delivery, NewMessage, Queue, QueueError, Settled, Settlement};

fn url() -> String {
    std::env::var("NETSCRIPT_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

const PREFIX: &str = "nstest";

/// A unique queue name, and the deletion of its broker queues when the test ends.
struct Namespace {
    name: String,
    queues: Vec<Arc<AmqpQueue>>,
}

impl Namespace {
    fn new() -> Self {
        Self { name: format!("be-{}", uuid::Uuid::now_v7().simple()), queues: Vec::new() }
    }

    async fn open(&mut self, kv: Arc<dyn Kv>) -> Arc<AmqpQueue> {
        let q =
            Arc::new(AmqpQueue::connect(AmqpOptions::new(url()).with_prefix(PREFIX), &self.name, kv).await.unwrap());
        self.queues.push(Arc::clone(&q));
        q
    }

    fn topic_queue(&self, topic: &str) -> String {
        format!("{PREFIX}.{}.t.{topic}", self.name)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let mut names: Vec<String> = self.queues.iter().flat_map(|q| q.declared_queues()).collect();
        // Stops their reconnection tasks, which would otherwise re-declare what is deleted here.
        self.queues.clear();
        names.sort();
        names.dedup();
        if names.is_empty() {
            return;
        }
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let Ok(conn) = lapin::Connection::connect(&url(), lapin::ConnectionProperties::default()).await else {
                    return;
                };
                let Ok(channel) = conn.create_channel().await else { return };
                for name in names {
                    let _ = channel.queue_delete(name.into(), lapin::options::QueueDeleteOptions::default()).await;
                }
                let _ = conn.close(200, "done".into()).await;
            });
        })
        .join();
    }
}

fn req(max: usize, lease: Duration) -> ClaimRequest {
    ClaimRequest { topics: Vec::new(), max, lease }
}

/// Claims from whichever of `queues` has the message, until `deadline`.
async fn claim_any(queues: &[&Arc<AmqpQueue>], lease: Duration, within: Duration) -> Option<(usize, Delivery)> {
    let start = Instant::now();
    while start.elapsed() < within {
        for (i, q) in queues.iter().enumerate() {
            if let Some(d) = q.claim(req(1, lease)).await.unwrap().pop() {
                return Some((i, d));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_is_down_is_named_without_the_password() {
    let options = AmqpOptions::new("amqp://guest:hunter2@127.0.0.1:1/%2f").with_connect_timeout(Duration::from_secs(5));
    let err = match AmqpQueue::connect(options, "down", Arc::new(MemoryKv::new())).await {
        Ok(_) => panic!("connected to a closed port"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(matches!(err, QueueError::Backend { backend: "amqp", .. }), "{err:?}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_holders_message_comes_back_at_once() {
    let mut ns = Namespace::new();
    let kv: Arc<dyn Kv> = Arc::new(MemoryKv::new());
    let a = ns.open(Arc::clone(&kv)).await;
    let b = ns.open(Arc::clone(&kv)).await;
    a.enqueue_one(NewMessage::new("t", "job", b"x".to_vec())).await.unwrap();
    let first = claim_any(&[&a], Duration::from_secs(600), Duration::from_secs(5)).await.unwrap().1;
    assert_eq!(first.attempt, 1);
    assert!(b.claim(req(1, Duration::from_secs(600))).await.unwrap().is_empty());
    // The holder "crashes": its connection goes, and the broker gives the delivery back
    // long before the 10-minute lease would have lapsed.
    let started = Instant::now();
    a.close().await;
    let (_, again) = claim_any(&[&b], Duration::from_secs(60), Duration::from_secs(10)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(again.id, first.id);
    assert_eq!(again.attempt, 2);
    assert_eq!(again.lease.token, first.lease.token + 1);
    assert_eq!(b.settle_one(Settlement::Ack(again.lease)).await.unwrap(), Settled::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_lease_is_fenced_across_processes() {
    let mut ns = Namespace::new();
    let kv: Arc<dyn Kv> = Arc::new(MemoryKv::new());
    let a = ns.open(Arc::clone(&kv)).await;
    let b = ns.open(Arc::clone(&kv)).await;
    // Both consume the topic.
    assert!(b.claim(req(1, Duration::from_secs(1))).await.unwrap().is_empty());
    a.enqueue_one(NewMessage::new("t", "job", b"x".to_vec())).await.unwrap();
    let (holder, first) = claim_any(&[&a, &b], Duration::from_millis(200), Duration::from_secs(5)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, second) = claim_any(&[&a, &b], Duration::from_secs(60), Duration::from_secs(10)).await.unwrap();
    assert_eq!(second.id, first.id);
    assert_eq!(second.attempt, 2);
    assert_eq!(second.lease.token, first.lease.token + 1);
    let old = [&a, &b][holder];
    assert_eq!(old.settle_one(Settlement::Ack(first.lease)).await.unwrap(), Settled::Stale);
    for q in [&a, &b] {
        if q.settle_one(Settlement::Ack(second.lease)).await.unwrap() == Settled::Ok {
            return;
        }
    }
    panic!("the current lease was refused by both handles");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_key_holds_across_processes() {
    let mut ns = Namespace::new();
    let kv: Arc<dyn Kv> = Arc::new(MemoryKv::new());
    let a = ns.open(Arc::clone(&kv)).await;
    let b = ns.open(Arc::clone(&kv)).await;
    assert!(a.claim(req(1, Duration::from_secs(1))).await.unwrap().is_empty());
    assert!(b.claim(req(1, Duration::from_secs(1))).await.unwrap().is_empty());
    let msgs: Vec<NewMessage> =
        (0..6).map(|i| NewMessage::new("t", format!("k-{i}"), vec![]).with_concurrency_key("k")).collect();
    a.enqueue(msgs).await.unwrap();
    let mut done = 0;
    let start = Instant::now();
    while done < 6 {
        assert!(start.elapsed() < Duration::from_secs(20), "only {done} of 6 ran");
        let mut held: Vec<(usize, Delivery)> = Vec::new();
        for (i, q) in [&a, &b].iter().enumerate() {
            for d in q.claim(req(10, Duration::from_secs(30))).await.unwrap() {
                held.push((i, d));
            }
        }
        assert!(
            held.len() <= 1,
            "two leases of one key at once: {:?}",
            held.iter().map(|h| &h.1.kind).collect::<Vec<_>>()
        );
        for (i, d) in held {
            assert_eq!([&a, &b][i].settle_one(Settlement::Ack(d.lease)).await.unwrap(), Settled::Ok);
            done += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_delivery_goes_to_the_dead_letters() {
    let mut ns = Namespace::new();
    let q = ns.open(Arc::new(MemoryKv::new())).await;
    // Subscribes, which declares the topic's queue.
    assert!(
        q.claim(ClaimRequest { topics: vec!["t".into()], max: 1, lease: Duration::from_secs(5) })
            .await
            .unwrap()
            .is_empty()
    );
    let conn = lapin::Connection::connect(&url(), lapin::ConnectionProperties::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel.confirm_select(lapin::options::ConfirmSelectOptions::default()).await.unwrap();
    channel
        .basic_publish(
            "".into(),
            ns.topic_queue("t").into(),
            lapin::options::BasicPublishOptions::default(),
            b"not ours",
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    conn.close(200, "done".into()).await.unwrap();
    let start = Instant::now();
    let dead = loop {
        let dead = q.dead_letters(10).await.unwrap();
        if !dead.is_empty() {
            break dead;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.payload, b"not ours");
    assert!(dead[0].error.contains("not a netscript message"), "{}", dead[0].error);
    assert!(q.claim(req(10, Duration::from_secs(5))).await.unwrap().is_empty());
    let s = q.stats().await.unwrap();
    assert_eq!((s.ready, s.dead), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_delay_is_not_held_back_by_a_long_one() {
    let mut ns = Namespace::new();
    let q = ns.open(Arc::new(MemoryKv::new())).await;
    q.enqueue_one(NewMessage::new("t", "long", vec![]).with_delay(Duration::from_secs(120))).await.unwrap();
    q.enqueue_one(NewMessage::new("t", "short", vec![]).with_delay(Duration::from_millis(200))).await.unwrap();
    let (_, d) = claim_any(&[&q], Duration::from_secs(5), Duration::from_secs(5)).await.unwrap();
    assert_eq!(d.kind, "short");
    let s = q.stats().await.unwrap();
    assert_eq!((s.delayed, s.leased), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_key_never_blocks_other_messages() {
    let mut ns = Namespace::new();
    let options = AmqpOptions::new(url()).with_prefix(PREFIX).with_prefetch(20);
    let q = Arc::new(AmqpQueue::connect(options, &ns.name, Arc::new(MemoryKv::new())).await.unwrap());
    ns.queues.push(Arc::clone(&q));
    // 60 messages of one key, then 5 without: far more than the prefetch window of 20.
    let mut msgs: Vec<NewMessage> =
        (0..60).map(|i| NewMessage::new("t", format!("k-{i}"), vec![]).with_concurrency_key("k")).collect();
    msgs.extend((0..5).map(|i| NewMessage::new("t", format!("free-{i}"), vec![])));
    q.enqueue(msgs).await.unwrap();
    let lease = Duration::from_secs(60);
    let first = claim_any(&[&q], lease, Duration::from_secs(5)).await.unwrap().1;
    assert_eq!(first.kind, "k-0");
    // While `k` is held, the free messages behind the parked ones still get through.
    let mut free = Vec::new();
    let start = Instant::now();
    while free.len() < 5 {
        assert!(start.elapsed() < Duration::from_secs(20), "free messages stuck behind a held key: {free:?}");
        for d in q.claim(req(10, lease)).await.unwrap() {
            assert!(d.kind.starts_with("free-"), "{} leased while k-0 holds its key", d.kind);
            q.settle_one(Settlement::Ack(d.lease)).await.unwrap();
            free.push(d.kind);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then every message of the key runs, one at a time.
    q.settle_one(Settlement::Ack(first.lease)).await.unwrap();
    let mut seen = std::collections::HashSet::new();
    seen.insert(first.kind);
    let start = Instant::now();
    while seen.len() < 60 {
        assert!(start.elapsed() < Duration::from_secs(30), "only {} of 60 ran", seen.len());
        let ds = q.claim(req(10, lease)).await.unwrap();
        assert!(ds.len() <= 1, "{ds:?}");
        for d in ds {
            assert!(seen.insert(d.kind.clone()), "{} ran twice", d.kind);
            q.settle_one(Settlement::Ack(d.lease)).await.unwrap();
        }
        if seen.len() < 60 {
            q.wait_for_work(Duration::from_millis(100)).await;
        }
    }
}

/// Closes this test's broker connections with `rabbitmqctl` (none other: the connection name
/// carries the queue name). `false` when rabbitmqctl is not usable here.
fn close_connections_of(queue_name: &str) -> bool {
    let Ok(out) = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "-q", "--no-table-headers", "pid", "client_properties"])
        .output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut closed = false;
    for line in text.lines().filter(|l| l.contains(queue_name)) {
        let Some(pid) = line.split_whitespace().next() else { continue };
        let status = std::process::Command::new("rabbitmqctl")
            .args(["close_connection", pid, "test: dropped"])
            .stdout(std::process::Stdio::null())
            .status();
        closed |= status.is_ok_and(|s| s.success());
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_reconnects_after_the_broker_drops_the_connection_and_the_lease_survives() {
    let mut ns = Namespace::new();
    let q = ns.open(Arc::new(MemoryKv::new())).await;
    q.enqueue_one(NewMessage::new("t", "job", b"x".to_vec())).await.unwrap();
    let first = claim_any(&[&q], Duration::from_secs(600), Duration::from_secs(5)).await.unwrap().1;
    if !close_connections_of(&ns.name) {
        eprintln!("skipped: rabbitmqctl cannot close connections here");
        return;
    }
    // The delivery of the dead connection comes back from the broker, to the lease that
    // holds it: no one claims it again, and the lease extends and settles after the reconnect.
    assert!(claim_any(&[&q], Duration::from_secs(60), Duration::from_secs(2)).await.is_none());
    assert_eq!(q.extend(&[first.lease], Duration::from_secs(60)).await.unwrap(), vec![Settled::Ok]);
    assert_eq!(q.settle_one(Settlement::Ack(first.lease)).await.unwrap(), Settled::Ok);
    // And it keeps working.
    q.enqueue_one(NewMessage::new("t", "after", vec![])).await.unwrap();
    let (_, after) = claim_any(&[&q], Duration::from_secs(60), Duration::from_secs(5)).await.unwrap();
    assert_eq!(after.kind, "after");
    let s = q.stats().await.unwrap();
    assert_eq!((s.ready, s.leased), (0, 1), "{s:?}");
}

/// Enqueue rate in batches of 100 (one task, then four), then claim (batches of 32, four
/// tasks) + ack (in batches) rate, for 20,000 messages each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "measurement: run in release with --ignored --nocapture"]
async fn measure() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const N: usize = 20_000;
    type MakeKv = fn() -> (Arc<dyn Kv>, Option<tempfile::TempDir>);
    let kvs: [(&str, MakeKv); 2] = [
        ("MemoryKv", || (Arc::new(MemoryKv::new()), None)),
        ("EmbeddedKv", || {
            let dir = tempfile::tempdir().unwrap();
            let db = Arc::new(netscript_runtime::embedded::EmbeddedDb::open(dir.path()).unwrap());
            (Arc::new(netscript_runtime::kv::embedded::EmbeddedKv::new(db)), Some(dir))
        }),
    ];
    for (label, make_kv) in kvs {
        for enqueuers in [1usize, 4] {
            let mut ns = Namespace::new();
            let (kv, _dir) = make_kv();
            let q = ns.open(kv).await;
            let start = Instant::now();
            let mut tasks = Vec::new();
            for e in 0..enqueuers {
                let q = Arc::clone(&q);
                tasks.push(tokio::spawn(async move {
                    for chunk in (e..N / 100).step_by(enqueuers) {
                        let batch = (0..100)
                            .map(|i| NewMessage::new("bench", "noop", format!("{}", chunk * 100 + i)))
                            .collect();
                        q.enqueue(batch).await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let enqueue = start.elapsed();
            let start = Instant::now();
            let done = Arc::new(AtomicUsize::new(0));
            let mut tasks = Vec::new();
            for _ in 0..4 {
                let (q, done) = (Arc::clone(&q), Arc::clone(&done));
                tasks.push(tokio::spawn(async move {
                    let (mut claiming, mut settling) = (Duration::ZERO, Duration::ZERO);
                    while done.load(Ordering::Relaxed) < N {
                        let t = Instant::now();
                        let ds = q.claim(req(32, Duration::from_secs(60))).await.unwrap();
                        claiming += t.elapsed();
                        if ds.is_empty() {
                            q.wait_for_work(Duration::from_millis(20)).await;
                            continue;
                        }
                        let t = Instant::now();
                        q.settle(ds.iter().map(|d| Settlement::Ack(d.lease)).collect()).await.unwrap();
                        settling += t.elapsed();
                        done.fetch_add(ds.len(), Ordering::Relaxed);
                    }
                    (claiming, settling)
                }));
            }
            let (mut claiming, mut settling) = (Duration::ZERO, Duration::ZERO);
            for t in tasks {
                let (c, s) = t.await.unwrap();
                claiming += c;
                settling += s;
            }
            let claimed = start.elapsed();
            assert_eq!(done.load(Ordering::Relaxed), N);
            println!(
                "amqp + {label}: enqueue {:.0} msg/s ({N} in batches of 100 by {enqueuers} task(s), {enqueue:.2?}); \
                 claim+ack {:.0} msg/s (4 tasks x 32, {claimed:.2?}; task time in claim {claiming:.2?}, in settle \
                 {settling:.2?})",
                N as f64 / enqueue.as_secs_f64(),
                N as f64 / claimed.as_secs_f64(),
            );
        }
    }
}

/// The bound under `measure`: the same traffic straight through lapin, without the queue
/// (persistent messages, confirms awaited per batch of 100, one consumer with prefetch 1,000
/// acking every delivery).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "measurement: run in release with --ignored --nocapture"]
async fn measure_raw_broker() {
    use futures::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
    use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions};
    const N: usize = 20_000;
    for priority in [false, true] {
        let name = format!("{PREFIX}.raw-{}", uuid::Uuid::now_v7().simple());
        let conn = lapin::Connection::connect(&url(), lapin::ConnectionProperties::default()).await.unwrap();
        let publish = conn.create_channel().await.unwrap();
        publish.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let mut args = lapin::types::FieldTable::default();
        if priority {
            args.insert("x-max-priority".into(), lapin::types::AMQPValue::LongInt(10));
        }
        publish.queue_declare(name.clone().into(), QueueDeclareOptions::durable(), args).await.unwrap();
        let body = vec![0u8; 200];
        let start = Instant::now();
        for _ in 0..N / 100 {
            let mut confirms = Vec::new();
            for _ in 0..100 {
                let properties = lapin::BasicProperties::default().with_delivery_mode(2);
                let c = publish
                    .basic_publish("".into(), name.clone().into(), BasicPublishOptions::default(), &body, properties)
                    .await
                    .unwrap();
                confirms.push(c);
            }
            for c in futures::future::join_all(confirms).await {
                assert!(c.unwrap().is_ack());
            }
        }
        let published = start.elapsed();
        let consume = conn.create_channel().await.unwrap();
        consume.basic_qos(1000, BasicQosOptions::default()).await.unwrap();
        let start = Instant::now();
        let mut consumer = consume
            .basic_consume(name.clone().into(), "raw".into(), BasicConsumeOptions::default(), Default::default())
            .await
            .unwrap();
        for _ in 0..N {
            let d = consumer.next().await.unwrap().unwrap();
            consume.basic_ack(d.delivery_tag, BasicAckOptions::default()).await.unwrap();
        }
        let consumed = start.elapsed();
        publish.queue_delete(name.into(), QueueDeleteOptions::default()).await.unwrap();
        println!(
            "raw lapin (x-max-priority: {priority}): publish+confirm {:.0} msg/s (batches of 100, {published:.2?}); \
         consume+ack {:.0} msg/s ({consumed:.2?})",
            N as f64 / published.as_secs_f64(),
            N as f64 / consumed.as_secs_f64(),
        );
    }
}

/// Claim+ack of 5,000 messages on top of a backlog of 200,000, against the same on an empty
/// queue: claims read the prefetch buffer and point keys, never the backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "measurement: run in release with --ignored --nocapture"]
async fn measure_backlog() {
    const TAKE: usize = 5_000;
    for backlog in [0usize, 200_000] {
        let mut ns = Namespace::new();
        let q = ns.open(Arc::new(MemoryKv::new())).await;
        let total = backlog + TAKE;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for e in 0..8 {
            let q = Arc::clone(&q);
            tasks.push(tokio::spawn(async move {
                for chunk in (e..total / 500).step_by(8) {
                    let batch =
                        (0..500).map(|i| NewMessage::new("bench", "noop", format!("{}", chunk * 500 + i))).collect();
                    q.enqueue(batch).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let filled = start.elapsed();
        let start = Instant::now();
        let mut done = 0;
        while done < TAKE {
            let ds = q.claim(req(32, Duration::from_secs(60))).await.unwrap();
            done += ds.len();
            q.settle(ds.iter().map(|d| Settlement::Ack(d.lease)).collect()).await.unwrap();
        }
        let took = start.elapsed();
        println!(
            "backlog {backlog}: claim+ack of {TAKE} by one task {:.0} msg/s ({took:.2?}; filled {total} in {filled:.2?})",
            TAKE as f64 / took.as_secs_f64()
        );
    }
}
