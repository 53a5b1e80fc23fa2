//! Backends that fail for a while: the workers keep going and nothing is lost.
//!
//! Each backend is wrapped so that its first calls of one kind fail, the way a broker that
//! went away or a full disk would answer, and then recover.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use netscript::kv::memory::MemoryKv;
use netscript::kv::{AtomicWrite, Entry, Key, Kv, KvError, KvWatch, ListOptions, Versionstamp};
use netscript::prelude::*;
use netscript::queue::memory::MemoryQueue;
use netscript::queue::{
    Cancelled, ClaimRequest, DeadLetter, Delivery, Enqueued, Lease, MessageId, NewMessage, Queue, QueueError,
    QueueStats, Settled, Settlement,
};
use netscript::{CancellationToken, ExecutionStatus};

/// Counts itself.
#[job(id = "count", retries = 0)]
async fn count(n: u32) -> JobResult<u32> {
    Ok(n)
}

/// A memory queue whose first `failing` claims fail, and whose enqueues fail while
/// `failing_enqueues` is above zero. Its dead-letter purge runs `purge_ahead` in the future
/// (time passing for the dead letters) and notes the cut-offs it was asked for.
struct FlakyClaims {
    inner: MemoryQueue,
    failing: AtomicU32,
    failed: AtomicU32,
    failing_enqueues: AtomicU32,
    purge_ahead: Duration,
    purges: std::sync::Mutex<Vec<netscript::time::Timestamp>>,
}

impl FlakyClaims {
    fn new(failing_claims: u32, failing_enqueues: u32) -> Self {
        Self {
            inner: MemoryQueue::new(),
            failing: AtomicU32::new(failing_claims),
            failed: AtomicU32::new(0),
            failing_enqueues: AtomicU32::new(failing_enqueues),
            purge_ahead: Duration::ZERO,
            purges: std::sync::Mutex::default(),
        }
    }
}

#[async_trait]
impl Queue for FlakyClaims {
    fn provider(&self) -> &'static str {
        "flaky"
    }
    async fn enqueue(&self, m: Vec<NewMessage>) -> Result<Vec<Enqueued>, QueueError> {
        if self.failing_enqueues.load(Ordering::SeqCst) > 0 {
            self.failing_enqueues.fetch_sub(1, Ordering::SeqCst);
            return Err(QueueError::Backend { backend: "flaky", message: "broker went away".into() });
        }
        self.inner.enqueue(m).await
    }
    async fn claim(&self, r: ClaimRequest) -> Result<Vec<Delivery>, QueueError> {
        if self.failing.load(Ordering::SeqCst) > 0 {
            self.failing.fetch_sub(1, Ordering::SeqCst);
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(QueueError::Backend { backend: "flaky", message: "connection refused".into() });
        }
        self.inner.claim(r).await
    }
    async fn extend(&self, l: &[Lease], d: Duration) -> Result<Vec<Settled>, QueueError> {
        self.inner.extend(l, d).await
    }
    async fn settle(&self, s: Vec<Settlement>) -> Result<Vec<Settled>, QueueError> {
        self.inner.settle(s).await
    }
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.inner.dead_letters(limit).await
    }
    async fn redrive(&self, id: MessageId) -> Result<bool, QueueError> {
        self.inner.redrive(id).await
    }
    async fn purge_dead(&self, failed_before: netscript::time::Timestamp, limit: usize) -> Result<usize, QueueError> {
        self.purges.lock().unwrap().push(failed_before);
        self.inner.purge_dead(failed_before.plus(self.purge_ahead), limit).await
    }
    async fn cancel(&self, id: MessageId) -> Result<Cancelled, QueueError> {
        self.inner.cancel(id).await
    }
    async fn stats(&self) -> Result<QueueStats, QueueError> {
        self.inner.stats().await
    }
    async fn topic_stats(&self) -> Result<std::collections::BTreeMap<String, QueueStats>, QueueError> {
        self.inner.topic_stats().await
    }
    async fn wait_for_work(&self, timeout: Duration) {
        self.inner.wait_for_work(timeout).await
    }
}

/// A memory store whose unconditional writes (the records of finished attempts) fail while
/// `failing` is above zero.
struct FlakyWrites {
    inner: MemoryKv,
    failing: AtomicU32,
}

#[async_trait]
impl Kv for FlakyWrites {
    fn provider(&self) -> &'static str {
        "flaky"
    }
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>, KvError> {
        self.inner.get_many(keys).await
    }
    async fn atomic(&self, write: AtomicWrite) -> Result<Option<Versionstamp>, KvError> {
        if self.failing.load(Ordering::SeqCst) > 0 {
            self.failing.fetch_sub(1, Ordering::SeqCst);
            return Err(KvError::Backend { backend: "flaky", message: "disk full".into() });
        }
        self.inner.atomic(write).await
    }
    async fn list(&self, options: ListOptions) -> Result<Vec<Entry>, KvError> {
        self.inner.list(options).await
    }
    fn watch(&self, prefix: &Key) -> KvWatch {
        self.inner.watch(prefix)
    }
}

async fn run_until_recorded(rt: &Runtime, ids: &[netscript::ExecutionId]) {
    let workers = rt.spawn_workers();
    for &id in ids {
        let r = rt.wait_for(id, Duration::from_secs(20)).await.unwrap().unwrap();
        assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
        assert_eq!(r.result, Some(r.payload.clone()));
    }
    workers.stop().await;
}

#[tokio::test]
async fn claims_that_fail_are_retried_and_every_job_still_runs() {
    let queue = Arc::new(FlakyClaims::new(3, 0));
    let rt = Runtime::builder()
        .ignore_env()
        .queue(queue.clone())
        .kv(Arc::new(MemoryKv::new()))
        .state(Worker { name: "only", stall: false })
        .build()
        .await
        .unwrap();
    let ids: Vec<_> =
        rt.enqueue_many((0..20).map(count::enqueue).collect()).await.unwrap().iter().map(|r| r.execution_id).collect();
    run_until_recorded(&rt, &ids).await;
    assert_eq!(queue.failed.load(Ordering::SeqCst), 3, "the first claims did fail");
    let s = rt.queue().stats().await.unwrap();
    assert_eq!((s.ready, s.leased, s.dead), (0, 0, 0), "{s:?}");
}

/// A runtime whose store refuses writes while `kv.failing` is above zero, with a short lease.
async fn flaky_store_runtime(kv: &Arc<FlakyWrites>) -> Runtime {
    Runtime::builder()
        .ignore_env()
        .queue(Arc::new(MemoryQueue::new()))
        .kv(kv.clone())
        .state(Worker { name: "only", stall: false })
        // A short lease, so an unsettled message comes back quickly.
        .configure(|c| c.lease = Duration::from_millis(300))
        .build()
        .await
        .unwrap()
}

/// How many of `ids` ran more than once.
async fn reruns(rt: &Runtime, ids: &[netscript::ExecutionId]) -> u32 {
    let mut n = 0;
    for &id in ids {
        n += u32::from(rt.store().get(id).await.unwrap().unwrap().attempt > 1);
    }
    n
}

#[tokio::test]
async fn results_that_cannot_be_recorded_for_a_moment_are_kept_and_recorded_without_a_rerun() {
    let kv = Arc::new(FlakyWrites { inner: MemoryKv::new(), failing: AtomicU32::new(0) });
    let rt = flaky_store_runtime(&kv).await;
    let ids: Vec<_> =
        rt.enqueue_many((0..5).map(count::enqueue).collect()).await.unwrap().iter().map(|r| r.execution_id).collect();
    // The queued records are in; the next two writes (the workers' results) fail.
    kv.failing.store(2, Ordering::SeqCst);
    run_until_recorded(&rt, &ids).await;
    assert_eq!(kv.failing.load(Ordering::SeqCst), 0, "the record writes did fail");
    // The recorder kept the results and wrote them on a later try, within their leases.
    assert_eq!(reruns(&rt, &ids).await, 0, "a kept result means the job did not run again");
    let s = rt.queue().stats().await.unwrap();
    assert_eq!((s.ready, s.leased, s.dead), (0, 0, 0), "{s:?}");
}

#[tokio::test]
async fn results_that_cannot_be_recorded_within_their_lease_are_not_acked_and_the_jobs_run_again() {
    let kv = Arc::new(FlakyWrites { inner: MemoryKv::new(), failing: AtomicU32::new(0) });
    let rt = flaky_store_runtime(&kv).await;
    let ids: Vec<_> =
        rt.enqueue_many((0..5).map(count::enqueue).collect()).await.unwrap().iter().map(|r| r.execution_id).collect();
    // More failed writes than the tries one lease allows (50, 100, 200 ms apart): the first
    // results are given up, their messages stay unsettled and run again.
    kv.failing.store(8, Ordering::SeqCst);
    run_until_recorded(&rt, &ids).await;
    assert_eq!(kv.failing.load(Ordering::SeqCst), 0, "the record writes did fail");
    assert!(reruns(&rt, &ids).await >= 1, "a result given up means the job ran again");
    let s = rt.queue().stats().await.unwrap();
    assert_eq!((s.ready, s.leased, s.dead), (0, 0, 0), "{s:?}");
}

#[tokio::test]
async fn a_failed_enqueue_is_an_error_and_leaves_no_records() {
    let queue = Arc::new(FlakyClaims::new(0, 1));
    let rt = Runtime::builder()
        .ignore_env()
        .queue(queue.clone())
        .kv(Arc::new(MemoryKv::new()))
        .state(Worker { name: "only", stall: false })
        .build()
        .await
        .unwrap();
    let err = rt.enqueue_many((0..3).map(count::enqueue).collect()).await.unwrap_err();
    assert!(err.to_string().contains("broker went away"), "{err}");
    // The queued records written before the enqueue were removed: nothing claims to be queued.
    let records = rt.store().list(&netscript::store::ExecutionFilter::default()).await.unwrap();
    assert!(records.is_empty(), "{records:?}");
    // The broker is back: the same enqueue goes through and runs.
    let ids: Vec<_> =
        rt.enqueue_many((0..3).map(count::enqueue).collect()).await.unwrap().iter().map(|r| r.execution_id).collect();
    run_until_recorded(&rt, &ids).await;
}

/// Which worker ran a job, and whether it stalls.
struct Worker {
    name: &'static str,
    stall: bool,
}

static STALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static TAKEN_OVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Returns the name of the worker that ran it. The stalling worker blocks its whole (single)
/// thread, heartbeat included, until the other worker has run the job too: its lease lapses,
/// the way a paused VM or a long GC pause would let it.
#[job(id = "who-ran", retries = 0, timeout = "30s")]
async fn who_ran(worker: State<Worker>) -> JobResult<String> {
    if worker.stall {
        STALLED.store(true, Ordering::SeqCst);
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while !TAKEN_OVER.load(Ordering::SeqCst) && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
    } else {
        TAKEN_OVER.store(true, Ordering::SeqCst);
    }
    Ok(worker.name.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stalled_past_its_lease_records_nothing_and_its_result_is_refused() {
    let queue: Arc<dyn Queue> = Arc::new(MemoryQueue::new());
    let kv: Arc<dyn Kv> = Arc::new(MemoryKv::new());
    let open = |name: &'static str, stall: bool| {
        Runtime::builder()
            .ignore_env()
            .queue(Arc::clone(&queue))
            .kv(Arc::clone(&kv))
            .state(Worker { name, stall })
            .configure(|c| {
                c.concurrency = 1;
                c.lease = Duration::from_millis(400);
                c.poll_interval = Duration::from_millis(20);
            })
            .build()
    };
    let stalling = open("stalled", true).await.unwrap();
    let id = stalling.enqueue(who_ran::enqueue()).await.unwrap().execution_id;

    // The stalling worker gets a runtime of its own with one thread, which its job blocks.
    let stop_stalled = CancellationToken::new();
    let stalled = std::thread::spawn({
        let (rt, stop) = (stalling.clone(), stop_stalled.clone());
        move || {
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(rt.run_workers(stop))
        }
    });
    while !STALLED.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The other worker takes the job over once the lease lapses, runs it and records it.
    let healthy = open("healthy", false).await.unwrap();
    let workers = healthy.spawn_workers();
    let r = healthy.wait_for(id, Duration::from_secs(20)).await.unwrap().unwrap();
    assert_eq!(r.result, Some(serde_json::json!("healthy")), "{r:?}");
    // The stalled worker wakes, finishes, and its result is refused: the record keeps the
    // healthy worker's result and the refusal is counted.
    stop_stalled.cancel();
    stalled.join().unwrap();
    workers.stop().await;
    let r = healthy.store().get(id).await.unwrap().unwrap();
    assert_eq!(r.status, ExecutionStatus::Succeeded);
    assert_eq!(r.result, Some(serde_json::json!("healthy")), "the stale result was not recorded: {r:?}");
    assert_eq!(r.attempt, 2, "{r:?}");
    let s = queue.stats().await.unwrap();
    assert!(s.stale_settlements >= 1, "the refusal is counted: {s:?}");
    assert_eq!((s.ready, s.leased, s.dead), (0, 0, 0), "{s:?}");
}

/// The workers' pruner purges the dead letters older than the retention (`db_days`), through
/// the queue, shortly after the workers start. Two days pass for the queue's purge
/// (`purge_ahead`), so a dead letter made now is past a retention of one day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_purge_dead_letters_past_their_retention() {
    let queue = Arc::new(FlakyClaims { purge_ahead: Duration::from_secs(2 * 86_400), ..FlakyClaims::new(0, 0) });
    let rt = Runtime::builder()
        .ignore_env()
        .queue(queue.clone())
        .kv(Arc::new(MemoryKv::new()))
        .state(Worker { name: "only", stall: false })
        .configure(|c| c.retention.db_days = 1)
        .build()
        .await
        .unwrap();
    // A dead letter, made through the queue contract (on a topic no worker claims).
    queue.inner.enqueue_one(NewMessage::new("nobody", "gone", b"{}".to_vec())).await.unwrap();
    let claimed = queue
        .inner
        .claim(ClaimRequest { topics: vec!["nobody".into()], max: 1, lease: Duration::from_secs(60) })
        .await
        .unwrap();
    let lease = claimed[0].lease;
    queue.inner.settle_one(Settlement::DeadLetter { lease, error: "boom".into() }).await.unwrap();
    assert_eq!(rt.queue().dead_letters(10).await.unwrap().len(), 1);

    let started = netscript::time::Timestamp::now();
    let workers = rt.spawn_workers();
    // The first pass comes 5 s after the start.
    let mut purged = false;
    for _ in 0..150 {
        if rt.queue().dead_letters(10).await.unwrap().is_empty() {
            purged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    workers.stop().await;
    assert!(purged, "the dead letter past one day was not purged within 15 s");
    // The pruner asked for the letters that failed before one day ago.
    let cutoffs = queue.purges.lock().unwrap().clone();
    let day = 86_400_000;
    let expected = started.as_millis() - day;
    assert!(
        cutoffs.iter().any(|c| c.as_millis().abs_diff(expected) < 60_000),
        "cut-offs asked for: {cutoffs:?}, expected about {expected} (one day before the start)"
    );
}
