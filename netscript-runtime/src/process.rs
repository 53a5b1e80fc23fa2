//! Supervised child processes: run a program to its end with a timeout and a cancel signal,
//! read what it says on stdout as it says it, and keep the end of what it wrote on stderr.
//!
//! This is the layer under the subprocess runners (Rust jobs run out of process, polyglot
//! [`tasks`](crate::tasks)). It knows nothing about jobs: it starts one program, feeds it its
//! stdin and reports how it ended. It is Unix only; elsewhere [`supervise`] fails with
//! [`std::io::ErrorKind::Unsupported`].
//!
//! # Process group
//!
//! The child is the leader of a new process group. On timeout or cancel the whole group is
//! killed with `SIGKILL`, grandchildren included. A child that exits on its own is not
//! followed: members it left behind keep running (and [`supervise`] waits at most
//! [`PIPE_GRACE`] for the pipes they hold open).
//!
//! # Line protocol
//!
//! The child talks to its supervisor on stdout, one line at a time. A line that starts with
//! the marker [`MARKER`] (`@netscript ` — with the space) carries one JSON [`ChildMessage`]
//! on the rest of the line; every other line is plain output. The messages are externally
//! tagged:
//!
//! ```text
//! @netscript {"progress": {"percent": 40, "message": "resizing images"}}
//! @netscript {"result": {"resized": 12}}
//! @netscript {"error": {"message": "bucket not found", "fatal": true}}
//! ```
//!
//! - `progress`: `percent` is 0 to 100, `message` a short text.
//! - `result`: any JSON value, the output of the run.
//! - `error`: `message`, and `fatal` (no retry; `false` when left out).
//!
//! A line with the marker whose JSON does not decode is [`StdoutLine::Malformed`], as is a
//! line longer than [`MAX_LINE`] bytes (whatever it holds). Lines end at `\n`; a `\r` before
//! it is dropped. Bytes that are not UTF-8 are replaced (lossy).

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// The marker that starts a protocol line on stdout (with its trailing space).
pub const MARKER: &str = "@netscript ";

/// The longest stdout line read as such; a longer one is [`StdoutLine::Malformed`].
pub const MAX_LINE: usize = 1024 * 1024;

/// How much of stderr [`ChildReport::stderr_tail`] keeps: the last 4 KiB.
pub const STDERR_TAIL: usize = 4 * 1024;

/// How long the pipes may stay open after the child ended (held by a process it left
/// behind) before we stop reading them.
pub const PIPE_GRACE: Duration = Duration::from_millis(100);

/// How many bytes of an overlong line [`StdoutLine::Malformed`] keeps.
const MALFORMED_PREFIX: usize = 200;

/// What to run.
#[derive(Clone, Debug)]
pub struct ChildSpec {
    /// The program: a path, or a name looked up in `PATH`.
    pub program: PathBuf,
    /// Its arguments, not including the program.
    pub args: Vec<OsString>,
    /// How its environment is built.
    pub env: ChildEnv,
    /// Its working directory; the parent's when `None`.
    pub cwd: Option<PathBuf>,
    /// Written to the child's stdin, then stdin is closed (empty: closed at once).
    pub stdin: Vec<u8>,
}

impl ChildSpec {
    /// Runs `program` with no arguments, the parent's environment and directory, empty stdin.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: ChildEnv::Inherit { set: Vec::new() },
            cwd: None,
            stdin: Vec::new(),
        }
    }
}

/// How the child's environment is built.
#[derive(Clone, Debug)]
pub enum ChildEnv {
    /// The parent's environment plus these variables.
    Inherit {
        /// Variables to add (or override), in order.
        set: Vec<(OsString, OsString)>,
    },
    /// Only these variables (plus nothing else; PATH only if listed).
    Clear {
        /// The whole environment, in order.
        set: Vec<(OsString, OsString)>,
    },
}

/// How a child ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildEnd {
    /// It exited with this status.
    Exited {
        /// The exit status.
        code: i32,
    },
    /// A signal ended it (not one of ours).
    Signalled {
        /// The signal number.
        signal: i32,
        /// Its name, such as `SIGABRT` (`signal 42` if unknown).
        name: String,
    },
    /// We killed it (its whole process group): it ran past its timeout.
    TimedOut(Duration),
    /// We killed it (its whole process group): `cancel` fired.
    Cancelled,
}

impl ChildEnd {
    /// `true` when it exited with status 0.
    pub fn success(&self) -> bool {
        matches!(self, Self::Exited { code: 0 })
    }
}

impl fmt::Display for ChildEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited { code } => write!(f, "exited with status {code}"),
            Self::Signalled { signal, name } => write!(f, "killed by signal {name} ({signal})"),
            Self::TimedOut(d) => write!(f, "timed out after {}", humantime::format_duration(*d)),
            Self::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// What [`supervise`] reports about a finished child.
#[derive(Clone, Debug)]
pub struct ChildReport {
    /// How it ended.
    pub end: ChildEnd,
    /// The last 4 KiB of stderr, lossy UTF-8, starting at a character boundary.
    pub stderr_tail: String,
    /// From spawn to its end.
    pub elapsed: Duration,
}

/// A message a child sends on stdout after [`MARKER`]; see the [module docs](self).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ChildMessage {
    /// How far along it is.
    Progress {
        /// 0 to 100.
        percent: u8,
        /// A short text for people.
        message: String,
    },
    /// The output of the run; the last one wins.
    Result(serde_json::Value),
    /// The run failed.
    Error {
        /// What went wrong.
        message: String,
        /// Whether retrying is pointless; `false` when left out.
        #[serde(default)]
        fatal: bool,
    },
}

/// A line the child wrote on stdout, as the protocol reads it.
#[derive(Clone, Debug, PartialEq)]
pub enum StdoutLine {
    /// A protocol message.
    Message(ChildMessage),
    /// Plain output (no marker).
    Output(String),
    /// A marker line whose JSON did not decode, or a line longer than [`MAX_LINE`].
    Malformed {
        /// The line (for an overlong line, its first 200 bytes).
        line: String,
        /// Why it was not read.
        error: String,
    },
}

/// The protocol line for `message`: [`MARKER`] and compact JSON, no trailing newline.
pub fn encode(message: &ChildMessage) -> String {
    // Serializing this enum cannot fail: every field is a string, a number, a bool or a
    // `serde_json::Value`, and no map has non-string keys. Fall back to `null` regardless.
    let json = serde_json::to_string(message).unwrap_or_else(|_| "null".to_owned());
    format!("{MARKER}{json}")
}

/// Reads one stdout line (without its line ending).
pub fn parse_line(line: &str) -> StdoutLine {
    let Some(json) = line.strip_prefix(MARKER) else {
        return StdoutLine::Output(line.to_owned());
    };
    match serde_json::from_str::<ChildMessage>(json) {
        Ok(message) => StdoutLine::Message(message),
        Err(e) => StdoutLine::Malformed { line: line.to_owned(), error: format!("bad {MARKER}message: {e}") },
    }
}

/// Runs the child to its end. Every stdout line goes to `on_line` as soon as it is read.
///
/// The child gets `timeout` to finish; past it, or when `cancel` fires, its process group
/// is killed. The error is a failure to start it (naming the program) or to wait for it.
pub async fn supervise(
    spec: ChildSpec,
    timeout: Duration,
    cancel: &CancellationToken,
    on_line: impl FnMut(StdoutLine) + Send,
) -> std::io::Result<ChildReport> {
    #[cfg(unix)]
    {
        unix::supervise(spec, timeout, cancel, on_line).await
    }
    #[cfg(not(unix))]
    {
        let _ = (spec, timeout, cancel, on_line);
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "supervised child processes need a Unix system"))
    }
}

/// The last [`STDERR_TAIL`] bytes of `bytes` as text, starting at a character boundary.
fn tail_text(bytes: &[u8]) -> String {
    let mut tail = &bytes[bytes.len().saturating_sub(STDERR_TAIL)..];
    // A cut inside a UTF-8 sequence leaves at most 3 continuation bytes (10xxxxxx) in front.
    let skip = tail.iter().take(3).take_while(|&&b| b & 0xC0 == 0x80).count();
    tail = &tail[skip..];
    String::from_utf8_lossy(tail).into_owned()
}

/// Turns the bytes of one stdout line (without `\n`) into a [`StdoutLine`].
fn finish_line(mut bytes: &[u8], too_long: bool) -> StdoutLine {
    if too_long {
        let prefix = &bytes[..bytes.len().min(MALFORMED_PREFIX)];
        return StdoutLine::Malformed {
            line: String::from_utf8_lossy(prefix).into_owned(),
            error: format!("line longer than {} bytes", MAX_LINE),
        };
    }
    if let [rest @ .., b'\r'] = bytes {
        bytes = rest;
    }
    parse_line(&String::from_utf8_lossy(bytes))
}

#[cfg(unix)]
mod unix {
    use std::future::Future;
    use std::io;
    use std::os::unix::process::ExitStatusExt;
    use std::pin::pin;
    use std::process::{ExitStatus, Stdio};
    use std::time::{Duration, Instant};

    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::process::{Child, ChildStdin, Command};
    use tokio_util::sync::CancellationToken;

    use super::{
        ChildEnd, ChildEnv, ChildReport, ChildSpec, MALFORMED_PREFIX, MAX_LINE, PIPE_GRACE, STDERR_TAIL, StdoutLine,
        finish_line, tail_text,
    };

    /// Why the wait for the child stopped.
    enum Stop {
        Exited(ExitStatus),
        TimedOut,
        Cancelled,
    }

    pub(super) async fn supervise(
        spec: ChildSpec,
        timeout: Duration,
        cancel: &CancellationToken,
        mut on_line: impl FnMut(StdoutLine) + Send,
    ) -> io::Result<ChildReport> {
        let started = Instant::now();
        let mut child = spawn(&spec)?;
        let pgid = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
        let stdin_task = child.stdin.take().map(|pipe| tokio::spawn(write_stdin(pipe, spec.stdin)));
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(io::Error::other("the child's stdout or stderr pipe is missing"));
        };

        let mut stderr_buf = Vec::new();
        let outcome = {
            let mut out = pin!(read_stdout(stdout, &mut on_line));
            let mut err = pin!(read_stderr(stderr, &mut stderr_buf));
            let mut pipes = Pipes { out_done: false, err_done: false };
            let stop = wait_for_end(&mut child, timeout, cancel, &mut out, &mut err, &mut pipes).await;
            let stop = match stop {
                Ok(Stop::Exited(status)) => Ok((Stop::Exited(status), started.elapsed())),
                Ok(other) => {
                    kill_group(pgid);
                    child.wait().await.map(|_| (other, started.elapsed()))
                }
                Err(e) => {
                    kill_group(pgid);
                    Err(e)
                }
            };
            drain(&mut out, &mut err, &mut pipes).await;
            stop
        };
        if let Some(task) = stdin_task {
            task.abort();
        }
        let (stop, elapsed) = outcome?;
        let end = match stop {
            Stop::Exited(status) => child_end(status),
            Stop::TimedOut => ChildEnd::TimedOut(timeout),
            Stop::Cancelled => ChildEnd::Cancelled,
        };
        Ok(ChildReport { end, stderr_tail: tail_text(&stderr_buf), elapsed })
    }

    fn spawn(spec: &ChildSpec) -> io::Result<Child> {
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        match &spec.env {
            ChildEnv::Inherit { set } => {
                command.envs(set.iter().map(|(k, v)| (k, v)));
            }
            ChildEnv::Clear { set } => {
                command.env_clear().envs(set.iter().map(|(k, v)| (k, v)));
            }
        }
        if let Some(cwd) = &spec.cwd {
            command.current_dir(cwd);
        }
        command.spawn().map_err(|e| {
            let mut message = format!("cannot start `{}`: {e}", spec.program.display());
            if let Some(cwd) = &spec.cwd {
                message.push_str(&format!(" (in directory {})", cwd.display()));
            }
            io::Error::new(e.kind(), message)
        })
    }

    /// Which pipes have reached their end (or failed).
    struct Pipes {
        out_done: bool,
        err_done: bool,
    }

    /// Reads the pipes while waiting for the child to exit, the timeout or `cancel`.
    async fn wait_for_end(
        child: &mut Child,
        timeout: Duration,
        cancel: &CancellationToken,
        out: &mut (impl Future<Output = io::Result<()>> + Unpin),
        err: &mut (impl Future<Output = io::Result<()>> + Unpin),
        pipes: &mut Pipes,
    ) -> io::Result<Stop> {
        let mut wait = pin!(child.wait());
        let mut deadline = pin!(tokio::time::sleep(timeout));
        loop {
            tokio::select! {
                biased;
                status = &mut wait => return status.map(Stop::Exited),
                () = cancel.cancelled() => return Ok(Stop::Cancelled),
                () = &mut deadline => return Ok(Stop::TimedOut),
                r = &mut *out, if !pipes.out_done => {
                    pipes.out_done = true;
                    log_pipe_error("stdout", r);
                }
                r = &mut *err, if !pipes.err_done => {
                    pipes.err_done = true;
                    log_pipe_error("stderr", r);
                }
            }
        }
    }

    /// Finishes reading both pipes, for at most [`PIPE_GRACE`]: a process the child left
    /// behind may hold them open.
    async fn drain(
        out: &mut (impl Future<Output = io::Result<()>> + Unpin),
        err: &mut (impl Future<Output = io::Result<()>> + Unpin),
        pipes: &mut Pipes,
    ) {
        let mut grace = pin!(tokio::time::sleep(PIPE_GRACE));
        while !(pipes.out_done && pipes.err_done) {
            tokio::select! {
                r = &mut *out, if !pipes.out_done => {
                    pipes.out_done = true;
                    log_pipe_error("stdout", r);
                }
                r = &mut *err, if !pipes.err_done => {
                    pipes.err_done = true;
                    log_pipe_error("stderr", r);
                }
                () = &mut grace => {
                    tracing::debug!("stopped reading the child's pipes: still open {PIPE_GRACE:?} after it ended");
                    return;
                }
            }
        }
    }

    fn log_pipe_error(pipe: &str, result: io::Result<()>) {
        if let Err(e) = result {
            tracing::warn!("reading the child's {pipe} failed: {e}");
        }
    }

    fn kill_group(pgid: Option<Pid>) {
        let Some(pgid) = pgid else { return };
        // ESRCH: the group is already gone, which is what we want.
        match killpg(pgid, Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => tracing::warn!("cannot kill process group {pgid}: {e}"),
        }
    }

    fn child_end(status: ExitStatus) -> ChildEnd {
        if let Some(code) = status.code() {
            return ChildEnd::Exited { code };
        }
        match status.signal() {
            Some(signal) => ChildEnd::Signalled { signal, name: signal_name(signal) },
            // `wait` reports only exits and deaths by signal; keep something truthful anyway.
            None => ChildEnd::Exited { code: status.into_raw() },
        }
    }

    fn signal_name(signal: i32) -> String {
        match Signal::try_from(signal) {
            Ok(s) => s.as_str().to_owned(),
            Err(_) => format!("signal {signal}"),
        }
    }

    async fn write_stdin(mut pipe: ChildStdin, data: Vec<u8>) {
        match pipe.write_all(&data).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            Err(e) => tracing::debug!("writing the child's stdin failed: {e}"),
        }
        // Dropping `pipe` closes stdin.
    }

    /// Reads stdout line by line, handing each line to `on_line` as soon as it is complete.
    async fn read_stdout(pipe: impl AsyncRead + Unpin, on_line: &mut impl FnMut(StdoutLine)) -> io::Result<()> {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        let mut too_long = false;
        loop {
            let buf = reader.fill_buf().await?;
            if buf.is_empty() {
                if !line.is_empty() || too_long {
                    on_line(finish_line(&line, too_long));
                }
                return Ok(());
            }
            let (chunk, used, complete) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], i + 1, true),
                None => (buf, buf.len(), false),
            };
            if line.len() + chunk.len() > MAX_LINE {
                too_long = true;
            }
            // An overlong line keeps only what `Malformed` shows.
            let room = if too_long { MALFORMED_PREFIX } else { MAX_LINE };
            let take = chunk.len().min(room.saturating_sub(line.len()));
            line.extend_from_slice(&chunk[..take]);
            reader.consume(used);
            if complete {
                on_line(finish_line(&line, too_long));
                line.clear();
                too_long = false;
            }
        }
    }

    /// Reads stderr into `buf`, keeping at least the last [`STDERR_TAIL`] bytes.
    async fn read_stderr(mut pipe: impl AsyncRead + Unpin, buf: &mut Vec<u8>) -> io::Result<()> {
        let mut chunk = [0u8; 8192];
        loop {
            let n = pipe.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > 4 * STDERR_TAIL {
                buf.drain(..buf.len() - STDERR_TAIL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_parse_round_trips() {
        let messages = [
            ChildMessage::Progress { percent: 40, message: "resizing".into() },
            ChildMessage::Result(serde_json::json!({"resized": 12, "names": ["a", "b"]})),
            ChildMessage::Error { message: "bucket not found".into(), fatal: true },
        ];
        for message in messages {
            let line = encode(&message);
            assert!(line.starts_with(MARKER));
            assert!(!line.contains('\n'));
            assert_eq!(parse_line(&line), StdoutLine::Message(message));
        }
    }

    #[test]
    fn messages_are_externally_tagged_in_camel_case() {
        let line = encode(&ChildMessage::Progress { percent: 5, message: "m".into() });
        assert_eq!(line, r#"@netscript {"progress":{"percent":5,"message":"m"}}"#);
        assert_eq!(encode(&ChildMessage::Result(serde_json::json!(3))), r#"@netscript {"result":3}"#);
        assert_eq!(
            parse_line(r#"@netscript {"error": {"message": "no"}}"#),
            StdoutLine::Message(ChildMessage::Error { message: "no".into(), fatal: false })
        );
    }

    #[test]
    fn lines_without_the_marker_are_output() {
        assert_eq!(parse_line("hello"), StdoutLine::Output("hello".into()));
        assert_eq!(parse_line(""), StdoutLine::Output(String::new()));
        // The marker needs its space.
        assert_eq!(parse_line(r#"@netscript{"result":1}"#), StdoutLine::Output(r#"@netscript{"result":1}"#.into()));
        assert_eq!(parse_line(r#" @netscript {"result":1}"#), StdoutLine::Output(r#" @netscript {"result":1}"#.into()));
    }

    #[test]
    fn marker_with_bad_json_is_malformed() {
        for line in ["@netscript {bad", "@netscript ", r#"@netscript {"shout": 1}"#, r#"@netscript {"progress": {}}"#] {
            match parse_line(line) {
                StdoutLine::Malformed { line: l, error } => {
                    assert_eq!(l, line);
                    assert!(error.contains("@netscript"), "{error}");
                }
                other => panic!("{line:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn finish_line_drops_carriage_return_and_truncates_overlong_lines() {
        assert_eq!(finish_line(b"hi\r", false), StdoutLine::Output("hi".into()));
        assert_eq!(finish_line(&[b'h', 0xFF], false), StdoutLine::Output("h\u{FFFD}".into()));
        let long = vec![b'x'; 300];
        match finish_line(&long, true) {
            StdoutLine::Malformed { line, error } => {
                assert_eq!(line, "x".repeat(200));
                assert!(error.contains("longer than"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tail_keeps_the_last_4_kib_from_a_char_boundary() {
        assert_eq!(tail_text(b"short"), "short");
        let mut bytes = vec![b'a'; 5000];
        bytes.extend_from_slice(b"END");
        let tail = tail_text(&bytes);
        assert_eq!(tail.len(), STDERR_TAIL);
        assert!(tail.ends_with("aEND"));
        // 'é' is 2 bytes: a cut inside one skips its second byte.
        let text = format!("{}x", "é".repeat(2048));
        let tail = tail_text(text.as_bytes());
        assert_eq!(tail, format!("{}x", "é".repeat(2047)));
        // '€' is 3 bytes.
        let text = "€".repeat(2000);
        let tail = tail_text(text.as_bytes());
        assert_eq!(tail, "€".repeat(STDERR_TAIL / 3));
    }

    #[test]
    fn child_end_reads_well() {
        assert!(ChildEnd::Exited { code: 0 }.success());
        assert!(!ChildEnd::Exited { code: 3 }.success());
        assert!(!ChildEnd::Cancelled.success());
        assert_eq!(ChildEnd::Exited { code: 3 }.to_string(), "exited with status 3");
        let abort = ChildEnd::Signalled { signal: 6, name: "SIGABRT".into() };
        assert_eq!(abort.to_string(), "killed by signal SIGABRT (6)");
        assert_eq!(ChildEnd::TimedOut(Duration::from_secs(2)).to_string(), "timed out after 2s");
        assert_eq!(ChildEnd::Cancelled.to_string(), "cancelled");
    }
}
