//! Cron expressions, timezones and next-fire-time computation for NetScript (re-exported as
//! `netscript::cron`; the `#[scheduled]` macro uses it to check expressions at compile time).
//!
//! This crate turns a cron expression and an IANA timezone into fire times: it parses and
//! validates expressions ([`parse_cron_expression`], [`is_valid_cron_expression`]), names
//! common ones ([`presets`]) and computes when a [`CronSchedule`] fires next
//! ([`CronSchedule::next_after`], [`CronSchedule::upcoming`]). It is not a scheduler: nothing
//! here waits, enqueues or remembers what already ran; the scheduler and `#[scheduled]` build
//! on it.
//!
//! ```
//! use netscript_cron::{CronSchedule, DateTime, Utc};
//!
//! let schedule = CronSchedule::parse("0 9 * * MON-FRI", "Europe/Berlin")?;
//! let after: DateTime<Utc> = "2025-01-03T12:00:00Z".parse().unwrap(); // a Friday
//! let next = schedule.next_after(after).unwrap();
//! assert_eq!(next.to_rfc3339(), "2025-01-06T08:00:00+00:00"); // Monday 09:00 in Berlin (UTC+1)
//! # Ok::<(), netscript_cron::CronError>(())
//! ```
//!
//! # Expressions
//!
//! Five fields, `minute hour day-of-month month day-of-week`, or six with a leading `second`:
//!
//! | field        | values                  | also                              |
//! |--------------|-------------------------|-----------------------------------|
//! | second       | 0-59 (optional field)   |                                   |
//! | minute       | 0-59                    |                                   |
//! | hour         | 0-23                    |                                   |
//! | day-of-month | 1-31                    | `L`, the last day of the month    |
//! | month        | 1-12, `JAN`-`DEC`       |                                   |
//! | day-of-week  | 0-7, `SUN`-`SAT`        | 0 and 7 are both Sunday           |
//!
//! Every field takes `*`, a value, a range `a-b`, a step `*/n` or `a-b/n`, and comma lists of
//! these. Names are case-insensitive. The macros `@yearly` (= `@annually`, `0 0 1 1 *`),
//! `@monthly` (`0 0 1 * *`), `@weekly` (`0 0 * * 0`), `@daily` (= `@midnight`, `0 0 * * *`) and
//! `@hourly` (`0 * * * *`) stand for the expressions shown.
//!
//! A day field is *unrestricted* only when it is exactly `*`. When both day fields are
//! restricted, a day that matches either of them fires (the POSIX/Vixie rule): `0 0 1 * MON`
//! fires on the 1st and on every Monday. When one is `*`, the other alone decides.
//!
//! Not accepted, so that an expression means the same everywhere: the extensions of some
//! implementations (`?`, `W`, `#`, `L` in day-of-week, a `+` prefix, a year field), a step on a
//! single value (`5/10`; write `5-59/10`), reversed ranges (`10-5`), and a day-of-month that no
//! selected month has (`0 0 30 2 *`) when day-of-week is `*`.
//!
//! # Timezones and daylight saving
//!
//! A [`CronSchedule`] reads its expression in local wall-clock time of its timezone (any IANA
//! name, UTC by default) and answers in UTC. Where the local clock jumps, the rule depends on
//! the kind of schedule:
//!
//! - A **fixed-time** schedule names one second, one minute and one hour (`30 2 * * *`,
//!   `@daily`, `0 0 9 * * MON-FRI`). It fires once per matching day whatever the clock does: a
//!   local time that does not exist (spring forward) fires once, at the first instant after
//!   the gap (02:30 in New York on the spring-forward day fires at 03:00 EDT); a local time that
//!   occurs twice (fall back) fires once, at its first occurrence.
//! - Every other schedule is an **interval** schedule (`*/15 * * * *`, `0 * * * *`,
//!   `30 1,2 * * *`). It fires at every real instant whose local wall-clock time matches: local
//!   times inside a spring-forward gap do not exist and so do not fire (the schedule resumes
//!   after the gap), and the repeated hour of a fall-back fires twice, once per occurrence, so
//!   an every-15-minutes job keeps its rhythm through the night.
//!
//! These are the rules of the `croner` crate, which computes the times; the module checks them
//! with tests in New York, Berlin, Sydney and Lord Howe Island (a 30-minute shift).

mod error;
mod expression;
pub mod presets;
mod schedule;

pub use chrono::{DateTime, Utc};
pub use chrono_tz::Tz;
pub use error::CronError;
pub use expression::{CronExpression, is_valid_cron_expression, parse_cron_expression};
pub use schedule::{CronSchedule, parse_timezone};

#[cfg(test)]
mod tests;
