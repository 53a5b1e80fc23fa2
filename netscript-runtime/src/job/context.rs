use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::store::ExecutionId;

/// A progress report from a running job.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Progress {
    /// 0 to 100.
    pub percent: u8,
    /// What the job is doing now.
    pub message: String,
}

/// Where [`JobContext::progress`] reports go. The worker installs one that records them in
/// the execution store; a context made with [`JobContext::for_tests`] keeps the last one.
#[async_trait]
pub trait ProgressSink: Send + Sync + 'static {
    /// Record one report for an execution.
    async fn report(&self, execution: ExecutionId, progress: Progress);
}

struct Inner {
    execution_id: ExecutionId,
    job_id: String,
    attempt: u32,
    max_attempts: u32,
    correlation_id: String,
    traceparent: Option<String>,
    tracestate: Option<String>,
    cancel: CancellationToken,
    sink: Arc<dyn ProgressSink>,
    span: tracing::Span,
}

/// What a running job knows about its execution, and how it talks back.
///
/// Cheap to clone; every clone refers to the same execution.
#[derive(Clone)]
pub struct JobContext {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("execution_id", &self.inner.execution_id)
            .field("job_id", &self.inner.job_id)
            .field("attempt", &self.inner.attempt)
            .field("correlation_id", &self.inner.correlation_id)
            .finish_non_exhaustive()
    }
}

/// The parts of a [`JobContext`], for the worker (and for tests) to build one.
#[derive(Clone, Debug, Default)]
pub struct ContextParts {
    /// The execution being run.
    pub execution_id: ExecutionId,
    /// The job's id.
    pub job_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Attempts allowed in all: retries + 1.
    pub max_attempts: u32,
    /// Ties executions caused by one request together; defaults to the execution id.
    pub correlation_id: Option<String>,
    /// W3C `traceparent` of the code that enqueued the job.
    pub traceparent: Option<String>,
    /// W3C `tracestate` that goes with it.
    pub tracestate: Option<String>,
}

impl JobContext {
    /// A context for one attempt of one execution.
    pub fn new(parts: ContextParts, cancel: CancellationToken, sink: Arc<dyn ProgressSink>) -> Self {
        let mut id_text = [0; ExecutionId::TEXT_LEN];
        let execution_id_text = parts.execution_id.encode(&mut id_text);
        // Strings, not `%` values: the log copies them instead of formatting them.
        let span = tracing::info_span!(
            "job",
            job.id = parts.job_id.as_str(),
            execution.id = execution_id_text,
            // i64: OpenTelemetry exports it as an integer (a u64 would become a string).
            attempt = i64::from(parts.attempt),
            // Only when it is not the execution id, said above (the default).
            correlation.id = tracing::field::Empty,
            // Recorded by the worker: the backend it claimed from, and how the attempt ended.
            queue.provider = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let correlation_id = match parts.correlation_id {
            Some(given) => {
                if given != execution_id_text {
                    span.record("correlation.id", given.as_str());
                }
                given
            }
            None => execution_id_text.to_owned(),
        };
        // Under the worker's `dispatch` span (which joined the enqueuer's trace) the span is
        // its child; elsewhere (a subprocess child, a test) it joins the traceparent's trace.
        // Free when there is no traceparent or telemetry is off.
        if parts.traceparent.is_some() && crate::telemetry::exporting() && tracing::Span::current().is_none() {
            crate::telemetry::set_remote_parent(&span, parts.traceparent.as_deref(), parts.tracestate.as_deref());
        }
        Self {
            inner: Arc::new(Inner {
                execution_id: parts.execution_id,
                job_id: parts.job_id,
                attempt: parts.attempt.max(1),
                max_attempts: parts.max_attempts.max(1),
                correlation_id,
                traceparent: parts.traceparent,
                tracestate: parts.tracestate,
                cancel,
                sink,
                span,
            }),
        }
    }

    /// A context for calling a job function directly in a unit test: attempt 1, a fresh
    /// execution id, a cancellation signal nobody fires, and progress reports that go to
    /// the log.
    pub fn for_tests(job_id: &str) -> Self {
        struct LogSink;
        #[async_trait]
        impl ProgressSink for LogSink {
            async fn report(&self, execution: ExecutionId, p: Progress) {
                tracing::info!(%execution, percent = p.percent, "{}", p.message);
            }
        }
        Self::new(
            ContextParts {
                execution_id: ExecutionId::new(),
                job_id: job_id.to_owned(),
                attempt: 1,
                max_attempts: 1,
                ..ContextParts::default()
            },
            CancellationToken::new(),
            Arc::new(LogSink),
        )
    }

    /// The id of this execution (the same across its attempts).
    pub fn execution_id(&self) -> ExecutionId {
        self.inner.execution_id
    }

    /// The job's id, as given to `#[job(id = ...)]`.
    pub fn job_id(&self) -> &str {
        &self.inner.job_id
    }

    /// Which attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// How many attempts the retry policy allows in all.
    pub fn max_attempts(&self) -> u32 {
        self.inner.max_attempts
    }

    /// `true` when a failure now would not be retried.
    pub fn is_last_attempt(&self) -> bool {
        self.inner.attempt >= self.inner.max_attempts
    }

    /// Ties together the executions caused by one request.
    pub fn correlation_id(&self) -> &str {
        &self.inner.correlation_id
    }

    /// The W3C `traceparent` of the code that enqueued this job, if it had one.
    pub fn traceparent(&self) -> Option<&str> {
        self.inner.traceparent.as_deref()
    }

    /// The W3C `tracestate` that came with the `traceparent`.
    pub fn tracestate(&self) -> Option<&str> {
        self.inner.tracestate.as_deref()
    }

    /// Fired when the job times out or the worker shuts down. Long jobs should watch it
    /// (`tokio::select!` on `cancelled()`) and stop early.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.inner.cancel
    }

    /// `true` once the cancellation signal has fired.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Report progress: `percent` is clamped to 100. Reports are recorded on the execution
    /// and streamed to subscribers; a burst of reports may be coalesced to the latest.
    pub async fn progress(&self, percent: u8, message: impl Into<String>) {
        let progress = Progress { percent: percent.min(100), message: message.into() };
        crate::telemetry::attempt_progress(&self.inner.span, progress.percent, &progress.message);
        self.inner.sink.report(self.inner.execution_id, progress).await;
    }

    /// A sender for progress reports from synchronous code (a child process's stdout reader),
    /// and the future that relays them to [`progress`](Self::progress) until every clone of
    /// the sender is dropped. Reports sent while the relay is behind by 16 are dropped:
    /// progress is a hint, and its sender must never block.
    pub fn progress_relay(&self) -> (ProgressSender, impl std::future::Future<Output = ()> + Send + '_) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(u8, String)>(16);
        let relay = async move {
            while let Some((percent, message)) = rx.recv().await {
                self.progress(percent, message).await;
            }
        };
        (ProgressSender(tx), relay)
    }

    /// The tracing span of this attempt. The worker runs the job inside it, so plain
    /// `tracing::info!` calls in a job already carry the job id, execution id and attempt.
    pub fn span(&self) -> &tracing::Span {
        &self.inner.span
    }

    /// A logger whose lines carry this execution's fields.
    pub fn logger(&self) -> JobLogger<'_> {
        JobLogger { span: &self.inner.span }
    }
}

/// Sends progress reports to a [`JobContext::progress_relay`] without waiting.
#[derive(Clone, Debug)]
pub struct ProgressSender(tokio::sync::mpsc::Sender<(u8, String)>);

impl ProgressSender {
    /// Queues a report; drops it when the relay is 16 behind or gone.
    pub fn send(&self, percent: u8, message: String) {
        let _ = self.0.try_send((percent.min(100), message));
    }
}

/// Logs lines inside a job's span. Obtained from [`JobContext::logger`].
#[derive(Clone, Copy, Debug)]
pub struct JobLogger<'a> {
    span: &'a tracing::Span,
}

impl JobLogger<'_> {
    /// Log at INFO.
    pub fn info(&self, message: impl std::fmt::Display) {
        self.span.in_scope(|| tracing::info!("{message}"));
    }

    /// Log at WARN.
    pub fn warn(&self, message: impl std::fmt::Display) {
        self.span.in_scope(|| tracing::warn!("{message}"));
    }

    /// Log at ERROR.
    pub fn error(&self, message: impl std::fmt::Display) {
        self.span.in_scope(|| tracing::error!("{message}"));
    }

    /// Log at DEBUG.
    pub fn debug(&self, message: impl std::fmt::Display) {
        self.span.in_scope(|| tracing::debug!("{message}"));
    }
}
