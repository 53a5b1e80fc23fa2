//! `GET /api/v1/workers/subscribe`: execution changes as server-sent events.
//!
//! Each event is one execution record as written, named after its status (`queued`,
//! `running`, `succeeded`, `retrying`, `dead`, ...), with the id `<execution id>/<updatedAt
//! in ms>`. Filters: `?job=<job id>` and `?execution=<execution id>`. A comment line every
//! 15 s keeps idle connections open through proxies.
//!
//! A client that reconnects with `Last-Event-ID` first gets every retained record (among the
//! newest 10,000) updated after that event, oldest change first, then the live stream:
//! nothing still in the store is missed. Slow clients never hold memory: the feed is a
//! bounded broadcast channel, and a subscriber that falls behind it gets a final `lagged`
//! event and is disconnected; reconnecting with `Last-Event-ID` catches it up. Streams end
//! when the server shuts down.
//!
//! Many subscribers must not slow the workers. Each record is encoded to JSON once, whoever
//! listens ([`FeedRecord::json`]), and a subscriber sends every event that is waiting for it
//! in one body chunk (one write), up to [`MAX_BATCH`] events, rather than one write per
//! event.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::ApiError;
use crate::runtime::Runtime;
use crate::store::{ExecutionFilter, ExecutionId, ExecutionRecord, FeedRecord};
use crate::time::Timestamp;

#[derive(Debug, Deserialize)]
pub(super) struct SubscribeQuery {
    job: Option<String>,
    execution: Option<String>,
}

/// Most retained records a reconnecting subscriber's replay looks through.
const REPLAY_SCAN: usize = 10_000;

/// Most events sent in one body chunk.
pub const MAX_BATCH: usize = 256;

/// A comment line sent when a stream has been idle this long.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The part of an event id after the `/`: the record's `updatedAt` in milliseconds.
fn replay_from(headers: &HeaderMap) -> Option<u64> {
    let id = headers.get("last-event-id")?.to_str().ok()?;
    id.rsplit_once('/')?.1.parse().ok()
}

/// Appends one event: `event: <status>`, `id: <execution id>/<updatedAt ms>`, `data: <json>`.
/// The JSON is one line (serde_json escapes the line breaks inside strings).
fn push_event(out: &mut String, record: &ExecutionRecord, json: &str) {
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "event: {}\nid: {}/{}\ndata: {json}\n\n",
        record.status.as_str(),
        record.id,
        record.updated_at.as_millis()
    );
}

/// What one subscriber wants, and what its replay already sent.
struct Wanted {
    execution: Option<ExecutionId>,
    job: Option<String>,
    replayed: HashMap<ExecutionId, Timestamp>,
}

impl Wanted {
    fn matches(&self, r: &ExecutionRecord) -> bool {
        self.execution.is_none_or(|id| id == r.id) && self.job.as_deref().is_none_or(|j| j == r.job_id)
    }

    /// Wanted, and newer than what the replay sent of it.
    fn live(&self, r: &FeedRecord) -> bool {
        self.matches(r) && self.replayed.get(&r.id).is_none_or(|t| r.updated_at > *t)
    }
}

/// A subscriber's live stream: the next chunk of events, or `None` when it ends.
struct Live {
    feed: tokio::sync::broadcast::Receiver<std::sync::Arc<FeedRecord>>,
    wanted: Wanted,
    stopping: tokio_util::sync::CancellationToken,
    /// Idle time before a keep-alive comment ([`KEEP_ALIVE`]).
    keep_alive: Duration,
}

impl Live {
    async fn next_chunk(&mut self) -> Option<(Bytes, bool)> {
        let mut out = String::new();
        let mut count = 0;
        // Wait for the first event (or the keep-alive, or the end). Records this subscriber
        // does not want do not count as activity: the keep-alive is due all the same.
        let idle_until = tokio::time::Instant::now() + self.keep_alive;
        loop {
            let next = tokio::select! {
                // The server is shutting down: end the stream so it can drain.
                () = self.stopping.cancelled() => return None,
                next = tokio::time::timeout_at(idle_until, self.feed.recv()) => next,
            };
            match next {
                Err(_idle) => return Some((Bytes::from_static(b": keep-alive\n\n"), true)),
                Ok(Ok(r)) if self.wanted.live(&r) => {
                    push_event(&mut out, &r, r.json());
                    count += 1;
                    break;
                }
                Ok(Ok(_)) => {}
                Ok(Err(RecvError::Lagged(missed))) => return Some((lagged(missed), false)),
                Ok(Err(RecvError::Closed)) => return None,
            }
        }
        // Then everything already waiting, in the same chunk.
        while count < MAX_BATCH {
            match self.feed.try_recv() {
                Ok(r) if self.wanted.live(&r) => {
                    push_event(&mut out, &r, r.json());
                    count += 1;
                }
                Ok(_) => {}
                Err(TryRecvError::Lagged(missed)) => {
                    out.push_str(std::str::from_utf8(&lagged(missed)).unwrap_or_default());
                    return Some((Bytes::from(out), false));
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        Some((Bytes::from(out), true))
    }
}

/// The last event of a subscriber that fell behind the feed.
fn lagged(missed: u64) -> Bytes {
    Bytes::from(format!(
        "event: lagged\ndata: {{\"missed\":{missed},\"message\":\"this subscriber fell behind and is disconnected; \
         reconnect with Last-Event-ID to catch up\"}}\n\n"
    ))
}

pub(super) async fn subscribe(
    State(rt): State<Runtime>,
    q: Result<Query<SubscribeQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(super::routes::query_error)?;
    let execution: Option<ExecutionId> =
        q.execution.as_deref().map(str::parse).transpose().map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("execution is not an id: {e}"))
        })?;
    // Subscribe before reading the replay, so nothing written in between is missed; what
    // both see is sent once (the live copy is skipped when the replay had it or newer).
    // A job's own feed wakes this stream only for that job's records.
    let feed = match &q.job {
        Some(job) => rt.store().subscribe_job(job),
        None => rt.store().subscribe(),
    };
    let mut wanted = Wanted { execution, job: q.job, replayed: HashMap::new() };
    let mut replay = String::new();
    if let Some(after) = replay_from(&headers) {
        let filter = ExecutionFilter { limit: Some(REPLAY_SCAN), ..ExecutionFilter::default() };
        let mut records = rt.store().list(&filter).await?;
        records.retain(|r| r.updated_at.as_millis() > after && wanted.matches(r));
        records.sort_by_key(|r| (r.updated_at, r.id));
        for r in &records {
            // A record is plain data: serializing it cannot fail.
            push_event(&mut replay, r, &serde_json::to_string(r).unwrap_or_default());
        }
        wanted.replayed = records.iter().map(|r| (r.id, r.updated_at)).collect();
    }
    let live = Live { feed, wanted, stopping: rt.stopping().clone(), keep_alive: KEEP_ALIVE };
    // The replay (possibly empty) goes first, then the live chunks until the stream ends.
    let first = futures::stream::iter((!replay.is_empty()).then(|| Ok::<_, Infallible>(Bytes::from(replay))));
    let rest = futures::stream::unfold(Some(live), |live| async move {
        let mut live = live?;
        let (chunk, more) = live.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), more.then_some(live)))
    });
    let body = Body::from_stream(futures::StreamExt::chain(first, rest));
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use std::sync::Arc;

    use super::*;
    use crate::kv::memory::MemoryKv;
    use crate::store::ExecutionStore;

    fn record(job: &str) -> ExecutionRecord {
        let payload = serde_json::json!({"line": "one\ntwo"});
        ExecutionRecord::queued(crate::queue::MessageId::new(), job, payload, 1, None, Timestamp::now())
    }

    fn live(store: &ExecutionStore, job: Option<&str>, keep_alive: Duration) -> Live {
        let wanted = Wanted { execution: None, job: job.map(str::to_owned), replayed: HashMap::new() };
        Live { feed: store.subscribe(), wanted, stopping: tokio_util::sync::CancellationToken::new(), keep_alive }
    }

    #[tokio::test]
    async fn what_is_waiting_goes_in_one_chunk_of_well_formed_events() {
        let store = ExecutionStore::new(Arc::new(MemoryKv::new()));
        let mut live = live(&store, Some("a"), Duration::from_secs(60));
        let records: Vec<ExecutionRecord> = (0..3).map(|_| record("a")).chain([record("b")]).collect();
        store.publish(records.clone());
        let (chunk, more) = live.next_chunk().await.unwrap();
        assert!(more);
        let text = std::str::from_utf8(&chunk).unwrap();
        let events: Vec<&str> = text.split_terminator("\n\n").collect();
        assert_eq!(events.len(), 3, "the three records of job a, none of b: {text}");
        for (event, r) in events.iter().zip(&records) {
            let lines: Vec<&str> = event.lines().collect();
            assert_eq!(lines.len(), 3, "event, id, one data line: {event}");
            assert_eq!(lines[0], "event: queued");
            assert_eq!(lines[1], format!("id: {}/{}", r.id, r.updated_at.as_millis()));
            let data: ExecutionRecord = serde_json::from_str(lines[2].strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data.id, r.id);
            assert_eq!(data.payload["line"], "one\ntwo");
        }
    }

    #[tokio::test]
    async fn an_idle_stream_gets_a_keep_alive_even_while_other_jobs_records_flow() {
        let store = ExecutionStore::new(Arc::new(MemoryKv::new()));
        let mut live = live(&store, Some("quiet"), Duration::from_millis(300));
        let busy = {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..40 {
                    store.publish(vec![record("busy")]);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let started = std::time::Instant::now();
        let (chunk, more) = live.next_chunk().await.unwrap();
        assert_eq!((&chunk[..], more), (&b": keep-alive\n\n"[..], true));
        assert!(started.elapsed() < Duration::from_millis(700), "{:?}", started.elapsed());
        busy.await.unwrap();
    }

    #[tokio::test]
    async fn a_subscriber_behind_the_feed_gets_lagged_and_its_stream_ends() {
        let store = ExecutionStore::new(Arc::new(MemoryKv::new()));
        let mut live = live(&store, None, Duration::from_secs(60));
        for _ in 0..crate::store::FEED_CAPACITY / 1024 + 1 {
            store.publish((0..1024).map(|_| record("a")).collect());
        }
        let (chunk, more) = live.next_chunk().await.unwrap();
        assert!(!more);
        assert!(std::str::from_utf8(&chunk).unwrap().starts_with("event: lagged\ndata: {\"missed\":"));
    }
}
