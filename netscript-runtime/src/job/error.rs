use std::fmt;

/// What a job returns: its output, or a [`JobError`].
pub type JobResult<T = ()> = Result<T, JobError>;

/// Whether a failure is worth another attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobErrorKind {
    /// Try again, following the job's retry policy.
    Retryable,
    /// Never retry: the execution goes straight to the dead-letter store.
    Fatal,
}

/// Why a job failed.
///
/// `?` turns any [`std::error::Error`] into a retryable `JobError`, keeping its chain of
/// causes in the message. Use [`JobError::fatal`] for failures that another attempt cannot
/// fix (a malformed payload, a declined card).
///
/// Like `anyhow::Error`, `JobError` deliberately does not implement `std::error::Error`
/// itself: that is what lets the blanket `From` conversion exist.
pub struct JobError {
    kind: JobErrorKind,
    message: String,
}

impl JobError {
    /// A failure that follows the job's retry policy.
    pub fn retryable(message: impl fmt::Display) -> Self {
        Self { kind: JobErrorKind::Retryable, message: message.to_string() }
    }

    /// A failure that is never retried: the execution is dead-lettered at once.
    pub fn fatal(message: impl fmt::Display) -> Self {
        Self { kind: JobErrorKind::Fatal, message: message.to_string() }
    }

    /// Whether this failure may be retried.
    pub fn kind(&self) -> JobErrorKind {
        self.kind
    }

    /// `true` for [`JobErrorKind::Fatal`].
    pub fn is_fatal(&self) -> bool {
        self.kind == JobErrorKind::Fatal
    }

    /// The message, with the causes of a converted error joined by `: `.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error, marked fatal.
    pub fn into_fatal(mut self) -> Self {
        self.kind = JobErrorKind::Fatal;
        self
    }
}

impl<E> From<E> for JobError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self { kind: JobErrorKind::Retryable, message }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobError({:?}: {})", self.kind, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("could not charge")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn question_mark_keeps_the_cause_chain_and_is_retryable() {
        fn charge() -> JobResult<()> {
            Err(Outer(std::io::Error::other("connection reset")))?;
            Ok(())
        }
        let err = charge().unwrap_err();
        assert_eq!(err.kind(), JobErrorKind::Retryable);
        assert_eq!(err.message(), "could not charge: connection reset");
    }

    #[test]
    fn fatal_is_fatal() {
        assert!(JobError::fatal("card declined").is_fatal());
        assert!(JobError::retryable("later").into_fatal().is_fatal());
    }
}
