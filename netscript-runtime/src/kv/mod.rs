//! The key-value contract: typed tuple keys, byte values, per-key TTL, atomic check-and-set
//! on versionstamps, and list and watch by key prefix.
//!
//! A public API in its own right, shaped like Deno KV: keys are tuples of typed parts
//! (`("executions", id)`), encoded so that byte order is tuple order and an encoded prefix
//! is a byte prefix. Every write gets a [`Versionstamp`] that grows across the store;
//! [`AtomicWrite`] commits only if each checked key still has the versionstamp the caller
//! read (or is still absent).
//!
//! Backends: [`memory`] and `embedded` (SQLite; feature `embedded`).

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::time::Timestamp;

#[cfg(feature = "embedded")]
pub mod embedded;
mod key;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;

pub use key::{IntoKeyPart, Key, KeyDecodeError, KeyPart};

/// Identifies one committed write; larger is later. Shown as 20 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Versionstamp(pub u64);

impl std::fmt::Display for Versionstamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:020x}", self.0)
    }
}

impl std::fmt::Debug for Versionstamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A stored value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its key.
    pub key: Key,
    /// Its value.
    pub value: Vec<u8>,
    /// The write that stored it.
    pub versionstamp: Versionstamp,
    /// When it stops being visible, if it has a TTL.
    pub expires_at: Option<Timestamp>,
}

/// One change inside an [`AtomicWrite`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Store `value` at `key`, optionally expiring after `ttl`.
    Set {
        /// The key.
        key: Key,
        /// The value.
        value: Vec<u8>,
        /// Time to live.
        ttl: Option<Duration>,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: Key,
    },
}

impl Mutation {
    /// The key this mutation touches.
    pub fn key(&self) -> &Key {
        match self {
            Mutation::Set { key, .. } | Mutation::Delete { key } => key,
        }
    }
}

/// A condition of an [`AtomicWrite`]: `key` has `versionstamp` (`None`: `key` is absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// The key.
    pub key: Key,
    /// The versionstamp it must have, or `None` for "absent".
    pub versionstamp: Option<Versionstamp>,
}

/// Checks and mutations committed all together or not at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AtomicWrite {
    /// All must hold for the write to commit.
    pub checks: Vec<Check>,
    /// Applied in order when the checks hold.
    pub mutations: Vec<Mutation>,
}

impl AtomicWrite {
    /// An empty write.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check.
    pub fn check(mut self, key: Key, versionstamp: Option<Versionstamp>) -> Self {
        self.checks.push(Check { key, versionstamp });
        self
    }

    /// Adds a set.
    pub fn set(mut self, key: Key, value: impl Into<Vec<u8>>) -> Self {
        self.mutations.push(Mutation::Set { key, value: value.into(), ttl: None });
        self
    }

    /// Adds a set with a time to live.
    pub fn set_with_ttl(mut self, key: Key, value: impl Into<Vec<u8>>, ttl: Duration) -> Self {
        self.mutations.push(Mutation::Set { key, value: value.into(), ttl: Some(ttl) });
        self
    }

    /// Adds a delete.
    pub fn delete(mut self, key: Key) -> Self {
        self.mutations.push(Mutation::Delete { key });
        self
    }
}

/// What to list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListOptions {
    /// Keys starting with this prefix (the prefix itself excluded).
    pub prefix: Key,
    /// Resume after this key (in the listing's direction).
    pub cursor: Option<Key>,
    /// At most this many.
    pub limit: usize,
    /// Descending key order.
    pub reverse: bool,
}

/// The range of encoded keys a listing covers, both ends exclusive (`upper: None` is unbounded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    /// Keys above this.
    pub lower: Vec<u8>,
    /// Keys below this, if bounded.
    pub upper: Option<Vec<u8>>,
}

/// The smallest byte string above every string that starts with `prefix`; `None` when there is
/// none (the prefix is all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl ListOptions {
    /// The encoded keys this listing covers: above the prefix (which is itself not listed) and
    /// below its end, narrowed by the cursor on the side the listing continues from (never
    /// widened). `None` when the range is empty or the limit is 0.
    pub fn key_range(&self) -> Option<KeyRange> {
        if self.limit == 0 {
            return None;
        }
        let prefix = self.prefix.encode();
        let mut upper = prefix_end(&prefix);
        let mut lower = prefix;
        if let Some(cursor) = &self.cursor {
            let c = cursor.encode();
            if self.reverse {
                if upper.as_ref().is_none_or(|u| c < *u) {
                    upper = Some(c);
                }
            } else if c > lower {
                lower = c;
            }
        }
        if upper.as_ref().is_some_and(|u| *u <= lower) {
            return None;
        }
        Some(KeyRange { lower, upper })
    }

    /// Every key under `prefix`, ascending, at most 1,000.
    pub fn prefix(prefix: Key) -> Self {
        Self { prefix, cursor: None, limit: 1000, reverse: false }
    }

    /// Sets the limit.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Descending order.
    pub fn reverse(mut self) -> Self {
        self.reverse = true;
        self
    }

    /// Resume after `key`.
    pub fn after(mut self, key: Key) -> Self {
        self.cursor = Some(key);
        self
    }
}

/// A change seen by [`Kv::watch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvEvent {
    /// A key was set.
    Set(Entry),
    /// A key was deleted.
    Deleted(Key),
}

impl KvEvent {
    /// The key that changed.
    pub fn key(&self) -> &Key {
        match self {
            KvEvent::Set(e) => &e.key,
            KvEvent::Deleted(k) => k,
        }
    }
}

/// A stream of changes under a prefix, from [`Kv::watch`].
pub struct KvWatch {
    prefix: Vec<u8>,
    rx: broadcast::Receiver<(Vec<u8>, KvEvent)>,
}

/// Why a watch yielded no event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WatchError {
    /// The watcher fell behind and `0` events were dropped; re-read what you need.
    #[error("watcher fell behind; {0} changes were skipped")]
    Lagged(u64),
    /// The store was closed.
    #[error("store closed")]
    Closed,
}

impl KvWatch {
    /// Watches `rx` for keys under the encoded `prefix`.
    pub fn new(prefix: &Key, rx: broadcast::Receiver<(Vec<u8>, KvEvent)>) -> Self {
        Self { prefix: prefix.encode(), rx }
    }

    /// The next change under the prefix.
    pub async fn next(&mut self) -> Result<KvEvent, WatchError> {
        loop {
            match self.rx.recv().await {
                Ok((key, event)) if key.starts_with(&self.prefix) => return Ok(event),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => return Err(WatchError::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return Err(WatchError::Closed),
            }
        }
    }
}

/// A key-value error.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The backend could not be reached or failed.
    #[error("kv backend `{backend}`: {message}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What went wrong.
        message: String,
    },
    /// Stored data could not be read.
    #[error("kv backend `{backend}`: corrupt data: {message}")]
    Corrupt {
        /// Which backend.
        backend: &'static str,
        /// What was wrong.
        message: String,
    },
}

/// The key-value contract. See the [module docs](self).
#[async_trait]
pub trait Kv: Send + Sync + 'static {
    /// The backend's name.
    fn provider(&self) -> &'static str;

    /// The entries at `keys`, in order; `None` where absent or expired.
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>, KvError>;

    /// Commits `write` if every check holds: `Some(versionstamp)` of the commit, or `None`
    /// when a check failed (nothing was written).
    async fn atomic(&self, write: AtomicWrite) -> Result<Option<Versionstamp>, KvError>;

    /// Commits many independent writes in order, each all-or-nothing on its own checks, as
    /// `atomic` would one after another (a later write sees the earlier ones); one result per
    /// write. Backends override it to make the batch one round trip or one transaction; the
    /// default calls `atomic` for each in turn.
    async fn atomic_many(&self, writes: Vec<AtomicWrite>) -> Result<Vec<Option<Versionstamp>>, KvError> {
        let mut out = Vec::with_capacity(writes.len());
        for write in writes {
            out.push(self.atomic(write).await?);
        }
        Ok(out)
    }

    /// Entries under a prefix, in key order.
    async fn list(&self, options: ListOptions) -> Result<Vec<Entry>, KvError>;

    /// Changes under `prefix` from now on.
    fn watch(&self, prefix: &Key) -> KvWatch;

    /// The entry at `key`.
    async fn get(&self, key: &Key) -> Result<Option<Entry>, KvError> {
        let mut out = self.get_many(std::slice::from_ref(key)).await?;
        Ok(out.pop().flatten())
    }

    /// Stores `value` at `key`.
    async fn set(&self, key: Key, value: Vec<u8>) -> Result<Versionstamp, KvError> {
        let v = self.atomic(AtomicWrite::new().set(key, value)).await?;
        v.ok_or_else(|| KvError::Backend { backend: self.provider(), message: "unconditional write refused".into() })
    }

    /// Stores `value` at `key` for `ttl`.
    async fn set_with_ttl(&self, key: Key, value: Vec<u8>, ttl: Duration) -> Result<Versionstamp, KvError> {
        let v = self.atomic(AtomicWrite::new().set_with_ttl(key, value, ttl)).await?;
        v.ok_or_else(|| KvError::Backend { backend: self.provider(), message: "unconditional write refused".into() })
    }

    /// Removes `key`.
    async fn delete(&self, key: Key) -> Result<(), KvError> {
        self.atomic(AtomicWrite::new().delete(key)).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_carries() {
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }

    #[test]
    fn a_cursor_narrows_the_range_on_its_side_and_never_widens_it() {
        let prefix = Key::from(("a",));
        let (p, end) = (prefix.encode(), prefix_end(&prefix.encode()));
        let all = ListOptions::prefix(prefix.clone());
        assert_eq!(all.key_range(), Some(KeyRange { lower: p.clone(), upper: end.clone() }));
        let inside = Key::from(("a", "m"));
        let forward = ListOptions { cursor: Some(inside.clone()), ..all.clone() };
        assert_eq!(forward.key_range(), Some(KeyRange { lower: inside.encode(), upper: end.clone() }));
        let backward = ListOptions { cursor: Some(inside.clone()), ..all.clone() }.reverse();
        assert_eq!(backward.key_range(), Some(KeyRange { lower: p.clone(), upper: Some(inside.encode()) }));
        // A cursor outside the prefix does not widen it; one past the end empties it.
        let before = ListOptions { cursor: Some(Key::from(("0",))), ..all.clone() };
        assert_eq!(before.key_range(), all.key_range());
        let past = ListOptions { cursor: Some(Key::from(("z",))), ..all.clone() };
        assert_eq!(past.key_range(), None);
        assert_eq!(all.clone().limit(0).key_range(), None);
    }
}
