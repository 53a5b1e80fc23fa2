//! Supervised child processes and polyglot tasks, with real processes (`sh`, `python3`).
#![cfg(unix)]
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netscript_runtime::process::{ChildEnd, ChildEnv, ChildMessage, ChildSpec, StdoutLine, supervise};
use tokio_util::sync::CancellationToken;

const LONG: Duration = Duration::from_secs(20);

fn sh(script: &str) -> ChildSpec {
    let mut spec = ChildSpec::new("sh");
    spec.args = vec!["-c".into(), script.into()];
    spec
}

fn python(code: &str) -> ChildSpec {
    let mut spec = ChildSpec::new("python3");
    spec.args = vec!["-c".into(), code.into()];
    spec
}

/// Runs `spec` and collects its stdout lines.
async fn run(spec: ChildSpec, timeout: Duration) -> (netscript_runtime::process::ChildReport, Vec<StdoutLine>) {
    let mut lines = Vec::new();
    let report = supervise(spec, timeout, &CancellationToken::new(), |l| lines.push(l)).await.unwrap();
    (report, lines)
}

fn outputs(lines: &[StdoutLine]) -> Vec<&str> {
    lines
        .iter()
        .filter_map(|l| match l {
            StdoutLine::Output(s) => Some(s.as_str()),
            _ => None,
        })
        .collect()
}

/// The absolute path of `program`, found in `PATH`.
fn which(program: &str) -> PathBuf {
    find_in_path(program).unwrap()
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet: it runs no more).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesized command name.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

async fn wait_gone(pid: i32) -> bool {
    for _ in 0..50 {
        if process_gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    false
}

#[tokio::test]
async fn exit_status_is_reported() {
    let (report, lines) = run(sh("echo hi; echo oops >&2; exit 3"), LONG).await;
    assert_eq!(report.end, ChildEnd::Exited { code: 3 });
    assert!(!report.end.success());
    assert_eq!(report.end.to_string(), "exited with status 3");
    assert_eq!(outputs(&lines), ["hi"]);
    assert_eq!(report.stderr_tail, "oops\n");

    let (report, _) = run(sh("exit 0"), LONG).await;
    assert!(report.end.success());
}

#[tokio::test]
async fn death_by_signal_is_named() {
    let (report, _) = run(python("import os; os.abort()"), LONG).await;
    assert_eq!(report.end, ChildEnd::Signalled { signal: 6, name: "SIGABRT".into() });
    assert_eq!(report.end.to_string(), "killed by signal SIGABRT (6)");
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let mut pids = Vec::new();
    let started = Instant::now();
    let report =
        supervise(sh("sleep 30 & echo $!; sleep 30"), Duration::from_millis(500), &CancellationToken::new(), |l| {
            if let StdoutLine::Output(s) = l {
                pids.push(s.parse::<i32>().unwrap());
            }
        })
        .await
        .unwrap();
    assert_eq!(report.end, ChildEnd::TimedOut(Duration::from_millis(500)));
    assert_eq!(report.end.to_string(), "timed out after 500ms");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let [grandchild] = pids[..] else { panic!("expected the grandchild's pid, got {pids:?}") };
    assert!(wait_gone(grandchild).await, "grandchild {grandchild} still runs");
}

#[tokio::test]
async fn cancel_kills_the_child() {
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        trigger.cancel();
    });
    let started = Instant::now();
    let mut pids = Vec::new();
    let report = supervise(sh("sleep 30 & echo $!; sleep 30"), LONG, &cancel, |l| {
        if let StdoutLine::Output(s) = l {
            pids.push(s.parse::<i32>().unwrap());
        }
    })
    .await
    .unwrap();
    assert_eq!(report.end, ChildEnd::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(wait_gone(pids[0]).await);
}

#[tokio::test]
async fn stderr_tail_is_the_last_4_kib() {
    let code = "import sys; sys.stderr.write('a' * 6000 + 'b' * 4000 + 'END'); sys.stderr.flush()";
    let (report, _) = run(python(code), LONG).await;
    assert_eq!(report.stderr_tail, format!("{}{}END", "a".repeat(93), "b".repeat(4000)));
}

#[tokio::test]
async fn garbage_on_stdout_is_output_or_malformed_and_the_run_ends_normally() {
    let code = r#"
import sys
out = sys.stdout.buffer
out.write(b"plain\n")
out.write(b"@netscript {not json\n")
out.write(b'@netscript {"progress": {"percent": 50, "message": "half"}}\r\n')
out.write(b"\xff\xfe bytes\n")
out.write(b"x" * (2 * 1024 * 1024) + b"\n")
out.write(b'@netscript {"result": [1, 2]}\n')
out.write(b"no newline at the end")
"#;
    let (report, lines) = run(python(code), LONG).await;
    assert!(report.end.success(), "{}: {}", report.end, report.stderr_tail);
    assert_eq!(lines.len(), 7, "{lines:?}");
    assert_eq!(lines[0], StdoutLine::Output("plain".into()));
    assert!(matches!(&lines[1], StdoutLine::Malformed { line, .. } if line == "@netscript {not json"));
    assert_eq!(lines[2], StdoutLine::Message(ChildMessage::Progress { percent: 50, message: "half".into() }));
    assert_eq!(lines[3], StdoutLine::Output("\u{FFFD}\u{FFFD} bytes".into()));
    match &lines[4] {
        StdoutLine::Malformed { line, error } => {
            assert_eq!(line, &"x".repeat(200));
            assert!(error.contains("longer than"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(lines[5], StdoutLine::Message(ChildMessage::Result(serde_json::json!([1, 2]))));
    assert_eq!(lines[6], StdoutLine::Output("no newline at the end".into()));
}

#[tokio::test]
async fn lines_arrive_while_the_child_runs() {
    let started = Instant::now();
    let mut first_line_at = None;
    let report = supervise(sh("echo early; sleep 1"), LONG, &CancellationToken::new(), |_| {
        first_line_at.get_or_insert(started.elapsed());
    })
    .await
    .unwrap();
    assert!(report.end.success());
    let first = first_line_at.unwrap();
    assert!(first + Duration::from_millis(500) < report.elapsed, "line at {first:?}, end at {:?}", report.elapsed);
}

#[tokio::test]
async fn missing_program_is_an_error_naming_it() {
    let spec = ChildSpec::new("netscript-no-such-program");
    let err = supervise(spec, LONG, &CancellationToken::new(), |_| {}).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("netscript-no-such-program"), "{err}");
}

#[tokio::test]
async fn clear_env_really_clears() {
    let mut spec = ChildSpec::new(which("env"));
    spec.env = ChildEnv::Clear { set: vec![("ONLY".into(), "this".into())] };
    let (report, lines) = run(spec, LONG).await;
    assert!(report.end.success());
    assert_eq!(outputs(&lines), ["ONLY=this"]);
}

#[tokio::test]
async fn inherit_env_adds_to_the_parents() {
    let mut spec = ChildSpec::new(which("env"));
    spec.env = ChildEnv::Inherit { set: vec![("NETSCRIPT_TEST_ADDED".into(), "yes".into())] };
    let (_, lines) = run(spec, LONG).await;
    let out = outputs(&lines);
    assert!(out.contains(&"NETSCRIPT_TEST_ADDED=yes"));
    let path = std::env::var("PATH").unwrap();
    assert!(out.contains(&format!("PATH={path}").as_str()));
}

#[tokio::test]
async fn stdin_is_written_then_closed_and_cwd_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = sh("cat; pwd");
    spec.stdin = b"from stdin\n".to_vec();
    spec.cwd = Some(dir.path().to_owned());
    let (report, lines) = run(spec, LONG).await;
    assert!(report.end.success());
    let cwd = dir.path().canonicalize().unwrap();
    assert_eq!(outputs(&lines), ["from stdin", cwd.to_str().unwrap()]);
}

#[tokio::test]
async fn a_child_that_ignores_stdin_does_not_block() {
    let mut spec = sh("exit 0");
    spec.stdin = vec![b'x'; 4 * 1024 * 1024];
    let (report, _) = run(spec, Duration::from_secs(5)).await;
    assert!(report.end.success(), "{}", report.end);
}

#[tokio::test]
async fn a_leftover_grandchild_holding_stdout_does_not_hold_us() {
    let started = Instant::now();
    let (report, lines) = run(sh("sleep 5 & echo $!; echo done"), LONG).await;
    assert!(report.end.success());
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    let out = outputs(&lines);
    assert_eq!(out[1], "done");
    // Only timeout and cancel kill the group; clean up by hand.
    let pid = nix::unistd::Pid::from_raw(out[0].parse().unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
}

#[test]
fn supervise_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let cancel = CancellationToken::new();
    let shared = Arc::new(Mutex::new(Vec::new()));
    let future = supervise(ChildSpec::new("true"), LONG, &cancel, move |l| shared.lock().unwrap().push(l));
    assert_send(&future);
}

// ---- polyglot tasks ----

mod tasks {
    use std::path::Path;
    use std::time::Duration;

    use netscript_runtime::tasks::{
        ManifestError, Permissions, TaskDefinition, TaskInput, TaskOutcome, TaskRuntime, define_task, load_manifests,
        parse_manifest, run_task,
    };
    use serde_json::{Value, json};
    use tokio_util::sync::CancellationToken;

    fn input(payload: Value) -> TaskInput {
        TaskInput {
            payload,
            execution_id: "exec-1".into(),
            attempt: 2,
            max_attempts: 3,
            correlation_id: "corr-1".into(),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: None,
        }
    }

    /// Writes `code` as `<dir>/<name>`.
    fn script(dir: &Path, name: &str, code: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, code).unwrap();
        path.to_str().unwrap().to_owned()
    }

    async fn run(def: &TaskDefinition, payload: Value) -> TaskOutcome {
        run_task(def, input(payload), &CancellationToken::new(), |_, _| {}).await
    }

    #[tokio::test]
    async fn python_task_reads_its_payload_and_returns_a_result() {
        let dir = tempfile::tempdir().unwrap();
        let entry = script(
            dir.path(),
            "sum.py",
            r#"
import json, os, sys
payload = json.loads(sys.stdin.readline())
print("adding", len(payload["numbers"]), "numbers")
env = {k: os.environ.get(k) for k in ["NETSCRIPT_EXECUTION_ID", "NETSCRIPT_JOB_ID", "NETSCRIPT_ATTEMPT",
    "NETSCRIPT_MAX_ATTEMPTS", "NETSCRIPT_CORRELATION_ID", "TRACEPARENT", "TRACESTATE"]}
print("@netscript " + json.dumps({"result": {"sum": sum(payload["numbers"]), "env": env, "rest": sys.stdin.read()}}))
print("trailing plain output")
"#,
        );
        let def = define_task("sum-numbers").runtime(TaskRuntime::Python).entrypoint(entry).build().unwrap();
        let outcome = run(&def, json!({"numbers": [1, 2, 3.5]})).await;
        assert_eq!(
            outcome,
            TaskOutcome::Succeeded(json!({
                "sum": 6.5,
                "env": {
                    "NETSCRIPT_EXECUTION_ID": "exec-1",
                    "NETSCRIPT_JOB_ID": "sum-numbers",
                    "NETSCRIPT_ATTEMPT": "2",
                    "NETSCRIPT_MAX_ATTEMPTS": "3",
                    "NETSCRIPT_CORRELATION_ID": "corr-1",
                    "TRACEPARENT": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    "TRACESTATE": null,
                },
                "rest": "",
            }))
        );
    }

    #[tokio::test]
    async fn python_task_reports_progress() {
        let dir = tempfile::tempdir().unwrap();
        let entry = script(
            dir.path(),
            "steps.py",
            r#"
import json
for i in (1, 2, 3):
    print("@netscript " + json.dumps({"progress": {"percent": i * 33, "message": f"step {i}"}}), flush=True)
print("@netscript not json")
print(json.dumps({"steps": 3}))
"#,
        );
        let def = define_task("steps").runtime(TaskRuntime::Python).entrypoint(entry).build().unwrap();
        let mut progress = Vec::new();
        let outcome = run_task(&def, input(Value::Null), &CancellationToken::new(), |p, m| progress.push((p, m))).await;
        // No `result` message: the last plain line, which is JSON.
        assert_eq!(outcome, TaskOutcome::Succeeded(json!({"steps": 3})));
        assert_eq!(progress, [(33, "step 1".to_owned()), (66, "step 2".to_owned()), (99, "step 3".to_owned())]);
    }

    #[tokio::test]
    async fn shell_task_gets_its_args_as_positional_parameters() {
        let def = define_task("greet")
            .runtime(TaskRuntime::Shell)
            .entrypoint(r#"printf '{"first": "%s", "second": "%s", "count": %s}\n' "$1" "$2" "$#""#)
            .args(["a b", "$HOME; rm -rf /"])
            .build()
            .unwrap();
        assert_eq!(
            run(&def, Value::Null).await,
            TaskOutcome::Succeeded(json!({"first": "a b", "second": "$HOME; rm -rf /", "count": 2}))
        );
        // Plain output that is not JSON gives null.
        let def = define_task("hello").runtime(TaskRuntime::Shell).entrypoint("echo hello").build().unwrap();
        assert_eq!(run(&def, Value::Null).await, TaskOutcome::Succeeded(Value::Null));
    }

    #[tokio::test]
    async fn non_zero_exit_fails_with_the_stderr_tail() {
        let dir = tempfile::tempdir().unwrap();
        let entry = script(dir.path(), "fail.py", "print('partial')\nraise ValueError('bad row 7')\n");
        let def = define_task("fail").runtime(TaskRuntime::Python).entrypoint(entry).build().unwrap();
        let TaskOutcome::Failed { message, fatal } = run(&def, Value::Null).await else { panic!("expected a failure") };
        assert!(!fatal);
        assert!(message.starts_with("exited with status 1; stderr: Traceback"), "{message}");
        assert!(message.ends_with("ValueError: bad row 7"), "{message}");
    }

    #[tokio::test]
    async fn an_error_message_fails_even_with_exit_status_0() {
        let def = define_task("refuse")
            .runtime(TaskRuntime::Shell)
            .entrypoint(r#"echo '@netscript {"result": 1}'; echo '@netscript {"error": {"message": "no such customer", "fatal": true}}'"#)
            .build()
            .unwrap();
        assert_eq!(
            run(&def, Value::Null).await,
            TaskOutcome::Failed { message: "no such customer".into(), fatal: true }
        );
    }

    #[tokio::test]
    async fn a_task_past_its_timeout_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let entry = script(dir.path(), "slow.py", "import time\ntime.sleep(30)\n");
        let timeout = Duration::from_millis(300);
        let def = define_task("slow").runtime(TaskRuntime::Python).entrypoint(entry).timeout(timeout).build().unwrap();
        let started = std::time::Instant::now();
        assert_eq!(run(&def, Value::Null).await, TaskOutcome::TimedOut(timeout));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_cancelled_task_is_killed() {
        let def = define_task("wait").runtime(TaskRuntime::Shell).entrypoint("sleep 30").build().unwrap();
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            trigger.cancel();
        });
        assert_eq!(run_task(&def, input(Value::Null), &cancel, |_, _| {}).await, TaskOutcome::Cancelled);
    }

    #[tokio::test]
    async fn environment_is_scrubbed_to_the_allowed_variables() {
        // Two variables of the test process that neither the interpreter nor a pyenv shim sets.
        let ours: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| {
                !matches!(k.as_str(), "PATH" | "PWD" | "OLDPWD" | "SHLVL" | "_" | "LC_CTYPE")
                    && !k.starts_with("PYENV")
                    && !k.starts_with("_PYENV")
                    && !k.starts_with("NETSCRIPT")
                    && !k.starts_with("PYTHON")
            })
            .take(2)
            .collect();
        let [(allowed, allowed_value), (denied, _)] = &ours[..] else {
            panic!("the test needs two variables: {ours:?}")
        };
        let dir = tempfile::tempdir().unwrap();
        let entry = script(dir.path(), "env.py", "import json, os\nprint(json.dumps(dict(os.environ)))\n");
        let def = define_task("show-env")
            .runtime(TaskRuntime::Python)
            .entrypoint(entry)
            .env_allow([allowed.as_str(), "NETSCRIPT_TEST_NOT_SET_ANYWHERE"])
            .env("GREETING", "hello")
            .build()
            .unwrap();
        let TaskOutcome::Succeeded(Value::Object(env)) = run(&def, Value::Null).await else { panic!("no env") };
        assert_eq!(env.get(allowed), Some(&json!(allowed_value)), "{env:?}");
        assert_eq!(env.get("GREETING"), Some(&json!("hello")));
        assert_eq!(env.get("NETSCRIPT_JOB_ID"), Some(&json!("show-env")));
        assert!(!env.contains_key(denied), "{denied} leaked: {env:?}");
        assert!(!env.contains_key("NETSCRIPT_TEST_NOT_SET_ANYWHERE"));
        if std::env::var_os("HOME").is_some() && allowed != "HOME" {
            assert!(!env.contains_key("HOME"));
        }
    }

    #[tokio::test]
    async fn cwd_is_honoured_and_relative_entrypoints_resolve_in_it() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "where.py", "import json, os\nprint(json.dumps(os.getcwd()))\n");
        let def =
            define_task("where").runtime(TaskRuntime::Python).entrypoint("where.py").cwd(dir.path()).build().unwrap();
        let cwd = dir.path().canonicalize().unwrap();
        assert_eq!(run(&def, Value::Null).await, TaskOutcome::Succeeded(json!(cwd.to_str().unwrap())));

        // An executable named by a relative path is found in the task's directory too.
        let exe = dir.path().join("run.sh");
        std::fs::write(&exe, "#!/bin/sh\necho \"[\\\"$1\\\"]\"\n").unwrap();
        let mut perms = std::fs::metadata(&exe).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&exe, perms).unwrap();
        let def = define_task("exe")
            .runtime(TaskRuntime::Executable)
            .entrypoint("./run.sh")
            .args(["x"])
            .cwd(dir.path())
            .build()
            .unwrap();
        assert_eq!(run(&def, Value::Null).await, TaskOutcome::Succeeded(json!(["x"])));
    }

    #[tokio::test]
    async fn a_program_that_does_not_start_fails_naming_it() {
        let def = define_task("ghost")
            .runtime(TaskRuntime::Executable)
            .entrypoint("/nonexistent/ghost-task")
            .build()
            .unwrap();
        let TaskOutcome::Failed { message, fatal } = run(&def, Value::Null).await else { panic!("expected a failure") };
        assert!(!fatal);
        assert!(message.contains("/nonexistent/ghost-task"), "{message}");
    }

    #[tokio::test]
    async fn deno_command_line_and_run() {
        let dir = tempfile::tempdir().unwrap();
        let entry = script(
            dir.path(),
            "main.ts",
            r#"
const text = new TextDecoder().decode(await new Response(Deno.stdin.readable).arrayBuffer());
const payload = JSON.parse(text);
console.log("@netscript " + JSON.stringify({ result: { doubled: payload.n * 2 } }));
"#,
        );
        let def = define_task("double")
            .runtime(TaskRuntime::Deno)
            .entrypoint(&entry)
            .permissions(Permissions::read_only())
            .args(["--verbose"])
            .build()
            .unwrap();
        let (program, args) = def.command();
        assert_eq!(program, Path::new("deno"));
        assert_eq!(args, ["run", "--allow-read", entry.as_str(), "--verbose"].map(std::ffi::OsString::from));
        let spec = def.child_spec(&input(json!({"n": 21})));
        assert!(matches!(spec.env, netscript_runtime::process::ChildEnv::Inherit { .. }));

        if super::find_in_path("deno").is_none() {
            println!("note: `deno` is not installed; skipped running the deno task");
            return;
        }
        assert_eq!(run(&def, json!({"n": 21})).await, TaskOutcome::Succeeded(json!({"doubled": 42})));
    }

    // ---- manifests ----

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn manifest_error(text: &str) -> (String, String) {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "v1.2.0.json", text);
        let err = load_manifests(dir.path()).unwrap_err();
        let file = dir.path().join("v1.2.0.json").display().to_string();
        let message = err.to_string();
        let rest =
            message.strip_prefix(&format!("{file}: ")).unwrap_or_else(|| panic!("{message} does not name {file}"));
        (rest.to_owned(), format!("{err:?}"))
    }

    fn one_task(fields: &str) -> String {
        format!(
            r#"{{"tasks": [{{"id": "a", "runtime": "python", "entrypoint": "a.py"}}, {{"id": "b", "runtime": "shell", "entrypoint": "true"{fields}}}]}}"#
        )
    }

    #[test]
    fn a_missing_manifest_directory_has_no_tasks() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_manifests(&dir.path().join("workers/runtime/tasks")).unwrap().is_empty());
        write(dir.path(), "README.md", "not a manifest");
        assert!(load_manifests(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn the_highest_version_wins() {
        let dir = tempfile::tempdir().unwrap();
        for (name, id) in [("v1.2.0.json", "one-two"), ("v1.10.0.json", "one-ten"), ("v1.9.9.json", "one-nine")] {
            write(
                dir.path(),
                name,
                &format!(r#"{{"tasks": [{{"id": "{id}", "runtime": "python", "entrypoint": "x.py"}}]}}"#),
            );
        }
        write(
            dir.path(),
            "v2.0.0-rc.1.json",
            r#"{"tasks": [{"id": "rc", "runtime": "python", "entrypoint": "x.py"}]}"#,
        );
        write(dir.path(), "vnext.json", "ignored: not a version");
        write(dir.path(), "tasks.json", "ignored");
        let tasks = load_manifests(dir.path()).unwrap();
        let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["rc"]);
        std::fs::remove_file(dir.path().join("v2.0.0-rc.1.json")).unwrap();
        let tasks = load_manifests(dir.path()).unwrap();
        assert_eq!(tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["one-ten"]);
    }

    #[test]
    fn every_field_of_a_manifest_is_read() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "v0.1.0.json",
            r#"{"tasks": [{
                "id": "fetch-feeds", "runtime": "deno", "entrypoint": "feeds.ts", "args": ["--all"],
                "timeout": "1m 30s", "retry": 2, "retryDelay": "5s", "maxConcurrency": 4, "priority": 80,
                "permissions": {"net": ["a.com", "b.com"], "read": true},
                "envAllow": ["HOME"], "env": {"MODE": "fast"}, "cwd": "/srv/feeds",
                "topic": "feeds", "description": "Fetches feeds."
            }, {"id": "sum", "runtime": "python", "entrypoint": "sum.py", "permissions": "network"}]}"#,
        );
        let tasks = load_manifests(dir.path()).unwrap();
        let t = &tasks[0];
        assert_eq!((t.id.as_str(), t.runtime, t.entrypoint.as_str()), ("fetch-feeds", TaskRuntime::Deno, "feeds.ts"));
        assert_eq!(t.args, ["--all"]);
        assert_eq!(t.timeout, Duration::from_secs(90));
        assert_eq!((t.retry, t.retry_delay), (2, Duration::from_secs(5)));
        assert_eq!((t.max_concurrency, t.priority), (4, 80));
        assert_eq!(t.permissions.deno_flags(), ["--allow-net=a.com,b.com", "--allow-read"]);
        assert_eq!(t.env_allow, ["HOME"]);
        assert_eq!(t.env, [("MODE".to_owned(), "fast".to_owned())]);
        assert_eq!(t.cwd.as_deref(), Some(Path::new("/srv/feeds")));
        assert_eq!((t.topic.as_str(), t.description.as_deref()), ("feeds", Some("Fetches feeds.")));
        assert_eq!(tasks[1].permissions, Permissions::network());
        assert_eq!(tasks[1].topic, "default");
    }

    #[test]
    fn a_version_like_name_that_is_not_semver_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "v1.2.json", r#"{"tasks": []}"#);
        let err = load_manifests(dir.path()).unwrap_err();
        assert!(matches!(err, ManifestError::Version { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.starts_with(&dir.path().join("v1.2.json").display().to_string()), "{message}");
        assert!(message.contains("not a version such as v1.2.0.json"), "{message}");
    }

    #[test]
    fn manifest_errors_name_the_file_and_the_field() {
        let cases = [
            (one_task(r#", "timeout": "3 parsecs""#), r#"tasks[1].timeout: "3 parsecs" is not a duration such as 30s"#),
            (
                one_task(r#", "timeout": 30"#),
                "tasks[1].timeout: invalid type: integer `30`, expected a duration such as \"30s\"",
            ),
            (one_task(r#", "retryDelay": "soon""#), r#"tasks[1].retryDelay: "soon" is not a duration such as 30s"#),
            (one_task(r#", "timeot": "3s""#), "tasks[1].timeot: unknown field `timeot`"),
            (one_task(r#", "priority": 150"#), "tasks[1].priority: must be 0 to 100, got 150"),
            (one_task(r#", "priority": 300"#), "tasks[1].priority: invalid value: integer `300`, expected u8"),
            (one_task(r#", "maxConcurrency": 0"#), "tasks[1].maxConcurrency: must be at least 1"),
            (one_task(r#", "timeout": "0s""#), "tasks[1].timeout: must be longer than zero"),
            (one_task(r#", "permissions": "sandbox""#), "tasks[1].permissions: unknown permission preset `sandbox`"),
            (
                one_task(r#", "permissions": {"net": "a.com"}"#),
                "tasks[1].permissions.net: invalid type: string \"a.com\", expected true, false or a list of strings",
            ),
            (
                one_task(r#", "permissions": {"network": true}"#),
                "tasks[1].permissions.network: unknown field `network`",
            ),
            (one_task(r#", "env": {"N": 1}"#), "tasks[1].env.N: invalid type: integer `1`, expected a string"),
            (one_task(r#", "entrypoint": """#), "tasks[1]: duplicate field `entrypoint`"),
            (
                r#"{"tasks": [{"id": "a", "runtime": "ruby", "entrypoint": "a.rb"}]}"#.to_owned(),
                "tasks[0].runtime: unknown variant `ruby`, expected one of",
            ),
            (r#"{"tasks": [{"id": "a", "entrypoint": "a.rb"}]}"#.to_owned(), "tasks[0]: missing field `runtime`"),
            (
                r#"{"tasks": [{"id": "Bad_Id", "runtime": "shell", "entrypoint": "true"}]}"#.to_owned(),
                "tasks[0].id: use lowercase letters and digits",
            ),
            (
                r#"{"tasks": [{"id": "a", "runtime": "shell", "entrypoint": "  "}]}"#.to_owned(),
                "tasks[0].entrypoint: must not be empty",
            ),
            (r#"{"task": []}"#.to_owned(), "task: unknown field `task`, expected `tasks`"),
            (r#"{"tasks": []} x"#.to_owned(), "not valid JSON: trailing characters at line 1 column 15"),
            (r#"{"tasks": [}"#.to_owned(), "not valid JSON: expected value at line 1 column 12"),
        ];
        for (text, expected) in cases {
            let (message, debug) = manifest_error(&text);
            assert!(message.starts_with(expected), "{text}\n  gave {message}\n  wanted {expected}...\n  ({debug})");
        }
    }

    #[test]
    fn the_message_reads_file_field_problem() {
        let path = Path::new("workers/runtime/tasks/v1.2.0.json");
        let err = parse_manifest(path, &one_task(r#", "timeout": "3 parsecs""#)).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"workers/runtime/tasks/v1.2.0.json: tasks[1].timeout: "3 parsecs" is not a duration such as 30s"#
        );
        let ManifestError::Field { line, column, .. } = err else { panic!("{err:?}") };
        // Just after the value.
        assert_eq!((line, column), (1, 143));
    }

    #[test]
    fn duplicate_ids_name_both_indexes() {
        let text = r#"{"tasks": [
            {"id": "a", "runtime": "shell", "entrypoint": "true"},
            {"id": "b", "runtime": "shell", "entrypoint": "true"},
            {"id": "a", "runtime": "python", "entrypoint": "a.py"}]}"#;
        let (message, _) = manifest_error(text);
        assert_eq!(message, "tasks[0] and tasks[2] have the same id `a`");
    }
}

/// The path of `program` in `PATH`, if there.
fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}
