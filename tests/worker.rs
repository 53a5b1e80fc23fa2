//! The dispatcher, the in-process runner and the recorder, end to end on the memory and the
//! embedded backends: results, retries, dead letters, panics, timeouts, progress, drain.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use netscript::prelude::*;
use netscript::queue::NewMessage;
use netscript::{ExecutionStatus, QueueProvider, StartupError};

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Debug, Serialize, JsonSchema)]
struct Sum {
    sum: i64,
}

/// Adds two numbers.
#[job(id = "add", retries = 0)]
async fn add(payload: Add) -> JobResult<Sum> {
    Ok(Sum { sum: payload.a + payload.b })
}

/// Fails its first attempt.
#[job(id = "fail-once", retries = 2, backoff = "fixed(10ms)")]
async fn fail_once(ctx: JobContext) -> JobResult<u32> {
    if ctx.attempt() == 1 {
        return Err(JobError::retryable("first attempt always fails"));
    }
    Ok(ctx.attempt())
}

/// Always fails, retryably.
#[job(id = "always-fails", retries = 2, backoff = "fixed(10ms)")]
async fn always_fails() -> JobResult<()> {
    Err(JobError::retryable("still broken"))
}

/// Fails fatally.
#[job(id = "fatal", retries = 5, backoff = "fixed(10ms)")]
async fn fatal() -> JobResult<()> {
    Err(JobError::fatal("card declined"))
}

/// Panics.
#[job(id = "panics", retries = 0)]
async fn panics() -> JobResult<()> {
    panic!("boom in a job");
}

static TIMED_OUT_SAW_CANCEL: AtomicU32 = AtomicU32::new(0);

/// Runs past its timeout, watching its cancellation signal.
#[job(id = "too-slow", timeout = "100ms", retries = 0)]
async fn too_slow(ctx: JobContext) -> JobResult<()> {
    let cancel = ctx.cancellation().clone();
    // The runner drops this future at the timeout; a task it spawned sees the signal.
    tokio::spawn(async move {
        cancel.cancelled().await;
        TIMED_OUT_SAW_CANCEL.fetch_add(1, Ordering::SeqCst);
    });
    tokio::time::sleep(Duration::from_secs(30)).await;
    Ok(())
}

/// Reports progress.
#[job(id = "progress", retries = 0)]
async fn progress(ctx: JobContext) -> JobResult<()> {
    ctx.progress(30, "a third").await;
    ctx.progress(250, "clamped").await;
    Ok(())
}

/// Sleeps as long as asked.
#[job(id = "sleep", retries = 0, timeout = "1m")]
async fn sleep(ms: u64) -> JobResult<u64> {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(ms)
}

struct Greeter {
    greeting: &'static str,
}

/// Uses shared state.
#[job(id = "greet", retries = 0)]
async fn greet(greeter: State<Greeter>, name: String) -> JobResult<String> {
    Ok(format!("{}, {name}", greeter.greeting))
}

async fn runtime(provider: QueueProvider, dir: &std::path::Path) -> Runtime {
    Runtime::builder()
        .ignore_env()
        .provider(provider)
        .data_dir(dir)
        .state(Greeter { greeting: "hello" })
        .configure(|c| {
            c.concurrency = 4;
            c.shutdown_timeout = Duration::from_millis(300);
        })
        .build()
        .await
        .expect("runtime")
}

fn start(rt: &Runtime) -> netscript::RunningWorkers {
    rt.spawn_workers()
}

async fn finish(rt: &Runtime, id: netscript::ExecutionId) -> netscript::ExecutionRecord {
    let r = rt.wait_for(id, Duration::from_secs(20)).await.expect("store").expect("record");
    assert!(r.status.is_final(), "execution did not finish: {r:?}");
    r
}

macro_rules! on_each_backend {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test] async fn $name() { super::$name(netscript::QueueProvider::Memory).await })*
        }
        mod embedded {
            $(#[tokio::test] async fn $name() { super::$name(netscript::QueueProvider::Embedded).await })*
        }
    };
}

on_each_backend!(
    success_is_recorded_with_its_result,
    a_failed_attempt_is_retried_and_both_attempts_are_recorded,
    exhausted_retries_dead_letter_with_the_last_error,
    fatal_errors_skip_retries,
    a_panic_is_a_failure_and_the_worker_keeps_going,
    a_timeout_fires_cancellation_and_fails_the_attempt,
    progress_is_recorded,
    unknown_jobs_and_undecodable_payloads_are_dead_lettered,
    shared_state_reaches_the_job,
    shutdown_gives_running_jobs_back,
    idempotency_keys_collapse_enqueues,
    a_duplicate_enqueue_leaves_no_record_of_its_own,
    cancel_stops_waiting_and_running_executions,
    a_paused_topic_is_not_claimed_until_resumed,
);

async fn success_is_recorded_with_its_result(p: QueueProvider) {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(p, dir.path()).await;
    let receipt = rt.enqueue(add::enqueue(Add { a: 2, b: 40 })).await.unwrap();
    let queued = rt.store().get(receipt.execution_id).await.unwrap().unwrap();
    assert_eq!(queued.status, ExecutionStatus::Queued);
    assert_eq!(queued.payload, serde_json::json!({"a": 2, "b": 40}));
    let w = start(&rt);
    let r = finish(&rt, receipt.execution_id).await;
    assert_eq!(r.status, ExecutionStatus::Succeeded);
    assert_eq!(r.result, Some(serde_json::json!({"sum": 42})));
    assert_eq!(r.attempt, 1);
    assert_eq!(r.attempts.len(), 1);
    assert!(r.finished_at.is_some() && r.started_at.is_some());
    w.stop().await;
    let stats = rt.queue().stats().await.unwrap();
    assert_eq!(stats.ready + stats.leased + stats.delayed + stats.dead, 0, "acked: {stats:?}");
}

async fn a_failed_attempt_is_retried_and_both_attempts_are_recorded(p: QueueProvider) {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(p, dir.path()).await;
    let w = start(&rt);
    let id = rt.enqueue(fail_once::enqueue()).await.unwrap().execution_id;
    let r = finish(&rt, id).await;
    assert_eq!(r.status, ExecutionStatus::Succeeded);
    assert_eq!(r.result, Some(serde_json::json!(2)));
    assert_eq!(r.attempt, 2);
    assert_eq!(r.attempts.len(), 2);
    assert_eq!(r.attempts[0].error.as_deref(), Some("first attempt always fails"));
    assert_eq!(r.attempts[1].error, None);
    w.stop().await;
}

async fn exhausted_retries_dead_letter_with_the_last_error(p: QueueProvider) {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(p, dir.path()).await;
    let w = start(&rt);
    let id = rt.enqueue(always_fails::enqueue()).await.unwrap().execution_id;
    let r = finish(&rt, id).await;
    assert_eq!(r.status, ExecutionStatus::Dead);
    assert_eq!(r.attempt, 3, "retries = 2 means three attempts");
    assert_eq!(r.attempts.len(), 3);
    assert_eq!(r.error.as_deref(), Some("still broken"));
    w.stop().await;
    let dead = rt.queue().dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, id);
    assert_eq!(dead[0].error, "still broken");
}

async fn fatal_errors_skip_retries(p: QueueProvider) {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(p, dir.path()).await;
    let w = start(&rt);
    let id = rt.enqueue(fatal::enqueue()).await.unwrap().execution_id;
    let r = finish(&rt, id).await;
    assert_eq!(r.status, ExecutionStatus::Dead);
    assert_eq!(r.attempt, 1);
    assert_eq!(r.error.as_deref(), Some("card declined"));
    w.stop().await;
}

async fn a_panic_is_a_failure_and_the_worker_keeps_going(p: QueueProvider) {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(p, dir.path()).await;
    let w = start(&rt);
    let id = rt.enqueue(panics::enqueue()).await.unwrap().execution_id;
    let r = finish(&rt, id).await;
    assert_eq!(r.status, ExecutionStatus::Dead);
    assert_eq!(r.error.as_deref(), Some("job panicked: boom in a job"));
    let after = rt.enqueue(add::enqueue(Add { a: 1, b: 1 })).await.unwrap().execution_id;
    assert_eq!(finish(&rt, after).await.status, ExecutionStatus::Succeeded);
    w.stop().await;
}

async fn a_timeout_fires_cancellation_and_fails_the_attempt(p: QueueProvider) {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(p, dir.path()).await;
    let w = start(&rt);
    let before = TIMED_OUT_SAW_CANCEL.load(Ordering::SeqCst);
    let id = rt.enqueue(too_slow::enqueue()).await.unwrap().execution_id;
    let r = finish(&rt, id).await;
    assert_eq!(r.status, ExecutionStatus::Dead);
    assert_eq!(r.error.as_deref(), Some("job timed out after 100ms"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TIMED_OUT_SAW_CANCEL.load(Ordering::SeqCst) > before, "the cancellation signal fired");
    w.stop().await;
}

async fn progress_is_recorded(p: QueueProvider) {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(p, dir.path()).await;
    let mut feed = rt.store().subscribe();
    let w = start(&rt);
    let id = rt.enqueue(progress::enqueue()).await.unwrap().execution_id;
    let r = finish(&rt, id).await;
    assert_eq!(r.status, ExecutionStatus::Succeeded);
    let last = r.progress.expect("progress kept");
    assert_eq!((last.percent, last.message.as_str()), (100, "clamped"));
    // The feed sees the execution queued, then succeeded. It publishes right after the
    // store write, so it may trail a reader of the store by a moment.
    let mut seen = Vec::new();
    while seen.last() != Some(&ExecutionStatus::Succeeded) {
        let rec = tokio::time::timeout(Duration::from_secs(5), feed.recv()).await.expect("feed event").unwrap();
        if rec.id == id {
            seen.push(rec.status);
        }
    }
    assert_eq!(seen.first(), Some(&ExecutionStatus::Queued), "{seen:?}");
    assert_eq!(seen.last(), Some(&ExecutionStatus::Succeeded), "{seen:?}");
    w.stop().await;
}

async fn unknown_jobs_and_undecodable_payloads_are_dead_lettered(p: QueueProvider) {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(p, dir.path()).await;
    let unknown = NewMessage::new("default", "no-such-job", b"null".to_vec());
    let garbage = NewMessage::new("default", "add", br#"{"a":"two"}"#.to_vec());
    let ids: Vec<_> = rt.queue().enqueue(vec![unknown, garbage]).await.unwrap().iter().map(|e| e.id()).collect();
    let w = start(&rt);
    let r = finish(&rt, ids[0]).await;
    assert_eq!(r.status, ExecutionStatus::Dead);
    assert_eq!(r.error.as_deref(), Some("no job `no-such-job` is registered in this binary"));
    let r = finish(&rt, ids[1]).await;
    assert_eq!(r.status, ExecutionStatus::Dead);
    assert_eq!(r.attempt, 1, "a payload that does not decode is not retried");
    assert!(r.error.as_deref().unwrap().starts_with("payload does not match the job's type"), "{r:?}");
    w.stop().await;
    assert_eq!(rt.queue().dead_letters(10).await.unwrap().len(), 2);
}

async fn shared_state_reaches_the_job(p: QueueProvider) {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(p, dir.path()).await;
    let w = start(&rt);
    let id = rt.enqueue(greet::enqueue("Ada".to_owned())).await.unwrap().execution_id;
    assert_eq!(finish(&rt, id).await.result, Some(serde_json::json!("hello, Ada")));
    w.stop().await;
}

async fn shutdown_gives_running_jobs_back(p: QueueProvider) {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(p, dir.path()).await;
    let quick = rt.enqueue(sleep::enqueue(10)).await.unwrap().execution_id;
    let slow = rt.enqueue(sleep::enqueue(20_000)).await.unwrap().execution_id;
    let w = start(&rt);
    finish(&rt, quick).await;
    // Wait for the slow one to be running, then stop with a 300 ms grace period.
    for _ in 0..200 {
        if rt.store().get(slow).await.unwrap().unwrap().status == ExecutionStatus::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = w.stop().await;
    assert_eq!(report.abandoned, 1);
    let r = rt.store().get(slow).await.unwrap().unwrap();
    assert_eq!(r.status, ExecutionStatus::Queued, "given back: {r:?}");
    let stats = rt.queue().stats().await.unwrap();
    assert_eq!((stats.ready, stats.leased), (1, 0), "{stats:?}");
    // The next claim of it is attempt 1 again: a release does not use up an attempt.
    let d = rt
        .queue()
        .claim(netscript::queue::ClaimRequest { topics: vec![], max: 1, lease: Duration::from_secs(5) })
        .await
        .unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].id, d[0].attempt), (slow, 1));
}

/// Runs until cancelled, then says so.
#[job(id = "until-cancelled", retries = 3, timeout = "1m")]
async fn until_cancelled(ctx: JobContext) -> JobResult<()> {
    ctx.cancellation().cancelled().await;
    Err(JobError::retryable("stopped"))
}

async fn running(rt: &Runtime, id: netscript::ExecutionId) {
    for _ in 0..500 {
        if rt.store().get(id).await.unwrap().is_some_and(|r| r.status == ExecutionStatus::Running) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{id} never ran");
}

async fn cancel_stops_waiting_and_running_executions(p: QueueProvider) {
    use netscript::CancelOutcome;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(p, dir.path()).await;
    // Waiting: removed, never runs.
    let later = rt.enqueue(add::enqueue(Add { a: 1, b: 1 }).delay(Duration::from_secs(60))).await.unwrap().execution_id;
    assert_eq!(rt.cancel(later).await.unwrap(), CancelOutcome::Cancelled);
    assert_eq!(rt.store().get(later).await.unwrap().unwrap().status, ExecutionStatus::Cancelled);
    // Running: the signal fires, the run ends as cancelled, not retried, message acked.
    let w = start(&rt);
    let long = rt.enqueue(until_cancelled::enqueue()).await.unwrap().execution_id;
    running(&rt, long).await;
    assert_eq!(rt.cancel(long).await.unwrap(), CancelOutcome::Cancelling);
    let r = finish(&rt, long).await;
    assert_eq!(r.status, ExecutionStatus::Cancelled, "{r:?}");
    assert_eq!((r.attempt, r.error.as_deref()), (1, Some("cancelled on request")));
    assert_eq!(rt.cancel(long).await.unwrap(), CancelOutcome::Finished(ExecutionStatus::Cancelled));
    assert_eq!(rt.cancel(netscript::ExecutionId::new()).await.unwrap(), CancelOutcome::NotFound);
    w.stop().await;
    let stats = rt.queue().stats().await.unwrap();
    assert_eq!((stats.ready, stats.delayed, stats.leased, stats.dead), (0, 0, 0, 0), "{stats:?}");
}

/// A runtime on the embedded store in `dir` whose heartbeat (a third of the lease) comes every
/// 300 ms, as each of several processes sharing the store would open it.
async fn open_with_short_lease(dir: &std::path::Path) -> Result<Runtime, StartupError> {
    Runtime::builder()
        .ignore_env()
        .provider(QueueProvider::Embedded)
        .data_dir(dir)
        .state(Greeter { greeting: "hi" })
        .configure(|c| c.lease = Duration::from_millis(900))
        .build()
        .await
}

#[tokio::test]
async fn a_cancel_from_another_process_reaches_the_worker_at_its_heartbeat() {
    use netscript::CancelOutcome;
    let dir = tempfile::tempdir().unwrap();
    let open = || open_with_short_lease(dir.path());
    let worker = open().await.unwrap();
    let other = open().await.unwrap(); // like a CLI or an API process on the same store
    let w = start(&worker);
    let id = other.enqueue(until_cancelled::enqueue()).await.unwrap().execution_id;
    running(&other, id).await;
    assert_eq!(other.cancel(id).await.unwrap(), CancelOutcome::Cancelling);
    let r = other.wait_for(id, Duration::from_secs(10)).await.unwrap().unwrap();
    assert_eq!(r.status, ExecutionStatus::Cancelled, "{r:?}");
    w.stop().await;
}

async fn a_paused_topic_is_not_claimed_until_resumed(p: QueueProvider) {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(p, dir.path()).await;
    let w = start(&rt);
    rt.pause_topic("default").await.unwrap();
    let id = rt.enqueue(add::enqueue(Add { a: 2, b: 2 })).await.unwrap().execution_id;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rt.store().get(id).await.unwrap().unwrap().status, ExecutionStatus::Queued, "paused: not claimed");
    assert_eq!(rt.queue().stats().await.unwrap().ready, 1);
    rt.resume_topic("default").await.unwrap();
    assert_eq!(finish(&rt, id).await.status, ExecutionStatus::Succeeded);
    w.stop().await;
    // The pause is in the store: a runtime opened later starts with it (embedded keeps it).
    rt.pause_topic("default").await.unwrap();
    assert!(rt.paused_topics().contains("default"));
}

#[tokio::test]
async fn a_pause_from_another_process_reaches_the_worker_at_its_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let open = || open_with_short_lease(dir.path());
    let worker = open().await.unwrap();
    let other = open().await.unwrap();
    let w = start(&worker);
    other.pause_topic("default").await.unwrap();
    // The worker re-reads pauses every third of its lease (300 ms here).
    for _ in 0..1000 {
        if worker.paused_topics().contains("default") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(worker.paused_topics().contains("default"), "the worker saw the pause");
    let id = other.enqueue(add::enqueue(Add { a: 1, b: 2 })).await.unwrap().execution_id;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(other.store().get(id).await.unwrap().unwrap().status, ExecutionStatus::Queued, "paused everywhere");
    other.resume_topic("default").await.unwrap();
    let r = other.wait_for(id, Duration::from_secs(10)).await.unwrap().unwrap();
    assert_eq!(r.status, ExecutionStatus::Succeeded);
    w.stop().await;
    // A runtime opened now starts paused or not as the store says.
    other.pause_topic("default").await.unwrap();
    assert!(open().await.unwrap().paused_topics().contains("default"));
}

async fn a_duplicate_enqueue_leaves_no_record_of_its_own(p: QueueProvider) {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(p, dir.path()).await;
    let mut feed = rt.store().subscribe();
    let first = rt.enqueue(add::enqueue(Add { a: 1, b: 2 }).idempotency_key("order-8")).await.unwrap();
    let again = rt
        .enqueue_many(vec![
            add::enqueue(Add { a: 1, b: 2 }).idempotency_key("order-8"),
            add::enqueue(Add { a: 3, b: 4 }),
        ])
        .await
        .unwrap();
    assert!(again[0].duplicate && !again[1].duplicate);
    // The duplicate's queued record was written before the enqueue and removed after it.
    let records = rt.store().list(&netscript::store::ExecutionFilter::default()).await.unwrap();
    let mut ids: Vec<_> = records.iter().map(|r| r.id).collect();
    ids.sort();
    let mut expected = vec![first.execution_id, again[1].execution_id];
    expected.sort();
    assert_eq!(ids, expected);
    // The feed showed the two executions that exist, and nothing of the duplicate.
    let mut published = Vec::new();
    while let Ok(r) = feed.try_recv() {
        published.push(r.id);
    }
    published.sort();
    assert_eq!(published, expected);
}

async fn idempotency_keys_collapse_enqueues(p: QueueProvider) {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(p, dir.path()).await;
    let first = rt.enqueue(add::enqueue(Add { a: 1, b: 2 }).idempotency_key("order-7")).await.unwrap();
    let second = rt.enqueue(add::enqueue(Add { a: 1, b: 2 }).idempotency_key("order-7")).await.unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.execution_id, second.execution_id);
    assert_eq!(rt.queue().stats().await.unwrap().ready, 1);
}

#[tokio::test]
async fn json_enqueue_validates_and_enqueues_nothing_when_invalid() {
    let rt = runtime(QueueProvider::Memory, std::path::Path::new("unused")).await;
    let e = rt.enqueue_json("add", serde_json::json!({"a": 1}), Default::default()).await.unwrap_err();
    assert!(e.to_string().contains("missing field `b`"), "{e}");
    let e = rt.enqueue_json("nope", serde_json::Value::Null, Default::default()).await.unwrap_err();
    assert_eq!(e.to_string(), "no job `nope` is registered");
    assert_eq!(rt.queue().stats().await.unwrap().ready, 0);
    assert!(rt.store().list(&Default::default()).await.unwrap().is_empty());
}

#[tokio::test]
async fn missing_state_is_a_startup_error_naming_job_and_type() {
    let e = Runtime::builder().ignore_env().provider(QueueProvider::Memory).build().await.unwrap_err();
    assert!(matches!(e, StartupError::Registry(_)), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("job `greet`") && msg.contains("Greeter"), "{msg}");
}

#[tokio::test]
async fn a_corrupt_store_is_a_startup_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("netscript.db");
    std::fs::write(&file, b"this is not a database, just some bytes that happen to be here").unwrap();
    let e = Runtime::builder()
        .ignore_env()
        .provider(QueueProvider::Embedded)
        .data_dir(dir.path())
        .state(Greeter { greeting: "hi" })
        .build()
        .await
        .unwrap_err();
    assert!(matches!(e, StartupError::Backend { provider: "embedded", .. }), "{e}");
    assert!(e.to_string().contains(&file.display().to_string()), "{e}");
}

/// An execution id created `days_ago` (a UUIDv7 whose timestamp is then).
fn id_from_days_ago(days_ago: u64, n: u64) -> netscript::ExecutionId {
    let ms = netscript::time::Timestamp::now().as_millis() - days_ago * 86_400_000;
    format!("{:08x}-{:04x}-7000-8000-{n:012x}", ms >> 16, ms & 0xffff).parse().unwrap()
}

/// A record of the `tick` job created and (if `status` is final) ended `days_ago`.
fn old_record(days_ago: u64, n: u64, status: ExecutionStatus) -> netscript::ExecutionRecord {
    let id = id_from_days_ago(days_ago, n);
    let at = netscript::time::Timestamp(netscript::time::Timestamp::now().as_millis() - days_ago * 86_400_000);
    let mut record = netscript::ExecutionRecord::queued(id, "tick", serde_json::Value::Null, 1, None, at);
    record.status = status;
    record.attempt = 1;
    record.started_at = Some(at);
    record.finished_at = status.is_final().then_some(at);
    record
}

/// The workers' background pruner deletes ended records past their retention on its own,
/// shortly after the workers start, and keeps the recent ones and those still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_prune_ended_history_past_its_retention() {
    let rt = Runtime::builder()
        .ignore_env()
        .provider(QueueProvider::Memory)
        .state(Greeter { greeting: "hello" })
        .configure(|c| c.retention.kv_days = 2)
        .build()
        .await
        .unwrap();
    let expired = old_record(3, 1, ExecutionStatus::Succeeded);
    let dead = old_record(5, 2, ExecutionStatus::Dead);
    let running = old_record(3, 3, ExecutionStatus::Running);
    let recent = old_record(1, 4, ExecutionStatus::Succeeded);
    rt.store().put_many(vec![expired.clone(), dead.clone(), running.clone(), recent.clone()]).await.unwrap();

    let workers = rt.spawn_workers();
    // The first pass comes 5 s after the start.
    let mut gone = false;
    for _ in 0..150 {
        let store = rt.store();
        if store.get(expired.id).await.unwrap().is_none() && store.get(dead.id).await.unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    workers.stop().await;
    assert!(gone, "the ended records past 2 days were not pruned within 15 s");
    assert_eq!(rt.store().get(running.id).await.unwrap().map(|r| r.status), Some(ExecutionStatus::Running));
    assert_eq!(rt.store().get(recent.id).await.unwrap().map(|r| r.status), Some(ExecutionStatus::Succeeded));
}
