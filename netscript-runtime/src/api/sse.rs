//! `GET /api/v1/workers/subscribe`: execution changes as server-sent events.
//!
//! Each event is one execution record as written, named after its status (`queued`,
//! `running`, `succeeded`, `retrying`, `dead`, ...), with the id `<execution id>/<updatedAt
//! in ms>`. Filters: `?job=<job id>` and `?execution=<execution id>`. A comment line every
//! 15 s keeps idle connections open through proxies.
//!
//! Slow clients never hold memory: the feed is a bounded broadcast channel, and a
//! subscriber that falls behind it gets a final `lagged` event and is disconnected; it
//! reconnects and re-reads what it needs from `/api/v1/workers/executions`. Streams end when
//! the server shuts down. Not yet: replaying missed events from `Last-Event-ID`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::ApiError;
use crate::runtime::Runtime;
use crate::store::ExecutionId;

#[derive(Debug, Deserialize)]
pub(super) struct SubscribeQuery {
    job: Option<String>,
    execution: Option<String>,
}

pub(super) async fn subscribe(
    State(rt): State<Runtime>,
    Query(q): Query<SubscribeQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let execution: Option<ExecutionId> =
        q.execution.as_deref().map(str::parse).transpose().map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("execution is not an id: {e}"))
        })?;
    let job = q.job;
    let feed = rt.store().subscribe();
    let stopping = rt.stopping().clone();
    let stream = futures::stream::unfold(Some(feed), move |feed| {
        let job = job.clone();
        let stopping = stopping.clone();
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
                        if execution.is_some_and(|id| id != record.id)
                            || job.as_deref().is_some_and(|j| j != record.job_id)
                        {
                            continue;
                        }
                        let event = Event::default()
                            .event(record.status.as_str())
                            .id(format!("{}/{}", record.id, record.updated_at.as_millis()))
                            .json_data(&*record)
                            .unwrap_or_else(|_| Event::default().comment("unserializable record"));
                        return Some((Ok(event), Some(feed)));
                    }
                    Err(RecvError::Lagged(missed)) => {
                        let event = Event::default().event("lagged").data(format!(
                            "{{\"missed\":{missed},\"message\":\"this subscriber fell behind and is disconnected; \
                             re-read /api/v1/workers/executions and subscribe again\"}}"
                        ));
                        return Some((Ok(event), None));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
