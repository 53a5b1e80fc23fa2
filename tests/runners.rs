//! The three runners. The thread pool runs jobs on threads of its own, so a job that blocks
//! its thread leaves the caller's runtime free. The subprocess runner, end to end from the
//! example app (`examples/runners.rs`, built by `cargo test` with the other examples): a
//! worker process of the example runs each attempt in a child of itself; a child that aborts,
//! one that hangs past its timeout and one that writes garbage to stdout are each recorded as
//! they should be, and the same jobs give the same results on every runner.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use netscript::prelude::*;
use netscript::{ExecutionRecord, ExecutionStatus, QueueProvider, RunnerMode};

static BLOCKING: AtomicU32 = AtomicU32::new(0);
static RELEASE: AtomicBool = AtomicBool::new(false);

/// Blocks its thread (no await) until the test releases it; returns the thread's name.
#[job(id = "block-thread", retries = 0, timeout = "30s")]
async fn block_thread() -> JobResult<String> {
    BLOCKING.fetch_add(1, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !RELEASE.load(Ordering::SeqCst) {
        if Instant::now() > deadline {
            return Err(JobError::fatal("never released: the test's runtime could not run while this job blocked"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(std::thread::current().name().unwrap_or("unnamed").to_owned())
}

async fn finish(rt: &Runtime, id: netscript::ExecutionId) -> ExecutionRecord {
    for _ in 0..2000 {
        if let Some(r) = rt.store().get(id).await.unwrap().filter(|r| r.status.is_final()) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{id} did not finish");
}

/// On a single-threaded test runtime, two jobs block their threads until this test (on the
/// runtime's only thread) releases them: only possible when the jobs run elsewhere.
#[tokio::test(flavor = "current_thread")]
async fn the_thread_pool_keeps_blocking_jobs_off_the_callers_runtime() {
    let rt = Runtime::builder()
        .ignore_env()
        .provider(QueueProvider::Memory)
        .concurrency(2)
        .configure(|c| c.runner = RunnerMode::ThreadPool)
        .build()
        .await
        .unwrap();
    let workers = rt.spawn_workers();
    let a = rt.enqueue(block_thread::enqueue()).await.unwrap().execution_id;
    let b = rt.enqueue(block_thread::enqueue()).await.unwrap().execution_id;
    // Both block at once: one per pool thread, and this runtime still runs.
    while BLOCKING.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    RELEASE.store(true, Ordering::SeqCst);
    let (a, b) = (finish(&rt, a).await, finish(&rt, b).await);
    for record in [&a, &b] {
        assert_eq!(record.status, ExecutionStatus::Succeeded, "{record:?}");
        assert!(record.result.as_ref().unwrap().as_str().unwrap().starts_with("netscript-job-"), "{record:?}");
    }
    assert_ne!(a.result, b.result, "two threads, one each");
    workers.stop().await;
}

/// The example app, built next to this test binary by `cargo test`.
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join("examples").join(format!("runners{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples; alone, run `cargo build --example runners` first",
        path.display()
    );
    path
}

/// A command of the example app on the embedded store in `dir`, with nothing from the
/// environment choosing another backend.
fn app(dir: &Path, runner: &str) -> Command {
    let mut command = Command::new(example());
    command
        .env("NETSCRIPT_DATA_DIR", dir)
        .env("NETSCRIPT_QUEUE_PROVIDER", "embedded")
        .env("NETSCRIPT_RUNNER", runner)
        .env("WORKERS_CONCURRENCY", "2")
        .env("RUST_LOG", "warn")
        .env_remove("NETSCRIPT_SCHEDULER");
    command
}

/// A worker process, killed when dropped.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn worker(dir: &Path, runner: &str) -> Worker {
    Worker(app(dir, runner).arg("worker").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap())
}

/// Enqueues `job` through the app's CLI and waits for its end; the final record.
fn run(dir: &Path, job: &str, payload: Option<&str>) -> serde_json::Value {
    let mut command = app(dir, "in-process");
    command.args(["trigger", job, "--wait", "--timeout", "60s"]);
    if let Some(p) = payload {
        command.args(["--payload", p]);
    }
    let out = command.stderr(Stdio::null()).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    // The execution id on the first line, then the record as JSON.
    let (_, record) = stdout.split_once('\n').unwrap_or_else(|| panic!("no record for {job}: {stdout}"));
    serde_json::from_str(record).unwrap_or_else(|e| panic!("{e}: {record}"))
}

#[test]
fn the_subprocess_runner_records_aborts_hangs_and_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let _worker = worker(dir.path(), "subprocess");

    // A child that aborts: a failed attempt with the signal and stderr's last words, retried
    // by the job's policy (retries = 1), then dead.
    let abort = run(dir.path(), "abort", None);
    assert_eq!(abort["status"], "dead", "{abort:#}");
    let attempts = abort["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{abort:#}");
    for attempt in attempts {
        let error = attempt["error"].as_str().unwrap();
        assert!(error.contains("killed by signal SIGABRT"), "{error}");
        assert!(error.contains("stderr: abort: giving up on purpose"), "{error}");
    }

    // A child blocked past its 1 s timeout: killed, recorded as timed out, not retried.
    let started = Instant::now();
    let hang = run(dir.path(), "hang", None);
    assert_eq!(hang["status"], "dead", "{hang:#}");
    assert_eq!(hang["error"], "job timed out after 1s", "{hang:#}");
    assert!(started.elapsed() < Duration::from_secs(30), "the hung child was killed, not waited for");

    // Garbage on stdout is logged; the job's own answer stands.
    let noisy = run(dir.path(), "noisy", None);
    assert_eq!((noisy["status"].as_str(), &noisy["result"]), (Some("succeeded"), &serde_json::json!("survived")));

    // Progress from the child reaches the record.
    let sum = run(dir.path(), "checksum", Some(r#"{"rounds": 1000}"#));
    assert_eq!(sum["status"], "succeeded", "{sum:#}");
    assert_eq!(sum["progress"], serde_json::json!({"percent": 50, "message": "half-way"}));
}

#[test]
fn every_runner_gives_the_same_results() {
    let mut outputs = Vec::new();
    for runner in ["in-process", "thread-pool", "subprocess"] {
        let dir = tempfile::tempdir().unwrap();
        let _worker = worker(dir.path(), runner);
        let sum = run(dir.path(), "checksum", Some(r#"{"rounds": 100000}"#));
        let noisy = run(dir.path(), "noisy", None);
        assert_eq!((sum["status"].as_str(), noisy["status"].as_str()), (Some("succeeded"), Some("succeeded")));
        outputs.push((runner, sum["result"].clone(), noisy["result"].clone()));
    }
    let (_, sum, noisy) = &outputs[0];
    assert_eq!(sum["rounds"], 100_000);
    for (runner, s, n) in &outputs {
        assert_eq!((s, n), (sum, noisy), "{runner} differs");
    }
}
