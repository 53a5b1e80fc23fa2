//! The durable queue on the [embedded store](crate::embedded): messages are rows of one
//! SQLite file, so they survive restarts and can be shared with other processes that open
//! the same file (a CLI `trigger` while `serve` runs).
//!
//! Semantics are those of the [`Queue`] contract, exactly as the
//! [memory queue](super::memory) implements them. Several named queues can share one file.
//! Leases are wall-clock deadlines stored in the rows, so a worker in another process sees
//! them too; every claim adds one to the row's fencing token.
//!
//! Every call is one request to the store's writer thread, committed together with the
//! requests of other tasks that arrived meanwhile; batch calls (`enqueue` of many messages,
//! `claim` of many, `settle` of many) are much cheaper per message than single ones.
//!
//! What it is not: a broker for machines that do not share a disk. A lapsed lease is noticed
//! at the next claim (or `stats`), not by a background timer.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, params};
use tokio::sync::Notify;

use super::memory::DEFAULT_IDEMPOTENCY_WINDOW;
use super::{
    Cancelled, ClaimRequest, DeadLetter, Delivery, Enqueued, KnownTopics, Lease, MessageId, NewMessage, Queue,
    QueueError, QueueStats, Settled, Settlement,
};
use crate::embedded::{Counter, EmbeddedDb, EmbeddedError, OpError, Tx, wake};
use crate::kv::AtomicWrite;
use crate::kv::embedded::{EmbeddedKv, apply as kv_apply, subset};
use crate::time::Timestamp;

const BACKEND: &str = "embedded";

const READY: i64 = 0;
const DELAYED: i64 = 1;

/// Ready messages of one topic, in claim order (served by the `queue_ready` index).
pub(crate) const SCAN_READY: &str = "SELECT rowid, concurrency_key FROM queue_messages
     WHERE queue = ?1 AND topic = ?2 AND state = 0
     ORDER BY priority DESC, at, seq";

/// The columns [`delivery`] reads, in order.
const DELIVERY_COLUMNS: &str = "id, topic, kind, payload, headers, priority, idempotency_key, concurrency_key, attempts, enqueued_at, last_error, token, at";

/// The durable queue. Cheap to clone; clones share the same queue.
#[derive(Clone)]
pub struct EmbeddedQueue {
    db: Arc<EmbeddedDb>,
    name: Arc<str>,
    notify: Arc<Notify>,
    idempotency_window: Duration,
    /// Topics known to be in `queue_topics` (written by a committed enqueue).
    known_topics: Arc<KnownTopics>,
}

impl std::fmt::Debug for EmbeddedQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedQueue").field("db", &self.db).field("name", &self.name).finish_non_exhaustive()
    }
}

impl EmbeddedQueue {
    /// The queue called `queue_name` in `db`.
    pub fn new(db: Arc<EmbeddedDb>, queue_name: &str) -> Self {
        let notify = db.queue_notify(queue_name);
        Self {
            db,
            name: queue_name.into(),
            notify,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
            known_topics: Arc::default(),
        }
    }

    /// Sets how long an idempotency key is remembered after its message was acked (default
    /// 24 hours).
    pub fn with_idempotency_window(mut self, window: Duration) -> Self {
        self.idempotency_window = window;
        self
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The store it lives in.
    pub fn db(&self) -> &Arc<EmbeddedDb> {
        &self.db
    }
}

fn queue_error(e: EmbeddedError) -> QueueError {
    match e {
        EmbeddedError::Closed { .. } => QueueError::Closed,
        EmbeddedError::Corrupt { .. } => QueueError::Corrupt { backend: BACKEND, message: e.to_string() },
        other => QueueError::Backend { backend: BACKEND, message: other.to_string() },
    }
}

fn millis(t: Timestamp) -> i64 {
    i64::try_from(t.as_millis()).unwrap_or(i64::MAX)
}

fn timestamp(ms: i64) -> Timestamp {
    Timestamp(u64::try_from(ms).unwrap_or(0))
}

fn encode_headers(headers: &[(String, String)]) -> Option<Vec<u8>> {
    // Serializing strings to JSON cannot fail.
    (!headers.is_empty()).then(|| serde_json::to_vec(headers).unwrap_or_default())
}

fn message_id(bytes: &[u8]) -> Result<MessageId, OpError> {
    uuid::Uuid::from_slice(bytes).map(MessageId).map_err(|e| OpError::Corrupt(format!("invalid message id: {e}")))
}

/// A row of [`DELIVERY_COLUMNS`] as a delivery, and the row's `at`.
fn delivery(row: &Row<'_>) -> Result<(Delivery, i64), OpError> {
    let id = message_id(&row.get::<_, Vec<u8>>(0)?)?;
    let headers = match row.get::<_, Option<Vec<u8>>>(4)? {
        None => Vec::new(),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| OpError::Corrupt(format!("message {id}: invalid headers: {e}")))?,
    };
    let priority = i32::try_from(row.get::<_, i64>(5)?)
        .map_err(|_| OpError::Corrupt(format!("message {id}: priority out of range")))?;
    let attempt = u32::try_from(row.get::<_, i64>(8)?).unwrap_or(u32::MAX);
    let token = u64::try_from(row.get::<_, i64>(11)?)
        .map_err(|_| OpError::Corrupt(format!("message {id}: negative fencing token")))?;
    Ok((
        Delivery {
            id,
            topic: row.get(1)?,
            kind: row.get(2)?,
            payload: row.get(3)?,
            headers,
            priority,
            idempotency_key: row.get(6)?,
            concurrency_key: row.get(7)?,
            attempt,
            enqueued_at: timestamp(row.get(9)?),
            last_error: row.get(10)?,
            lease: Lease { message_id: id, token },
        },
        row.get(12)?,
    ))
}

/// Moves due delayed messages and lapsed leases to the ready state. A message keeps its
/// `at` (the moment it became visible) and its `seq`, so it takes its place in FIFO order.
fn promote(tx: &Tx<'_>, queue: &str, now: i64) -> Result<(), OpError> {
    let conn = tx.conn();
    conn.prepare_cached("UPDATE queue_messages SET state = 0 WHERE queue = ?1 AND state = 1 AND at <= ?2")?
        .execute(params![queue, now])?;
    conn.prepare_cached("UPDATE queue_messages SET state = 0 WHERE queue = ?1 AND state = 2 AND at <= ?2")?
        .execute(params![queue, now])?;
    Ok(())
}

fn add_stale(tx: &Tx<'_>, queue: &str, n: i64) -> Result<(), OpError> {
    if n > 0 {
        tx.conn()
            .prepare_cached(
                "INSERT INTO queue_state (queue, stale) VALUES (?1, ?2)
                 ON CONFLICT (queue) DO UPDATE SET stale = stale + excluded.stale",
            )?
            .execute(params![queue, n])?;
    }
    Ok(())
}

/// One ready message seen by the claim scan.
struct Candidate {
    id: i64,
    concurrency_key: Option<String>,
}

fn claim(tx: &Tx<'_>, queue: &str, request: &ClaimRequest) -> Result<Vec<Delivery>, OpError> {
    let conn = tx.conn();
    let now = millis(Timestamp::now());
    let until = millis(Timestamp::now().plus(request.lease));
    promote(tx, queue, now)?;
    if request.max == 0 {
        return Ok(Vec::new());
    }
    let topics: Vec<String> = if request.topics.is_empty() {
        conn.prepare_cached("SELECT topic FROM queue_topics WHERE queue = ?1")?
            .query_map(params![queue], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    } else {
        let mut seen = HashSet::new();
        request.topics.iter().filter(|t| seen.insert(t.as_str())).cloned().collect()
    };
    let picked = if topics.len() == 1 {
        pick_one_topic(tx, queue, &topics[0], request.max)?
    } else {
        pick_merged(tx, queue, &topics, request.max)?
    };

    let mut lease = conn.prepare_cached(&format!(
        "UPDATE queue_messages SET state = 2, at = ?2, attempts = attempts + 1, token = token + 1
         WHERE rowid = ?1 AND state = 0 RETURNING {DELIVERY_COLUMNS}"
    ))?;
    let mut out = Vec::with_capacity(picked.len());
    for id in picked {
        let mut rows = lease.query(params![id, until])?;
        if let Some(row) = rows.next()? {
            out.push(delivery(row)?.0);
        }
    }
    Ok(out)
}

/// Whether a message with concurrency key `key` is leased.
fn key_active(tx: &Tx<'_>, queue: &str, key: &str) -> Result<bool, OpError> {
    Ok(tx
        .conn()
        .prepare_cached("SELECT 1 FROM queue_messages WHERE queue = ?1 AND concurrency_key = ?2 AND state = 2 LIMIT 1")?
        .query_row(params![queue, key], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Decides whether a candidate may join the batch (its concurrency key is free).
fn admit(tx: &Tx<'_>, queue: &str, c: &Candidate, keys: &mut HashSet<String>) -> Result<bool, OpError> {
    match &c.concurrency_key {
        None => Ok(true),
        Some(k) if keys.contains(k) => Ok(false),
        Some(k) => {
            if key_active(tx, queue, k)? {
                return Ok(false);
            }
            keys.insert(k.clone());
            Ok(true)
        }
    }
}

fn pick_one_topic(tx: &Tx<'_>, queue: &str, topic: &str, max: usize) -> Result<Vec<i64>, OpError> {
    let mut scan = tx.conn().prepare_cached(SCAN_READY)?;
    let mut rows = scan.query(params![queue, topic])?;
    let mut keys = HashSet::new();
    let mut picked = Vec::new();
    while picked.len() < max {
        let Some(row) = rows.next()? else { break };
        let c = Candidate { id: row.get(0)?, concurrency_key: row.get(1)? };
        if admit(tx, queue, &c, &mut keys)? {
            picked.push(c.id);
        }
    }
    Ok(picked)
}

/// Claim order across topics: each topic's ready rows come in order from the index; a merge
/// of their heads gives the global order.
fn pick_merged(tx: &Tx<'_>, queue: &str, topics: &[String], max: usize) -> Result<Vec<i64>, OpError> {
    const SCAN: &str = "SELECT rowid, concurrency_key, priority, at, seq FROM queue_messages
         WHERE queue = ?1 AND topic = ?2 AND state = 0
         ORDER BY priority DESC, at, seq";
    type Head = (std::cmp::Reverse<i64>, i64, i64, Candidate);
    fn next(rows: &mut rusqlite::Rows<'_>) -> Result<Option<Head>, OpError> {
        Ok(match rows.next()? {
            None => None,
            Some(r) => Some((
                std::cmp::Reverse(r.get(2)?),
                r.get(3)?,
                r.get(4)?,
                Candidate { id: r.get(0)?, concurrency_key: r.get(1)? },
            )),
        })
    }
    let conn = tx.conn();
    let mut stmts = Vec::with_capacity(topics.len());
    for i in 0..topics.len() {
        // One cached statement per cursor: the cache hands out one statement per SQL text.
        stmts.push(conn.prepare_cached(&format!("{SCAN} -- cursor {i}"))?);
    }
    let mut cursors = Vec::with_capacity(topics.len());
    for (stmt, topic) in stmts.iter_mut().zip(topics) {
        cursors.push(stmt.query(params![queue, topic])?);
    }
    let mut heads = Vec::with_capacity(cursors.len());
    for c in &mut cursors {
        heads.push(next(c)?);
    }
    let mut keys = HashSet::new();
    let mut picked = Vec::new();
    while picked.len() < max {
        let best = heads
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.as_ref().map(|h| (i, (h.0, h.1, h.2))))
            .min_by_key(|&(_, order)| order)
            .map(|(i, _)| i);
        let Some(i) = best else { break };
        let head = std::mem::replace(&mut heads[i], next(&mut cursors[i])?);
        if let Some((.., c)) = head
            && admit(tx, queue, &c, &mut keys)?
        {
            picked.push(c.id);
        }
    }
    Ok(picked)
}

/// The earliest moment a delayed message becomes due or a lease lapses.
fn next_due(tx: &Tx<'_>, queue: &str) -> Result<Option<i64>, OpError> {
    let conn = tx.conn();
    let delayed: Option<i64> = conn
        .prepare_cached("SELECT min(at) FROM queue_messages WHERE queue = ?1 AND state = 1")?
        .query_row(params![queue], |r| r.get(0))?;
    let leased: Option<i64> = conn
        .prepare_cached("SELECT min(at) FROM queue_messages WHERE queue = ?1 AND state = 2")?
        .query_row(params![queue], |r| r.get(0))?;
    Ok(delayed.into_iter().chain(leased).min())
}

/// An enqueue made ready on the caller's thread, to run inside a writer transaction.
struct PreparedEnqueue {
    queue: Arc<str>,
    notify: Arc<Notify>,
    known_topics: Arc<KnownTopics>,
    /// Topics of `messages` not known to be in `queue_topics` yet.
    new_topics: Vec<String>,
    messages: Vec<NewMessage>,
}

impl PreparedEnqueue {
    /// Inserts the messages (those whose idempotency key or id is taken are duplicates).
    fn run(&self, tx: &Tx<'_>) -> Result<Vec<Enqueued>, OpError> {
        let (queue, messages) = (&self.queue, &self.messages);
        let conn = tx.conn();
        let now = millis(Timestamp::now());
        let mut insert = conn.prepare_cached(
            "INSERT INTO queue_messages (id, queue, topic, kind, payload, headers, priority,
                 idempotency_key, concurrency_key, state, at, seq, attempts, token, enqueued_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 0, 0, ?13)
             ON CONFLICT (id) DO NOTHING",
        )?;
        let mut out = Vec::with_capacity(messages.len());
        let mut created = false;
        for m in messages {
            if let Some(key) = &m.idempotency_key {
                let held: Option<(Vec<u8>, Option<i64>)> = conn
                    .prepare_cached(
                        "SELECT message_id, expires_at FROM queue_idempotency WHERE queue = ?1 AND key = ?2",
                    )?
                    .query_row(params![&**queue, key], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                if let Some((id, expires)) = held
                    && expires.is_none_or(|t| t > now)
                {
                    out.push(Enqueued::Duplicate(message_id(&id)?));
                    continue;
                }
            }
            let (state, at) =
                if m.delay.is_zero() { (READY, now) } else { (DELAYED, millis(timestamp(now).plus(m.delay))) };
            let seq = tx.next(Counter::QueueSeq)?;
            let inserted = insert.execute(params![
                m.id.as_bytes(),
                &**queue,
                m.topic,
                m.kind,
                m.payload,
                encode_headers(&m.headers),
                m.priority,
                m.idempotency_key,
                m.concurrency_key,
                state,
                at,
                seq,
                now,
            ])?;
            if inserted == 0 {
                // The id is taken: an enqueue repeated after an unclear outcome.
                out.push(Enqueued::Duplicate(m.id));
                continue;
            }
            if let Some(key) = &m.idempotency_key {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO queue_idempotency (queue, key, message_id, expires_at)
                     VALUES (?1, ?2, ?3, NULL)",
                )?
                .execute(params![&**queue, key, m.id.as_bytes()])?;
            }
            created = true;
            out.push(Enqueued::Created(m.id));
        }
        if !self.new_topics.is_empty() {
            let mut add = conn.prepare_cached("INSERT OR IGNORE INTO queue_topics (queue, topic) VALUES (?1, ?2)")?;
            for t in &self.new_topics {
                add.execute(params![&**queue, t])?;
            }
            let (known_topics, new_topics) = (Arc::clone(&self.known_topics), self.new_topics.clone());
            tx.after_commit(move || known_topics.remember(new_topics));
        }
        if created {
            let notify = Arc::clone(&self.notify);
            tx.after_commit(move || wake(&notify));
        }
        Ok(out)
    }
}

impl EmbeddedQueue {
    fn prepare_enqueue(&self, messages: Vec<NewMessage>) -> PreparedEnqueue {
        let new_topics = self.known_topics.unknown(&messages);
        PreparedEnqueue {
            queue: Arc::clone(&self.name),
            notify: Arc::clone(&self.notify),
            known_topics: Arc::clone(&self.known_topics),
            new_topics,
            messages,
        }
    }

    /// Enqueues `messages` and, in the same transaction, writes to `kv` the write of each
    /// message that was created (`writes[i]` goes with `messages[i]`; a duplicate's write is
    /// not made). `kv` must live in this queue's file. `on_commit` runs once the transaction
    /// committed, before any other request to the store, with the outcomes: what it publishes
    /// is seen before anything a worker does with the messages.
    ///
    /// This is how the runtime writes an execution's queued record with its message: one
    /// commit instead of two, and no record without its message.
    pub async fn enqueue_with_kv(
        &self,
        kv: &EmbeddedKv,
        messages: Vec<NewMessage>,
        writes: Vec<AtomicWrite>,
        on_commit: impl FnOnce(&[Enqueued]) + Send + 'static,
    ) -> Result<Vec<Enqueued>, QueueError> {
        super::joint_refusal(
            BACKEND,
            Arc::ptr_eq(kv.db(), &self.db),
            "file",
            messages.len(),
            &writes,
            |w| w.checks.is_empty(),
            "unconditional writes (no checks)",
        )?;
        let events = kv.db().kv_events().clone();
        // One write for all the messages (one versionstamp, one hook), cut down on the writer
        // thread to the created messages' parts in the rare batch with duplicates.
        let mut merged = AtomicWrite::new();
        let mut parts = Vec::with_capacity(writes.len());
        for w in writes {
            let start = merged.mutations.len();
            merged.mutations.extend(w.mutations);
            parts.push(start..merged.mutations.len());
        }
        let merged = Arc::new(merged);
        let enqueue = self.prepare_enqueue(messages);
        // A request may run more than once (its batch retried): each run registers a hook,
        // and the one of the run that commits takes `on_commit`.
        let on_commit = Arc::new(Mutex::new(Some(on_commit)));
        self.db
            .call(move |tx| {
                let out = enqueue.run(tx)?;
                let created = |o: &Enqueued| matches!(o, Enqueued::Created(_));
                if out.iter().all(created) {
                    kv_apply(tx, &merged, &events)?;
                } else {
                    let kept = out.iter().zip(&parts).filter(|(o, _)| created(o)).map(|(_, p)| p.clone());
                    let created_only = subset(&merged, kept);
                    if !created_only.mutations.is_empty() {
                        kv_apply(tx, &Arc::new(created_only), &events)?;
                    }
                }
                let (hook, outcomes) = (Arc::clone(&on_commit), out.clone());
                tx.after_commit(move || {
                    if let Some(hook) = hook.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        hook(&outcomes);
                    }
                });
                Ok(out)
            })
            .await
            .map_err(queue_error)
    }
}

#[async_trait]
impl Queue for EmbeddedQueue {
    fn provider(&self) -> &'static str {
        BACKEND
    }

    async fn enqueue(&self, messages: Vec<NewMessage>) -> Result<Vec<Enqueued>, QueueError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let enqueue = self.prepare_enqueue(messages);
        self.db.call(move |tx| enqueue.run(tx)).await.map_err(queue_error)
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Delivery>, QueueError> {
        let queue = Arc::clone(&self.name);
        self.db.call(move |tx| claim(tx, &queue, &request)).await.map_err(queue_error)
    }

    async fn extend(&self, leases: &[Lease], lease: Duration) -> Result<Vec<Settled>, QueueError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let queue = Arc::clone(&self.name);
        let leases = leases.to_vec();
        self.db
            .call(move |tx| {
                let until = millis(Timestamp::now().plus(lease));
                let mut extend = tx.conn().prepare_cached(
                    "UPDATE queue_messages SET at = ?1
                     WHERE id = ?2 AND queue = ?3 AND token = ?4 AND state = 2",
                )?;
                let mut stale = 0;
                let mut out = Vec::with_capacity(leases.len());
                for l in &leases {
                    let token = i64::try_from(l.token).unwrap_or(-1);
                    if extend.execute(params![until, l.message_id.as_bytes(), &*queue, token])? == 1 {
                        out.push(Settled::Ok);
                    } else {
                        stale += 1;
                        out.push(Settled::Stale);
                    }
                }
                add_stale(tx, &queue, stale)?;
                Ok(out)
            })
            .await
            .map_err(queue_error)
    }

    async fn settle(&self, settlements: Vec<Settlement>) -> Result<Vec<Settled>, QueueError> {
        if settlements.is_empty() {
            return Ok(Vec::new());
        }
        let queue = Arc::clone(&self.name);
        let notify = Arc::clone(&self.notify);
        let window = self.idempotency_window;
        self.db
            .call(move |tx| {
                let conn = tx.conn();
                let now_ts = Timestamp::now();
                let now = millis(now_ts);
                let mut stale = 0;
                let mut wake_waiters = false;
                let mut out = Vec::with_capacity(settlements.len());
                for s in &settlements {
                    let lease = *s.lease();
                    let id = lease.message_id.as_bytes();
                    let token = i64::try_from(lease.token).unwrap_or(-1);
                    // Each statement matches only the current lease, and returns the keys
                    // the settlement frees.
                    let freed: Option<(Option<String>, Option<String>)> = match s {
                        Settlement::Ack(_) => conn
                            .prepare_cached(
                                "DELETE FROM queue_messages
                                 WHERE id = ?1 AND queue = ?2 AND token = ?3 AND state = 2
                                 RETURNING idempotency_key, concurrency_key",
                            )?
                            .query_row(params![id, &*queue, token], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()?,
                        Settlement::Retry { delay, error, .. } => {
                            let (state, at) =
                                if delay.is_zero() { (READY, now) } else { (DELAYED, millis(now_ts.plus(*delay))) };
                            let seq = tx.next(Counter::QueueSeq)?;
                            conn.prepare_cached(
                                "UPDATE queue_messages SET state = ?4, at = ?5, seq = ?6, last_error = ?7
                                 WHERE id = ?1 AND queue = ?2 AND token = ?3 AND state = 2
                                 RETURNING NULL, concurrency_key",
                            )?
                            .query_row(params![id, &*queue, token, state, at, seq, error], |r| {
                                Ok((r.get(0)?, r.get(1)?))
                            })
                            .optional()?
                        }
                        Settlement::DeadLetter { error, .. } => {
                            let seq = tx.next(Counter::QueueSeq)?;
                            conn.prepare_cached(
                                "UPDATE queue_messages SET state = 3, at = ?4, seq = ?5, last_error = ?6
                                 WHERE id = ?1 AND queue = ?2 AND token = ?3 AND state = 2
                                 RETURNING NULL, concurrency_key",
                            )?
                            .query_row(params![id, &*queue, token, now, seq, error], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()?
                        }
                        Settlement::Release(_) => {
                            let seq = tx.next(Counter::QueueSeq)?;
                            conn.prepare_cached(
                                "UPDATE queue_messages SET state = 0, at = ?4, seq = ?5, attempts = max(attempts - 1, 0)
                                 WHERE id = ?1 AND queue = ?2 AND token = ?3 AND state = 2
                                 RETURNING NULL, concurrency_key",
                            )?
                            .query_row(params![id, &*queue, token, now, seq], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()?
                        }
                    };
                    let Some((idempotency_key, concurrency_key)) = freed else {
                        stale += 1;
                        out.push(Settled::Stale);
                        continue;
                    };
                    if let Some(key) = idempotency_key {
                        conn.prepare_cached(
                            "UPDATE queue_idempotency SET expires_at = ?4
                             WHERE queue = ?1 AND key = ?2 AND message_id = ?3",
                        )?
                        .execute(params![&*queue, key, id, millis(now_ts.plus(window))])?;
                    }
                    // Work may have appeared: the message itself, or one that waited for its
                    // concurrency key.
                    wake_waiters |=
                        !matches!(s, Settlement::Ack(_) | Settlement::DeadLetter { .. }) || concurrency_key.is_some();
                    out.push(Settled::Ok);
                }
                add_stale(tx, &queue, stale)?;
                if wake_waiters {
                    let notify = Arc::clone(&notify);
                    tx.after_commit(move || wake(&notify));
                }
                Ok(out)
            })
            .await
            .map_err(queue_error)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let queue = Arc::clone(&self.name);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .call(move |tx| {
                let mut stmt = tx.conn().prepare_cached(&format!(
                    "SELECT {DELIVERY_COLUMNS} FROM queue_messages WHERE queue = ?1 AND state = 3
                     ORDER BY at DESC, seq DESC LIMIT ?2"
                ))?;
                let mut rows = stmt.query(params![&*queue, limit])?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    let (message, at) = delivery(row)?;
                    let error = message.last_error.clone().unwrap_or_default();
                    out.push(DeadLetter { message, error, failed_at: timestamp(at) });
                }
                Ok(out)
            })
            .await
            .map_err(queue_error)
    }

    async fn redrive(&self, id: MessageId) -> Result<bool, QueueError> {
        let queue = Arc::clone(&self.name);
        let notify = Arc::clone(&self.notify);
        self.db
            .call(move |tx| {
                let now = millis(Timestamp::now());
                let seq = tx.next(Counter::QueueSeq)?;
                let n = tx
                    .conn()
                    .prepare_cached(
                        "UPDATE queue_messages SET state = 0, at = ?3, seq = ?4, attempts = 0
                         WHERE id = ?1 AND queue = ?2 AND state = 3",
                    )?
                    .execute(params![id.as_bytes(), &*queue, now, seq])?;
                if n > 0 {
                    let notify = Arc::clone(&notify);
                    tx.after_commit(move || wake(&notify));
                }
                Ok(n > 0)
            })
            .await
            .map_err(queue_error)
    }

    async fn purge_dead(&self, failed_before: Timestamp, limit: usize) -> Result<usize, QueueError> {
        if limit == 0 {
            return Ok(0);
        }
        let queue = Arc::clone(&self.name);
        let window = self.idempotency_window;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .call(move |tx| {
                let conn = tx.conn();
                // Oldest first, from the `queue_dead` index.
                let purged: Vec<(Vec<u8>, Option<String>)> = conn
                    .prepare_cached(
                        "DELETE FROM queue_messages WHERE rowid IN (
                             SELECT rowid FROM queue_messages WHERE queue = ?1 AND state = 3 AND at < ?2
                             ORDER BY at, seq LIMIT ?3)
                         RETURNING id, idempotency_key",
                    )?
                    .query_map(params![&*queue, millis(failed_before), limit], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                let expires = millis(Timestamp::now().plus(window));
                let mut remember = conn.prepare_cached(
                    "UPDATE queue_idempotency SET expires_at = ?4
                     WHERE queue = ?1 AND key = ?2 AND message_id = ?3",
                )?;
                for (id, key) in &purged {
                    if let Some(key) = key {
                        remember.execute(params![&*queue, key, id, expires])?;
                    }
                }
                Ok(purged.len())
            })
            .await
            .map_err(queue_error)
    }

    async fn cancel(&self, id: MessageId) -> Result<Cancelled, QueueError> {
        let queue = Arc::clone(&self.name);
        let window = self.idempotency_window;
        self.db
            .call(move |tx| {
                let conn = tx.conn();
                let removed: Option<Option<String>> = conn
                    .prepare_cached(
                        "DELETE FROM queue_messages WHERE id = ?1 AND queue = ?2 AND state IN (0, 1)
                         RETURNING idempotency_key",
                    )?
                    .query_row(params![id.as_bytes(), &*queue], |r| r.get(0))
                    .optional()?;
                if let Some(key) = removed {
                    if let Some(key) = key {
                        conn.prepare_cached(
                            "UPDATE queue_idempotency SET expires_at = ?4
                             WHERE queue = ?1 AND key = ?2 AND message_id = ?3",
                        )?
                        .execute(params![
                            &*queue,
                            key,
                            id.as_bytes(),
                            millis(Timestamp::now().plus(window))
                        ])?;
                    }
                    return Ok(Cancelled::Removed);
                }
                let state: Option<i64> = conn
                    .prepare_cached("SELECT state FROM queue_messages WHERE id = ?1 AND queue = ?2")?
                    .query_row(params![id.as_bytes(), &*queue], |r| r.get(0))
                    .optional()?;
                Ok(if state == Some(2) { Cancelled::Leased } else { Cancelled::NotFound })
            })
            .await
            .map_err(queue_error)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let queue = Arc::clone(&self.name);
        self.db
            .call(move |tx| {
                promote(tx, &queue, millis(Timestamp::now()))?;
                let conn = tx.conn();
                let count = |sql: &str| -> Result<u64, OpError> {
                    let n: i64 = conn.prepare_cached(sql)?.query_row(params![&*queue], |r| r.get(0))?;
                    Ok(u64::try_from(n).unwrap_or(0))
                };
                Ok(QueueStats {
                    ready: count("SELECT count(*) FROM queue_messages WHERE queue = ?1 AND state = 0")?,
                    delayed: count("SELECT count(*) FROM queue_messages WHERE queue = ?1 AND state = 1")?,
                    leased: count("SELECT count(*) FROM queue_messages WHERE queue = ?1 AND state = 2")?,
                    dead: count("SELECT count(*) FROM queue_messages WHERE queue = ?1 AND state = 3")?,
                    stale_settlements: count("SELECT coalesce(sum(stale), 0) FROM queue_state WHERE queue = ?1")?,
                })
            })
            .await
            .map_err(queue_error)
    }

    async fn topic_stats(&self) -> Result<std::collections::BTreeMap<String, QueueStats>, QueueError> {
        let queue = Arc::clone(&self.name);
        self.db
            .call(move |tx| {
                promote(tx, &queue, millis(Timestamp::now()))?;
                let mut stmt = tx.conn().prepare_cached(
                    "SELECT topic, state, count(*) FROM queue_messages WHERE queue = ?1 GROUP BY topic, state",
                )?;
                let mut rows = stmt.query(params![&*queue])?;
                let mut out = std::collections::BTreeMap::<String, QueueStats>::new();
                while let Some(row) = rows.next()? {
                    let (topic, state, n): (String, i64, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
                    let stats = out.entry(topic).or_default();
                    let n = u64::try_from(n).unwrap_or(0);
                    match state {
                        0 => stats.ready += n,
                        1 => stats.delayed += n,
                        2 => stats.leased += n,
                        _ => stats.dead += n,
                    }
                }
                Ok(out)
            })
            .await
            .map_err(queue_error)
    }

    async fn wait_for_work(&self, timeout: Duration) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Listen before looking, so a wake between the look and the wait is not lost.
        notified.as_mut().enable();
        let queue = Arc::clone(&self.name);
        let start = Timestamp::now();
        let timeout = match self.db.call(move |tx| next_due(tx, &queue)).await {
            Ok(Some(due)) => timeout.min(timestamp(due).since(start) + Duration::from_millis(1)),
            Ok(None) => timeout,
            // A failing store: do not spin; the caller's next claim reports the error.
            Err(_) => timeout,
        };
        let _ = tokio::time::timeout(timeout, notified).await;
    }
}
