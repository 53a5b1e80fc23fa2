//! The HTTP API under load, on the embedded store: trigger requests/s and latency, server-sent
//! events fanned out to 1,000 subscribers, and the workers' throughput with 1,000 idle
//! subscribers.
//!
//! ```text
//! cargo bench --bench api_load                  # all three parts, about 2 minutes
//! cargo bench --bench api_load -- triggers      # one part: triggers, fanout or idle
//! GENERATOR=builtin cargo bench --bench api_load -- triggers   # skip oha even when installed
//! RUNS=5 CONNS=64 SECS=10 cargo bench --bench api_load -- triggers
//! ```
//!
//! - **triggers**: the API served with workers (concurrency 2) and a no-op job; a load
//!   generator keeps CONNS keep-alive connections (default 16, 64 and 256) busy with
//!   `POST /api/v1/workers/jobs/noop/trigger` for SECS seconds (default 5). The generator is
//!   `oha` (a separate process, its JSON summary parsed; requests in flight at the deadline
//!   are waited for) when it is on PATH, otherwise the one built in here: one tokio task per
//!   connection, a request written only after the previous response was read whole (no
//!   pipelining), each latency from the write to the last body byte. Every response must be 202; any other status or a connection error fails the
//!   bench. Afterwards the clock keeps running until every accepted trigger's job ran.
//! - **fanout**: SUBSCRIBERS (default 1,000) connections on
//!   `GET /api/v1/workers/subscribe?job=fan`, then FANOUT_JOBS jobs (default 1,000) enqueued
//!   with the typed handle at FANOUT_RATE per second (default 200) while the workers run.
//!   Latency: from the start of a job's `enqueue` call until a subscriber has read the
//!   job's `succeeded` event; per job, the last subscriber's. Subscribers that miss an event
//!   or get `lagged` are counted.
//! - **idle**: a backlog of IDLE_JOBS no-op jobs (default 50,000) enqueued, then
//!   SUBSCRIBERS connections on `?job=nothing` (or none), then the workers start; the clock
//!   runs until the last job ran and the workers drained (as `benches/throughput.rs`).
//!
//! Each figure is run RUNS times (default 3) on a fresh store; the load average
//! (`/proc/loadavg`) is printed at the start of each part and each run.

#![allow(clippy::unwrap_used)] // benches: a failed unwrap is a failed run

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::cpu_time;

use netscript::prelude::*;
use netscript::worker::WorkerReport;
use netscript::{CancellationToken, ExecutionId, QueueProvider};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

static DONE: AtomicUsize = AtomicUsize::new(0);

/// The trigger body.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Ping {
    n: u64,
}

/// Does nothing but count itself.
#[job(id = "noop", retries = 0)]
async fn noop(_ping: Ping) -> JobResult<()> {
    DONE.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// The job whose events the fan-out subscribers follow.
#[job(id = "fan", retries = 0)]
async fn fan() -> JobResult<()> {
    Ok(())
}

const BODY: &str = r#"{"n":1}"#;
const TRIGGER_PATH: &str = "/api/v1/workers/jobs/noop/trigger";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The 1-minute load average.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "n/a".to_owned())
}

/// The soft limit on open files, from /proc/self/limits.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// "median (min–max)" of the runs.
fn summary(values: &[f64], decimals: usize) -> String {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let median = v[v.len() / 2];
    format!("{median:.decimals$} ({:.decimals$}–{:.decimals$})", v[0], v[v.len() - 1])
}

/// The API served on a loopback port over a fresh embedded store.
struct Server {
    rt: Runtime,
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<WorkerReport>,
    _dir: tempfile::TempDir,
}

async fn serve(workers: bool) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::builder()
        .ignore_env()
        .provider(QueueProvider::Embedded)
        .data_dir(dir.path())
        .build()
        .await
        .expect("embedded runtime");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn({
        let rt = rt.clone();
        async move {
            rt.serve_on(listener, workers, async move {
                let _ = stopped.await;
            })
            .await
        }
    });
    Server { rt, addr, stop, task, _dir: dir }
}

impl Server {
    async fn shut_down(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(60), self.task).await.expect("server stops").expect("server task");
    }
}

// ---------------------------------------------------------------------------------------
// Triggers

/// One load run's result, from either generator.
struct Load {
    generator: &'static str,
    requests: u64,
    /// Responses with status 202.
    accepted: u64,
    /// Responses with any other status.
    other_status: u64,
    /// Connection or protocol errors.
    errors: u64,
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns its status.
async fn read_response(r: &mut BufReader<TcpStream>, line: &mut String, body: &mut Vec<u8>) -> std::io::Result<u16> {
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    line.clear();
    if r.read_line(line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status: u16 = line.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(|| invalid("status line"))?;
    let mut length = 0usize;
    loop {
        line.clear();
        if r.read_line(line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().map_err(|_| invalid("content-length"))?;
            }
        }
    }
    body.resize(length, 0);
    r.read_exact(body).await?;
    Ok(status)
}

#[derive(Default)]
struct ConnectionResult {
    latencies: Vec<Duration>,
    accepted: u64,
    other_status: u64,
    errors: u64,
}

async fn trigger_connection(stream: TcpStream, deadline: Instant) -> ConnectionResult {
    let request = format!(
        "POST {TRIGGER_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let mut out = ConnectionResult::default();
    let mut stream = BufReader::new(stream);
    let (mut line, mut body) = (String::new(), Vec::new());
    while Instant::now() < deadline {
        let t = Instant::now();
        if stream.get_mut().write_all(request.as_bytes()).await.is_err() {
            out.errors += 1;
            break;
        }
        match read_response(&mut stream, &mut line, &mut body).await {
            Ok(202) => out.accepted += 1,
            Ok(status) => {
                if out.other_status == 0 {
                    eprintln!("  unexpected status {status}: {}", String::from_utf8_lossy(&body));
                }
                out.other_status += 1;
            }
            Err(e) => {
                eprintln!("  connection error: {e}");
                out.errors += 1;
                break;
            }
        }
        out.latencies.push(t.elapsed());
    }
    out
}

/// The built-in generator: `conns` keep-alive connections, one request in flight on each.
async fn builtin_load(addr: SocketAddr, conns: usize, secs: u64) -> Load {
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        streams.push(stream);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let tasks: Vec<_> = streams.into_iter().map(|s| tokio::spawn(trigger_connection(s, deadline))).collect();
    let mut all = ConnectionResult::default();
    for task in tasks {
        let r = task.await.expect("connection task");
        all.latencies.extend(r.latencies);
        all.accepted += r.accepted;
        all.other_status += r.other_status;
        all.errors += r.errors;
    }
    let elapsed = start.elapsed();
    all.latencies.sort();
    let requests = all.latencies.len() as u64;
    Load {
        generator: "built-in",
        requests,
        accepted: all.accepted,
        other_status: all.other_status,
        errors: all.errors,
        per_second: requests as f64 / elapsed.as_secs_f64(),
        p50: percentile(&all.latencies, 0.50),
        p99: percentile(&all.latencies, 0.99),
    }
}

/// `oha` on PATH, unless GENERATOR=builtin.
fn oha() -> Option<std::path::PathBuf> {
    if std::env::var("GENERATOR").is_ok_and(|g| g == "builtin") {
        return None;
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("oha")).find(|p| p.is_file())
}

/// Runs `oha` against the API and reads its JSON summary.
async fn oha_load(oha: &std::path::Path, addr: SocketAddr, conns: usize, secs: u64) -> Load {
    let out = tokio::process::Command::new(oha)
        .args(["--no-tui", "--output-format", "json", "--wait-ongoing-requests-after-deadline", "-z"])
        .arg(format!("{secs}s"))
        .args(["-c", &conns.to_string(), "-m", "POST", "-d", BODY, "-H", "content-type: application/json"])
        .arg(format!("http://{addr}{TRIGGER_PATH}"))
        .output()
        .await
        .expect("oha runs");
    assert!(out.status.success(), "oha failed: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("oha's output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    let statuses = json["statusCodeDistribution"].as_object().cloned().unwrap_or_default();
    let count = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let accepted = statuses.get("202").map_or(0, count);
    let other_status: u64 = statuses.iter().filter(|(k, _)| k.as_str() != "202").map(|(_, v)| count(v)).sum();
    let errors: u64 = json["errorDistribution"].as_object().map_or(0, |m| m.values().map(count).sum());
    if let Some(errors) = json["errorDistribution"].as_object().filter(|m| !m.is_empty()) {
        eprintln!("  oha errors: {errors:?}");
    }
    let seconds = |v: &serde_json::Value| Duration::from_secs_f64(v.as_f64().unwrap_or(f64::NAN));
    Load {
        generator: "oha",
        requests: accepted + other_status,
        accepted,
        other_status,
        errors,
        per_second: json["summary"]["requestsPerSec"].as_f64().expect("requestsPerSec"),
        p50: seconds(&json["latencyPercentiles"]["p50"]),
        p99: seconds(&json["latencyPercentiles"]["p99"]),
    }
}

/// Returns false when a request failed.
async fn triggers(runs: usize, secs: u64) -> bool {
    let conns: Vec<usize> = std::env::var("CONNS")
        .unwrap_or_else(|_| "16,64,256".to_owned())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let oha = oha();
    let generator = oha.as_ref().map_or_else(
        || "built-in (oha is not on PATH, or GENERATOR=builtin)".to_owned(),
        |p| format!("oha ({})", p.display()),
    );
    println!("triggers: embedded store, workers at concurrency 2, {secs} s per run; generator: {generator}");
    let mut ok = true;
    for &c in &conns {
        let (mut rps, mut p50, mut p99, mut drain) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for run in 1..=runs {
            let load_avg = load();
            DONE.store(0, Ordering::Relaxed);
            let server = serve(true).await;
            let load = match &oha {
                Some(oha) => oha_load(oha, server.addr, c, secs).await,
                None => builtin_load(server.addr, c, secs).await,
            };
            let stopped = Instant::now();
            let done_at_stop = DONE.load(Ordering::Relaxed);
            // Every accepted trigger's job runs; wait for that (bounded).
            let wait = stopped + Duration::from_secs(60);
            while (DONE.load(Ordering::Relaxed) as u64) < load.accepted && Instant::now() < wait {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let caught_up = stopped.elapsed();
            let done = DONE.load(Ordering::Relaxed) as u64;
            server.shut_down().await;
            let failed = load.other_status + load.errors > 0 || done < load.accepted;
            ok &= !failed;
            println!(
                "  c={c:<4} run {run} (load {load_avg}) [{}]: {} requests, {:>8.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   \
                 202: {}, other status: {}, errors: {}   jobs done: {done_at_stop} at the end of the load, {done}/{} {:.2} s later{}",
                load.generator,
                load.requests,
                load.per_second,
                ms(load.p50),
                ms(load.p99),
                load.accepted,
                load.other_status,
                load.errors,
                load.accepted,
                caught_up.as_secs_f64(),
                if failed { "   FAILED" } else { "" },
            );
            rps.push(load.per_second);
            p50.push(ms(load.p50));
            p99.push(ms(load.p99));
            drain.push(caught_up.as_secs_f64());
        }
        println!(
            "  c={c:<4} median (min–max): {} req/s   p50 {} ms   p99 {} ms   backlog done {} s after the load",
            summary(&rps, 0),
            summary(&p50, 2),
            summary(&p99, 2),
            summary(&drain, 2),
        );
    }
    ok
}

// ---------------------------------------------------------------------------------------
// Subscribers

/// Opens a subscription and reads the response head.
async fn subscribe(addr: SocketAddr, query: &str) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let request = format!("GET /api/v1/workers/subscribe?{query} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut lines = BufReader::new(stream);
    let mut line = String::new();
    lines.read_line(&mut line).await.expect("status line");
    assert!(line.starts_with("HTTP/1.1 200"), "subscribe: {line}");
    loop {
        line.clear();
        lines.read_line(&mut line).await.expect("header");
        if line.trim_end().is_empty() {
            break;
        }
    }
    lines
}

/// What one subscriber read.
#[derive(Default)]
struct Seen {
    /// Each `succeeded` event: the execution and when it was read.
    succeeded: Vec<(ExecutionId, Instant)>,
    lagged: u64,
    /// The stream ended before the subscriber stopped reading (or the server shut down).
    ended: bool,
}

/// Reads events until `want` succeeded events were read, the stream ends, or `stop` fires.
/// The response is chunked; chunk-size lines match no field and are skipped.
async fn read_events(mut stream: BufReader<TcpStream>, want: usize, stop: CancellationToken) -> Seen {
    let mut seen = Seen::default();
    let mut line = String::new();
    let (mut name, mut id) = (String::new(), String::new());
    while seen.succeeded.len() < want {
        line.clear();
        let read = tokio::select! {
            () = stop.cancelled() => return seen,
            read = stream.read_line(&mut line) => read,
        };
        if !matches!(read, Ok(n) if n > 0) {
            seen.ended = true;
            return seen;
        }
        let field = line.trim_end();
        if let Some(v) = field.strip_prefix("event: ") {
            v.clone_into(&mut name);
        } else if let Some(v) = field.strip_prefix("id: ") {
            v.clone_into(&mut id);
        } else if field.is_empty() && !name.is_empty() {
            // The end of an event.
            let at = Instant::now();
            match name.as_str() {
                "succeeded" => {
                    let execution = id.split('/').next().and_then(|s| s.parse().ok()).expect("event id");
                    seen.succeeded.push((execution, at));
                }
                "lagged" => seen.lagged += 1,
                _ => {}
            }
            name.clear();
            id.clear();
        }
    }
    seen
}

fn check_limit(subscribers: usize) {
    let limit = open_file_limit();
    // Each subscriber holds two sockets in this process: the client's and the server's.
    let needed = 2 * subscribers as u64 + 512;
    println!(
        "open-file limit (soft): {}; {subscribers} subscribers need about {needed}",
        limit.map_or_else(|| "unknown".to_owned(), |l| l.to_string())
    );
    if let Some(limit) = limit {
        assert!(limit >= needed, "raise the open-file limit first: ulimit -n {needed}");
    }
}

// ---------------------------------------------------------------------------------------
// Fan-out

async fn fanout(runs: usize, subscribers: usize) {
    let jobs: usize = env_or("FANOUT_JOBS", 1000);
    let rate: f64 = env_or("FANOUT_RATE", 200.0);
    check_limit(subscribers);
    println!(
        "fanout: {subscribers} subscribers on ?job=fan, {jobs} jobs enqueued at {rate}/s, workers at concurrency 2"
    );
    let (mut p50s, mut p99s, mut all_p99s) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let load_avg = load();
        let server = serve(true).await;
        let stop = CancellationToken::new();
        let mut readers = Vec::with_capacity(subscribers);
        let connect = Instant::now();
        for _ in 0..subscribers {
            let stream = subscribe(server.addr, "job=fan").await;
            readers.push(tokio::spawn(read_events(stream, jobs, stop.clone())));
        }
        let connect = connect.elapsed();
        let mut enqueued: HashMap<ExecutionId, Instant> = HashMap::with_capacity(jobs);
        let start = Instant::now();
        for i in 0..jobs {
            tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / rate)).into()).await;
            let t = Instant::now();
            let receipt = server.rt.enqueue(fan::enqueue()).await.expect("enqueue");
            enqueued.insert(receipt.execution_id, t);
        }
        // Subscribers stop by themselves once they saw every job; give stragglers 30 s.
        let timeout = tokio::spawn({
            let stop = stop.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                stop.cancel();
            }
        });
        let mut per_job_last: HashMap<ExecutionId, Duration> = HashMap::with_capacity(jobs);
        let mut all = Vec::with_capacity(subscribers * jobs);
        let (mut missed, mut lagged, mut ended) = (0usize, 0u64, 0usize);
        for reader in readers {
            let seen = reader.await.expect("reader");
            lagged += seen.lagged;
            ended += usize::from(seen.ended);
            missed += jobs - seen.succeeded.len();
            for (id, at) in seen.succeeded {
                let enqueue = enqueued.get(&id).expect("an event of a job this run enqueued");
                let latency = at.duration_since(*enqueue);
                all.push(latency);
                let last = per_job_last.entry(id).or_default();
                *last = (*last).max(latency);
            }
        }
        timeout.abort();
        server.shut_down().await;
        let jobs_seen_by_all = per_job_last.len();
        let mut per_job: Vec<Duration> = per_job_last.into_values().collect();
        per_job.sort();
        all.sort();
        println!(
            "  run {run} (load {load_avg}): subscribers connected in {:.0} ms; every subscriber's succeeded event after the enqueue: \
             p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms; over all {} deliveries: p50 {:.2} ms  p99 {:.2} ms   missed: {missed}, lagged: {lagged}, \
             streams ended early: {ended}, jobs with an event: {jobs_seen_by_all}/{jobs}",
            ms(connect),
            ms(percentile(&per_job, 0.50)),
            ms(percentile(&per_job, 0.99)),
            ms(per_job.last().copied().unwrap_or_default()),
            all.len(),
            ms(percentile(&all, 0.50)),
            ms(percentile(&all, 0.99)),
        );
        p50s.push(ms(percentile(&per_job, 0.50)));
        p99s.push(ms(percentile(&per_job, 0.99)));
        all_p99s.push(ms(percentile(&all, 0.99)));
    }
    println!(
        "  median (min–max): last subscriber p50 {} ms, p99 {} ms; all deliveries p99 {} ms",
        summary(&p50s, 2),
        summary(&p99s, 2),
        summary(&all_p99s, 2)
    );
}

// ---------------------------------------------------------------------------------------
// Idle subscribers

/// Jobs/s through a backlog of `jobs`, with `subscribers` idle subscribers connected.
async fn idle_run(jobs: usize, subscribers: usize) -> (f64, f64, u64, usize) {
    let server = serve(false).await;
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(1000) {
        let batch = chunk.iter().map(|&n| noop::enqueue(Ping { n: n as u64 })).collect();
        server.rt.enqueue_many(batch).await.expect("enqueue");
    }
    let stop_readers = CancellationToken::new();
    let mut readers = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let stream = subscribe(server.addr, "job=nothing").await;
        readers.push(tokio::spawn(read_events(stream, usize::MAX, stop_readers.clone())));
    }
    DONE.store(0, Ordering::Relaxed);
    let stop = CancellationToken::new();
    let t = Instant::now();
    let cpu0 = cpu_time();
    let workers = tokio::spawn({
        let rt = server.rt.clone();
        let stop = stop.clone();
        async move { rt.run_workers(stop).await }
    });
    while DONE.load(Ordering::Relaxed) < jobs {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.cancel();
    workers.await.expect("workers");
    let elapsed = t.elapsed();
    let cpu = cpu_time().zip(cpu0).map_or(f64::NAN, |(b, a)| b.saturating_sub(a).as_secs_f64() * 1e6 / jobs as f64);
    // Still connected? Stop reading before the server ends the streams.
    stop_readers.cancel();
    let (mut lagged, mut ended) = (0, 0);
    for reader in readers {
        let seen = reader.await.expect("reader");
        lagged += seen.lagged;
        ended += usize::from(seen.ended);
        assert!(seen.succeeded.is_empty(), "an idle subscriber got an event");
    }
    let s = server.rt.queue().stats().await.expect("stats");
    assert_eq!(s.ready + s.leased + s.delayed + s.dead, 0, "every message acked: {s:?}");
    server.shut_down().await;
    (jobs as f64 / elapsed.as_secs_f64(), cpu, lagged, ended)
}

async fn idle(runs: usize, subscribers: usize) {
    let jobs: usize = env_or("IDLE_JOBS", 50_000);
    check_limit(subscribers);
    println!(
        "idle: a backlog of {jobs} no-op jobs, workers at concurrency 2, API served; {subscribers} subscribers on ?job=nothing vs none"
    );
    let (mut with, mut without, mut cpu_with, mut cpu_without) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        // Alternate, so a drift in the machine's load hits both alike.
        for subs in [0, subscribers] {
            let load_avg = load();
            let (rate, cpu, lagged, ended) = idle_run(jobs, subs).await;
            println!(
                "  run {run} (load {load_avg}): {subs:>5} idle subscribers: {rate:>8.0} jobs/s   CPU per job {cpu:.2} µs   \
                 lagged: {lagged}, disconnected: {ended}"
            );
            if subs == 0 {
                without.push(rate);
                cpu_without.push(cpu);
            } else {
                with.push(rate);
                cpu_with.push(cpu);
            }
        }
    }
    println!(
        "  median (min–max): none {} jobs/s ({} µs CPU per job); {subscribers} idle {} jobs/s ({} µs CPU per job)",
        summary(&without, 0),
        summary(&cpu_without, 2),
        summary(&with, 0),
        summary(&cpu_with, 2),
    );
}

fn main() -> std::process::ExitCode {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wants = |part: &str| filter.is_empty() || filter.iter().any(|f| f == part);
    let runs: usize = env_or("RUNS", 3);
    let secs: u64 = env_or("SECS", 5);
    let subscribers: usize = env_or("SUBSCRIBERS", 1000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    let ok = rt.block_on(async {
        println!(
            "load average at the start: {} ({} cores)",
            load(),
            std::thread::available_parallelism().map_or(0, usize::from)
        );
        let ok = !wants("triggers") || triggers(runs, secs).await;
        if wants("fanout") {
            fanout(runs, subscribers).await;
        }
        if wants("idle") {
            idle(runs, subscribers).await;
        }
        ok
    });
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        println!("FAILED: a trigger got a status other than 202, a connection failed, or a job did not run");
        std::process::ExitCode::FAILURE
    }
}
