//! The embedded store: one SQLite file (`<data_dir>/netscript.db`) that holds the durable
//! queue ([`EmbeddedQueue`](crate::queue::embedded::EmbeddedQueue)) and the key-value store
//! ([`EmbeddedKv`](crate::kv::embedded::EmbeddedKv)), with no server to run.
//!
//! # How it writes
//!
//! One dedicated OS thread owns the write connection. Async callers send it requests over a
//! channel and await a reply. The thread takes every request waiting in the channel and runs
//! them all in **one** transaction (group commit), then replies: many concurrent enqueues,
//! claims, settlements and KV writes cost one WAL commit. A request that fails does not
//! take the others down: the transaction is rolled back and run again without it, this time
//! with a savepoint around each request (savepoints cost, and failures are rare, so the
//! first run goes without). Reads go through the same thread; they are cheap, and it keeps
//! every request in one serial order.
//!
//! A second thread, on its own connection, checkpoints the WAL into the database file every
//! 100 ms, so the writer never waits for the fsyncs a checkpoint makes.
//!
//! # Durability
//!
//! The file is in WAL mode. With the default [`Durability::Normal`] (`synchronous=NORMAL`) a
//! commit survives the process being killed, which is the promise; a power loss or OS crash
//! may lose the last commits (never corrupt the file). [`Durability::Full`]
//! (`synchronous=FULL`) syncs every group commit to disk as well.
//!
//! # Several processes
//!
//! Other processes may open the same file (a CLI `trigger` while `serve` runs): SQLite's
//! locks serialize writers, and a busy timeout makes a writer wait for another instead of
//! failing. The writer thread polls `PRAGMA data_version` every few tens of milliseconds and
//! wakes the queue's waiters when another connection committed. KV watches see only the
//! changes made through this process.
//!
//! What it is not: a general SQL access layer. The schema belongs to the queue and KV
//! backends, and is versioned by `PRAGMA user_version`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OpenFlags, params};
use tokio::sync::{Notify, broadcast, oneshot};

use crate::kv::KvEvent;
use crate::time::Timestamp;

/// The file name of the store inside its data directory.
pub const FILE_NAME: &str = "netscript.db";

/// How often the writer thread looks for commits made by other connections.
const DATA_VERSION_POLL: Duration = Duration::from_millis(25);

/// How often the checkpointer thread copies committed WAL pages into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// WAL pages after which the writer checkpoints by itself, should the checkpointer thread
/// fall behind (about 32 MB with 4 KB pages).
const WRITER_AUTOCHECKPOINT: u32 = 8192;

/// The page cache of a connection, in KiB (`PRAGMA cache_size = -N`).
///
/// Bigger is slower here. When a B-tree page splits, SQLite swaps two new pages through a
/// temporary page number (the lock page, 1 GiB into the file: `balance_nonroot`), which
/// leaves the page cache's largest key there; every commit then truncates the cache to the
/// database size, and with that key far past the end it scans the whole cache
/// (`pcache1TruncateUnsafe`), cost in proportion to the cache. Measured with the throughput
/// bench (embedded, no-op jobs, 2026-11-30): 32 MiB 56,400 jobs/s over 100,000 and 53,800
/// over 1,000,000; 8 MiB 62,800 and 64,100; 2 MiB 66,400 and 61,600 (the big backlog's pages
/// no longer fit). docs/BENCHMARKS.md has the runs.
const CACHE_KIB: u32 = 8192;

/// How often expired KV entries and idempotency keys are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(30);

/// Most rows one purge removes, so a purge never stalls the writer for long.
const PURGE_LIMIT: i64 = 10_000;

/// Capacity of the KV change channel; a watcher further behind gets `WatchError::Lagged`.
const WATCH_CAPACITY: usize = 4096;

/// What a commit promises.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=NORMAL`: a commit survives the process being killed; a power loss or OS
    /// crash may lose the last commits. The default, and much faster.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is synced to disk before it is acknowledged.
    Full,
}

/// How to open an [`EmbeddedDb`].
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// What a commit promises (default [`Durability::Normal`]).
    pub durability: Durability,
    /// How long a write waits for another process that holds the file's write lock
    /// (default 5 s).
    pub busy_timeout: Duration,
    /// Most requests committed in one transaction (default 1,024).
    pub max_batch: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self { durability: Durability::Normal, busy_timeout: Duration::from_secs(5), max_batch: 1024 }
    }
}

impl EmbeddedOptions {
    /// Sets the durability.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets the busy timeout.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Sets the most requests committed in one transaction (at least 1).
    pub fn max_batch(mut self, max: usize) -> Self {
        self.max_batch = max.max(1);
        self
    }
}

/// An error of the embedded store. Every variant names the file.
#[derive(Clone, Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// The file could not be opened, is not a SQLite database, or its schema could not be
    /// set up.
    #[error("cannot open the embedded store `{}`: {message}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The file's content is damaged.
    #[error("the embedded store `{}` is corrupt: {message}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A statement failed (or a request panicked on the writer thread, a bug).
    #[error("embedded store `{}`: {message}", path.display())]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The store's writer thread has stopped.
    #[error("the embedded store `{}` is closed", path.display())]
    Closed {
        /// The file.
        path: PathBuf,
    },
    /// The disk holding the file is full (SQLite's `SQLITE_FULL`). The write was rolled back
    /// whole; what was committed before is intact, and writes succeed again once there is
    /// room.
    #[error(
        "the disk holding the embedded store `{}` is full: free space on it (writes succeed again once there is \
         room; nothing committed before is lost)",
        path.display()
    )]
    DiskFull {
        /// The file.
        path: PathBuf,
    },
    /// A file of the store reached the process's file size limit (`RLIMIT_FSIZE`, `ulimit
    /// -f`). The write was rolled back whole, as for a full disk.
    #[error(
        "the embedded store `{}` reached this process's file size limit ({limit} bytes, `ulimit -f` or \
         RLIMIT_FSIZE): raise the limit (writes succeed again then; nothing committed before is lost)",
        path.display()
    )]
    FileSizeLimit {
        /// The file.
        path: PathBuf,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The file, or the directory that holds it, cannot be written: a read-only file system
    /// or missing permissions. Reads may still work; writes succeed again once it is
    /// writable.
    #[error("the embedded store `{}` is read-only: {message}", path.display())]
    ReadOnly {
        /// The file.
        path: PathBuf,
        /// Why, and what to do.
        message: String,
    },
}

impl EmbeddedError {
    /// Whether the disk or the file system refused the write (full, read-only, or over the
    /// process's file size limit): a condition of the machine that clears when an operator
    /// frees space, remounts or raises the limit, not a fault of the request.
    pub fn is_storage_refusal(&self) -> bool {
        matches!(
            self,
            EmbeddedError::DiskFull { .. } | EmbeddedError::ReadOnly { .. } | EmbeddedError::FileSizeLimit { .. }
        )
    }
}

/// An error inside a request, before it is given the file's path.
#[derive(Debug)]
pub(crate) enum OpError {
    /// SQLite failed.
    Sqlite(rusqlite::Error),
    /// Stored data could not be decoded.
    Corrupt(String),
    /// The request panicked (a bug); its writes were rolled back.
    Panicked,
}

impl From<rusqlite::Error> for OpError {
    fn from(e: rusqlite::Error) -> Self {
        OpError::Sqlite(e)
    }
}

impl OpError {
    fn into_embedded(self, path: &Path) -> EmbeddedError {
        match self {
            OpError::Sqlite(e) => sqlite_error(path, &e),
            OpError::Corrupt(message) => EmbeddedError::Corrupt { path: path.to_owned(), message },
            OpError::Panicked => EmbeddedError::Sqlite {
                path: path.to_owned(),
                message: "a request panicked on the writer thread".into(),
            },
        }
    }
}

fn sqlite_error(path: &Path, e: &rusqlite::Error) -> EmbeddedError {
    if let Some(refusal) = storage_refusal(path, e) {
        return refusal;
    }
    let path = path.to_owned();
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            EmbeddedError::Corrupt { path, message: e.to_string() }
        }
        _ => EmbeddedError::Sqlite { path, message: e.to_string() },
    }
}

/// `e` as a full disk or a read-only file, when that is what it was.
///
/// SQLite says `SQLITE_FULL` for a full disk, but a read-only file system shows up as
/// `SQLITE_READONLY`, `SQLITE_CANTOPEN` or an I/O error depending on which file and which
/// step met it; for those the file system is asked directly (see [`write_refusal`]).
fn storage_refusal(path: &Path, e: &rusqlite::Error) -> Option<EmbeddedError> {
    match e.sqlite_error_code()? {
        // A write cut short by the file size limit looks like a full disk to SQLite.
        ErrorCode::DiskFull => {
            Some(file_size_limit(path).unwrap_or_else(|| EmbeddedError::DiskFull { path: path.to_owned() }))
        }
        ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::SystemIoFailure => {
            write_refusal(path).or_else(|| file_size_limit(path))
        }
        _ => None,
    }
}

/// [`EmbeddedError::FileSizeLimit`] if a file of the store (the database, its `-wal` or its
/// `-shm`) is at or past the process's file size limit, which makes the kernel refuse to
/// grow it (`EFBIG`: SQLite reports an I/O error). Read from `/proc/self/limits`, so only on
/// Linux.
fn file_size_limit(path: &Path) -> Option<EmbeddedError> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let limit: u64 =
        limits.lines().find_map(|l| l.strip_prefix("Max file size"))?.split_whitespace().next()?.parse().ok()?;
    let mut files = [path.as_os_str().to_owned(), path.as_os_str().to_owned(), path.as_os_str().to_owned()];
    files[1].push("-wal");
    files[2].push("-shm");
    files
        .iter()
        .any(|f| std::fs::metadata(f).is_ok_and(|m| m.len() >= limit))
        .then(|| EmbeddedError::FileSizeLimit { path: path.to_owned(), limit })
}

/// Why the file system refuses to write `path` (the store's file), if it does: opens the
/// file for writing, and creates then removes a probe file beside it (never the `-wal` or
/// `-shm` files, which another process may be creating at the same moment). Only called
/// after a write failed, so its cost does not matter.
fn write_refusal(path: &Path) -> Option<EmbeddedError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if path.exists()
        && let Err(e) = std::fs::OpenOptions::new().write(true).open(path)
        && let Some(refusal) = io_refusal(path, dir, &e)
    {
        return Some(refusal);
    }
    let probe = dir.join(format!(".netscript-write-probe-{}-{:x}", std::process::id(), fastrand::u64(..)));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(file) => {
            drop(file);
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) => io_refusal(path, dir, &e),
    }
}

/// An I/O error met while writing in `dir` as a refusal of the store at `path`, if it is one.
fn io_refusal(path: &Path, dir: &Path, e: &std::io::Error) -> Option<EmbeddedError> {
    let path = path.to_owned();
    match e.kind() {
        std::io::ErrorKind::StorageFull => Some(EmbeddedError::DiskFull { path }),
        std::io::ErrorKind::ReadOnlyFilesystem => Some(EmbeddedError::ReadOnly {
            path,
            message: format!(
                "the file system holding `{}` is mounted read-only: remount it read-write, or point the data \
                 directory (`data_dir`, `NETSCRIPT_DATA_DIR`) at a writable one",
                dir.display()
            ),
        }),
        std::io::ErrorKind::PermissionDenied => Some(EmbeddedError::ReadOnly {
            path,
            message: format!(
                "permission denied ({e}): give this process write access to the file and to `{}`, or point the \
                 data directory (`data_dir`, `NETSCRIPT_DATA_DIR`) at a writable one",
                dir.display()
            ),
        }),
        _ => None,
    }
}

/// A failure to open the store, named by what it was: a full disk or a read-only file
/// system if it was one of those, else [`EmbeddedError::Open`] with SQLite's reason.
fn open_error(path: &Path, e: &SetupError) -> EmbeddedError {
    if let SetupError::Sqlite(sqlite) = e
        && let Some(refusal) = storage_refusal(path, sqlite)
    {
        return refusal;
    }
    EmbeddedError::Open { path: path.to_owned(), message: e.to_string() }
}

/// A counter kept in the file, read once per group commit and written back once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Counter {
    /// The last KV versionstamp.
    KvVersion = 0,
    /// Orders queue messages that became visible in the same millisecond.
    QueueSeq = 1,
}

const COUNTERS: [(Counter, &str); 2] = [(Counter::KvVersion, "kv_version"), (Counter::QueueSeq, "queue_seq")];

type Hook = Box<dyn FnOnce() + Send>;

/// The transaction a request runs in, on the writer thread.
pub(crate) struct Tx<'c> {
    conn: &'c Connection,
    /// Per counter: its value and whether it changed in this transaction.
    counters: RefCell<[Option<(i64, bool)>; 2]>,
    hooks: RefCell<Vec<Hook>>,
}

impl<'c> Tx<'c> {
    /// The connection, inside the transaction.
    pub(crate) fn conn(&self) -> &'c Connection {
        self.conn
    }

    /// The next value of `counter`: strictly greater than every value handed out before, by
    /// any process.
    pub(crate) fn next(&self, counter: Counter) -> Result<i64, OpError> {
        let i = counter as usize;
        let mut counters = self.counters.borrow_mut();
        let slot = &mut counters[i];
        let current = match *slot {
            Some((v, _)) => v,
            None => self
                .conn
                .prepare_cached("SELECT value FROM meta WHERE name = ?1")?
                .query_row(params![COUNTERS[i].1], |r| r.get::<_, i64>(0))?,
        };
        let next = current + 1;
        *slot = Some((next, true));
        Ok(next)
    }

    /// Runs `hook` on the writer thread after the transaction committed (not at all if this
    /// request or the transaction is rolled back).
    pub(crate) fn after_commit(&self, hook: impl FnOnce() + Send + 'static) {
        self.hooks.borrow_mut().push(Box::new(hook));
    }

    fn flush_counters(&self) -> rusqlite::Result<()> {
        let mut counters = self.counters.borrow_mut();
        for (i, slot) in counters.iter_mut().enumerate() {
            if let Some((v, dirty @ true)) = slot {
                self.conn
                    .prepare_cached("UPDATE meta SET value = ?1 WHERE name = ?2")?
                    .execute(params![*v, COUNTERS[i].1])?;
                *dirty = false;
            }
        }
        Ok(())
    }
}

/// One request to the writer thread.
trait Request: Send {
    /// Runs inside the transaction; `false` if it failed and its writes must be rolled back.
    /// May run more than once: when a transaction is rolled back and retried, each of its
    /// requests runs again, and only the last run counts.
    fn run(&mut self, tx: &Tx<'_>) -> bool;
    /// Replies, once the transaction's fate is known (`Err`: it was not committed).
    fn finish(self: Box<Self>, batch: Result<(), &EmbeddedError>, path: &Path);
    /// The SQLite error its last run failed with, if it failed with one.
    fn sqlite_error(&self) -> Option<&rusqlite::Error>;
}

struct Call<F, T> {
    f: F,
    result: Option<Result<T, OpError>>,
    reply: oneshot::Sender<Result<T, EmbeddedError>>,
}

impl<F, T> Request for Call<F, T>
where
    F: FnMut(&Tx<'_>) -> Result<T, OpError> + Send,
    T: Send,
{
    fn run(&mut self, tx: &Tx<'_>) -> bool {
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| (self.f)(tx))).unwrap_or_else(|_| Err(OpError::Panicked));
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn finish(self: Box<Self>, batch: Result<(), &EmbeddedError>, path: &Path) {
        let out = match (self.result, batch) {
            (Some(Err(e)), _) => Err(e.into_embedded(path)),
            (_, Err(e)) => Err(e.clone()),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (None, Ok(())) => Err(EmbeddedError::Closed { path: path.to_owned() }),
        };
        // The caller may have stopped waiting (its future was dropped); nothing to do then.
        let _ = self.reply.send(out);
    }

    fn sqlite_error(&self) -> Option<&rusqlite::Error> {
        match &self.result {
            Some(Err(OpError::Sqlite(e))) => Some(e),
            _ => None,
        }
    }
}

/// State shared between the handle and the writer thread.
struct Shared {
    /// Waiters of each queue, by queue name.
    queue_notifies: Mutex<HashMap<String, Arc<Notify>>>,
    kv_events: broadcast::Sender<(Vec<u8>, KvEvent)>,
}

impl Shared {
    fn notify_all_queues(&self) {
        let notifies = self.queue_notifies.lock().unwrap_or_else(|e| e.into_inner());
        for n in notifies.values() {
            wake(n);
        }
    }
}

/// Wakes every current waiter, and the next one to come if none is waiting.
pub(crate) fn wake(notify: &Notify) {
    notify.notify_waiters();
    notify.notify_one();
}

/// The embedded store: one SQLite file and the thread that writes it. Open it once per
/// process and share it (`Arc<EmbeddedDb>`) between the queue and the KV store:
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use netscript_runtime::embedded::EmbeddedDb;
/// use netscript_runtime::kv::embedded::EmbeddedKv;
/// use netscript_runtime::queue::embedded::EmbeddedQueue;
///
/// let db = Arc::new(EmbeddedDb::open(".netscript")?);
/// let queue = EmbeddedQueue::new(Arc::clone(&db), "jobs");
/// let kv = EmbeddedKv::new(db);
/// # Ok(()) }
/// ```
///
/// Opening blocks (file I/O, schema migration); in async code at startup that is fine, or
/// use `spawn_blocking`. Dropping the last handle waits for the writer to answer what was
/// already sent, then closes the file.
pub struct EmbeddedDb {
    path: PathBuf,
    sender: Option<mpsc::Sender<Box<dyn Request>>>,
    thread: Option<JoinHandle<()>>,
    checkpoint: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EmbeddedDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedDb").field("path", &self.path).finish_non_exhaustive()
    }
}

impl EmbeddedDb {
    /// Opens (or creates) `<data_dir>/netscript.db`, creating the directory, with the default
    /// options. Blocks while it opens the file and migrates its schema.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Self, EmbeddedError> {
        Self::open_with(data_dir, EmbeddedOptions::default())
    }

    /// Opens (or creates) `<data_dir>/netscript.db` with `options`.
    pub fn open_with(data_dir: impl AsRef<Path>, options: EmbeddedOptions) -> Result<Self, EmbeddedError> {
        let dir = data_dir.as_ref();
        let path = dir.join(FILE_NAME);
        std::fs::create_dir_all(dir).map_err(|e| {
            io_refusal(&path, dir, &e).unwrap_or_else(|| EmbeddedError::Open {
                path: dir.to_owned(),
                message: format!("cannot create the directory: {e}"),
            })
        })?;
        Self::open_file(path, options)
    }

    /// Opens (or creates) the store at exactly `path`.
    pub fn open_file(path: impl Into<PathBuf>, options: EmbeddedOptions) -> Result<Self, EmbeddedError> {
        let path = path.into();
        let open_err = |e: &dyn std::fmt::Display| EmbeddedError::Open { path: path.clone(), message: e.to_string() };
        let conn = retry_busy(&options, || {
            let conn = open_connection(&path, &options)?;
            migrate(&conn)?;
            Ok(conn)
        })
        .map_err(|e| open_error(&path, &e))?;
        let checkpoint_conn =
            retry_busy(&options, || Ok(open_connection(&path, &options)?)).map_err(|e| open_error(&path, &e))?;
        let version = data_version(&conn).map_err(|e| open_error(&path, &SetupError::Sqlite(e)))?;

        let shared = Arc::new(Shared {
            queue_notifies: Mutex::new(HashMap::new()),
            kv_events: broadcast::channel(WATCH_CAPACITY).0,
        });
        let (sender, receiver) = mpsc::channel();
        let writer = Writer {
            conn,
            path: path.clone(),
            receiver,
            shared: Arc::clone(&shared),
            max_batch: options.max_batch.max(1),
            data_version: version,
            commits: Arc::new(AtomicU64::new(0)),
            refused: false,
        };
        let (stop, stopped) = mpsc::channel();
        let checkpointer = Checkpointer { conn: checkpoint_conn, stopped, commits: Arc::clone(&writer.commits) };
        let checkpoint_thread = std::thread::Builder::new()
            .name("netscript-checkpoint".into())
            .spawn(move || checkpointer.run())
            .map_err(|e| open_err(&format!("cannot start the checkpoint thread: {e}")))?;
        let thread = std::thread::Builder::new()
            .name("netscript-embedded".into())
            .spawn(move || writer.run())
            .map_err(|e| open_err(&format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            path,
            sender: Some(sender),
            thread: Some(thread),
            checkpoint: Some((stop, checkpoint_thread)),
            shared,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the writer thread, inside the current group commit; its result once the
    /// transaction committed.
    ///
    /// `f` may run more than once (when another request of its transaction fails, the
    /// transaction is rolled back and the others run again), so it must not consume what it
    /// captured, and its effects outside the transaction belong in [`Tx::after_commit`].
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, EmbeddedError>
    where
        F: FnMut(&Tx<'_>) -> Result<T, OpError> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let request = Box::new(Call { f, result: None, reply });
        let closed = || EmbeddedError::Closed { path: self.path.clone() };
        self.sender.as_ref().ok_or_else(closed)?.send(request).map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// The notifier of the queue called `name`: woken when it may have work.
    pub(crate) fn queue_notify(&self, name: &str) -> Arc<Notify> {
        let mut notifies = self.shared.queue_notifies.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(notifies.entry(name.to_owned()).or_default())
    }

    /// The channel of committed KV changes.
    pub(crate) fn kv_events(&self) -> &broadcast::Sender<(Vec<u8>, KvEvent)> {
        &self.shared.kv_events
    }
}

impl Drop for EmbeddedDb {
    fn drop(&mut self) {
        // Closing the channel stops the writer once it has answered what was sent; waiting
        // for it closes the connection before the handle is gone, so the file can be reopened
        // at once.
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Some((stop, thread)) = self.checkpoint.take() {
            drop(stop);
            let _ = thread.join();
        }
    }
}

fn open_connection(path: &Path, options: &EmbeddedOptions) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure(&conn, options)?;
    Ok(conn)
}

fn configure(conn: &Connection, options: &EmbeddedOptions) -> rusqlite::Result<()> {
    conn.busy_timeout(options.busy_timeout)?;
    // Touches the file: a file that is not a database fails here.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "the embedded store could not switch to WAL mode");
    }
    let sync = match options.durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {sync};
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -{CACHE_KIB};
         PRAGMA journal_size_limit = 67108864;
         PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT};"
    ))?;
    conn.set_prepared_statement_cache_capacity(128);
    Ok(())
}

/// The schema, one entry per version; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: queue and KV.
    "CREATE TABLE meta (name TEXT NOT NULL PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
     INSERT INTO meta (name, value) VALUES ('kv_version', 0), ('queue_seq', 0);

     -- state: 0 ready, 1 delayed, 2 leased, 3 dead. `at` is, by state: when it became
     -- visible, when it is due, when its lease ends, when it failed (ms since the epoch).
     CREATE TABLE queue_messages (
         id BLOB NOT NULL UNIQUE,
         queue TEXT NOT NULL,
         topic TEXT NOT NULL,
         kind TEXT NOT NULL,
         payload BLOB NOT NULL,
         headers BLOB,
         priority INTEGER NOT NULL,
         idempotency_key TEXT,
         concurrency_key TEXT,
         state INTEGER NOT NULL,
         at INTEGER NOT NULL,
         seq INTEGER NOT NULL,
         attempts INTEGER NOT NULL,
         token INTEGER NOT NULL,
         enqueued_at INTEGER NOT NULL,
         last_error TEXT
     );
     CREATE INDEX queue_ready ON queue_messages (queue, topic, priority DESC, at, seq, concurrency_key)
         WHERE state = 0;
     CREATE INDEX queue_delayed ON queue_messages (queue, at) WHERE state = 1;
     CREATE INDEX queue_leased ON queue_messages (queue, at) WHERE state = 2;
     CREATE INDEX queue_active_keys ON queue_messages (queue, concurrency_key)
         WHERE state = 2 AND concurrency_key IS NOT NULL;
     CREATE INDEX queue_dead ON queue_messages (queue, at, seq) WHERE state = 3;

     CREATE TABLE queue_topics (queue TEXT NOT NULL, topic TEXT NOT NULL, PRIMARY KEY (queue, topic))
         WITHOUT ROWID;
     CREATE TABLE queue_idempotency (
         queue TEXT NOT NULL,
         key TEXT NOT NULL,
         message_id BLOB NOT NULL,
         expires_at INTEGER,
         PRIMARY KEY (queue, key)
     ) WITHOUT ROWID;
     CREATE INDEX queue_idempotency_expiry ON queue_idempotency (expires_at) WHERE expires_at IS NOT NULL;
     CREATE TABLE queue_state (queue TEXT NOT NULL PRIMARY KEY, stale INTEGER NOT NULL) WITHOUT ROWID;

     CREATE TABLE kv (
         key BLOB NOT NULL PRIMARY KEY,
         value BLOB NOT NULL,
         versionstamp INTEGER NOT NULL,
         expires_at INTEGER
     );
     CREATE INDEX kv_expiry ON kv (expires_at) WHERE expires_at IS NOT NULL;",
];

/// Brings the schema up to date. Runs under `BEGIN IMMEDIATE`, so two processes opening a
/// new file at once migrate it once.
fn migrate(conn: &Connection) -> Result<(), SetupError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(SetupError::Other(format!(
                "its schema version is {version}, newer than this program knows ({known}); upgrade the program"
            )));
        }
        if version < 0 {
            return Err(SetupError::Other(format!("its schema version {version} is invalid")));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            conn.execute_batch(sql).map_err(|e| match e.sqlite_error_code() {
                Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => SetupError::Sqlite(e),
                _ => SetupError::Other(format!("schema migration {} failed: {e}", i + 1)),
            })?;
        }
        if version < known {
            conn.execute_batch(&format!("PRAGMA user_version = {known}"))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(conn.execute_batch("COMMIT")?),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Why opening failed.
enum SetupError {
    Sqlite(rusqlite::Error),
    Other(String),
}

impl From<rusqlite::Error> for SetupError {
    fn from(e: rusqlite::Error) -> Self {
        SetupError::Sqlite(e)
    }
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetupError::Sqlite(e) => std::fmt::Display::fmt(e, f),
            SetupError::Other(m) => f.write_str(m),
        }
    }
}

/// Runs `step` again while it fails with "database is locked", until the busy timeout. Some
/// steps of opening (switching a new file to WAL mode, above all) fail at once instead of
/// waiting when another process opens the file at the same moment.
fn retry_busy<T>(options: &EmbeddedOptions, mut step: impl FnMut() -> Result<T, SetupError>) -> Result<T, SetupError> {
    let deadline = Instant::now() + options.busy_timeout;
    loop {
        match step() {
            Err(SetupError::Sqlite(e))
                if matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5 + fastrand::u64(0..20)));
            }
            other => return other,
        }
    }
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("PRAGMA data_version")?.query_row([], |r| r.get(0))
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    path: PathBuf,
    receiver: mpsc::Receiver<Box<dyn Request>>,
    shared: Arc<Shared>,
    max_batch: usize,
    data_version: i64,
    /// Commits so far, for the checkpointer.
    commits: Arc<AtomicU64>,
    /// Whether the last group commit was refused by the disk (full or read-only), so the
    /// log says so once when it starts and once when it ends, not once per write.
    refused: bool,
}

impl Writer {
    fn run(mut self) {
        let mut batch: Vec<Box<dyn Request>> = Vec::with_capacity(self.max_batch);
        let mut last_poll = Instant::now();
        let mut last_purge: Option<Instant> = None;
        loop {
            let wait = DATA_VERSION_POLL.saturating_sub(last_poll.elapsed());
            match self.receiver.recv_timeout(wait) {
                Ok(r) => batch.push(r),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while batch.len() < self.max_batch {
                match self.receiver.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            if last_purge.is_none_or(|t| t.elapsed() >= PURGE_INTERVAL) {
                last_purge = Some(Instant::now());
                batch.push(purge_request());
            }
            if !batch.is_empty() {
                self.commit(&mut batch);
            }
            if last_poll.elapsed() >= DATA_VERSION_POLL {
                last_poll = Instant::now();
                self.poll_data_version();
            }
        }
    }

    /// Wakes the queues' waiters when another connection committed since the last look.
    fn poll_data_version(&mut self) {
        match data_version(&self.conn) {
            Ok(v) if v != self.data_version => {
                self.data_version = v;
                self.shared.notify_all_queues();
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(path = %self.path.display(), error = %e, "cannot read PRAGMA data_version"),
        }
    }

    /// Runs `batch` in one transaction and replies to each request.
    ///
    /// First without savepoints, which is the fast way and nearly always enough. If a request
    /// fails, the transaction is rolled back and run again without it, each request under
    /// its own savepoint this time, so any other failure is undone alone.
    fn commit(&mut self, batch: &mut Vec<Box<dyn Request>>) {
        let mut failed = vec![false; batch.len()];
        let mut isolate = false;
        let mut wrote = false;
        let result = loop {
            match self.attempt(batch, &mut failed, isolate) {
                Attempt::Committed { changes } => {
                    wrote = changes;
                    break Ok(());
                }
                Attempt::RequestFailed(i) => {
                    failed[i] = true;
                    if failed.iter().all(|f| *f) {
                        break Ok(());
                    }
                    isolate = true;
                }
                Attempt::Failed(e) => break Err(e),
            }
        };
        // A full or read-only disk fails the commit, or (when SQLite meets it inside a
        // statement) the requests one by one.
        let refusal = match &result {
            Err(e) => e.is_storage_refusal().then(|| e.clone()),
            Ok(()) => batch
                .iter()
                .zip(&failed)
                .filter(|(_, failed)| **failed)
                .find_map(|(r, _)| r.sqlite_error().and_then(|e| storage_refusal(&self.path, e))),
        };
        self.note_refusal(refusal, wrote);
        for r in batch.drain(..) {
            r.finish(result.as_ref().map(|_| ()), &self.path);
        }
        // Our own commits do not change this connection's data_version, so no refresh here.
    }

    /// Logs when the disk starts refusing group commits and when it accepts them again (a
    /// commit that wrote something: one that changed nothing proves nothing). The callers
    /// get the error of each refused write; the log gets the transitions only.
    fn note_refusal(&mut self, refusal: Option<EmbeddedError>, wrote: bool) {
        match refusal {
            Some(e) if !self.refused => {
                self.refused = true;
                tracing::error!(error = %e, "the embedded store cannot write; every write fails until this is fixed");
            }
            None if self.refused && wrote => {
                self.refused = false;
                tracing::info!(path = %self.path.display(), "the embedded store can write again");
            }
            _ => {}
        }
    }

    /// One try at committing the requests of `batch` that have not failed. Every outcome but
    /// `Committed` leaves the transaction rolled back.
    fn attempt(&self, batch: &mut [Box<dyn Request>], failed: &mut [bool], isolate: bool) -> Attempt {
        let conn = &self.conn;
        let path = self.path.as_path();
        let fail = |e: &rusqlite::Error| {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            Attempt::Failed(sqlite_error(path, e))
        };
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            return fail(&e);
        }
        let changes_before = conn.total_changes();
        let tx = Tx { conn, counters: RefCell::new([None, None]), hooks: RefCell::new(Vec::new()) };
        let step = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([]).map(drop));
        for (i, r) in batch.iter_mut().enumerate() {
            if failed[i] {
                continue;
            }
            if !isolate {
                if !r.run(&tx) {
                    if !conn.is_autocommit() {
                        let _ = conn.execute_batch("ROLLBACK");
                    }
                    return Attempt::RequestFailed(i);
                }
                if conn.is_autocommit() {
                    // SQLite rolled the transaction back by itself (after an I/O error, say).
                    return Attempt::Failed(EmbeddedError::Sqlite {
                        path: path.to_owned(),
                        message: "the transaction was rolled back by SQLite".into(),
                    });
                }
                continue;
            }
            let mark = tx.hooks.borrow().len();
            if let Err(e) = step("SAVEPOINT request") {
                return fail(&e);
            }
            let undone = if r.run(&tx) {
                step("RELEASE request")
            } else {
                failed[i] = true;
                tx.hooks.borrow_mut().truncate(mark);
                step("ROLLBACK TO request").and_then(|()| step("RELEASE request"))
            };
            if let Err(e) = undone {
                return fail(&e);
            }
        }
        if let Err(e) = tx.flush_counters().and_then(|()| conn.execute_batch("COMMIT")) {
            return fail(&e);
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        for hook in tx.hooks.take() {
            hook();
        }
        Attempt::Committed { changes: conn.total_changes() != changes_before }
    }
}

/// How one try at committing a batch ended.
enum Attempt {
    /// Committed; the hooks ran. `changes`: whether it changed any row.
    Committed {
        /// Whether the transaction changed any row.
        changes: bool,
    },
    /// This request failed (without savepoints); the transaction was rolled back.
    RequestFailed(usize),
    /// The transaction failed as a whole and was rolled back.
    Failed(EmbeddedError),
}

/// Copies committed WAL pages into the database file on its own connection, so the writer
/// thread never waits for the fsyncs a checkpoint makes.
struct Checkpointer {
    conn: Connection,
    /// Closed when the store is dropped.
    stopped: mpsc::Receiver<()>,
    commits: Arc<AtomicU64>,
}

impl Checkpointer {
    fn run(self) {
        let mut seen = 0;
        while let Err(RecvTimeoutError::Timeout) = self.stopped.recv_timeout(CHECKPOINT_INTERVAL) {
            let commits = self.commits.load(Ordering::Relaxed);
            if commits == seen {
                continue;
            }
            seen = commits;
            // PASSIVE never blocks the writer; what it cannot copy now it copies next time.
            if let Err(e) = self.conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::debug!(error = %e, "embedded store checkpoint failed");
            }
        }
    }
}

/// Purges expired KV entries and idempotency keys (they are already invisible; this frees
/// the space).
fn purge_request() -> Box<dyn Request> {
    let (reply, _rx) = oneshot::channel();
    Box::new(Call {
        f: |tx: &Tx<'_>| -> Result<(), OpError> {
            let now = Timestamp::now().as_millis() as i64;
            let conn = tx.conn();
            conn.prepare_cached(
                "DELETE FROM kv WHERE key IN
                     (SELECT key FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)",
            )?
            .execute(params![now, PURGE_LIMIT])?;
            conn.prepare_cached(
                "DELETE FROM queue_idempotency WHERE (queue, key) IN
                     (SELECT queue, key FROM queue_idempotency
                      WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)",
            )?
            .execute(params![now, PURGE_LIMIT])?;
            Ok(())
        },
        result: None,
        reply,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn migrations_are_idempotent_and_counters_persist() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = EmbeddedDb::open(dir.path()).unwrap();
            let v = db.call(|tx| tx.next(Counter::KvVersion)).await.unwrap();
            assert_eq!(v, 1);
        }
        let db = EmbeddedDb::open(dir.path()).unwrap();
        let v = db.call(|tx| tx.next(Counter::KvVersion)).await.unwrap();
        assert_eq!(v, 2);
        let version: i64 =
            db.call(|tx| Ok(tx.conn().query_row("PRAGMA user_version", [], |r| r.get(0))?)).await.unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_request_does_not_undo_its_batch_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(EmbeddedDb::open(dir.path()).unwrap());
        // Hold the writer busy so the requests below pile up and share one transaction.
        let gate = {
            let db = Arc::clone(&db);
            tokio::spawn(async move {
                db.call(|_| {
                    std::thread::sleep(Duration::from_millis(200));
                    Ok(())
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let hooks = Arc::new(AtomicU64::new(0));
        let mut calls = Vec::new();
        for i in 0..20i64 {
            let db = Arc::clone(&db);
            let hooks = Arc::clone(&hooks);
            calls.push(tokio::spawn(async move {
                db.call(move |tx| {
                    tx.conn().execute(
                        "INSERT INTO kv (key, value, versionstamp) VALUES (?1, x'00', 0)",
                        params![vec![i as u8]],
                    )?;
                    let hooks = Arc::clone(&hooks);
                    tx.after_commit(move || {
                        hooks.fetch_add(1, Ordering::Relaxed);
                    });
                    if i % 2 == 1 {
                        return Err(OpError::Corrupt("odd".into()));
                    }
                    Ok(())
                })
                .await
            }));
        }
        for (i, c) in calls.into_iter().enumerate() {
            assert_eq!(c.await.unwrap().is_ok(), i % 2 == 0);
        }
        gate.await.unwrap().unwrap();
        let n: i64 = db.call(|tx| Ok(tx.conn().query_row("SELECT count(*) FROM kv", [], |r| r.get(0))?)).await.unwrap();
        assert_eq!(n, 10);
        // Only the committed requests' hooks ran, once each, though the batch ran twice.
        assert_eq!(hooks.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn a_full_disk_is_named_with_the_file() {
        let e = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None);
        let err = sqlite_error(Path::new("/data/netscript.db"), &e);
        assert!(matches!(err, EmbeddedError::DiskFull { .. }), "{err:?}");
        assert!(err.is_storage_refusal());
        let text = err.to_string();
        assert!(text.starts_with("the disk holding the embedded store `/data/netscript.db` is full"), "{text}");
    }

    #[test]
    fn an_io_error_on_a_writable_directory_stays_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let e = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR), None);
        let err = sqlite_error(&path, &e);
        assert!(matches!(err, EmbeddedError::Sqlite { .. }), "{err:?}");
        // The probe left nothing behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn claim_query_uses_the_ready_index() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("x.db")).unwrap();
        assert!(migrate(&conn).is_ok());
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", crate::queue::embedded::SCAN_READY))
            .unwrap()
            .query_map(params!["q", "t"], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("queue_ready"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
}
