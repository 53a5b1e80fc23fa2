//! Common cron expressions, each valid (tested), for `#[scheduled(cron = ...)]` and
//! [`CronSchedule::parse`](super::CronSchedule::parse).

/// Every minute.
pub const EVERY_MINUTE: &str = "* * * * *";
/// Every five minutes, on the minute (:00, :05, ...).
pub const EVERY_FIVE_MINUTES: &str = "*/5 * * * *";
/// Every ten minutes (:00, :10, ...).
pub const EVERY_TEN_MINUTES: &str = "*/10 * * * *";
/// Every fifteen minutes (:00, :15, :30, :45).
pub const EVERY_FIFTEEN_MINUTES: &str = "*/15 * * * *";
/// Every thirty minutes (:00, :30).
pub const EVERY_THIRTY_MINUTES: &str = "*/30 * * * *";
/// Every hour, on the hour.
pub const HOURLY: &str = "0 * * * *";
/// Every six hours (00:00, 06:00, 12:00, 18:00).
pub const EVERY_SIX_HOURS: &str = "0 */6 * * *";
/// Every day at midnight.
pub const DAILY_AT_MIDNIGHT: &str = "0 0 * * *";
/// Every day at noon.
pub const DAILY_AT_NOON: &str = "0 12 * * *";
/// Monday to Friday at 09:00.
pub const WEEKDAYS_AT_NINE: &str = "0 9 * * 1-5";
/// Every Sunday at midnight.
pub const WEEKLY: &str = "0 0 * * 0";
/// The first day of every month at midnight.
pub const MONTHLY: &str = "0 0 1 * *";
/// The last day of every month at midnight.
pub const LAST_DAY_OF_MONTH: &str = "0 0 L * *";
/// The first day of January, April, July and October at midnight.
pub const QUARTERLY: &str = "0 0 1 1,4,7,10 *";
/// The first of January at midnight.
pub const YEARLY: &str = "0 0 1 1 *";

/// Every preset, with its name (for listings and tests).
pub const ALL: &[(&str, &str)] = &[
    ("EVERY_MINUTE", EVERY_MINUTE),
    ("EVERY_FIVE_MINUTES", EVERY_FIVE_MINUTES),
    ("EVERY_TEN_MINUTES", EVERY_TEN_MINUTES),
    ("EVERY_FIFTEEN_MINUTES", EVERY_FIFTEEN_MINUTES),
    ("EVERY_THIRTY_MINUTES", EVERY_THIRTY_MINUTES),
    ("HOURLY", HOURLY),
    ("EVERY_SIX_HOURS", EVERY_SIX_HOURS),
    ("DAILY_AT_MIDNIGHT", DAILY_AT_MIDNIGHT),
    ("DAILY_AT_NOON", DAILY_AT_NOON),
    ("WEEKDAYS_AT_NINE", WEEKDAYS_AT_NINE),
    ("WEEKLY", WEEKLY),
    ("MONTHLY", MONTHLY),
    ("LAST_DAY_OF_MONTH", LAST_DAY_OF_MONTH),
    ("QUARTERLY", QUARTERLY),
    ("YEARLY", YEARLY),
];
