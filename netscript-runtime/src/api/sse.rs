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

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use std::collections::HashMap;

use axum::http::HeaderMap;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::ApiError;
use crate::runtime::Runtime;
use crate::store::{ExecutionFilter, ExecutionId, ExecutionRecord};
use crate::time::Timestamp;

#[derive(Debug, Deserialize)]
pub(super) struct SubscribeQuery {
    job: Option<String>,
    execution: Option<String>,
}

/// Most retained records a reconnecting subscriber's replay looks through.
const REPLAY_SCAN: usize = 10_000;

/// The part of an event id after the `/`: the record's `updatedAt` in milliseconds.
fn replay_from(headers: &HeaderMap) -> Option<u64> {
    let id = headers.get("last-event-id")?.to_str().ok()?;
    id.rsplit_once('/')?.1.parse().ok()
}

fn record_event(record: &ExecutionRecord) -> Event {
    Event::default()
        .event(record.status.as_str())
        .id(format!("{}/{}", record.id, record.updated_at.as_millis()))
        .json_data(record)
        .unwrap_or_else(|_| Event::default().comment("unserializable record"))
}

pub(super) async fn subscribe(
    State(rt): State<Runtime>,
    q: Result<Query<SubscribeQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(q) = q.map_err(super::routes::query_error)?;
    let execution: Option<ExecutionId> =
        q.execution.as_deref().map(str::parse).transpose().map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("execution is not an id: {e}"))
        })?;
    let q_job = q.job.clone();
    let job = q.job;
    let wanted = move |r: &ExecutionRecord| {
        execution.is_none_or(|id| id == r.id) && job.as_deref().is_none_or(|j| j == r.job_id)
    };
    // Subscribe before reading the replay, so nothing written in between is missed; what
    // both see is sent once (the live copy is skipped when the replay had it or newer).
    // A job's own feed wakes this stream only for that job's records.
    let feed = match &q_job {
        Some(job) => rt.store().subscribe_job(job),
        None => rt.store().subscribe(),
    };
    let mut replay: Vec<ExecutionRecord> = Vec::new();
    if let Some(after) = replay_from(&headers) {
        let filter = ExecutionFilter { limit: Some(REPLAY_SCAN), ..ExecutionFilter::default() };
        replay = rt.store().list(&filter).await?;
        replay.retain(|r| r.updated_at.as_millis() > after && wanted(r));
        replay.sort_by_key(|r| (r.updated_at, r.id));
    }
    let replayed: HashMap<ExecutionId, Timestamp> = replay.iter().map(|r| (r.id, r.updated_at)).collect();
    let replay = futures::stream::iter(replay.into_iter().map(|r| Ok(record_event(&r))));
    let stopping = rt.stopping().clone();
    let live = futures::stream::unfold(Some(feed), move |feed| {
        let stopping = stopping.clone();
        let replayed = replayed.clone();
        let wanted = wanted.clone();
        async move {
            let mut feed = feed?;
            loop {
                let next = tokio::select! {
                    // The server is shutting down: end the stream so it can drain.
                    () = stopping.cancelled() => return None,
                    next = feed.recv() => next,
                };
                match next {
                    Ok(record) => {
                        if !wanted(&record) || replayed.get(&record.id).is_some_and(|t| record.updated_at <= *t) {
                            continue;
                        }
                        return Some((Ok(record_event(&record)), Some(feed)));
                    }
                    Err(RecvError::Lagged(missed)) => {
                        let event = Event::default().event("lagged").data(format!(
                            "{{\"missed\":{missed},\"message\":\"this subscriber fell behind and is disconnected; \
                             reconnect with Last-Event-ID to catch up\"}}"
                        ));
                        return Some((Ok(event), None));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    });
    Ok(Sse::new(replay.chain(live)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
