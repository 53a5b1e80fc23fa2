//! An in-process key-value store: exact, fast, not durable. For tests and benchmarks.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{AtomicWrite, Entry, Key, KeyRange, Kv, KvError, KvEvent, KvWatch, ListOptions, Mutation, Versionstamp};
use crate::time::Timestamp;

/// Capacity of the change channel behind [`Kv::watch`]; a watcher further behind than this
/// gets [`WatchError::Lagged`](super::WatchError::Lagged).
pub const WATCH_CAPACITY: usize = 4096;

struct State {
    entries: BTreeMap<Key, Stored>,
    version: u64,
}

/// An entry without its key, which the map holds.
#[derive(Clone)]
struct Stored {
    value: Vec<u8>,
    versionstamp: Versionstamp,
    expires_at: Option<Timestamp>,
}

impl Stored {
    fn entry(&self, key: &Key) -> Entry {
        Entry {
            key: key.clone(),
            value: self.value.clone(),
            versionstamp: self.versionstamp,
            expires_at: self.expires_at,
        }
    }
}

/// The in-memory store.
pub struct MemoryKv {
    state: Mutex<State>,
    events: broadcast::Sender<(Vec<u8>, KvEvent)>,
}

impl Default for MemoryKv {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryKv {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State { entries: BTreeMap::new(), version: 0 }),
            events: broadcast::channel(WATCH_CAPACITY).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Writes either fully apply or return before touching the map, so a poisoned lock
        // still guards consistent data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn live(entry: &Stored, now: Timestamp) -> bool {
    entry.expires_at.is_none_or(|t| t > now)
}

/// The first encoded key after every key that starts with `prefix`, or `None` when no such
/// key exists (the prefix is all `0xff`).
#[async_trait]
impl Kv for MemoryKv {
    fn provider(&self) -> &'static str {
        "memory"
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>, KvError> {
        let now = Timestamp::now();
        let st = self.lock();
        Ok(keys.iter().map(|k| st.entries.get(k).filter(|e| live(e, now)).map(|e| e.entry(k))).collect())
    }

    async fn atomic(&self, write: AtomicWrite) -> Result<Option<Versionstamp>, KvError> {
        let now = Timestamp::now();
        // Copies for watchers only when someone watches: the copy is most of a write's cost.
        let watched = self.events.receiver_count() > 0;
        let mut events = Vec::with_capacity(if watched { write.mutations.len() } else { 0 });
        let version = {
            let mut st = self.lock();
            for check in &write.checks {
                let current = st.entries.get(&check.key).filter(|e| live(e, now)).map(|e| e.versionstamp);
                if current != check.versionstamp {
                    return Ok(None);
                }
            }
            st.version += 1;
            let version = Versionstamp(st.version);
            for m in write.mutations {
                match m {
                    Mutation::Set { key, value, ttl } => {
                        let stored = Stored { value, versionstamp: version, expires_at: ttl.map(|t| now.plus(t)) };
                        if watched {
                            events.push((key.encode(), KvEvent::Set(stored.entry(&key))));
                        }
                        st.entries.insert(key, stored);
                    }
                    Mutation::Delete { key } => {
                        if st.entries.remove(&key).is_some() && watched {
                            events.push((key.encode(), KvEvent::Deleted(key)));
                        }
                    }
                }
            }
            version
        };
        for e in events {
            // No receiver is fine: nobody is watching.
            let _ = self.events.send(e);
        }
        Ok(Some(version))
    }

    async fn list(&self, options: ListOptions) -> Result<Vec<Entry>, KvError> {
        let now = Timestamp::now();
        let Some(KeyRange { lower, upper }) = options.key_range() else { return Ok(Vec::new()) };
        let (lower, upper) = (Bound::Excluded(lower), upper.map_or(Bound::Unbounded, Bound::Excluded));
        let st = self.lock();
        let (lower, upper) = (lower.as_ref().map(Vec::as_slice), upper.as_ref().map(Vec::as_slice));
        let range = st.entries.range::<[u8], _>((lower, upper));
        let keep = |(k, e): (&Key, &Stored)| live(e, now).then(|| e.entry(k));
        Ok(if options.reverse {
            range.rev().filter_map(keep).take(options.limit).collect()
        } else {
            range.filter_map(keep).take(options.limit).collect()
        })
    }

    fn watch(&self, prefix: &Key) -> KvWatch {
        KvWatch::new(prefix, self.events.subscribe())
    }
}
