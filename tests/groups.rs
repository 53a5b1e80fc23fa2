//! Worker groups: each topic in a group gets its own slots and runner, so a slow topic never
//! starves the others; `distributed` groups run only in worker processes, never in `serve`.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use netscript::config::{GroupConfig, ScalingMode};
use netscript::prelude::*;
use netscript::{
    CancellationToken, ExecutionId, ExecutionStatus, QueueProvider, RunnerMode, WorkerPool, WorkerSelection,
};

static RELEASE: AtomicBool = AtomicBool::new(false);

/// Holds its slot until the test releases it.
#[job(id = "slow-report", topic = "reports", retries = 0, timeout = "30s")]
async fn slow_report() -> JobResult<()> {
    while !RELEASE.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Quick.
#[job(id = "quick", retries = 0)]
async fn quick(n: u32) -> JobResult<u32> {
    Ok(n)
}

/// Quick, in a distributed group.
#[job(id = "charge", topic = "payments", retries = 0)]
async fn charge(n: u32) -> JobResult<u32> {
    Ok(n)
}

fn groups() -> impl FnOnce(&mut netscript::WorkersConfig) {
    |c| {
        c.concurrency = 1;
        c.groups.insert("reports".into(), GroupConfig::with_concurrency(2));
        c.groups.insert(
            "payments".into(),
            GroupConfig::with_concurrency(3).mode(ScalingMode::Distributed).runner(RunnerMode::ThreadPool),
        );
    }
}

async fn runtime() -> Runtime {
    Runtime::builder().ignore_env().provider(QueueProvider::Memory).configure(groups()).build().await.unwrap()
}

fn pool(topics: &[&str], concurrency: usize, runner: RunnerMode) -> WorkerPool {
    WorkerPool { topics: topics.iter().map(|t| (*t).to_owned()).collect(), concurrency, runner }
}

#[tokio::test]
async fn each_group_gets_its_own_pool_and_serve_leaves_distributed_ones_out() {
    let rt = runtime().await;
    let payments = pool(&["payments"], 3, RunnerMode::ThreadPool);
    let reports = pool(&["reports"], 2, RunnerMode::InProcess);
    let rest = pool(&["default"], 1, RunnerMode::InProcess);
    assert_eq!(rt.worker_pools(&WorkerSelection::All), [payments.clone(), reports.clone(), rest.clone()]);
    assert_eq!(rt.worker_pools(&WorkerSelection::Serving), [reports, rest.clone()]);
    assert_eq!(rt.worker_pools(&WorkerSelection::Topics(vec!["payments".into()])), [payments]);
    assert_eq!(rt.worker_pools(&WorkerSelection::Topics(vec!["default".into()])), [rest]);

    // Without groups, one pool claims every topic.
    let plain = Runtime::builder().ignore_env().provider(QueueProvider::Memory).build().await.unwrap();
    assert_eq!(plain.worker_pools(&WorkerSelection::Serving), [pool(&[], 2, RunnerMode::InProcess)]);
}

async fn status(rt: &Runtime, id: ExecutionId) -> ExecutionStatus {
    rt.store().get(id).await.unwrap().unwrap().status
}

async fn until_final(rt: &Runtime, id: ExecutionId) -> ExecutionStatus {
    let record = rt.wait_for(id, Duration::from_secs(20)).await.unwrap().unwrap();
    assert!(record.status.is_final(), "{record:?}");
    record.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_group_does_not_starve_other_topics_and_distributed_groups_wait_for_their_worker() {
    let rt = runtime().await;
    let serve_stop = CancellationToken::new();
    let serving = tokio::spawn({
        let (rt, stop) = (rt.clone(), serve_stop.clone());
        async move { rt.run_workers_for(&WorkerSelection::Serving, stop).await }
    });

    // Three reports hold the group's two slots (and wait for the third); the default topic's
    // one slot is free all the while.
    let reports: Vec<ExecutionId> = {
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(rt.enqueue(slow_report::enqueue()).await.unwrap().execution_id);
        }
        ids
    };
    let charge_id = rt.enqueue(charge::enqueue(7)).await.unwrap().execution_id;
    for n in 0..10 {
        let id = rt.enqueue(quick::enqueue(n)).await.unwrap().execution_id;
        assert_eq!(until_final(&rt, id).await, ExecutionStatus::Succeeded);
    }
    let running = count_running(&rt, &reports).await;
    assert_eq!(running, 2, "the reports group runs two at a time");
    // `serve` does not run the distributed payments group.
    assert_eq!(status(&rt, charge_id).await, ExecutionStatus::Queued);

    // A worker process for the payments topic (`worker --topic payments`) runs it.
    let worker_stop = CancellationToken::new();
    let worker = tokio::spawn({
        let (rt, stop) = (rt.clone(), worker_stop.clone());
        async move { rt.run_workers_for(&WorkerSelection::Topics(vec!["payments".into()]), stop).await }
    });
    assert_eq!(until_final(&rt, charge_id).await, ExecutionStatus::Succeeded);

    RELEASE.store(true, Ordering::SeqCst);
    for id in reports {
        assert_eq!(until_final(&rt, id).await, ExecutionStatus::Succeeded);
    }
    serve_stop.cancel();
    worker_stop.cancel();
    serving.await.unwrap();
    worker.await.unwrap();
}

/// How many of `ids` are running now.
async fn count_running(rt: &Runtime, ids: &[ExecutionId]) -> usize {
    // The group's slots may still be starting their claims: give them a moment to show.
    for _ in 0..200 {
        let mut running = 0;
        for id in ids {
            if status(rt, *id).await == ExecutionStatus::Running {
                running += 1;
            }
        }
        if running >= 2 {
            return running;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    0
}
