//! Jobs, retries and dead letters survive a killed process on the embedded store.
//!
//! This test re-executes its own binary as the worker process (the same way an app binary
//! is its own worker), SIGKILLs it mid-burst, starts a fresh one on the same data directory,
//! and checks every job completes exactly as enqueued. It has its own `main` (`harness =
//! false`) so the child can be this very binary without a test filter trick.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netscript::prelude::*;
use netscript::store::ExecutionFilter;
use netscript::{CancellationToken, ExecutionStatus, QueueProvider};

/// One step of a burst.
#[job(id = "step", retries = 0, timeout = "10s")]
async fn step(n: u32) -> JobResult<u32> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    Ok(n)
}

/// Never succeeds.
#[job(id = "doomed", retries = 1, backoff = "fixed(10ms)")]
async fn doomed() -> JobResult<()> {
    Err(JobError::retryable("doomed to fail"))
}

const CHILD_DIR: &str = "NETSCRIPT_TEST_CHILD_DATA_DIR";
const STEPS: u32 = 400;
const DOOMED: usize = 3;

async fn open(dir: &std::path::Path) -> Runtime {
    Runtime::builder()
        .ignore_env()
        .provider(QueueProvider::Embedded)
        .data_dir(dir)
        .configure(|c| {
            c.concurrency = 4;
            c.lease = Duration::from_secs(1);
            c.poll_interval = Duration::from_millis(20);
        })
        .build()
        .await
        .expect("runtime")
}

fn spawn_worker(dir: &std::path::Path) -> Child {
    Command::new(std::env::current_exe().expect("own path"))
        .env(CHILD_DIR, dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn worker")
}

async fn count(rt: &Runtime, status: ExecutionStatus) -> usize {
    let filter = ExecutionFilter { limit: Some(10_000), status: Some(status), ..Default::default() };
    rt.store().list(&filter).await.expect("list").len()
}

async fn parent() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let rt = open(dir.path()).await;
        rt.enqueue_many((0..STEPS).map(step::enqueue).collect()).await.expect("enqueue steps");
        rt.enqueue_many((0..DOOMED).map(|_| doomed::enqueue()).collect()).await.expect("enqueue doomed");
    }
    let rt = open(dir.path()).await;
    assert_eq!(count(&rt, ExecutionStatus::Queued).await, STEPS as usize + DOOMED);

    let mut first = spawn_worker(dir.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&rt, ExecutionStatus::Succeeded).await < 100 {
        assert!(Instant::now() < deadline, "the first worker made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill().expect("SIGKILL");
    first.wait().expect("reap");
    let done_at_kill = count(&rt, ExecutionStatus::Succeeded).await;
    let stats = rt.queue().stats().await.expect("stats");
    assert!(done_at_kill < STEPS as usize, "killed mid-burst ({done_at_kill} done)");
    assert!(stats.ready + stats.leased + stats.delayed > 0, "work was left: {stats:?}");

    let mut second = spawn_worker(dir.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = count(&rt, ExecutionStatus::Succeeded).await;
        let dead = count(&rt, ExecutionStatus::Dead).await;
        if done == STEPS as usize && dead == DOOMED {
            break;
        }
        assert!(Instant::now() < deadline, "after restart only {done} succeeded and {dead} dead");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.kill().expect("SIGKILL");
    second.wait().expect("reap");

    let records = rt.store().list(&ExecutionFilter { limit: Some(10_000), ..Default::default() }).await.expect("list");
    assert_eq!(records.len(), STEPS as usize + DOOMED, "one record per execution");
    let mut results: Vec<u64> = records
        .iter()
        .filter(|r| r.job_id == "step")
        .map(|r| {
            assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
            assert_eq!(r.result, Some(r.payload.clone()), "each job's own result");
            r.result.as_ref().and_then(serde_json::Value::as_u64).expect("result")
        })
        .collect();
    results.sort_unstable();
    assert_eq!(results, (0..u64::from(STEPS)).collect::<Vec<_>>(), "every step exactly once in the records");
    for r in records.iter().filter(|r| r.job_id == "doomed") {
        assert_eq!(r.status, ExecutionStatus::Dead);
        assert_eq!(r.attempts.len(), 2, "{r:?}");
        assert_eq!(r.error.as_deref(), Some("doomed to fail"));
    }
    let dead = rt.queue().dead_letters(100).await.expect("dead letters");
    assert_eq!(dead.len(), DOOMED);
    let stats = rt.queue().stats().await.expect("stats");
    assert_eq!((stats.ready, stats.leased, stats.delayed, stats.dead), (0, 0, 0, DOOMED as u64), "{stats:?}");
    let rerun = records.iter().filter(|r| r.job_id == "step" && r.attempt > 1).count();
    println!("killed after {done_at_kill} of {STEPS} steps; {rerun} step(s) were running at the kill and ran again");
}

async fn child(dir: String) {
    let rt = open(std::path::Path::new(&dir)).await;
    // Runs until the parent kills this process.
    rt.run_workers(CancellationToken::new()).await;
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        tokio.block_on(child(dir));
        return;
    }
    tokio.block_on(parent());
    println!("test kill_and_restart_loses_nothing ... ok");
    println!("1 passed, 0 failed");
}
