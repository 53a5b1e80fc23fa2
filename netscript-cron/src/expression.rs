use std::fmt;
use std::str::FromStr;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use super::CronError;

/// A parsed, validated cron expression (see the [module docs](super) for the grammar).
///
/// Parse one with [`parse_cron_expression`] or `str::parse`; pair it with a timezone in a
/// [`CronSchedule`](super::CronSchedule) to compute fire times.
#[derive(Debug, Clone)]
pub struct CronExpression {
    source: String,
    has_seconds: bool,
    pub(super) cron: Cron,
}

impl CronExpression {
    /// The expression as it was written (trimmed).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the expression has the optional leading seconds field.
    pub fn has_seconds(&self) -> bool {
        self.has_seconds
    }

    /// Whether this is a fixed-time expression: one second, one minute and one hour. The
    /// daylight-saving rules depend on it (see the [module docs](super)).
    pub fn is_fixed_time(&self) -> bool {
        self.cron.determine_job_type() == croner::JobType::FixedTime
    }
}

impl PartialEq for CronExpression {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for CronExpression {}

impl fmt::Display for CronExpression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl FromStr for CronExpression {
    type Err = CronError;

    fn from_str(s: &str) -> Result<Self, CronError> {
        parse_cron_expression(s)
    }
}

/// Parses and validates a cron expression; the error names the field and the reason.
///
/// ```
/// use netscript_cron::{CronError, parse_cron_expression};
///
/// assert!(parse_cron_expression("*/15 9-17 * * MON-FRI").is_ok());
/// assert_eq!(
///     parse_cron_expression("0 25 * * *").unwrap_err(),
///     CronError::Field { field: "hour", value: "25".into(), reason: "must be 0-23" },
/// );
/// ```
pub fn parse_cron_expression(expression: &str) -> Result<CronExpression, CronError> {
    let source = expression.trim();
    if source.is_empty() {
        return Err(CronError::Empty);
    }
    let expanded = if source.starts_with('@') { expand_macro(source)? } else { source };
    let fields: Vec<&str> = expanded.split_whitespace().collect();
    let (has_seconds, specs) = match fields.len() {
        5 => (false, &FIELDS[1..]),
        6 => (true, &FIELDS[..]),
        count => return Err(CronError::FieldCount { expression: source.to_owned(), count }),
    };
    let mut sets = [0u64; 6];
    for ((field, spec), set) in fields.iter().zip(specs).zip(&mut sets[6 - specs.len()..]) {
        *set = parse_field(field, spec)?;
    }
    check_days_exist(&fields[fields.len() - 5..], &sets[1..])?;

    // The fields are valid in our grammar, which is a subset of croner's: hand croner the
    // expression as written (names and all), with the macro expanded (croner lacks @midnight).
    let cron = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .dom_and_dow(false)
        .build()
        .parse(expanded)
        .map_err(|e| CronError::Engine { expression: source.to_owned(), message: e.to_string() })?;
    Ok(CronExpression { source: source.to_owned(), has_seconds, cron })
}

/// Whether `expression` is a valid cron expression (see [`parse_cron_expression`]).
///
/// ```
/// use netscript_cron::is_valid_cron_expression;
///
/// assert!(is_valid_cron_expression("@daily"));
/// assert!(!is_valid_cron_expression("60 * * * *"));
/// ```
pub fn is_valid_cron_expression(expression: &str) -> bool {
    parse_cron_expression(expression).is_ok()
}

fn expand_macro(name: &str) -> Result<&'static str, CronError> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => return Err(CronError::UnknownMacro { name: name.to_owned() }),
    })
}

struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    range_reason: &'static str,
    names: &'static [&'static str],
    allow_last: bool,
}

const MONTHS: &[&str] = &["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const WEEKDAYS: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

const fn numeric(name: &'static str, min: u32, max: u32, range_reason: &'static str) -> FieldSpec {
    FieldSpec { name, min, max, range_reason, names: &[], allow_last: false }
}

const FIELDS: [FieldSpec; 6] = [
    numeric("second", 0, 59, "must be 0-59"),
    numeric("minute", 0, 59, "must be 0-59"),
    numeric("hour", 0, 23, "must be 0-23"),
    FieldSpec { allow_last: true, ..numeric("day-of-month", 1, 31, "must be 1-31 or L") },
    FieldSpec { names: MONTHS, ..numeric("month", 1, 12, "must be 1-12 or JAN-DEC") },
    FieldSpec { names: WEEKDAYS, ..numeric("day-of-week", 0, 7, "must be 0-7 or SUN-SAT") },
];

/// Bit `LAST_BIT` of a day-of-month set stands for `L`.
const LAST_BIT: u64 = 1 << 63;

/// Validates one field and returns the set of values it selects, one bit per value (day-of-week
/// 7 folded onto 0, `L` as [`LAST_BIT`]).
fn parse_field(field: &str, spec: &FieldSpec) -> Result<u64, CronError> {
    let error =
        |value: &str, reason: &'static str| CronError::Field { field: spec.name, value: value.to_owned(), reason };
    let mut set = 0u64;
    for item in field.split(',') {
        if item.is_empty() {
            return Err(error(field, "has an empty list item"));
        }
        if spec.allow_last && item.eq_ignore_ascii_case("L") {
            set |= LAST_BIT;
            continue;
        }
        let (base, step) = match item.split_once('/') {
            Some((base, step)) => (base, Some(step)),
            None => (item, None),
        };
        let (start, end) = if base == "*" {
            (spec.min, spec.max)
        } else if let Some((a, b)) = base.split_once('-') {
            let (start, end) = (parse_value(a, spec)?, parse_value(b, spec)?);
            if start > end {
                return Err(error(base, "is a reversed range: the start must not be after the end"));
            }
            (start, end)
        } else {
            let value = parse_value(base, spec)?;
            if step.is_some() {
                return Err(error(item, "has a step after a single value: write `*/n` or `a-b/n`"));
            }
            (value, value)
        };
        let step = match step {
            None => 1,
            Some(step) => match step.parse::<u32>() {
                Ok(0) => return Err(error(item, "has a step of 0: a step must be at least 1")),
                Ok(n) if n <= spec.max => n,
                Ok(_) => return Err(error(item, "has a step larger than the field's range")),
                Err(_) => return Err(error(item, "has a step that is not a positive number")),
            },
        };
        for value in (start..=end).step_by(step as usize) {
            // Day-of-week 7 is Sunday, like 0.
            let value = if spec.names == WEEKDAYS && value == 7 { 0 } else { value };
            set |= 1 << value;
        }
    }
    Ok(set)
}

fn parse_value(text: &str, spec: &FieldSpec) -> Result<u32, CronError> {
    let error = |reason| CronError::Field { field: spec.name, value: text.to_owned(), reason };
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<u32>() {
            Ok(n) if (spec.min..=spec.max).contains(&n) => Ok(n),
            _ => Err(error(spec.range_reason)),
        };
    }
    if let Some(index) = spec.names.iter().position(|name| name.eq_ignore_ascii_case(text)) {
        // Months are numbered from 1, weekdays from 0 (Sunday).
        return Ok(index as u32 + spec.min);
    }
    if spec.allow_last && text.eq_ignore_ascii_case("L") {
        return Err(error("uses L inside a range or step: L stands alone"));
    }
    Err(error(spec.range_reason))
}

/// Refuses a day-of-month that no selected month has (`30 2`), which would never fire.
/// When day-of-week is restricted too, the days of the week still fire, so all is well.
fn check_days_exist(fields: &[&str], sets: &[u64]) -> Result<(), CronError> {
    const DAYS_IN_MONTH: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let (days, months) = (sets[2], sets[3]);
    if fields[4] != "*" || days & LAST_BIT != 0 {
        return Ok(());
    }
    let shortest_day = days.trailing_zeros();
    let fits = (1..=12u32).any(|month| months & (1 << month) != 0 && shortest_day <= DAYS_IN_MONTH[month as usize - 1]);
    if fits {
        Ok(())
    } else {
        Err(CronError::Field {
            field: "day-of-month",
            value: fields[2].to_owned(),
            reason: "never occurs in the selected months",
        })
    }
}
