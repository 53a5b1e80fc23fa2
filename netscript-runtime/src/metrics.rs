//! Metrics in the Prometheus text format (`GET /metrics`): what this process's workers did,
//! per topic, and the queue's depth per topic (read from the queue at each scrape, so it is
//! the whole cluster's).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `netscript_jobs_started_total` | counter | `topic` |
//! | `netscript_jobs_succeeded_total` | counter | `topic` |
//! | `netscript_jobs_failed_total` | counter: failed attempts, retried or not | `topic` |
//! | `netscript_jobs_retried_total` | counter: failed attempts that will run again | `topic` |
//! | `netscript_jobs_dead_total` | counter: executions moved to the dead-letter store | `topic` |
//! | `netscript_jobs_cancelled_total` | counter | `topic` |
//! | `netscript_job_duration_seconds` | histogram: one attempt's run time | `topic` |
//! | `netscript_job_pickup_latency_seconds` | histogram: enqueue to first attempt's start | `topic` |
//! | `netscript_active_runners` | gauge: attempts running now | |
//! | `netscript_queue_depth` | gauge | `topic`, `state` (`ready`, `delayed`, `leased`, `dead`) |
//!
//! Counters are atomics per topic; recording an attempt costs a few uncontended atomic adds
//! and a read-locked map lookup.
//!
//! Throughput per topic ([`Metrics::throughput`], shown by `GET /api/v1/workers/topics` and
//! the CLI's `topics`): executions this process's workers finished (succeeded, dead or
//! cancelled) in the last [`THROUGHPUT_WINDOW_SECS`] seconds, counted in one-second slots.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::queue::QueueStats;

/// Upper bounds of the histogram buckets, in seconds (`+Inf` is implied).
const BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// A counter family: name, help text, and the counter of a topic.
type CounterFamily = (&'static str, &'static str, fn(&TopicMetrics) -> &AtomicU64);
/// A histogram family: name, help text, and the histogram of a topic.
type HistogramFamily = (&'static str, &'static str, fn(&TopicMetrics) -> &Histogram);

/// A Prometheus histogram over fixed buckets (0.5 ms to 60 s, then `+Inf`), lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let bucket = BUCKETS.iter().position(|&bound| seconds <= bound).unwrap_or(BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(value.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = BUCKETS.get(i).map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// The window of [`Metrics::throughput`], in seconds.
pub const THROUGHPUT_WINDOW_SECS: u64 = 60;

/// Events per second over the last [`THROUGHPUT_WINDOW_SECS`] seconds, lock-free: one slot per
/// second of the window, each an atomic holding the second it counts (high 32 bits) and its
/// count (low 32 bits); a slot is reset by the first event of a new second.
#[derive(Debug)]
pub struct Rate {
    slots: [AtomicU64; THROUGHPUT_WINDOW_SECS as usize],
}

impl Default for Rate {
    fn default() -> Self {
        Self { slots: std::array::from_fn(|_| AtomicU64::new(0)) }
    }
}

impl Rate {
    /// Counts one event at `now` (Unix seconds).
    pub fn record(&self, now: u64) {
        let slot = &self.slots[(now % THROUGHPUT_WINDOW_SECS) as usize];
        let second = now & 0xffff_ffff;
        // `fetch_update` retries only when another event of the same slot raced this one.
        let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(if v >> 32 == second { v + 1 } else { (second << 32) | 1 })
        });
    }

    /// Events in the window that ends with second `now` (Unix seconds), `now` included.
    pub fn count(&self, now: u64) -> u64 {
        let oldest = now.saturating_sub(THROUGHPUT_WINDOW_SECS - 1) & 0xffff_ffff;
        let now = now & 0xffff_ffff;
        self.slots
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .filter(|v| (oldest..=now).contains(&(v >> 32)))
            .map(|v| v & 0xffff_ffff)
            .sum()
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The counters and histograms of one topic.
#[derive(Debug, Default)]
pub struct TopicMetrics {
    /// Attempts started.
    pub started: AtomicU64,
    /// Executions that succeeded.
    pub succeeded: AtomicU64,
    /// Attempts that failed.
    pub failed: AtomicU64,
    /// Failed attempts that will run again.
    pub retried: AtomicU64,
    /// Executions dead-lettered.
    pub dead: AtomicU64,
    /// Executions cancelled while running.
    pub cancelled: AtomicU64,
    /// Run time of attempts.
    pub duration: Histogram,
    /// Enqueue to first start.
    pub pickup: Histogram,
    /// Executions finished (succeeded, dead or cancelled), per second.
    pub finished: Rate,
}

/// How an attempt ended, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptEnd {
    /// It succeeded.
    Succeeded,
    /// It failed and will run again.
    Retried,
    /// It failed for good.
    Dead,
    /// It was cancelled.
    Cancelled,
    /// It was given back or lost its lease: it ends elsewhere.
    Other,
}

/// This process's metrics. Cheap to share (`Arc`).
#[derive(Debug, Default)]
pub struct Metrics {
    topics: RwLock<HashMap<String, Arc<TopicMetrics>>>,
    active: AtomicI64,
}

impl Metrics {
    /// The metrics of `topic`, created on first use.
    pub fn topic(&self, topic: &str) -> Arc<TopicMetrics> {
        if let Some(m) = self.topics.read().unwrap_or_else(|e| e.into_inner()).get(topic) {
            return Arc::clone(m);
        }
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(topics.entry(topic.to_owned()).or_default())
    }

    /// An attempt started; `pickup` is the wait from enqueue for a first attempt.
    pub fn attempt_started(&self, topic: &TopicMetrics, pickup: Option<Duration>) {
        topic.started.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = pickup {
            topic.pickup.observe(p);
        }
    }

    /// An attempt ended after running `took`.
    pub fn attempt_ended(&self, topic: &TopicMetrics, took: Duration, end: AttemptEnd) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        topic.duration.observe(took);
        let counter = match end {
            AttemptEnd::Succeeded => &topic.succeeded,
            AttemptEnd::Retried => {
                topic.failed.fetch_add(1, Ordering::Relaxed);
                &topic.retried
            }
            AttemptEnd::Dead => {
                topic.failed.fetch_add(1, Ordering::Relaxed);
                &topic.dead
            }
            AttemptEnd::Cancelled => &topic.cancelled,
            AttemptEnd::Other => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if end != AttemptEnd::Retried {
            topic.finished.record(unix_seconds());
        }
    }

    /// Executions this process's workers finished per topic in the last
    /// [`THROUGHPUT_WINDOW_SECS`] seconds (topics with none are left out).
    pub fn throughput(&self) -> BTreeMap<String, u64> {
        let now = unix_seconds();
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(topic, m)| (topic.clone(), m.finished.count(now)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// The text exposition (format 0.0.4), with the queue's depth per topic.
    pub fn render(&self, depth: &BTreeMap<String, QueueStats>) -> String {
        let topics: BTreeMap<String, Arc<TopicMetrics>> = self
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        let mut out = String::with_capacity(4096);
        let counters: [CounterFamily; 6] = [
            ("netscript_jobs_started_total", "Attempts started.", |m| &m.started),
            ("netscript_jobs_succeeded_total", "Executions that succeeded.", |m| &m.succeeded),
            ("netscript_jobs_failed_total", "Attempts that failed, retried or not.", |m| &m.failed),
            ("netscript_jobs_retried_total", "Failed attempts that will run again.", |m| &m.retried),
            ("netscript_jobs_dead_total", "Executions moved to the dead-letter store.", |m| &m.dead),
            ("netscript_jobs_cancelled_total", "Executions cancelled while running.", |m| &m.cancelled),
        ];
        for (name, help, field) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (topic, m) in &topics {
                let _ = writeln!(out, "{name}{{topic=\"{}\"}} {}", escape(topic), field(m).load(Ordering::Relaxed));
            }
        }
        let histograms: [HistogramFamily; 2] = [
            ("netscript_job_duration_seconds", "Run time of one attempt.", |m| &m.duration),
            ("netscript_job_pickup_latency_seconds", "From enqueue to the first attempt's start.", |m| &m.pickup),
        ];
        for (name, help, field) in histograms {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (topic, m) in &topics {
                field(m).render(&mut out, name, &format!("topic=\"{}\"", escape(topic)));
            }
        }
        let _ = writeln!(out, "# HELP netscript_active_runners Attempts running in this process now.");
        let _ = writeln!(out, "# TYPE netscript_active_runners gauge");
        let _ = writeln!(out, "netscript_active_runners {}", self.active.load(Ordering::Relaxed).max(0));
        let _ = writeln!(out, "# HELP netscript_queue_depth Messages in the queue, by topic and state.");
        let _ = writeln!(out, "# TYPE netscript_queue_depth gauge");
        for (topic, s) in depth {
            for (state, n) in [("ready", s.ready), ("delayed", s.delayed), ("leased", s.leased), ("dead", s.dead)] {
                let _ = writeln!(out, "netscript_queue_depth{{topic=\"{}\",state=\"{state}\"}} {n}", escape(topic));
            }
        }
        out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_land_in_their_counters_and_buckets() {
        let metrics = Metrics::default();
        let t = metrics.topic("pay\"ments");
        metrics.attempt_started(&t, Some(Duration::from_millis(3)));
        metrics.attempt_ended(&t, Duration::from_millis(20), AttemptEnd::Retried);
        metrics.attempt_started(&t, None);
        metrics.attempt_ended(&t, Duration::from_millis(700), AttemptEnd::Succeeded);
        let text = metrics.render(&BTreeMap::new());
        assert!(text.contains("netscript_jobs_started_total{topic=\"pay\\\"ments\"} 2"), "{text}");
        assert!(text.contains("netscript_jobs_failed_total{topic=\"pay\\\"ments\"} 1"), "{text}");
        assert!(
            text.contains("netscript_job_duration_seconds_bucket{topic=\"pay\\\"ments\",le=\"0.025\"} 1"),
            "{text}"
        );
        assert!(text.contains("netscript_job_duration_seconds_bucket{topic=\"pay\\\"ments\",le=\"+Inf\"} 2"), "{text}");
        assert!(text.contains("netscript_job_pickup_latency_seconds_count{topic=\"pay\\\"ments\"} 1"), "{text}");
        assert!(text.contains("netscript_active_runners 0"), "{text}");
        // The retried attempt is not a finished execution; the success is.
        assert_eq!(metrics.throughput().get("pay\"ments"), Some(&1));
    }

    #[test]
    fn a_rate_counts_the_last_minute_only() {
        let rate = Rate::default();
        let start = 1_800_000_000;
        for second in start..start + 90 {
            for _ in 0..(second - start) % 3 {
                rate.record(second);
            }
        }
        let now = start + 89;
        let expected: u64 = (now - 59..=now).map(|s| (s - start) % 3).sum();
        assert_eq!(rate.count(now), expected);
        // A minute of silence later nothing is left; a slot reused by a new second restarts.
        assert_eq!(rate.count(now + 60), 0);
        rate.record(now + 61);
        assert_eq!(rate.count(now + 61), 1);
    }
}
