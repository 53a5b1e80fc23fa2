#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use super::*;

fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

/// The next `n` fire times of `expression` in `timezone` after `from`, as `…Z` strings.
fn upcoming(expression: &str, timezone: &str, from: &str, n: usize) -> Vec<String> {
    let schedule = CronSchedule::parse(expression, timezone).unwrap();
    schedule.upcoming(at(from), n).iter().map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()).collect()
}

fn field_error(expression: &str) -> (&'static str, String, &'static str) {
    match parse_cron_expression(expression) {
        Err(CronError::Field { field, value, reason }) => (field, value, reason),
        other => panic!("`{expression}`: expected a field error, got {other:?}"),
    }
}

// --- Grammar ---

#[test]
fn accepts_the_standard_grammar() {
    for expression in [
        "* * * * *",
        "0 0 * * *",
        "*/5 * * * *",
        "0-30/10 8-18 * * 1-5",
        "0 9 1,15,L * *",
        "0 0 * JAN-mar,Dec sun,Sat",
        "0 0 * * 0,7",
        "0 0 L 2 *",
        "30 0 0 * * *",
        "  0  0 * * *  ",
        "@yearly",
        "@ANNUALLY",
        "@monthly",
        "@weekly",
        "@daily",
        "@Midnight",
        "@hourly",
    ] {
        assert!(is_valid_cron_expression(expression), "`{expression}` should be valid");
    }
}

#[test]
fn field_errors_name_the_field_and_the_reason() {
    let expected = [
        ("0 25 * * *", ("hour", "25", "must be 0-23")),
        ("60 * * * *", ("minute", "60", "must be 0-59")),
        ("60 * * * * *", ("second", "60", "must be 0-59")),
        ("0 0 32 * *", ("day-of-month", "32", "must be 1-31 or L")),
        ("0 0 0 * *", ("day-of-month", "0", "must be 1-31 or L")),
        ("0 0 * 13 *", ("month", "13", "must be 1-12 or JAN-DEC")),
        ("0 0 * FOO *", ("month", "FOO", "must be 1-12 or JAN-DEC")),
        ("0 0 * * 8", ("day-of-week", "8", "must be 0-7 or SUN-SAT")),
        ("0 0 * * MONDAY", ("day-of-week", "MONDAY", "must be 0-7 or SUN-SAT")),
        ("x * * * *", ("minute", "x", "must be 0-59")),
        ("0 1,25 * * *", ("hour", "25", "must be 0-23")),
        ("*/0 * * * *", ("minute", "*/0", "has a step of 0: a step must be at least 1")),
        ("*/x * * * *", ("minute", "*/x", "has a step that is not a positive number")),
        ("*/ * * * *", ("minute", "*/", "has a step that is not a positive number")),
        ("*/61 * * * *", ("minute", "*/61", "has a step larger than the field's range")),
        ("5/10 * * * *", ("minute", "5/10", "has a step after a single value: write `*/n` or `a-b/n`")),
        ("0 10-5 * * *", ("hour", "10-5", "is a reversed range: the start must not be after the end")),
        ("0 1, * * *", ("hour", "1,", "has an empty list item")),
        ("0 0 L-5 * *", ("day-of-month", "L", "uses L inside a range or step: L stands alone")),
        ("0 0 30 2 *", ("day-of-month", "30", "never occurs in the selected months")),
        ("0 0 31 4,6,9,11 *", ("day-of-month", "31", "never occurs in the selected months")),
    ];
    for (expression, (field, value, reason)) in expected {
        assert_eq!(field_error(expression), (field, value.to_owned(), reason), "`{expression}`");
    }
    assert_eq!(parse_cron_expression("0 25 * * *").unwrap_err().to_string(), "invalid hour field: `25` must be 0-23");
}

#[test]
fn refuses_extensions_outside_the_contract() {
    for expression in
        ["0 0 15W * *", "0 0 LW * *", "0 0 * * 5#2", "0 0 * * 5L", "0 0 ? * MON", "0 0 1 * +MON", "0 0 1 1 * 2030"]
    {
        assert!(parse_cron_expression(expression).is_err(), "`{expression}` should be refused");
    }
}

#[test]
fn other_errors_are_clear() {
    assert_eq!(parse_cron_expression("  "), Err(CronError::Empty));
    assert_eq!(parse_cron_expression("* * *"), Err(CronError::FieldCount { expression: "* * *".into(), count: 3 }));
    assert_eq!(parse_cron_expression("@reboot"), Err(CronError::UnknownMacro { name: "@reboot".into() }));
    let error = CronSchedule::parse("* * * * *", "Mars/Olympus").unwrap_err();
    assert_eq!(
        error,
        CronError::Timezone { name: "Mars/Olympus".into(), reason: "not an IANA timezone name (e.g. Europe/Berlin)" }
    );
    assert!(error.to_string().contains("Mars/Olympus"));
    assert!(matches!(parse_timezone(""), Err(CronError::Timezone { reason: "the name is empty", .. })));
}

#[test]
fn garbage_never_panics() {
    for expression in [
        "-",
        "-1 * * * *",
        "1- * * * *",
        "*-* * * * *",
        "// * * * *",
        ",,, * * * *",
        "99999999999 * * * *",
        "*/99999999999 * * * *",
        "1-2-3 * * * *",
        "٣ * * * *",
        "@",
        "@@daily",
        "L * * * *",
        "* * * * L",
        "* * * L-L *",
        "\t\n",
        "* * * * * * * *",
    ] {
        assert!(!is_valid_cron_expression(expression), "`{expression}` should be invalid");
    }
}

#[test]
fn presets_are_valid() {
    for (name, expression) in presets::ALL {
        assert!(is_valid_cron_expression(expression), "{name} = `{expression}`");
    }
    assert_eq!(presets::EVERY_MINUTE, "* * * * *");
    assert_eq!(presets::WEEKDAYS_AT_NINE, "0 9 * * 1-5");
    // WEEKLY is Sunday midnight: 2025-01-05 is a Sunday.
    assert_eq!(upcoming(presets::WEEKLY, "UTC", "2025-01-01T00:00:00Z", 1), ["2025-01-05T00:00:00Z"]);
}

// --- Semantics (UTC) ---

#[test]
fn sunday_is_zero_and_seven_and_names_ignore_case() {
    let from = "2025-01-01T00:00:00Z"; // a Wednesday
    let sunday = upcoming("0 0 * * 0", "UTC", from, 2);
    assert_eq!(sunday, ["2025-01-05T00:00:00Z", "2025-01-12T00:00:00Z"]);
    assert_eq!(upcoming("0 0 * * 7", "UTC", from, 2), sunday);
    assert_eq!(upcoming("0 0 * * sUn", "UTC", from, 2), sunday);
    assert_eq!(upcoming("0 0 * jan *", "UTC", from, 1), ["2025-01-02T00:00:00Z"]);
}

#[test]
fn both_day_fields_restricted_fire_on_either() {
    // The 13th, and every Friday: 2025-06-06 is a Friday.
    assert_eq!(
        upcoming("0 0 13 * FRI", "UTC", "2025-06-01T00:00:00Z", 4),
        ["2025-06-06T00:00:00Z", "2025-06-13T00:00:00Z", "2025-06-20T00:00:00Z", "2025-06-27T00:00:00Z"]
    );
    // A literal `*` leaves the other field alone in charge.
    assert_eq!(upcoming("0 0 13 * *", "UTC", "2025-06-01T00:00:00Z", 1), ["2025-06-13T00:00:00Z"]);
}

#[test]
fn last_day_of_month_and_macros() {
    assert_eq!(
        upcoming("0 0 L * *", "UTC", "2024-01-31T00:00:00Z", 3),
        ["2024-02-29T00:00:00Z", "2024-03-31T00:00:00Z", "2024-04-30T00:00:00Z"]
    );
    let from = "2025-03-15T10:20:30Z";
    assert_eq!(upcoming("@midnight", "UTC", from, 3), upcoming("@daily", "UTC", from, 3));
    assert_eq!(upcoming("@annually", "UTC", from, 2), upcoming("0 0 1 1 *", "UTC", from, 2));
    assert_eq!(upcoming("@hourly", "UTC", from, 1), ["2025-03-15T11:00:00Z"]);
}

#[test]
fn seconds_field_and_strictly_after() {
    let schedule = CronSchedule::utc(parse_cron_expression("*/20 * * * * *").unwrap());
    assert!(schedule.expression().has_seconds());
    let fire = at("2025-01-01T00:00:20Z");
    assert_eq!(schedule.next_after(fire), Some(at("2025-01-01T00:00:40Z")));
    assert_eq!(schedule.next_after(at("2025-01-01T00:00:19.999Z")), Some(fire));
    assert_eq!(schedule.next_after(at("2025-01-01T00:00:20.001Z")), Some(at("2025-01-01T00:00:40Z")));
    let minutely = CronSchedule::parse("* * * * *", "UTC").unwrap();
    assert!(!minutely.expression().has_seconds());
    assert_eq!(minutely.next_after(at("2025-01-01T00:00:00Z")), Some(at("2025-01-01T00:01:00Z")));
}

#[test]
fn fixed_time_classification() {
    assert!(parse_cron_expression("30 2 * * *").unwrap().is_fixed_time());
    assert!(parse_cron_expression("@weekly").unwrap().is_fixed_time());
    assert!(parse_cron_expression("0 30 2 * * MON").unwrap().is_fixed_time());
    assert!(!parse_cron_expression("0 * * * *").unwrap().is_fixed_time());
    assert!(!parse_cron_expression("30 1,2 * * *").unwrap().is_fixed_time());
    assert!(!parse_cron_expression("* 30 2 * * *").unwrap().is_fixed_time());
}

// --- Daylight saving: spring forward (a local time that does not exist) ---

#[test]
fn fixed_time_in_a_gap_fires_once_at_the_end_of_the_gap() {
    // New York, 2025-03-09: 02:00 EST -> 03:00 EDT.
    assert_eq!(
        upcoming("30 2 * * *", "America/New_York", "2025-03-08T12:00:00Z", 3),
        ["2025-03-09T07:00:00Z", "2025-03-10T06:30:00Z", "2025-03-11T06:30:00Z"]
    );
    // Berlin, 2025-03-30: 02:00 CET -> 03:00 CEST.
    assert_eq!(
        upcoming("0 30 2 * * *", "Europe/Berlin", "2025-03-29T12:00:00Z", 2),
        ["2025-03-30T01:00:00Z", "2025-03-31T00:30:00Z"]
    );
    // Sydney (southern hemisphere), 2025-10-05: 02:00 AEST -> 03:00 AEDT.
    assert_eq!(
        upcoming("30 2 * * *", "Australia/Sydney", "2025-10-04T00:00:00Z", 2),
        ["2025-10-04T16:00:00Z", "2025-10-05T15:30:00Z"]
    );
    // Lord Howe, 2025-10-05: 02:00 (+10:30) -> 02:30 (+11), a 30-minute gap.
    assert_eq!(
        upcoming("15 2 * * *", "Australia/Lord_Howe", "2025-10-04T00:00:00Z", 2),
        ["2025-10-04T15:30:00Z", "2025-10-05T15:15:00Z"]
    );
}

#[test]
fn interval_schedule_skips_the_gap_and_resumes_after_it() {
    // New York: 01:30 EST, then 03:00 EDT (02:00 and 02:30 do not exist).
    assert_eq!(
        upcoming("*/30 * * * *", "America/New_York", "2025-03-09T06:00:00Z", 3),
        ["2025-03-09T06:30:00Z", "2025-03-09T07:00:00Z", "2025-03-09T07:30:00Z"]
    );
    // Berlin hourly: 01:00 CET, then 03:00 CEST, one real hour later.
    assert_eq!(
        upcoming("0 * * * *", "Europe/Berlin", "2025-03-29T23:30:00Z", 3),
        ["2025-03-30T00:00:00Z", "2025-03-30T01:00:00Z", "2025-03-30T02:00:00Z"]
    );
    // Sydney hourly: 01:00 AEST, then 03:00 AEDT.
    assert_eq!(
        upcoming("0 * * * *", "Australia/Sydney", "2025-10-04T14:30:00Z", 3),
        ["2025-10-04T15:00:00Z", "2025-10-04T16:00:00Z", "2025-10-04T17:00:00Z"]
    );
    // Lord Howe every 15 minutes: 01:45 (+10:30), then 02:30 (+11).
    assert_eq!(
        upcoming("*/15 * * * *", "Australia/Lord_Howe", "2025-10-04T15:10:00Z", 3),
        ["2025-10-04T15:15:00Z", "2025-10-04T15:30:00Z", "2025-10-04T15:45:00Z"]
    );
    // Several matched times in the gap, none in a fixed-time schedule: `30 1,2` is an interval.
    assert_eq!(
        upcoming("30 1,2 * * *", "America/New_York", "2025-03-09T05:00:00Z", 2),
        ["2025-03-09T06:30:00Z", "2025-03-10T05:30:00Z"]
    );
}

// --- Daylight saving: fall back (a local time that occurs twice) ---

#[test]
fn fixed_time_in_a_repeated_hour_fires_once_at_the_first_occurrence() {
    // New York, 2025-11-02: 02:00 EDT -> 01:00 EST; 01:30 EDT is 05:30Z, 01:30 EST 06:30Z.
    assert_eq!(
        upcoming("30 1 * * *", "America/New_York", "2025-11-01T12:00:00Z", 2),
        ["2025-11-02T05:30:00Z", "2025-11-03T06:30:00Z"]
    );
    // Berlin, 2025-10-26: 03:00 CEST -> 02:00 CET.
    assert_eq!(
        upcoming("30 2 * * *", "Europe/Berlin", "2025-10-25T12:00:00Z", 2),
        ["2025-10-26T00:30:00Z", "2025-10-27T01:30:00Z"]
    );
    // Sydney, 2025-04-06: 03:00 AEDT -> 02:00 AEST.
    assert_eq!(
        upcoming("30 2 * * *", "Australia/Sydney", "2025-04-05T00:00:00Z", 2),
        ["2025-04-05T15:30:00Z", "2025-04-06T16:30:00Z"]
    );
    // Lord Howe, 2025-04-06: 02:00 (+11) -> 01:30 (+10:30); 01:45 occurs at 14:45Z and 15:15Z.
    assert_eq!(
        upcoming("45 1 * * *", "Australia/Lord_Howe", "2025-04-05T00:00:00Z", 2),
        ["2025-04-05T14:45:00Z", "2025-04-06T15:15:00Z"]
    );
    // Asked from inside the repeated hour, after the first occurrence: no second fire.
    assert_eq!(upcoming("30 1 * * *", "America/New_York", "2025-11-02T06:00:00Z", 1), ["2025-11-03T06:30:00Z"]);
}

#[test]
fn interval_schedule_fires_at_every_real_instant_of_a_repeated_hour() {
    // New York hourly: 01:00 EDT, 01:00 EST, 02:00 EST: every real hour.
    assert_eq!(
        upcoming("0 * * * *", "America/New_York", "2025-11-02T04:30:00Z", 3),
        ["2025-11-02T05:00:00Z", "2025-11-02T06:00:00Z", "2025-11-02T07:00:00Z"]
    );
    // Berlin every 30 minutes through the repeated 02:00-02:59.
    assert_eq!(
        upcoming("*/30 * * * *", "Europe/Berlin", "2025-10-26T00:00:00Z", 4),
        ["2025-10-26T00:30:00Z", "2025-10-26T01:00:00Z", "2025-10-26T01:30:00Z", "2025-10-26T02:00:00Z"]
    );
    // Sydney hourly: 02:00 AEDT, 02:00 AEST, 03:00 AEST.
    assert_eq!(
        upcoming("0 * * * *", "Australia/Sydney", "2025-04-05T14:30:00Z", 3),
        ["2025-04-05T15:00:00Z", "2025-04-05T16:00:00Z", "2025-04-05T17:00:00Z"]
    );
    // Lord Howe every 15 minutes: 01:30 and 01:45 occur twice, 30 minutes apart.
    assert_eq!(
        upcoming("*/15 * * * *", "Australia/Lord_Howe", "2025-04-05T14:20:00Z", 5),
        [
            "2025-04-05T14:30:00Z",
            "2025-04-05T14:45:00Z",
            "2025-04-05T15:00:00Z",
            "2025-04-05T15:15:00Z",
            "2025-04-05T15:30:00Z"
        ]
    );
}
