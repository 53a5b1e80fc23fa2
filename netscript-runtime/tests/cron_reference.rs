#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! Checks next fire times against a table made by Python's croniter (an independent
//! implementation): see `tests/data/gen_cron_reference.py` for how it was made and what it leaves
//! out (daylight-saving transitions, tested by hand in the module's unit tests).

use netscript_runtime::cron::{CronSchedule, DateTime, Utc};
use serde_json::Value;

#[test]
fn next_fire_times_match_croniter() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/cron_reference.json")).unwrap();
    let table: Value = serde_json::from_str(&text).unwrap();
    let cases = table["cases"].as_array().unwrap();
    assert!(cases.len() >= 200, "the table has only {} cases", cases.len());

    let mut failures = Vec::new();
    for case in cases {
        let expression = case["expression"].as_str().unwrap();
        let timezone = case["timezone"].as_str().unwrap();
        let start: DateTime<Utc> = case["start"].as_str().unwrap().parse().unwrap();
        let expected: Vec<DateTime<Utc>> =
            case["next"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().parse().unwrap()).collect();
        let schedule = CronSchedule::parse(expression, timezone).unwrap();
        let actual = schedule.upcoming(start, expected.len());
        if actual != expected {
            failures.push(format!(
                "`{expression}` in {timezone} from {start}:\n  expected {expected:?}\n  actual   {actual:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
