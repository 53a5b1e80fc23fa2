//! The runtime: wires the registry, the state, a queue and a key-value backend, the
//! dispatcher and the API together. Built with [`Runtime::builder`].
//!
//! Which backends it opens, and why, is [`crate::backends`]: discovery for `auto`, the key-value
//! store that goes with each queue, and connecting to a broker.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, GroupConfig, QueueProvider, RunnerMode, ScalingMode, WorkersConfig};
use crate::job::{EnqueueJob, EnqueueOptions, JobDescriptor, Registry, RegistryError, StateMap};
use crate::kv::Kv;
use crate::queue::{Enqueued, MessageId, NewMessage, Queue, QueueError};
use crate::scheduler::{
    Clock, SCHEDULES, ScheduleDescriptor, ScheduleSetError, Scheduler, SchedulerError, SystemClock, check_schedules,
};
use crate::shutdown::{ShutdownManager, ShutdownReport};
use crate::store::{ExecutionFilter, ExecutionId, ExecutionRecord, ExecutionStatus, ExecutionStore, StoreError};
use crate::tasks::{TaskDefinition, TaskTable};
use crate::time::Timestamp;
use crate::webhook::{ArmedWebhook, WEBHOOKS, WebhookDescriptor, arm_webhooks};
use crate::worker::{Dispatcher, DispatcherOptions, Runner, WorkerReport};

/// Why a runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The configuration is wrong or asks for something this build lacks.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The registered jobs are inconsistent (duplicate id, missing state).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The registered schedules are inconsistent (duplicate id, invalid expression).
    #[error(transparent)]
    Schedules(#[from] ScheduleSetError),
    /// A backend could not be opened; the message names what (for the embedded store, the
    /// file).
    #[error("{message}")]
    Backend {
        /// Which provider.
        provider: &'static str,
        /// Why (for the embedded store, this names the file).
        message: String,
    },
    /// The registered webhooks are inconsistent, or a secret is missing.
    #[error(transparent)]
    Webhooks(#[from] crate::webhook::WebhookSetError),
    /// A task definition or manifest is invalid (the message names the file and the field).
    #[error("tasks: {0}")]
    Tasks(String),
    /// The API address could not be bound.
    #[error("could not listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Shutdown priority of the API (stops taking requests first).
pub const SHUTDOWN_API: i32 = 0;
/// Shutdown priority of the workers (stop claiming, drain, give back the rest).
pub const SHUTDOWN_WORKERS: i32 = 10;
/// A shutdown priority for the app's own resources, after the workers drained.
pub const SHUTDOWN_APP: i32 = 100;

/// How often a worker process prunes ended executions and dead letters past their retention.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Records read per prune batch, and dead letters deleted per purge call.
const PRUNE_BATCH: usize = 1000;

/// Most records [`Runtime::finished_per_topic`] reads.
pub const RECENT_SCAN: usize = 10_000;

/// Prunes ended executions past their retention (each job's topic's group, or the process's)
/// and dead letters past the process's `db_days` (the dead-letter store is queue-wide, so a
/// group's `db_days` does not apply to it), shortly after the workers start, then every
/// [`PRUNE_EVERY`], until `stop` fires. Either retention runs alone when the other keeps
/// forever. Several processes may prune at once: deletes of the same records are harmless.
async fn prune_history(rt: Runtime, stop: CancellationToken) {
    let c = &rt.inner.config;
    let topics: HashMap<&str, &str> = rt.inner.registry.iter().map(|j| (j.id, j.topic)).collect();
    let retention = |job: &str| {
        let group = topics.get(job).and_then(|topic| c.groups.get(*topic));
        group.map_or(c.retention, |g| g.retention).kv()
    };
    let shortest = c.groups.values().map(|g| g.retention).chain([c.retention]).filter_map(|r| r.kv()).min();
    let dead_retention = c.retention.db();
    if shortest.is_none() && dead_retention.is_none() {
        return;
    }
    let mut wait = Duration::from_secs(5);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = PRUNE_EVERY;
        if let Some(shortest) = shortest {
            match rt.inner.store.prune(retention, shortest, Timestamp::now(), PRUNE_BATCH).await {
                Ok(p) if p.deleted > 0 => {
                    tracing::info!(deleted = p.deleted, scanned = p.scanned, "pruned execution history")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning execution history failed; trying again later"),
            }
        }
        if let Some(keep) = dead_retention {
            let keep = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX);
            let before = Timestamp(Timestamp::now().as_millis().saturating_sub(keep));
            let mut deleted = 0;
            // Bounded batches, yielding between them: one purge never holds the backend, nor
            // this executor thread, for long.
            loop {
                match rt.inner.queue.purge_dead(before, PRUNE_BATCH).await {
                    Ok(n) => {
                        deleted += n;
                        if n < PRUNE_BATCH || stop.is_cancelled() {
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "pruning dead letters failed; trying again later");
                        break;
                    }
                }
            }
            if deleted > 0 {
                tracing::info!(deleted, "pruned dead letters");
            }
        }
    }
}

/// Logs how a shutdown went.
fn log_shutdown(report: &ShutdownReport) {
    if report.is_clean() {
        tracing::info!(stopped = ?report.stopped, elapsed = ?report.elapsed, "shutdown complete");
    } else {
        tracing::warn!(stopped = ?report.stopped, failed = ?report.failed, timed_out = ?report.timed_out, elapsed = ?report.elapsed, "shutdown incomplete");
    }
}

/// Which worker pools a process runs (see [`WorkersConfig::groups`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WorkerSelection {
    /// Every group, and the topics in none (`worker`).
    #[default]
    All,
    /// What `serve` runs: every group but the `distributed` ones, and the topics in none.
    Serving,
    /// These topics only (`worker --topic a --topic b`): their groups, and one pool for those
    /// in no group.
    Topics(Vec<String>),
}

/// One pool of worker slots: a dispatcher over some topics, with its own runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerPool {
    /// The topics it claims; empty for all.
    pub topics: Vec<String>,
    /// Its slots.
    pub concurrency: usize,
    /// Where its attempts run.
    pub runner: RunnerMode,
}

/// Why an enqueue was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// No job has this id.
    #[error("no job `{0}` is registered")]
    UnknownJob(String),
    /// The payload does not fit the job's payload type.
    #[error("invalid payload for job `{job}`: {message}")]
    InvalidPayload {
        /// The job.
        job: String,
        /// What is wrong, from the payload's decoder.
        message: String,
    },
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The execution store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an enqueue did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    /// The execution that will run.
    pub execution_id: ExecutionId,
    /// `true` when an idempotency key matched an earlier enqueue, whose execution this is.
    pub duplicate: bool,
}

impl From<Enqueued> for Receipt {
    fn from(outcome: Enqueued) -> Self {
        match outcome {
            Enqueued::Created(id) => Receipt { execution_id: id, duplicate: false },
            Enqueued::Duplicate(id) => Receipt { execution_id: id, duplicate: true },
        }
    }
}

/// What [`Runtime::cancel`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "outcome", content = "status")]
pub enum CancelOutcome {
    /// It was waiting and will not run; its record says cancelled.
    Cancelled,
    /// A worker is running it: its cancellation signal fires (at once in this process, at
    /// that worker's next heartbeat elsewhere), then it is recorded as cancelled.
    Cancelling,
    /// It had already ended with this status.
    Finished(ExecutionStatus),
    /// No such execution.
    NotFound,
}

/// How long a cancel request for a running execution is kept for its worker to see.
const CANCEL_REQUEST_TTL: Duration = Duration::from_secs(24 * 3600);

/// Which backends the runtime uses, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Providers {
    /// Queue backend.
    pub queue: &'static str,
    /// Key-value backend.
    pub kv: &'static str,
    /// Why this choice.
    pub reason: String,
}

struct Inner {
    config: WorkersConfig,
    registry: Registry,
    states: Arc<StateMap>,
    queue: Arc<dyn Queue>,
    store: ExecutionStore,
    /// Writes records and enqueues their messages in one transaction, when the queue and the
    /// store share a database.
    joint: Option<Arc<dyn crate::backends::Joint>>,
    providers: Providers,
    /// Fired when a `serve` begins shutting down: long-lived responses (event streams) end.
    stopping: CancellationToken,
    /// The schedules the workers fire, sorted by id.
    schedules: Vec<&'static ScheduleDescriptor>,
    /// The scheduler's clock.
    clock: Arc<dyn Clock>,
    /// Cancel requests for this process's dispatchers.
    cancels: tokio::sync::broadcast::Sender<ExecutionId>,
    /// Topics whose messages are not claimed, shared with this process's dispatchers.
    paused: Arc<crate::worker::PausedTopics>,
    /// The polyglot tasks (also in `registry` as jobs, and in `states` for their handler).
    tasks: Arc<TaskTable>,
    /// The webhooks the API serves, with their secrets, sorted by id.
    webhooks: Vec<ArmedWebhook>,
    /// The process's shutdown sequence.
    shutdown: ShutdownManager,
    /// What this process's workers did, for `GET /metrics`.
    metrics: Arc<crate::metrics::Metrics>,
}

/// A configured job system. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("providers", &self.inner.providers)
            .field("jobs", &self.inner.registry.len())
            .finish()
    }
}

/// Builds a [`Runtime`].
pub struct RuntimeBuilder {
    config: WorkersConfig,
    states: StateMap,
    registry: Option<Registry>,
    queue: Option<Arc<dyn Queue>>,
    kv: Option<Arc<dyn Kv>>,
    use_env: bool,
    schedules: Option<Vec<&'static ScheduleDescriptor>>,
    clock: Option<Arc<dyn Clock>>,
    tasks: Vec<TaskDefinition>,
    task_manifests: Option<PathBuf>,
    webhooks: Option<Vec<&'static WebhookDescriptor>>,
    webhook_secrets: HashMap<String, String>,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        Self {
            config: WorkersConfig::default(),
            states: StateMap::default(),
            registry: None,
            queue: None,
            kv: None,
            use_env: true,
            schedules: None,
            clock: None,
            tasks: Vec::new(),
            task_manifests: Some(PathBuf::from(crate::tasks::MANIFEST_DIR)),
            webhooks: None,
            webhook_secrets: HashMap::new(),
        }
    }
}

impl RuntimeBuilder {
    /// Replaces the whole configuration.
    pub fn config(mut self, config: WorkersConfig) -> Self {
        self.config = config;
        self
    }

    /// Changes the configuration in place.
    pub fn configure(mut self, f: impl FnOnce(&mut WorkersConfig)) -> Self {
        f(&mut self.config);
        self
    }

    /// Jobs run at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n;
        self
    }

    /// Directory of the embedded store.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.data_dir = dir.into();
        self
    }

    /// Queue provider.
    pub fn provider(mut self, provider: QueueProvider) -> Self {
        self.config.queue_provider = provider;
        self
    }

    /// Registers shared state, handed to jobs that take a `State<T>` parameter.
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(value);
        self
    }

    /// Uses these jobs instead of the ones registered with `#[job]` in the binary.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Uses this queue, whatever the configured provider.
    pub fn queue(mut self, queue: Arc<dyn Queue>) -> Self {
        self.queue = Some(queue);
        self
    }

    /// Uses this key-value store for execution records.
    pub fn kv(mut self, kv: Arc<dyn Kv>) -> Self {
        self.kv = Some(kv);
        self
    }

    /// Uses these schedules instead of the ones registered with `#[scheduled]` in the binary
    /// (an empty list: the workers fire no schedules).
    pub fn schedules(mut self, schedules: Vec<&'static ScheduleDescriptor>) -> Self {
        self.schedules = Some(schedules);
        self
    }

    /// Uses these webhooks instead of the ones registered with `#[webhook]` in the binary.
    pub fn webhooks(mut self, webhooks: Vec<&'static WebhookDescriptor>) -> Self {
        self.webhooks = Some(webhooks);
        self
    }

    /// Gives the value of a webhook's secret variable in code; it wins over the environment
    /// (which [`ignore_env`](Self::ignore_env) leaves unread).
    pub fn webhook_secret(mut self, variable: impl Into<String>, value: impl Into<String>) -> Self {
        self.webhook_secrets.insert(variable.into(), value.into());
        self
    }

    /// Adds a polyglot task (see [`crate::tasks`]): it is enqueued, run, retried and listed
    /// like a job with its id.
    pub fn task(mut self, task: TaskDefinition) -> Self {
        self.tasks.push(task);
        self
    }

    /// Reads task manifests from `dir` (the highest `vX.Y.Z.json` wins) instead of
    /// `workers/runtime/tasks`, the default; `None` reads none. A directory that does not
    /// exist holds no tasks.
    pub fn task_manifests(mut self, dir: Option<PathBuf>) -> Self {
        self.task_manifests = dir;
        self
    }

    /// The clock the scheduler reads (a `ManualClock` in tests); the system clock by default.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Ignore the environment (`WORKERS_CONCURRENCY`, `NETSCRIPT_*`): the configuration is
    /// exactly what the code says. Tests use this.
    pub fn ignore_env(mut self) -> Self {
        self.use_env = false;
        self
    }

    /// Parses the command line (`serve`, `jobs`, `trigger`, `executions`, ...) and runs the
    /// command on the runtime this builder makes. See [`crate::cli`].
    pub async fn run(self) -> std::process::ExitCode {
        crate::cli::run(self).await
    }

    /// The tasks given in code and in the manifest directory.
    fn task_table(&mut self) -> Result<TaskTable, StartupError> {
        let mut tasks = std::mem::take(&mut self.tasks);
        if let Some(dir) = &self.task_manifests {
            tasks.extend(crate::tasks::load_manifests(dir).map_err(|e| StartupError::Tasks(e.to_string()))?);
        }
        TaskTable::new(tasks).map_err(StartupError::Tasks)
    }

    /// Validates everything and opens the backends.
    pub async fn build(mut self) -> Result<Runtime, StartupError> {
        if self.use_env {
            let report = self.config.apply_env()?;
            for w in report.warnings {
                tracing::warn!("{w}");
            }
        }
        self.config.validate()?;
        let tasks = self.task_table()?;
        let registry = match self.registry.take() {
            Some(r) if tasks.is_empty() => r,
            Some(r) => Registry::new(r.iter().chain(tasks.descriptors()))?,
            None => Registry::new(crate::job::JOBS.iter().chain(tasks.descriptors()))?,
        };
        let tasks = Arc::new(tasks);
        if !tasks.is_empty() {
            tracing::info!(tasks = tasks.len(), "polyglot tasks registered");
            self.states.insert_arc(Arc::clone(&tasks));
        }
        registry.check_states(&self.states)?;
        if std::env::var_os(crate::worker::CHILD_ENV).is_some() {
            // A child of the subprocess runner: serve the one attempt, open nothing, exit.
            let code = crate::worker::serve_child(&registry, std::mem::take(&mut self.states)).await;
            // `exit` skips destructors: flush the child's spans first.
            crate::telemetry::shutdown_installed().await;
            std::process::exit(code);
        }
        let schedules = check_schedules(self.schedules.take().unwrap_or_else(|| SCHEDULES.iter().collect()))?;
        let use_env = self.use_env;
        let secrets = std::mem::take(&mut self.webhook_secrets);
        let webhooks = arm_webhooks(self.webhooks.take().unwrap_or_else(|| WEBHOOKS.iter().collect()), |name| {
            secrets.get(name).cloned().or_else(|| use_env.then(|| std::env::var(name).ok()).flatten())
        })?;
        let (queue, kv, reason, joint) = crate::backends::open(&self.config, self.queue.take(), self.kv.take()).await?;
        let providers = Providers { queue: queue.provider(), kv: kv.provider(), reason };
        let paused = Arc::new(crate::worker::PausedTopics::default());
        paused.reload(kv.as_ref()).await.map_err(|e| StartupError::Backend {
            provider: kv.provider(),
            message: format!("cannot read paused topics: {e}"),
        })?;
        tracing::info!(queue = providers.queue, kv = providers.kv, reason = %providers.reason, jobs = registry.len(), "runtime ready");
        let shutdown = ShutdownManager::new(self.config.shutdown_timeout.saturating_add(Duration::from_secs(15)));
        Ok(Runtime {
            inner: Arc::new(Inner {
                store: ExecutionStore::new(kv),
                joint,
                config: self.config,
                registry,
                states: Arc::new(self.states),
                queue,
                providers,
                stopping: CancellationToken::new(),
                cancels: tokio::sync::broadcast::channel(1024).0,
                paused,
                schedules,
                tasks,
                webhooks,
                shutdown,
                metrics: Arc::default(),
                clock: self.clock.take().unwrap_or_else(|| Arc::new(SystemClock)),
            }),
        })
    }
}

/// Workers started by [`Runtime::spawn_workers`]. Dropping the handle leaves them running.
#[derive(Debug)]
#[must_use = "the workers run until stopped: keep the handle to stop and drain them"]
pub struct RunningWorkers {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<WorkerReport>,
}

impl RunningWorkers {
    /// Stops claiming, waits for the running jobs as a cancelled
    /// [`run_workers`](Runtime::run_workers) does, and returns what they did.
    pub async fn stop(self) -> WorkerReport {
        self.stop.cancel();
        match self.task.await {
            Ok(report) => report,
            // A panic in the workers' task is a bug: let it surface where they are stopped.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => WorkerReport::default(),
        }
    }

    /// Whether they stopped already (their token fired, or their task ended on its own).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// The token that stops them, for stopping them from elsewhere (then await
    /// [`stop`](Self::stop) for the report).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }
}

impl Runtime {
    /// A builder with the default configuration.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// The configuration in force.
    pub fn config(&self) -> &WorkersConfig {
        &self.inner.config
    }

    /// The jobs this runtime runs.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The queue.
    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.inner.queue
    }

    /// The execution store.
    pub fn store(&self) -> &ExecutionStore {
        &self.inner.store
    }

    /// The backends in use and why.
    pub fn providers(&self) -> &Providers {
        &self.inner.providers
    }

    /// Fired once a `serve` of this runtime starts shutting down; open event streams end on
    /// it so the server can drain.
    pub fn stopping(&self) -> &CancellationToken {
        &self.inner.stopping
    }

    /// Enqueues a typed job request, as made by a job's handle.
    pub async fn enqueue<P: Serialize>(&self, job: EnqueueJob<P>) -> Result<Receipt, EnqueueError> {
        let mut receipts = self.enqueue_many(vec![job]).await?;
        receipts.pop().ok_or(EnqueueError::Queue(QueueError::Closed))
    }

    /// Enqueues many typed requests in one queue round trip.
    pub async fn enqueue_many<P: Serialize>(&self, jobs: Vec<EnqueueJob<P>>) -> Result<Vec<Receipt>, EnqueueError> {
        let mut prepared = Vec::with_capacity(jobs.len());
        for job in jobs {
            let (id, payload, options) = job.into_parts();
            let descriptor = self.job(id)?;
            let value = serde_json::to_value(payload)
                .map_err(|e| EnqueueError::InvalidPayload { job: id.into(), message: e.to_string() })?;
            prepared.push((descriptor, value, options));
        }
        self.enqueue_prepared(prepared).await
    }

    /// Enqueues `job_id` with a JSON payload, after checking the payload decodes into the
    /// job's payload type. This is what the API and the CLI call.
    pub async fn enqueue_json(
        &self,
        job_id: &str,
        payload: serde_json::Value,
        options: EnqueueOptions,
    ) -> Result<Receipt, EnqueueError> {
        let descriptor = self.job(job_id)?;
        descriptor
            .validate_payload(&payload)
            .map_err(|message| EnqueueError::InvalidPayload { job: job_id.into(), message })?;
        let mut receipts = self.enqueue_prepared(vec![(descriptor, payload, options)]).await?;
        receipts.pop().ok_or(EnqueueError::Queue(QueueError::Closed))
    }

    fn job(&self, id: &str) -> Result<&'static JobDescriptor, EnqueueError> {
        self.inner.registry.get(id).ok_or_else(|| EnqueueError::UnknownJob(id.into()))
    }

    /// Enqueues prepared jobs inside an `enqueue` span (job id, execution id when one, count,
    /// queue provider, outcome), so the enqueue is part of the caller's trace.
    async fn enqueue_prepared(
        &self,
        jobs: Vec<(&'static JobDescriptor, serde_json::Value, EnqueueOptions)>,
    ) -> Result<Vec<Receipt>, EnqueueError> {
        let single = jobs.len() == 1;
        // On the trace target: exported, kept out of the log (no cost there when not exported).
        let span = tracing::info_span!(
            target: crate::telemetry::EVENTS_TARGET,
            "enqueue",
            job.id = jobs.first().map_or("", |(j, _, _)| j.id),
            execution.id = tracing::field::Empty,
            count = jobs.len(),
            queue.provider = self.inner.queue.provider(),
            outcome = tracing::field::Empty,
        );
        // One job enqueued for a caller elsewhere (an HTTP trigger's traceparent): the span
        // joins that trace. A batch stays in the current one.
        if single && let Some((_, _, options)) = jobs.first() {
            crate::telemetry::set_remote_parent(&span, options.traceparent.as_deref(), options.tracestate.as_deref());
        }
        let result = tracing::Instrument::instrument(self.enqueue_in_span(jobs, &span, single), span.clone()).await;
        match &result {
            Ok(receipts) => {
                let outcome = if receipts.iter().all(|r| r.duplicate) { "duplicate" } else { "created" };
                span.record("outcome", outcome);
                if let [receipt] = receipts.as_slice() {
                    span.record("execution.id", tracing::field::display(receipt.execution_id));
                }
            }
            Err(_) => {
                span.record("outcome", "failed");
            }
        }
        result
    }

    async fn enqueue_in_span(
        &self,
        jobs: Vec<(&'static JobDescriptor, serde_json::Value, EnqueueOptions)>,
        span: &tracing::Span,
        single: bool,
    ) -> Result<Vec<Receipt>, EnqueueError> {
        let now = Timestamp::now();
        // The enqueue span's own context, which the jobs carry so their attempts nest under
        // it (`None` when telemetry is off: nothing to carry but the caller's).
        let own = crate::telemetry::span_traceparent(span);
        let mut messages = Vec::with_capacity(jobs.len());
        let mut records = Vec::with_capacity(jobs.len());
        for (job, payload, options) in jobs {
            let id = MessageId::new();
            let mut headers = Vec::new();
            let correlation_id = options.correlation_id.clone().unwrap_or_else(|| id.to_string());
            if let Some(c) = &options.correlation_id {
                headers.push((crate::worker::CORRELATION_HEADER.to_owned(), c.clone()));
            }
            // The trace the attempt joins: under the enqueue span when telemetry is on (in a
            // batch, a job with a trace of its own keeps it); the caller's otherwise.
            let traceparent = match (&own, options.traceparent.clone()) {
                (Some(own), None) => Some(own.clone()),
                (Some(own), Some(_)) if single => Some(own.clone()),
                (_, explicit) => explicit,
            };
            if let Some(t) = traceparent {
                headers.push((crate::worker::TRACEPARENT_HEADER.to_owned(), t));
            }
            if let Some(t) = &options.tracestate {
                headers.push((crate::worker::TRACESTATE_HEADER.to_owned(), t.clone()));
            }
            messages.push(NewMessage {
                id,
                topic: job.topic.to_owned(),
                kind: job.id.to_owned(),
                // Serializing a `serde_json::Value` cannot fail.
                payload: serde_json::to_vec(&payload).unwrap_or_default(),
                headers,
                priority: match options.priority {
                    // A task's own priority is the default of its enqueues.
                    0 if !self.inner.tasks.is_empty() => {
                        self.inner.tasks.get(job.id).map_or(0, |t| i32::from(t.priority))
                    }
                    p => p,
                },
                delay: options.delay.unwrap_or(Duration::ZERO),
                idempotency_key: options.idempotency_key,
                concurrency_key: options.concurrency_key,
            });
            records.push(ExecutionRecord::queued(id, job.id, payload, job.max_attempts(), Some(correlation_id), now));
        }
        if let Some(joint) = &self.inner.joint {
            return self.enqueue_jointly(joint.as_ref(), messages, records).await;
        }
        // The queued records go in first, so that no worker can have written a later state
        // yet, and a record exists from the moment its message can run. They are published
        // at once too, so the feed shows queued before anything a worker writes; except the
        // ones with an idempotency key, which may turn out to be duplicates that never run:
        // those are published once the enqueue says they were created.
        self.inner.store.write(&records).await?;
        let keyed: std::collections::HashSet<MessageId> =
            messages.iter().filter(|m| m.idempotency_key.is_some()).map(|m| m.id).collect();
        self.inner.store.publish_copies(records.iter().filter(|r| !keyed.contains(&r.id)));
        let outcomes = match self.inner.queue.enqueue(messages).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                self.remove_records(records.iter().map(|r| r.id).collect()).await;
                return Err(e.into());
            }
        };
        let mut receipts = Vec::with_capacity(outcomes.len());
        let mut created = Vec::with_capacity(outcomes.len());
        let mut unused = Vec::new();
        for (outcome, record) in outcomes.into_iter().zip(records) {
            receipts.push(Receipt::from(outcome));
            match outcome {
                Enqueued::Created(_) => {
                    if keyed.contains(&record.id) {
                        created.push(record);
                    }
                }
                // The earlier message runs; this one's record was never needed.
                Enqueued::Duplicate(_) => unused.push(record.id),
            }
        }
        self.remove_records(unused).await;
        self.inner.store.publish(created);
        Ok(receipts)
    }

    /// Enqueues with the queue and the store that share one database: each record is written
    /// in the transaction of its message (a duplicate's is not written at all), and published
    /// on the feed once committed, before a worker can claim the message.
    async fn enqueue_jointly(
        &self,
        joint: &dyn crate::backends::Joint,
        messages: Vec<NewMessage>,
        records: Vec<ExecutionRecord>,
    ) -> Result<Vec<Receipt>, EnqueueError> {
        let writes = records.iter().map(ExecutionStore::write_of).collect();
        let store = self.inner.store.clone();
        // Nobody listens (the common case): the records are dropped here, not on the writer
        // thread, which every enqueue and claim waits for.
        let publish: crate::backends::OnCommit = if store.listened() {
            Box::new(move |outcomes: &[Enqueued]| {
                let created = records.into_iter().zip(outcomes).filter(|(_, o)| matches!(o, Enqueued::Created(_)));
                store.publish(created.map(|(r, _)| r).collect());
            })
        } else {
            drop(records);
            Box::new(|_: &[Enqueued]| {})
        };
        let outcomes = joint.enqueue_with(messages, writes, publish).await?;
        Ok(outcomes.into_iter().map(Receipt::from).collect())
    }

    /// Removes the queued records of messages that were never enqueued (duplicates, or a
    /// failed enqueue). Best effort: a record left behind says queued for a message that does
    /// not exist, which is logged, and never runs anything.
    async fn remove_records(&self, ids: Vec<ExecutionId>) {
        if let Err(e) = self.inner.store.delete_many(&ids).await {
            tracing::warn!(error = %e, count = ids.len(), "could not remove the records of messages that were not enqueued");
        }
    }

    /// The schedules registered with `#[scheduled]` (or given to the builder), by id.
    pub fn schedules(&self) -> &[&'static ScheduleDescriptor] {
        &self.inner.schedules
    }

    /// What this process's workers did (see [`crate::metrics`]).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// The webhooks the API serves, by id.
    pub fn webhooks(&self) -> &[ArmedWebhook] {
        &self.inner.webhooks
    }

    /// The polyglot tasks, by id (each is also a job in [`registry`](Self::registry)).
    pub fn tasks(&self) -> &TaskTable {
        &self.inner.tasks
    }

    /// The clock the scheduler reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// A scheduler on this runtime's clock, firing every registered schedule. The workers
    /// start one of these; call [`Scheduler::stop`] when done.
    pub async fn start_scheduler(&self) -> Result<Scheduler, SchedulerError> {
        let scheduler = Scheduler::with_clock(self.clone(), Arc::clone(&self.inner.clock));
        scheduler.schedule_all(self.inner.schedules.clone()).await?;
        Ok(scheduler)
    }

    /// Runs every worker pool (each group's and the rest's), and the scheduler when schedules
    /// are registered and [`WorkersConfig::scheduler`] is on, until `stop` fires; then stops
    /// the scheduler and drains the workers (see [`Dispatcher::run`]).
    pub async fn run_workers(&self, stop: CancellationToken) -> WorkerReport {
        self.run_workers_for(&WorkerSelection::All, stop).await
    }

    /// Starts [`run_workers`](Self::run_workers) on a task of its own and returns at once: for
    /// an app that runs its workers beside its own server, and for tests. [`RunningWorkers::stop`]
    /// stops and drains them. Call it inside a tokio runtime.
    ///
    /// ```no_run
    /// # async fn demo(rt: netscript_runtime::Runtime) {
    /// let workers = rt.spawn_workers();
    /// // ... serve the app, enqueue jobs ...
    /// let report = workers.stop().await;
    /// # let _ = report;
    /// # }
    /// ```
    pub fn spawn_workers(&self) -> RunningWorkers {
        let stop = CancellationToken::new();
        let (rt, token) = (self.clone(), stop.clone());
        RunningWorkers { stop, task: tokio::spawn(async move { rt.run_workers(token).await }) }
    }

    /// [`run_workers`](Self::run_workers) for the pools `selection` picks.
    pub async fn run_workers_for(&self, selection: &WorkerSelection, stop: CancellationToken) -> WorkerReport {
        let scheduler = match self.inner.schedules.is_empty() || !self.inner.config.scheduler {
            true => {
                if !self.inner.schedules.is_empty() {
                    tracing::info!(
                        schedules = self.inner.schedules.len(),
                        "scheduler off in this process (NETSCRIPT_SCHEDULER=off or --no-scheduler)"
                    );
                }
                None
            }
            false => match self.start_scheduler().await {
                Ok(scheduler) => {
                    tracing::info!(schedules = self.inner.schedules.len(), "scheduler started");
                    Some(scheduler)
                }
                Err(e) => {
                    tracing::error!(error = %e, "the scheduler could not start; workers run without it");
                    None
                }
            },
        };
        let pruner = tokio::spawn(prune_history(self.clone(), stop.clone()));
        let report = self.run_pools(selection, stop).await;
        pruner.abort();
        if let Some(scheduler) = scheduler {
            scheduler.stop().await;
        }
        report
    }

    /// The worker pools `selection` runs: one per worker group, and one for the topics in no
    /// group.
    pub fn worker_pools(&self, selection: &WorkerSelection) -> Vec<WorkerPool> {
        let c = &self.inner.config;
        let pool = |topics: Vec<String>, group: Option<&GroupConfig>| WorkerPool {
            topics,
            concurrency: group.and_then(|g| g.scaling).map_or(c.concurrency, |s| s.concurrency),
            runner: group.and_then(|g| g.runner).unwrap_or(c.runner),
        };
        let mut pools = Vec::new();
        for (topic, group) in &c.groups {
            let distributed = group.scaling.is_some_and(|s| s.mode == ScalingMode::Distributed);
            let runs = match selection {
                WorkerSelection::All => true,
                WorkerSelection::Serving => !distributed,
                WorkerSelection::Topics(topics) => topics.contains(topic),
            };
            if runs {
                pools.push(pool(vec![topic.clone()], Some(group)));
            }
        }
        let ungrouped: Vec<String> = match selection {
            WorkerSelection::Topics(topics) => topics.iter().filter(|t| !c.groups.contains_key(*t)).cloned().collect(),
            // No groups: one pool claims every topic, this binary's or not.
            _ if c.groups.is_empty() => Vec::new(),
            _ => self
                .inner
                .registry
                .topics()
                .into_iter()
                .filter(|t| !c.groups.contains_key(*t))
                .map(str::to_owned)
                .collect(),
        };
        let everything = c.groups.is_empty() && !matches!(selection, WorkerSelection::Topics(_));
        if everything || !ungrouped.is_empty() {
            pools.push(pool(ungrouped, None));
        }
        pools
    }

    /// Runs the worker pools of `selection` until `stop` fires, then drains them all. Unlike
    /// [`run_workers`](Self::run_workers), fires no schedules.
    pub async fn run_pools(&self, selection: &WorkerSelection, stop: CancellationToken) -> WorkerReport {
        let pools = self.worker_pools(selection);
        if pools.is_empty() {
            tracing::warn!(?selection, "no worker pool to run: no group or topic matches");
        }
        let runs = pools.into_iter().map(|pool| self.run_pool(pool, stop.clone()));
        let reports = futures::future::join_all(runs).await;
        let report = reports.into_iter().fold(WorkerReport::default(), |sum, r| WorkerReport {
            started: sum.started + r.started,
            abandoned: sum.abandoned + r.abandoned,
        });
        tracing::info!(started = report.started, abandoned = report.abandoned, "workers stopped");
        report
    }

    async fn run_pool(&self, pool: WorkerPool, stop: CancellationToken) -> WorkerReport {
        let c = &self.inner.config;
        let runner = match Runner::new(pool.runner, pool.concurrency) {
            Ok(runner) => runner,
            Err(e) => {
                tracing::error!(error = %e, runner = ?pool.runner, topics = ?pool.topics, "cannot start the runner; these topics do not run here");
                return WorkerReport::default();
            }
        };
        tracing::info!(
            topics = if pool.topics.is_empty() { "all".to_owned() } else { pool.topics.join(",") },
            concurrency = pool.concurrency,
            queue = self.inner.providers.queue,
            runner = runner.mode(),
            "workers started"
        );
        let options = DispatcherOptions {
            concurrency: pool.concurrency,
            topics: pool.topics,
            lease: c.lease,
            default_timeout: c.default_timeout,
            shutdown_timeout: c.shutdown_timeout,
            poll_interval: c.poll_interval,
        };
        Dispatcher::new(
            Arc::clone(&self.inner.queue),
            self.inner.store.clone(),
            self.inner.registry.clone(),
            Arc::clone(&self.inner.states),
            options,
        )
        .with_runner(runner)
        .with_metrics(Arc::clone(&self.inner.metrics))
        .with_cancel_requests(self.inner.cancels.subscribe())
        .with_paused_topics(Arc::clone(&self.inner.paused))
        .run(stop)
        .await
    }

    /// Serves the HTTP API (and, when `workers` is true and the config enables them, the
    /// workers) until `shutdown` completes; then stops the API and drains the workers.
    pub async fn serve(
        &self,
        workers: bool,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<WorkerReport, StartupError> {
        let addr = self.inner.config.api_addr;
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| StartupError::Bind { addr, source })?;
        Ok(self.serve_on(listener, workers, shutdown).await)
    }

    /// Like [`Runtime::serve`], on a listener the caller bound (port 0 in tests).
    pub async fn serve_on(
        &self,
        listener: tokio::net::TcpListener,
        workers: bool,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> WorkerReport {
        let addr = listener.local_addr().unwrap_or(self.inner.config.api_addr);
        tracing::info!("API listening on http://{addr}");
        let manager = self.inner.shutdown.clone();
        let api_stop = CancellationToken::new();
        let stopping = self.inner.stopping.clone();
        manager.register("api", SHUTDOWN_API, {
            let api_stop = api_stop.clone();
            // Event streams end and no new request is taken; requests in flight finish.
            move || async move {
                stopping.cancel();
                api_stop.cancel();
                Ok(())
            }
        });
        let report = self.register_workers(workers.then_some(WorkerSelection::Serving));
        let app = crate::api::router(self.clone());
        let server = axum::serve(listener, app).with_graceful_shutdown(async move { api_stop.cancelled().await });
        tokio::spawn({
            let manager = manager.clone();
            async move {
                shutdown.await;
                tracing::info!("shutting down: no new claims, waiting for running jobs");
                manager.shutdown().await;
            }
        });
        if let Err(e) = server.await {
            tracing::error!(error = %e, "API server failed");
            manager.shutdown().await;
        }
        log_shutdown(&manager.wait_for_shutdown().await);
        report.await.unwrap_or_default()
    }

    /// Runs the workers of `selection` (none for `None`) until the runtime's
    /// [`ShutdownManager`] stops them, as the resource `workers`; their report arrives on the
    /// returned channel once they drained.
    fn register_workers(&self, selection: Option<WorkerSelection>) -> tokio::sync::oneshot::Receiver<WorkerReport> {
        let (report, receiver) = tokio::sync::oneshot::channel();
        let stop = CancellationToken::new();
        let workers = selection.filter(|_| self.inner.config.enabled).map(|selection| {
            let (rt, stop) = (self.clone(), stop.clone());
            tokio::spawn(async move { rt.run_workers_for(&selection, stop).await })
        });
        self.inner.shutdown.register("workers", SHUTDOWN_WORKERS, move || async move {
            stop.cancel();
            let outcome = match workers {
                Some(handle) => handle.await.map_err(|e| format!("the workers' task failed: {e}")),
                None => Ok(WorkerReport::default()),
            };
            let _ = report.send(outcome.clone().unwrap_or_default());
            outcome.map(|_| ())
        });
        receiver
    }

    /// Runs the workers of `selection` until `shutdown` completes, then shuts the runtime down
    /// through its [`ShutdownManager`] (the workers, then whatever the app registered).
    pub async fn run_workers_until(
        &self,
        selection: WorkerSelection,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> WorkerReport {
        let report = self.register_workers(Some(selection));
        shutdown.await;
        tracing::info!("shutting down: no new claims, waiting for running jobs");
        log_shutdown(&self.inner.shutdown.shutdown().await);
        report.await.unwrap_or_default()
    }

    /// The process's shutdown sequence. `serve` registers the API (priority
    /// [`SHUTDOWN_API`]) and the workers ([`SHUTDOWN_WORKERS`]); register the app's own
    /// resources after them (a database pool at [`SHUTDOWN_APP`]) to close them once the last
    /// job is done. Its budget is the drain's (`shutdown_timeout`) plus 15 s to record and
    /// close. A runtime shuts down once: serve it once.
    pub fn shutdown_manager(&self) -> &ShutdownManager {
        &self.inner.shutdown
    }

    /// Stops claiming the topic's messages, in every process on this store (at once here, at
    /// their next heartbeat elsewhere). Running jobs finish; enqueues are still accepted.
    pub async fn pause_topic(&self, topic: &str) -> Result<(), StoreError> {
        let key = crate::kv::Key::from((crate::worker::PAUSED_PREFIX, topic));
        self.inner.store.kv().set(key, Vec::new()).await?;
        let mut paused = self.inner.paused.get();
        paused.insert(topic.to_owned());
        self.inner.paused.set(paused);
        Ok(())
    }

    /// Claims the topic's messages again.
    pub async fn resume_topic(&self, topic: &str) -> Result<(), StoreError> {
        let key = crate::kv::Key::from((crate::worker::PAUSED_PREFIX, topic));
        self.inner.store.kv().delete(key).await?;
        let mut paused = self.inner.paused.get();
        paused.remove(topic);
        self.inner.paused.set(paused);
        Ok(())
    }

    /// The paused topics, as this process last read them from the store.
    pub fn paused_topics(&self) -> std::collections::HashSet<String> {
        self.inner.paused.get()
    }

    /// Executions that finished (succeeded, dead or cancelled) in the last `window`, per
    /// topic, according to the store: what every process on it did, unlike
    /// [`Metrics::throughput`](crate::metrics::Metrics::throughput), which counts this
    /// process's workers. It reads the newest [`RECENT_SCAN`] records, so under a heavier flow
    /// it counts only the ones among them. Jobs this binary does not know are under `?`.
    pub async fn finished_per_topic(
        &self,
        window: Duration,
    ) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        let since = Timestamp::now().as_millis().saturating_sub(u64::try_from(window.as_millis()).unwrap_or(u64::MAX));
        let filter = ExecutionFilter { limit: Some(RECENT_SCAN), ..ExecutionFilter::default() };
        let mut out = std::collections::BTreeMap::new();
        for r in self.inner.store.list(&filter).await? {
            let finished =
                matches!(r.status, ExecutionStatus::Succeeded | ExecutionStatus::Dead | ExecutionStatus::Cancelled);
            if finished && r.finished_at.is_some_and(|t| t.as_millis() >= since) {
                let topic = self.inner.registry.get(&r.job_id).map_or("?", |j| j.topic);
                *out.entry(topic.to_owned()).or_default() += 1;
            }
        }
        Ok(out)
    }

    /// Cancels an execution: a waiting one is removed from the queue; a running one gets its
    /// cancellation signal and ends as cancelled (never retried). See [`CancelOutcome`].
    pub async fn cancel(&self, id: ExecutionId) -> Result<CancelOutcome, EnqueueError> {
        match self.inner.queue.cancel(id).await? {
            crate::queue::Cancelled::Removed => {
                if let Some(mut record) = self.inner.store.get(id).await? {
                    let now = Timestamp::now();
                    record.status = ExecutionStatus::Cancelled;
                    record.finished_at = Some(now);
                    record.retry_at = None;
                    record.updated_at = now;
                    self.inner.store.put_many(vec![record]).await?;
                }
                Ok(CancelOutcome::Cancelled)
            }
            crate::queue::Cancelled::Leased => {
                // Whichever process holds it sees this at its next heartbeat; this process's
                // dispatchers hear it now.
                let key = crate::kv::Key::from((crate::worker::CANCEL_PREFIX, id));
                self.inner
                    .store
                    .kv()
                    .set_with_ttl(key, Vec::new(), CANCEL_REQUEST_TTL)
                    .await
                    .map_err(|e| EnqueueError::Store(e.into()))?;
                let _ = self.inner.cancels.send(id);
                Ok(CancelOutcome::Cancelling)
            }
            crate::queue::Cancelled::NotFound => Ok(match self.inner.store.get(id).await? {
                Some(record) => CancelOutcome::Finished(record.status),
                None => CancelOutcome::NotFound,
            }),
        }
    }

    /// Moves a dead-lettered execution back to the queue, claimable at once with its attempts
    /// reset; its record returns to `queued` (earlier attempts stay in its history).
    /// `Ok(false)` when no dead letter has this id.
    pub async fn redrive(&self, id: ExecutionId) -> Result<bool, EnqueueError> {
        if !self.inner.queue.redrive(id).await? {
            return Ok(false);
        }
        if let Some(mut record) = self.inner.store.get(id).await? {
            record.status = ExecutionStatus::Queued;
            record.attempt = 0;
            record.finished_at = None;
            record.retry_at = None;
            record.started_at = None;
            record.updated_at = Timestamp::now();
            self.inner.store.put_many(vec![record]).await?;
        }
        Ok(true)
    }

    /// Re-drives every dead letter (up to `limit`); returns how many went back to the queue.
    pub async fn redrive_all(&self, limit: usize) -> Result<usize, EnqueueError> {
        let mut n = 0;
        for dead in self.inner.queue.dead_letters(limit).await? {
            if self.redrive(dead.message.id).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Waits until the execution reaches a final status (or `timeout`), returning its last
    /// record (`None` if it never got one). Works across processes: it watches this process's feed and re-reads the store.
    pub async fn wait_for(&self, id: ExecutionId, timeout: Duration) -> Result<Option<ExecutionRecord>, StoreError> {
        let mut feed = self.inner.store.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let record = self.inner.store.get(id).await?;
            // No record yet is not an answer: a message enqueued without one (through the
            // queue API) gets its record when a worker claims it.
            if record.as_ref().is_some_and(|r| r.status.is_final()) || tokio::time::Instant::now() >= deadline {
                return Ok(record);
            }
            let _ = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(100)),
                async {
                    loop {
                        match feed.recv().await {
                            Ok(r) if r.id == id => return,
                            Ok(_) => continue,
                            Err(_) => return,
                        }
                    }
                },
            )
            .await;
        }
    }
}

/// Resolves when the process gets SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
