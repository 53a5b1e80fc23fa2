use std::fmt;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::{CronError, CronExpression, parse_cron_expression};

/// A cron expression read in a timezone: computes fire times.
///
/// The expression matches local wall-clock time in the timezone; fire times are returned in
/// UTC. The [module docs](super) give the daylight-saving rules.
///
/// ```
/// use netscript_cron::{CronSchedule, DateTime, Utc};
///
/// let schedule = CronSchedule::parse("30 2 * * *", "America/New_York")?;
/// // 2025-03-09 is the spring-forward day: 02:30 does not exist, so it fires at 03:00 EDT.
/// let from: DateTime<Utc> = "2025-03-08T12:00:00Z".parse().unwrap();
/// let times: Vec<String> = schedule.upcoming(from, 2).iter().map(|t| t.to_rfc3339()).collect();
/// assert_eq!(times, ["2025-03-09T07:00:00+00:00", "2025-03-10T06:30:00+00:00"]);
/// # Ok::<(), netscript_cron::CronError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule {
    expression: CronExpression,
    timezone: Tz,
}

impl CronSchedule {
    /// A schedule for `expression` in `timezone`.
    pub fn new(expression: CronExpression, timezone: Tz) -> Self {
        Self { expression, timezone }
    }

    /// A schedule for `expression` in UTC, the default timezone.
    pub fn utc(expression: CronExpression) -> Self {
        Self::new(expression, Tz::UTC)
    }

    /// Parses an expression and an IANA timezone name (e.g. `"Europe/Berlin"`, `"UTC"`).
    pub fn parse(expression: &str, timezone: &str) -> Result<Self, CronError> {
        Ok(Self::new(parse_cron_expression(expression)?, parse_timezone(timezone)?))
    }

    /// The expression.
    pub fn expression(&self) -> &CronExpression {
        &self.expression
    }

    /// The timezone the expression is read in.
    pub fn timezone(&self) -> Tz {
        self.timezone
    }

    /// The first fire time strictly after `after`, or `None` if there is none before the year
    /// 5000, the engine's search limit (every valid expression fires at least every 8 years, so
    /// this happens only for instants near that limit).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.timezone);
        self.expression.cron.find_next_occurrence(&local, false).ok().map(|next| next.with_timezone(&Utc))
    }

    /// The next `n` fire times strictly after `from`, in order (fewer only if the schedule
    /// runs out, see [`next_after`](Self::next_after)).
    pub fn upcoming(&self, from: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut times = Vec::with_capacity(n);
        let mut cursor = from;
        while times.len() < n {
            let Some(next) = self.next_after(cursor) else { break };
            times.push(next);
            cursor = next;
        }
        times
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.expression, self.timezone.name())
    }
}

/// Parses an IANA timezone name (case-sensitive, as in the tz database: `"America/New_York"`,
/// `"UTC"`).
///
/// ```
/// use netscript_cron::{CronError, parse_timezone};
///
/// assert!(parse_timezone("Australia/Lord_Howe").is_ok());
/// assert!(matches!(parse_timezone("Mars/Olympus"), Err(CronError::Timezone { .. })));
/// ```
pub fn parse_timezone(name: &str) -> Result<Tz, CronError> {
    let reason =
        if name.trim().is_empty() { "the name is empty" } else { "not an IANA timezone name (e.g. Europe/Berlin)" };
    name.parse::<Tz>().map_err(|_| CronError::Timezone { name: name.to_owned(), reason })
}
