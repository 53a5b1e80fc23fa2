//! The durable key-value store on the [embedded store](crate::embedded): one row per key in
//! the same SQLite file as the queue.
//!
//! Keys are stored as their [`Key::encode`] bytes, so SQLite's byte order is key order and a
//! prefix scan is a range scan. Versionstamps come from a counter kept in the file: each
//! committed [`AtomicWrite`] takes the next one, so they keep growing across restarts and
//! across processes sharing the file. Expired entries are invisible at once and purged by
//! the store's writer thread every 30 s.
//!
//! What it is not: a cross-process change feed. [`Kv::watch`] sees the commits made through
//! this process's [`EmbeddedDb`], not those of another process writing the same file.

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use tokio::sync::broadcast;

use super::{AtomicWrite, Entry, Key, KeyRange, Kv, KvError, KvEvent, KvWatch, ListOptions, Mutation, Versionstamp};
use crate::embedded::{Counter, EmbeddedDb, EmbeddedError, OpError, Tx};
use crate::time::Timestamp;

const BACKEND: &str = "embedded";

/// The durable key-value store. Cheap to clone; clones share the same store.
#[derive(Clone, Debug)]
pub struct EmbeddedKv {
    db: Arc<EmbeddedDb>,
}

impl EmbeddedKv {
    /// The key-value store of `db`.
    pub fn new(db: Arc<EmbeddedDb>) -> Self {
        Self { db }
    }

    /// The store it lives in.
    pub fn db(&self) -> &Arc<EmbeddedDb> {
        &self.db
    }
}

fn kv_error(e: EmbeddedError) -> KvError {
    match e {
        EmbeddedError::Corrupt { .. } => KvError::Corrupt { backend: BACKEND, message: e.to_string() },
        other => KvError::Backend { backend: BACKEND, message: other.to_string() },
    }
}

fn millis(t: Timestamp) -> i64 {
    i64::try_from(t.as_millis()).unwrap_or(i64::MAX)
}

fn now_millis() -> i64 {
    millis(Timestamp::now())
}

/// The mutations of `write` in `ranges` (indexes into its mutations), without its checks.
pub(crate) fn subset(write: &AtomicWrite, ranges: impl Iterator<Item = std::ops::Range<usize>>) -> AtomicWrite {
    let mut mutations = Vec::new();
    for r in ranges {
        mutations.extend_from_slice(&write.mutations[r]);
    }
    AtomicWrite { checks: Vec::new(), mutations }
}

/// Sends the committed changes of `write` to the watchers: every set, and the deletes (by
/// index in its mutations) that removed something.
fn publish(
    write: &AtomicWrite,
    events: &broadcast::Sender<(Vec<u8>, KvEvent)>,
    stamp: Versionstamp,
    now: Timestamp,
    deleted: &[usize],
) {
    if events.receiver_count() == 0 {
        return;
    }
    for (i, m) in write.mutations.iter().enumerate() {
        let event = match m {
            Mutation::Set { key, value, ttl } => KvEvent::Set(Entry {
                key: key.clone(),
                value: value.clone(),
                versionstamp: stamp,
                expires_at: ttl.map(|t| now.plus(t)),
            }),
            Mutation::Delete { key } if deleted.binary_search(&i).is_ok() => KvEvent::Deleted(key.clone()),
            Mutation::Delete { .. } => continue,
        };
        // A receiver that left meanwhile is fine.
        let _ = events.send((m.key().encode(), event));
    }
}

/// Applies `write` inside `tx` if every check holds: `Some(versionstamp)`, or `None` (nothing
/// written). Watchers hear of it once the transaction commits.
pub(crate) fn apply(
    tx: &Tx<'_>,
    write: &Arc<AtomicWrite>,
    events: &broadcast::Sender<(Vec<u8>, KvEvent)>,
) -> Result<Option<Versionstamp>, OpError> {
    let conn = tx.conn();
    let now_ts = Timestamp::now();
    let now = millis(now_ts);
    if !write.checks.is_empty() {
        let mut current = conn
            .prepare_cached("SELECT versionstamp FROM kv WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)")?;
        for check in &write.checks {
            let found: Option<i64> = current.query_row(params![check.key.as_bytes(), now], |r| r.get(0)).optional()?;
            if found.map(versionstamp) != check.versionstamp {
                return Ok(None);
            }
        }
    }
    let version = tx.next(Counter::KvVersion)?;
    let stamp = versionstamp(version);
    let mut deleted = Vec::new();
    for (i, m) in write.mutations.iter().enumerate() {
        let key = m.key().as_bytes();
        match m {
            Mutation::Set { value, ttl, .. } => {
                conn.prepare_cached(
                    "INSERT INTO kv (key, value, versionstamp, expires_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                         versionstamp = excluded.versionstamp, expires_at = excluded.expires_at",
                )?
                .execute(params![key, value, version, ttl.map(|t| millis(now_ts.plus(t)))])?;
            }
            Mutation::Delete { .. } => {
                if conn.prepare_cached("DELETE FROM kv WHERE key = ?1")?.execute(params![key])? > 0 {
                    deleted.push(i);
                }
            }
        }
    }
    if !write.mutations.is_empty() {
        let (write, events) = (Arc::clone(write), events.clone());
        // Built after the commit, and only for watchers subscribed by then.
        tx.after_commit(move || publish(&write, &events, stamp, now_ts, &deleted));
    }
    Ok(Some(stamp))
}

fn versionstamp(v: i64) -> Versionstamp {
    Versionstamp(u64::try_from(v).unwrap_or(0))
}

fn expiry(ms: Option<i64>) -> Option<Timestamp> {
    ms.map(|t| Timestamp(u64::try_from(t).unwrap_or(0)))
}

#[async_trait]
impl Kv for EmbeddedKv {
    fn provider(&self) -> &'static str {
        BACKEND
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>, KvError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // Encoding and decoding happen on the caller's thread; the writer only reads rows.
        let encoded: Vec<Vec<u8>> = keys.iter().map(Key::encode).collect();
        let rows = self
            .db
            .call(move |tx| {
                let now = now_millis();
                let mut get = tx.conn().prepare_cached(
                    "SELECT value, versionstamp, expires_at FROM kv
                     WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                )?;
                let mut out = Vec::with_capacity(encoded.len());
                for key in &encoded {
                    let found: Option<(Vec<u8>, i64, Option<i64>)> =
                        get.query_row(params![key, now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()?;
                    out.push(found);
                }
                Ok(out)
            })
            .await
            .map_err(kv_error)?;
        Ok(keys
            .iter()
            .zip(rows)
            .map(|(key, found)| {
                found.map(|(value, v, expires)| Entry {
                    key: key.clone(),
                    value,
                    versionstamp: versionstamp(v),
                    expires_at: expiry(expires),
                })
            })
            .collect())
    }

    /// Submits every write at once: the writer thread takes them in order and commits them
    /// together with whatever else is waiting, in one transaction.
    async fn atomic_many(&self, writes: Vec<AtomicWrite>) -> Result<Vec<Option<Versionstamp>>, KvError> {
        futures::future::join_all(writes.into_iter().map(|w| self.atomic(w))).await.into_iter().collect()
    }

    async fn atomic(&self, write: AtomicWrite) -> Result<Option<Versionstamp>, KvError> {
        let events = self.db.kv_events().clone();
        let write = Arc::new(write);
        self.db.call(move |tx| apply(tx, &write, &events)).await.map_err(kv_error)
    }

    async fn list(&self, options: ListOptions) -> Result<Vec<Entry>, KvError> {
        let Some(KeyRange { lower, upper }) = options.key_range() else { return Ok(Vec::new()) };
        let order = if options.reverse { "DESC" } else { "ASC" };
        let upper_bound = if upper.is_some() { "AND key < ?4" } else { "AND ?4 IS NULL" };
        let sql = format!(
            "SELECT key, value, versionstamp, expires_at FROM kv
             WHERE key > ?1 {upper_bound} AND (expires_at IS NULL OR expires_at > ?2)
             ORDER BY key {order} LIMIT ?3"
        );
        let limit = i64::try_from(options.limit).unwrap_or(i64::MAX);
        let rows = self
            .db
            .call(move |tx| {
                let mut stmt = tx.conn().prepare_cached(&sql)?;
                let mut rows = stmt.query(params![lower, now_millis(), limit, upper])?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    out.push((row.get::<_, Vec<u8>>(0)?, row.get(1)?, row.get(2)?, row.get(3)?));
                }
                Ok(out)
            })
            .await
            .map_err(kv_error)?;
        rows.into_iter()
            .map(|(raw, value, v, expires): (Vec<u8>, Vec<u8>, i64, Option<i64>)| {
                let key = Key::decode(&raw)
                    .map_err(|e| KvError::Corrupt { backend: BACKEND, message: format!("stored key: {e}") })?;
                Ok(Entry { key, value, versionstamp: versionstamp(v), expires_at: expiry(expires) })
            })
            .collect()
    }

    fn watch(&self, prefix: &Key) -> KvWatch {
        KvWatch::new(prefix, self.db.kv_events().subscribe())
    }
}
