//! Next-fire-time computation: nanoseconds per `CronSchedule::next_after` call, for typical
//! expressions in UTC and in a daylight-saving zone. The target is under 5 µs per call.
//!
//! ```text
//! cargo bench --bench cron
//! ```
//!
//! Each case walks forward from a fixed instant, feeding each answer back in (as a scheduler
//! does), so the search starts at a fire time and its length is the real gap to the next one.
//! The best of 5 rounds is reported, steadier than the mean on a shared machine.

#![allow(clippy::unwrap_used)] // benches: a failed unwrap is a failed run

use std::hint::black_box;
use std::time::Instant;

use netscript::cron::{CronSchedule, DateTime, Utc};

const EXPRESSIONS: &[&str] = &[
    "* * * * *",
    "*/15 * * * *",
    "0 * * * *",
    "30 2 * * *",
    "0 9 * * 1-5",
    "0 0 1 * *",
    "0 0 L * *",
    "0 0 13 * FRI",
    "*/10 * * * * *",
    "@yearly",
];

const ZONES: &[&str] = &["UTC", "America/New_York"];

fn main() {
    let start: DateTime<Utc> = "2025-01-01T00:00:00Z".parse().unwrap();
    // Yearly walks run far ahead: start over well before croner's year-5000 search limit.
    let wrap: DateTime<Utc> = "2400-01-01T00:00:00Z".parse().unwrap();
    println!("{:<18} {:<18} {:>12}", "expression", "timezone", "ns/call");
    let mut worst = 0.0f64;
    for zone in ZONES {
        for expression in EXPRESSIONS {
            let schedule = CronSchedule::parse(expression, zone).unwrap();
            // Calls per round: enough for ~tens of milliseconds.
            let calls = 20_000;
            let mut best = f64::INFINITY;
            for _ in 0..5 {
                let mut cursor = start;
                let began = Instant::now();
                for _ in 0..calls {
                    let next = black_box(schedule.next_after(black_box(cursor)).unwrap());
                    cursor = if next < wrap { next } else { start };
                }
                best = best.min(began.elapsed().as_nanos() as f64 / f64::from(calls));
            }
            worst = worst.max(best);
            println!("{expression:<18} {zone:<18} {best:>12.0}");
        }
    }
    println!("slowest: {worst:.0} ns/call (target: under 5000)");
}
