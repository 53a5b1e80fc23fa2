//! `cron_parse`: the cron expression parser, and the fire times of what parses.
//!
//! Input: `<expression>\n<timezone>` as UTF-8, optionally followed by a NUL byte and raw bytes
//! that choose the instant to search from and how many fire times to ask for. Without the NUL
//! part the search starts at 2025-01-01T00:00:00Z; without the newline the timezone is UTC.
//!
//! Checked:
//! - `parse_cron_expression` never panics, on the whole text and on the expression line; it
//!   agrees with `is_valid_cron_expression` and `str::parse`; what parses keeps its trimmed
//!   source (`as_str`, `Display`) and parses again to an equal expression.
//! - `CronSchedule::parse` succeeds exactly when the expression and the timezone both do, and
//!   reports the expression's error first.
//! - On a parsed schedule, from any instant between the years 1 and 9999: `next_after` is
//!   strictly later, on a whole second, and exists when the instant is before the year 4900
//!   (the docs promise a fire at least every 8 years, up to the engine's limit of 5000);
//!   `upcoming(from, n)` (n <= 16) starts with `next_after(from)`, is strictly increasing,
//!   stops early only where `next_after` has no answer, and no fire time is skipped: from the
//!   middle of two consecutive fire times, the next one is the later of the two. The run's
//!   `-timeout` catches a search that does not end.

#![no_main]

use libfuzzer_sys::fuzz_target;
use netscript_cron::{
    CronError, CronExpression, CronSchedule, DateTime, Tz, Utc, is_valid_cron_expression, parse_cron_expression,
    parse_timezone,
};

/// Timezones with daylight saving, half-hour and 45-minute offsets, and a skipped day
/// (Pacific/Apia, 2011-12-30), used when the input's timezone does not parse.
const ZONES: [Tz; 10] = [
    Tz::UTC,
    Tz::America__New_York,
    Tz::Europe__Berlin,
    Tz::Australia__Sydney,
    Tz::Australia__Lord_Howe,
    Tz::Asia__Kathmandu,
    Tz::Pacific__Chatham,
    Tz::America__St_Johns,
    Tz::Pacific__Apia,
    Tz::Asia__Kolkata,
];

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
const FIRST_SECOND: i64 = -62_135_596_800;
const LAST_SECOND: i64 = 253_402_300_799;
/// 4900-01-01T00:00:00Z: before it, every valid schedule has a next fire time.
const ALWAYS_FIRES_BEFORE: i64 = 92_461_910_400;
/// 2025-01-01T00:00:00Z.
const DEFAULT_FROM: i64 = 1_735_689_600;

fuzz_target!(|data: &[u8]| {
    let (text, knobs) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else { return };

    // The whole text, newline and all, is an expression too: only the checks matter here.
    let _ = check_expression(text);

    let (expression, timezone) = text.split_once('\n').unwrap_or((text, "UTC"));
    let parsed = check_expression(expression);
    let zone = parse_timezone(timezone);
    match (CronSchedule::parse(expression, timezone), &parsed, &zone) {
        (Ok(schedule), Ok(e), Ok(tz)) => {
            assert_eq!((schedule.expression(), schedule.timezone()), (e, *tz));
            assert_eq!(schedule.to_string(), format!("{} ({})", e.as_str(), tz.name()));
        }
        (Err(error), Err(e), _) => assert_eq!(&error, e, "the expression's error comes first"),
        (Err(error), Ok(_), Err(z)) => assert_eq!(&error, z),
        (result, e, z) => panic!("CronSchedule::parse gave {result:?} for expression {e:?} and timezone {z:?}"),
    }

    let Ok(expression) = parsed else { return };
    let mut knobs = knobs.iter().copied();
    let mut byte = || knobs.next().unwrap_or(0);
    let tz = zone.unwrap_or(ZONES[usize::from(byte()) % ZONES.len()]);
    let bytes: [u8; 8] = std::array::from_fn(|_| byte());
    let from = if bytes == [0; 8] {
        DEFAULT_FROM
    } else {
        FIRST_SECOND + i64::from_le_bytes(bytes).rem_euclid(LAST_SECOND - FIRST_SECOND + 1)
    };
    let nanos = u32::from_le_bytes([byte(), byte(), byte(), byte()]) % 1_000_000_000;
    let count = usize::from(byte() % 16) + 1;
    let Some(from) = DateTime::<Utc>::from_timestamp(from, nanos) else {
        panic!("{from} s is within chrono's range");
    };
    check_fire_times(&CronSchedule::new(expression, tz), from, count);
});

/// Parses `text` every way there is and checks the ways agree.
fn check_expression(text: &str) -> Result<CronExpression, CronError> {
    let parsed = parse_cron_expression(text);
    assert_eq!(is_valid_cron_expression(text), parsed.is_ok());
    assert_eq!(text.parse::<CronExpression>(), parsed);
    if let Ok(expression) = &parsed {
        assert_eq!(expression.as_str(), text.trim());
        assert_eq!(expression.to_string(), text.trim());
        let again = parse_cron_expression(expression.as_str());
        assert_eq!(again.as_ref(), Ok(expression));
        if let Ok(again) = again {
            assert_eq!(again.has_seconds(), expression.has_seconds());
            assert_eq!(again.is_fixed_time(), expression.is_fixed_time());
        }
    }
    parsed
}

fn check_fire_times(schedule: &CronSchedule, from: DateTime<Utc>, count: usize) {
    let next = schedule.next_after(from);
    if from.timestamp() < ALWAYS_FIRES_BEFORE {
        assert!(next.is_some(), "`{schedule}` has no fire time after {from}");
    }
    let times = schedule.upcoming(from, count);
    assert!(times.len() <= count);
    assert_eq!(times.first().copied(), next, "upcoming starts with next_after");
    let mut previous = from;
    for &time in &times {
        assert!(time > previous, "`{schedule}`: {time} does not come after {previous}");
        assert_eq!(time.timestamp_subsec_nanos(), 0, "`{schedule}`: {time} is not on a whole second");
        let middle = previous + (time - previous) / 2;
        assert_eq!(
            schedule.next_after(middle),
            Some(time),
            "`{schedule}`: from {middle}, between {previous} and {time}, the next fire time is not {time}"
        );
        previous = time;
    }
    if times.len() < count {
        assert_eq!(schedule.next_after(previous), None, "`{schedule}`: upcoming stopped early after {previous}");
    }
}
