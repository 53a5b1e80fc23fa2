//! The key-value store on [PostgreSQL](crate::postgres): one row per key in the `kv` table
//! of the store's schema.
//!
//! Keys are stored as their [`Key::encode`] bytes in a `bytea` primary key; PostgreSQL
//! compares `bytea` bytewise, so index order is key order and a prefix is a range scan.
//! Versionstamps come from a sequence, taken once per committed [`AtomicWrite`] (a write
//! whose checks fail takes none).
//!
//! An [`AtomicWrite`] takes a transaction-scoped advisory lock on every key it checks or
//! changes (in one sorted order, so writers never deadlock), then checks and writes in one
//! statement that starts after the locks are held, so it sees every write committed before
//! it: `BEGIN`, the locks, the write and `COMMIT` go out together, one round trip. A write
//! with only sets needs no check and runs as one statement that takes the same locks.
//! [`Kv::atomic_many`] is the same statement over many writes, each with its own checks and
//! versionstamp (one round trip, one transaction; measured: the execution store's queued
//! records went from ~1,000 to ~35,000 a second). Writes that share a key go to separate
//! statements, in order, so each sees the ones before it.
//!
//! # Change notifications
//!
//! A committed change is sent with `NOTIFY <schema>_kv` (the value inline when it is small,
//! otherwise read back by the listener) only when someone watches its key: a [`Kv::watch`]
//! registers its prefix in the `kv_watchers` table (a round trip after `watch` returns, then
//! refreshed every 20 s while the watch lives, forgotten 60 s after), and the write
//! statement notifies the changes under a registered prefix, or every change when this
//! process has a watch of its own. So a store that nobody watches (the runtime's execution
//! records: its change feed is in-process) sends nothing; measured with the throughput
//! benchmark, notifying every record write cost about a quarter of the jobs per second and
//! half again the CPU per job. A watch sees the changes of every process: those of this
//! process at once, those of other processes once its prefix is registered; in commit order
//! for the writes of one process; the writes of two processes to one key at the same moment
//! may arrive in either order.
//!
//! Expired entries are invisible at once and purged every 30 s.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{AtomicWrite, Entry, Key, KeyRange, Kv, KvError, KvEvent, KvWatch, ListOptions, Mutation, Versionstamp};
use crate::postgres::{BACKEND, PostgresDb, PostgresError, fnv1a};
use crate::time::Timestamp;

/// Values up to this size travel inside the notification (hex doubles them; a payload may
/// hold 8,000 bytes).
const INLINE_VALUE: usize = 3000;

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX).min(100 * 365 * 24 * 3600 * 1_000_000)
}

struct Sql {
    lock: String,
    write: String,
    get_many: String,
    /// Indexed by `reverse as usize * 2 + bounded as usize`.
    list: [String; 4],
}

impl Sql {
    fn new(db: &PostgresDb) -> Self {
        let kv = db.table("kv");
        let watchers = db.table("kv_watchers");
        let seq = format!("'{}'", db.table("kv_versionstamp"));
        let live = "(k.expires_at IS NULL OR k.expires_at > now())";
        let list = |reverse: bool, bounded: bool| {
            format!(
                "SELECT k.key, k.value, k.versionstamp, k.expires_at FROM {kv} k
                 WHERE k.key > $1 {} AND {live}
                 ORDER BY k.key {} LIMIT $2",
                if bounded { "AND k.key < $3" } else { "" },
                if reverse { "DESC" } else { "ASC" }
            )
        };
        Self {
            lock: "SELECT count(pg_advisory_xact_lock(h)) FROM unnest($1::int8[]) AS h".into(),
            write: format!(
                "WITH locked AS MATERIALIZED (
                    SELECT count(pg_advisory_xact_lock(h)) AS n FROM unnest($10::int8[]) AS h
                ),
                failed AS MATERIALIZED (
                    SELECT DISTINCT c.w FROM unnest($1::int4[], $2::bytea[], $3::int8[]) AS c(w, key, v)
                    LEFT JOIN {kv} k ON k.key = c.key AND {live}
                    WHERE k.versionstamp IS DISTINCT FROM c.v
                ),
                -- One versionstamp per write whose checks hold, in write order; the locks are
                -- taken before the first one.
                ver AS MATERIALIZED (
                    SELECT w, nextval({seq}) AS v FROM generate_series(1, $11::int4) AS w
                    WHERE (SELECT n FROM locked) >= 0 AND w NOT IN (SELECT w FROM failed)
                    ORDER BY w
                ),
                sets AS (
                    INSERT INTO {kv} AS k (key, value, versionstamp, expires_at)
                    SELECT s.key, s.value, ver.v, now() + s.ttl_us * interval '1 microsecond'
                    FROM unnest($4::int4[], $5::bytea[], $6::bytea[], $7::int8[]) AS s(w, key, value, ttl_us)
                    JOIN ver ON ver.w = s.w
                    ON CONFLICT (key) DO UPDATE SET value = excluded.value, versionstamp = excluded.versionstamp,
                                                    expires_at = excluded.expires_at
                    RETURNING k.key, k.value, k.versionstamp, k.expires_at
                ),
                dels AS (
                    DELETE FROM {kv} k USING unnest($8::int4[], $9::bytea[]) AS d(w, key), ver
                    WHERE ver.w = d.w AND k.key = d.key RETURNING k.key
                ),
                -- Prefixes watched in any process; `$12`: this process watches (its own
                -- watches may not be registered yet).
                watched AS MATERIALIZED (SELECT prefix FROM {watchers} WHERE expires_at > now()),
                changed AS (
                    SELECT key, value, versionstamp, expires_at, false AS deleted FROM sets
                    UNION ALL
                    SELECT key, NULL, NULL, NULL, true FROM dels
                ),
                notes AS (
                    SELECT CASE WHEN c.deleted THEN json_build_array('d', encode(c.key, 'hex'))::text
                           ELSE json_build_array('s', encode(c.key, 'hex'), c.versionstamp,
                                   floor(extract(epoch FROM c.expires_at) * 1000)::int8,
                                   CASE WHEN octet_length(c.value) <= {INLINE_VALUE} THEN encode(c.value, 'hex') END
                               )::text END AS payload
                    FROM changed c
                    WHERE $12::bool OR EXISTS (
                        SELECT 1 FROM watched w WHERE substring(c.key FROM 1 FOR octet_length(w.prefix)) = w.prefix)
                )
                -- The data-modifying CTEs run to completion whether or not they are read.
                SELECT ARRAY(SELECT w FROM ver ORDER BY w), ARRAY(SELECT v FROM ver ORDER BY w),
                       ARRAY(SELECT payload FROM notes)"
            ),
            get_many: format!(
                "SELECT u.ord, k.value, k.versionstamp, k.expires_at
                 FROM unnest($1::bytea[]) WITH ORDINALITY AS u(key, ord) JOIN {kv} k ON k.key = u.key
                 WHERE {live}"
            ),
            list: [list(false, false), list(false, true), list(true, false), list(true, true)],
        }
    }
}

/// The PostgreSQL key-value store. Cheap to clone; clones share the same store.
#[derive(Clone)]
pub struct PostgresKv {
    db: Arc<PostgresDb>,
    sql: Arc<Sql>,
    channel: String,
}

impl std::fmt::Debug for PostgresKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresKv").field("db", &self.db).finish_non_exhaustive()
    }
}

/// Writes as the write statement's arrays: every check and mutation tagged with the
/// 1-based index of its write. Within a write, one mutation per key (the last one wins, as
/// applying them in order would leave it).
#[derive(Default)]
struct Batch {
    writes: i32,
    check_w: Vec<i32>,
    check_keys: Vec<Vec<u8>>,
    check_versions: Vec<Option<i64>>,
    set_w: Vec<i32>,
    set_keys: Vec<Vec<u8>>,
    set_values: Vec<Vec<u8>>,
    set_ttls: Vec<Option<i64>>,
    delete_w: Vec<i32>,
    delete_keys: Vec<Vec<u8>>,
    /// Every key the batch checks or changes, encoded.
    keys: HashSet<Vec<u8>>,
    /// Advisory lock ids of those keys, sorted, without repeats.
    locks: Vec<i64>,
}

/// A write's checks (encoded key, versionstamp) and its final mutation per encoded key.
type Encoded = (Vec<(Vec<u8>, Option<i64>)>, Vec<(Vec<u8>, Mutation)>);

impl Batch {
    /// Splits `writes` into batches in which no key appears in two writes, so that each batch
    /// gives the results of applying its writes one after another, in order.
    fn split(schema: &str, writes: Vec<AtomicWrite>) -> Vec<Batch> {
        let mut out: Vec<Batch> = vec![Batch::default()];
        for write in writes {
            let (checks, finals) = Self::encode(write);
            let clash = out.last().is_some_and(|b| {
                checks.iter().map(|(k, _)| k).chain(finals.iter().map(|(k, _)| k)).any(|k| b.keys.contains(k))
            });
            if clash {
                out.push(Batch::default());
            }
            if let Some(b) = out.last_mut() {
                b.push(checks, finals);
            }
        }
        for b in &mut out {
            b.locks = b.keys.iter().map(|k| fnv1a(&[b"netscript-kv", schema.as_bytes(), k])).collect();
            b.locks.sort_unstable();
            b.locks.dedup();
        }
        out.retain(|b| b.writes > 0);
        out
    }

    fn encode(write: AtomicWrite) -> Encoded {
        let mut last: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut finals: Vec<(Vec<u8>, Mutation)> = Vec::with_capacity(write.mutations.len());
        for m in write.mutations {
            let key = m.key().encode();
            match last.get(&key) {
                Some(&i) => finals[i].1 = m,
                None => {
                    last.insert(key.clone(), finals.len());
                    finals.push((key, m));
                }
            }
        }
        let checks = write
            .checks
            .into_iter()
            .map(|c| (c.key.encode(), c.versionstamp.map(|v| i64::try_from(v.0).unwrap_or(i64::MAX))))
            .collect();
        (checks, finals)
    }

    fn push(&mut self, checks: Vec<(Vec<u8>, Option<i64>)>, finals: Vec<(Vec<u8>, Mutation)>) {
        self.writes += 1;
        let w = self.writes;
        for (key, v) in checks {
            self.keys.insert(key.clone());
            self.check_w.push(w);
            self.check_keys.push(key);
            self.check_versions.push(v);
        }
        for (key, m) in finals {
            self.keys.insert(key.clone());
            match m {
                Mutation::Set { value, ttl, .. } => {
                    self.set_w.push(w);
                    self.set_keys.push(key);
                    self.set_values.push(value);
                    self.set_ttls.push(ttl.map(micros));
                }
                Mutation::Delete { .. } => {
                    self.delete_w.push(w);
                    self.delete_keys.push(key);
                }
            }
        }
    }

    /// Whether the statement must start after the locks are held (see [`PostgresKv::write`]).
    fn reads(&self) -> bool {
        !self.check_keys.is_empty() || !self.delete_keys.is_empty()
    }

    /// The write statement's parameters.
    fn params<'a>(&'a self, locks: &'a Vec<i64>, notify: &'a bool) -> [&'a (dyn ToSql + Sync); 12] {
        [
            &self.check_w,
            &self.check_keys,
            &self.check_versions,
            &self.set_w,
            &self.set_keys,
            &self.set_values,
            &self.set_ttls,
            &self.delete_w,
            &self.delete_keys,
            locks,
            &self.writes,
            notify,
        ]
    }
}

fn versionstamp(v: i64) -> Versionstamp {
    Versionstamp(u64::try_from(v).unwrap_or(0))
}

fn entry(key: Key, row: &Row, first: usize) -> Result<Entry, tokio_postgres::Error> {
    let expires: Option<SystemTime> = row.try_get(first + 2)?;
    Ok(Entry {
        key,
        value: row.try_get(first)?,
        versionstamp: versionstamp(row.try_get(first + 1)?),
        expires_at: expires.map(Timestamp::from),
    })
}

impl PostgresKv {
    /// The key-value store of `db`.
    pub fn new(db: Arc<PostgresDb>) -> Self {
        let sql = Arc::new(Sql::new(&db));
        let channel = db.kv_channel();
        Self { db, sql, channel }
    }

    /// The store it lives in.
    pub fn db(&self) -> &Arc<PostgresDb> {
        &self.db
    }

    /// Commits one batch: one versionstamp per write, `None` where a check failed.
    ///
    /// Checks and deletes must read after the locks are held (a statement's snapshot is taken
    /// when it starts): the locks are then a statement of their own, sent with `BEGIN`, the
    /// write and `COMMIT` in one round trip. A batch of sets only is one statement that takes
    /// the locks first (an upsert writes over the newest row version, whatever the
    /// statement's snapshot).
    async fn write(&self, batch: &Batch) -> Result<Vec<Option<Versionstamp>>, PostgresError> {
        let err = |e: tokio_postgres::Error| self.db.error(&e);
        let client = self.db.client().await?;
        let write = client.prepare_cached(&self.sql.write).await.map_err(err)?;
        let notify = self.db.kv_watched();
        let row = if batch.reads() {
            let lock = client.prepare_cached(&self.sql.lock).await.map_err(err)?;
            let no_locks = Vec::new();
            let write_params = batch.params(&no_locks, &notify);
            let lock_params: [&(dyn ToSql + Sync); 1] = [&batch.locks];
            // Every request is sent before any answer is read; all four are awaited, so the
            // connection goes back to the pool outside a transaction (after a failed
            // statement, the `COMMIT` rolls back).
            let (begin, locked, row, commit) = tokio::join!(
                client.batch_execute("BEGIN"),
                client.query_one(&lock, &lock_params),
                client.query_one(&write, &write_params),
                client.batch_execute("COMMIT"),
            );
            begin.map_err(err)?;
            locked.map_err(err)?;
            let row = row.map_err(err)?;
            commit.map_err(err)?;
            row
        } else {
            client.query_one(&write, &batch.params(&batch.locks, &notify)).await.map_err(err)?
        };
        drop(client);
        let committed: Vec<i32> = row.try_get(0).map_err(err)?;
        let stamps: Vec<i64> = row.try_get(1).map_err(err)?;
        let notes: Vec<String> = row.try_get(2).map_err(err)?;
        for note in notes {
            self.db.notify(&self.channel, note);
        }
        let mut out = vec![None; usize::try_from(batch.writes).unwrap_or(0)];
        for (w, v) in committed.into_iter().zip(stamps) {
            if let Some(slot) = usize::try_from(w - 1).ok().and_then(|i| out.get_mut(i)) {
                *slot = Some(versionstamp(v));
            }
        }
        Ok(out)
    }

    /// The write statement, prepared on `client`: for [`write_sets_in`](Self::write_sets_in),
    /// prepared before the transaction's requests are pipelined (a statement prepared in the
    /// middle of them would be sent after the `COMMIT`).
    pub(crate) async fn write_statement(
        &self,
        client: &deadpool_postgres::Object,
    ) -> Result<tokio_postgres::Statement, PostgresError> {
        client.prepare_cached(&self.sql.write).await.map_err(|e| self.db.error(&e))
    }

    /// Writes `write`, unconditional sets only, inside the transaction `client` holds (the
    /// runtime's joint enqueue: `backends::Joint`); returns the change notifications to send
    /// once it committed ([`notify_committed`](Self::notify_committed)). The advisory locks
    /// are taken as a write of sets alone takes them.
    pub(crate) async fn write_sets_in(
        &self,
        client: &deadpool_postgres::Object,
        statement: &tokio_postgres::Statement,
        write: AtomicWrite,
    ) -> Result<Vec<String>, PostgresError> {
        if write.mutations.is_empty() {
            return Ok(Vec::new());
        }
        debug_assert!(write.checks.is_empty() && write.mutations.iter().all(|m| matches!(m, Mutation::Set { .. })));
        let err = |e: tokio_postgres::Error| self.db.error(&e);
        // One write: its keys never clash with another's, so it is one batch.
        let batch = Batch::split(self.db.schema(), vec![write]).pop().unwrap_or_default();
        let notify = self.db.kv_watched();
        let row = client.query_one(statement, &batch.params(&batch.locks, &notify)).await.map_err(err)?;
        row.try_get(2).map_err(err)
    }

    /// Sends the change notifications of a write that committed.
    pub(crate) fn notify_committed(&self, notes: Vec<String>) {
        for note in notes {
            self.db.notify(&self.channel, note);
        }
    }

    /// Commits `batch`, again when the server aborted it to break a deadlock.
    async fn write_retrying(&self, batch: &Batch) -> Result<Vec<Option<Versionstamp>>, KvError> {
        let mut attempt = 0;
        loop {
            match self.write(batch).await {
                Err(e) if e.retryable() && attempt < 5 => attempt += 1,
                other => return Ok(other?),
            }
        }
    }
}

#[async_trait]
impl Kv for PostgresKv {
    fn provider(&self) -> &'static str {
        BACKEND
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>, KvError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let encoded: Vec<Vec<u8>> = keys.iter().map(Key::encode).collect();
        let err = |e: tokio_postgres::Error| KvError::from(self.db.error(&e));
        let client = self.db.client().await?;
        let stmt = client.prepare_cached(&self.sql.get_many).await.map_err(err)?;
        let rows = client.query(&stmt, &[&encoded]).await.map_err(err)?;
        let mut out = vec![None; keys.len()];
        for row in &rows {
            let ord: i64 = row.try_get(0).map_err(err)?;
            let i = usize::try_from(ord - 1).unwrap_or(usize::MAX);
            if let Some(slot) = out.get_mut(i) {
                *slot = Some(entry(keys[i].clone(), row, 1).map_err(err)?);
            }
        }
        Ok(out)
    }

    async fn atomic(&self, write: AtomicWrite) -> Result<Option<Versionstamp>, KvError> {
        Ok(self.atomic_many(vec![write]).await?.pop().flatten())
    }

    async fn atomic_many(&self, writes: Vec<AtomicWrite>) -> Result<Vec<Option<Versionstamp>>, KvError> {
        let mut out = Vec::with_capacity(writes.len());
        for batch in Batch::split(self.db.schema(), writes) {
            out.extend(self.write_retrying(&batch).await?);
        }
        Ok(out)
    }

    async fn list(&self, options: ListOptions) -> Result<Vec<Entry>, KvError> {
        let Some(KeyRange { lower, upper }) = options.key_range() else { return Ok(Vec::new()) };
        let limit = i64::try_from(options.limit).unwrap_or(i64::MAX);
        let err = |e: tokio_postgres::Error| KvError::from(self.db.error(&e));
        let client = self.db.client().await?;
        let sql = &self.sql.list[usize::from(options.reverse) * 2 + usize::from(upper.is_some())];
        let stmt = client.prepare_cached(sql).await.map_err(err)?;
        let rows = match &upper {
            Some(u) => client.query(&stmt, &[&lower, &limit, u]).await,
            None => client.query(&stmt, &[&lower, &limit]).await,
        }
        .map_err(err)?;
        drop(client);
        rows.iter()
            .map(|row| {
                let raw: Vec<u8> = row.try_get(0).map_err(err)?;
                let key = Key::decode(&raw)
                    .map_err(|e| KvError::Corrupt { backend: BACKEND, message: format!("stored key: {e}") })?;
                entry(key, row, 1).map_err(err)
            })
            .collect()
    }

    fn watch(&self, prefix: &Key) -> KvWatch {
        KvWatch::new(prefix, self.db.watch(prefix.encode()))
    }
}

/// A set notification whose value was too large to travel inline.
pub(crate) struct Pending {
    /// The encoded key.
    pub(crate) key: Vec<u8>,
    /// The write's versionstamp.
    pub(crate) versionstamp: i64,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if s.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.chunks(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

/// A KV notification as a change event: `Ok(None)` when it is not one this code wrote (or
/// is damaged), `Err(Pending)` when the value must be read from the table.
pub(crate) fn decode_notification(payload: &str) -> Result<Option<(Vec<u8>, KvEvent)>, Pending> {
    let Ok(serde_json::Value::Array(parts)) = serde_json::from_str::<serde_json::Value>(payload) else {
        return Ok(None);
    };
    let Some(raw) = parts.get(1).and_then(|v| v.as_str()).and_then(unhex) else { return Ok(None) };
    let Ok(key) = Key::decode(&raw) else { return Ok(None) };
    match parts.first().and_then(|v| v.as_str()) {
        Some("d") => Ok(Some((raw, KvEvent::Deleted(key)))),
        Some("s") => {
            let Some(v) = parts.get(2).and_then(|v| v.as_i64()) else { return Ok(None) };
            let expires_at = parts.get(3).and_then(|v| v.as_i64()).map(|ms| Timestamp(u64::try_from(ms).unwrap_or(0)));
            match parts.get(4).and_then(|v| v.as_str()) {
                Some(hex) => {
                    let Some(value) = unhex(hex) else { return Ok(None) };
                    let entry = Entry { key, value, versionstamp: versionstamp(v), expires_at };
                    Ok(Some((raw, KvEvent::Set(entry))))
                }
                None => Err(Pending { key: raw, versionstamp: v }),
            }
        }
        _ => Ok(None),
    }
}

/// The event of a large value read back by the listener (`value, versionstamp, expires_at`).
pub(crate) fn fetched_event(raw: Vec<u8>, row: &Row) -> Option<(Vec<u8>, KvEvent)> {
    let key = Key::decode(&raw).ok()?;
    let entry = entry(key, row, 0).ok()?;
    Some((raw, KvEvent::Set(entry)))
}
