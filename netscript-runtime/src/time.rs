//! Wall-clock timestamps as they travel through queues, stores and the API.
//!
//! A [`Timestamp`] is milliseconds since the Unix epoch: small, ordered, and the same in every
//! backend. It serializes as an RFC 3339 string (`2026-11-29T09:25:13.123Z`) so JSON readers
//! see a date, not a number.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Milliseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// Milliseconds since the Unix epoch.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// This instant moved `d` later, saturating.
    pub fn plus(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }

    /// The time from `earlier` to `self`, zero when `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// As a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        let ms = t.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))
    }
}

impl Timestamp {
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`, written without the formatting machinery: records
    /// serialize several timestamps each, on the hot path.
    fn rfc3339(self) -> [u8; 24] {
        let ms = self.0 % 1000;
        let secs = self.0 / 1000;
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
        // Howard Hinnant's civil_from_days, for days since 1970-01-01 (never negative here).
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = (yoe + era * 400 + u64::from(m <= 2)).min(9999);
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut v: u64| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, y);
        put(5, 2, m);
        put(8, 2, d);
        put(11, 2, hh);
        put(14, 2, mm);
        put(17, 2, ss);
        put(20, 3, ms);
        out
    }
}

/// Writes timestamps as JSON strings, the same as their `Serialize` (their characters need no
/// escaping), for one record: its timestamps mostly fall within one second, whose date and
/// time of day are then worked out once.
pub(crate) struct JsonTimestamps {
    second: u64,
    text: [u8; 24],
}

impl JsonTimestamps {
    pub(crate) fn new() -> Self {
        Self { second: u64::MAX, text: [0; 24] }
    }

    /// Appends `t` as a JSON string.
    pub(crate) fn write(&mut self, t: Timestamp, out: &mut Vec<u8>) {
        let second = t.0 / 1000;
        if second == self.second {
            let ms = t.0 % 1000;
            // Three digits of a number below 1,000.
            self.text[20] = b'0' + (ms / 100) as u8;
            self.text[21] = b'0' + (ms / 10 % 10) as u8;
            self.text[22] = b'0' + (ms % 10) as u8;
        } else {
            self.text = t.rfc3339();
            self.second = second;
        }
        out.push(b'"');
        out.extend_from_slice(&self.text);
        out.push(b'"');
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let buf = self.rfc3339();
        // Only ASCII digits and separators are written.
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let buf = self.rfc3339();
        s.serialize_str(std::str::from_utf8(&buf).map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TimestampVisitor)
    }
}

/// Reads a timestamp from the string in place (no copy of it).
struct TimestampVisitor;

impl serde::de::Visitor<'_> for TimestampVisitor {
    type Value = Timestamp;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 timestamp")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Timestamp, E> {
        if let Some(t) = Timestamp::parse_own(s.as_bytes()) {
            return Ok(t);
        }
        humantime::parse_rfc3339_weak(s)
            .map(Timestamp::from)
            .map_err(|e| E::custom(format!("invalid timestamp `{s}`: {e}")))
    }
}

impl Timestamp {
    /// Reads back what [`Timestamp::rfc3339`] writes (`YYYY-MM-DDTHH:MM:SS.mmmZ`, from 1970 on)
    /// without the general parser, which took a third of the time to read a record; `None`
    /// for anything else, which the general parser then reads.
    fn parse_own(b: &[u8]) -> Option<Timestamp> {
        let [
            y0,
            y1,
            y2,
            y3,
            b'-',
            m0,
            m1,
            b'-',
            d0,
            d1,
            b'T',
            h0,
            h1,
            b':',
            i0,
            i1,
            b':',
            s0,
            s1,
            b'.',
            f0,
            f1,
            f2,
            b'Z',
        ] = *b
        else {
            return None;
        };
        let digits =
            |ds: &[u8]| ds.iter().try_fold(0u64, |n, &c| c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0')));
        let (year, month, day) = (digits(&[y0, y1, y2, y3])?, digits(&[m0, m1])?, digits(&[d0, d1])?);
        let (hour, minute, second, ms) =
            (digits(&[h0, h1])?, digits(&[i0, i1])?, digits(&[s0, s1])?, digits(&[f0, f1, f2])?);
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let month_days = match month {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            1..=12 => 31,
            _ => return None,
        };
        if year < 1970 || day == 0 || day > month_days || hour > 23 || minute > 59 || second > 59 {
            return None;
        }
        // Howard Hinnant's days_from_civil, for years from 1970.
        let y = if month <= 2 { year - 1 } else { year };
        let (era, yoe) = (y / 400, y % 400);
        let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = (era * 146_097 + doe).checked_sub(719_468)?;
        Some(Timestamp(((days * 86_400 + hour * 3600 + minute * 60 + second) * 1000) + ms))
    }
}

impl schemars::JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "format": "date-time" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json_as_rfc3339() {
        let t = Timestamp(1_795_000_000_123);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2026-11-18T11:06:40.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
    }

    #[test]
    fn formatting_matches_humantime_across_the_calendar() {
        let mut t = 0u64;
        while t < 4_102_444_800_000 {
            let ours = Timestamp(t).to_string();
            let theirs = humantime::format_rfc3339_millis(Timestamp(t).to_system_time()).to_string();
            assert_eq!(ours, theirs);
            t += 7_919_999_937; // about 92 days, so every month and leap day is crossed
        }
        assert_eq!(Timestamp(951_782_400_000).to_string(), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn json_timestamps_write_what_serialize_writes_within_and_across_seconds() {
        let mut time = JsonTimestamps::new();
        let mut t = 1_795_000_000_000u64;
        for step in [0, 1, 9, 90, 899, 1, 1000, 999, 86_400_000, 7, 0] {
            t += step;
            let mut out = Vec::new();
            time.write(Timestamp(t), &mut out);
            assert_eq!(out, serde_json::to_vec(&Timestamp(t)).unwrap(), "at {t}");
        }
    }

    #[test]
    fn its_own_format_reads_back_as_the_general_parser_reads_it() {
        let mut t = 0u64;
        while t < 253_402_300_799_999 {
            let text = Timestamp(t).to_string();
            assert_eq!(Timestamp::parse_own(text.as_bytes()), Some(Timestamp(t)), "{text}");
            let general = humantime::parse_rfc3339_weak(&text).map(Timestamp::from).unwrap();
            assert_eq!(general, Timestamp(t), "{text}");
            t += 7_919_999_937 + t / 3; // every month and leap day early on, then larger steps
        }
        for (text, ms) in [
            ("2000-02-29T23:59:59.999Z", 951_868_799_999),
            ("1970-01-01T00:00:00.000Z", 0),
            ("9999-12-31T23:59:59.999Z", 253_402_300_799_999),
        ] {
            assert_eq!(Timestamp::parse_own(text.as_bytes()), Some(Timestamp(ms)), "{text}");
        }
        // Not its own format: left to the general parser, which reads or refuses them.
        for text in [
            "2026-11-18T11:06:40Z",
            "2026-11-18T11:06:40.123456Z",
            "2026-11-18 11:06:40.123Z",
            "2026-11-18T11:06:40.123+00:00",
            "2025-02-29T00:00:00.000Z",
            "2026-13-01T00:00:00.000Z",
            "2026-11-18T24:00:00.000Z",
            "1969-12-31T23:59:59.999Z",
            "2026-1x-18T11:06:40.123Z",
        ] {
            assert_eq!(Timestamp::parse_own(text.as_bytes()), None, "{text}");
        }
        let read: Timestamp = serde_json::from_str("\"2026-11-18T11:06:40Z\"").unwrap();
        assert_eq!(read, Timestamp(1_795_000_000_000));
        assert!(serde_json::from_str::<Timestamp>("\"2025-02-29T00:00:00.000Z\"").is_err());
    }

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Timestamp(5).since(Timestamp(9)), Duration::ZERO);
        assert_eq!(Timestamp(u64::MAX).plus(Duration::from_secs(1)), Timestamp(u64::MAX));
    }
}
