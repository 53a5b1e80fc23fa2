//! Claims messages, runs them, keeps their leases alive, and drains on shutdown.
//!
//! When the queue's backend goes away, failed claims are tried again after 50 ms, doubling to
//! 2 s, with one warning per outage and one "reconnected" line when a claim works again; the
//! backends reconnect by themselves. Attempts that end meanwhile are kept by the recorder
//! until they can be written and settled (see its module docs).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use super::policy::{Decision, decide};
use super::recorder::{End, Event, Recorder, RecorderSink};
use super::runner::{AttemptOutcome, Runner};
use crate::job::{ContextParts, JobContext, Registry, StateMap};
use crate::metrics::{AttemptEnd, Metrics};
use crate::queue::{ClaimRequest, Delivery, IdMap, IdSet, Lease, MessageId, Queue, Settled, Settlement};
use crate::store::{ExecutionRecord, ExecutionStatus, ExecutionStore};
use crate::time::Timestamp;

/// Header carrying the correlation id.
pub const CORRELATION_HEADER: &str = "correlation-id";
/// Header carrying the W3C traceparent.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// Header carrying the W3C tracestate.
pub const TRACESTATE_HEADER: &str = "tracestate";

/// How a dispatcher works.
#[derive(Clone, Debug)]
pub struct DispatcherOptions {
    /// Attempts run at once.
    pub concurrency: usize,
    /// Topics to claim from; empty for all.
    pub topics: Vec<String>,
    /// Claim lease; extended every third of it while the job runs.
    pub lease: Duration,
    /// Timeout of jobs that declare none.
    pub default_timeout: Duration,
    /// How long a drain waits for running jobs before abandoning them.
    pub shutdown_timeout: Duration,
    /// Longest idle wait between claims.
    pub poll_interval: Duration,
}

/// What a dispatcher did, returned when it stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Attempts started.
    pub started: u64,
    /// Attempts still running at the end of the grace period, whose messages were given
    /// back to the queue.
    pub abandoned: u64,
}

struct InFlight {
    lease: Lease,
    stop: CancellationToken,
    /// When the call that granted the lease its current expiry was issued (the claim, then
    /// each heartbeat's extension): the lease holds at least until this plus the lease.
    renewed: std::time::Instant,
}

/// How long an attempt runs before its record is shown as running.
const RUNNING_AFTER: Duration = Duration::from_millis(10);

/// Claims are shared by every slot through a local buffer, and sized to what the slots can
/// start within this window at the recent pace: short jobs are claimed by the dozen (one
/// queue round trip per batch), long ones one per free slot, so a busy worker never sits on
/// messages another worker could run.
const PREFETCH_WINDOW: Duration = Duration::from_millis(20);
/// Most claims per slot in one batch.
const MAX_PREFETCH: u64 = 32;
/// Claims per slot before any attempt has been timed.
const INITIAL_PREFETCH: u64 = 4;

struct Shared {
    queue: Arc<dyn Queue>,
    store: ExecutionStore,
    registry: Registry,
    states: Arc<StateMap>,
    options: DispatcherOptions,
    runner: Runner,
    events: Recorder,
    sink: Arc<RecorderSink>,
    in_flight: Mutex<IdMap<InFlight>>,
    /// Claimed and not yet started, shared by the slots.
    buffer: Mutex<VecDeque<Delivery>>,
    /// Held by the one slot that is claiming more.
    refilling: tokio::sync::Mutex<()>,
    /// Wakes idle slots when the buffer was refilled or the dispatcher stops.
    refilled: Notify,
    stop: CancellationToken,
    /// Set when the drain's grace period is over: running attempts are abandoned.
    abandon: CancellationToken,
    started: AtomicU64,
    /// Claims failed in a row (0: claims work).
    claim_errors: AtomicU32,
    /// When the claims started failing, while they do.
    outage: Mutex<Option<std::time::Instant>>,
    /// Heartbeats failed in a row (0: they work).
    heartbeat_errors: AtomicU32,
    /// Moving average of attempt run time, in nanoseconds (0 until the first attempt).
    pace_ns: AtomicU64,
    /// Executions asked to stop (`Runtime::cancel`) whose claim this dispatcher holds.
    cancelled: Mutex<IdSet>,
    /// Topics not to claim from.
    paused: Arc<PausedTopics>,
    /// Counters and histograms of this process's attempts.
    metrics: Arc<Metrics>,
}

impl Shared {
    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, IdMap<InFlight>> {
        // Entries are inserted and removed whole; a poisoned lock still holds a valid map.
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many messages to claim: what the slots start within [`PREFETCH_WINDOW`].
    fn claim_size(&self) -> usize {
        claim_size(self.options.concurrency, self.pace_ns.load(Ordering::Relaxed))
    }

    /// Folds one attempt's run time into the moving average (weight 1/8).
    fn record_pace(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
        let old = self.pace_ns.load(Ordering::Relaxed);
        let new = if old == 0 { ns } else { old - old / 8 + ns / 8 };
        self.pace_ns.store(new.max(1), Ordering::Relaxed);
    }

    /// Stops a claimed execution on request: it ends as cancelled, its message acked. `false`
    /// when this dispatcher does not hold it.
    fn cancel_claimed(&self, id: MessageId) -> bool {
        let token = self.lock_in_flight().get(&id).map(|f| f.stop.clone());
        let Some(token) = token else { return false };
        self.cancelled.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
        token.cancel();
        true
    }

    fn take_cancelled(&self, id: MessageId) -> bool {
        self.cancelled.lock().unwrap_or_else(|e| e.into_inner()).remove(&id)
    }

    /// Notes a failed claim; returns how long to wait before the next one (50 ms doubling to
    /// 2 s). Warns at the first failure of an outage only.
    fn claim_failed(&self, e: &crate::queue::QueueError) -> Duration {
        let n = self.claim_errors.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let wait = claim_backoff(n);
        if n == 1 {
            *self.outage.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
            tracing::warn!(
                error = %e,
                provider = self.queue.provider(),
                "cannot claim jobs: the queue's backend is unreachable; trying again with backoff until it is back"
            );
        } else {
            tracing::debug!(error = %e, tries = n, retry_in = ?wait, "claim failed again");
        }
        wait
    }

    /// Notes a claim that worked: logs once that claims work again after an outage.
    fn claims_work(&self) {
        let failed = self.claim_errors.swap(0, Ordering::Relaxed);
        if failed == 0 {
            return;
        }
        let since = self.outage.lock().unwrap_or_else(|e| e.into_inner()).take();
        tracing::info!(
            provider = self.queue.provider(),
            failed_claims = failed,
            outage = ?since.map(|t| t.elapsed()),
            "reconnected: claiming jobs again"
        );
    }

    fn lock_buffer(&self) -> std::sync::MutexGuard<'_, VecDeque<Delivery>> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Claims and runs jobs until stopped. See the [module docs](super).
pub struct Dispatcher {
    queue: Arc<dyn Queue>,
    store: ExecutionStore,
    registry: Registry,
    states: Arc<StateMap>,
    options: DispatcherOptions,
    cancels: Option<broadcast::Receiver<MessageId>>,
    paused: Arc<PausedTopics>,
    runner: Runner,
    metrics: Arc<Metrics>,
}

impl Dispatcher {
    /// A dispatcher over these parts.
    pub fn new(
        queue: Arc<dyn Queue>,
        store: ExecutionStore,
        registry: Registry,
        states: Arc<StateMap>,
        options: DispatcherOptions,
    ) -> Self {
        Self {
            queue,
            store,
            registry,
            states,
            options,
            cancels: None,
            paused: Arc::default(),
            runner: Runner::default(),
            metrics: Arc::default(),
        }
    }

    /// Counts attempts in `metrics` (a private set by default).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs attempts on `runner` (in process by default).
    pub fn with_runner(mut self, runner: Runner) -> Self {
        self.runner = runner;
        self
    }

    /// Skips the topics in `paused` while they are in it.
    pub fn with_paused_topics(mut self, paused: Arc<PausedTopics>) -> Self {
        self.paused = paused;
        self
    }

    /// Stops the executions sent here at once, when this dispatcher holds them. Requests from
    /// other processes arrive through the store (see [`CANCEL_PREFIX`]) at the next heartbeat.
    pub fn with_cancel_requests(mut self, requests: broadcast::Receiver<MessageId>) -> Self {
        self.cancels = Some(requests);
        self
    }

    /// Runs until `stop` fires, then stops claiming, waits up to the shutdown timeout for
    /// running attempts, abandons the rest (their messages go back to the queue) and
    /// flushes every record.
    ///
    /// `concurrency` slot tasks each run attempts one after another. A slot that finds the
    /// local buffer empty claims the next batch for everyone (one claimer at a time), so a
    /// busy queue costs one claim per batch rather than one per job, and no task is spawned
    /// per job.
    pub async fn run(self, stop: CancellationToken) -> WorkerReport {
        let (recorder, recorder_task) = Recorder::start(&self.store, &self.queue, self.options.lease);
        let shared = Arc::new(Shared {
            queue: self.queue,
            store: self.store,
            registry: self.registry,
            states: self.states,
            runner: self.runner,
            sink: Arc::new(RecorderSink(recorder.clone())),
            events: recorder,
            in_flight: Mutex::new(IdMap::default()),
            buffer: Mutex::new(VecDeque::new()),
            refilling: tokio::sync::Mutex::new(()),
            refilled: Notify::new(),
            stop: stop.clone(),
            abandon: CancellationToken::new(),
            started: AtomicU64::new(0),
            claim_errors: AtomicU32::new(0),
            outage: Mutex::new(None),
            heartbeat_errors: AtomicU32::new(0),
            pace_ns: AtomicU64::new(0),
            cancelled: Mutex::new(IdSet::default()),
            paused: self.paused,
            metrics: self.metrics,
            options: self.options,
        });
        let concurrency = shared.options.concurrency.max(1);
        let heartbeat = tokio::spawn(heartbeat(Arc::clone(&shared)));
        let listener = self.cancels.map(|mut requests| {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                loop {
                    match requests.recv().await {
                        Ok(id) => {
                            shared.cancel_claimed(id);
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            })
        });
        let mut slots: Vec<_> = (0..concurrency).map(|_| tokio::spawn(slot(Arc::clone(&shared)))).collect();

        stop.cancelled().await;
        shared.refilled.notify_waiters();
        let mut report = WorkerReport::default();
        // Drain: let running attempts finish within the grace period, then abandon them.
        let mut joined = 0;
        let drained = tokio::time::timeout(shared.options.shutdown_timeout, async {
            for s in &mut slots {
                let _ = s.await;
                joined += 1;
            }
        })
        .await;
        if drained.is_err() {
            let waiting: IdSet = shared.lock_buffer().iter().map(|d| d.id).collect();
            let running: Vec<CancellationToken> = shared
                .lock_in_flight()
                .iter()
                .filter(|(id, _)| !waiting.contains(id))
                .map(|(_, f)| f.stop.clone())
                .collect();
            report.abandoned = running.len() as u64;
            tracing::warn!(
                running = report.abandoned,
                "shutdown grace period over; giving running jobs back to the queue"
            );
            shared.abandon.cancel();
            for token in running {
                token.cancel();
            }
            // Handles before `joined` completed and were awaited already.
            for s in slots.into_iter().skip(joined) {
                let _ = s.await;
            }
        }
        // Claimed but never started: give them back untouched.
        let unstarted: Vec<Settlement> = shared.lock_buffer().drain(..).map(|d| Settlement::Release(d.lease)).collect();
        if !unstarted.is_empty()
            && let Err(e) = shared.queue.settle(unstarted).await
        {
            tracing::error!(error = %e, "could not give back prefetched messages; their leases will lapse");
        }
        heartbeat.abort();
        if let Some(listener) = listener {
            listener.abort();
        }
        // Every attempt has sent its end (see `run_one`); what a job's leaked context sends
        // after this has nowhere to go.
        shared.events.send(Event::Shutdown).await;
        report.started = shared.started.load(Ordering::Relaxed);
        drop(shared);
        if let Err(e) = recorder_task.await {
            tracing::error!(error = %e, "execution recorder failed");
        }
        report
    }
}

/// One slot: runs buffered deliveries one after another; refills the buffer when it is
/// empty and no other slot is refilling; otherwise waits for the refill.
async fn slot(shared: Arc<Shared>) {
    loop {
        if shared.stop.is_cancelled() {
            return;
        }
        let next = shared.lock_buffer().pop_front();
        if let Some(delivery) = next {
            shared.started.fetch_add(1, Ordering::Relaxed);
            run_one(&shared, delivery).await;
            continue;
        }
        let refilled = shared.refilled.notified();
        tokio::pin!(refilled);
        refilled.as_mut().enable();
        match shared.refilling.try_lock() {
            Ok(_claiming) => refill(&shared).await,
            Err(_) => {
                // Another slot is claiming; it wakes us when it has something.
                tokio::select! {
                    () = refilled => {}
                    () = shared.stop.cancelled() => return,
                }
            }
        }
    }
}

/// Claims the next batch into the buffer, or waits for work when there is none.
async fn refill(shared: &Shared) {
    if !shared.lock_buffer().is_empty() {
        // Filled while this slot was getting the lock: let the waiting slots at it.
        shared.refilled.notify_waiters();
        return;
    }
    let paused = shared.paused.get();
    let topics = if paused.is_empty() {
        shared.options.topics.clone()
    } else {
        let all: Vec<String> = if shared.options.topics.is_empty() {
            shared.registry.topics().into_iter().map(str::to_owned).collect()
        } else {
            shared.options.topics.clone()
        };
        let open: Vec<String> = all.into_iter().filter(|t| !paused.contains(t)).collect();
        if open.is_empty() {
            // Every topic is paused: wait for a resume (or the poll interval, for one
            // made in another process and seen at the next heartbeat).
            tokio::select! {
                () = shared.stop.cancelled() => {}
                () = shared.paused.changed.notified() => {}
                () = tokio::time::sleep(shared.options.poll_interval) => {}
            }
            return;
        }
        open
    };
    let request = ClaimRequest { topics, max: shared.claim_size(), lease: shared.options.lease };
    let issued = std::time::Instant::now();
    match shared.queue.claim(request).await {
        Ok(deliveries) if deliveries.is_empty() => {
            shared.claims_work();
            tokio::select! {
                () = shared.stop.cancelled() => {}
                () = shared.queue.wait_for_work(shared.options.poll_interval) => {}
            }
        }
        Ok(deliveries) => {
            shared.claims_work();
            let mut in_flight = shared.lock_in_flight();
            // Prefetched claims are kept alive by the heartbeat like running ones.
            for d in &deliveries {
                in_flight.insert(d.id, InFlight { lease: d.lease, stop: CancellationToken::new(), renewed: issued });
            }
            drop(in_flight);
            shared.lock_buffer().extend(deliveries);
            shared.refilled.notify_waiters();
        }
        Err(e) => {
            let wait = shared.claim_failed(&e);
            tokio::select! {
                () = shared.stop.cancelled() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The pause after the `failures`-th failed claim in a row: 50 ms doubling to 2 s.
fn claim_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(6);
    (Duration::from_millis(50) * (1 << doublings)).min(Duration::from_secs(2))
}

/// Claims for `concurrency` slots whose attempts take `pace_ns` on average (0: unknown).
fn claim_size(concurrency: usize, pace_ns: u64) -> usize {
    let per_slot = match pace_ns {
        0 => INITIAL_PREFETCH,
        ns => (u64::try_from(PREFETCH_WINDOW.as_nanos()).unwrap_or(u64::MAX) / ns).clamp(1, MAX_PREFETCH),
    };
    concurrency.max(1).saturating_mul(usize::try_from(per_slot).unwrap_or(1))
}

/// Runs one delivery to its end and tells the recorder, inside a `dispatch` span (job id,
/// execution id, attempt, queue provider, outcome) in the trace of the message's enqueue.
async fn run_one(shared: &Shared, d: Delivery) {
    // On the trace target: exported, kept out of the log (no cost there when not exported).
    let span = tracing::info_span!(
        target: crate::telemetry::EVENTS_TARGET,
        "dispatch",
        job.id = %d.kind,
        execution.id = %d.id,
        attempt = i64::from(d.attempt),
        queue.provider = shared.queue.provider(),
        outcome = tracing::field::Empty,
    );
    crate::telemetry::set_remote_parent(&span, d.header(TRACEPARENT_HEADER), d.header(TRACESTATE_HEADER));
    let outcome = tracing::Instrument::instrument(dispatch(shared, d), span.clone()).await;
    span.record("outcome", outcome);
}

impl End {
    /// The name of this end, for spans.
    fn name(&self) -> &'static str {
        match self {
            End::Succeeded(_) => "succeeded",
            End::Retrying { .. } => "retrying",
            End::Dead { .. } => "dead",
            End::Released => "released",
            End::Lost => "lost",
            End::Cancelled => "cancelled",
        }
    }
}

/// [`run_one`]'s work; returns how the attempt ended.
async fn dispatch(shared: &Shared, d: Delivery) -> &'static str {
    let Some(job) = shared.registry.get(&d.kind) else {
        let renewed = shared.lock_in_flight().remove(&d.id).map(|f| f.renewed);
        let error = format!("no job `{}` is registered in this binary", d.kind);
        tracing::error!(execution = %d.id, "{error}");
        let record = Box::new(started_record(shared, &d, 1).await);
        let settlement = Settlement::DeadLetter { lease: d.lease, error: error.clone() };
        shared
            .events
            .send(Event::Finished { record, end: End::Dead { error }, settlement: Some(settlement), renewed })
            .await;
        return "dead";
    };
    let stop = match shared.lock_in_flight().get(&d.id) {
        Some(f) => f.stop.clone(),
        None => CancellationToken::new(),
    };

    let record = started_record(shared, &d, job.max_attempts()).await;
    let ctx = JobContext::new(
        ContextParts {
            execution_id: d.id,
            job_id: job.id.to_owned(),
            attempt: d.attempt,
            max_attempts: job.max_attempts(),
            correlation_id: Some(record.correlation_id.clone()),
            traceparent: d.header(TRACEPARENT_HEADER).map(str::to_owned),
            tracestate: d.header(TRACESTATE_HEADER).map(str::to_owned),
        },
        stop.clone(),
        Arc::clone(&shared.sink) as _,
    );
    if stop.is_cancelled() && shared.take_cancelled(d.id) {
        // Cancelled while it waited in the prefetch buffer: never started.
        let renewed = shared.lock_in_flight().remove(&d.id).map(|f| f.renewed);
        shared
            .events
            .send(Event::Finished {
                record: Box::new(record),
                end: End::Cancelled,
                settlement: Some(Settlement::Ack(d.lease)),
                renewed,
            })
            .await;
        return "cancelled";
    }
    // A second handle on the attempt's span only for the telemetry hooks, which do nothing
    // when nothing is exported (each handle costs the log's registry a lookup or two).
    let span = if crate::telemetry::exporting() { ctx.span().clone() } else { tracing::Span::none() };
    crate::telemetry::attempt_started(&span, shared.queue.provider());
    let timeout = job.timeout.unwrap_or(shared.options.default_timeout);
    let metrics = shared.metrics.topic(job.topic);
    let pickup = (d.attempt == 1).then(|| Timestamp::now().since(d.enqueued_at));
    shared.metrics.attempt_started(&metrics, pickup);
    let began = std::time::Instant::now();
    let run = shared.runner.run(job, ctx, &d.payload, &shared.states, timeout, &stop);
    tokio::pin!(run);
    // Most jobs end within milliseconds; their record goes straight from queued to its end
    // in one write. Longer ones are shown running once they pass `RUNNING_AFTER`.
    let outcome = match tokio::time::timeout(RUNNING_AFTER, &mut run).await {
        Ok(outcome) => outcome,
        Err(_) => {
            shared.events.send(Event::Started(Box::new(record.clone()))).await;
            run.await
        }
    };
    shared.record_pace(began.elapsed());
    crate::telemetry::attempt_ended(&span, &outcome);
    let renewed = shared.lock_in_flight().remove(&d.id).map(|f| f.renewed);

    // A cancel request wins over however the run ended, unless it finished its work: a job
    // that sees its signal usually returns an error at once, which must not be retried.
    let cancelled = shared.take_cancelled(d.id);
    let (end, settlement) = match outcome {
        AttemptOutcome::Succeeded(value) => (End::Succeeded(value), Some(Settlement::Ack(d.lease))),
        _ if cancelled => (End::Cancelled, Some(Settlement::Ack(d.lease))),
        // Past the shutdown's grace period every unfinished attempt goes back to the queue,
        // however it ended: a job that obeys its cancellation signal returns an error first,
        // and that error is the shutdown's doing, not the job's.
        _ if shared.abandon.is_cancelled() => (End::Released, Some(Settlement::Release(d.lease))),
        AttemptOutcome::Abandoned => (End::Lost, None),
        failed => {
            let (error, fatal) = failed.error().unwrap_or_default();
            tracing::warn!(job = job.id, execution = %d.id, attempt = d.attempt, fatal, "attempt failed: {error}");
            match decide(job, d.attempt, fatal) {
                Decision::Retry { delay } => (
                    End::Retrying { error: error.clone(), retry_at: Timestamp::now().plus(delay) },
                    Some(Settlement::Retry { lease: d.lease, delay, error }),
                ),
                Decision::DeadLetter => {
                    (End::Dead { error: error.clone() }, Some(Settlement::DeadLetter { lease: d.lease, error }))
                }
            }
        }
    };
    let counted = match &end {
        End::Succeeded(_) => AttemptEnd::Succeeded,
        End::Retrying { .. } => AttemptEnd::Retried,
        End::Dead { .. } => AttemptEnd::Dead,
        End::Cancelled => AttemptEnd::Cancelled,
        End::Released | End::Lost => AttemptEnd::Other,
    };
    shared.metrics.attempt_ended(&metrics, began.elapsed(), counted);
    let name = end.name();
    // Sending only queues the end; the write happens in batches. A drain that has every
    // slot back has every end too.
    shared.events.send(Event::Finished { record: Box::new(record), end, settlement, renewed }).await;
    name
}

/// The record of an attempt that is starting.
async fn started_record(shared: &Shared, d: &Delivery, max_attempts: u32) -> ExecutionRecord {
    let now = Timestamp::now();
    // A retry or a redelivery continues the record the earlier attempts wrote.
    let previous = if d.attempt > 1 { shared.store.get(d.id).await.ok().flatten() } else { None };
    let mut record = previous.unwrap_or_else(|| {
        let payload = serde_json::from_slice(&d.payload)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&d.payload).into_owned()));
        let correlation_id = d.header(CORRELATION_HEADER).map(str::to_owned);
        ExecutionRecord::queued(d.id, d.kind.clone(), payload, max_attempts, correlation_id, d.enqueued_at)
    });
    record.status = ExecutionStatus::Running;
    record.attempt = d.attempt;
    record.started_at = Some(now);
    record.retry_at = None;
    record.progress = None;
    record.updated_at = now;
    record
}

/// Key prefix of paused topics in the key-value store: `("paused", topic)`.
pub const PAUSED_PREFIX: &str = "paused";

/// Topics whose messages are not claimed for now. Shared by a runtime and its dispatchers:
/// a pause in this process takes effect at once; the store (see [`PAUSED_PREFIX`]) carries
/// pauses to other processes, which re-read it at every heartbeat.
#[derive(Debug, Default)]
pub struct PausedTopics {
    topics: Mutex<HashSet<String>>,
    changed: Notify,
}

impl PausedTopics {
    /// The paused topics.
    pub fn get(&self) -> HashSet<String> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the set; wakes idle dispatchers when it changed.
    pub fn set(&self, topics: HashSet<String>) {
        let mut current = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        if *current != topics {
            *current = topics;
            drop(current);
            self.changed.notify_waiters();
        }
    }

    /// Re-reads the set from the store.
    pub async fn reload(&self, kv: &dyn crate::kv::Kv) -> Result<(), crate::kv::KvError> {
        let options = crate::kv::ListOptions::prefix(crate::kv::Key::from((PAUSED_PREFIX,))).limit(10_000);
        let topics = kv
            .list(options)
            .await?
            .into_iter()
            .filter_map(|e| match e.key.parts().get(1) {
                Some(crate::kv::KeyPart::String(t)) => Some(t.clone()),
                _ => None,
            })
            .collect();
        self.set(topics);
        Ok(())
    }
}

/// Key prefix of cancel requests in the key-value store: `("cancel", execution id)`, set by
/// `Runtime::cancel` for a leased execution so that whichever process holds it stops it.
pub const CANCEL_PREFIX: &str = "cancel";

/// Stops held executions that were asked to stop from any process.
async fn cancel_requested_in_store(shared: &Shared) {
    let options = crate::kv::ListOptions::prefix(crate::kv::Key::from((CANCEL_PREFIX,))).limit(1000);
    match shared.store.kv().list(options).await {
        Ok(entries) => {
            for entry in entries {
                if let Some(crate::kv::KeyPart::Bytes(b)) = entry.key.parts().get(1)
                    && let Ok(uuid) = uuid::Uuid::from_slice(b)
                {
                    shared.cancel_claimed(MessageId(uuid));
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not read cancel requests"),
    }
}

/// Extends the leases of running attempts every third of the lease.
async fn heartbeat(shared: Arc<Shared>) {
    let every = shared.options.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = shared.paused.reload(shared.store.kv().as_ref()).await {
            tracing::warn!(error = %e, "could not read paused topics");
        }
        if shared.lock_in_flight().is_empty() {
            continue;
        }
        cancel_requested_in_store(&shared).await;
        // Read after the store calls, which may take long while a backend is away: an attempt
        // that ended meanwhile is settled, and extending its lease would look like a lost one.
        let leases: Vec<Lease> = shared.lock_in_flight().values().map(|f| f.lease).collect();
        if leases.is_empty() {
            continue;
        }
        let issued = std::time::Instant::now();
        match shared.queue.extend(&leases, shared.options.lease).await {
            Ok(results) => {
                let failed = shared.heartbeat_errors.swap(0, Ordering::Relaxed);
                if failed > 0 {
                    tracing::info!(failed_heartbeats = failed, "leases extended again");
                }
                for (lease, result) in leases.iter().zip(results) {
                    let mut in_flight = shared.lock_in_flight();
                    // Ended while the extension ran: nothing to renew or stop.
                    let Some(f) = in_flight.get_mut(&lease.message_id).filter(|f| f.lease == *lease) else { continue };
                    if result == Settled::Ok {
                        f.renewed = issued;
                    } else {
                        tracing::warn!(execution = %lease.message_id, "lease lost to another worker; stopping this attempt");
                        f.stop.cancel();
                    }
                }
            }
            Err(e) => {
                // Once per outage: the claims report it too, and the recorder keeps what finishes.
                if shared.heartbeat_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(error = %e, leases = leases.len(), "could not extend leases; trying again at the next heartbeat");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_follow_the_pace_of_recent_attempts() {
        assert_eq!(claim_size(2, 0), 8, "unknown pace: a few per slot");
        assert_eq!(claim_size(2, 1_000), 64, "microsecond jobs: the most per slot");
        assert_eq!(claim_size(2, 1_000_000), 40, "1 ms jobs: 20 ms worth per slot");
        assert_eq!(claim_size(2, 5_000_000_000), 2, "slow jobs: one per slot");
        assert_eq!(claim_size(0, 0), 4, "concurrency is at least one");
    }

    #[test]
    fn failed_claims_back_off_from_50_ms_to_2_s() {
        let waits: Vec<u128> = (1..=9).map(|n| claim_backoff(n).as_millis()).collect();
        assert_eq!(waits, [50, 100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(claim_backoff(u32::MAX), Duration::from_secs(2));
    }
}
