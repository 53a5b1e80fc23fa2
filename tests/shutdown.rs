//! SIGTERM to a serving process mid-burst: it stops claiming, lets the running short jobs
//! finish, gives the long ones back to the queue when `shutdown_timeout` is over, and exits
//! with status 0; a second process then picks the given-back jobs up at once (no waiting for
//! their 30 s lease to lapse), and every job ends succeeded exactly once.
//!
//! ```text
//! cargo test --test shutdown
//! ```
//!
//! This binary re-executes itself as `app serve` (the real CLI path: `cli::run_cli`, which
//! listens for SIGTERM and SIGINT) on the embedded store in a temporary directory. Every job
//! appends a line to a run log in that directory when it starts and when it ends, so the
//! parent can count runs independently of the execution records: a job cut off by the
//! shutdown shows a start without an end. It has its own `main` (`harness = false`) so the
//! child can be this very binary.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use netscript::prelude::*;
use netscript::store::ExecutionFilter;
use netscript::time::Timestamp;
use netscript::{ExecutionStatus, QueueProvider, WorkersConfig};

const CHILD: &str = "NETSCRIPT_TEST_SHUTDOWN_CHILD";
/// Short jobs in the burst.
const STEPS: u32 = 200;
/// Long jobs, running when the signal comes: ids 0.. are `long-sleeper`s, which ignore their
/// cancellation signal, then the case's `long-listener`s, which watch it.
const LONG: u32 = 3;
const LONG_RUN: Duration = Duration::from_secs(10);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);
const CONCURRENCY: usize = 4;
/// Short jobs done before the signal is sent.
const DONE_BEFORE_SIGNAL: usize = 20;

/// Appends one line to the run log of the data directory this process serves.
fn note(line: &str) {
    let dir = std::env::var(CHILD).expect("a child process").split('|').next().unwrap().to_owned();
    let mut file =
        std::fs::OpenOptions::new().create(true).append(true).open(Path::new(&dir).join("runs.log")).unwrap();
    // One short write on an O_APPEND file: lines from concurrent jobs do not interleave.
    file.write_all(format!("{line} {}\n", std::process::id()).as_bytes()).unwrap();
}

/// A short job of the burst: 10 to 50 ms.
#[job(id = "burst-step", retries = 0, timeout = "10s")]
async fn burst_step(n: u32) -> JobResult<u32> {
    note(&format!("start step-{n}"));
    tokio::time::sleep(Duration::from_millis(10 + u64::from(n * 7 % 41))).await;
    note(&format!("end step-{n}"));
    Ok(n)
}

/// A long job that does not watch its cancellation signal.
#[job(id = "long-sleeper", retries = 0, timeout = "60s")]
async fn long_sleeper(n: u32) -> JobResult<u32> {
    note(&format!("start long-{n}"));
    tokio::time::sleep(LONG_RUN).await;
    note(&format!("end long-{n}"));
    Ok(n)
}

/// A long job that stops when its cancellation signal fires, as a well-behaved job does.
#[job(id = "long-listener", retries = 0, timeout = "60s")]
async fn long_listener(ctx: JobContext, n: u32) -> JobResult<u32> {
    note(&format!("start long-{n}"));
    tokio::select! {
        () = ctx.cancellation().cancelled() => {
            note(&format!("interrupted long-{n}"));
            Err(JobError::retryable("interrupted by the shutdown"))
        }
        () = tokio::time::sleep(LONG_RUN) => {
            note(&format!("end long-{n}"));
            Ok(n)
        }
    }
}

/// The parent's view of the store (no workers).
async fn open(dir: &Path) -> Runtime {
    Runtime::builder().ignore_env().provider(QueueProvider::Embedded).data_dir(dir).build().await.expect("runtime")
}

/// A serving process on `dir`, its tracing output in `dir/serve-<n>.log`.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn spawn(dir: &Path, n: u32) -> Self {
        // A free port: bound and let go, then handed to the child.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let log = dir.join(format!("serve-{n}.log"));
        let child = Command::new(std::env::current_exe().expect("own path"))
            .env(CHILD, format!("{}|{addr}", dir.display()))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn the serving process");
        Self { child, log }
    }

    fn sigterm(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits for the exit, at most `within`.
    async fn exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                self.child.kill().unwrap();
                self.child.wait().unwrap();
                panic!("no exit within {within:?}; its log:\n{}", self.output());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the serving process exited early ({status}); its log:\n{}", self.output());
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failed assertion must not leave a serving process behind.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn records(rt: &Runtime, status: Option<ExecutionStatus>) -> Vec<netscript::ExecutionRecord> {
    let filter = ExecutionFilter { limit: Some(10_000), status, ..Default::default() };
    rt.store().list(&filter).await.expect("list")
}

async fn count(rt: &Runtime, status: ExecutionStatus) -> usize {
    records(rt, Some(status)).await.len()
}

/// The run log: for each job (`step-7`, `long-0`), what happened to it, in order, with the
/// process it happened in.
fn runs(dir: &Path) -> HashMap<String, Vec<(String, u32)>> {
    let mut runs: HashMap<String, Vec<(String, u32)>> = HashMap::new();
    for line in std::fs::read_to_string(dir.join("runs.log")).unwrap_or_default().lines() {
        let mut parts = line.split(' ');
        let (what, job, pid) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        runs.entry(job.to_owned()).or_default().push((what.to_owned(), pid.parse().unwrap()));
    }
    runs
}

fn events(runs: &HashMap<String, Vec<(String, u32)>>, job: &str) -> Vec<String> {
    runs.get(job).map(|v| v.iter().map(|(what, _)| what.clone()).collect()).unwrap_or_default()
}

/// One run of the scenario, with `listeners` of the long jobs watching their cancellation signal.
async fn sigterm_mid_burst(listeners: u32) {
    let sleepers = LONG - listeners;
    assert!(WorkersConfig::default().lease >= Duration::from_secs(30), "the test relies on the default 30 s lease");
    let total = (STEPS + LONG) as usize;
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(dir.path()).await;
    // The long ones first (higher priority), so that they are running when the signal comes.
    rt.enqueue_many((0..sleepers).map(|n| long_sleeper::enqueue(n).priority(10)).collect()).await.unwrap();
    rt.enqueue_many((sleepers..LONG).map(|n| long_listener::enqueue(n).priority(10)).collect()).await.unwrap();
    rt.enqueue_many((0..STEPS).map(burst_step::enqueue).collect()).await.unwrap();
    let started = Instant::now();

    let mut first = Server::spawn(dir.path(), 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        first.assert_running();
        let running = records(&rt, Some(ExecutionStatus::Running)).await;
        let long_running = running.iter().filter(|r| r.job_id != "burst-step").count();
        if count(&rt, ExecutionStatus::Succeeded).await >= DONE_BEFORE_SIGNAL && long_running == LONG as usize {
            break;
        }
        assert!(Instant::now() < deadline, "the first process made no progress; its log:\n{}", first.output());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.sigterm();
    let signalled = Instant::now();
    let status = first.exit(SHUTDOWN_TIMEOUT + Duration::from_secs(10)).await;
    let drain = signalled.elapsed();
    let log = first.output();
    assert!(status.success(), "exit status after SIGTERM: {status}; its log:\n{log}");
    let first_pid = first.child.id();

    let done_first = count(&rt, ExecutionStatus::Succeeded).await;
    let running = records(&rt, Some(ExecutionStatus::Running)).await;
    assert!(running.is_empty(), "records left running after the shutdown: {running:?}");
    let dead = records(&rt, Some(ExecutionStatus::Dead)).await;
    assert!(dead.is_empty(), "jobs lost at the shutdown: dead-lettered instead of given back to the queue: {dead:#?}");
    let stats = rt.queue().stats().await.unwrap();
    assert_eq!(stats.leased, 0, "every claim was given back: {stats:?}");
    assert_eq!(stats.ready as usize, total - done_first, "the rest is ready to run: {stats:?}");
    let queued = count(&rt, ExecutionStatus::Queued).await;
    assert_eq!(queued, total - done_first, "the rest is recorded queued again");
    let given_back_running = log
        .lines()
        .find_map(|l| l.strip_suffix(" running job(s) were given back to the queue at shutdown"))
        .map_or(0, |n| n.trim().parse::<u64>().unwrap());
    assert_eq!(given_back_running, u64::from(LONG), "the long jobs were running, and given back; log:\n{log}");
    assert!(drain >= SHUTDOWN_TIMEOUT, "the long jobs had their grace period: drained in {drain:?}");

    let after_first = runs(dir.path());
    for n in 0..STEPS {
        let e = events(&after_first, &format!("step-{n}"));
        assert!(e.is_empty() || e == ["start", "end"], "step-{n} was cut off by the shutdown: {e:?}");
    }
    for n in 0..LONG {
        let e = events(&after_first, &format!("long-{n}"));
        assert!(e.first().is_some_and(|s| s == "start") && !e.contains(&"end".to_owned()), "long-{n}: {e:?}");
    }
    let steps_run_first = (0..STEPS).filter(|n| after_first.contains_key(&format!("step-{n}"))).count();
    assert_eq!(steps_run_first, done_first, "every step started in the first process ended succeeded in it");

    let second_began = Timestamp::now();
    let second_started = Instant::now();
    let mut second = Server::spawn(dir.path(), 2);
    let deadline = Instant::now() + Duration::from_secs(40);
    while count(&rt, ExecutionStatus::Succeeded).await < total {
        second.assert_running();
        assert!(Instant::now() < deadline, "the second process did not finish; its log:\n{}", second.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second_took = second_started.elapsed();
    second.sigterm();
    let idle_exit = Instant::now();
    let status = second.exit(Duration::from_secs(10)).await;
    assert!(status.success(), "second exit status: {status}; its log:\n{}", second.output());
    let idle_exit = idle_exit.elapsed();
    let second_pid = second.child.id();

    let all = records(&rt, None).await;
    assert_eq!(all.len(), total, "one record per job");
    let mut steps = Vec::new();
    for r in &all {
        assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
        assert_eq!(r.result, Some(r.payload.clone()), "each job's own result: {r:?}");
        assert_eq!(r.attempts.len(), 1, "one recorded attempt; a given-back run is not one: {r:?}");
        if r.job_id == "burst-step" {
            steps.push(r.result.as_ref().and_then(serde_json::Value::as_u64).unwrap());
        }
    }
    steps.sort_unstable();
    assert_eq!(steps, (0..u64::from(STEPS)).collect::<Vec<_>>(), "every step exactly once");
    let mut pickup = Duration::ZERO;
    for r in all.iter().filter(|r| r.job_id != "burst-step") {
        let began = r.started_at.unwrap().since(second_began);
        let ended = r.finished_at.unwrap().since(second_began);
        // Only a release makes them claimable this early: their lease had 30 s to run.
        assert!(r.started_at.unwrap() >= second_began, "{} ran again in the second process: {r:?}", r.id);
        assert!(began < Duration::from_secs(5), "{} picked up {began:?} after the second process began", r.id);
        assert!(ended < Duration::from_secs(20), "{} done {ended:?} after the second process began", r.id);
        pickup = pickup.max(began);
    }

    let all_runs = runs(dir.path());
    for n in 0..STEPS {
        let e = events(&all_runs, &format!("step-{n}"));
        assert_eq!(e, ["start", "end"], "step-{n} ran exactly once");
    }
    for n in 0..LONG {
        let job = format!("long-{n}");
        let run = &all_runs[&job];
        let in_first: Vec<&str> = run.iter().filter(|(_, p)| *p == first_pid).map(|(w, _)| w.as_str()).collect();
        let in_second: Vec<&str> = run.iter().filter(|(_, p)| *p == second_pid).map(|(w, _)| w.as_str()).collect();
        let cut = if n < sleepers { vec!["start"] } else { vec!["start", "interrupted"] };
        assert_eq!(in_first, cut, "{job} in the first process");
        assert_eq!(in_second, ["start", "end"], "{job} ran again in the second process");
    }
    let stats = rt.queue().stats().await.unwrap();
    assert_eq!((stats.ready, stats.leased, stats.delayed, stats.dead), (0, 0, 0, 0), "{stats:?}");

    println!(
        "{done_first} of {STEPS} short jobs done when SIGTERM came ({DONE_BEFORE_SIGNAL} awaited); drained and exited \
         0 in {:.2} s (shutdown_timeout {:.1} s); {given_back_running} running long job(s) and {} unstarted job(s) \
         given back; the second process picked the long ones up within {:.2} s and finished all {total} in {:.1} s \
         (exited {:.2} s after its SIGTERM); every job succeeded exactly once; whole test {:.1} s",
        drain.as_secs_f64(),
        SHUTDOWN_TIMEOUT.as_secs_f64(),
        total - done_first - LONG as usize,
        pickup.as_secs_f64(),
        second_took.as_secs_f64(),
        idle_exit.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    drop(rt);
    dir.close().expect("remove the temp dir");
}

/// The serving process: `app serve` through the real CLI, with a short drain.
async fn child(spec: &str) -> ExitCode {
    let (dir, addr) = spec.split_once('|').unwrap();
    let builder = Runtime::builder().ignore_env().provider(QueueProvider::Embedded).data_dir(dir).configure(|c| {
        c.shutdown_timeout = SHUTDOWN_TIMEOUT;
        c.poll_interval = Duration::from_millis(20);
    });
    let cli = netscript::cli::Cli::parse_from([
        "shutdown-test",
        "serve",
        "--addr",
        addr,
        "--concurrency",
        &CONCURRENCY.to_string(),
    ]);
    netscript::cli::run_cli(builder, cli).await
}

/// The cases: name, long jobs that watch their cancellation signal.
const CASES: [(&str, u32); 2] = [("sleepers", 0), ("listener", 1)];

fn main() -> ExitCode {
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    if let Ok(spec) = std::env::var(CHILD) {
        return tokio.block_on(child(&spec));
    }
    // `cargo test --test shutdown -- sleepers` runs one case.
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let (mut passed, mut failed) = (0, 0);
    for (name, listeners) in CASES {
        if !filter.is_empty() && !filter.iter().any(|f| f == name) {
            continue;
        }
        // A failed case is a panic in its task: reported, and the next case still runs.
        match tokio.block_on(tokio.spawn(sigterm_mid_burst(listeners))) {
            Ok(()) => {
                println!("test sigterm_mid_burst::{name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test sigterm_mid_burst::{name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
