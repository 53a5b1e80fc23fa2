//! `GET /metrics` scraped over a real socket after some work, and parsed with Prometheus's
//! own text parser (`prometheus_client`, Python; `scripts/test.sh` installs it).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use netscript::prelude::*;
use netscript::{EnqueueOptions, QueueProvider};
use serde_json::Value;

mod support;

/// Succeeds.
#[job(id = "fine", topic = "reports", retries = 0)]
async fn fine() -> JobResult<()> {
    Ok(())
}

/// Fails its first attempt.
#[job(id = "flaky", topic = "reports", retries = 1, backoff = "fixed(10ms)")]
async fn flaky(ctx: JobContext) -> JobResult<()> {
    if ctx.attempt() == 1 {
        return Err(JobError::retryable("not yet"));
    }
    Ok(())
}

/// Always fails for good.
#[job(id = "broken", topic = "billing", retries = 3)]
async fn broken() -> JobResult<()> {
    Err(JobError::fatal("card declined"))
}

/// Parses the exposition with `prometheus_client`: `(name, labels, value)` per sample.
fn parse(text: &str) -> Vec<(String, serde_json::Map<String, Value>, f64)> {
    let script = "import sys, json\nfrom prometheus_client.parser import text_string_to_metric_families\n\
                  for f in text_string_to_metric_families(sys.stdin.read()):\n    \
                  for s in f.samples: print(json.dumps([s.name, s.labels, s.value]))";
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics (pip install prometheus-client): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (name, labels, value): (String, serde_json::Map<String, Value>, f64) = serde_json::from_str(l).unwrap();
            (name, labels, value)
        })
        .collect()
}

fn sample(samples: &[(String, serde_json::Map<String, Value>, f64)], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).and_then(Value::as_str) == Some(*v)))
        .map(|(_, _, v)| *v)
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_attempts_per_topic_and_parse_as_prometheus_text() {
    let rt = Runtime::builder().ignore_env().provider(QueueProvider::Memory).build().await.unwrap();
    let (addr, tx, server) = support::http::serve(&rt, true).await;

    let mut ids = Vec::new();
    for job in ["fine", "fine", "flaky", "broken"] {
        ids.push(rt.enqueue_json(job, Value::Null, EnqueueOptions::default()).await.unwrap().execution_id);
    }
    // Something still waiting, for the depth gauge.
    rt.enqueue_json(
        "fine",
        Value::Null,
        EnqueueOptions { delay: Some(Duration::from_secs(600)), ..Default::default() },
    )
    .await
    .unwrap();
    for id in ids {
        let r = rt.wait_for(id, Duration::from_secs(10)).await.unwrap().unwrap();
        assert!(r.status.is_final(), "{r:?}");
    }

    let text = scrape(addr).await;
    let samples = parse(&text);
    let reports = [("topic", "reports")];
    let billing = [("topic", "billing")];
    assert_eq!(sample(&samples, "netscript_jobs_started_total", &reports), 4.0, "two fine, two attempts of flaky");
    assert_eq!(sample(&samples, "netscript_jobs_succeeded_total", &reports), 3.0);
    assert_eq!(sample(&samples, "netscript_jobs_retried_total", &reports), 1.0);
    assert_eq!(sample(&samples, "netscript_jobs_failed_total", &reports), 1.0);
    assert_eq!(sample(&samples, "netscript_jobs_dead_total", &billing), 1.0);
    assert_eq!(sample(&samples, "netscript_jobs_failed_total", &billing), 1.0);
    assert_eq!(sample(&samples, "netscript_job_duration_seconds_count", &reports), 4.0);
    assert_eq!(sample(&samples, "netscript_job_pickup_latency_seconds_count", &reports), 3.0, "first attempts only");
    assert_eq!(sample(&samples, "netscript_job_duration_seconds_bucket", &[("topic", "reports"), ("le", "+Inf")]), 4.0);
    assert_eq!(sample(&samples, "netscript_active_runners", &[]), 0.0);
    assert_eq!(sample(&samples, "netscript_queue_depth", &[("topic", "reports"), ("state", "delayed")]), 1.0);
    assert_eq!(sample(&samples, "netscript_queue_depth", &[("topic", "billing"), ("state", "dead")]), 1.0);

    tx.send(()).unwrap();
    server.await.unwrap();
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}
