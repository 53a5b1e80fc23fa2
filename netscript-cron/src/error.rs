/// Why a cron expression or a timezone was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CronError {
    /// The expression is empty or only whitespace.
    #[error(
        "empty cron expression: expected 5 fields (minute hour day-of-month month day-of-week) or 6 (with a leading second)"
    )]
    Empty,
    /// The expression has the wrong number of fields.
    #[error(
        "cron expression `{expression}` has {count} fields: expected 5 (minute hour day-of-month month day-of-week) or 6 (with a leading second)"
    )]
    FieldCount {
        /// The expression as given.
        expression: String,
        /// How many whitespace-separated fields it has.
        count: usize,
    },
    /// An `@` macro that is not one of the known ones.
    #[error(
        "unknown cron macro `{name}`: expected @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"
    )]
    UnknownMacro {
        /// The macro as given.
        name: String,
    },
    /// One field of the expression is invalid.
    #[error("invalid {field} field: `{value}` {reason}")]
    Field {
        /// The field: `second`, `minute`, `hour`, `day-of-month`, `month` or `day-of-week`.
        field: &'static str,
        /// The offending part of the field (a list item, a value or a step).
        value: String,
        /// What is wrong, phrased to follow the value (e.g. "must be 0-23").
        reason: &'static str,
    },
    /// The timezone is not an IANA timezone name.
    #[error("unknown timezone `{name}`: {reason}")]
    Timezone {
        /// The name as given.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The expression passed our checks but the cron engine refused it (a bug: please report it).
    #[error("cron expression `{expression}` refused by the cron engine: {message}")]
    Engine {
        /// The expression as given.
        expression: String,
        /// The engine's message.
        message: String,
    },
}
