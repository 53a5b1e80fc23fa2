use serde::{Deserialize, Serialize};

use super::ExecutionId;
use crate::job::Progress;
use crate::time::Timestamp;

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
            correlation_id: correlation_id.unwrap_or_else(|| id.to_string()),
            enqueued_at: at,
            started_at: None,
            finished_at: None,
            retry_at: None,
            attempts: Vec::new(),
            updated_at: at,
        }
    }
}
