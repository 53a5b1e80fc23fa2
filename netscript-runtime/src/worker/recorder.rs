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
//!
//! When the queue or the store fails (a broker restarting, a connection cut), the batch is
//! kept and tried again with backoff (50 ms doubling to 2 s) for as long as one of its leases
//! can still be valid (its last renewal plus the lease, by the local clock), so a result
//! produced while a broker is away is recorded once it is back instead of the job running
//! again. A try that failed before the records were written fences every lease of the batch
//! on the next one, not only the doubtful ones: the outage may have outlasted a lease, and a
//! job another worker took over meanwhile is then dropped here (its new holder records it)
//! rather than recorded twice. A successful fence dates the lease from that extension. Once
//! the records are written, only the settlement is tried again: it carries the fencing token,
//! so one that comes too late is refused, and the job runs again (at least once) over a
//! record that was written while the lease held. Past the last lease the batch is given up
//! with an error: its jobs run again. While the recorder retries, its channel fills and the
//! dispatcher's slots wait to send their ends, so no more work is started than can be
//! recorded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::job::{Progress, ProgressSink};
use crate::queue::{IdMap, IdSet, Lease, Queue, Settled, Settlement};
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

/// The recorder: one batching task that writes every execution's records and settles its
/// messages, so each execution's events stay in order.
///
/// One task, not one per core: batches are the unit the backends are fast with, and two
/// recorders each write half-size ones. Measured on two cores with the throughput benchmark
/// (docs/BENCHMARKS.md, "One recorder"): one recorder against two sharded by execution id
/// drains 15% more no-op jobs a second on postgres, 27% more on amqp, 14% more on memory,
/// 7% more on embedded, the same on redis.
#[derive(Clone)]
pub(crate) struct Recorder {
    events: mpsc::Sender<Event>,
}

impl Recorder {
    /// Starts the recorder task; returns its sender and join handle.
    pub(crate) fn start(
        store: &ExecutionStore,
        queue: &Arc<dyn Queue>,
        lease: Duration,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(8192);
        (Self { events: tx }, tokio::spawn(run(rx, store.clone(), Arc::clone(queue), lease)))
    }

    /// Queues an event. Fails only once the recorder stopped.
    pub(crate) async fn send(&self, event: Event) {
        let _ = self.events.send(event).await;
    }
}

/// The progress sink jobs report to.
pub(crate) struct RecorderSink(pub Recorder);

#[async_trait]
impl ProgressSink for RecorderSink {
    async fn report(&self, execution: ExecutionId, progress: Progress) {
        self.0.send(Event::Progress(execution, progress)).await;
    }
}

/// Drains `rx` until every sender is dropped, fencing and writing each batch before settling
/// it (see the module docs).
async fn run(mut rx: mpsc::Receiver<Event>, store: ExecutionStore, queue: Arc<dyn Queue>, lease: Duration) {
    let mut live: IdMap<ExecutionRecord> = IdMap::default();
    // Progress of attempts whose `Started` was not sent (yet): fast attempts skip it.
    let mut pending: IdMap<Progress> = IdMap::default();
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
        dirty.sort_unstable();
        dirty.dedup();
        // Finished records were moved into `records`; the ones still live are copied.
        let live_copies: Vec<ExecutionRecord> = dirty.iter().filter_map(|id| live.get(id).cloned()).collect();
        commit(queue.as_ref(), &store, lease, records, live_copies, settlements).await;
    }
}

/// Shortest pause between two tries of a batch the backends refused.
const RETRY_FIRST: Duration = Duration::from_millis(50);
/// Longest pause between two tries of a batch the backends refused.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Fences, writes and settles one batch (see the module docs), trying again with backoff
/// while the queue or the store fails and the batch's leases can still be valid.
///
/// `records` are the ends of attempts (dropped with their settlement when the lease turns out
/// stale), `live` the records of attempts still running (written as they are).
async fn commit(
    queue: &dyn Queue,
    store: &ExecutionStore,
    lease: Duration,
    mut records: Vec<ExecutionRecord>,
    live: Vec<ExecutionRecord>,
    settlements: Vec<(Settlement, Option<Instant>)>,
) {
    let began = Instant::now();
    // When each lease was last renewed: unknown ones count from now, the latest they can date.
    let mut settlements: Vec<(Settlement, Instant)> =
        settlements.into_iter().map(|(s, renewed)| (s, renewed.unwrap_or(began))).collect();
    // Without leases (records of running attempts only), one lease bounds the tries: the
    // heartbeat has lost those leases by then, and the next holder writes its own records.
    let no_lease_deadline = began + lease;
    let mut delay = RETRY_FIRST;
    let mut failures: u32 = 0;
    let mut written = false;
    loop {
        let step = async {
            if !written {
                // After a failure every lease is checked again: the outage may have outlasted
                // it, and another worker may hold the job now.
                fence(queue, lease, &mut records, &mut settlements, failures > 0).await?;
                // Written from where they lie: a batch that fails is tried again as it is.
                store.write(records.iter().chain(&live)).await.map_err(|e| Failure::Write(e.to_string()))?;
                store.publish_copies(records.iter().chain(&live));
                written = true;
            }
            if settlements.is_empty() {
                return Ok(Vec::new());
            }
            let batch: Vec<Settlement> = settlements.iter().map(|(s, _)| s.clone()).collect();
            queue.settle(batch).await.map_err(|e| Failure::Settle(e.to_string()))
        };
        match step.await {
            Ok(results) => {
                let stale = results.iter().filter(|r| **r == Settled::Stale).count();
                if stale > 0 {
                    tracing::warn!(
                        stale,
                        "settlements refused: their leases had lapsed and the jobs were claimed again"
                    );
                }
                if failures > 0 {
                    tracing::info!(
                        tries = failures + 1,
                        after = ?began.elapsed(),
                        count = settlements.len(),
                        "execution records written and messages settled after the backend came back"
                    );
                }
                return;
            }
            Err(failure) => {
                failures = failures.saturating_add(1);
                let deadline =
                    settlements.iter().map(|(_, renewed)| *renewed + lease).max().unwrap_or(no_lease_deadline);
                let now = Instant::now();
                if now + delay >= deadline {
                    // Past this point no lease of the batch can still be valid: another worker
                    // may run the jobs now. Leave them to it (at least once).
                    tracing::error!(
                        error = %failure,
                        tries = failures,
                        count = settlements.len(),
                        written,
                        "giving up on a batch of results: the backend stayed away longer than its leases; the jobs will run again"
                    );
                    return;
                }
                if failures == 1 {
                    tracing::warn!(
                        error = %failure,
                        count = settlements.len(),
                        retry_in = ?delay,
                        "cannot record finished attempts; keeping their results and trying again while their leases last"
                    );
                } else {
                    tracing::debug!(error = %failure, tries = failures, retry_in = ?delay, "still cannot record finished attempts");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Why a try of a batch failed.
#[derive(Debug)]
enum Failure {
    /// Its leases could not be checked.
    Fence(String),
    /// Its records could not be written.
    Write(String),
    /// Its messages could not be settled (the records were written).
    Settle(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Fence(e) => write!(f, "checking leases: {e}"),
            Failure::Write(e) => write!(f, "writing execution records: {e}"),
            Failure::Settle(e) => write!(f, "settling messages: {e}"),
        }
    }
}

/// Extends the leases that may have lapsed (all of them with `all`), and drops the records
/// and settlements of those whose lease is stale. Renewed leases are dated from the
/// extension's issue. Fails when the queue could not be asked: nothing may be written then.
async fn fence(
    queue: &dyn Queue,
    lease: Duration,
    records: &mut Vec<ExecutionRecord>,
    settlements: &mut Vec<(Settlement, Instant)>,
    all: bool,
) -> Result<(), Failure> {
    let doubtful = |renewed: &Instant| all || renewed.elapsed() > lease / 2;
    let leases: Vec<Lease> = settlements.iter().filter(|(_, r)| doubtful(r)).map(|(s, _)| *s.lease()).collect();
    if leases.is_empty() {
        return Ok(());
    }
    let issued = Instant::now();
    let results = queue.extend(&leases, lease).await.map_err(|e| Failure::Fence(e.to_string()))?;
    let mut stale = IdSet::default();
    let mut renewed = IdSet::default();
    for (l, r) in leases.iter().zip(&results) {
        match r {
            Settled::Stale => stale.insert(l.message_id),
            Settled::Ok => renewed.insert(l.message_id),
        };
    }
    for (s, at) in settlements.iter_mut() {
        if renewed.contains(&s.lease().message_id) {
            *at = issued;
        }
    }
    if !stale.is_empty() {
        tracing::warn!(
            stale = stale.len(),
            "results refused: their leases had lapsed and another worker holds the jobs; nothing recorded for them"
        );
        settlements.retain(|(s, _)| !stale.contains(&s.lease().message_id));
        records.retain(|r| !stale.contains(&r.id));
    }
    Ok(())
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
