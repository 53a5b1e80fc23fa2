//! Claims messages, runs them, keeps their leases alive, and drains on shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::policy::{Decision, decide};
use super::recorder::{End, Event, RecorderSink, Recorders};
use super::runner::{AttemptOutcome, InProcessRunner};
use crate::job::{ContextParts, JobContext, Registry, StateMap};
use crate::queue::{ClaimRequest, Delivery, Lease, MessageId, Queue, Settled, Settlement};
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
}

struct Shared {
    queue: Arc<dyn Queue>,
    store: ExecutionStore,
    registry: Registry,
    states: Arc<StateMap>,
    options: DispatcherOptions,
    runner: InProcessRunner,
    events: Recorders,
    sink: Arc<RecorderSink>,
    in_flight: Mutex<HashMap<MessageId, InFlight>>,
    /// Fired when the drain's grace period is over: running attempts are abandoned.
    abandon: CancellationToken,
}

/// Claims and runs jobs until stopped. See the [module docs](super).
pub struct Dispatcher {
    queue: Arc<dyn Queue>,
    store: ExecutionStore,
    registry: Registry,
    states: Arc<StateMap>,
    options: DispatcherOptions,
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
        Self { queue, store, registry, states, options }
    }

    /// Runs until `stop` fires, then stops claiming, waits up to the shutdown timeout for
    /// running attempts, abandons the rest (their messages go back to the queue) and
    /// flushes every record.
    pub async fn run(self, stop: CancellationToken) -> WorkerReport {
        let shards = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
        let (recorders, recorder_tasks) = Recorders::start(shards, &self.store, &self.queue);
        let shared = Arc::new(Shared {
            queue: self.queue,
            store: self.store,
            registry: self.registry,
            states: self.states,
            runner: InProcessRunner,
            sink: Arc::new(RecorderSink(recorders.clone())),
            events: recorders,
            in_flight: Mutex::new(HashMap::new()),
            abandon: CancellationToken::new(),
            options: self.options,
        });
        let concurrency = shared.options.concurrency.max(1);
        let slots = Arc::new(Semaphore::new(concurrency));
        let heartbeat = tokio::spawn(heartbeat(Arc::clone(&shared)));
        let mut report = WorkerReport::default();
        let mut claim_errors = 0u32;

        loop {
            let first = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                p = Arc::clone(&slots).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let mut permits = vec![first];
            while let Ok(p) = Arc::clone(&slots).try_acquire_owned() {
                permits.push(p);
            }
            let request = ClaimRequest {
                topics: shared.options.topics.clone(),
                max: permits.len(),
                lease: shared.options.lease,
            };
            let deliveries = match shared.queue.claim(request).await {
                Ok(d) => {
                    claim_errors = 0;
                    d
                }
                Err(e) => {
                    claim_errors = claim_errors.saturating_add(1);
                    let wait = Duration::from_millis(100 * u64::from(claim_errors.min(50)));
                    tracing::error!(error = %e, retry_in = ?wait, "claim failed");
                    drop(permits);
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(wait) => continue,
                    }
                }
            };
            if deliveries.is_empty() {
                drop(permits);
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = shared.queue.wait_for_work(shared.options.poll_interval) => continue,
                }
            }
            for delivery in deliveries {
                let Some(permit) = permits.pop() else { break };
                report.started += 1;
                tokio::spawn(run_one(Arc::clone(&shared), delivery, permit));
            }
        }

        // Drain: let running attempts finish within the grace period, then abandon them.
        let all = u32::try_from(concurrency).unwrap_or(u32::MAX);
        let drained =
            tokio::time::timeout(shared.options.shutdown_timeout, Arc::clone(&slots).acquire_many_owned(all)).await;
        if drained.is_err() {
            report.abandoned = shared.in_flight.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
            tracing::warn!(running = report.abandoned, "shutdown grace period over; giving running jobs back to the queue");
            shared.abandon.cancel();
            // Abandoned attempts end at once; wait for them to hand over their messages.
            let _ = Arc::clone(&slots).acquire_many_owned(all).await;
        }
        heartbeat.abort();
        // Every attempt has sent its end (see `run_one`); what a job's leaked context sends
        // after this has nowhere to go.
        shared.events.send(Event::Shutdown).await;
        drop(shared);
        for task in recorder_tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "execution recorder failed");
            }
        }
        report
    }
}

/// Runs one delivery to its end and tells the recorder.
async fn run_one(shared: Arc<Shared>, d: Delivery, permit: OwnedSemaphorePermit) {
    let Some(job) = shared.registry.get(&d.kind) else {
        let error = format!("no job `{}` is registered in this binary", d.kind);
        tracing::error!(execution = %d.id, "{error}");
        let record = started_record(&shared, &d, 1).await;
        shared.events.send(Event::Started(Box::new(record))).await;
        let settlement = Settlement::DeadLetter { lease: d.lease, error: error.clone() };
        shared.events.send(Event::Finished { id: d.id, end: End::Dead { error }, settlement: Some(settlement) }).await;
        drop(permit);
        return;
    };
    let stop = shared.abandon.child_token();
    shared
        .in_flight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(d.id, InFlight { lease: d.lease, stop: stop.clone() });

    let record = started_record(&shared, &d, job.max_attempts()).await;
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
    shared.events.send(Event::Started(Box::new(record))).await;

    let timeout = job.timeout.unwrap_or(shared.options.default_timeout);
    let outcome = shared.runner.run(job, ctx, &d.payload, &shared.states, timeout, &stop).await;
    shared.in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&d.id);

    let (end, settlement) = match outcome {
        AttemptOutcome::Succeeded(value) => (End::Succeeded(value), Some(Settlement::Ack(d.lease))),
        AttemptOutcome::Abandoned if shared.abandon.is_cancelled() => (End::Released, Some(Settlement::Release(d.lease))),
        AttemptOutcome::Abandoned => (End::Lost, None),
        failed => {
            let (error, fatal) = failed.error().unwrap_or_default();
            tracing::warn!(job = job.id, execution = %d.id, attempt = d.attempt, fatal, "attempt failed: {error}");
            match decide(job, d.attempt, fatal) {
                Decision::Retry { delay } => (
                    End::Retrying { error: error.clone(), retry_at: Timestamp::now().add(delay) },
                    Some(Settlement::Retry { lease: d.lease, delay, error }),
                ),
                Decision::DeadLetter => {
                    (End::Dead { error: error.clone() }, Some(Settlement::DeadLetter { lease: d.lease, error }))
                }
            }
        }
    };
    // Hand the end to the recorder before freeing the slot, so a drain that has every
    // slot back has every end too. Sending only queues it; the write happens in batches.
    shared.events.send(Event::Finished { id: d.id, end, settlement }).await;
    drop(permit);
}

/// The record of an attempt that is starting.
async fn started_record(shared: &Shared, d: &Delivery, max_attempts: u32) -> ExecutionRecord {
    let now = Timestamp::now();
    // A retry or a redelivery continues the record the earlier attempts wrote.
    let previous = if d.attempt > 1 { shared.store.get(d.id).await.ok().flatten() } else { None };
    let payload = serde_json::from_slice(&d.payload).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&d.payload).into_owned())
    });
    let correlation_id = d.header(CORRELATION_HEADER).map_or_else(|| d.id.to_string(), str::to_owned);
    let mut record = previous.unwrap_or_else(|| ExecutionRecord {
        id: d.id,
        job_id: d.kind.clone(),
        status: ExecutionStatus::Running,
        attempt: d.attempt,
        max_attempts,
        payload,
        result: None,
        error: None,
        progress: None,
        correlation_id,
        enqueued_at: d.enqueued_at,
        started_at: None,
        finished_at: None,
        retry_at: None,
        attempts: Vec::new(),
        updated_at: now,
    });
    record.status = ExecutionStatus::Running;
    record.attempt = d.attempt;
    record.started_at = Some(now);
    record.retry_at = None;
    record.progress = None;
    record.updated_at = now;
    record
}

/// Extends the leases of running attempts every third of the lease.
async fn heartbeat(shared: Arc<Shared>) {
    let every = shared.options.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let leases: Vec<Lease> =
            shared.in_flight.lock().unwrap_or_else(|e| e.into_inner()).values().map(|f| f.lease).collect();
        if leases.is_empty() {
            continue;
        }
        match shared.queue.extend(&leases, shared.options.lease).await {
            Ok(results) => {
                for (lease, result) in leases.iter().zip(results) {
                    if result == Settled::Stale {
                        tracing::warn!(execution = %lease.message_id, "lease lost to another worker; stopping this attempt");
                        if let Some(f) = shared.in_flight.lock().unwrap_or_else(|e| e.into_inner()).get(&lease.message_id) {
                            f.stop.cancel();
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "could not extend leases"),
        }
    }
}
