//! What `/metrics` costs on the hot path: nanoseconds to record one attempt (the topic's
//! lookup, `attempt_started`, `attempt_ended`), from one thread and from two at once on the
//! same topic (contended atomics), best of 5 rounds of 1,000,000 attempts.
//!
//! ```text
//! cargo bench --bench metrics
//! ```

#![allow(clippy::unwrap_used)] // benches: a failed unwrap is a failed run

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netscript::metrics::{AttemptEnd, Metrics};

const ATTEMPTS: u32 = 1_000_000;

fn record(metrics: &Metrics, topics: &[&str]) -> Duration {
    let start = Instant::now();
    for i in 0..ATTEMPTS {
        let topic = metrics.topic(black_box(topics[i as usize % topics.len()]));
        metrics.attempt_started(&topic, Some(Duration::from_micros(u64::from(i % 500))));
        metrics.attempt_ended(&topic, Duration::from_micros(u64::from(i % 3000)), AttemptEnd::Succeeded);
    }
    start.elapsed()
}

fn best(mut round: impl FnMut() -> Duration) -> f64 {
    (0..5).map(|_| round()).min().unwrap().as_nanos() as f64 / f64::from(ATTEMPTS)
}

fn main() {
    let topics = ["default", "payments", "reports", "emails"];
    let metrics = Metrics::default();
    let one = best(|| record(&metrics, &topics));
    let shared = Arc::new(Metrics::default());
    let two = best(|| {
        let start = Instant::now();
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let m = Arc::clone(&shared);
                std::thread::spawn(move || record(&m, &["default"]))
            })
            .collect();
        handles.into_iter().for_each(|h| {
            h.join().unwrap();
        });
        start.elapsed() / 2
    });
    println!("metrics: {one:.1} ns per attempt recorded (one thread, 4 topics)");
    println!("metrics: {two:.1} ns per attempt recorded (two threads on one topic, per attempt of each)");
}
