//! The queue on [PostgreSQL](crate::postgres): messages are rows, claimed with
//! `FOR UPDATE SKIP LOCKED`, so any number of worker processes share one queue.
//!
//! Semantics are those of the [`Queue`] contract, exactly as the [memory
//! queue](super::memory) implements them. Several named queues share the tables of one
//! schema, separated by a `queue` column that leads every index.
//!
//! # Layout
//!
//! - `queue_messages` holds waiting and leased messages only: an ack deletes the row, a dead
//!   letter moves it to `queue_dead`. `visible_at` is when a waiting message becomes
//!   claimable, or when a leased message's lease lapses; a claim takes every row with
//!   `visible_at <= now()`, so an orphaned lease is picked up by the next claim, with no
//!   separate rescuer. The claim index is `(queue, topic, priority DESC, visible_at, seq)`:
//!   a claim walks it topic by topic (`LATERAL`, topics from `queue_topics`) and stops after
//!   `max` rows per topic, so a backlog of millions claims as fast as a hundred.
//! - Every claim adds one to the row's `token` (the fencing token); settlements and
//!   extensions match `id` and `token`, and the ones that match nothing are counted in
//!   `queue_state.stale`. An extension must come before the lease lapses: a lapsed lease is
//!   not extended even when no one claimed the message since, because its concurrency key
//!   may already be held by another message. A settlement of a lapsed lease that no one
//!   claimed since still applies (the run did happen).
//! - `queue_concurrency` holds one row per concurrency key that a lease holds. The claim
//!   skips messages whose key has a live row, and takes the row for the first message of
//!   each key with `INSERT .. ON CONFLICT DO UPDATE .. WHERE lease_until <= now()`: two
//!   claimers racing for one key serialize on the primary key and only one wins.
//! - `queue_idempotency` holds idempotency keys: held while the message waits, runs or is
//!   dead; after an ack, a cancel or the purge of its dead letter, remembered until
//!   `expires_at` and then pruned.
//!
//! Every call is one statement (one round trip, one implicit transaction), prepared once per
//! connection; batches go in as arrays through `unnest`. With
//! [`PostgresOptions::relaxed_settlements`] (the default), settlements and extensions commit without
//! waiting for the disk (`set_config('synchronous_commit', 'off', true)` inside the
//! statement); enqueues and claims always wait, so a crash never loses a message nor hands
//! out a fencing token twice. A statement that the server aborts
//! to break a deadlock is run again.
//!
//! # Wake-ups
//!
//! Enqueue, retry, release, redrive and the settlement that frees a concurrency key send
//! `NOTIFY <schema>_queue, '<queue name>'` once they committed (in a statement of their own,
//! batched with other notifications: see [`PostgresDb`]'s notes), and wake this process's
//! waiters at once. [`PostgresQueue::enqueue_in`] notifies inside the caller's transaction,
//! so the notification goes out at its commit and not at all on a rollback. The store's
//! listening connection wakes the queue's waiters in every process; a waiter also sleeps no
//! longer than the next delayed message or lease lapse.
//!
//! Wake-ups are counted rather than stored as a permit: [`Queue::wait_for_work`] returns at
//! once only when a wake-up came after the last claim of this handle started (that claim may
//! have missed its message), so idle workers do not each claim once more for nothing after
//! every enqueue (measured: three claims per job picked up by an idle runtime, now two).
//!
//! # Bloat
//!
//! Claims and settlements update and delete rows all the time. The hot table has a low
//! fillfactor and per-table autovacuum settings that vacuum it after a few thousand dead
//! rows instead of a fraction of the table. The store's maintenance task also vacuums it
//! itself (see [`PostgresOptions::vacuum`]) once it holds 50,000 dead rows, looking every
//! 2 s: each claim leaves a dead entry at the head of the claim index, which later claims
//! step over until a vacuum, and autovacuum visits a table at most once a minute
//! (`autovacuum_naptime`). Draining a backlog of a million, that check every 2 s instead of
//! every 30 s took the drain from 17,200 to 20,500 jobs/s.
//!
//! [`PostgresOptions::vacuum`]: crate::postgres::PostgresOptions::vacuum
//! [`PostgresOptions::relaxed_settlements`]: crate::postgres::PostgresOptions::relaxed_settlements

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use super::memory::DEFAULT_IDEMPOTENCY_WINDOW;
use super::{
    Cancelled, ClaimRequest, DeadLetter, Delivery, Enqueued, IdMap, KnownTopics, Lease, MessageId, NewMessage, Queue,
    QueueError, QueueStats, Settled, Settlement,
};
use crate::postgres::{BACKEND, PostgresDb, PostgresError, QueueWaker};
use crate::time::Timestamp;

/// Longest delay or lease honoured (about 100 years); longer ones are cut to it.
const MAX_DURATION_MICROS: i64 = 100 * 365 * 24 * 3600 * 1_000_000;

/// Settlement kinds, as the settle statement reads them.
const OP_ACK: i16 = 0;
const OP_RETRY: i16 = 1;
const OP_DEAD: i16 = 2;
const OP_RELEASE: i16 = 3;

/// The columns [`delivery`] reads, in order.
const DELIVERY_COLUMNS: &str = "id, topic, kind, payload, headers, priority, idempotency_key, concurrency_key, \
                                attempts, enqueued_at, last_error, token";

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX).min(MAX_DURATION_MICROS)
}

/// The statements of one schema, built once.
struct Sql {
    enqueue: String,
    /// `enqueue` for a batch without idempotency keys, outside a caller's transaction: the
    /// insert alone, returning the ids it created.
    enqueue_plain: String,
    idempotency_holders: String,
    claim: String,
    extend: String,
    settle: String,
    dead_letters: String,
    redrive: String,
    purge_dead: String,
    cancel: String,
    stats: String,
    topic_stats: String,
    next_due: String,
}

impl Sql {
    fn new(db: &PostgresDb) -> Self {
        let m = db.table("queue_messages");
        let dead = db.table("queue_dead");
        let idem = db.table("queue_idempotency");
        let locks = db.table("queue_concurrency");
        let topics = db.table("queue_topics");
        let state = db.table("queue_state");
        let seq = format!("'{}'", db.table("queue_seq"));
        let us = "* interval '1 microsecond'";
        Self {
            enqueue: format!(
                "WITH input AS (
                    SELECT * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::bytea[], $6::bytea[], $7::int4[],
                                         $8::int8[], $9::text[], $10::text[])
                        WITH ORDINALITY AS i(id, topic, kind, payload, headers, priority, delay_us, ikey, ckey, ord)
                ),
                firsts AS (
                    SELECT DISTINCT ON (ikey) ikey, id FROM input WHERE ikey IS NOT NULL ORDER BY ikey, ord
                ),
                taken AS (
                    INSERT INTO {idem} AS x (queue, key, message_id, expires_at)
                    SELECT $1, ikey, id, NULL FROM firsts ORDER BY ikey
                    ON CONFLICT (queue, key) DO UPDATE SET message_id = excluded.message_id, expires_at = NULL
                        WHERE x.expires_at IS NOT NULL AND x.expires_at <= now()
                    RETURNING key, message_id
                ),
                inserted AS (
                    INSERT INTO {m} (id, queue, topic, kind, payload, headers, priority, idempotency_key,
                                     concurrency_key, visible_at, seq, enqueued_at)
                    SELECT id, $1, topic, kind, payload, headers, priority, ikey, ckey, now() + delay_us {us},
                           nextval({seq}), now()
                    FROM input i
                    WHERE (ikey IS NULL OR EXISTS (SELECT 1 FROM taken t WHERE t.key = i.ikey AND t.message_id = i.id))
                      -- An id in the dead-letter store is taken too.
                      AND NOT EXISTS (SELECT 1 FROM {dead} d WHERE d.id = i.id)
                    ORDER BY ord
                    ON CONFLICT (id) DO NOTHING
                    RETURNING id
                ),
                new_topics AS (
                    INSERT INTO {topics} (queue, topic) SELECT $1, t FROM unnest($11::text[]) AS t
                    ON CONFLICT DO NOTHING
                ),
                woke AS (
                    -- Only inside the caller's transaction; otherwise sent after the commit.
                    SELECT pg_notify($12, $1) WHERE $12::text IS NOT NULL AND EXISTS (SELECT 1 FROM inserted)
                )
                SELECT i.id,
                       EXISTS (SELECT 1 FROM inserted n WHERE n.id = i.id),
                       coalesce((SELECT t.message_id FROM taken t WHERE t.key = i.ikey),
                                (SELECT x.message_id FROM {idem} x WHERE x.queue = $1 AND x.key = i.ikey
                                   AND (x.expires_at IS NULL OR x.expires_at > now()))),
                       (SELECT count(*) FROM woke)
                FROM input i ORDER BY i.ord"
            ),
            enqueue_plain: format!(
                "WITH input AS (
                    SELECT * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::bytea[], $6::bytea[], $7::int4[],
                                         $8::int8[], $9::text[])
                        WITH ORDINALITY AS i(id, topic, kind, payload, headers, priority, delay_us, ckey, ord)
                ),
                new_topics AS (
                    INSERT INTO {topics} (queue, topic) SELECT $1, t FROM unnest($10::text[]) AS t
                    ON CONFLICT DO NOTHING
                )
                INSERT INTO {m} (id, queue, topic, kind, payload, headers, priority, concurrency_key, visible_at, seq,
                                 enqueued_at)
                SELECT id, $1, topic, kind, payload, headers, priority, ckey, now() + delay_us {us}, nextval({seq}), now()
                FROM input i
                -- An id in the dead-letter store is taken too.
                WHERE NOT EXISTS (SELECT 1 FROM {dead} d WHERE d.id = i.id)
                ORDER BY ord
                ON CONFLICT (id) DO NOTHING
                RETURNING id"
            ),
            idempotency_holders: format!(
                "SELECT key, message_id FROM {idem} WHERE queue = $1 AND key = ANY($2::text[])
                   AND (expires_at IS NULL OR expires_at > now())"
            ),
            claim: format!(
                "WITH picked AS MATERIALIZED (
                    SELECT p.id, p.concurrency_key, p.priority, p.visible_at, p.seq
                    FROM unnest(CASE WHEN cardinality($2::text[]) = 0
                                     THEN ARRAY(SELECT topic FROM {topics} WHERE queue = $1)
                                     ELSE $2::text[] END) AS t(topic)
                    CROSS JOIN LATERAL (
                        SELECT q.id, q.concurrency_key, q.priority, q.visible_at, q.seq FROM {m} q
                        WHERE q.queue = $1 AND q.topic = t.topic AND q.visible_at <= now()
                          AND (q.concurrency_key IS NULL OR NOT EXISTS (
                                SELECT 1 FROM {locks} l
                                WHERE l.queue = $1 AND l.key = q.concurrency_key AND l.lease_until > now()))
                        ORDER BY q.priority DESC, q.visible_at, q.seq
                        LIMIT $3
                        FOR UPDATE SKIP LOCKED
                    ) p
                    ORDER BY p.priority DESC, p.visible_at, p.seq
                    LIMIT $3
                ),
                ranked AS (
                    SELECT id, concurrency_key,
                           row_number() OVER (PARTITION BY concurrency_key ORDER BY priority DESC, visible_at, seq) AS rn
                    FROM picked
                ),
                locked AS (
                    INSERT INTO {locks} AS l (queue, key, message_id, lease_until)
                    SELECT $1, concurrency_key, id, now() + $4::int8 {us}
                    FROM ranked WHERE concurrency_key IS NOT NULL AND rn = 1
                    ORDER BY concurrency_key
                    ON CONFLICT (queue, key) DO UPDATE SET message_id = excluded.message_id,
                                                           lease_until = excluded.lease_until
                        WHERE l.lease_until <= now()
                    RETURNING message_id
                ),
                -- `q.id IN (..)`, not a join in `FROM`: with statistics of a large table, the
                -- generic plan of the join scans the whole table (measured: 400 ms a claim
                -- with a million waiting).
                leased AS (
                    UPDATE {m} q SET leased = true, visible_at = now() + $4::int8 {us},
                                     attempts = q.attempts + 1, token = q.token + 1
                    WHERE q.id IN (SELECT id FROM ranked WHERE concurrency_key IS NULL
                                   UNION ALL SELECT message_id FROM locked)
                    RETURNING q.id, q.topic, q.kind, q.payload, q.headers, q.priority, q.idempotency_key,
                              q.concurrency_key, q.attempts, q.enqueued_at, q.last_error, q.token
                )
                -- The leased rows, then each picked row's place in claim order (`topic` NULL):
                -- the caller sorts. Joining `leased` to `picked` here was a nested loop over
                -- both (generic plan), 10% of the claim's time.
                SELECT l.*, NULL::int8 FROM leased l
                UNION ALL
                SELECT p.id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                       row_number() OVER (ORDER BY p.priority DESC, p.visible_at, p.seq)
                FROM picked p"
            ),
            extend: format!(
                "WITH s AS (SELECT * FROM unnest($2::uuid[], $3::int8[]) AS s(id, token)),
                ext AS (
                    UPDATE {m} q SET visible_at = now() + $4::int8 {us}
                    FROM s WHERE q.id = s.id AND q.token = s.token AND q.queue = $1 AND q.leased
                                 AND q.visible_at > now()
                    RETURNING q.id, q.token, q.concurrency_key, q.visible_at
                ),
                locks AS (
                    UPDATE {locks} l SET lease_until = e.visible_at FROM ext e
                    WHERE l.queue = $1 AND l.key = e.concurrency_key AND l.message_id = e.id
                ),
                missing AS (
                    SELECT count(*) AS n FROM s
                    WHERE NOT EXISTS (SELECT 1 FROM ext e WHERE e.id = s.id AND e.token = s.token)
                ),
                stale AS (
                    INSERT INTO {state} AS st (queue, stale) SELECT $1, n FROM missing WHERE n > 0
                    ON CONFLICT (queue) DO UPDATE SET stale = st.stale + excluded.stale
                ),
                relaxed AS (
                    SELECT set_config('synchronous_commit', 'off', true) WHERE $5::bool
                )
                SELECT id, token, (SELECT count(*) FROM relaxed) FROM ext"
            ),
            settle: format!(
                "WITH s AS (
                    SELECT * FROM unnest($2::uuid[], $3::int8[], $4::int2[], $5::int8[], $6::text[])
                        AS s(id, token, op, delay_us, error)
                ),
                target AS MATERIALIZED (
                    SELECT q.id, s.op, s.delay_us, s.error, q.concurrency_key
                    FROM {m} q JOIN s ON q.id = s.id AND q.token = s.token
                    WHERE q.queue = $1 AND q.leased
                    FOR UPDATE OF q
                ),
                removed AS (
                    DELETE FROM {m} q USING target t WHERE q.id = t.id AND t.op IN ({OP_ACK}, {OP_DEAD})
                    RETURNING q.id, q.queue, q.topic, q.kind, q.payload, q.headers, q.priority, q.idempotency_key,
                              q.concurrency_key, q.attempts, q.token, q.enqueued_at, t.op, t.error
                ),
                dead AS (
                    INSERT INTO {dead} (id, queue, topic, kind, payload, headers, priority, idempotency_key,
                                        concurrency_key, attempts, token, enqueued_at, last_error, failed_at, seq)
                    SELECT id, queue, topic, kind, payload, headers, priority, idempotency_key, concurrency_key,
                           attempts, token, enqueued_at, coalesce(error, ''), clock_timestamp(), nextval({seq})
                    FROM removed WHERE op = {OP_DEAD}
                    -- An older dead letter with this id (the id was enqueued again): the newer wins.
                    ON CONFLICT (id) DO UPDATE SET queue = excluded.queue, topic = excluded.topic,
                        kind = excluded.kind, payload = excluded.payload, headers = excluded.headers,
                        priority = excluded.priority, idempotency_key = excluded.idempotency_key,
                        concurrency_key = excluded.concurrency_key, attempts = excluded.attempts,
                        token = excluded.token, enqueued_at = excluded.enqueued_at,
                        last_error = excluded.last_error, failed_at = excluded.failed_at, seq = excluded.seq
                ),
                requeued AS (
                    UPDATE {m} q SET leased = false,
                        visible_at = CASE WHEN t.op = {OP_RETRY} THEN now() + t.delay_us {us} ELSE now() END,
                        seq = nextval({seq}),
                        last_error = CASE WHEN t.op = {OP_RETRY} THEN t.error ELSE q.last_error END,
                        attempts = CASE WHEN t.op = {OP_RELEASE} THEN greatest(q.attempts - 1, 0) ELSE q.attempts END
                    FROM target t WHERE q.id = t.id AND t.op IN ({OP_RETRY}, {OP_RELEASE})
                    RETURNING q.id
                ),
                remembered AS (
                    UPDATE {idem} x SET expires_at = now() + $7::int8 {us}
                    FROM removed r
                    WHERE r.op = {OP_ACK} AND x.queue = $1 AND x.key = r.idempotency_key AND x.message_id = r.id
                ),
                unlocked AS (
                    DELETE FROM {locks} l USING target t
                    WHERE l.queue = $1 AND l.key = t.concurrency_key AND l.message_id = t.id
                ),
                applied AS (
                    SELECT id FROM removed UNION ALL SELECT id FROM requeued
                ),
                -- With relaxed settlements, this transaction's commit does not wait for the disk.
                relaxed AS (
                    SELECT set_config('synchronous_commit', 'off', true) WHERE $9::bool
                ),
                stale AS (
                    INSERT INTO {state} AS st (queue, stale)
                    SELECT $1, n FROM (SELECT $8::int8 + cardinality($2::uuid[]) - (SELECT count(*) FROM applied) AS n) c
                    WHERE n > 0
                    ON CONFLICT (queue) DO UPDATE SET stale = st.stale + excluded.stale
                ),
                woke AS (
                    SELECT 1 WHERE EXISTS (
                        SELECT 1 FROM target t WHERE t.op IN ({OP_RETRY}, {OP_RELEASE}) OR t.concurrency_key IS NOT NULL)
                )
                SELECT a.id, (SELECT count(*) FROM woke), (SELECT count(*) FROM relaxed) FROM applied a"
            ),
            dead_letters: format!(
                "SELECT {DELIVERY_COLUMNS}, failed_at FROM {dead} WHERE queue = $1
                 ORDER BY failed_at DESC, seq DESC LIMIT $2"
            ),
            redrive: format!(
                "WITH d AS (
                    DELETE FROM {dead} WHERE queue = $1 AND id = $2
                      AND NOT EXISTS (SELECT 1 FROM {m} WHERE id = $2)
                    RETURNING *
                ),
                ins AS (
                    INSERT INTO {m} (id, queue, topic, kind, payload, headers, priority, idempotency_key,
                                     concurrency_key, leased, visible_at, seq, attempts, token, enqueued_at, last_error)
                    SELECT id, queue, topic, kind, payload, headers, priority, idempotency_key, concurrency_key,
                           false, now(), nextval({seq}), 0, token, enqueued_at, last_error
                    FROM d
                    RETURNING id
                ),
                new_topic AS (
                    INSERT INTO {topics} (queue, topic) SELECT queue, topic FROM d ON CONFLICT DO NOTHING
                )
                SELECT (SELECT count(*) FROM ins)"
            ),
            // Oldest first (the `queue_dead_recent` index read backwards); rows a redrive or
            // another pruner holds are left to them. A key is not touched when a message with
            // the purged id lives again in the queue (its id was enqueued anew): it holds it.
            purge_dead: format!(
                "WITH victims AS (
                    SELECT id FROM {dead} WHERE queue = $1 AND failed_at < $2
                    ORDER BY failed_at, seq LIMIT $3
                    FOR UPDATE SKIP LOCKED
                ),
                d AS (
                    DELETE FROM {dead} x USING victims v WHERE x.id = v.id RETURNING x.id, x.idempotency_key
                ),
                remembered AS (
                    UPDATE {idem} i SET expires_at = now() + $4::int8 {us}
                    FROM d WHERE i.queue = $1 AND i.key = d.idempotency_key AND i.message_id = d.id
                      AND NOT EXISTS (SELECT 1 FROM {m} WHERE id = d.id)
                )
                SELECT count(*) FROM d"
            ),
            cancel: format!(
                "WITH del AS (
                    DELETE FROM {m} WHERE queue = $1 AND id = $2 AND NOT leased RETURNING idempotency_key
                ),
                remembered AS (
                    UPDATE {idem} x SET expires_at = now() + $3::int8 {us}
                    FROM del WHERE x.queue = $1 AND x.key = del.idempotency_key AND x.message_id = $2
                )
                SELECT (SELECT count(*) FROM del),
                       EXISTS (SELECT 1 FROM {m} WHERE queue = $1 AND id = $2 AND leased)"
            ),
            stats: format!(
                "SELECT count(*) FILTER (WHERE visible_at <= now()),
                        count(*) FILTER (WHERE NOT leased AND visible_at > now()),
                        count(*) FILTER (WHERE leased AND visible_at > now()),
                        (SELECT count(*) FROM {dead} WHERE queue = $1),
                        coalesce((SELECT stale FROM {state} WHERE queue = $1), 0)
                 FROM {m} WHERE queue = $1"
            ),
            topic_stats: format!(
                "SELECT topic,
                        count(*) FILTER (WHERE visible_at <= now()),
                        count(*) FILTER (WHERE NOT leased AND visible_at > now()),
                        count(*) FILTER (WHERE leased AND visible_at > now()),
                        0::int8
                 FROM {m} WHERE queue = $1 GROUP BY topic
                 UNION ALL
                 SELECT topic, 0, 0, 0, count(*) FROM {dead} WHERE queue = $1 GROUP BY topic"
            ),
            next_due: format!(
                "SELECT ceil(extract(epoch FROM min(visible_at) - now()) * 1000)::int8
                 FROM {m} WHERE queue = $1 AND visible_at > now()"
            ),
        }
    }
}

/// The PostgreSQL queue. Cheap to clone; clones share the same queue.
#[derive(Clone)]
pub struct PostgresQueue {
    db: Arc<PostgresDb>,
    name: Arc<str>,
    notify: Arc<QueueWaker>,
    /// The wake-up count every claim of this handle has looked past (see `wait_for_work`).
    seen: Arc<AtomicU64>,
    /// Claims of this handle under way.
    claiming: Arc<AtomicUsize>,
    idempotency_window: Duration,
    sql: Arc<Sql>,
    channel: Arc<str>,
    /// The name as a statement parameter.
    name_owned: Arc<String>,
    /// The channel, as the enqueue statement's parameter inside a caller's transaction.
    channel_param: Arc<Option<String>>,
    /// Topics known to be in `queue_topics` (written by a committed enqueue).
    known_topics: Arc<KnownTopics>,
}

impl std::fmt::Debug for PostgresQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresQueue").field("db", &self.db).field("name", &self.name).finish_non_exhaustive()
    }
}

/// An enqueue batch as the statement's arrays.
struct EnqueueArgs {
    ids: Vec<uuid::Uuid>,
    topics: Vec<String>,
    kinds: Vec<String>,
    payloads: Vec<Vec<u8>>,
    headers: Vec<Option<Vec<u8>>>,
    priorities: Vec<i32>,
    delays: Vec<i64>,
    idempotency_keys: Vec<Option<String>>,
    concurrency_keys: Vec<Option<String>>,
    new_topics: Vec<String>,
}

impl EnqueueArgs {
    fn new(messages: Vec<NewMessage>, new_topics: Vec<String>) -> Self {
        let n = messages.len();
        let mut a = EnqueueArgs {
            ids: Vec::with_capacity(n),
            topics: Vec::with_capacity(n),
            kinds: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            headers: Vec::with_capacity(n),
            priorities: Vec::with_capacity(n),
            delays: Vec::with_capacity(n),
            idempotency_keys: Vec::with_capacity(n),
            concurrency_keys: Vec::with_capacity(n),
            new_topics,
        };
        for m in messages {
            a.ids.push(m.id.0);
            a.topics.push(m.topic);
            a.kinds.push(m.kind);
            a.payloads.push(m.payload);
            // Serializing strings to JSON cannot fail.
            a.headers.push((!m.headers.is_empty()).then(|| serde_json::to_vec(&m.headers).unwrap_or_default()));
            a.priorities.push(m.priority);
            a.delays.push(micros(m.delay));
            a.idempotency_keys.push(m.idempotency_key);
            a.concurrency_keys.push(m.concurrency_key);
        }
        a
    }

    /// Whether the batch can take `Sql::enqueue_plain` (outside a caller's transaction).
    fn plain(&self) -> bool {
        self.idempotency_keys.iter().all(Option::is_none)
    }

    /// The parameters of `Sql::enqueue_plain` (`plain`) or `Sql::enqueue` (without a channel).
    fn pooled_params<'a>(&'a self, queue: &'a String, no_channel: &'a Option<String>) -> Vec<&'a (dyn ToSql + Sync)> {
        if self.plain() {
            vec![
                queue,
                &self.ids,
                &self.topics,
                &self.kinds,
                &self.payloads,
                &self.headers,
                &self.priorities,
                &self.delays,
                &self.concurrency_keys,
                &self.new_topics,
            ]
        } else {
            self.params(queue, no_channel).iter().map(|(p, _)| *p).collect()
        }
    }

    fn params<'a>(&'a self, queue: &'a String, channel: &'a Option<String>) -> [(&'a (dyn ToSql + Sync), Type); 12] {
        [
            (queue, Type::TEXT),
            (&self.ids, Type::UUID_ARRAY),
            (&self.topics, Type::TEXT_ARRAY),
            (&self.kinds, Type::TEXT_ARRAY),
            (&self.payloads, Type::BYTEA_ARRAY),
            (&self.headers, Type::BYTEA_ARRAY),
            (&self.priorities, Type::INT4_ARRAY),
            (&self.delays, Type::INT8_ARRAY),
            (&self.idempotency_keys, Type::TEXT_ARRAY),
            (&self.concurrency_keys, Type::TEXT_ARRAY),
            (&self.new_topics, Type::TEXT_ARRAY),
            (channel, Type::TEXT),
        ]
    }
}

/// Runs `f` again when the server aborted it to break a deadlock (rare: claimers and
/// settlers take concurrency-key rows in key order).
async fn retrying<T, F, Fut>(mut f: F) -> Result<T, PostgresError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, PostgresError>>,
{
    let mut attempt = 0u32;
    loop {
        match f().await {
            Err(e) if e.retryable() && attempt < 5 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=10 * u64::from(attempt)))).await;
            }
            other => return other,
        }
    }
}

impl PostgresQueue {
    /// The queue called `queue_name` in `db`.
    pub fn new(db: Arc<PostgresDb>, queue_name: &str) -> Self {
        let notify = db.queue_notify(queue_name);
        let sql = Arc::new(Sql::new(&db));
        let channel = db.queue_channel();
        Self {
            db,
            name: queue_name.into(),
            name_owned: Arc::new(queue_name.to_owned()),
            channel: channel.as_str().into(),
            channel_param: Arc::new(Some(channel)),
            seen: Arc::new(AtomicU64::new(notify.generation.load(Ordering::SeqCst))),
            claiming: Arc::default(),
            notify,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
            sql,
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
    pub fn db(&self) -> &Arc<PostgresDb> {
        &self.db
    }

    /// Enqueues `messages` through `client`: pass your own transaction, and the messages
    /// exist (and wake workers) only if it commits; a rollback leaves no trace.
    ///
    /// The wake-up is a `NOTIFY` inside your transaction. PostgreSQL (up to version 16)
    /// commits notifying transactions one at a time, server-wide, so prefer [`Queue::enqueue`]
    /// for bulk loads that need no transaction of their own (measured here: 16 producers of
    /// single messages, ~800 msg/s this way against ~5,000 msg/s through `enqueue`).
    ///
    /// ```no_run
    /// # async fn demo(queue: netscript_runtime::queue::postgres::PostgresQueue) -> Result<(), Box<dyn std::error::Error>> {
    /// use netscript_runtime::queue::NewMessage;
    /// let mut conn = queue.db().pool().get().await?;
    /// let tx = conn.transaction().await?;
    /// tx.execute("UPDATE orders SET state = 'paid' WHERE id = $1", &[&42i64]).await?;
    /// queue.enqueue_in(&*tx, vec![NewMessage::new("mail", "receipt", b"42".to_vec())]).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn enqueue_in<C>(&self, client: &C, messages: Vec<NewMessage>) -> Result<Vec<Enqueued>, QueueError>
    where
        C: tokio_postgres::GenericClient + Sync,
    {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        // The transaction may roll back: always (re)write the topics, never cache them.
        let mut seen = HashSet::new();
        let topics = messages.iter().map(|m| m.topic.clone()).filter(|t| seen.insert(t.clone())).collect();
        let args = EnqueueArgs::new(messages, topics);
        let rows = client
            .query_typed(&self.sql.enqueue, &args.params(&self.name_owned, &self.channel_param))
            .await
            .map_err(|e| self.db.error(&e))?;
        let out = self.enqueue_results(&args, &rows)?;
        Ok(match out {
            Ok(done) => done,
            Err(missing) => {
                let holders = client
                    .query_typed(
                        &self.sql.idempotency_holders,
                        &[(&&*self.name, Type::TEXT), (&missing, Type::TEXT_ARRAY)],
                    )
                    .await
                    .map_err(|e| self.db.error(&e))?;
                self.resolve_holders(&args, &rows, &holders)?
            }
        })
    }

    async fn enqueue_pooled(&self, messages: Vec<NewMessage>) -> Result<Vec<Enqueued>, PostgresError> {
        let topics = self.known_topics.unknown(&messages);
        let args = EnqueueArgs::new(messages, topics);
        let client = self.db.client().await?;
        let stmt = self.enqueue_statement(&client, &args).await?;
        let no_channel = None;
        let params = args.pooled_params(&self.name_owned, &no_channel);
        let rows = retrying(|| async { client.query(&stmt, &params).await.map_err(|e| self.db.error(&e)) }).await?;
        let out = self.outcomes(&client, &args, &rows).await?;
        self.enqueued(&args.new_topics, &out);
        Ok(out)
    }

    /// Enqueues `messages` and, in the same transaction, writes to `kv` the write of each
    /// message that was created (`writes[i]` goes with `messages[i]`; a duplicate's write is
    /// not made). `kv` must be the store of this queue's database, and the writes sets without
    /// checks. `on_commit` runs with the outcomes once the transaction committed, before this
    /// process's idle workers are woken for the messages.
    ///
    /// This is how the runtime writes an execution's queued record with its message: one
    /// commit instead of two, and no record without its message. Two round trips: `BEGIN`
    /// with the enqueue, then the created messages' writes with the `COMMIT`. The transaction
    /// runs on a task of its own, so a caller that stops waiting (a timeout, a dropped
    /// request) never leaves a pooled connection inside an open transaction: it commits or
    /// rolls back all the same.
    pub async fn enqueue_with_kv(
        &self,
        kv: &crate::kv::postgres::PostgresKv,
        messages: Vec<NewMessage>,
        writes: Vec<crate::kv::AtomicWrite>,
        on_commit: impl FnOnce(&[Enqueued]) + Send + 'static,
    ) -> Result<Vec<Enqueued>, QueueError> {
        super::joint_refusal(
            BACKEND,
            Arc::ptr_eq(kv.db(), &self.db),
            "database",
            messages.len(),
            &writes,
            |w| w.checks.is_empty() && w.mutations.iter().all(|m| matches!(m, crate::kv::Mutation::Set { .. })),
            "unconditional sets (no checks, no deletes)",
        )?;
        if messages.is_empty() {
            on_commit(&[]);
            return Ok(Vec::new());
        }
        let topics = self.known_topics.unknown(&messages);
        let args = EnqueueArgs::new(messages, topics);
        let (queue, kv) = (self.clone(), kv.clone());
        let task = tokio::spawn(async move {
            let (out, notes) = queue.enqueue_with_kv_tx(&kv, &args, &writes).await?;
            on_commit(&out);
            kv.notify_committed(notes);
            queue.enqueued(&args.new_topics, &out);
            Ok(out)
        });
        task.await
            .map_err(|e| QueueError::Backend { backend: BACKEND, message: format!("the enqueue task failed: {e}") })?
    }

    /// The transaction of [`enqueue_with_kv`](Self::enqueue_with_kv), tried again when the
    /// server aborted it to break a deadlock: the outcomes and the writes' notifications.
    async fn enqueue_with_kv_tx(
        &self,
        kv: &crate::kv::postgres::PostgresKv,
        args: &EnqueueArgs,
        writes: &[crate::kv::AtomicWrite],
    ) -> Result<(Vec<Enqueued>, Vec<String>), PostgresError> {
        let client = self.db.client().await?;
        // Prepared first: a statement prepared among pipelined requests goes out after them.
        let enqueue = self.enqueue_statement(&client, args).await?;
        let write = kv.write_statement(&client).await?;
        let no_channel = None;
        let params = args.pooled_params(&self.name_owned, &no_channel);
        retrying(|| async {
            // Every request of a step is sent before any answer is read.
            let (begin, rows) = tokio::join!(client.batch_execute("BEGIN"), client.query(&enqueue, &params));
            let step = async {
                begin.map_err(|e| self.db.error(&e))?;
                let rows = rows.map_err(|e| self.db.error(&e))?;
                self.outcomes(&client, args, &rows).await
            };
            let out = match step.await {
                Ok(out) => out,
                Err(e) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(e);
                }
            };
            let mut created = crate::kv::AtomicWrite::new();
            for (outcome, w) in out.iter().zip(writes) {
                if matches!(outcome, Enqueued::Created(_)) {
                    created.mutations.extend(w.mutations.iter().cloned());
                }
            }
            // After a failed write, the `COMMIT` rolls back.
            let (notes, commit) =
                tokio::join!(kv.write_sets_in(&client, &write, created), client.batch_execute("COMMIT"));
            let notes = notes?;
            commit.map_err(|e| self.db.error(&e))?;
            Ok((out, notes))
        })
        .await
    }

    /// The enqueue statement for `args` outside a caller's transaction, prepared on `client`.
    async fn enqueue_statement(
        &self,
        client: &deadpool_postgres::Object,
        args: &EnqueueArgs,
    ) -> Result<tokio_postgres::Statement, PostgresError> {
        let sql = if args.plain() { &self.sql.enqueue_plain } else { &self.sql.enqueue };
        client.prepare_cached(sql).await.map_err(|e| self.db.error(&e))
    }

    /// The outcome per message of an enqueue statement's `rows` (`Sql::enqueue_plain`'s for a
    /// plain batch), reading the holders of idempotency keys that committed after the
    /// statement's snapshot.
    async fn outcomes(
        &self,
        client: &deadpool_postgres::Object,
        args: &EnqueueArgs,
        rows: &[Row],
    ) -> Result<Vec<Enqueued>, PostgresError> {
        if args.plain() {
            // The ids it created; any other (or a repeat within the batch) was taken.
            let mut created = HashSet::with_capacity(rows.len());
            for row in rows {
                created.insert(row.try_get::<_, uuid::Uuid>(0).map_err(|e| self.db.error(&e))?);
            }
            return Ok(args
                .ids
                .iter()
                .map(|id| {
                    if created.remove(id) {
                        Enqueued::Created(MessageId(*id))
                    } else {
                        Enqueued::Duplicate(MessageId(*id))
                    }
                })
                .collect());
        }
        match self.enqueue_results(args, rows).map_err(|e| self.db.corrupt(e.to_string()))? {
            Ok(done) => Ok(done),
            Err(missing) => {
                let stmt = client.prepare_cached(&self.sql.idempotency_holders).await.map_err(|e| self.db.error(&e))?;
                let holders = client.query(&stmt, &[&&*self.name, &missing]).await.map_err(|e| self.db.error(&e))?;
                self.resolve_holders(args, rows, &holders).map_err(|e| self.db.corrupt(e.to_string()))
            }
        }
    }

    /// After an enqueue committed: remembers its topics, wakes this process's waiters and
    /// notifies the others when it created a message.
    fn enqueued(&self, new_topics: &[String], out: &[Enqueued]) {
        if !new_topics.is_empty() {
            self.known_topics.remember(new_topics.iter().cloned());
        }
        if out.iter().any(|e| matches!(e, Enqueued::Created(_))) {
            self.notify.wake();
            self.db.notify(&self.channel, self.name.to_string());
        }
    }

    /// The outcome per message; `Err(keys)` when some keys' holders committed after the
    /// statement's snapshot and must be read again.
    #[allow(clippy::type_complexity)]
    fn enqueue_results(
        &self,
        args: &EnqueueArgs,
        rows: &[Row],
    ) -> Result<Result<Vec<Enqueued>, Vec<String>>, QueueError> {
        match self.resolve(args, rows, &HashMap::new()) {
            Ok(out) => Ok(Ok(out)),
            Err(Unresolved::Keys(missing)) => Ok(Err(missing)),
            Err(Unresolved::Error(e)) => Err(e),
        }
    }

    fn resolve_holders(&self, args: &EnqueueArgs, rows: &[Row], holders: &[Row]) -> Result<Vec<Enqueued>, QueueError> {
        let mut found = HashMap::new();
        for h in holders {
            let key: String = h.try_get(0).map_err(|e| QueueError::from(self.db.error(&e)))?;
            let id: uuid::Uuid = h.try_get(1).map_err(|e| QueueError::from(self.db.error(&e)))?;
            found.insert(key, MessageId(id));
        }
        match self.resolve(args, rows, &found) {
            Ok(out) => Ok(out),
            Err(Unresolved::Keys(missing)) => Err(QueueError::Backend {
                backend: BACKEND,
                message: format!(
                    "idempotency key `{}` changed hands while the enqueue ran; enqueue again",
                    missing.join("`, `")
                ),
            }),
            Err(Unresolved::Error(e)) => Err(e),
        }
    }

    fn resolve(
        &self,
        args: &EnqueueArgs,
        rows: &[Row],
        extra_holders: &HashMap<String, MessageId>,
    ) -> Result<Vec<Enqueued>, Unresolved> {
        let ids = &args.ids;
        if rows.len() != ids.len() {
            return Err(Unresolved::Error(QueueError::Backend {
                backend: BACKEND,
                message: format!("enqueue returned {} rows for {} messages", rows.len(), ids.len()),
            }));
        }
        let mut out = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        let mut seen = HashSet::with_capacity(ids.len());
        for ((id, key), row) in ids.iter().map(|u| MessageId(*u)).zip(&args.idempotency_keys).zip(rows) {
            let get = |e: tokio_postgres::Error| Unresolved::Error(self.db.error(&e).into());
            let created: bool = row.try_get(1).map_err(get)?;
            let holder: Option<uuid::Uuid> = row.try_get(2).map_err(get)?;
            // The same id twice in one batch: the first one counts.
            if !seen.insert(id) {
                out.push(Enqueued::Duplicate(id));
                continue;
            }
            if created {
                out.push(Enqueued::Created(id));
                continue;
            }
            match (key, holder) {
                (None, _) => out.push(Enqueued::Duplicate(id)),
                (Some(_), Some(h)) => out.push(Enqueued::Duplicate(MessageId(h))),
                (Some(k), None) => match extra_holders.get(k) {
                    Some(h) => out.push(Enqueued::Duplicate(*h)),
                    None => missing.push(k.clone()),
                },
            }
        }
        if missing.is_empty() { Ok(out) } else { Err(Unresolved::Keys(missing)) }
    }

    async fn claim_once(&self, request: &ClaimRequest) -> Result<Vec<Delivery>, PostgresError> {
        let mut seen = HashSet::new();
        let topics: Vec<&str> = request.topics.iter().map(String::as_str).filter(|t| seen.insert(*t)).collect();
        let max = i64::try_from(request.max).unwrap_or(i64::MAX);
        let lease = micros(request.lease);
        let client = self.db.client().await?;
        let stmt = client.prepare_cached(&self.sql.claim).await.map_err(|e| self.db.error(&e))?;
        let rows = retrying(|| async {
            client.query(&stmt, &[&&*self.name, &topics, &max, &lease]).await.map_err(|e| self.db.error(&e))
        })
        .await?;
        drop(client);
        let mut out = Vec::with_capacity(rows.len() / 2);
        let mut corrupt = Vec::new();
        let mut place = IdMap::default();
        for row in &rows {
            if let Some(at) = row.try_get::<_, Option<i64>>(12).map_err(|e| self.db.error(&e))? {
                place.insert(MessageId(row.try_get(0).map_err(|e| self.db.error(&e))?), at);
                continue;
            }
            match delivery(row) {
                Ok(d) => out.push(d),
                Err(Decode::Message(lease, reason)) => corrupt.push((lease, reason)),
                Err(Decode::Driver(e)) => return Err(self.db.error(&e)),
            }
        }
        out.sort_unstable_by_key(|d| place.get(&d.id).copied().unwrap_or(i64::MAX));
        if !corrupt.is_empty() {
            // Undecodable rows go to the dead-letter store with the reason, not to workers.
            for (lease, reason) in &corrupt {
                tracing::error!(queue = %self.name, message = %lease.message_id, %reason, "corrupt message dead-lettered");
            }
            let settlements = corrupt
                .into_iter()
                .map(|(lease, reason)| Settlement::DeadLetter { lease, error: format!("corrupt message: {reason}") })
                .collect();
            self.settle_pooled(settlements).await?;
        }
        Ok(out)
    }

    async fn settle_pooled(&self, settlements: Vec<Settlement>) -> Result<Vec<Settled>, PostgresError> {
        let n = settlements.len();
        let mut ids = Vec::with_capacity(n);
        let mut tokens = Vec::with_capacity(n);
        let mut ops = Vec::with_capacity(n);
        let mut delays = Vec::with_capacity(n);
        let mut errors: Vec<Option<String>> = Vec::with_capacity(n);
        // A message settled twice in one batch: the first settlement wins, the others are
        // stale (as they would be one after the other).
        let mut seen = HashSet::with_capacity(n);
        let mut duplicate = vec![false; n];
        for (i, s) in settlements.into_iter().enumerate() {
            let lease = *s.lease();
            if !seen.insert(lease.message_id) {
                duplicate[i] = true;
                continue;
            }
            ids.push(lease.message_id.0);
            tokens.push(i64::try_from(lease.token).unwrap_or(-1));
            let (op, delay, error) = match s {
                Settlement::Ack(_) => (OP_ACK, 0, None),
                Settlement::Retry { delay, error, .. } => (OP_RETRY, micros(delay), Some(error)),
                Settlement::DeadLetter { error, .. } => (OP_DEAD, 0, Some(error)),
                Settlement::Release(_) => (OP_RELEASE, 0, None),
            };
            ops.push(op);
            delays.push(delay);
            errors.push(error);
        }
        let extra_stale = duplicate.iter().filter(|d| **d).count() as i64;
        let window = micros(self.idempotency_window);
        let client = self.db.client().await?;
        let stmt = client.prepare_cached(&self.sql.settle).await.map_err(|e| self.db.error(&e))?;
        let rows = retrying(|| async {
            client
                .query(
                    &stmt,
                    &[&&*self.name, &ids, &tokens, &ops, &delays, &errors, &window, &extra_stale, &self.db.relaxed()],
                )
                .await
                .map_err(|e| self.db.error(&e))
        })
        .await?;
        drop(client);
        let mut applied = HashSet::with_capacity(rows.len());
        let mut woke = false;
        for row in &rows {
            let id: uuid::Uuid = row.try_get(0).map_err(|e| self.db.error(&e))?;
            let w: i64 = row.try_get(1).map_err(|e| self.db.error(&e))?;
            woke |= w > 0;
            applied.insert(id);
        }
        if woke {
            self.notify.wake();
            self.db.notify(&self.channel, self.name.to_string());
        }
        let mut next = ids.iter();
        Ok(duplicate
            .iter()
            .map(|dup| {
                if *dup {
                    return Settled::Stale;
                }
                match next.next() {
                    Some(id) if applied.contains(id) => Settled::Ok,
                    _ => Settled::Stale,
                }
            })
            .collect())
    }

    async fn extend_once(&self, leases: &[Lease], lease: Duration) -> Result<Vec<Settled>, PostgresError> {
        let ids: Vec<uuid::Uuid> = leases.iter().map(|l| l.message_id.0).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| i64::try_from(l.token).unwrap_or(-1)).collect();
        let lease = micros(lease);
        let client = self.db.client().await?;
        let stmt = client.prepare_cached(&self.sql.extend).await.map_err(|e| self.db.error(&e))?;
        let rows = retrying(|| async {
            client
                .query(&stmt, &[&&*self.name, &ids, &tokens, &lease, &self.db.relaxed()])
                .await
                .map_err(|e| self.db.error(&e))
        })
        .await?;
        let mut ok = HashSet::with_capacity(rows.len());
        for row in &rows {
            let id: uuid::Uuid = row.try_get(0).map_err(|e| self.db.error(&e))?;
            let token: i64 = row.try_get(1).map_err(|e| self.db.error(&e))?;
            ok.insert((id, token));
        }
        Ok(ids
            .iter()
            .zip(&tokens)
            .map(|(id, token)| if ok.contains(&(*id, *token)) { Settled::Ok } else { Settled::Stale })
            .collect())
    }

    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, PostgresError> {
        let client = self.db.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(|e| self.db.error(&e))?;
        retrying(|| async { client.query(&stmt, params).await.map_err(|e| self.db.error(&e)) }).await
    }
}

/// Counts a claim of a handle while it runs (also when its future is dropped).
struct Claiming<'a> {
    count: &'a AtomicUsize,
    alone: bool,
    done: bool,
}

impl<'a> Claiming<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        let alone = count.fetch_add(1, Ordering::SeqCst) == 0;
        Self { count, alone, done: false }
    }

    /// Ends the claim: whether no other claim of the handle ran at any time beside it.
    fn end(mut self) -> bool {
        self.done = true;
        self.count.fetch_sub(1, Ordering::SeqCst) == 1 && self.alone
    }
}

impl Drop for Claiming<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.count.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

enum Unresolved {
    Keys(Vec<String>),
    Error(QueueError),
}

enum Decode {
    /// The row's message cannot be delivered: its lease and why.
    Message(Lease, String),
    Driver(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for Decode {
    fn from(e: tokio_postgres::Error) -> Self {
        Decode::Driver(e)
    }
}

/// A row of [`DELIVERY_COLUMNS`] as a delivery.
fn delivery(row: &Row) -> Result<Delivery, Decode> {
    let id = MessageId(row.try_get::<_, uuid::Uuid>(0)?);
    let raw_token: i64 = row.try_get(11)?;
    let lease = Lease { message_id: id, token: u64::try_from(raw_token).unwrap_or(0) };
    let bad = |reason: String| Decode::Message(lease, reason);
    let token = u64::try_from(raw_token).map_err(|_| bad(format!("negative fencing token {raw_token}")))?;
    let headers = match row.try_get::<_, Option<Vec<u8>>>(4)? {
        None => Vec::new(),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid headers: {e}")))?,
    };
    let attempts: i32 = row.try_get(8)?;
    let enqueued_at: SystemTime = row.try_get(9)?;
    Ok(Delivery {
        id,
        topic: row.try_get(1)?,
        kind: row.try_get(2)?,
        payload: row.try_get(3)?,
        headers,
        priority: row.try_get(5)?,
        idempotency_key: row.try_get(6)?,
        concurrency_key: row.try_get(7)?,
        attempt: u32::try_from(attempts).unwrap_or(0),
        enqueued_at: Timestamp::from(enqueued_at),
        last_error: row.try_get(10)?,
        lease: Lease { message_id: id, token },
    })
}

fn count(row: &Row, i: usize) -> Result<u64, tokio_postgres::Error> {
    Ok(u64::try_from(row.try_get::<_, i64>(i)?).unwrap_or(0))
}

#[async_trait]
impl Queue for PostgresQueue {
    fn provider(&self) -> &'static str {
        BACKEND
    }

    async fn enqueue(&self, messages: Vec<NewMessage>) -> Result<Vec<Enqueued>, QueueError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.enqueue_pooled(messages).await?)
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Delivery>, QueueError> {
        if request.max == 0 {
            return Ok(Vec::new());
        }
        // A claim looks past every wake-up counted before it started. Claims of this handle
        // that overlap may ask for different topics: then none counts as having looked.
        let generation = self.notify.generation.load(Ordering::SeqCst);
        let claiming = Claiming::start(&self.claiming);
        let out = self.claim_once(&request).await;
        let alone = claiming.end();
        self.seen.store(if alone && out.is_ok() { generation } else { 0 }, Ordering::SeqCst);
        Ok(out?)
    }

    async fn extend(&self, leases: &[Lease], lease: Duration) -> Result<Vec<Settled>, QueueError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.extend_once(leases, lease).await?)
    }

    async fn settle(&self, settlements: Vec<Settlement>) -> Result<Vec<Settled>, QueueError> {
        if settlements.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.settle_pooled(settlements).await?)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.query(&self.sql.dead_letters, &[&&*self.name, &limit]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let message = match delivery(row) {
                Ok(d) => d,
                Err(Decode::Message(lease, reason)) => {
                    return Err(self.db.corrupt(format!("dead letter {}: {reason}", lease.message_id)).into());
                }
                Err(Decode::Driver(e)) => return Err(self.db.error(&e).into()),
            };
            let failed_at: SystemTime = row.try_get(12).map_err(|e| self.db.error(&e))?;
            let error = message.last_error.clone().unwrap_or_default();
            out.push(DeadLetter { message, error, failed_at: Timestamp::from(failed_at) });
        }
        Ok(out)
    }

    async fn redrive(&self, id: MessageId) -> Result<bool, QueueError> {
        let rows = self.query(&self.sql.redrive, &[&&*self.name, &id.0]).await?;
        let moved = match rows.first() {
            Some(row) => count(row, 0).map_err(|e| self.db.error(&e))? > 0,
            None => false,
        };
        if moved {
            self.notify.wake();
            self.db.notify(&self.channel, self.name.to_string());
        }
        Ok(moved)
    }

    async fn purge_dead(&self, failed_before: Timestamp, limit: usize) -> Result<usize, QueueError> {
        if limit == 0 {
            return Ok(0);
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let window = micros(self.idempotency_window);
        let before = failed_before.to_system_time();
        let rows = self.query(&self.sql.purge_dead, &[&&*self.name, &before, &limit, &window]).await?;
        let purged = match rows.first() {
            Some(row) => count(row, 0).map_err(|e| self.db.error(&e))?,
            None => 0,
        };
        Ok(usize::try_from(purged).unwrap_or(usize::MAX))
    }

    async fn cancel(&self, id: MessageId) -> Result<Cancelled, QueueError> {
        let window = micros(self.idempotency_window);
        let rows = self.query(&self.sql.cancel, &[&&*self.name, &id.0, &window]).await?;
        let Some(row) = rows.first() else { return Ok(Cancelled::NotFound) };
        let removed = count(row, 0).map_err(|e| self.db.error(&e))? > 0;
        let leased: bool = row.try_get(1).map_err(|e| self.db.error(&e))?;
        Ok(if removed {
            Cancelled::Removed
        } else if leased {
            Cancelled::Leased
        } else {
            Cancelled::NotFound
        })
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let rows = self.query(&self.sql.stats, &[&&*self.name]).await?;
        let Some(row) = rows.first() else { return Ok(QueueStats::default()) };
        let get = |i| count(row, i).map_err(|e| QueueError::from(self.db.error(&e)));
        Ok(QueueStats { ready: get(0)?, delayed: get(1)?, leased: get(2)?, dead: get(3)?, stale_settlements: get(4)? })
    }

    async fn topic_stats(&self) -> Result<BTreeMap<String, QueueStats>, QueueError> {
        let rows = self.query(&self.sql.topic_stats, &[&&*self.name]).await?;
        let mut out = BTreeMap::<String, QueueStats>::new();
        for row in &rows {
            let err = |e: tokio_postgres::Error| QueueError::from(self.db.error(&e));
            let topic: String = row.try_get(0).map_err(err)?;
            let s = out.entry(topic).or_default();
            s.ready += count(row, 1).map_err(err)?;
            s.delayed += count(row, 2).map_err(err)?;
            s.leased += count(row, 3).map_err(err)?;
            s.dead += count(row, 4).map_err(err)?;
        }
        Ok(out)
    }

    async fn wait_for_work(&self, timeout: Duration) {
        let notified = self.notify.notify.notified();
        tokio::pin!(notified);
        // Listen before looking, so a wake between the look and the wait is not lost.
        notified.as_mut().enable();
        // A wake-up since the last claim started (or the last wait began) may be for a
        // message that claim did not see: return at once. Otherwise sleep until the next one.
        let generation = self.notify.generation.load(Ordering::SeqCst);
        if self.seen.swap(generation, Ordering::SeqCst) < generation {
            return;
        }
        let timeout = match self.query(&self.sql.next_due, &[&&*self.name]).await {
            Ok(rows) => match rows.first().and_then(|r| r.try_get::<_, Option<i64>>(0).ok().flatten()) {
                Some(ms) => timeout.min(Duration::from_millis(u64::try_from(ms).unwrap_or(0) + 1)),
                None => timeout,
            },
            // A failing server: do not spin; the caller's next claim reports the error.
            Err(_) => timeout,
        };
        let _ = tokio::time::timeout(timeout, notified).await;
    }
}
