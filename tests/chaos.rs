//! The broker connection cut mid-run: the workers reconnect with backoff, the results produced
//! meanwhile are not lost, and the run goes on to the end.
//!
//! ```text
//! cargo test --all-features --test chaos -- --nocapture           # every broker in this build
//! cargo test --all-features --test chaos -- --nocapture redis     # one of them
//! ```
//!
//! For each broker: enqueue a few thousand short jobs (1 to 5 ms each), run workers in this
//! process, cut the broker once a quarter of the jobs ran, and wait for the run to finish. Then every job
//! has exactly one execution record, succeeded, with its own result, and the queue is empty.
//! Each case prints how long the outage lasted (from the cut until the broker answered again,
//! and the longest pause between two job ends), how many jobs ran again (attempt > 1, and
//! executions beyond one per job) and how long the workers took to run jobs again once the
//! broker was back.
//!
//! - Redis: a server of the test's own (`redis-server` on a free port, append-only file synced
//!   at every write), SIGKILLed and started again on the same port and directory. The shared
//!   server keeps nothing on disk, so restarting it would lose the other tests' data.
//! - PostgreSQL: the runtime's connections (its own `application_name`) are ended with
//!   `pg_terminate_backend` three times during the run.
//! - RabbitMQ: the local broker's connections are closed (`rabbitmqctl close_all_connections`,
//!   a sharp cut while jobs run), then its application is stopped and started again
//!   (`stop_app`, `start_app`, `await_startup`): its durable queues and persistent messages
//!   survive. The companion KV is the embedded store (no Redis URL is configured). Other test binaries using RabbitMQ must not run at the same time (CI runs test
//!   binaries one after the other); within this binary the cases run one at a time.
//!
//! `CHAOS_FULL_SPEED=1` keeps the jobs at 1 to 5 ms through the cut (no slowdown) and runs
//! more of them on RabbitMQ (16,000), so that the workers claim and settle at full pace while
//! the connections drop: this is what once lost a few messages whose deliveries of the dropped
//! connection stayed in the claim buffer and shadowed their redelivered copies (see the module
//! docs of `queue/amqp.rs`). The run may end before the broker is back on a fast machine; the
//! case then says so.
//!
//! ```text
//! CHAOS_FULL_SPEED=1 cargo test --all-features --test chaos -- --nocapture amqp
//! ```
//!
//! The servers: see `tests/support`.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod support;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use netscript::prelude::*;
use netscript::store::ExecutionFilter;
use netscript::{ExecutionStatus, QueueProvider};

/// Jobs per case at most.
const MAX_JOBS: u32 = 20_000;

/// Executions of each job in this process (index: the job's payload).
static RUNS: LazyLock<Vec<AtomicU32>> = LazyLock::new(|| (0..MAX_JOBS).map(|_| AtomicU32::new(0)).collect());
/// Executions of every job in this process.
static EXECUTIONS: AtomicU64 = AtomicU64::new(0);
/// Set while a cut is under way: jobs take 40 ms instead of 1 to 5, so that the run is still
/// going when the broker is back however long the cut takes (`rabbitmqctl` alone takes
/// seconds), and results keep being produced while the broker is away.
/// `CHAOS_FULL_SPEED=1` turns it off (see the module docs).
static SLOW: AtomicBool = AtomicBool::new(false);
/// When each execution ended, in order.
static ENDED: Mutex<Vec<Instant>> = Mutex::new(Vec::new());
/// One case at a time: the cases cut shared servers and count executions in the statics.
static SERIAL: Mutex<()> = Mutex::new(());

/// A short job: 1 to 5 ms (40 ms during a cut).
#[job(id = "chaos-step", retries = 0, timeout = "30s")]
async fn chaos_step(n: u32) -> JobResult<u32> {
    let ms = if SLOW.load(Ordering::SeqCst) && !full_speed() { 40 } else { 1 + u64::from(n % 5) };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    if let Some(runs) = RUNS.get(n as usize) {
        runs.fetch_add(1, Ordering::SeqCst);
    }
    EXECUTIONS.fetch_add(1, Ordering::SeqCst);
    ENDED.lock().unwrap_or_else(|e| e.into_inner()).push(Instant::now());
    Ok(n)
}

/// `CHAOS_FULL_SPEED=1` keeps jobs at 1 to 5 ms through the cut (no `SLOW`).
fn full_speed() -> bool {
    std::env::var_os("CHAOS_FULL_SPEED").is_some_and(|v| v == "1")
}

/// What a cut did, for the report.
struct Cut {
    /// When the cut began.
    began: Instant,
    /// When the broker answered again.
    back_at: Instant,
    /// What was cut.
    what: String,
}

/// Runs one case on a Tokio runtime of its own, once the previous case has finished.
fn serial(case: impl std::future::Future<Output = ()>) {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // RUST_LOG=netscript_runtime=info shows the outage as the workers saw it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    for runs in RUNS.iter() {
        runs.store(0, Ordering::SeqCst);
    }
    EXECUTIONS.store(0, Ordering::SeqCst);
    SLOW.store(false, Ordering::SeqCst);
    ENDED.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    tokio.block_on(case);
}

/// A runtime on `provider` in `namespace`, with short leases so that a claim whose answer was
/// lost in the cut comes back soon.
async fn runtime(
    provider: QueueProvider,
    namespace: &str,
    dir: &std::path::Path,
    lease: Duration,
    configure: impl FnOnce(&mut netscript::WorkersConfig) + Send + 'static,
) -> Runtime {
    let namespace = namespace.to_owned();
    Runtime::builder()
        .ignore_env()
        .provider(provider)
        .data_dir(dir)
        .configure(move |c| {
            support::configure(c, provider, &namespace);
            c.concurrency = 16;
            c.lease = lease;
            c.poll_interval = Duration::from_millis(50);
            configure(c);
        })
        .build()
        .await
        .unwrap_or_else(|e| panic!("{} runtime: {e}", provider.as_str()))
}

/// Enqueues `jobs` jobs, runs the workers, calls `cut` once a quarter of them ran, waits for
/// every job, then checks the records and the queue and prints the report.
async fn run_with_cut<F, Fut>(provider: QueueProvider, rt: &Runtime, jobs: u32, cut: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Cut>,
{
    assert!(jobs <= MAX_JOBS);
    let name = provider.as_str();
    let ids: Vec<u32> = (0..jobs).collect();
    for chunk in ids.chunks(500) {
        rt.enqueue_many(chunk.iter().map(|&n| chaos_step::enqueue(n)).collect()).await.expect("enqueue");
    }
    let started = Instant::now();
    let workers = rt.spawn_workers();

    let deadline = Instant::now() + Duration::from_secs(60);
    while EXECUTIONS.load(Ordering::SeqCst) < u64::from(jobs / 4) {
        assert!(Instant::now() < deadline, "{name}: the workers made no progress before the cut");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let done_at_cut = EXECUTIONS.load(Ordering::SeqCst);
    SLOW.store(true, Ordering::SeqCst);
    let cut = cut().await;
    SLOW.store(false, Ordering::SeqCst);
    let left_at_back = u64::from(jobs).saturating_sub(EXECUTIONS.load(Ordering::SeqCst));
    assert!(left_at_back > 0, "{name}: every job ran before the broker came back: the cut landed after the run");

    // Every job ran; then every record says so.
    let deadline = Instant::now() + Duration::from_secs(180);
    let runs = &RUNS[..jobs as usize];
    while runs.iter().any(|r| r.load(Ordering::SeqCst) == 0) {
        let left = runs.iter().filter(|r| r.load(Ordering::SeqCst) == 0).count();
        assert!(Instant::now() < deadline, "{name}: {left} of {jobs} jobs never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let filter = ExecutionFilter {
        limit: Some(jobs as usize * 2),
        status: Some(ExecutionStatus::Succeeded),
        ..Default::default()
    };
    loop {
        let done = rt.store().list(&filter).await.expect("list").len();
        if done == jobs as usize {
            break;
        }
        assert!(Instant::now() < deadline, "{name}: only {done} of {jobs} recorded as succeeded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    workers.stop().await;

    let all = rt.store().list(&ExecutionFilter { limit: Some(jobs as usize * 2), ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), jobs as usize, "{name}: one record per job");
    let mut results: Vec<u64> = all
        .iter()
        .map(|r| {
            assert_eq!(r.status, ExecutionStatus::Succeeded, "{name}: {r:?}");
            assert_eq!(r.result, Some(r.payload.clone()), "{name}: each job's own result: {r:?}");
            r.result.as_ref().and_then(serde_json::Value::as_u64).expect("result")
        })
        .collect();
    results.sort_unstable();
    assert_eq!(results, (0..u64::from(jobs)).collect::<Vec<_>>(), "{name}: every job exactly once");
    let reruns = all.iter().filter(|r| r.attempt > 1).count();
    let extra_runs = EXECUTIONS.load(Ordering::SeqCst) - u64::from(jobs);

    // Lease entries a backend keeps beside the broker may outlive their holder by their TTL.
    let settle_deadline = Instant::now() + Duration::from_secs(40);
    let stats = loop {
        let stats = rt.queue().stats().await.expect("stats");
        if (stats.ready, stats.leased, stats.delayed, stats.dead) == (0, 0, 0, 0) || Instant::now() > settle_deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!((stats.ready, stats.leased, stats.delayed, stats.dead), (0, 0, 0, 0), "{name}: {stats:?}");

    // The workers' view of the outage: when jobs ended again after the broker's return, and
    // the longest pause between two job ends from the cut until then.
    let ended = ENDED.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let resumed_at = ended.iter().copied().find(|t| *t >= cut.back_at).unwrap_or(cut.back_at);
    let around_cut: Vec<Instant> = ended.into_iter().filter(|t| *t >= cut.began && *t <= resumed_at).collect();
    let idle = around_cut.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    let resumed = (resumed_at - cut.back_at).as_secs_f64();
    println!(
        "{name:<9} {jobs} jobs in {:.1} s; {} after {done_at_cut} jobs ran ({left_at_back} left when it was back); \
         broker away {:.2} s (cut to back); workers idle at most {:.3} s; first job ended {resumed:.3} s after the \
         broker was back; {reruns} job(s) with attempt > 1, {extra_runs} execution(s) beyond one per job; stale \
         settlements refused: {}",
        elapsed.as_secs_f64(),
        cut.what,
        (cut.back_at - cut.began).as_secs_f64(),
        idle.as_secs_f64(),
        stats.stale_settlements,
    );
}

// ---------------------------------------------------------------------------------------
// Redis: a server of the test's own, killed and started again
// ---------------------------------------------------------------------------------------

#[cfg(feature = "redis")]
#[test]
fn redis_killed_and_restarted_mid_run() {
    serial(async {
        let mut redis = support::own_redis::OwnRedis::start();
        let url = redis.url();
        let dir = tempfile::tempdir().unwrap();
        let namespace = support::unique_namespace("chaos");
        let rt = runtime(QueueProvider::Redis, &namespace, dir.path(), Duration::from_secs(3), move |c| {
            c.brokers.redis = Some(netscript::config::BrokerUrl::new(url));
        })
        .await;
        let redis = &mut redis;
        run_with_cut(QueueProvider::Redis, &rt, 3_000, || async move {
            let cut_at = Instant::now();
            tokio::task::block_in_place(|| {
                redis.kill();
                // Down for a moment, as a restart by a supervisor would be.
                std::thread::sleep(Duration::from_millis(300));
                redis.spawn();
            });
            Cut { began: cut_at, back_at: Instant::now(), what: "redis-server SIGKILLed and restarted".into() }
        })
        .await;
        drop(rt);
    });
}

// ---------------------------------------------------------------------------------------
// PostgreSQL: the runtime's connections terminated
// ---------------------------------------------------------------------------------------

#[cfg(feature = "postgres")]
#[test]
fn postgres_connections_terminated_mid_run() {
    serial(async {
        let dir = tempfile::tempdir().unwrap();
        let namespace = support::unique_namespace("chaos");
        let _cleanup = support::DropNamespace(QueueProvider::Postgres, namespace.clone());
        let base = support::broker_url(QueueProvider::Postgres).unwrap();
        let separator = if base.contains('?') { '&' } else { '?' };
        // The runtime's connections carry the namespace as their name, so only they are cut.
        let url = format!("{base}{separator}application_name={namespace}");
        let rt = runtime(QueueProvider::Postgres, &namespace, dir.path(), Duration::from_secs(3), move |c| {
            c.brokers.postgres = Some(netscript::config::BrokerUrl::new(url));
        })
        .await;
        let (admin, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls).await.expect("postgres");
        tokio::spawn(conn);
        let app = namespace.clone();
        run_with_cut(QueueProvider::Postgres, &rt, 3_000, || async move {
            let cut_at = Instant::now();
            let mut ended = Vec::new();
            for round in 0..3 {
                if round > 0 {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                let rows = admin
                    .query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE application_name = $1 AND pid <> pg_backend_pid()",
                        &[&app],
                    )
                    .await
                    .expect("pg_terminate_backend");
                ended.push(rows.len());
            }
            assert!(ended[0] > 0, "the runtime's connections are named {app}: none was found");
            Cut {
                began: cut_at,
                back_at: Instant::now(),
                what: format!("pg_terminate_backend on its connections 3 times ({ended:?} ended)"),
            }
        })
        .await;
        drop(rt);
    });
}

// ---------------------------------------------------------------------------------------
// RabbitMQ: the broker application restarted
// ---------------------------------------------------------------------------------------

#[cfg(feature = "amqp")]
fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl").args(args).output().expect("rabbitmqctl (is it installed?)");
    assert!(
        out.status.success(),
        "rabbitmqctl {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the broker application again if a failed case left it stopped.
#[cfg(feature = "amqp")]
struct StartRabbit;

#[cfg(feature = "amqp")]
impl Drop for StartRabbit {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl").arg("start_app").output();
    }
}

/// Deletes the broker queues of a namespace (the test's topic queues) when dropped.
#[cfg(feature = "amqp")]
struct DeleteQueues(String);

#[cfg(feature = "amqp")]
impl Drop for DeleteQueues {
    fn drop(&mut self) {
        let Ok(out) = std::process::Command::new("rabbitmqctl")
            .args(["list_queues", "-q", "--no-table-headers", "name"])
            .output()
        else {
            return;
        };
        let marker = format!(".{}.", self.0);
        for name in String::from_utf8_lossy(&out.stdout).lines().map(str::trim).filter(|n| n.contains(&marker)) {
            let _ = std::process::Command::new("rabbitmqctl").args(["delete_queue", name]).output();
        }
    }
}

#[cfg(feature = "amqp")]
#[test]
fn amqp_broker_restarted_mid_run() {
    serial(async {
        let dir = tempfile::tempdir().unwrap();
        let namespace = support::unique_namespace("chaos");
        // A lease longer than the restart: results kept through it are still fenced.
        let rt = runtime(QueueProvider::Amqp, &namespace, dir.path(), Duration::from_secs(20), |_| {}).await;
        // Dropped in reverse order: the broker runs again before its queues are deleted.
        let _queues = DeleteQueues(namespace.clone());
        let _restart = StartRabbit;
        let jobs = if full_speed() { 16_000 } else { 6_000 };
        run_with_cut(QueueProvider::Amqp, &rt, jobs, || async move {
            let cut_at = Instant::now();
            let back_at = tokio::task::block_in_place(|| {
                // A sharp cut first (stop_app drains a little before it closes connections),
                // then the restart.
                rabbitmqctl(&["close_all_connections", "chaos test"]);
                rabbitmqctl(&["stop_app"]);
                rabbitmqctl(&["start_app"]);
                let back_at = Instant::now();
                rabbitmqctl(&["await_startup"]);
                back_at
            });
            Cut {
                began: cut_at,
                back_at,
                what: "connections closed, then RabbitMQ restarted (close_all_connections, stop_app, start_app)".into(),
            }
        })
        .await;
        drop(rt);
    });
}
