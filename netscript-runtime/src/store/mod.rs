//! Execution records: one per execution, kept on the [key-value contract](crate::kv), with a
//! change feed of every update.
//!
//! An execution is identified by the id of the queue message that carries it
//! ([`ExecutionId`]); its record follows it through its attempts: queued → running →
//! succeeded, or → retrying → running → ..., or → failed / dead. Records are JSON under the
//! key `("executions", id)`; ids are UUIDv7, so key order is creation order.
//!
//! The change feed is in-process: a `tokio::sync::broadcast` of every record written
//! through this store. What it is not: a history of progress messages (a record keeps only
//! the latest report) or a cross-process stream (a later issue adds that on `Kv::watch`).

mod record;

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::kv::{AtomicWrite, Key, Kv, KvError, ListOptions};
pub use record::{AttemptRecord, ExecutionRecord, ExecutionStatus};

/// A record on the change feed: the record as written, shared by every receiver, and its
/// JSON, encoded once on first use (a thousand SSE subscribers send the same bytes without
/// encoding the record a thousand times). Derefs to the [`ExecutionRecord`].
#[derive(Debug)]
pub struct FeedRecord {
    record: ExecutionRecord,
    json: std::sync::OnceLock<Box<str>>,
}

impl FeedRecord {
    /// Wraps a record.
    pub fn new(record: ExecutionRecord) -> Self {
        Self { record, json: std::sync::OnceLock::new() }
    }

    /// The record.
    pub fn record(&self) -> &ExecutionRecord {
        &self.record
    }

    /// The record as JSON (the API's shape), encoded by the first caller.
    pub fn json(&self) -> &str {
        // The store's own encoder: the same bytes as the derived serializer, and always UTF-8.
        self.json.get_or_init(|| String::from_utf8(encode(&self.record)).unwrap_or_default().into_boxed_str())
    }
}

impl std::ops::Deref for FeedRecord {
    type Target = ExecutionRecord;

    fn deref(&self) -> &ExecutionRecord {
        &self.record
    }
}

/// An execution's id: the id of the queue message that carries it.
pub type ExecutionId = crate::queue::MessageId;

const PREFIX: &str = "executions";

/// How many record changes a slow feed subscriber may fall behind before it is told it
/// lagged.
pub const FEED_CAPACITY: usize = 16_384;

/// A store error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key-value backend failed.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// A stored record could not be decoded.
    #[error("execution record `{key}` is corrupt: {message}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// Why.
        message: String,
    },
}

/// Which executions to list.
#[derive(Clone, Debug, Default)]
pub struct ExecutionFilter {
    /// At most this many (default 50).
    pub limit: Option<usize>,
    /// Only this status.
    pub status: Option<ExecutionStatus>,
    /// Only this job.
    pub job: Option<String>,
    /// Older than this execution (for paging).
    pub before: Option<ExecutionId>,
}

/// Execution records over a [`Kv`].
#[derive(Clone)]
pub struct ExecutionStore {
    kv: Arc<dyn Kv>,
    feed: broadcast::Sender<Arc<FeedRecord>>,
    /// Feeds of one job's records, for subscribers that want only those: a record wakes only
    /// the receivers of its job, so a thousand subscribers to a quiet job cost nothing.
    job_feeds: Arc<JobFeeds>,
}

/// The per-job feeds, created on first subscription and dropped once nobody listens.
#[derive(Default)]
struct JobFeeds {
    feeds: std::sync::Mutex<std::collections::HashMap<String, broadcast::Sender<Arc<FeedRecord>>>>,
    /// How many feeds exist, read without the lock on every publish.
    count: std::sync::atomic::AtomicUsize,
}

/// Capacity of a per-job feed.
pub const JOB_FEED_CAPACITY: usize = 4096;

impl JobFeeds {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, broadcast::Sender<Arc<FeedRecord>>>> {
        // Every update is one insert or remove: a poisoned map is still consistent.
        self.feeds.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn subscribe(&self, job: &str) -> broadcast::Receiver<Arc<FeedRecord>> {
        let mut feeds = self.lock();
        let receiver =
            feeds.entry(job.to_owned()).or_insert_with(|| broadcast::channel(JOB_FEED_CAPACITY).0).subscribe();
        self.count.store(feeds.len(), std::sync::atomic::Ordering::Relaxed);
        receiver
    }

    fn watched(&self) -> bool {
        self.count.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    /// Sends each record to its job's feed; forgets feeds nobody listens to any more.
    fn publish(&self, records: &[Arc<FeedRecord>]) {
        let mut feeds = self.lock();
        for r in records {
            if let Some(feed) = feeds.get(&r.job_id)
                && feed.send(Arc::clone(r)).is_err()
            {
                feeds.remove(&r.job_id);
            }
        }
        self.count.store(feeds.len(), std::sync::atomic::Ordering::Relaxed);
    }
}

impl std::fmt::Debug for ExecutionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutionStore").field("kv", &self.kv.provider()).finish()
    }
}

fn key(id: ExecutionId) -> Key {
    Key::from((PREFIX, id))
}

impl ExecutionStore {
    /// A store on `kv`.
    pub fn new(kv: Arc<dyn Kv>) -> Self {
        Self { kv, feed: broadcast::channel(FEED_CAPACITY).0, job_feeds: Arc::default() }
    }

    /// The key-value backend.
    pub fn kv(&self) -> &Arc<dyn Kv> {
        &self.kv
    }

    /// Every record written from now on, as written. A receiver that falls more than
    /// [`FEED_CAPACITY`] behind gets `RecvError::Lagged` and should re-read the store.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedRecord>> {
        self.feed.subscribe()
    }

    /// Every record of `job` written from now on: like [`subscribe`](Self::subscribe), but
    /// records of other jobs never wake the receiver. It lags after [`JOB_FEED_CAPACITY`].
    pub fn subscribe_job(&self, job: &str) -> broadcast::Receiver<Arc<FeedRecord>> {
        self.job_feeds.subscribe(job)
    }

    /// Whether anyone listens to the feeds.
    pub(crate) fn listened(&self) -> bool {
        self.feed.receiver_count() > 0 || self.job_feeds.watched()
    }

    fn send(&self, records: Vec<Arc<FeedRecord>>) {
        if self.feed.receiver_count() > 0 {
            for r in &records {
                // A send only fails when nobody listens.
                let _ = self.feed.send(Arc::clone(r));
            }
        }
        if self.job_feeds.watched() {
            self.job_feeds.publish(&records);
        }
    }

    /// Writes `records` in one atomic write, then publishes them on the feed.
    pub async fn put_many(&self, records: Vec<ExecutionRecord>) -> Result<(), StoreError> {
        self.write(&records).await?;
        self.publish(records);
        Ok(())
    }

    /// Writes `records` in one atomic write without publishing them: the caller publishes
    /// (with [`ExecutionStore::publish`]) once they stand, or removes them.
    pub async fn write<'a>(&self, records: impl IntoIterator<Item = &'a ExecutionRecord>) -> Result<(), StoreError> {
        let mut write = AtomicWrite::new();
        for r in records {
            write = write.set(key(r.id), encode(r));
        }
        if write.mutations.is_empty() {
            return Ok(());
        }
        self.kv.atomic(write).await?;
        Ok(())
    }

    /// The write that stores `record`, as [`write`](Self::write) makes it: for a backend
    /// that commits it together with something else (see `backends::Joint`).
    pub(crate) fn write_of(record: &ExecutionRecord) -> AtomicWrite {
        AtomicWrite::new().set(key(record.id), encode(record))
    }

    /// Removes the records of `ids`, in one atomic write.
    pub async fn delete_many(&self, ids: &[ExecutionId]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut write = AtomicWrite::new();
        for id in ids {
            write = write.delete(key(*id));
        }
        self.kv.atomic(write).await?;
        Ok(())
    }

    /// Publishes copies of records on the feeds; copies nothing when nobody subscribes.
    pub fn publish_copies<'a>(&self, records: impl IntoIterator<Item = &'a ExecutionRecord>) {
        if self.listened() {
            self.send(records.into_iter().map(|r| Arc::new(FeedRecord::new(r.clone()))).collect());
        }
    }

    /// Publishes records on the feeds (see [`ExecutionStore::subscribe`]).
    pub fn publish(&self, records: Vec<ExecutionRecord>) {
        if self.listened() {
            self.send(records.into_iter().map(|r| Arc::new(FeedRecord::new(r))).collect());
        }
    }

    /// One record.
    pub async fn get(&self, id: ExecutionId) -> Result<Option<ExecutionRecord>, StoreError> {
        let k = key(id);
        match self.kv.get(&k).await? {
            Some(entry) => decode(&k, &entry.value).map(Some),
            None => Ok(None),
        }
    }

    /// Records, newest first.
    pub async fn list(&self, filter: &ExecutionFilter) -> Result<Vec<ExecutionRecord>, StoreError> {
        let limit = filter.limit.unwrap_or(50).max(1);
        let mut options = ListOptions::prefix(Key::from((PREFIX,))).reverse().limit(limit.max(256));
        if let Some(before) = filter.before {
            options = options.after(key(before));
        }
        let mut out = Vec::with_capacity(limit);
        loop {
            let page = self.kv.list(options.clone()).await?;
            let Some(last) = page.last() else { break };
            options.cursor = Some(last.key.clone());
            let full = page.len() == options.limit;
            for entry in page {
                let record = decode(&entry.key, &entry.value)?;
                if filter.status.is_some_and(|s| s != record.status)
                    || filter.job.as_deref().is_some_and(|j| j != record.job_id)
                {
                    continue;
                }
                out.push(record);
                if out.len() == limit {
                    return Ok(out);
                }
            }
            if !full {
                break;
            }
        }
        Ok(out)
    }
}

/// What a prune pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Records read.
    pub scanned: usize,
    /// Records deleted.
    pub deleted: usize,
}

impl ExecutionStore {
    /// Deletes the records of executions that ended (succeeded, failed, dead, cancelled) more
    /// than their retention ago; `retention(job_id)` says how long, `None` keeps them. Reads
    /// oldest first, `batch` records at a time, and stops at the first record created after
    /// `now - shortest` (no later one can be due, since ids follow creation time). Waiting and
    /// running executions are never deleted, however old. Between batches it yields, so a long
    /// pass never holds up the workers sharing its runtime.
    pub async fn prune(
        &self,
        retention: impl Fn(&str) -> Option<std::time::Duration>,
        shortest: std::time::Duration,
        now: crate::time::Timestamp,
        batch: usize,
    ) -> Result<Pruned, StoreError> {
        let horizon = now.as_millis().saturating_sub(u64::try_from(shortest.as_millis()).unwrap_or(u64::MAX));
        let mut options = ListOptions::prefix(Key::from((PREFIX,))).limit(batch.max(1));
        let mut pruned = Pruned::default();
        loop {
            let page = self.kv.list(options.clone()).await?;
            let Some(last) = page.last() else { break };
            options.cursor = Some(last.key.clone());
            let full = page.len() == options.limit;
            let mut due = Vec::new();
            let mut past_horizon = false;
            for entry in page {
                let record = decode(&entry.key, &entry.value)?;
                if created_at(record.id) > horizon {
                    past_horizon = true;
                    break;
                }
                pruned.scanned += 1;
                let ended = record.finished_at.filter(|_| record.status.is_final());
                let keep_for = retention(&record.job_id);
                if let (Some(ended), Some(keep_for)) = (ended, keep_for)
                    && now.since(ended) > keep_for
                {
                    due.push(record.id);
                }
            }
            if !due.is_empty() {
                self.delete_many(&due).await?;
                pruned.deleted += due.len();
            }
            if past_horizon || !full {
                break;
            }
            tokio::task::yield_now().await;
        }
        Ok(pruned)
    }
}

/// When an execution was created: the millisecond timestamp of its UUIDv7 id (0 for an id of
/// another version, which sorts first and is then judged by its record).
fn created_at(id: ExecutionId) -> u64 {
    id.0.get_timestamp().map_or(0, |t| {
        let (seconds, nanos) = t.to_unix();
        seconds.saturating_mul(1000).saturating_add(u64::from(nanos / 1_000_000))
    })
}

fn encode(r: &ExecutionRecord) -> Vec<u8> {
    // A small record is about 400 bytes: start there rather than growing from empty, which
    // profiled as a tenth of the recorder's time.
    let mut out = Vec::with_capacity(512);
    r.write_json(&mut out);
    out
}

fn decode(key: &Key, bytes: &[u8]) -> Result<ExecutionRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { key: key.to_string(), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::kv::memory::MemoryKv;
    use crate::time::Timestamp;

    const DAY: u64 = 86_400_000;

    /// A record of `job` created `age_days` ago, ended `ended_days` ago (if it ended).
    fn record(
        job: &str,
        now: Timestamp,
        age_days: u64,
        status: ExecutionStatus,
        ended_days: Option<u64>,
    ) -> ExecutionRecord {
        let created = now.as_millis() - age_days * DAY;
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            created / 1000,
            u32::try_from(created % 1000).unwrap() * 1_000_000,
        );
        let id = crate::queue::MessageId(uuid::Uuid::new_v7(ts));
        let mut r = ExecutionRecord::queued(id, job, serde_json::Value::Null, 1, None, Timestamp(created));
        r.status = status;
        r.attempt = 1;
        r.finished_at = ended_days.map(|d| Timestamp(now.as_millis() - d * DAY));
        r
    }

    #[tokio::test]
    async fn a_job_feed_carries_only_its_jobs_records_and_goes_when_nobody_listens() {
        let store = ExecutionStore::new(Arc::new(MemoryKv::new()));
        let now = Timestamp::now();
        let mut reports = store.subscribe_job("report");
        let mut everything = store.subscribe();
        let (a, b) = (
            record("report", now, 0, ExecutionStatus::Queued, None),
            record("email", now, 0, ExecutionStatus::Queued, None),
        );
        store.publish(vec![a.clone(), b.clone()]);
        assert_eq!(reports.try_recv().unwrap().id, a.id);
        assert!(reports.try_recv().is_err(), "the email's record never woke the report feed");
        assert_eq!((everything.try_recv().unwrap().id, everything.try_recv().unwrap().id), (a.id, b.id));
        drop(reports);
        store.publish(vec![a]);
        assert!(!store.job_feeds.watched(), "the feed is forgotten once its last receiver went");
    }

    #[tokio::test]
    async fn prune_deletes_ended_records_past_their_retention_and_nothing_else() {
        let store = ExecutionStore::new(Arc::new(MemoryKv::new()));
        let now = Timestamp::now();
        let old_done = record("report", now, 30, ExecutionStatus::Succeeded, Some(29));
        let old_dead = record("report", now, 20, ExecutionStatus::Dead, Some(19));
        let old_waiting = record("report", now, 40, ExecutionStatus::Queued, None);
        let recent_done = record("report", now, 3, ExecutionStatus::Succeeded, Some(2));
        // Created long ago, ended yesterday: kept, since it ended within the week.
        let slow_done = record("report", now, 25, ExecutionStatus::Succeeded, Some(1));
        // A topic kept for 60 days.
        let audit_done = record("audit", now, 30, ExecutionStatus::Succeeded, Some(29));
        let all = [&old_done, &old_dead, &old_waiting, &recent_done, &slow_done, &audit_done];
        store.put_many(all.iter().map(|r| (*r).clone()).collect()).await.unwrap();

        let week = Duration::from_secs(7 * 86_400);
        let retention = |job: &str| Some(if job == "audit" { week * 9 } else { week });
        let pruned = store.prune(retention, week, now, 2).await.unwrap();
        assert_eq!(pruned.deleted, 2, "{pruned:?}");
        for (r, kept) in [
            (&old_done, false),
            (&old_dead, false),
            (&old_waiting, true),
            (&recent_done, true),
            (&slow_done, true),
            (&audit_done, true),
        ] {
            assert_eq!(store.get(r.id).await.unwrap().is_some(), kept, "{} {:?}", r.job_id, r.status);
        }
        // The scan stopped at the horizon: the record created three days ago was not read.
        assert_eq!(pruned.scanned, 5);
        // `None` keeps everything.
        let again = store.prune(|_| None, week, now, 100).await.unwrap();
        assert_eq!(again.deleted, 0);
    }
}
