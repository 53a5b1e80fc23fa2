//! The soak: a million jobs through one backend while worker processes are SIGKILLed at
//! random, then an accounting of every job from the execution store and the queue.
//!
//! ```text
//! cargo bench --bench soak -- embedded                        # 1,000,000 jobs, 3 workers
//! cargo bench --features postgres --bench soak -- postgres
//! JOBS=20000 KILL_EVERY=1-3 MAX_SECS=300 cargo bench --bench soak -- embedded
//! ./scripts/soak.sh                                           # both backends, bounded
//! ```
//!
//! Settings (environment): `JOBS` (default 1,000,000), `WORKERS` worker processes (3),
//! `CONCURRENCY` slots per worker (4), `LEASE_MS` (2,000), `KILL_EVERY` a random interval in
//! seconds between kills (`2-6`; `0` for none), `MAX_SECS` a hard bound on the whole run
//! (1,200), `SEED` for the kill schedule (printed; from the clock when unset). PostgreSQL is
//! reached at `NETSCRIPT_TEST_POSTGRES_URL` (default: the local service).
//!
//! What it does: this binary re-executes itself `WORKERS` times as worker processes (an app
//! binary is its own worker, as in `tests/cluster.rs`), enqueues `JOBS` jobs in chunks of
//! 1,000 with `enqueue_many` while the workers already run, and every `KILL_EVERY` seconds
//! SIGKILLs a random worker and starts a new one. Job `n` returns `n`; one in 10,000 fails
//! every attempt (dead-lettered after 3), one in 1,000 fails its first attempt (then
//! succeeds). Once everything is enqueued and the queue holds nothing ready, delayed or
//! leased, the workers are stopped and every record is read back, page by page:
//!
//! - enqueued: receipts the enqueue calls returned; succeeded and dead: final records;
//! - missing: enqueued ids with no final record; unknown: records no receipt names;
//! - re-runs: records whose attempt number exceeds the planned attempts (1, 2 for the
//!   fail-once jobs, 3 for the dead ones): a job that ran again because a kill cut its lease;
//! - wrong: a succeeded record whose result is not its own number, a dead record of a job
//!   that should have succeeded or the reverse;
//! - the queue's stats (ready, delayed, leased must be 0; dead must equal the dead records)
//!   and its dead letters (each one a planned-dead job).
//!
//! It prints one summary line and one JSON line, and exits non-zero unless enqueued =
//! succeeded + dead = `JOBS`, missing = 0, nothing is wrong or unknown, and the queue is
//! empty. Each run uses a namespace of its own (a PostgreSQL schema; a temporary data
//! directory for the embedded store) and removes it after, also when it fails.

#![allow(clippy::unwrap_used)] // a benchmark: a failed unwrap is a failed run

use std::collections::HashMap;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "../tests/support/mod.rs"]
mod support;

use netscript::prelude::*;
use netscript::queue::QueueStats;
use netscript::store::ExecutionFilter;
use netscript::{CancellationToken, ExecutionId, ExecutionStatus, QueueProvider};
use support::workers::WorkerSetup as Setup;

/// Jobs per `enqueue_many` call.
const CHUNK: usize = 1_000;
/// Records per page when reading the store back.
const PAGE: usize = 5_000;
/// The job id.
const JOB: &str = "soak-step";
/// Attempts of a job that always fails (`retries = 2`).
const DEAD_ATTEMPTS: u32 = 3;

/// What job `n` is planned to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// Succeed at once.
    Succeed,
    /// Fail the first attempt, succeed on the next.
    FailOnce,
    /// Fail every attempt: dead-lettered.
    Dead,
}

impl Plan {
    fn of(n: u64) -> Self {
        if n % 10_000 == 9_999 {
            Self::Dead
        } else if n % 1_000 == 500 {
            Self::FailOnce
        } else {
            Self::Succeed
        }
    }

    /// Attempts the plan takes when no kill interferes.
    fn attempts(self) -> u32 {
        match self {
            Self::Succeed => 1,
            Self::FailOnce => 2,
            Self::Dead => DEAD_ATTEMPTS,
        }
    }
}

/// Returns its own number; a few fail once, a very few always (see [`Plan`]).
#[job(id = "soak-step", retries = 2, backoff = "fixed(10ms)", timeout = "30s")]
async fn soak_step(ctx: JobContext, n: u64) -> JobResult<u64> {
    match Plan::of(n) {
        Plan::Dead => Err(JobError::retryable(format!("job {n} always fails"))),
        Plan::FailOnce if ctx.attempt() == 1 => Err(JobError::retryable(format!("job {n} fails its first attempt"))),
        _ => Ok(n),
    }
}

/// The run's settings, from the environment.
#[derive(Clone, Debug)]
struct Settings {
    jobs: u64,
    workers: usize,
    concurrency: usize,
    lease: Duration,
    /// Seconds between kills, drawn from this range; `None`: no kills.
    kill_every: Option<(f64, f64)>,
    max: Duration,
    seed: u64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.replace(['_', ','], "").parse().unwrap_or_else(|_| {
            eprintln!("soak: {name}={v:?} is not a valid number");
            std::process::exit(2)
        }),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Self {
        let kill_every = match std::env::var("KILL_EVERY").as_deref() {
            Err(_) => Some((2.0, 6.0)),
            Ok("0") => None,
            Ok(v) => {
                let parsed = match v.split_once('-') {
                    Some((lo, hi)) => lo.trim().parse().ok().zip(hi.trim().parse().ok()),
                    None => v.trim().parse().ok().map(|x: f64| (x, x)),
                };
                match parsed {
                    Some((lo, hi)) if lo > 0.0 && hi >= lo => Some((lo, hi)),
                    _ => {
                        eprintln!("soak: KILL_EVERY={v:?}: expected seconds `LO-HI` (e.g. `2-6`), one number, or 0");
                        std::process::exit(2)
                    }
                }
            }
        };
        let seed = env_or(
            "SEED",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64),
        );
        Self {
            jobs: env_or("JOBS", 1_000_000),
            workers: env_or("WORKERS", 3usize).max(1),
            concurrency: env_or("CONCURRENCY", 4usize).max(1),
            lease: Duration::from_millis(env_or("LEASE_MS", 2_000)),
            kill_every,
            max: Duration::from_secs(env_or("MAX_SECS", 1_200)),
            seed: seed.max(1),
        }
    }
}

/// A xorshift generator: the kill schedule, reproducible from `SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The worker processes; SIGKILLs and reaps them all when dropped (a failed or timed-out
/// run leaves none behind).
struct Workers {
    setup: Setup,
    children: Vec<Child>,
    started: u64,
}

impl Workers {
    fn spawn(&mut self) {
        self.children.push(self.setup.spawn());
        self.started += 1;
    }

    /// SIGKILLs worker `i` and starts a replacement.
    fn kill_and_replace(&mut self, i: usize) {
        let mut victim = self.children.swap_remove(i);
        let _ = victim.kill();
        let _ = victim.wait();
        self.spawn();
    }

    fn kill_all(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Counters shared between the run's tasks, readable after a timeout.
#[derive(Default)]
struct Progress {
    enqueued: AtomicU64,
    enqueue_errors: AtomicU64,
    kills: AtomicU64,
    enqueue_done: AtomicBool,
    enqueue_failed: AtomicBool,
    last_stats: std::sync::Mutex<Option<QueueStats>>,
}

/// What the record pass found.
#[derive(Debug, Default)]
struct Accounting {
    records: u64,
    succeeded: u64,
    dead: u64,
    /// Records in another state (queued, running, retrying, failed, cancelled).
    unfinished: u64,
    missing: u64,
    /// Records no receipt names.
    unknown: u64,
    /// A second record of one execution id.
    double_records: u64,
    /// Payload not the job's number, result not the payload, or the wrong final state.
    wrong: u64,
    rerun_jobs: u64,
    rerun_attempts: u64,
    planned_dead: u64,
    planned_fail_once: u64,
    samples: Vec<String>,
}

impl Accounting {
    fn sample(&mut self, what: String) {
        if self.samples.len() < 10 {
            self.samples.push(what);
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn stats(rt: &Runtime) -> Option<QueueStats> {
    match rt.queue().stats().await {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("soak: queue stats failed (will retry): {e}");
            None
        }
    }
}

/// Enqueues jobs `0..jobs` in chunks; returns the execution id of each, by number.
async fn enqueue_all(rt: &Runtime, jobs: u64, progress: &Progress) -> Result<Vec<ExecutionId>, String> {
    let mut ids = Vec::with_capacity(jobs as usize);
    let mut next = 0u64;
    while next < jobs {
        let end = (next + CHUNK as u64).min(jobs);
        let mut tries = 0;
        let receipts = loop {
            match rt.enqueue_many((next..end).map(soak_step::enqueue).collect()).await {
                Ok(r) => break r,
                Err(e) => {
                    // A failed call enqueues nothing (its queued records are removed again),
                    // so the same chunk is sent again; a message that did get through would
                    // show up as an unknown record in the accounting.
                    progress.enqueue_errors.fetch_add(1, Ordering::Relaxed);
                    tries += 1;
                    eprintln!("soak: enqueue of jobs {next}..{end} failed (try {tries}): {e}");
                    if tries == 5 {
                        return Err(format!("enqueue of jobs {next}..{end} failed 5 times: {e}"));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        if receipts.len() as u64 != end - next || receipts.iter().any(|r| r.duplicate) {
            return Err(format!("enqueue of jobs {next}..{end} returned {} receipts", receipts.len()));
        }
        ids.extend(receipts.into_iter().map(|r| r.execution_id));
        progress.enqueued.store(end, Ordering::Relaxed);
        next = end;
    }
    progress.enqueue_done.store(true, Ordering::Relaxed);
    Ok(ids)
}

/// Kills a random worker every drawn interval until `stop`.
async fn killer(mut workers: Workers, settings: &Settings, stop: CancellationToken, progress: &Progress) -> Workers {
    let Some((lo, hi)) = settings.kill_every else {
        stop.cancelled().await;
        return workers;
    };
    let mut rng = Rng(settings.seed);
    loop {
        let wait = Duration::from_secs_f64(lo + (hi - lo) * rng.unit());
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return workers,
        }
        let victim = (rng.next() % workers.children.len() as u64) as usize;
        workers.kill_and_replace(victim);
        progress.kills.fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits until everything is enqueued and the queue holds nothing ready, delayed or leased
/// (or the enqueue failed); prints progress every 10 s.
async fn wait_drained(rt: &Runtime, progress: &Progress, started: Instant) {
    let mut last_print = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if progress.enqueue_failed.load(Ordering::Relaxed) {
            return;
        }
        let Some(s) = stats(rt).await else { continue };
        *progress.last_stats.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            eprintln!(
                "soak: {:>6.0} s  enqueued {:>8}  ready {:>8}  delayed {:>5}  leased {:>5}  dead {:>4}  kills {:>3}  load {}",
                started.elapsed().as_secs_f64(),
                progress.enqueued.load(Ordering::Relaxed),
                s.ready,
                s.delayed,
                s.leased,
                s.dead,
                progress.kills.load(Ordering::Relaxed),
                loadavg(),
            );
        }
        if progress.enqueue_done.load(Ordering::Relaxed) && s.ready + s.delayed + s.leased == 0 {
            return;
        }
    }
}

/// Reads every record back, newest first, a page at a time, and checks each against its
/// receipt.
async fn account(rt: &Runtime, ids: &[ExecutionId]) -> Accounting {
    let number: HashMap<ExecutionId, u64> = ids.iter().enumerate().map(|(n, id)| (*id, n as u64)).collect();
    let mut seen = vec![0u8; ids.len()];
    let mut acc = Accounting::default();
    let mut before = None;
    loop {
        let filter = ExecutionFilter { limit: Some(PAGE), before, ..Default::default() };
        let page = rt.store().list(&filter).await.expect("list execution records");
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        let full = page.len() == PAGE;
        for r in page {
            acc.records += 1;
            let Some(&n) = number.get(&r.id) else {
                acc.unknown += 1;
                acc.sample(format!("unknown record {} ({}, {})", r.id, r.job_id, r.status));
                continue;
            };
            let slot = &mut seen[n as usize];
            *slot = slot.saturating_add(1);
            if *slot > 1 {
                acc.double_records += 1;
                acc.sample(format!("job {n}: a second record of {}", r.id));
                continue;
            }
            let plan = Plan::of(n);
            if r.job_id != JOB || r.payload.as_u64() != Some(n) {
                acc.wrong += 1;
                acc.sample(format!("job {n}: record of {} with payload {}", r.job_id, r.payload));
            }
            match r.status {
                ExecutionStatus::Succeeded => {
                    acc.succeeded += 1;
                    if r.result.as_ref().and_then(serde_json::Value::as_u64) != Some(n) || plan == Plan::Dead {
                        acc.wrong += 1;
                        acc.sample(format!("job {n} ({plan:?}): succeeded with {:?}", r.result));
                    }
                }
                ExecutionStatus::Dead => {
                    acc.dead += 1;
                    if plan != Plan::Dead {
                        acc.wrong += 1;
                        acc.sample(format!("job {n} ({plan:?}): dead after attempt {}: {:?}", r.attempt, r.error));
                    }
                }
                other => {
                    acc.unfinished += 1;
                    acc.sample(format!("job {n}: left {other} at attempt {}", r.attempt));
                }
            }
            if r.attempt > plan.attempts() {
                acc.rerun_jobs += 1;
                acc.rerun_attempts += u64::from(r.attempt - plan.attempts());
            }
        }
        if !full {
            break;
        }
    }
    for (n, count) in seen.iter().enumerate() {
        match Plan::of(n as u64) {
            Plan::Dead => acc.planned_dead += 1,
            Plan::FailOnce => acc.planned_fail_once += 1,
            Plan::Succeed => {}
        }
        if *count == 0 {
            acc.missing += 1;
            acc.sample(format!("job {n}: no record of {}", ids[n]));
        }
    }
    // A record in a non-final state is missing its final record too.
    acc.missing += acc.unfinished;
    acc
}

/// One backend's soak. Returns whether every check held.
async fn soak(provider: QueueProvider, settings: &Settings) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let namespace = support::unique_namespace("soak");
    let _cleanup = support::DropNamespace(provider, namespace.clone());
    let setup = Setup {
        provider,
        namespace,
        dir: dir.path().to_owned(),
        concurrency: settings.concurrency,
        lease: settings.lease,
    };
    let rt = setup.runtime().await;
    let load_before = loadavg();
    eprintln!(
        "soak: {} — {} jobs, {} workers x {} slots, lease {} ms, kills every {:?} s, seed {}, max {} s, load {load_before}",
        provider.as_str(),
        settings.jobs,
        settings.workers,
        settings.concurrency,
        settings.lease.as_millis(),
        settings.kill_every,
        settings.seed,
        settings.max.as_secs(),
    );
    let progress = Arc::new(Progress::default());
    let started = Instant::now();

    let body = async {
        let mut workers = Workers { setup: setup.clone(), children: Vec::new(), started: 0 };
        for _ in 0..settings.workers {
            workers.spawn();
        }
        let stop = CancellationToken::new();
        let run = async {
            let enqueue = async {
                let ids = enqueue_all(&rt, settings.jobs, &progress).await;
                if ids.is_err() {
                    progress.enqueue_failed.store(true, Ordering::Relaxed);
                }
                (ids, started.elapsed())
            };
            let (out, ()) = tokio::join!(enqueue, wait_drained(&rt, &progress, started));
            stop.cancel();
            out
        };
        let ((ids, enqueue_time), mut workers) = tokio::join!(run, killer(workers, settings, stop.clone(), &progress));
        let elapsed = started.elapsed();
        let spawned = workers.started;
        workers.kill_all();
        let ids = match ids {
            Ok(ids) => ids,
            Err(e) => return Err(e),
        };
        // Nothing may come back once every worker is gone.
        let queue = loop {
            if let Some(s) = stats(&rt).await {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let dead_letters = rt.queue().dead_letters(ids.len() + 1).await.expect("dead letters");
        let counting = Instant::now();
        let acc = account(&rt, &ids).await;
        Ok((ids.len() as u64, acc, queue, dead_letters, elapsed, enqueue_time, spawned, counting.elapsed()))
    };
    let outcome = tokio::time::timeout(settings.max, body).await;
    let load_after = loadavg();
    let kills = progress.kills.load(Ordering::Relaxed);
    let enqueue_errors = progress.enqueue_errors.load(Ordering::Relaxed);
    let (enqueued, acc, queue, dead_letters, elapsed, enqueue_time, spawned, counting) = match outcome {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            println!("soak {} FAILED: {e}", provider.as_str());
            return false;
        }
        Err(_) => {
            let last = *progress.last_stats.lock().unwrap_or_else(|e| e.into_inner());
            println!(
                "soak {} FAILED: not done within MAX_SECS={} ({} of {} enqueued, {kills} kills, last queue stats {last:?}, load {load_after})",
                provider.as_str(),
                settings.max.as_secs(),
                progress.enqueued.load(Ordering::Relaxed),
                settings.jobs,
            );
            println!(
                "{}",
                serde_json::json!({
                    "backend": provider.as_str(), "jobs": settings.jobs, "outcome": "timeout",
                    "max_secs": settings.max.as_secs(), "enqueued": progress.enqueued.load(Ordering::Relaxed),
                    "kills": kills, "seed": settings.seed,
                })
            );
            return false;
        }
    };

    let bad_letters = dead_letters
        .iter()
        .filter(|d| {
            let n = serde_json::from_slice::<u64>(&d.message.payload).ok();
            n.is_none_or(|n| Plan::of(n) != Plan::Dead)
        })
        .count();
    let mut failures = Vec::new();
    if enqueued != settings.jobs {
        failures.push(format!("enqueued {enqueued} of {}", settings.jobs));
    }
    if enqueued != acc.succeeded + acc.dead {
        failures.push(format!("enqueued {enqueued} != succeeded {} + dead {}", acc.succeeded, acc.dead));
    }
    if acc.missing > 0 {
        failures.push(format!("{} missing", acc.missing));
    }
    if acc.unknown + acc.double_records + acc.wrong > 0 {
        failures.push(format!("{} unknown, {} double, {} wrong records", acc.unknown, acc.double_records, acc.wrong));
    }
    if acc.dead != acc.planned_dead {
        failures.push(format!("{} dead, {} planned", acc.dead, acc.planned_dead));
    }
    if (queue.ready, queue.delayed, queue.leased) != (0, 0, 0) || queue.dead != acc.dead {
        failures.push(format!("queue not drained or dead letters off: {queue:?}"));
    }
    if dead_letters.len() as u64 != acc.dead || bad_letters > 0 {
        failures.push(format!("{} dead letters ({bad_letters} of jobs planned to succeed)", dead_letters.len()));
    }
    let ok = failures.is_empty();
    let secs = elapsed.as_secs_f64();
    println!(
        "soak {:<8} {}: {enqueued} enqueued = {} succeeded + {} dead; missing {}; {} job(s) re-run ({} extra attempts) \
         after {kills} kills of {} workers ({spawned} started); queue ready/delayed/leased/dead {}/{}/{}/{}, stale \
         settlements {}; {:.1} s ({:.0} jobs/s; enqueue done at {:.1} s), accounting {:.1} s over {} records; load {} -> {}{}",
        provider.as_str(),
        if ok { "ok" } else { "FAILED" },
        acc.succeeded,
        acc.dead,
        acc.missing,
        acc.rerun_jobs,
        acc.rerun_attempts,
        settings.workers,
        queue.ready,
        queue.delayed,
        queue.leased,
        queue.dead,
        queue.stale_settlements,
        secs,
        enqueued as f64 / secs,
        enqueue_time.as_secs_f64(),
        counting.as_secs_f64(),
        acc.records,
        load_before,
        load_after,
        if ok { String::new() } else { format!(" — {}", failures.join("; ")) },
    );
    for s in &acc.samples {
        println!("  {s}");
    }
    println!(
        "{}",
        serde_json::json!({
            "backend": provider.as_str(),
            "outcome": if ok { "ok" } else { "failed" },
            "jobs": settings.jobs,
            "workers": settings.workers,
            "concurrency": settings.concurrency,
            "lease_ms": settings.lease.as_millis() as u64,
            "seed": settings.seed,
            "enqueued": enqueued,
            "enqueue_errors": enqueue_errors,
            "succeeded": acc.succeeded,
            "dead": acc.dead,
            "planned_dead": acc.planned_dead,
            "planned_fail_once": acc.planned_fail_once,
            "missing": acc.missing,
            "unfinished": acc.unfinished,
            "unknown": acc.unknown,
            "double_records": acc.double_records,
            "wrong": acc.wrong,
            "rerun_jobs": acc.rerun_jobs,
            "rerun_attempts": acc.rerun_attempts,
            "records": acc.records,
            "kills": kills,
            "workers_started": spawned,
            "queue": { "ready": queue.ready, "delayed": queue.delayed, "leased": queue.leased, "dead": queue.dead,
                       "stale_settlements": queue.stale_settlements },
            "dead_letters": dead_letters.len(),
            "secs": (secs * 10.0).round() / 10.0,
            "jobs_per_sec": (enqueued as f64 / secs).round(),
            "enqueue_secs": (enqueue_time.as_secs_f64() * 10.0).round() / 10.0,
            "accounting_secs": (counting.as_secs_f64() * 10.0).round() / 10.0,
            "load_before": load_before,
            "load_after": load_after,
            "failures": failures,
        })
    );
    ok
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    support::workers::run_if_worker(&tokio);
    let wanted: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let available: Vec<QueueProvider> = support::providers()
        .into_iter()
        .filter(|p| matches!(p, QueueProvider::Embedded | QueueProvider::Postgres))
        .collect();
    let mut chosen = Vec::new();
    for w in &wanted {
        match available.iter().find(|p| p.as_str() == w) {
            Some(p) => chosen.push(*p),
            None => {
                eprintln!(
                    "soak: backend `{w}` is not available; expected `embedded` or `postgres` (build with \
                     `--features postgres` for the latter)"
                );
                std::process::exit(2);
            }
        }
    }
    if chosen.is_empty() {
        chosen = available;
    }
    let settings = Settings::from_env();
    let mut failed = 0;
    for provider in chosen {
        if !tokio.block_on(soak(provider, &settings)) {
            failed += 1;
        }
    }
    drop(tokio);
    if failed > 0 {
        std::process::exit(1);
    }
}
