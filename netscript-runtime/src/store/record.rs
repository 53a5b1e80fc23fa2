use serde::{Deserialize, Serialize};

use super::ExecutionId;
use crate::job::Progress;
use crate::queue::MessageId;
use crate::time::{JsonTimestamps, Timestamp};

/// Where an execution is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionStatus {
    /// Waiting in the queue.
    Queued,
    /// An attempt is running.
    Running,
    /// Finished with an output.
    Succeeded,
    /// The last attempt failed and another is scheduled.
    Retrying,
    /// Failed and will not be retried, but was not dead-lettered (reserved for runners that
    /// give up without a queue, such as a direct call).
    Failed,
    /// Failed for good and moved to the dead-letter store.
    Dead,
    /// Cancelled before it finished.
    Cancelled,
}

impl ExecutionStatus {
    /// No further change will happen.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Dead | Self::Cancelled)
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }
}

impl std::str::FromStr for ExecutionStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "retrying" => Self::Retrying,
            "failed" => Self::Failed,
            "dead" => Self::Dead,
            "cancelled" => Self::Cancelled,
            other => {
                return Err(format!(
                    "unknown status `{other}`; expected queued, running, succeeded, retrying, failed, dead or cancelled"
                ));
            }
        })
    }
}

impl std::fmt::Display for ExecutionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finished attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    /// 1 for the first.
    pub attempt: u32,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Timestamp,
    /// Its error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Everything recorded about one execution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionRecord {
    /// The execution's id.
    pub id: ExecutionId,
    /// The job's id.
    pub job_id: String,
    /// Where it is.
    pub status: ExecutionStatus,
    /// The current or last attempt (0 while queued).
    pub attempt: u32,
    /// Attempts allowed in all.
    pub max_attempts: u32,
    /// The payload it was enqueued with.
    pub payload: serde_json::Value,
    /// The output, once succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The latest progress report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Ties executions of one request together.
    pub correlation_id: String,
    /// When it was enqueued.
    pub enqueued_at: Timestamp,
    /// When the current or last attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it reached a final status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// When the next attempt may start, while retrying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Timestamp>,
    /// Finished attempts, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptRecord>,
    /// When the record last changed.
    pub updated_at: Timestamp,
}

impl ExecutionRecord {
    /// The record of an execution of `job_id` queued at `at`: no attempt yet, no result. The
    /// correlation id defaults to the execution id.
    pub fn queued(
        id: ExecutionId,
        job_id: impl Into<String>,
        payload: serde_json::Value,
        max_attempts: u32,
        correlation_id: Option<String>,
        at: Timestamp,
    ) -> Self {
        ExecutionRecord {
            id,
            job_id: job_id.into(),
            status: ExecutionStatus::Queued,
            attempt: 0,
            max_attempts,
            payload,
            result: None,
            error: None,
            progress: None,
            correlation_id: correlation_id.unwrap_or_else(|| {
                let mut text = [0; MessageId::TEXT_LEN];
                id.encode(&mut text).to_owned()
            }),
            enqueued_at: at,
            started_at: None,
            finished_at: None,
            retry_at: None,
            attempts: Vec::new(),
            updated_at: at,
        }
    }
}

impl ExecutionRecord {
    /// Appends the record as JSON to `out`: the very bytes `serde_json::to_writer` writes
    /// (a test holds the two together), but field names, ids, statuses and timestamps go in
    /// as they are instead of through serde_json's per-byte escaping, which they never need.
    /// The store encodes two records per job with this; the derived serializer spent about
    /// 6,000 instructions on each, most of them escaping those names.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        let mut time = JsonTimestamps::new();
        out.extend_from_slice(b"{\"id\":");
        id(out, self.id);
        out.extend_from_slice(b",\"jobId\":");
        string(out, &self.job_id);
        out.extend_from_slice(b",\"status\":\"");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.extend_from_slice(b"\",\"attempt\":");
        integer(out, self.attempt);
        out.extend_from_slice(b",\"maxAttempts\":");
        integer(out, self.max_attempts);
        out.extend_from_slice(b",\"payload\":");
        value(out, &self.payload);
        if let Some(result) = &self.result {
            out.extend_from_slice(b",\"result\":");
            value(out, result);
        }
        if let Some(error) = &self.error {
            out.extend_from_slice(b",\"error\":");
            string(out, error);
        }
        if let Some(progress) = &self.progress {
            out.extend_from_slice(b",\"progress\":{\"percent\":");
            integer(out, progress.percent);
            out.extend_from_slice(b",\"message\":");
            string(out, &progress.message);
            out.push(b'}');
        }
        out.extend_from_slice(b",\"correlationId\":");
        string(out, &self.correlation_id);
        out.extend_from_slice(b",\"enqueuedAt\":");
        time.write(self.enqueued_at, out);
        for (name, at) in [
            (&b",\"startedAt\":"[..], self.started_at),
            (b",\"finishedAt\":", self.finished_at),
            (b",\"retryAt\":", self.retry_at),
        ] {
            if let Some(at) = at {
                out.extend_from_slice(name);
                time.write(at, out);
            }
        }
        if !self.attempts.is_empty() {
            out.extend_from_slice(b",\"attempts\":[");
            for (i, a) in self.attempts.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"attempt\":");
                integer(out, a.attempt);
                out.extend_from_slice(b",\"startedAt\":");
                time.write(a.started_at, out);
                out.extend_from_slice(b",\"finishedAt\":");
                time.write(a.finished_at, out);
                if let Some(error) = &a.error {
                    out.extend_from_slice(b",\"error\":");
                    string(out, error);
                }
                out.push(b'}');
            }
            out.push(b']');
        }
        out.extend_from_slice(b",\"updatedAt\":");
        time.write(self.updated_at, out);
        out.push(b'}');
    }
}

/// `"<hyphenated id>"`: hex digits and hyphens need no escaping.
fn id(out: &mut Vec<u8>, id: MessageId) {
    let mut buf = [0; MessageId::TEXT_LEN];
    out.push(b'"');
    out.extend_from_slice(id.encode(&mut buf).as_bytes());
    out.push(b'"');
}

/// A JSON string, escaped as serde_json escapes it.
fn string(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(out, s);
}

fn integer(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn value(out: &mut Vec<u8>, v: &serde_json::Value) {
    match v {
        serde_json::Value::Null => out.extend_from_slice(b"null"),
        // Writing into a Vec cannot fail.
        v => {
            let _ = serde_json::to_writer(out, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_same_json(r: &ExecutionRecord) {
        let mut fast = Vec::new();
        r.write_json(&mut fast);
        let derived = serde_json::to_vec(r).unwrap();
        assert_eq!(serde_json::from_slice::<ExecutionRecord>(&fast).unwrap(), *r, "reads back");
        assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(derived).unwrap());
    }

    #[test]
    fn write_json_writes_what_the_derived_serializer_writes() {
        let at = Timestamp(1_795_000_000_123);
        let mut r = ExecutionRecord::queued(MessageId::new(), "send-email", serde_json::Value::Null, 3, None, at);
        assert_same_json(&r);

        // Every optional field set, and strings that need escaping everywhere a user's text goes.
        r.job_id = "odd \"job\"\n\u{1}".into();
        r.status = ExecutionStatus::Retrying;
        r.attempt = 2;
        r.payload = serde_json::json!({"to": "a@b.c", "n": [1, 2.5, -3], "nested": {"ok": true, "s": "\\"}});
        r.result = Some(serde_json::json!("done \u{7f} é"));
        r.error = Some("boom: \"quoted\"\t".into());
        r.progress = Some(Progress { percent: 42, message: "line\r\nnext".into() });
        r.correlation_id = "corr/\u{2028}".into();
        r.started_at = Some(Timestamp(at.0 + 5));
        r.finished_at = Some(Timestamp(at.0 + 6));
        r.retry_at = Some(Timestamp(0));
        r.attempts = vec![
            AttemptRecord {
                attempt: 1,
                started_at: at,
                finished_at: Timestamp(at.0 + 1),
                error: Some("e\u{0}".into()),
            },
            AttemptRecord {
                attempt: 2,
                started_at: at,
                finished_at: Timestamp(u64::from(u32::MAX) * 1000),
                error: None,
            },
        ];
        r.updated_at = Timestamp(253_402_300_799_999);
        assert_same_json(&r);

        // Random records: every optional field present or not, strings of any characters.
        let mut rng = fastrand::Rng::with_seed(7);
        let text = |rng: &mut fastrand::Rng| -> String {
            (0..rng.usize(0..12))
                .map(|_| match rng.u8(0..4) {
                    0 => char::from(rng.u8(0..0x20)),
                    1 => rng.char('\u{80}'..='\u{10ffff}'),
                    _ => rng.char(' '..='~'),
                })
                .collect()
        };
        for _ in 0..2000 {
            let ts = |rng: &mut fastrand::Rng| Timestamp(rng.u64(0..253_402_300_800_000));
            let mut r = ExecutionRecord::queued(
                MessageId::new(),
                text(&mut rng),
                serde_json::json!({ "s": text(&mut rng), "n": rng.i64(..) }),
                rng.u32(..),
                rng.bool().then(|| text(&mut rng)),
                ts(&mut rng),
            );
            r.attempt = rng.u32(..);
            r.result = rng.bool().then(|| serde_json::Value::String(text(&mut rng)));
            r.error = rng.bool().then(|| text(&mut rng));
            r.progress = rng.bool().then(|| Progress { percent: rng.u8(..), message: text(&mut rng) });
            r.started_at = rng.bool().then(|| ts(&mut rng));
            r.finished_at = rng.bool().then(|| ts(&mut rng));
            r.retry_at = rng.bool().then(|| ts(&mut rng));
            r.attempts = (0..rng.usize(0..3))
                .map(|i| AttemptRecord {
                    attempt: u32::try_from(i).unwrap_or(0),
                    started_at: ts(&mut rng),
                    finished_at: ts(&mut rng),
                    error: rng.bool().then(|| text(&mut rng)),
                })
                .collect();
            r.updated_at = ts(&mut rng);
            assert_same_json(&r);
        }

        for status in [
            ExecutionStatus::Queued,
            ExecutionStatus::Running,
            ExecutionStatus::Succeeded,
            ExecutionStatus::Failed,
            ExecutionStatus::Dead,
            ExecutionStatus::Cancelled,
        ] {
            r.status = status;
            r.attempt = u32::MAX;
            r.max_attempts = 0;
            assert_same_json(&r);
        }
    }
}
