//! The command line every NetScript app binary gets from `netscript::run()` (clap).
//!
//! ```text
//! app serve [--addr 127.0.0.1:8091] [--concurrency N]   API + workers in one process
//! app worker [--concurrency N]                          workers only
//! app api [--addr ...]                                  API only
//! app jobs [--json]                                     list registered jobs
//! app trigger ID [--payload JSON] [--wait] [...]        enqueue one job
//! app executions [--limit N] [--status S] [--job ID]    recent executions
//! app execution ID                                      one execution
//! app dead-letters [--limit N] [--json]                 dead letters with their last error
//! app redrive ID | --all                                put dead letters back in the queue
//! app stats                                             queue counts
//! app cancel ID                                         cancel a waiting or running execution
//! app pause TOPIC | resume TOPIC                        stop or restart claiming a topic
//! ```
//!
//! Exit codes: 0 success; 1 a failure (a refused enqueue, a job that ended dead or failed
//! under `--wait`, a startup error); 2 bad command-line usage (from clap).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::job::EnqueueOptions;
use crate::runtime::{CancelOutcome, Runtime, RuntimeBuilder, shutdown_signal};
use crate::store::{ExecutionFilter, ExecutionId, ExecutionRecord, ExecutionStatus};

/// A NetScript app: durable background jobs.
#[derive(Debug, Parser)]
#[command(version, arg_required_else_help = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A CLI command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API and the workers in this process.
    Serve {
        /// Address of the HTTP API.
        #[arg(long)]
        addr: Option<SocketAddr>,
        /// Jobs run at once.
        #[arg(long)]
        concurrency: Option<usize>,
        /// Do not fire schedules in this process (another process does).
        #[arg(long)]
        no_scheduler: bool,
    },
    /// Run the workers only.
    Worker {
        /// Jobs run at once.
        #[arg(long)]
        concurrency: Option<usize>,
        /// Run only this topic's workers (repeat for several); default: every worker group.
        #[arg(long = "topic", value_name = "TOPIC")]
        topics: Vec<String>,
        /// Do not fire schedules in this process (another process does).
        #[arg(long)]
        no_scheduler: bool,
    },
    /// Run the HTTP API only.
    Api {
        /// Address of the HTTP API.
        #[arg(long)]
        addr: Option<SocketAddr>,
    },
    /// List the registered jobs.
    Jobs {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the registered schedules with their next fire times.
    Schedules {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write this binary's jobs and tasks to the store's catalogue (`GET /api/v1/workers/jobs?source=store`).
    Seed,
    /// List the polyglot tasks (from code and `workers/runtime/tasks/`).
    Tasks {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Enqueue a job (or a task, by its id).
    Trigger {
        /// The job's id.
        id: String,
        /// The payload, as JSON (default: null).
        #[arg(long)]
        payload: Option<String>,
        /// Collapse duplicates carrying the same key.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Higher runs first.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
        /// Run no sooner than this (e.g. 30s, 5m).
        #[arg(long, value_parser = humantime::parse_duration)]
        delay: Option<Duration>,
        /// Follow the execution (status, attempts, a progress bar) on stderr until it ends, then
        /// print its record; exit non-zero unless it succeeded.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
        timeout: Duration,
    },
    /// List recent executions, newest first.
    Executions {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only this status (queued, running, succeeded, retrying, failed, dead, cancelled).
        #[arg(long)]
        status: Option<ExecutionStatus>,
        /// Only this job.
        #[arg(long)]
        job: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one execution as JSON.
    Execution {
        /// The execution's id.
        id: ExecutionId,
    },
    /// List dead letters, newest first, with their last error.
    DeadLetters {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put a dead letter back in the queue (attempts reset), or all of them with --all.
    Redrive {
        /// The execution's id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<ExecutionId>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Queue counts: ready, delayed, leased, dead.
    Stats,
    /// Each topic: paused or not, its message counts, and the executions finished in the
    /// last minute (read from the store: every process's work).
    Topics {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop claiming a topic's messages, in every process on this store.
    Pause {
        /// The topic.
        topic: String,
    },
    /// Claim a topic's messages again.
    Resume {
        /// The topic.
        topic: String,
    },
    /// Cancel a waiting or running execution.
    Cancel {
        /// The execution's id.
        id: ExecutionId,
    },
}

/// Installs a `tracing` subscriber printing to stderr (`RUST_LOG`, default `info`), unless
/// the app installed one already. With `OTEL_EXPORTER_OTLP_ENDPOINT` set, the spans are also
/// exported over OTLP (see [`crate::telemetry`]).
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _};
    static TELEMETRY: std::sync::OnceLock<crate::telemetry::TelemetryGuard> = std::sync::OnceLock::new();
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The trace events (job.started, job.completed, ...) are for the exported spans; the log
    // shows them only when RUST_LOG names their target.
    let mut log_filter = filter();
    let events = crate::telemetry::EVENTS_TARGET;
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains(events)) {
        if let Ok(off) = format!("{events}=off").parse() {
            log_filter = log_filter.add_directive(off);
        }
    }
    // Colours only on a terminal: a log file or a collector gets plain text (and formatting
    // the colours is a good part of what a span costs the log).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .fmt_fields(crate::log_fields::LogFields)
        .with_filter(log_filter);
    // OTLP export only when OTEL_EXPORTER_OTLP_ENDPOINT is set; the guard lives as long as the
    // process, and `run_cli` flushes it at the end.
    let service = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "netscript".to_owned());
    let otel = match TELEMETRY.get() {
        Some(guard) => Some(guard.layer()),
        None => crate::telemetry::init(&service).map(|guard| TELEMETRY.get_or_init(|| guard).layer()),
    };
    let registry = tracing_subscriber::registry().with(fmt);
    // Fails only when a subscriber is already set: the app's choice wins. Without an exporter
    // no second layer at all: an absent `Option` layer counts as interested in every callsite,
    // so the spans the log leaves out (`enqueue`, `dispatch`) would still be built.
    let _ = match otel {
        Some(layer) => registry.with(layer.with_filter(filter())).try_init(),
        None => registry.try_init(),
    };
}

/// Parses the process's arguments and runs the command on a runtime from `builder`.
pub async fn run(builder: RuntimeBuilder) -> ExitCode {
    run_cli(builder, Cli::parse()).await
}

/// Runs a parsed command.
pub async fn run_cli(mut builder: RuntimeBuilder, cli: Cli) -> ExitCode {
    init_tracing();
    match &cli.command {
        Command::Serve { addr, concurrency, no_scheduler } => {
            builder = override_addr(builder, *addr);
            builder = override_concurrency(builder, *concurrency);
            builder = override_scheduler(builder, *no_scheduler);
        }
        Command::Worker { concurrency, no_scheduler, .. } => {
            builder = override_concurrency(builder, *concurrency);
            builder = override_scheduler(builder, *no_scheduler);
        }
        Command::Api { addr } => builder = override_addr(builder, *addr),
        // Only a process that serves the API answers webhooks and needs their secrets.
        _ => {}
    }
    if !matches!(cli.command, Command::Serve { .. } | Command::Api { .. }) {
        builder = builder.webhooks(Vec::new());
    }
    let runtime = match builder.build().await {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match execute(&runtime, cli.command).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    };
    crate::telemetry::shutdown_installed().await;
    code
}

fn override_addr(builder: RuntimeBuilder, addr: Option<SocketAddr>) -> RuntimeBuilder {
    match addr {
        Some(a) => builder.configure(|c| c.api_addr = a),
        None => builder,
    }
}

fn override_scheduler(builder: RuntimeBuilder, no_scheduler: bool) -> RuntimeBuilder {
    match no_scheduler {
        true => builder.configure(|c| c.scheduler = false),
        false => builder,
    }
}

fn override_concurrency(builder: RuntimeBuilder, n: Option<usize>) -> RuntimeBuilder {
    match n {
        Some(n) => builder.concurrency(n),
        None => builder,
    }
}

async fn execute(rt: &Runtime, command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Serve { .. } => serve(rt, true).await,
        Command::Api { .. } => serve(rt, false).await,
        Command::Worker { topics, .. } => {
            let selection = match topics.is_empty() {
                true => crate::runtime::WorkerSelection::All,
                false => crate::runtime::WorkerSelection::Topics(topics),
            };
            rt.run_workers_until(selection, shutdown_signal()).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs { json } => {
            let jobs: Vec<_> = rt.registry().iter().map(crate::api::JobInfo::of).collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs).map_err(|e| e.to_string())?);
            } else if jobs.is_empty() {
                println!("no jobs are registered in this binary");
            } else {
                println!("{:<28} {:<14} {:>8} {:>7}  DESCRIPTION", "ID", "TOPIC", "TIMEOUT", "RETRIES");
                for j in jobs {
                    let timeout = j.timeout_ms.map_or_else(
                        || "default".to_owned(),
                        |ms| humantime::format_duration(Duration::from_millis(ms)).to_string(),
                    );
                    println!(
                        "{:<28} {:<14} {:>8} {:>7}  {}",
                        j.id,
                        j.topic,
                        timeout,
                        j.retries,
                        j.description.lines().next().unwrap_or("")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Schedules { json } => print_schedules(rt, json),
        Command::Tasks { json } => print_tasks(rt, json),
        Command::Seed => {
            let seeded = crate::catalogue::seed(rt).await.map_err(|e| e.to_string())?;
            println!("seeded {} job(s) and {} task(s) into the store's catalogue", seeded.jobs, seeded.tasks);
            Ok(ExitCode::SUCCESS)
        }
        Command::Trigger { id, payload, idempotency_key, priority, delay, wait, timeout } => {
            let payload = match payload.as_deref() {
                None => serde_json::Value::Null,
                Some(text) => serde_json::from_str(text).map_err(|e| format!("--payload is not valid JSON: {e}"))?,
            };
            let options = EnqueueOptions { idempotency_key, priority, delay, ..EnqueueOptions::default() };
            let receipt = rt.enqueue_json(&id, payload, options).await.map_err(|e| e.to_string())?;
            if receipt.duplicate {
                println!("{} (duplicate: an earlier enqueue with this idempotency key)", receipt.execution_id);
            } else {
                println!("{}", receipt.execution_id);
            }
            if !wait {
                return Ok(ExitCode::SUCCESS);
            }
            wait_and_print(rt, receipt.execution_id, timeout).await
        }
        Command::Executions { limit, status, job, json } => {
            let filter = ExecutionFilter { limit: Some(limit), status, job, before: None };
            let records = rt.store().list(&filter).await.map_err(|e| e.to_string())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&records).map_err(|e| e.to_string())?);
            } else {
                print_table(&records);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::DeadLetters { limit, json } => {
            let dead: Vec<crate::api::DeadLetterInfo> =
                rt.queue().dead_letters(limit).await.map_err(|e| e.to_string())?.into_iter().map(Into::into).collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&dead).map_err(|e| e.to_string())?);
            } else if dead.is_empty() {
                println!("no dead letters");
            } else {
                println!("{:<36}  {:<22} {:>7}  {:<24}  ERROR", "ID", "JOB", "ATTEMPT", "FAILED");
                for d in dead {
                    let error: String = d.error.chars().take(80).collect();
                    println!(
                        "{:<36}  {:<22} {:>7}  {:<24}  {error}",
                        d.id,
                        d.job_id,
                        d.attempt,
                        d.failed_at.to_string()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Redrive { id, all } => {
            if all {
                let n = rt.redrive_all(usize::MAX).await.map_err(|e| e.to_string())?;
                println!("{n} dead letter(s) back in the queue");
                return Ok(ExitCode::SUCCESS);
            }
            let id = id.ok_or("give an execution id or --all")?;
            if rt.redrive(id).await.map_err(|e| e.to_string())? {
                println!("{id} is back in the queue");
                Ok(ExitCode::SUCCESS)
            } else {
                Err(format!("no dead letter `{id}`"))
            }
        }
        Command::Pause { topic } => {
            rt.pause_topic(&topic).await.map_err(|e| e.to_string())?;
            println!("topic `{topic}` paused: no new claims; running jobs finish");
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume { topic } => {
            rt.resume_topic(&topic).await.map_err(|e| e.to_string())?;
            println!("topic `{topic}` resumed");
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { id } => match rt.cancel(id).await.map_err(|e| e.to_string())? {
            CancelOutcome::Cancelled => {
                println!("{id} cancelled: it will not run");
                Ok(ExitCode::SUCCESS)
            }
            CancelOutcome::Cancelling => {
                println!("{id} is running: its worker stops it and records it as cancelled");
                Ok(ExitCode::SUCCESS)
            }
            CancelOutcome::Finished(status) => Err(format!("{id} already ended: {status}")),
            CancelOutcome::NotFound => Err(format!("no execution `{id}`")),
        },
        Command::Stats => {
            let stats = rt.queue().stats().await.map_err(|e| e.to_string())?;
            println!("{}", serde_json::to_string_pretty(&stats).map_err(|e| e.to_string())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Topics { json } => {
            let window = Duration::from_secs(crate::metrics::THROUGHPUT_WINDOW_SECS);
            let counts = rt.queue().topic_stats().await.map_err(|e| e.to_string())?;
            let finished = rt.finished_per_topic(window).await.map_err(|e| e.to_string())?;
            let paused = rt.paused_topics();
            let mut topics: Vec<String> = rt.registry().topics().into_iter().map(str::to_owned).collect();
            topics.extend(counts.keys().chain(finished.keys()).chain(paused.iter()).cloned());
            topics.sort();
            topics.dedup();
            let rows: Vec<serde_json::Value> = topics
                .iter()
                .map(|t| {
                    let c = counts.get(t).copied().unwrap_or_default();
                    serde_json::json!({
                        "topic": t, "paused": paused.contains(t),
                        "ready": c.ready, "delayed": c.delayed, "leased": c.leased, "dead": c.dead,
                        "finishedLastMinute": finished.get(t).copied().unwrap_or(0),
                    })
                })
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<20} {:<6} {:>9} {:>9} {:>9} {:>9} {:>12}",
                "TOPIC", "PAUSED", "READY", "DELAYED", "LEASED", "DEAD", "FINISHED/MIN"
            );
            for r in &rows {
                println!(
                    "{:<20} {:<6} {:>9} {:>9} {:>9} {:>9} {:>12}",
                    r["topic"].as_str().unwrap_or_default(),
                    if r["paused"].as_bool().unwrap_or(false) { "yes" } else { "no" },
                    r["ready"],
                    r["delayed"],
                    r["leased"],
                    r["dead"],
                    r["finishedLastMinute"]
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Execution { id } => match rt.store().get(id).await.map_err(|e| e.to_string())? {
            Some(r) => {
                println!("{}", serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?);
                Ok(ExitCode::SUCCESS)
            }
            None => Err(format!("no execution `{id}`")),
        },
    }
}

async fn serve(rt: &Runtime, workers: bool) -> Result<ExitCode, String> {
    let report = rt.serve(workers, shutdown_signal()).await.map_err(|e| e.to_string())?;
    if report.abandoned > 0 {
        eprintln!("{} running job(s) were given back to the queue at shutdown", report.abandoned);
    }
    Ok(ExitCode::SUCCESS)
}

async fn wait_and_print(rt: &Runtime, id: ExecutionId, timeout: Duration) -> Result<ExitCode, String> {
    let follower = tokio::spawn(follow(rt.clone(), id));
    let record = rt.wait_for(id, timeout).await.map_err(|e| e.to_string());
    follower.abort();
    let record = record?.ok_or_else(|| format!("execution `{id}` disappeared"))?;
    println!("{}", serde_json::to_string_pretty(&record).map_err(|e| e.to_string())?);
    Ok(match record.status {
        ExecutionStatus::Succeeded => ExitCode::SUCCESS,
        s if s.is_final() => ExitCode::FAILURE,
        s => {
            eprintln!("gave up waiting after {}; the execution is {s}", humantime::format_duration(timeout));
            ExitCode::FAILURE
        }
    })
}

/// Prints each change of the execution's status, attempt and progress to stderr, with a
/// bar for progress, until aborted. Reads the store, so it follows runs in other processes.
async fn follow(rt: Runtime, id: ExecutionId) {
    let started = tokio::time::Instant::now();
    let mut last = None;
    let mut hinted = false;
    loop {
        if let Ok(Some(r)) = rt.store().get(id).await {
            let now = (r.status, r.attempt, r.progress.clone());
            if last.as_ref() != Some(&now) {
                match (&r.status, &r.progress) {
                    (ExecutionStatus::Running, Some(p)) => {
                        let filled = usize::from(p.percent / 5);
                        eprintln!(
                            "[{}{}] {:>3}% {}",
                            "#".repeat(filled),
                            " ".repeat(20 - filled),
                            p.percent,
                            p.message
                        );
                    }
                    (ExecutionStatus::Retrying, _) => eprintln!(
                        "attempt {}/{} failed: {}; retrying",
                        r.attempt,
                        r.max_attempts,
                        r.error.as_deref().unwrap_or("unknown error")
                    ),
                    (ExecutionStatus::Queued, _) => eprintln!("queued"),
                    (status, _) => eprintln!("{status} (attempt {}/{})", r.attempt, r.max_attempts),
                }
                last = Some(now);
            }
            if !hinted && r.status == ExecutionStatus::Queued && started.elapsed() > Duration::from_secs(5) {
                eprintln!("still queued; is a `serve` or `worker` process running on this store?");
                hinted = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_table(records: &[ExecutionRecord]) {
    if records.is_empty() {
        println!("no executions");
        return;
    }
    println!("{:<36}  {:<22} {:<9} {:>7}  {:<24}  RESULT / ERROR", "ID", "JOB", "STATUS", "ATTEMPT", "UPDATED");
    for r in records {
        let outcome = match (&r.result, &r.error) {
            (Some(v), _) => v.to_string(),
            (None, Some(e)) => e.clone(),
            (None, None) => r.progress.as_ref().map(|p| format!("{}% {}", p.percent, p.message)).unwrap_or_default(),
        };
        let outcome: String = outcome.chars().take(60).collect();
        println!(
            "{:<36}  {:<22} {:<9} {:>7}  {:<24}  {}",
            r.id,
            r.job_id,
            r.status,
            format!("{}/{}", r.attempt, r.max_attempts),
            r.updated_at.to_string(),
            outcome
        );
    }
}

/// `schedules`: each registered schedule, its expression, timezone and next fire times.
fn print_tasks(rt: &Runtime, json: bool) -> Result<ExitCode, String> {
    let tasks: Vec<_> = rt.tasks().iter().map(|t| crate::tasks::TaskDefinition::clone(t)).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&tasks).map_err(|e| e.to_string())?);
    } else if tasks.is_empty() {
        println!("no tasks: define them in code or in {}/vX.Y.Z.json", crate::tasks::MANIFEST_DIR);
    } else {
        println!("{:<28} {:<11} {:>8} {:>6}  ENTRYPOINT", "ID", "RUNTIME", "TIMEOUT", "RETRY");
        for t in tasks {
            let timeout = humantime::format_duration(t.timeout).to_string();
            let entrypoint = t.entrypoint.lines().next().unwrap_or_default();
            println!("{:<28} {:<11} {:>8} {:>6}  {entrypoint}", t.id, t.runtime.name(), timeout, t.retry);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_schedules(rt: &Runtime, json: bool) -> Result<ExitCode, String> {
    let now = rt.clock().now();
    let schedules: Vec<_> = rt.schedules().iter().filter_map(|s| crate::scheduler::ScheduleInfo::of(s, now)).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&schedules).map_err(|e| e.to_string())?);
    } else if schedules.is_empty() {
        println!("no schedules are registered in this binary");
    } else {
        println!("{:<28} {:<20} {:<20} NEXT FIRE TIMES (UTC)", "ID", "EXPRESSION", "TIMEZONE");
        for s in schedules {
            let next: Vec<String> =
                s.next_fire_times.iter().map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).collect();
            println!("{:<28} {:<20} {:<20} {}", s.id, s.expression, s.timezone, next.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}
