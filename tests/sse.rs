//! A subscriber that stops reading never slows the workers and is never buffered without
//! bound: the workers finish a burst far larger than the feed while it is stuck, and when it
//! reads again it finds a final `lagged` event, then the end of the stream.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use netscript::prelude::*;
use netscript::{ExecutionStatus, QueueProvider};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;

/// Does nothing.
#[job(id = "noop", retries = 0)]
async fn noop(n: u32) -> JobResult<u32> {
    Ok(n)
}

/// More than the feed holds (16,384 records): every job writes two (queued, succeeded).
const JOBS: u32 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_is_dropped_with_a_lagged_event_and_the_workers_go_on() {
    let rt = Runtime::builder().ignore_env().provider(QueueProvider::Memory).concurrency(4).build().await.unwrap();
    let (addr, tx, server) = support::http::serve(&rt, true).await;

    // Subscribe to everything, read the response head, then stop reading.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /api/v1/workers/subscribe HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 512];
    let n = stream.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..n]));

    // The burst runs to its end while the subscriber reads nothing.
    let mut last = None;
    for start in (0..JOBS).step_by(1000) {
        let batch: Vec<_> = (start..start + 1000).map(noop::enqueue).collect();
        last = rt.enqueue_many(batch).await.unwrap().pop().map(|r| r.execution_id);
    }
    let record = rt.wait_for(last.unwrap(), Duration::from_secs(60)).await.unwrap().unwrap();
    assert_eq!(record.status, ExecutionStatus::Succeeded);
    // The recorder's shards land their batches in their own time: wait for the last of them.
    let unfinished = || async {
        let mut n = 0;
        for status in [ExecutionStatus::Queued, ExecutionStatus::Running] {
            let filter =
                netscript::store::ExecutionFilter { limit: Some(1), status: Some(status), ..Default::default() };
            n += rt.store().list(&filter).await.unwrap().len();
        }
        n
    };
    let mut waited = 0;
    while unfinished().await > 0 {
        waited += 1;
        assert!(waited < 600, "jobs still unfinished after 60 s while the subscriber was stuck");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Reading again: what the socket held, then `lagged`, then the end.
    let mut seen = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut seen)).await;
    assert!(read.is_ok(), "the server closed the stream instead of buffering for the subscriber");
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("event: lagged"), "no lagged event in {} bytes", seen.len());
    let succeeded = text.matches("event: succeeded").count();
    assert!(succeeded < JOBS as usize, "the stream was cut short: {succeeded} of {JOBS} successes delivered");

    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap();
}
