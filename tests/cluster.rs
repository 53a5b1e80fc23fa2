//! Four worker processes on one broker, one of them SIGKILLed mid-run: every job succeeds and
//! is recorded as succeeded exactly once.
//!
//! ```text
//! cargo test --test cluster                                  # every backend in this build
//! cargo test --all-features --test cluster -- postgres redis # some of them
//! ```
//!
//! For each backend this binary enqueues `JOBS` jobs, re-executes itself four times as worker
//! processes (an app binary is its own worker), kills one with SIGKILL once a quarter of the
//! jobs are done, and waits for the rest. It then checks the execution records: one per job,
//! each succeeded with its own result; jobs that ran twice did so only because of the kill
//! (they were running in the killed process), and are counted and printed. It also reports how
//! long the killed worker's leased jobs took to come back. Each run uses a namespace of its
//! own (a PostgreSQL schema, a Redis key prefix, RabbitMQ queue names) and removes it after.
//!
//! The servers: see `tests/support`.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::process::Child;
use std::time::{Duration, Instant};

mod support;

use netscript::prelude::*;
use netscript::store::ExecutionFilter;
use netscript::{ExecutionStatus, QueueProvider};
use support::workers::WorkerSetup;

const JOBS: u32 = 10_000;
const WORKERS: usize = 4;

/// A short job, so that a kill lands while some are running.
#[job(id = "cluster-step", retries = 0, timeout = "10s")]
async fn cluster_step(n: u32) -> JobResult<u32> {
    tokio::time::sleep(Duration::from_millis(1)).await;
    Ok(n)
}

async fn records(rt: &Runtime) -> Vec<netscript::ExecutionRecord> {
    let filter = ExecutionFilter { limit: Some(JOBS as usize * 2), ..Default::default() };
    rt.store().list(&filter).await.expect("list")
}

async fn succeeded(rt: &Runtime) -> usize {
    let filter = ExecutionFilter {
        limit: Some(JOBS as usize * 2),
        status: Some(ExecutionStatus::Succeeded),
        ..Default::default()
    };
    rt.store().list(&filter).await.expect("list").len()
}

async fn run(provider: QueueProvider) {
    let dir = tempfile::tempdir().expect("tempdir");
    let namespace = support::unique_namespace("cluster");
    // Heartbeats every 400 ms: a dead worker's jobs are back within about 1.2 s.
    let setup = WorkerSetup {
        provider,
        namespace,
        dir: dir.path().to_owned(),
        concurrency: 4,
        lease: Duration::from_millis(1200),
    };
    let rt = setup.runtime().await;
    let _cleanup = support::DropNamespace(provider, setup.namespace.clone());
    let started = Instant::now();
    let ids: Vec<u32> = (0..JOBS).collect();
    for chunk in ids.chunks(1000) {
        rt.enqueue_many(chunk.iter().map(|&n| cluster_step::enqueue(n)).collect()).await.expect("enqueue");
    }
    let mut workers: Vec<Child> = (0..WORKERS).map(|_| setup.spawn()).collect();

    let deadline = Instant::now() + Duration::from_secs(120);
    while succeeded(&rt).await < JOBS as usize / 4 {
        assert!(Instant::now() < deadline, "{}: the workers made no progress", provider.as_str());
        // Each look lists up to JOBS records: look seldom, so the looking does not slow the run.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut victim = workers.remove(0);
    victim.kill().expect("SIGKILL");
    victim.wait().expect("reap");
    let killed_at = netscript::time::Timestamp::now();
    let done_at_kill = succeeded(&rt).await;

    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let done = succeeded(&rt).await;
        if done == JOBS as usize {
            break;
        }
        assert!(Instant::now() < deadline, "{}: only {done} of {JOBS} succeeded", provider.as_str());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let elapsed = started.elapsed();
    for mut w in workers {
        w.kill().expect("SIGKILL");
        w.wait().expect("reap");
    }

    let all = records(&rt).await;
    assert_eq!(all.len(), JOBS as usize, "one record per job");
    let mut results: Vec<u64> = all
        .iter()
        .map(|r| {
            assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
            assert_eq!(r.result, Some(r.payload.clone()), "each job's own result: {r:?}");
            r.result.as_ref().and_then(serde_json::Value::as_u64).expect("result")
        })
        .collect();
    results.sort_unstable();
    assert_eq!(results, (0..u64::from(JOBS)).collect::<Vec<_>>(), "every job exactly once");
    // A job that ran again was claimed again after the kill: its first attempt's lease lapsed
    // (or, on RabbitMQ, its connection dropped). Only the killed process held such leases.
    let reruns: Vec<_> = all.iter().filter(|r| r.attempt > 1).collect();
    let recovery = reruns.iter().filter_map(|r| r.started_at).map(|t| t.since(killed_at)).max();
    // Lease entries a backend keeps beside the broker (RabbitMQ's companion KV) may outlive a
    // killed holder until their TTL (lease + 5 s); nothing may stay longer than that.
    let settle_deadline = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let stats = rt.queue().stats().await.expect("stats");
        if (stats.ready, stats.leased, stats.delayed, stats.dead) == (0, 0, 0, 0) || Instant::now() > settle_deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!((stats.ready, stats.leased, stats.delayed, stats.dead), (0, 0, 0, 0), "{stats:?}");
    println!(
        "{:<9} {WORKERS} workers, {JOBS} jobs in {:.1} s; one killed after {done_at_kill} were done; {} job(s) \
         ran twice because of the kill{}; stale settlements refused: {}",
        provider.as_str(),
        elapsed.as_secs_f64(),
        reruns.len(),
        recovery
            .map_or_else(String::new, |d| format!(" (all claimed again within {:.2} s of the kill)", d.as_secs_f64())),
        stats.stale_settlements,
    );
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    support::workers::run_if_worker(&tokio);
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let mut passed = 0;
    // Memory is one process's own: it has no cluster.
    for provider in support::providers().into_iter().filter(|p| *p != QueueProvider::Memory) {
        if !filter.is_empty() && !filter.iter().any(|f| f == provider.as_str()) {
            continue;
        }
        tokio.block_on(run(provider));
        println!("test cluster::{} ... ok", provider.as_str());
        passed += 1;
    }
    println!("{passed} passed, 0 failed");
}
