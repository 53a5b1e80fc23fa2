//! The PostgreSQL store: one connection pool and one schema that hold the durable queue
//! ([`PostgresQueue`](crate::queue::postgres::PostgresQueue)) and the key-value store
//! ([`PostgresKv`](crate::kv::postgres::PostgresKv)), shared by every process that connects
//! to the same database and schema.
//!
//! # What a [`PostgresDb`] owns
//!
//! - A [`deadpool_postgres`] pool (default 16 connections). Every statement is prepared once
//!   per connection (deadpool's statement cache) and every batch call is one statement, so
//!   one round trip: arrays go in through `unnest`.
//! - One connection of its own, outside the pool, that `LISTEN`s and turns `NOTIFY`s from
//!   any process into wake-ups of the local queue waiters and into KV watch events, and
//!   that sends this process's notifications after their writes commit, batched, with
//!   `synchronous_commit = off` (a notification is no data: it need not wait for the disk).
//!   It ignores the queue wake-ups it sent itself (this process woke its waiters already).
//!   When it drops, it reconnects and wakes every waiter (a notification may have been
//!   missed).
//! - A maintenance task that deletes expired idempotency keys and KV entries every 30 s, and
//!   vacuums the hot queue table when it has piled up dead rows (see the queue docs); and a
//!   task that registers the prefixes this process watches (see the KV docs).
//!
//! # Durability
//!
//! Enqueues, claims and KV writes commit as the server is configured (by default, after
//! their write-ahead log reached the disk). Settlements and lease extensions do not wait for
//! the disk unless [`PostgresOptions::relaxed_settlements`] is turned off: losing one in a
//! server crash means a redelivery, and the log being one sequence, any later commit that
//! waited (the next claim, a record write) makes them durable too.
//!
//! # Schema and migrations
//!
//! All tables live in one schema (default `netscript`), created at [`PostgresDb::connect`].
//! Migrations are numbered; they run in one transaction under `pg_advisory_xact_lock`, so
//! several processes starting at once apply each exactly once. A schema written by a newer
//! version of this code is refused ([`PostgresError::SchemaTooNew`]).
//!
//! What it is not: a general SQL layer. The tables belong to the queue and the KV store; an
//! application may share the pool ([`PostgresDb::pool`]) to enqueue inside its own
//! transactions, but should not write these tables itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures::StreamExt;
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::kv::{KvError, KvEvent};
use crate::queue::QueueError;

/// The name backends report in errors.
pub(crate) const BACKEND: &str = "postgres";

/// The newest schema version this code knows.
pub const SCHEMA_VERSION: i32 = 2;

/// How often expired idempotency keys and KV entries are purged.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(30);

/// Capacity of a KV watch's channel; a watcher further behind gets `WatchError::Lagged`.
const WATCH_CAPACITY: usize = 4096;

/// How long a watched prefix stays registered without a refresh, and how often a process
/// refreshes the prefixes it watches.
const WATCH_TTL_SECS: i64 = 60;
const WATCH_REFRESH: Duration = Duration::from_secs(20);

/// Dead rows in the hot queue table above which maintenance vacuums it.
const VACUUM_DEAD_ROWS: i64 = 50_000;

/// How often maintenance looks at the hot table's dead rows. Every claim moves its rows'
/// `visible_at`, a column of the claim index, so it leaves a dead entry at the head of that
/// index, which every later claim steps over until a vacuum removes it: draining a backlog of
/// 1,000,000 with the check every 30 s ran at 17,200 jobs/s, with a `VACUUM` every 2 s
/// 22,500 (docs/BENCHMARKS.md).
const VACUUM_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// How to connect a [`PostgresDb`].
#[derive(Clone)]
pub struct PostgresOptions {
    /// A `postgres://user:password@host:port/database` URL (or a `key=value` string).
    pub url: String,
    /// The schema that holds the tables (default `netscript`): lowercase ASCII letters,
    /// digits and `_`, starting with a letter or `_`, at most 48 characters.
    pub schema: String,
    /// Most pooled connections (default 16).
    pub pool_size: usize,
    /// How long opening one connection may take (default 5 s).
    pub connect_timeout: Duration,
    /// How long a call waits for a free pooled connection (default 30 s).
    pub wait_timeout: Duration,
    /// Whether maintenance runs `VACUUM` on the hot queue table when dead rows pile up
    /// (default true; useful where autovacuum is off or lags behind a busy queue).
    pub vacuum: bool,
    /// Whether a commit waits for its WAL record to reach disk (default true, the server's
    /// promise). `false` sets `synchronous_commit = off` on the store's connections: commits
    /// return before the flush, several times faster on a slow disk, and a server crash may
    /// lose the last fraction of a second of commits (never corrupt data). Statements in
    /// your own transactions follow your connection's setting.
    pub synchronous_commit: bool,
    /// Whether queue settlements (ack, retry, dead letter, release) and lease extensions
    /// commit without waiting for the disk (default true). A server crash may then forget
    /// the last fraction of a second of them: those messages are delivered again, which
    /// at-least-once delivery allows. Enqueues, claims and KV writes still wait, so no
    /// message or record is lost and no fencing token is handed out twice. The write-ahead
    /// log is one sequence, so a commit that waited makes every earlier one durable too: a
    /// fence (extension) followed by a record write, or a settlement followed by a claim,
    /// is never half remembered. Half the commits of a busy queue stop waiting for the disk
    /// (measured: a disk flush here costs 0.3 to 3 ms under load). Set it to false to make
    /// an acknowledgement durable before `settle` returns.
    pub relaxed_settlements: bool,
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &redact(&self.url))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("wait_timeout", &self.wait_timeout)
            .field("vacuum", &self.vacuum)
            .field("synchronous_commit", &self.synchronous_commit)
            .field("relaxed_settlements", &self.relaxed_settlements)
            .finish()
    }
}

impl PostgresOptions {
    /// Options for `url` with every default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "netscript".into(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            wait_timeout: Duration::from_secs(30),
            vacuum: true,
            synchronous_commit: true,
            relaxed_settlements: true,
        }
    }

    /// Sets the schema.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets the most pooled connections (at least 1).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets how long a call waits for a free pooled connection.
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// Sets whether a commit waits for the disk (see [`PostgresOptions::synchronous_commit`]).
    pub fn synchronous_commit(mut self, on: bool) -> Self {
        self.synchronous_commit = on;
        self
    }

    /// Sets whether settlements and extensions may commit without waiting for the disk (see
    /// [`PostgresOptions::relaxed_settlements`]).
    pub fn relaxed_settlements(mut self, relaxed: bool) -> Self {
        self.relaxed_settlements = relaxed;
        self
    }

    /// Turns the maintenance vacuum on or off.
    pub fn vacuum(mut self, vacuum: bool) -> Self {
        self.vacuum = vacuum;
        self
    }
}

/// An error of the PostgreSQL store. Messages name the server by its URL without password.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PostgresError {
    /// The options are not usable (a malformed URL, an invalid schema name).
    #[error("invalid PostgreSQL options: {0}")]
    Options(String),
    /// The server could not be reached or refused the connection.
    #[error("cannot connect to PostgreSQL at `{url}`: {message}")]
    Connect {
        /// The URL, password removed.
        url: String,
        /// Why.
        message: String,
    },
    /// The schema was written by a newer version of this code.
    #[error(
        "PostgreSQL schema `{schema}` is at version {found}, newer than this build knows ({known}); upgrade netscript"
    )]
    SchemaTooNew {
        /// The schema.
        schema: String,
        /// Its version.
        found: i32,
        /// The newest this code knows.
        known: i32,
    },
    /// A statement failed.
    #[error("PostgreSQL `{url}`: {message}")]
    Query {
        /// The URL, password removed.
        url: String,
        /// What went wrong, with the SQLSTATE code when the server sent one.
        message: String,
        /// The SQLSTATE code.
        code: Option<String>,
    },
    /// Stored data could not be decoded.
    #[error("PostgreSQL `{url}`: corrupt data: {message}")]
    Corrupt {
        /// The URL, password removed.
        url: String,
        /// What was wrong.
        message: String,
    },
}

impl PostgresError {
    /// Whether running the same statement again may succeed (a deadlock or serialization
    /// failure, which the server resolved by aborting this statement).
    pub(crate) fn retryable(&self) -> bool {
        matches!(self, PostgresError::Query { code: Some(c), .. } if c == "40P01" || c == "40001")
    }
}

impl From<PostgresError> for QueueError {
    fn from(e: PostgresError) -> Self {
        match e {
            PostgresError::Corrupt { .. } => QueueError::Corrupt { backend: BACKEND, message: e.to_string() },
            other => QueueError::Backend { backend: BACKEND, message: other.to_string() },
        }
    }
}

impl From<PostgresError> for KvError {
    fn from(e: PostgresError) -> Self {
        match e {
            PostgresError::Corrupt { .. } => KvError::Corrupt { backend: BACKEND, message: e.to_string() },
            other => KvError::Backend { backend: BACKEND, message: other.to_string() },
        }
    }
}

/// `url` with its password replaced by `***` (URL form `user:password@` and `password=`
/// key-value form).
pub fn redact(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            let userinfo = &rest[..at];
            if let Some(colon) = userinfo.find(':') {
                return format!("{}{}:***{}", &url[..scheme_end + 3], &userinfo[..colon], &rest[at..]);
            }
        }
        // A password may also come as a query parameter.
        return redact_pairs(url, '&');
    }
    redact_pairs(url, ' ')
}

fn redact_pairs(s: &str, sep: char) -> String {
    let (head, query) = match (sep, s.find('?')) {
        ('&', Some(q)) => (&s[..=q], &s[q + 1..]),
        ('&', None) => return s.to_owned(),
        _ => ("", s),
    };
    let parts: Vec<String> = query
        .split(sep)
        .map(|p| match p.split_once('=') {
            Some((k, _)) if k.trim().eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => p.to_owned(),
        })
        .collect();
    format!("{head}{}", parts.join(&sep.to_string()))
}

/// A readable message for a driver error: the server's message and SQLSTATE when there is
/// one, the cause chain otherwise.
pub(crate) fn describe(e: &tokio_postgres::Error) -> (String, Option<String>) {
    if let Some(db) = e.as_db_error() {
        let mut message = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            message.push_str(": ");
            message.push_str(detail);
        }
        return (message, Some(db.code().code().to_owned()));
    }
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    (message, None)
}

/// 64-bit FNV-1a: a stable hash for advisory lock ids.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separates ("ab", "c") from ("a", "bc").
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

/// Where a KV watch's events go: the encoded key and the event.
type WatchSender = broadcast::Sender<(Vec<u8>, KvEvent)>;

/// State shared with the listener task.
struct Shared {
    /// Per queue name: the waiters of `wait_for_work`.
    queues: Mutex<HashMap<String, Arc<QueueWaker>>>,
    /// The KV watches of this process: encoded prefix and channel.
    watchers: Mutex<Vec<(Vec<u8>, WatchSender)>>,
}

impl Shared {
    /// The channels of the live watches whose prefix `key` starts with; forgets the watches
    /// that ended.
    fn watchers_of(&self, key: Option<&[u8]>) -> Vec<WatchSender> {
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        watchers.retain(|(_, tx)| tx.receiver_count() > 0);
        watchers.iter().filter(|(p, _)| key.is_none_or(|k| k.starts_with(p))).map(|(_, tx)| tx.clone()).collect()
    }

    /// The prefixes watched in this process, without repeats.
    fn watched_prefixes(&self) -> Vec<Vec<u8>> {
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        watchers.retain(|(_, tx)| tx.receiver_count() > 0);
        let mut prefixes: Vec<Vec<u8>> = watchers.iter().map(|(p, _)| p.clone()).collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        prefixes
    }

    fn wake_all(&self) {
        let queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        for n in queues.values() {
            n.wake();
        }
    }
}

/// The waiters of one queue name in this process, and how many wake-ups it has seen.
///
/// A wake-up counts before it notifies, so a waiter that reads the count after it started
/// listening misses none: one that arrived before is in the count, one after notifies it.
/// Waiters compare the count with the one their last claim started at (see
/// `PostgresQueue::wait_for_work`), instead of a stored permit that would make every idle
/// worker claim once more for nothing after every wake-up.
#[derive(Default)]
pub(crate) struct QueueWaker {
    pub(crate) notify: Notify,
    pub(crate) generation: AtomicU64,
}

impl QueueWaker {
    /// Wakes every waiter, and counts the wake-up for the ones about to wait.
    pub(crate) fn wake(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

/// The PostgreSQL store. Share it behind an `Arc`; dropping the last one stops its
/// listener and maintenance tasks (the pool closes when its connections are dropped).
pub struct PostgresDb {
    pool: Pool,
    schema: Arc<str>,
    url: Arc<str>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    notifier: mpsc::UnboundedSender<(String, String)>,
    /// Prefixes newly watched in this process, for [`register_watches`].
    registrar: mpsc::UnboundedSender<Vec<u8>>,
    relaxed_settlements: bool,
}

impl std::fmt::Debug for PostgresDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresDb").field("url", &self.url).field("schema", &self.schema).finish_non_exhaustive()
    }
}

impl Drop for PostgresDb {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.pool.close();
    }
}

fn valid_schema(schema: &str) -> bool {
    let mut chars = schema.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && schema.len() <= 48
}

impl PostgresDb {
    /// Connects, creates the schema or migrates it to this code's version, and starts the
    /// listener. Fails with [`PostgresError::Connect`] when the server is down or refuses.
    pub async fn connect(options: PostgresOptions) -> Result<PostgresDb, PostgresError> {
        let url: Arc<str> = redact(&options.url).into();
        if !valid_schema(&options.schema) {
            return Err(PostgresError::Options(format!(
                "schema `{}` must be 1 to 48 lowercase ASCII letters, digits or `_`, not starting with a digit",
                options.schema
            )));
        }
        let mut config: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| PostgresError::Options(format!("URL `{url}`: {}", describe(&e).0)))?;
        config.connect_timeout(options.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("netscript");
        }
        // The store's statements are prepared once per connection and run thousands of times
        // a second: planning them again at every run (PostgreSQL's choice for some parameter
        // values once the tables have statistics) would cost as much as running them. A
        // generic plan over a large table has a large estimated cost, which would make the
        // server JIT-compile it at every run (measured: 0.8 ms claims became 300-1,000 ms):
        // these short statements never gain from JIT.
        let mut extra = String::from("-c plan_cache_mode=force_generic_plan -c jit=off");
        if !options.synchronous_commit {
            extra.push_str(" -c synchronous_commit=off");
        }
        let joined = match config.get_options() {
            Some(o) if !o.is_empty() => format!("{o} {extra}"),
            _ => extra,
        };
        config.options(joined);
        let manager =
            Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(options.connect_timeout))
            .wait_timeout(Some(options.wait_timeout))
            .build()
            .map_err(|e| PostgresError::Options(e.to_string()))?;
        let schema: Arc<str> = options.schema.as_str().into();
        let shared = Arc::new(Shared { queues: Mutex::default(), watchers: Mutex::default() });
        let (notifier, notifications) = mpsc::unbounded_channel();
        let (registrar, registrations) = mpsc::unbounded_channel();
        let mut db = PostgresDb {
            pool,
            schema,
            url,
            shared,
            tasks: Vec::new(),
            notifier,
            registrar,
            relaxed_settlements: options.relaxed_settlements,
        };
        db.migrate().await?;

        let (ready_tx, ready_rx) = oneshot::channel();
        let listener = Listener {
            config,
            url: Arc::clone(&db.url),
            channels: [db.queue_channel(), db.kv_channel()],
            shared: Arc::downgrade(&db.shared),
            kv_select: format!(
                "SELECT value, versionstamp, expires_at FROM {} WHERE key = $1 AND versionstamp = $2",
                db.table("kv")
            ),
        };
        db.tasks.push(tokio::spawn(listener.run(ready_tx, notifications)));
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(PostgresError::Connect { url: db.url.to_string(), message: "the listener stopped".into() });
            }
        }
        db.tasks.push(tokio::spawn(maintenance(
            db.pool.clone(),
            Arc::clone(&db.url),
            db.maintenance_sql(),
            options.vacuum,
        )));
        db.tasks.push(tokio::spawn(register_watches(
            db.pool.clone(),
            Arc::clone(&db.url),
            db.table("kv_watchers"),
            Arc::downgrade(&db.shared),
            registrations,
        )));
        Ok(db)
    }

    /// The pool, for running your own statements (and [`enqueue_in`] inside your own
    /// transactions). Its connections run with `plan_cache_mode = force_generic_plan`
    /// (prepared statements are planned once) and `jit = off`, and with `synchronous_commit = off` when
    /// [`PostgresOptions::synchronous_commit`] is false.
    ///
    /// [`enqueue_in`]: crate::queue::postgres::PostgresQueue::enqueue_in
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The schema that holds the tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The URL, password removed.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A pooled connection.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, PostgresError> {
        self.pool.get().await.map_err(|e| self.pool_error(e))
    }

    fn pool_error(&self, e: deadpool_postgres::PoolError) -> PostgresError {
        use deadpool_postgres::PoolError;
        match e {
            PoolError::Backend(e) => PostgresError::Connect { url: self.url.to_string(), message: describe(&e).0 },
            PoolError::Timeout(t) => PostgresError::Connect {
                url: self.url.to_string(),
                message: format!("timed out ({t:?}) waiting for a pooled connection"),
            },
            other => PostgresError::Connect { url: self.url.to_string(), message: other.to_string() },
        }
    }

    /// A driver error, with the URL.
    pub(crate) fn error(&self, e: &tokio_postgres::Error) -> PostgresError {
        query_error(&self.url, e)
    }

    /// A decoding error, with the URL.
    pub(crate) fn corrupt(&self, message: impl Into<String>) -> PostgresError {
        PostgresError::Corrupt { url: self.url.to_string(), message: message.into() }
    }

    /// `"schema".name`.
    pub(crate) fn table(&self, name: &str) -> String {
        format!("\"{}\".{name}", self.schema)
    }

    /// The channel queue notifications go to; the payload is the queue's name.
    pub(crate) fn queue_channel(&self) -> String {
        format!("{}_queue", self.schema)
    }

    /// The channel KV changes go to.
    pub(crate) fn kv_channel(&self) -> String {
        format!("{}_kv", self.schema)
    }

    /// The waiters of the queue called `name`.
    pub(crate) fn queue_notify(&self, name: &str) -> Arc<QueueWaker> {
        let mut queues = self.shared.queues.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(queues.entry(name.to_owned()).or_default())
    }

    /// Sends `NOTIFY channel, payload` soon, after the caller's commit, in order.
    ///
    /// Notifications are sent in their own statements rather than in the writes: PostgreSQL
    /// (up to version 16) serializes the commits of all transactions that notify, across
    /// the whole server, each one waiting for the previous one's flush to disk, which would
    /// cap the commits of every writer at one per disk flush.
    pub(crate) fn notify(&self, channel: &str, payload: String) {
        // The task lives as long as the store.
        let _ = self.notifier.send((channel.to_owned(), payload));
    }

    /// Whether this process watches KV changes (then its writes notify every change; other
    /// processes' watches are found in the `kv_watchers` table by the write itself).
    pub(crate) fn kv_watched(&self) -> bool {
        !self.shared.watchers_of(None).is_empty()
    }

    /// A new watch of the encoded `prefix`: registered in the `kv_watchers` table soon (a
    /// round trip later), so that the writes of every process notify its changes.
    pub(crate) fn watch(&self, prefix: Vec<u8>) -> broadcast::Receiver<(Vec<u8>, KvEvent)> {
        let (tx, rx) = broadcast::channel(WATCH_CAPACITY);
        self.shared.watchers.lock().unwrap_or_else(|e| e.into_inner()).push((prefix.clone(), tx));
        // The task lives as long as the store.
        let _ = self.registrar.send(prefix);
        rx
    }

    /// Whether settlements commit without waiting for the disk.
    pub(crate) fn relaxed(&self) -> bool {
        self.relaxed_settlements
    }

    fn maintenance_sql(&self) -> Vec<String> {
        vec![
            format!(
                "DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE expires_at < now() LIMIT 10000))",
                t = self.table("queue_idempotency")
            ),
            format!(
                "DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE expires_at < now() LIMIT 10000))",
                t = self.table("kv")
            ),
            format!(
                "SELECT coalesce(sum(n_dead_tup), 0)::int8 FROM pg_stat_user_tables
                 WHERE schemaname = '{}' AND relname = 'queue_messages'",
                self.schema
            ),
            // Another process's maintenance may be vacuuming it already: skip, do not queue.
            format!("VACUUM (ANALYZE, SKIP_LOCKED) {}", self.table("queue_messages")),
        ]
    }

    async fn migrate(&self) -> Result<(), PostgresError> {
        let mut client = self.client().await?;
        let err = |e: tokio_postgres::Error| self.error(&e);
        let tx = client.transaction().await.map_err(err)?;
        let lock = fnv1a(&[b"netscript-migrate", self.schema.as_bytes()]);
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock]).await.map_err(err)?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{s}\";
             CREATE TABLE IF NOT EXISTS \"{s}\".migrations (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
            s = self.schema
        ))
        .await
        .map_err(err)?;
        let row = tx
            .query_one(&format!("SELECT coalesce(max(version), 0) FROM {}", self.table("migrations")), &[])
            .await
            .map_err(err)?;
        let current: i32 = row.try_get(0).map_err(err)?;
        if current > SCHEMA_VERSION {
            return Err(PostgresError::SchemaTooNew {
                schema: self.schema.to_string(),
                found: current,
                known: SCHEMA_VERSION,
            });
        }
        for (version, sql) in migrations(&self.schema) {
            if version <= current {
                continue;
            }
            tx.batch_execute(&sql).await.map_err(err)?;
            tx.execute(&format!("INSERT INTO {} (version) VALUES ($1)", self.table("migrations")), &[&version])
                .await
                .map_err(err)?;
            tracing::info!(schema = %self.schema, version, "applied PostgreSQL migration");
        }
        tx.commit().await.map_err(err)
    }
}

pub(crate) fn query_error(url: &str, e: &tokio_postgres::Error) -> PostgresError {
    let (message, code) = describe(e);
    if e.is_closed() || (code.is_none() && e.as_db_error().is_none() && message.contains("connect")) {
        return PostgresError::Connect { url: url.to_owned(), message };
    }
    PostgresError::Query { url: url.to_owned(), message, code }
}

/// The migrations, in order: `(version, SQL)`.
fn migrations(schema: &str) -> Vec<(i32, String)> {
    let s = format!("\"{schema}\"");
    vec![
        (
            1,
            format!(
                "
-- Waiting and leased messages. `visible_at` is when a waiting message becomes claimable,
-- or when a leased message's lease lapses (it is claimable again from then on), so one
-- index serves claims and orphan recovery alike. Acked and dead messages leave the table.
CREATE TABLE {s}.queue_messages (
    id uuid PRIMARY KEY,
    queue text NOT NULL,
    topic text NOT NULL,
    kind text NOT NULL,
    payload bytea NOT NULL,
    headers bytea,
    priority integer NOT NULL,
    idempotency_key text,
    concurrency_key text,
    leased boolean NOT NULL DEFAULT false,
    visible_at timestamptz NOT NULL,
    seq bigint NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    token bigint NOT NULL DEFAULT 0,
    enqueued_at timestamptz NOT NULL,
    last_error text
) WITH (
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0.0,
    autovacuum_vacuum_insert_threshold = 20000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
CREATE INDEX queue_messages_claim ON {s}.queue_messages (queue, topic, priority DESC, visible_at, seq);
CREATE INDEX queue_messages_due ON {s}.queue_messages (queue, visible_at);
CREATE SEQUENCE {s}.queue_seq;

-- Concurrency keys held by a lease: the primary key makes two claimers racing for one key
-- serialize, and only one wins.
CREATE TABLE {s}.queue_concurrency (
    queue text NOT NULL,
    key text NOT NULL,
    message_id uuid NOT NULL,
    lease_until timestamptz NOT NULL,
    PRIMARY KEY (queue, key)
) WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 1000);

-- Idempotency keys: held (expires_at NULL) while their message waits, runs or is dead,
-- then remembered for the window after an ack or cancel, then pruned.
CREATE TABLE {s}.queue_idempotency (
    queue text NOT NULL,
    key text NOT NULL,
    message_id uuid NOT NULL,
    expires_at timestamptz,
    PRIMARY KEY (queue, key)
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.01);
CREATE INDEX queue_idempotency_expiry ON {s}.queue_idempotency (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE {s}.queue_dead (
    id uuid PRIMARY KEY,
    queue text NOT NULL,
    topic text NOT NULL,
    kind text NOT NULL,
    payload bytea NOT NULL,
    headers bytea,
    priority integer NOT NULL,
    idempotency_key text,
    concurrency_key text,
    attempts integer NOT NULL,
    token bigint NOT NULL,
    enqueued_at timestamptz NOT NULL,
    last_error text NOT NULL,
    failed_at timestamptz NOT NULL,
    seq bigint NOT NULL
);
CREATE INDEX queue_dead_recent ON {s}.queue_dead (queue, failed_at DESC, seq DESC);

-- Topics seen per queue, so a claim of every topic walks the claim index topic by topic.
CREATE TABLE {s}.queue_topics (
    queue text NOT NULL,
    topic text NOT NULL,
    PRIMARY KEY (queue, topic)
);

-- Per queue counters: settlements refused as stale.
CREATE TABLE {s}.queue_state (
    queue text PRIMARY KEY,
    stale bigint NOT NULL DEFAULT 0
);

-- The key-value store: keys are their order-preserving encoding, so byte order (bytea
-- compares bytewise) is key order and a prefix is a range.
CREATE TABLE {s}.kv (
    key bytea PRIMARY KEY,
    value bytea NOT NULL,
    versionstamp bigint NOT NULL,
    expires_at timestamptz
) WITH (fillfactor = 90);
CREATE INDEX kv_expiry ON {s}.kv (expires_at) WHERE expires_at IS NOT NULL;
CREATE SEQUENCE {s}.kv_versionstamp;
"
            ),
        ),
        (
            2,
            format!(
                "
-- Key prefixes some process watches (`Kv::watch`), refreshed while it does: a write
-- notifies only the changes under one of them, so a store no one watches sends none.
CREATE TABLE {s}.kv_watchers (
    prefix bytea PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
"
            ),
        ),
    ]
}

/// Registers the prefixes this process watches in the `kv_watchers` table: a new one at
/// once, all live ones every [`WATCH_REFRESH`]; forgets registrations long expired.
async fn register_watches(
    pool: Pool,
    url: Arc<str>,
    table: String,
    shared: Weak<Shared>,
    mut new: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let upsert = format!(
        "INSERT INTO {table} AS w (prefix, expires_at)
         SELECT p, now() + {WATCH_TTL_SECS} * interval '1 second' FROM unnest($1::bytea[]) AS p
         ON CONFLICT (prefix) DO UPDATE SET expires_at = greatest(w.expires_at, excluded.expires_at)"
    );
    let purge = format!("DELETE FROM {table} WHERE expires_at < now() - {WATCH_TTL_SECS} * interval '1 second'");
    let mut tick = tokio::time::interval(WATCH_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let prefixes = tokio::select! {
            prefix = new.recv() => {
                let Some(prefix) = prefix else { return };
                let mut prefixes = vec![prefix];
                while let Ok(p) = new.try_recv() {
                    prefixes.push(p);
                }
                prefixes
            }
            _ = tick.tick() => {
                let Some(shared) = shared.upgrade() else { return };
                shared.watched_prefixes()
            }
        };
        let Ok(client) = pool.get().await else { continue };
        if !prefixes.is_empty()
            && let Err(e) = client.execute(upsert.as_str(), &[&prefixes]).await
        {
            tracing::warn!(url = %url, error = %describe(&e).0, "PostgreSQL: could not register KV watches");
        }
        let _ = client.execute(purge.as_str(), &[]).await;
    }
}

async fn maintenance(pool: Pool, url: Arc<str>, sql: Vec<String>, vacuum: bool) {
    // Without the vacuum every tick purges; with it, the purges keep their 30 s.
    let check = if vacuum { VACUUM_CHECK_INTERVAL } else { MAINTENANCE_INTERVAL };
    let purge_every = (MAINTENANCE_INTERVAL.as_millis() / check.as_millis()).max(1);
    let mut tick = tokio::time::interval(check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut ticks: u128 = 0;
    loop {
        tick.tick().await;
        ticks += 1;
        let Ok(client) = pool.get().await else { continue };
        if ticks % purge_every == 0 {
            for purge in &sql[..2] {
                if let Err(e) = client.execute(purge.as_str(), &[]).await {
                    tracing::warn!(url = %url, error = %describe(&e).0, "PostgreSQL maintenance: purge failed");
                }
            }
        }
        if !vacuum {
            continue;
        }
        let dead: i64 = match client.query_one(sql[2].as_str(), &[]).await {
            Ok(row) => row.try_get(0).unwrap_or(0),
            Err(_) => continue,
        };
        if dead > VACUUM_DEAD_ROWS
            && let Err(e) = client.batch_execute(&sql[3]).await
        {
            tracing::warn!(url = %url, error = %describe(&e).0, "PostgreSQL maintenance: vacuum failed");
        }
    }
}

/// Sends a batch of notifications, in order.
const NOTIFY_SQL: &str = "SELECT count(pg_notify(n.c, n.p)) FROM unnest($1::text[], $2::text[]) AS n(c, p)";

/// The store's own connection, outside the pool: `LISTEN`s on the queue and KV channels and
/// fans out what arrives, and sends the store's notifications (all that are waiting, in one
/// statement), so neither waits for a free pooled connection.
struct Listener {
    config: tokio_postgres::Config,
    url: Arc<str>,
    channels: [String; 2],
    shared: Weak<Shared>,
    kv_select: String,
}

impl Listener {
    async fn run(
        self,
        ready: oneshot::Sender<Result<(), PostgresError>>,
        mut outgoing: mpsc::UnboundedReceiver<(String, String)>,
    ) {
        let mut ready = Some(ready);
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.session(&mut ready, &mut outgoing).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Err(e));
                        return;
                    }
                    tracing::warn!(url = %self.url, error = %e, "PostgreSQL listener lost; reconnecting");
                }
            }
            if self.shared.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// One connection's life: returns when it drops.
    async fn session(
        &self,
        ready: &mut Option<oneshot::Sender<Result<(), PostgresError>>>,
        outgoing: &mut mpsc::UnboundedReceiver<(String, String)>,
    ) -> Result<(), PostgresError> {
        let (client, mut connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| PostgresError::Connect { url: self.url.to_string(), message: describe(&e).0 })?;
        let (tx, mut incoming) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(n) = message
                    && tx.send(n).is_err()
                {
                    break;
                }
            }
        });
        // A notifying transaction commits like any other: with `synchronous_commit` on, every
        // batch of notifications would wait for a disk flush (measured: 0.3 to 3 ms here),
        // holding up the wake-ups behind it and the notifications arriving meanwhile. A
        // notification lost in a server crash costs nothing: waiters are woken at reconnect.
        let listen =
            format!("SET synchronous_commit = off; LISTEN \"{}\"; LISTEN \"{}\";", self.channels[0], self.channels[1]);
        let prepared = match client.batch_execute(&listen).await {
            Ok(()) => match client.query_one("SELECT pg_backend_pid()", &[]).await {
                Ok(row) => match row.try_get::<_, i32>(0) {
                    Ok(pid) => client.prepare(NOTIFY_SQL).await.map(|stmt| (stmt, pid)),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let (notify, own_pid) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                driver.abort();
                return Err(query_error(&self.url, &e));
            }
        };
        if let Some(r) = ready.take() {
            let _ = r.send(Ok(()));
        }
        // Something may have happened while no one listened.
        if let Some(shared) = self.shared.upgrade() {
            shared.wake_all();
        }
        let (mut channels, mut payloads) = (Vec::new(), Vec::new());
        loop {
            tokio::select! {
                n = incoming.recv() => {
                    let Some(n) = n else { break };
                    let Some(shared) = self.shared.upgrade() else { break };
                    // This process woke its own waiters when it sent the wake-up: a second
                    // wake would only make every idle worker claim again for nothing.
                    if n.process_id() == own_pid && n.channel() == self.channels[0] {
                        continue;
                    }
                    self.dispatch(&client, &shared, &n).await;
                }
                out = outgoing.recv() => {
                    let Some((c, p)) = out else { break };
                    channels.push(c);
                    payloads.push(p);
                    while channels.len() < 4096 {
                        let Ok((c, p)) = outgoing.try_recv() else { break };
                        // A repeated wake-up in one batch is one wake-up.
                        if channels.last() != Some(&c) || payloads.last() != Some(&p) {
                            channels.push(c);
                            payloads.push(p);
                        }
                    }
                    let sent = client.query_one(&notify, &[&channels, &payloads]).await;
                    channels.clear();
                    payloads.clear();
                    if let Err(e) = sent {
                        // Remote waiters still wake at their timeout; remote watchers miss these.
                        tracing::warn!(url = %self.url, error = %describe(&e).0, "PostgreSQL: notifications lost");
                        if client.is_closed() {
                            break;
                        }
                    }
                }
            }
        }
        driver.abort();
        Ok(())
    }

    async fn dispatch(&self, client: &tokio_postgres::Client, shared: &Shared, n: &tokio_postgres::Notification) {
        if n.channel() == self.channels[0] {
            let notify = shared.queues.lock().unwrap_or_else(|e| e.into_inner()).get(n.payload()).cloned();
            if let Some(notify) = notify {
                notify.wake();
            }
            return;
        }
        if shared.watchers_of(None).is_empty() {
            return;
        }
        let event = match crate::kv::postgres::decode_notification(n.payload()) {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(crate::kv::postgres::Pending { key, versionstamp }) => {
                // The value was too large for the notification: read it.
                let row = client.query_opt(self.kv_select.as_str(), &[&key, &versionstamp]).await;
                match row {
                    Ok(Some(row)) => match crate::kv::postgres::fetched_event(key, &row) {
                        Some(event) => event,
                        None => return,
                    },
                    _ => return,
                }
            }
        };
        for tx in shared.watchers_of(Some(&event.0)) {
            let _ = tx.send(event.clone());
        }
    }
}
