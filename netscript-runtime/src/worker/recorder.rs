//! Writes execution records and settles messages, in batches.
//!
//! Each batch is fenced, written, then settled. Fenced: an attempt whose lease may have lapsed
//! (more than half of it has passed since the claim or the last heartbeat extension was issued,
//! by this process's monotonic clock: the worker stalled, or its heartbeats failed) has its
//! lease extended first, all such leases in one call. A stale one (another worker holds the
//! message now) writes no record and settles nothing, so a job is never recorded as finished by
//! a worker that no longer holds it; the queue counts the refusal
//! (`QueueStats::stale_settlements`). The other attempts hold at least half a lease, which no
//! one else can claim while the write runs, so the common case costs no extra round trip.
//! Written before settled: a crash between the two re-runs the job rather than losing its
//! record.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::job::{Progress, ProgressSink};
use crate::queue::{Lease, Queue, Settled, Settlement};
use crate::store::{AttemptRecord, ExecutionId, ExecutionRecord, ExecutionStatus, ExecutionStore};
use crate::time::Timestamp;

/// The error recorded on an attempt stopped by `Runtime::cancel`.
const CANCELLED: &str = "cancelled on request";

/// Largest batch the recorder takes from its channel at once.
const MAX_BATCH: usize = 2048;

/// Something that happened to an execution.
#[derive(Debug)]
pub(crate) enum Event {
    /// An attempt has been running for a while; the record as it now stands (status
    /// running). Attempts that end sooner send only `Finished`.
    Started(Box<ExecutionRecord>),
    /// A progress report.
    Progress(ExecutionId, Progress),
    /// An attempt ended: the record as it started (used when no `Started` was sent), how
    /// to change it, how to settle the message, and when its lease was last renewed (`None`:
    /// unknown, so it is fenced).
    Finished { record: Box<ExecutionRecord>, end: End, settlement: Option<Settlement>, renewed: Option<Instant> },
    /// The dispatcher has drained: write what is left and stop.
    Shutdown,
}

/// How an attempt ended, as recorded.
#[derive(Debug)]
pub(crate) enum End {
    Succeeded(serde_json::Value),
    Retrying {
        error: String,
        retry_at: Timestamp,
    },
    Dead {
        error: String,
    },
    /// Given back unrun at shutdown: queued again.
    Released,
    /// Lost to another worker (stale lease): record nothing, the new holder will.
    Lost,
    /// Stopped on request (`Runtime::cancel`): not retried.
    Cancelled,
}

/// The recorder shards: one batching task per shard, each owning the executions whose id
/// maps to it, so record writes use every core while each execution's events stay in order.
#[derive(Clone)]
pub(crate) struct Recorders {
    shards: Vec<mpsc::Sender<Event>>,
}

impl Recorders {
    /// Starts `shards` recorder tasks; returns their senders and join handles.
    pub(crate) fn start(
        shards: usize,
        store: &ExecutionStore,
        queue: &Arc<dyn Queue>,
        lease: Duration,
    ) -> (Self, Vec<tokio::task::JoinHandle<()>>) {
        let mut senders = Vec::with_capacity(shards);
        let mut handles = Vec::with_capacity(shards);
        for _ in 0..shards.max(1) {
            let (tx, rx) = mpsc::channel(8192);
            senders.push(tx);
            handles.push(tokio::spawn(run(rx, store.clone(), Arc::clone(queue), lease)));
        }
        (Self { shards: senders }, handles)
    }

    fn shard(&self, id: ExecutionId) -> &mpsc::Sender<Event> {
        // The last bytes of a UUIDv7 are random.
        let i = usize::from(id.as_bytes()[15]) % self.shards.len();
        &self.shards[i]
    }

    /// Queues an event for its execution's shard. Fails only once the recorders stopped.
    pub(crate) async fn send(&self, event: Event) {
        let id = match &event {
            Event::Started(r) => r.id,
            Event::Progress(id, _) => *id,
            Event::Finished { record, .. } => record.id,
            Event::Shutdown => {
                for tx in &self.shards {
                    let _ = tx.send(Event::Shutdown).await;
                }
                return;
            }
        };
        let _ = self.shard(id).send(event).await;
    }
}

/// The progress sink jobs report to.
pub(crate) struct RecorderSink(pub Recorders);

#[async_trait]
impl ProgressSink for RecorderSink {
    async fn report(&self, execution: ExecutionId, progress: Progress) {
        self.0.send(Event::Progress(execution, progress)).await;
    }
}

/// Drains `rx` until every sender is dropped, fencing and writing each batch before settling
/// it (see the module docs).
async fn run(mut rx: mpsc::Receiver<Event>, store: ExecutionStore, queue: Arc<dyn Queue>, lease: Duration) {
    let mut live: HashMap<ExecutionId, ExecutionRecord> = HashMap::new();
    // Progress of attempts whose `Started` was not sent (yet): fast attempts skip it.
    let mut pending: HashMap<ExecutionId, Progress> = HashMap::new();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut open = true;
    while open && rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut dirty: Vec<ExecutionId> = Vec::new();
        let mut records: Vec<ExecutionRecord> = Vec::new();
        let mut settlements = Vec::new();
        for event in batch.drain(..) {
            match event {
                Event::Started(record) => {
                    let mut record = *record;
                    if let Some(p) = pending.remove(&record.id) {
                        record.progress = Some(p);
                    }
                    dirty.push(record.id);
                    live.insert(record.id, record);
                }
                Event::Progress(id, progress) => match live.get_mut(&id) {
                    Some(r) => {
                        r.progress = Some(progress);
                        r.updated_at = Timestamp::now();
                        dirty.push(id);
                    }
                    None => {
                        pending.insert(id, progress);
                    }
                },
                Event::Finished { record, end, settlement, renewed } => {
                    let id = record.id;
                    let progress = pending.remove(&id);
                    // The live record has the progress seen so far; without one, this is an
                    // attempt that ended before its `Started` was due.
                    let mut r = live.remove(&id).unwrap_or(*record);
                    if progress.is_some() {
                        r.progress = progress;
                    }
                    if apply_end(&mut r, end) {
                        records.push(r);
                    }
                    settlements.extend(settlement.map(|s| (s, renewed)));
                }
                Event::Shutdown => open = false,
            }
        }
        if !fence(queue.as_ref(), lease, &mut records, &mut settlements).await {
            continue;
        }
        let settlements: Vec<Settlement> = settlements.into_iter().map(|(s, _)| s).collect();
        dirty.sort_unstable();
        dirty.dedup();
        // Finished records were moved into `records`; the ones still live are copied.
        records.extend(dirty.iter().filter_map(|id| live.get(id).cloned()));
        if let Err(e) = store.put_many(records).await {
            // Leave the messages unsettled: their leases lapse and the jobs run again, so
            // nothing is lost (at least once).
            tracing::error!(error = %e, count = settlements.len(), "could not write execution records; their jobs will be retried");
            continue;
        }
        if settlements.is_empty() {
            continue;
        }
        match queue.settle(settlements).await {
            Ok(results) => {
                let stale = results.iter().filter(|r| **r == crate::queue::Settled::Stale).count();
                if stale > 0 {
                    tracing::warn!(
                        stale,
                        "settlements refused: their leases had lapsed and the jobs were claimed again"
                    );
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "could not settle messages; their leases will lapse and the jobs run again")
            }
        }
    }
}

/// Extends the leases of the attempts that ended whose lease may have lapsed, and drops the
/// records and settlements of those whose lease is stale. `false` when the queue could not be
/// asked: the batch is then neither written nor settled, its leases lapse and its jobs run
/// again (at least once).
async fn fence(
    queue: &dyn Queue,
    lease: Duration,
    records: &mut Vec<ExecutionRecord>,
    settlements: &mut Vec<(Settlement, Option<Instant>)>,
) -> bool {
    let doubtful = |renewed: &Option<Instant>| renewed.is_none_or(|at| at.elapsed() > lease / 2);
    let leases: Vec<Lease> = settlements.iter().filter(|(_, r)| doubtful(r)).map(|(s, _)| *s.lease()).collect();
    if leases.is_empty() {
        return true;
    }
    let results = match queue.extend(&leases, lease).await {
        Ok(results) => results,
        Err(e) => {
            tracing::error!(error = %e, count = leases.len(), "could not check leases before recording; their jobs will run again");
            return false;
        }
    };
    let stale: HashSet<crate::queue::MessageId> =
        leases.iter().zip(&results).filter(|(_, r)| **r == Settled::Stale).map(|(l, _)| l.message_id).collect();
    if !stale.is_empty() {
        tracing::warn!(
            stale = stale.len(),
            "results refused: their leases had lapsed and another worker holds the jobs; nothing recorded for them"
        );
        settlements.retain(|(s, _)| !stale.contains(&s.lease().message_id));
        records.retain(|r| !stale.contains(&r.id));
    }
    true
}

/// Applies an attempt's end to its record; `false` when nothing should be written.
fn apply_end(r: &mut ExecutionRecord, end: End) -> bool {
    let now = Timestamp::now();
    let started_at = r.started_at.unwrap_or(now);
    let mut attempt = AttemptRecord { attempt: r.attempt, started_at, finished_at: now, error: None };
    match end {
        End::Succeeded(value) => {
            r.status = ExecutionStatus::Succeeded;
            r.result = Some(value);
            r.error = None;
            r.finished_at = Some(now);
            r.retry_at = None;
        }
        End::Retrying { error, retry_at } => {
            r.status = ExecutionStatus::Retrying;
            attempt.error = Some(error.clone());
            r.error = Some(error);
            r.retry_at = Some(retry_at);
        }
        End::Dead { error } => {
            r.status = ExecutionStatus::Dead;
            attempt.error = Some(error.clone());
            r.error = Some(error);
            r.finished_at = Some(now);
            r.retry_at = None;
        }
        End::Released => {
            r.status = ExecutionStatus::Queued;
            r.attempt = r.attempt.saturating_sub(1);
            r.started_at = None;
            r.updated_at = now;
            return true;
        }
        End::Lost => return false,
        End::Cancelled => {
            r.status = ExecutionStatus::Cancelled;
            attempt.error = Some(CANCELLED.to_owned());
            r.error = Some(CANCELLED.to_owned());
            r.finished_at = Some(now);
            r.retry_at = None;
        }
    }
    r.attempts.push(attempt);
    r.updated_at = now;
    true
}
