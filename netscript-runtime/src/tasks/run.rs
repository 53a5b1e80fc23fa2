//! Running one attempt of a task as a supervised child process.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{TaskDefinition, TaskRuntime};
use crate::process::{self, ChildEnd, ChildEnv, ChildMessage, ChildReport, ChildSpec, StdoutLine};

/// What one attempt is given.
#[derive(Clone, Debug)]
pub struct TaskInput {
    /// Written to stdin as one line of JSON.
    pub payload: serde_json::Value,
    /// `NETSCRIPT_EXECUTION_ID`.
    pub execution_id: String,
    /// `NETSCRIPT_ATTEMPT`, from 1.
    pub attempt: u32,
    /// `NETSCRIPT_MAX_ATTEMPTS`.
    pub max_attempts: u32,
    /// `NETSCRIPT_CORRELATION_ID`.
    pub correlation_id: String,
    /// `TRACEPARENT` (W3C trace context), when the run is traced.
    pub traceparent: Option<String>,
    /// `TRACESTATE`, when the run is traced.
    pub tracestate: Option<String>,
}

/// How one attempt of a task ended.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskOutcome {
    /// It exited with status 0 and sent no `error`; its result.
    Succeeded(serde_json::Value),
    /// It sent an `error`, exited with another status, died by a signal or did not start.
    Failed {
        /// What went wrong.
        message: String,
        /// Whether retrying is pointless (only an `error` message with `fatal: true`).
        fatal: bool,
    },
    /// It ran past its timeout; its process group was killed.
    TimedOut(Duration),
    /// `cancel` fired; its process group was killed.
    Cancelled,
}

/// Runs one attempt of `def`. Progress messages go to `on_progress` (percent capped at 100).
///
/// How it ends:
/// - timeout or `cancel` → [`TimedOut`](TaskOutcome::TimedOut) / [`Cancelled`](TaskOutcome::Cancelled);
/// - an `error` message (the last one, even with exit status 0) → `Failed` with its message
///   and `fatal`;
/// - exit status 0 → `Succeeded` with the last `result` message; without one, the last
///   non-empty plain stdout line if it is JSON; else `null`;
/// - another exit status or a signal → `Failed`, not fatal, with
///   `"<how it ended>; stderr: <the last 4 KiB of stderr>"`;
/// - the program did not start → `Failed`, not fatal, with the error.
///
/// Malformed protocol lines are logged (`warn`) and ignored; plain lines are logged at `debug`.
pub async fn run_task(
    def: &TaskDefinition,
    input: TaskInput,
    cancel: &CancellationToken,
    mut on_progress: impl FnMut(u8, String) + Send,
) -> TaskOutcome {
    let spec = def.child_spec(&input);
    let mut seen = Seen::default();
    let report = process::supervise(spec, def.timeout, cancel, |line| seen.take(&def.id, line, &mut on_progress)).await;
    match report {
        Ok(report) => outcome(report, seen),
        Err(e) => TaskOutcome::Failed { message: e.to_string(), fatal: false },
    }
}

/// What the child said that decides the outcome.
#[derive(Default)]
struct Seen {
    result: Option<serde_json::Value>,
    error: Option<(String, bool)>,
    last_plain: Option<String>,
}

impl Seen {
    fn take(&mut self, task: &str, line: StdoutLine, on_progress: &mut impl FnMut(u8, String)) {
        match line {
            StdoutLine::Message(ChildMessage::Progress { percent, message }) => on_progress(percent.min(100), message),
            StdoutLine::Message(ChildMessage::Result(value)) => self.result = Some(value),
            StdoutLine::Message(ChildMessage::Error { message, fatal }) => self.error = Some((message, fatal)),
            StdoutLine::Output(text) => {
                tracing::debug!(task, "stdout: {text}");
                if !text.trim().is_empty() {
                    self.last_plain = Some(text);
                }
            }
            StdoutLine::Malformed { line, error } => {
                tracing::warn!(task, "ignored a stdout line: {error}: {line}");
            }
        }
    }
}

fn outcome(report: ChildReport, seen: Seen) -> TaskOutcome {
    match report.end {
        ChildEnd::TimedOut(d) => return TaskOutcome::TimedOut(d),
        ChildEnd::Cancelled => return TaskOutcome::Cancelled,
        ChildEnd::Exited { .. } | ChildEnd::Signalled { .. } => {}
    }
    if let Some((message, fatal)) = seen.error {
        return TaskOutcome::Failed { message, fatal };
    }
    if !report.end.success() {
        let tail = report.stderr_tail.trim();
        let message = if tail.is_empty() { report.end.to_string() } else { format!("{}; stderr: {tail}", report.end) };
        return TaskOutcome::Failed { message, fatal: false };
    }
    let value = seen
        .result
        .or_else(|| seen.last_plain.and_then(|line| serde_json::from_str(line.trim()).ok()))
        .unwrap_or(serde_json::Value::Null);
    TaskOutcome::Succeeded(value)
}

impl TaskDefinition {
    /// The child process one attempt runs: command line, environment, directory and stdin.
    ///
    /// A program named without a path (`python3`) is looked up in the worker's `PATH` here,
    /// because the child's environment may not have one. A relative program path with a
    /// directory (`./bin/job`) is taken from [`cwd`](Self::cwd) when set.
    pub fn child_spec(&self, input: &TaskInput) -> ChildSpec {
        let (program, args) = self.command();
        let program = resolve_program(program, self.cwd.as_deref());
        let mut set = Vec::new();
        let inherit = self.runtime == TaskRuntime::Deno;
        if !inherit {
            for name in &self.env_allow {
                if let Some(value) = std::env::var_os(name) {
                    set.push((OsString::from(name), value));
                }
            }
        }
        set.extend(self.env.iter().map(|(n, v)| (OsString::from(n), OsString::from(v))));
        set.extend(context_env(&self.id, input));
        let mut stdin = input.payload.to_string().into_bytes();
        stdin.push(b'\n');
        ChildSpec {
            program,
            args,
            env: if inherit { ChildEnv::Inherit { set } } else { ChildEnv::Clear { set } },
            cwd: self.cwd.clone(),
            stdin,
        }
    }
}

/// The `NETSCRIPT_*` variables (and trace context) every task gets.
fn context_env(task: &str, input: &TaskInput) -> Vec<(OsString, OsString)> {
    let mut vars = vec![
        ("NETSCRIPT_EXECUTION_ID", input.execution_id.clone()),
        ("NETSCRIPT_JOB_ID", task.to_owned()),
        ("NETSCRIPT_ATTEMPT", input.attempt.to_string()),
        ("NETSCRIPT_MAX_ATTEMPTS", input.max_attempts.to_string()),
        ("NETSCRIPT_CORRELATION_ID", input.correlation_id.clone()),
    ];
    if let Some(t) = &input.traceparent {
        vars.push(("TRACEPARENT", t.clone()));
    }
    if let Some(t) = &input.tracestate {
        vars.push(("TRACESTATE", t.clone()));
    }
    vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect()
}

/// A bare name is looked up in the worker's `PATH`; a relative path is joined to `cwd`.
fn resolve_program(program: PathBuf, cwd: Option<&Path>) -> PathBuf {
    if program.is_absolute() {
        return program;
    }
    if program.components().count() > 1 {
        return match cwd {
            Some(dir) => dir.join(program),
            None => program,
        };
    }
    let Some(path) = std::env::var_os("PATH") else { return program };
    std::env::split_paths(&path).map(|dir| dir.join(&program)).find(|p| is_executable(p)).unwrap_or(program)
}

fn is_executable(path: &Path) -> bool {
    let Ok(meta) = path.metadata() else { return false };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::define_task;
    use serde_json::json;

    fn report(end: ChildEnd, stderr: &str) -> ChildReport {
        ChildReport { end, stderr_tail: stderr.to_owned(), elapsed: Duration::from_millis(5) }
    }

    fn seen(result: Option<serde_json::Value>, error: Option<(&str, bool)>, last_plain: Option<&str>) -> Seen {
        Seen { result, error: error.map(|(m, f)| (m.to_owned(), f)), last_plain: last_plain.map(str::to_owned) }
    }

    #[test]
    fn outcome_rules() {
        let ok = || ChildEnd::Exited { code: 0 };
        assert_eq!(
            outcome(report(ok(), ""), seen(Some(json!(1)), None, Some("{\"x\":2}"))),
            TaskOutcome::Succeeded(json!(1))
        );
        assert_eq!(
            outcome(report(ok(), ""), seen(None, None, Some(" {\"x\":2} "))),
            TaskOutcome::Succeeded(json!({"x": 2}))
        );
        assert_eq!(outcome(report(ok(), ""), seen(None, None, Some("done"))), TaskOutcome::Succeeded(json!(null)));
        assert_eq!(outcome(report(ok(), ""), seen(None, None, None)), TaskOutcome::Succeeded(json!(null)));
        assert_eq!(
            outcome(report(ok(), ""), seen(Some(json!(1)), Some(("bad input", true)), None)),
            TaskOutcome::Failed { message: "bad input".into(), fatal: true }
        );
        assert_eq!(
            outcome(report(ChildEnd::Exited { code: 2 }, "  trace\nboom\n "), seen(None, None, None)),
            TaskOutcome::Failed { message: "exited with status 2; stderr: trace\nboom".into(), fatal: false }
        );
        let killed = ChildEnd::Signalled { signal: 9, name: "SIGKILL".into() };
        assert_eq!(
            outcome(report(killed, ""), seen(None, None, None)),
            TaskOutcome::Failed { message: "killed by signal SIGKILL (9)".into(), fatal: false }
        );
        let timeout = Duration::from_secs(1);
        assert_eq!(
            outcome(report(ChildEnd::TimedOut(timeout), ""), seen(None, Some(("x", true)), None)),
            TaskOutcome::TimedOut(timeout)
        );
        assert_eq!(outcome(report(ChildEnd::Cancelled, ""), seen(None, None, None)), TaskOutcome::Cancelled);
    }

    #[test]
    fn progress_is_capped_and_lines_are_sorted() {
        let mut progress = Vec::new();
        let mut s = Seen::default();
        let mut on_progress = |p, m| progress.push((p, m));
        s.take(
            "t",
            StdoutLine::Message(ChildMessage::Progress { percent: 150, message: "m".into() }),
            &mut on_progress,
        );
        s.take("t", StdoutLine::Output("a".into()), &mut on_progress);
        s.take("t", StdoutLine::Output("  ".into()), &mut on_progress);
        s.take("t", StdoutLine::Malformed { line: "@netscript x".into(), error: "e".into() }, &mut on_progress);
        assert_eq!(progress, [(100, "m".to_owned())]);
        assert_eq!(s.last_plain.as_deref(), Some("a"));
    }

    #[test]
    fn programs_are_resolved_before_the_environment_is_cleared() {
        let sh = resolve_program("sh".into(), None);
        assert!(sh.is_absolute(), "{}", sh.display());
        assert_eq!(resolve_program("/bin/x".into(), Some(Path::new("/srv"))), PathBuf::from("/bin/x"));
        assert_eq!(resolve_program("./bin/x".into(), Some(Path::new("/srv"))), PathBuf::from("/srv/./bin/x"));
        assert_eq!(resolve_program("bin/x".into(), None), PathBuf::from("bin/x"));
        assert_eq!(resolve_program("netscript-nope".into(), None), PathBuf::from("netscript-nope"));
    }

    #[test]
    fn child_spec_carries_the_context() {
        let def = define_task("t")
            .runtime(TaskRuntime::Shell)
            .entrypoint("true")
            .env("A", "1")
            .env_allow(["NETSCRIPT_SURELY_UNSET_VARIABLE"])
            .build()
            .unwrap();
        let input = TaskInput {
            payload: serde_json::json!({"n": 1}),
            execution_id: "e1".into(),
            attempt: 2,
            max_attempts: 3,
            correlation_id: "c1".into(),
            traceparent: Some("00-abc-def-01".into()),
            tracestate: None,
        };
        let spec = def.child_spec(&input);
        assert_eq!(spec.stdin, b"{\"n\":1}\n");
        let ChildEnv::Clear { set } = spec.env else { panic!("non-deno tasks get a cleared environment") };
        let set: Vec<(&str, &str)> = set.iter().map(|(k, v)| (k.to_str().unwrap(), v.to_str().unwrap())).collect();
        assert_eq!(
            set,
            [
                ("A", "1"),
                ("NETSCRIPT_EXECUTION_ID", "e1"),
                ("NETSCRIPT_JOB_ID", "t"),
                ("NETSCRIPT_ATTEMPT", "2"),
                ("NETSCRIPT_MAX_ATTEMPTS", "3"),
                ("NETSCRIPT_CORRELATION_ID", "c1"),
                ("TRACEPARENT", "00-abc-def-01"),
            ]
        );
        let deno = define_task("d").runtime(TaskRuntime::Deno).entrypoint("d.ts").build().unwrap();
        assert!(matches!(deno.child_spec(&input).env, ChildEnv::Inherit { .. }));
    }
}
