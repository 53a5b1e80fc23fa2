//! No-op job throughput and pickup latency, per backend, with default settings.
//!
//! ```text
//! cargo bench --bench throughput                 # memory and embedded
//! cargo bench --bench throughput -- embedded     # one backend
//! JOBS=50000 cargo bench --bench throughput      # another backlog size
//! cargo bench --all-features --bench throughput -- postgres redis amqp   # the brokers
//! NETSCRIPT_TEST_POSTGRES_URL=postgres://me@db/app cargo bench --features postgres --bench throughput -- postgres
//! TRACING=app cargo bench --bench throughput     # with the app's tracing subscriber installed
//! ```
//!
//! `TRACING=app` installs what an app binary runs with (`netscript::cli::init_tracing`: the
//! log to stderr at `info`, OpenTelemetry only if `OTEL_EXPORTER_OTLP_ENDPOINT` is set), so
//! every enqueue and attempt span is recorded; the default (`off`) installs no subscriber.
//! The difference is the cost of tracing with no exporter.
//!
//! Brokers are reached at `NETSCRIPT_TEST_POSTGRES_URL`, `NETSCRIPT_TEST_REDIS_URL` and
//! `NETSCRIPT_TEST_AMQP_URL` (default: the local services), each run in a namespace of its own
//! (a PostgreSQL schema, a Redis key prefix) that is removed afterwards.
//!
//! Throughput: a backlog of JOBS no-op jobs is enqueued (in batches of 1,000), then the
//! workers start with the default configuration (concurrency 2) and the clock runs until
//! the last job ran and the workers drained: every execution recorded as succeeded and
//! every message acked (both are checked afterwards). Pickup latency: with
//! idle workers, one job at a time is enqueued; the time from the start of the enqueue call
//! to the start of the job's body, over 2,000 jobs.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

mod common;
use common::cpu_time;

#[path = "../tests/support/mod.rs"]
mod support;

use netscript::prelude::*;
use netscript::{QueueProvider, store::ExecutionFilter};

static DONE: AtomicUsize = AtomicUsize::new(0);

/// Does nothing but count itself, so the benchmark knows when the backlog is through
/// without querying the store while it runs.
#[job(id = "noop", retries = 0)]
async fn noop() -> JobResult<()> {
    DONE.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

static STARTED: Mutex<Option<std_mpsc::SyncSender<Instant>>> = Mutex::new(None);

/// Tells the benchmark when it started.
#[job(id = "ping", retries = 0)]
async fn ping() -> JobResult<()> {
    if let Some(tx) = STARTED.lock().ok().and_then(|g| g.clone()) {
        let _ = tx.try_send(Instant::now());
    }
    Ok(())
}

/// A runtime on `provider` with the default settings, in a namespace of its own (removed when
/// the guard drops: drop the runtime first, or its RabbitMQ consumer declares its queue again).
async fn runtime(provider: QueueProvider, dir: &std::path::Path) -> (Runtime, support::DropNamespace) {
    let namespace = support::unique_namespace("bench");
    let guard = support::DropNamespace(provider, namespace.clone());
    let rt = Runtime::builder()
        .ignore_env()
        .data_dir(dir)
        .configure(|c| support::configure(c, provider, &namespace))
        .build()
        .await
        .unwrap_or_else(|e| panic!("{} runtime: {e}", provider.as_str()));
    (rt, guard)
}

async fn throughput(provider: QueueProvider, jobs: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, namespace) = runtime(provider, dir.path()).await;
    DONE.store(0, Ordering::Relaxed);
    let t = Instant::now();
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(1000) {
        rt.enqueue_many(chunk.iter().map(|_| noop::enqueue()).collect()).await.expect("enqueue");
    }
    let enqueue = t.elapsed();
    let workers = rt.spawn_workers();
    let t = Instant::now();
    let cpu0 = cpu_time();
    while DONE.load(Ordering::Relaxed) < jobs {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Stopping drains: the clock runs until every record is written and every message acked.
    workers.stop().await;
    let run = t.elapsed();
    let cpu = cpu_time().zip(cpu0).map(|(b, a)| b.saturating_sub(a));
    let done = count_succeeded(&rt).await;
    assert_eq!(done, jobs, "every job recorded as succeeded");
    let s = rt.queue().stats().await.expect("stats");
    assert_eq!(s.ready + s.leased + s.delayed + s.dead, 0, "every message acked: {s:?}");
    let cpu_per_job =
        cpu.map_or_else(|| "n/a".to_owned(), |c| format!("{:.2} µs", c.as_secs_f64() * 1e6 / jobs as f64));
    println!(
        "{:<9} throughput: {jobs} no-op jobs in {:>7.1} ms = {:>9.0} jobs/s   (enqueue: {:>9.0} jobs/s; CPU per job while running: {cpu_per_job})",
        provider.as_str(),
        run.as_secs_f64() * 1e3,
        jobs as f64 / run.as_secs_f64(),
        jobs as f64 / enqueue.as_secs_f64(),
    );
    teardown(rt, namespace).await;
}

/// Closes the runtime, then removes its namespace.
async fn teardown(rt: Runtime, namespace: support::DropNamespace) {
    drop(rt);
    // A queue's connection closes in a task of its own.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(namespace);
}

/// The succeeded records, read 10,000 at a time (a backlog of a million in one read takes
/// longer than a broker's response timeout).
async fn count_succeeded(rt: &netscript::Runtime) -> usize {
    let mut filter = ExecutionFilter {
        limit: Some(10_000),
        status: Some(netscript::ExecutionStatus::Succeeded),
        ..Default::default()
    };
    let mut done = 0;
    loop {
        let page = rt.store().list(&filter).await.expect("list");
        done += page.len();
        match page.last() {
            Some(last) => filter.before = Some(last.id),
            None => return done,
        }
    }
}

async fn latency(provider: QueueProvider, samples: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, namespace) = runtime(provider, dir.path()).await;
    let (tx, rx) = std_mpsc::sync_channel(1);
    *STARTED.lock().expect("lock") = Some(tx);
    let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
    let workers = rt.spawn_workers();
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples + 100 {
        // Let the worker go idle so each sample measures a wake-up, not a busy loop.
        tokio::time::sleep(Duration::from_micros(300)).await;
        let t0 = Instant::now();
        rt.enqueue(ping::enqueue()).await.expect("enqueue");
        let rx = std::sync::Arc::clone(&rx);
        let started =
            tokio::task::spawn_blocking(move || rx.lock().expect("lock").recv_timeout(Duration::from_secs(10)))
                .await
                .expect("join")
                .expect("job started");
        if i >= 100 {
            lat.push(started.duration_since(t0));
        }
    }
    workers.stop().await;
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{:<9} pickup latency over {samples}: p50 {:>7.3} ms   p99 {:>7.3} ms   max {:>7.3} ms",
        provider.as_str(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat[lat.len() - 1].as_secs_f64() * 1e3,
    );
    teardown(rt, namespace).await;
}

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let jobs: usize = std::env::var("JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    match std::env::var("TRACING").as_deref() {
        Ok("app") => {
            netscript::cli::init_tracing();
            println!("tracing: the app's subscriber (netscript::cli::init_tracing)");
        }
        Ok("off") | Err(_) => println!("tracing: no subscriber"),
        Ok(other) => panic!("TRACING must be `off` or `app`, not `{other}`"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    for provider in support::providers() {
        // The brokers run when asked for by name; by default, the two that need no server.
        let named = filter.iter().any(|f| f == provider.as_str());
        let default = filter.is_empty() && matches!(provider, QueueProvider::Memory | QueueProvider::Embedded);
        if !named && !default {
            continue;
        }
        rt.block_on(async {
            throughput(provider, jobs).await;
            latency(provider, 2000).await;
        });
    }
}
