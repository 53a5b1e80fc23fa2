//! The subprocess runner: each attempt runs in a child process that re-executes this binary.
//!
//! # Protocol
//!
//! The parent starts its own executable ([`std::env::current_exe`]) with its own arguments,
//! so the child's `main` reaches [`RuntimeBuilder::build`](crate::RuntimeBuilder::build) the
//! way the parent's did, with [`CHILD_ENV`] set in its environment. `build` then checks the
//! registry and the state as usual, but instead of opening any backend it serves the one
//! attempt ([`serve_child`]) and exits. The link-time registry means the child knows every job,
//! and the app's own state (`State<T>`) is built by its own `main`.
//!
//! 1. stdin: one JSON [`ChildRequest`]: the job id, the payload (the queued bytes, as text),
//!    the context (execution id, attempt, correlation id, `traceparent`, `tracestate`) and the
//!    timeout.
//! 2. stdout: the line protocol of [`crate::process`]: `@netscript {"progress": ...}` while it
//!    runs, then one `@netscript {"result": ...}` or `@netscript {"error": ...}`. Anything else
//!    the job prints is plain output, logged by the parent at debug level.
//! 3. The child exits 0 once its answer is written; stderr is its log.
//!
//! # Ends
//!
//! - A `result` with exit status 0: succeeded. An `error` (the job's error, a panic, a
//!   timeout seen by the child): failed with that message, fatal if the child says so.
//! - No answer, or a non-zero status, or a signal (an abort, a segfault, the OOM killer):
//!   failed, retryable, with the exit status and the tail of stderr.
//! - The timeout: the child enforces the job's timeout itself (and fires its cancellation
//!   signal); one that does not end [`KILL_GRACE`] later (a blocking loop) is killed with its
//!   whole process group and recorded as timed out.
//! - A cancel request or the end of the shutdown grace period kills the child's process group.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{AttemptOutcome, InProcessRunner};
use crate::job::{
    ContextParts, JobContext, JobDescriptor, JobError, Progress, ProgressSender, ProgressSink, Registry, StateMap,
};
use crate::process::{ChildEnd, ChildEnv, ChildMessage, ChildReport, ChildSpec, StdoutLine, encode, supervise};
use crate::store::ExecutionId;

/// Set in a child's environment (to the protocol version, `1`): the process serves one
/// attempt instead of running the app.
pub const CHILD_ENV: &str = "NETSCRIPT_SUBPROCESS_CHILD";

/// The protocol version this build speaks.
const PROTOCOL: &str = "1";

/// How long past its timeout a child may take to report it before it is killed.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// What the parent sends on the child's stdin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChildRequest {
    /// The job's id.
    pub job: String,
    /// The payload as queued (JSON text; lossy if the bytes were not UTF-8).
    pub payload: String,
    /// The execution.
    pub execution_id: ExecutionId,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Attempts allowed in all.
    pub max_attempts: u32,
    /// The correlation id.
    pub correlation_id: String,
    /// W3C `traceparent` of the enqueuer.
    pub traceparent: Option<String>,
    /// W3C `tracestate`.
    pub tracestate: Option<String>,
    /// The attempt's timeout, in milliseconds.
    pub timeout_ms: u64,
}

/// Runs attempts in child processes of this binary, which re-execute it and serve one
/// attempt each over stdin and stdout.
#[derive(Clone, Debug)]
pub struct SubprocessRunner {
    program: PathBuf,
    args: Vec<OsString>,
}

impl SubprocessRunner {
    /// Re-executes this process's executable with this process's arguments.
    pub fn current_exe() -> std::io::Result<Self> {
        Ok(Self::new(std::env::current_exe()?, std::env::args_os().skip(1).collect()))
    }

    /// Runs `program` with `args` as the child. It must be a NetScript app whose `main` builds
    /// a runtime with the same jobs.
    pub fn new(program: PathBuf, args: Vec<OsString>) -> Self {
        Self { program, args }
    }

    /// Runs one attempt in a child. `stop` kills the child and abandons the attempt.
    pub async fn run(
        &self,
        job: &'static JobDescriptor,
        ctx: JobContext,
        payload: &[u8],
        timeout: Duration,
        stop: &CancellationToken,
    ) -> AttemptOutcome {
        let request = ChildRequest {
            job: job.id.to_owned(),
            payload: String::from_utf8_lossy(payload).into_owned(),
            execution_id: ctx.execution_id(),
            attempt: ctx.attempt(),
            max_attempts: ctx.max_attempts(),
            correlation_id: ctx.correlation_id().to_owned(),
            // The child's attempt nests under this one's span.
            traceparent: crate::telemetry::span_traceparent(ctx.span())
                .or_else(|| ctx.traceparent().map(str::to_owned)),
            tracestate: ctx.tracestate().map(str::to_owned),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let mut stdin = match serde_json::to_vec(&request) {
            Ok(bytes) => bytes,
            Err(e) => return AttemptOutcome::Failed(JobError::retryable(format!("could not encode the request: {e}"))),
        };
        stdin.push(b'\n');
        let spec = ChildSpec {
            program: self.program.clone(),
            args: self.args.clone(),
            env: ChildEnv::Inherit { set: vec![(CHILD_ENV.into(), PROTOCOL.into())] },
            cwd: None,
            stdin,
        };

        let mut answer = Answer::default();
        let (progress, relay) = ctx.progress_relay();
        let execution = ctx.execution_id();
        // The closure owns the sender, so the relay ends when the child's stdout does.
        let reading = &mut answer;
        let on_line = move |line: StdoutLine| reading.read(line, &progress, execution);
        let (report, ()) = tokio::join!(supervise(spec, timeout.saturating_add(KILL_GRACE), stop, on_line), relay);
        match report {
            Ok(report) => answer.outcome(report, timeout),
            Err(e) => AttemptOutcome::Failed(JobError::retryable(format!("the subprocess runner could not run: {e}"))),
        }
    }
}

/// What the child said, line by line.
#[derive(Default)]
struct Answer {
    result: Option<serde_json::Value>,
    error: Option<(String, bool)>,
    malformed: Option<String>,
}

impl Answer {
    fn read(&mut self, line: StdoutLine, progress: &ProgressSender, execution: ExecutionId) {
        match line {
            StdoutLine::Message(ChildMessage::Progress { percent, message }) => progress.send(percent, message),
            StdoutLine::Message(ChildMessage::Result(value)) => self.result = Some(value),
            StdoutLine::Message(ChildMessage::Error { message, fatal }) => self.error = Some((message, fatal)),
            StdoutLine::Output(text) => tracing::debug!(%execution, "child: {text}"),
            StdoutLine::Malformed { line, error } => {
                tracing::warn!(%execution, %error, "child wrote a malformed protocol line: {line}");
                self.malformed.get_or_insert(error);
            }
        }
    }

    fn outcome(self, report: ChildReport, timeout: Duration) -> AttemptOutcome {
        match (report.end, self.error, self.result) {
            (ChildEnd::Cancelled, _, _) => AttemptOutcome::Abandoned,
            (ChildEnd::TimedOut(_), _, _) => AttemptOutcome::TimedOut(timeout),
            (_, Some((message, fatal)), _) => match fatal {
                true => AttemptOutcome::Failed(JobError::fatal(message)),
                false => AttemptOutcome::Failed(JobError::retryable(message)),
            },
            (ChildEnd::Exited { code: 0 }, None, Some(value)) => AttemptOutcome::Succeeded(value),
            (end, None, _) => {
                let mut message = format!("the job's child process {end} without an answer");
                if let Some(e) = self.malformed {
                    message.push_str(&format!(" (it wrote a malformed protocol line: {e})"));
                }
                let tail = report.stderr_tail.trim();
                if !tail.is_empty() {
                    message.push_str("; stderr: ");
                    message.push_str(tail);
                }
                AttemptOutcome::Failed(JobError::retryable(message))
            }
        }
    }
}

/// The child's side: reads a [`ChildRequest`] on stdin, runs the attempt, answers on stdout.
/// Returns the exit status: 0 when an answer was written (whatever the job did), 2 when the
/// request could not be read.
pub async fn serve_child(registry: &Registry, states: StateMap) -> i32 {
    let mut input = String::new();
    // A blocking read: the child does nothing else until its request is in.
    if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut input) {
        eprintln!("netscript child: cannot read the request on stdin: {e}");
        return 2;
    }
    let request: ChildRequest = match serde_json::from_str(input.trim()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("netscript child: the request on stdin is not valid: {e}");
            return 2;
        }
    };
    let message = match registry.get(&request.job) {
        None => ChildMessage::Error {
            message: format!("no job `{}` is registered in the child binary", request.job),
            fatal: true,
        },
        Some(job) => answer(run_child(job, &request, Arc::new(states)).await),
    };
    say(&message);
    0
}

async fn run_child(job: &'static JobDescriptor, request: &ChildRequest, states: Arc<StateMap>) -> AttemptOutcome {
    let ctx = JobContext::new(
        ContextParts {
            execution_id: request.execution_id,
            job_id: request.job.clone(),
            attempt: request.attempt,
            max_attempts: request.max_attempts,
            correlation_id: Some(request.correlation_id.clone()),
            traceparent: request.traceparent.clone(),
            tracestate: request.tracestate.clone(),
        },
        CancellationToken::new(),
        Arc::new(StdoutProgress),
    );
    let timeout = Duration::from_millis(request.timeout_ms);
    // The parent kills the child to stop it; nothing stops it from in here.
    let span = ctx.span().clone();
    let outcome =
        InProcessRunner.run(job, ctx, request.payload.as_bytes(), &states, timeout, &CancellationToken::new()).await;
    crate::telemetry::attempt_ended(&span, &outcome);
    outcome
}

/// The protocol message for an attempt's end.
fn answer(outcome: AttemptOutcome) -> ChildMessage {
    match outcome {
        AttemptOutcome::Succeeded(value) => ChildMessage::Result(value),
        other => {
            let (message, fatal) = other.error().unwrap_or_else(|| ("the attempt was abandoned".to_owned(), false));
            ChildMessage::Error { message, fatal }
        }
    }
}

/// Writes one protocol line to stdout, whole (stdout is locked for the line).
fn say(message: &ChildMessage) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // A parent that went away cannot read the answer anyway.
    let _ = writeln!(out, "{}", encode(message)).and_then(|()| out.flush());
}

/// Progress reports of a child go to its parent on stdout.
struct StdoutProgress;

#[async_trait]
impl ProgressSink for StdoutProgress {
    async fn report(&self, _execution: ExecutionId, progress: Progress) {
        say(&ChildMessage::Progress { percent: progress.percent, message: progress.message });
    }
}
