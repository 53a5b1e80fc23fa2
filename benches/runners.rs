//! The three runners compared: memory per slot, the subprocess runner's per-attempt overhead,
//! and CPU-bound throughput with the latency of the serving runtime under that load.
//!
//! ```text
//! cargo bench --bench runners              # all three parts
//! cargo bench --bench runners -- memory    # one part: memory, overhead or cpu
//! RUNS=5 cargo bench --bench runners       # more runs per figure (default 3)
//! ```
//!
//! Every figure is printed as the median of RUNS runs with the lowest and highest in brackets.
//! Everything runs on the memory backend, so the figures are the runners', not a store's.
//!
//! - **memory**: for each mode and N in 1, 2, 8, 32, a fresh process of this binary builds a
//!   runtime with concurrency N, enqueues N `hold` jobs and reads its resident set (VmRSS in
//!   `/proc/self/status`) before the workers start (`base`). It then starts the workers and,
//!   once all N jobs are in their bodies (each has done a little work: a 16 KiB buffer on its
//!   stack, a JSON round trip, a file written; then it polls for a release file), reads it
//!   again (`busy`). For the subprocess runner `busy` adds the children found by their parent
//!   pid in `/proc/*/stat`: their summed VmRSS (shared pages counted once per child) and their
//!   summed PSS (`/proc/<pid>/smaps_rollup`, shared pages split between the processes that map
//!   them). Per slot: (busy - base) / N, and the marginal cost from 8 to 32 slots,
//!   (busy(32) - busy(8)) / 24, which leaves out the fixed cost of starting the workers.
//! - **overhead**: `Runner::run` called directly, as the dispatcher calls it, with a job that
//!   returns the wall clock (`SystemTime`) read on the first line of its body. Reported per
//!   mode over 200 attempts (after 10 of warm-up): the time from the call to the body's first
//!   line (the clock is comparable across processes on one machine), and the whole call until
//!   its outcome is back. Then the same job through the whole runtime, one at a time with idle
//!   workers at concurrency 1: from the start of the `enqueue` call to the body's first line,
//!   100 jobs per run. Then no-op jobs/s through the whole runtime with the subprocess
//!   runner at concurrency 2: 300 jobs enqueued, the clock runs from starting the workers until
//!   the queue is empty and the workers drained; all 300 are checked to have succeeded.
//! - **cpu**: a job that mixes 64-bit words in a deterministic loop for about 20 ms (calibrated
//!   at start; it returns the checksum, checked against the expected one, and the wall clock at
//!   its end). For each mode and concurrency 1 to the core count, 30 jobs per slot are
//!   enqueued; throughput is jobs / (last job's end - workers' start). Meanwhile a probe task
//!   on the serving runtime (a multi-thread tokio runtime with one worker per core, as
//!   `#[tokio::main]` makes) times `tokio::time::sleep(1 ms)` back to back: how late the API
//!   and the dispatcher would be while the jobs run. The same probe with no load is the
//!   reference.

#![allow(clippy::unwrap_used)] // a benchmark: a failed unwrap is a failed run

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use netscript::jobs::{Registry, StateMap};
use netscript::prelude::*;
use netscript::store::ExecutionFilter;
use netscript::worker::runner::{AttemptOutcome, CHILD_ENV, Runner};
use netscript::{CancellationToken, ExecutionStatus, QueueProvider, RunnerMode};

/// Set (to `mode,N,dir`) in the environment of a process that measures one memory figure.
const MEMORY_ENV: &str = "NETSCRIPT_BENCH_RUNNERS_MEMORY";

const MODES: [RunnerMode; 3] = [RunnerMode::InProcess, RunnerMode::ThreadPool, RunnerMode::Subprocess];
const SLOTS: [usize; 4] = [1, 2, 8, 32];

fn mode_name(mode: RunnerMode) -> &'static str {
    match mode {
        RunnerMode::InProcess => "in-process",
        RunnerMode::ThreadPool => "thread-pool",
        RunnerMode::Subprocess => "subprocess",
    }
}

/// Nanoseconds since the Unix epoch: comparable between this process and its children.
fn wall_ns() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
}

// ---- jobs ----------------------------------------------------------------------------------

/// Where a `hold` job reports that it started and waits for its release.
#[derive(Serialize, Deserialize, JsonSchema)]
struct Hold {
    /// A directory shared with the benchmark.
    dir: PathBuf,
}

/// Does a little work (a 16 KiB buffer on its stack, a JSON round trip), says it started by
/// writing a file, then waits until the benchmark writes `release`.
#[job(id = "hold", retries = 0, timeout = "2m")]
async fn hold(ctx: JobContext, payload: Hold) -> JobResult<u64> {
    let mut buffer = [0u8; 16 * 1024];
    for (i, b) in buffer.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31);
    }
    let buffer = std::hint::black_box(buffer);
    let sum = buffer.iter().map(|&b| u64::from(b)).sum::<u64>();
    let text = serde_json::to_string(&serde_json::json!({ "execution": ctx.execution_id().to_string(), "sum": sum }))?;
    let value: serde_json::Value = serde_json::from_str(&text)?;
    std::fs::write(payload.dir.join(format!("started-{}", ctx.execution_id())), text)?;
    let release = payload.dir.join("release");
    while !release.exists() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(value["sum"].as_u64().unwrap_or_default())
}

/// Returns the wall clock read on its first line, in nanoseconds since the Unix epoch.
#[job(id = "stamp", retries = 0, timeout = "30s")]
async fn stamp() -> JobResult<u64> {
    Ok(wall_ns())
}

/// Does nothing.
#[job(id = "noop", retries = 0, timeout = "30s")]
async fn noop() -> JobResult<()> {
    Ok(())
}

/// How much CPU work.
#[derive(Serialize, Deserialize, JsonSchema)]
struct Burn {
    /// Rounds of mixing.
    rounds: u64,
}

/// The checksum of the work and when it ended.
#[derive(Serialize, Deserialize, JsonSchema)]
struct Burned {
    /// Deterministic for a number of rounds.
    sum: u64,
    /// Wall clock at the end, nanoseconds since the Unix epoch.
    end_ns: u64,
}

/// CPU-bound work that never yields.
#[job(id = "burn", retries = 0, timeout = "1m")]
async fn burn(payload: Burn) -> JobResult<Burned> {
    Ok(Burned { sum: mix_rounds(payload.rounds), end_ns: wall_ns() })
}

fn mix_rounds(rounds: u64) -> u64 {
    let mut value: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..std::hint::black_box(rounds) {
        value = mix(value ^ round);
    }
    value
}

/// splitmix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// ---- helpers -------------------------------------------------------------------------------

async fn runtime(mode: RunnerMode, concurrency: usize) -> Runtime {
    Runtime::builder()
        .ignore_env()
        .provider(QueueProvider::Memory)
        .concurrency(concurrency)
        .configure(|c| c.runner = mode)
        .build()
        .await
        .expect("runtime")
}

/// Starts the workers; fire the token and await the handle to drain them.
fn start_workers(rt: &Runtime) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let handle = tokio::spawn({
        let (rt, stop) = (rt.clone(), stop.clone());
        async move {
            rt.run_workers(stop).await;
        }
    });
    (stop, handle)
}

/// Waits until nothing is ready, leased or delayed.
async fn queue_empty(rt: &Runtime, poll: Duration) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = rt.queue().stats().await.expect("stats");
        if s.ready + s.leased + s.delayed == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the jobs did not finish: {s:?}");
        tokio::time::sleep(poll).await;
    }
}

async fn succeeded(rt: &Runtime, limit: usize) -> Vec<netscript::ExecutionRecord> {
    let filter =
        ExecutionFilter { limit: Some(limit * 2), status: Some(ExecutionStatus::Succeeded), ..Default::default() };
    rt.store().list(&filter).await.expect("list")
}

/// A field of a `/proc` key-value file (`VmRSS:`, `Pss:`), in KiB.
fn proc_kib(path: &Path, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

fn rss_kib(pid: u32) -> u64 {
    proc_kib(&PathBuf::from(format!("/proc/{pid}/status")), "VmRSS:").unwrap_or(0)
}

fn pss_kib(pid: u32) -> u64 {
    proc_kib(&PathBuf::from(format!("/proc/{pid}/smaps_rollup")), "Pss:").unwrap_or(0)
}

/// The pids whose parent is `parent`, from `/proc/*/stat`.
fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // After the command name (in parentheses, may contain spaces): state, then ppid.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        if rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// Median, lowest and highest.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// `median (min–max)` with `decimals` decimals.
fn show(values: &[f64], decimals: usize) -> String {
    let (m, lo, hi) = spread(values);
    format!("{m:.decimals$} ({lo:.decimals$}–{hi:.decimals$})")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` has them.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

// ---- memory --------------------------------------------------------------------------------

/// One memory figure, measured in this (fresh) process: prints `RESULT base self_busy
/// children_rss children_pss children` in KiB.
async fn memory_probe(mode: RunnerMode, n: usize, dir: PathBuf) {
    let rt = runtime(mode, n).await;
    let jobs = (0..n).map(|_| hold::enqueue(Hold { dir: dir.clone() })).collect();
    rt.enqueue_many(jobs).await.expect("enqueue");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let me = std::process::id();
    let base = rss_kib(me);
    let (stop, workers) = start_workers(&rt);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let started = std::fs::read_dir(&dir)
            .expect("read dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("started-"))
            .count();
        if started == n {
            break;
        }
        assert!(Instant::now() < deadline, "only {started} of {n} hold jobs started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let busy = rss_kib(me);
    let kids = children(me);
    let (kids_rss, kids_pss) = kids.iter().fold((0, 0), |(r, p), &pid| (r + rss_kib(pid), p + pss_kib(pid)));
    std::fs::write(dir.join("release"), b"").expect("release");
    queue_empty(&rt, Duration::from_millis(5)).await;
    stop.cancel();
    workers.await.expect("workers");
    assert_eq!(succeeded(&rt, n).await.len(), n, "every hold job succeeded");
    println!("RESULT {base} {busy} {kids_rss} {kids_pss} {}", kids.len());
}

/// Runs [`memory_probe`] in a fresh process of this binary; (base, busy with children by RSS,
/// busy with children by PSS) in KiB.
fn memory_once(mode: RunnerMode, n: usize) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(std::env::current_exe().expect("own path"))
        .env(MEMORY_ENV, format!("{},{n},{}", mode_name(mode), dir.path().display()))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("memory probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("the memory probe ({}, {n}) failed: {}: {stdout}", mode_name(mode), out.status));
    let v: Vec<u64> = line.split_whitespace().map(|x| x.parse().expect("number")).collect();
    let (base, busy, kids_rss, kids_pss, kids) = (v[0], v[1], v[2], v[3], v[4]);
    if mode == RunnerMode::Subprocess {
        assert_eq!(kids as usize, n, "one child per running attempt");
    }
    (base as f64, (busy + kids_rss) as f64, (busy + kids_pss) as f64)
}

fn memory(runs: usize) {
    println!("\nmemory: added per slot, N jobs in their bodies vs the runtime before its workers start");
    println!("        MiB; median of {runs} runs (min–max); subprocess: children by RSS / by PSS");
    println!("{:<12} {:>3} {:>22} {:>24} {:>24}", "mode", "N", "base", "per slot (busy-base)/N", "per slot, PSS");
    for mode in MODES {
        let mut busy_at = Vec::new();
        for n in SLOTS {
            let samples: Vec<_> = (0..runs).map(|_| memory_once(mode, n)).collect();
            let base: Vec<f64> = samples.iter().map(|s| s.0 / 1024.0).collect();
            let per: Vec<f64> = samples.iter().map(|s| (s.1 - s.0) / 1024.0 / n as f64).collect();
            let per_pss: Vec<f64> = samples.iter().map(|s| (s.2 - s.0) / 1024.0 / n as f64).collect();
            let pss = match mode {
                RunnerMode::Subprocess => show(&per_pss, 3),
                _ => "-".to_owned(),
            };
            println!("{:<12} {n:>3} {:>22} {:>24} {:>24}", mode_name(mode), show(&base, 2), show(&per, 3), pss);
            busy_at.push((n, samples));
        }
        let at = |n: usize| &busy_at.iter().find(|(k, _)| *k == n).expect("measured").1;
        let marginal: Vec<f64> = at(8).iter().zip(at(32)).map(|(a, b)| (b.1 - a.1) / 1024.0 / 24.0).collect();
        let marginal_pss: Vec<f64> = at(8).iter().zip(at(32)).map(|(a, b)| (b.2 - a.2) / 1024.0 / 24.0).collect();
        print!("{:<12} marginal per slot, 8 → 32: {} MiB", mode_name(mode), show(&marginal, 3));
        if mode == RunnerMode::Subprocess {
            print!("  (PSS: {} MiB)", show(&marginal_pss, 3));
        }
        println!();
    }
}

// ---- overhead ------------------------------------------------------------------------------

/// (call → body's first line, whole call) for `samples` attempts of `stamp` on `mode`.
async fn runner_times(mode: RunnerMode, samples: usize) -> (Vec<Duration>, Vec<Duration>) {
    let registry = Registry::linked().expect("registry");
    let job = registry.get("stamp").expect("stamp is registered");
    let states = Arc::new(StateMap::default());
    let runner = Runner::new(mode, 1).expect("runner");
    let (mut to_body, mut whole) = (Vec::new(), Vec::new());
    for i in 0..samples + 10 {
        let ctx = JobContext::for_tests("stamp");
        let stop = CancellationToken::new();
        let called = wall_ns();
        let t0 = Instant::now();
        let outcome = runner.run(job, ctx, b"null", &states, Duration::from_secs(30), &stop).await;
        let elapsed = t0.elapsed();
        let body = match outcome {
            AttemptOutcome::Succeeded(v) => v.as_u64().expect("a timestamp"),
            other => panic!("{}: stamp did not succeed: {other:?}", mode_name(mode)),
        };
        if i >= 10 {
            to_body.push(Duration::from_nanos(body.saturating_sub(called)));
            whole.push(elapsed);
        }
    }
    to_body.sort();
    whole.sort();
    (to_body, whole)
}

/// Through the whole runtime, one job at a time with idle workers (concurrency 1): the time
/// from the start of the `enqueue` call to the first line of the job's body; sorted.
async fn pickup(mode: RunnerMode, samples: usize) -> Vec<Duration> {
    let rt = runtime(mode, 1).await;
    let (stop, workers) = start_workers(&rt);
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples + 10 {
        // Let the worker go idle, so each sample is a wake-up.
        tokio::time::sleep(Duration::from_micros(300)).await;
        let enqueued = wall_ns();
        let id = rt.enqueue(stamp::enqueue()).await.expect("enqueue").execution_id;
        let record = loop {
            match rt.store().get(id).await.expect("get") {
                Some(r) if r.status.is_final() => break r,
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        };
        assert_eq!(record.status, ExecutionStatus::Succeeded, "{record:?}");
        let body = record.result.as_ref().and_then(serde_json::Value::as_u64).expect("a timestamp");
        if i >= 10 {
            out.push(Duration::from_nanos(body.saturating_sub(enqueued)));
        }
    }
    stop.cancel();
    workers.await.expect("workers");
    out.sort();
    out
}

/// No-op jobs/s through the runtime on `mode` at `concurrency`.
async fn noop_throughput(mode: RunnerMode, concurrency: usize, jobs: usize) -> f64 {
    let rt = runtime(mode, concurrency).await;
    rt.enqueue_many((0..jobs).map(|_| noop::enqueue()).collect()).await.expect("enqueue");
    let t = Instant::now();
    let (stop, workers) = start_workers(&rt);
    queue_empty(&rt, Duration::from_millis(2)).await;
    stop.cancel();
    workers.await.expect("workers");
    let elapsed = t.elapsed();
    assert_eq!(succeeded(&rt, jobs).await.len(), jobs, "every no-op succeeded");
    jobs as f64 / elapsed.as_secs_f64()
}

async fn overhead(runs: usize) {
    const SAMPLES: usize = 200;
    println!("\noverhead: Runner::run of a job returning its start time, {SAMPLES} attempts per run");
    println!("          µs; median of {runs} runs (min–max)");
    println!("{:<12} {:>22} {:>22} {:>22} {:>22}", "mode", "to body p50", "to body p99", "whole p50", "whole p99");
    for mode in MODES {
        let (mut b50, mut b99, mut w50, mut w99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let (to_body, whole) = runner_times(mode, SAMPLES).await;
            b50.push(us(percentile(&to_body, 0.50)));
            b99.push(us(percentile(&to_body, 0.99)));
            w50.push(us(percentile(&whole, 0.50)));
            w99.push(us(percentile(&whole, 0.99)));
        }
        println!(
            "{:<12} {:>22} {:>22} {:>22} {:>22}",
            mode_name(mode),
            show(&b50, 1),
            show(&b99, 1),
            show(&w50, 1),
            show(&w99, 1)
        );
    }
    const PICKUPS: usize = 100;
    println!("enqueue → body through the runtime, concurrency 1, idle workers, {PICKUPS} jobs one at a time; µs");
    println!("{:<12} {:>22} {:>22}", "mode", "p50", "p99");
    for mode in MODES {
        let (mut p50, mut p99) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let times = pickup(mode, PICKUPS).await;
            p50.push(us(percentile(&times, 0.50)));
            p99.push(us(percentile(&times, 0.99)));
        }
        println!("{:<12} {:>22} {:>22}", mode_name(mode), show(&p50, 1), show(&p99, 1));
    }
    const JOBS: usize = 300;
    let rates: Vec<f64> = {
        let mut v = Vec::new();
        for _ in 0..runs {
            v.push(noop_throughput(RunnerMode::Subprocess, 2, JOBS).await);
        }
        v
    };
    println!("subprocess   {JOBS} no-op jobs through the runtime, concurrency 2: {} jobs/s", show(&rates, 0));
}

// ---- cpu -----------------------------------------------------------------------------------

/// Rounds of `mix` that take about `target` here, and the time they took.
fn calibrate(target: Duration) -> (u64, Duration) {
    let probe = 1_000_000;
    let t = Instant::now();
    std::hint::black_box(mix_rounds(probe));
    let per_round = t.elapsed().as_secs_f64() / probe as f64;
    let rounds = (target.as_secs_f64() / per_round) as u64;
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        std::hint::black_box(mix_rounds(rounds));
        best = best.min(t.elapsed());
    }
    (rounds, best)
}

/// Times `sleep(1 ms)` back to back on this runtime until `done`; the sorted durations.
fn probe(done: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Duration>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        while !done.load(Ordering::Relaxed) {
            let t = Instant::now();
            tokio::time::sleep(Duration::from_millis(1)).await;
            out.push(t.elapsed());
        }
        out.sort();
        out
    })
}

struct CpuRun {
    jobs_per_s: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

async fn cpu_once(mode: RunnerMode, concurrency: usize, rounds: u64, expected: u64) -> CpuRun {
    let jobs = 30 * concurrency;
    let rt = runtime(mode, concurrency).await;
    rt.enqueue_many((0..jobs).map(|_| burn::enqueue(Burn { rounds })).collect()).await.expect("enqueue");
    let done = Arc::new(AtomicBool::new(false));
    let probing = probe(Arc::clone(&done));
    let started = wall_ns();
    let (stop, workers) = start_workers(&rt);
    queue_empty(&rt, Duration::from_millis(10)).await;
    done.store(true, Ordering::Relaxed);
    let lateness = probing.await.expect("probe");
    stop.cancel();
    workers.await.expect("workers");
    let records = succeeded(&rt, jobs).await;
    assert_eq!(records.len(), jobs, "every burn succeeded");
    let mut last = 0;
    for r in &records {
        let out: Burned = serde_json::from_value(r.result.clone().expect("result")).expect("a Burned");
        assert_eq!(out.sum, expected, "the same checksum on every runner");
        last = last.max(out.end_ns);
    }
    let elapsed = Duration::from_nanos(last.saturating_sub(started));
    CpuRun {
        jobs_per_s: jobs as f64 / elapsed.as_secs_f64(),
        p50: percentile(&lateness, 0.50),
        p99: percentile(&lateness, 0.99),
        max: lateness[lateness.len() - 1],
    }
}

async fn cpu(runs: usize) {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (rounds, took) = calibrate(Duration::from_millis(20));
    let expected = mix_rounds(rounds);
    println!(
        "\ncpu: a job of {rounds} mixing rounds ({:.1} ms here, best of 5), 30 jobs per slot, concurrency 1..={cores}",
        ms(took)
    );
    println!("     median of {runs} runs (min–max); sleep(1 ms) on the serving runtime, in ms, while the jobs run");
    let (mut idle50, mut idle99, mut idle_max) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let done = Arc::new(AtomicBool::new(false));
        let probing = probe(Arc::clone(&done));
        tokio::time::sleep(Duration::from_millis(500)).await;
        done.store(true, Ordering::Relaxed);
        let lateness = probing.await.expect("probe");
        idle50.push(ms(percentile(&lateness, 0.50)));
        idle99.push(ms(percentile(&lateness, 0.99)));
        idle_max.push(ms(lateness[lateness.len() - 1]));
    }
    println!(
        "no load: sleep(1 ms) p50 {} ms, p99 {} ms, max {} ms",
        show(&idle50, 2),
        show(&idle99, 2),
        show(&idle_max, 2)
    );
    println!(
        "{:<12} {:>4} {:>22} {:>20} {:>24} {:>24}",
        "mode", "conc", "jobs/s", "sleep(1 ms) p50", "sleep(1 ms) p99", "sleep(1 ms) max"
    );
    for mode in MODES {
        for concurrency in 1..=cores {
            let mut samples = Vec::new();
            for _ in 0..runs {
                samples.push(cpu_once(mode, concurrency, rounds, expected).await);
            }
            let rate: Vec<f64> = samples.iter().map(|s| s.jobs_per_s).collect();
            let p50: Vec<f64> = samples.iter().map(|s| ms(s.p50)).collect();
            let p99: Vec<f64> = samples.iter().map(|s| ms(s.p99)).collect();
            let max: Vec<f64> = samples.iter().map(|s| ms(s.max)).collect();
            println!(
                "{:<12} {concurrency:>4} {:>22} {:>20} {:>24} {:>24}",
                mode_name(mode),
                show(&rate, 1),
                show(&p50, 2),
                show(&p99, 2),
                show(&max, 1)
            );
        }
    }
}

// ---- main ----------------------------------------------------------------------------------

fn main() {
    // Like any app's `main`: a multi-thread runtime with one worker per core.
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    if std::env::var_os(CHILD_ENV).is_some() {
        // A child of the subprocess runner: `build` serves the one attempt and exits.
        tokio.block_on(async {
            if let Err(e) = Runtime::builder().ignore_env().provider(QueueProvider::Memory).build().await {
                eprintln!("child: {e}");
                std::process::exit(1);
            }
        });
        unreachable!("a subprocess child exits in RuntimeBuilder::build");
    }
    if let Ok(spec) = std::env::var(MEMORY_ENV) {
        let mut parts = spec.splitn(3, ',');
        let mode = parts.next().expect("mode").parse().expect("a runner mode");
        let n = parts.next().expect("N").parse().expect("a number");
        let dir = PathBuf::from(parts.next().expect("dir"));
        tokio.block_on(memory_probe(mode, n, dir));
        return;
    }
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let runs: usize = std::env::var("RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    let wanted = |part: &str| filter.is_empty() || filter.iter().any(|f| f == part);
    let t = Instant::now();
    println!("load average at the start: {}", load_average());
    if wanted("memory") {
        memory(runs);
    }
    if wanted("overhead") {
        tokio.block_on(overhead(runs));
    }
    if wanted("cpu") {
        tokio.block_on(cpu(runs));
    }
    println!("\n(took {:.0} s; load average at the end: {})", t.elapsed().as_secs_f64(), load_average());
}
