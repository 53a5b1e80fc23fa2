//! The last fired tick of each schedule, kept in the key-value store under
//! `("schedules", id)` so that it survives restarts and is shared by every process.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::kv::{AtomicWrite, Key, Kv, KvError};

const PREFIX: &str = "schedules";

/// How often a contended record is re-read before giving up (another process keeps moving it).
const MAX_TRIES: usize = 8;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stored {
    /// The last tick fired, in milliseconds since the Unix epoch.
    last_tick_ms: i64,
}

pub(super) fn key(id: &str) -> Key {
    Key::from((PREFIX, id))
}

/// The last tick of `id` that some process fired, if any.
pub(super) async fn last_tick(kv: &dyn Kv, id: &str) -> Result<Option<DateTime<Utc>>, KvError> {
    let Some(entry) = kv.get(&key(id)).await? else { return Ok(None) };
    Ok(decode(&entry.value))
}

/// Records `tick` as fired, unless a later tick is already recorded (several processes fire the
/// same ticks, and a slow one must not move the record back).
pub(super) async fn record_tick(kv: &dyn Kv, id: &str, tick: DateTime<Utc>) -> Result<(), KvError> {
    let key = key(id);
    // Serializing a struct of one integer cannot fail.
    let value = serde_json::to_vec(&Stored { last_tick_ms: tick.timestamp_millis() }).unwrap_or_default();
    for _ in 0..MAX_TRIES {
        let current = kv.get(&key).await?;
        if current.as_ref().and_then(|e| decode(&e.value)).is_some_and(|last| last >= tick) {
            return Ok(());
        }
        let write =
            AtomicWrite::new().check(key.clone(), current.map(|e| e.versionstamp)).set(key.clone(), value.clone());
        if kv.atomic(write).await?.is_some() {
            return Ok(());
        }
    }
    tracing::warn!(schedule = id, "could not record the last fired tick: the record kept changing");
    Ok(())
}

fn decode(value: &[u8]) -> Option<DateTime<Utc>> {
    match serde_json::from_slice::<Stored>(value) {
        Ok(stored) => DateTime::from_timestamp_millis(stored.last_tick_ms),
        Err(e) => {
            tracing::warn!(error = %e, "unreadable schedule record: treated as never fired");
            None
        }
    }
}
