//! The command line of an app binary, run in-process on an embedded store that persists
//! between commands: each command's exit code, and that bad input enqueues nothing.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::process::ExitCode;

use clap::Parser as _;
use netscript::cli::{Cli, run_cli};
use netscript::prelude::*;
use netscript::{ExecutionStatus, QueueProvider};

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Greet {
    name: String,
}

/// Greets.
#[job(id = "greet", retries = 0)]
async fn greet(payload: Greet) -> JobResult<String> {
    Ok(format!("hello, {}", payload.name))
}

/// Never works.
#[job(id = "hopeless", retries = 0)]
async fn hopeless() -> JobResult<()> {
    Err(JobError::fatal("no hope"))
}

async fn run(dir: &std::path::Path, args: &[&str]) -> ExitCode {
    let cli = Cli::try_parse_from(std::iter::once("app").chain(args.iter().copied())).unwrap();
    let builder = Runtime::builder().ignore_env().provider(QueueProvider::Embedded).data_dir(dir);
    run_cli(builder, cli).await
}

async fn open(dir: &std::path::Path) -> Runtime {
    Runtime::builder().ignore_env().provider(QueueProvider::Embedded).data_dir(dir).build().await.unwrap()
}

#[tokio::test]
async fn bad_triggers_exit_non_zero_and_enqueue_nothing() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(run(dir.path(), &["trigger", "nope"]).await, ExitCode::FAILURE, "unknown job");
    assert_eq!(run(dir.path(), &["trigger", "greet", "--payload", "{\"nam\":1}"]).await, ExitCode::FAILURE);
    assert_eq!(run(dir.path(), &["trigger", "greet", "--payload", "{not json"]).await, ExitCode::FAILURE);
    assert_eq!(open(dir.path()).await.queue().stats().await.unwrap().ready, 0);
    assert_eq!(run(dir.path(), &["trigger", "greet", "--payload", "{\"name\":\"Ada\"}"]).await, ExitCode::SUCCESS);
    assert_eq!(open(dir.path()).await.queue().stats().await.unwrap().ready, 1);
}

#[tokio::test]
async fn trigger_wait_reports_the_outcome_in_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    // A worker on the same store, as `serve` in another terminal would be.
    let rt = open(dir.path()).await;
    let workers = rt.spawn_workers();
    let ok = run(dir.path(), &["trigger", "greet", "--payload", "{\"name\":\"Ada\"}", "--wait", "--timeout", "20s"]);
    assert_eq!(ok.await, ExitCode::SUCCESS);
    assert_eq!(run(dir.path(), &["trigger", "hopeless", "--wait", "--timeout", "20s"]).await, ExitCode::FAILURE);
    workers.stop().await;

    let dead = rt.queue().dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    let id = dead[0].message.id.to_string();
    for args in [&["executions"][..], &["executions", "--json", "--status", "dead"], &["execution", &id], &["jobs"]] {
        assert_eq!(run(dir.path(), args).await, ExitCode::SUCCESS, "{args:?}");
    }
    assert_eq!(run(dir.path(), &["dead-letters"]).await, ExitCode::SUCCESS);
    assert_eq!(run(dir.path(), &["stats"]).await, ExitCode::SUCCESS);
    assert_eq!(run(dir.path(), &["topics"]).await, ExitCode::SUCCESS);
    assert_eq!(run(dir.path(), &["topics", "--json"]).await, ExitCode::SUCCESS);
    assert_eq!(run(dir.path(), &["redrive", &id]).await, ExitCode::SUCCESS);
    assert_eq!(rt.store().get(dead[0].message.id).await.unwrap().unwrap().status, ExecutionStatus::Queued);
    assert_eq!(run(dir.path(), &["redrive", &id]).await, ExitCode::FAILURE, "no longer a dead letter");
    assert_eq!(run(dir.path(), &["execution", "0191f0a0-0000-7000-8000-000000000000"]).await, ExitCode::FAILURE);
}

#[test]
fn usage_errors_are_refused_by_the_parser() {
    assert!(Cli::try_parse_from(["app", "redrive"]).is_err(), "an id or --all is required");
    assert!(Cli::try_parse_from(["app", "redrive", "--all", "0191f0a0-0000-7000-8000-000000000000"]).is_err());
    assert!(Cli::try_parse_from(["app", "executions", "--status", "weird"]).is_err());
    assert!(Cli::try_parse_from(["app", "trigger", "greet", "--delay", "soon"]).is_err());
}
