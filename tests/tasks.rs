//! Polyglot tasks on a runtime, with real `python3` and `sh` children: enqueued by id like a
//! job, run by the workers (also under the subprocess runner, which runs them without a second
//! child), retried with their own policy, cancelled, listed by the API and the CLI, and read
//! from versioned manifests whose errors name the file and the field.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use netscript::tasks::{TaskDefinition, TaskRuntime, define_task};
use netscript::{
    EnqueueOptions, ExecutionId, ExecutionRecord, ExecutionStatus, QueueProvider, RunnerMode, Runtime, StartupError,
};

/// Doubles `n` from its payload, reporting progress on the way.
fn double() -> TaskDefinition {
    define_task("double")
        .runtime(TaskRuntime::Python)
        .entrypoint("-c")
        .args([r#"import json, sys
n = json.loads(sys.stdin.readline())["n"]
print('@netscript {"progress": {"percent": 50, "message": "thinking"}}', flush=True)
print('@netscript ' + json.dumps({"result": {"doubled": 2 * n}}))"#])
        .timeout(Duration::from_secs(20))
        .priority(70)
        .build()
        .unwrap()
}

/// Fails every time, with a word on stderr; retried once.
fn broken() -> TaskDefinition {
    define_task("broken")
        .runtime(TaskRuntime::Shell)
        .entrypoint("echo 'the disk is full' >&2; exit 4")
        .retry(1)
        .retry_delay(Duration::from_millis(50))
        .build()
        .unwrap()
}

/// Runs until killed.
fn forever() -> TaskDefinition {
    define_task("forever").runtime(TaskRuntime::Shell).entrypoint("sleep 60").build().unwrap()
}

async fn runtime(runner: RunnerMode) -> Runtime {
    Runtime::builder()
        .ignore_env()
        .provider(QueueProvider::Memory)
        .configure(|c| c.runner = runner)
        .task_manifests(None)
        .task(double())
        .task(broken())
        .task(forever())
        .build()
        .await
        .unwrap()
}

async fn finish(rt: &Runtime, id: ExecutionId) -> ExecutionRecord {
    rt.wait_for(id, Duration::from_secs(30)).await.unwrap().filter(|r| r.status.is_final()).expect("it ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_like_jobs_on_every_runner() {
    for runner in [RunnerMode::InProcess, RunnerMode::ThreadPool, RunnerMode::Subprocess] {
        let rt = runtime(runner).await;
        let workers = rt.spawn_workers();

        let id = rt.enqueue_json("double", serde_json::json!({"n": 21}), EnqueueOptions::default()).await.unwrap();
        let record = finish(&rt, id.execution_id).await;
        assert_eq!(record.status, ExecutionStatus::Succeeded, "{runner:?}: {record:?}");
        assert_eq!(record.result, Some(serde_json::json!({"doubled": 42})));
        assert_eq!(record.progress.as_ref().map(|p| p.percent), Some(50), "{runner:?}: progress relayed");

        let id = rt.enqueue_json("broken", serde_json::Value::Null, EnqueueOptions::default()).await.unwrap();
        let record = finish(&rt, id.execution_id).await;
        assert_eq!((record.status, record.attempts.len()), (ExecutionStatus::Dead, 2), "{runner:?}: {record:?}");
        assert_eq!(record.error.as_deref(), Some("exited with status 4; stderr: the disk is full"));

        workers.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_task_has_its_process_killed() {
    let rt = runtime(RunnerMode::InProcess).await;
    let workers = rt.spawn_workers();
    let id = rt.enqueue_json("forever", serde_json::Value::Null, EnqueueOptions::default()).await.unwrap().execution_id;
    for _ in 0..500 {
        if rt.store().get(id).await.unwrap().is_some_and(|r| r.status == ExecutionStatus::Running) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = std::time::Instant::now();
    rt.cancel(id).await.unwrap();
    let record = finish(&rt, id).await;
    assert_eq!(record.status, ExecutionStatus::Cancelled, "{record:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "the 60 s child was killed, not waited for");
    workers.stop().await;
}

#[tokio::test]
async fn a_tasks_priority_is_the_default_of_its_enqueues() {
    let rt = runtime(RunnerMode::InProcess).await;
    for (options, expected) in
        [(EnqueueOptions::default(), 70), (EnqueueOptions { priority: 5, ..Default::default() }, 5)]
    {
        rt.enqueue_json("double", serde_json::json!({"n": 1}), options).await.unwrap();
        let claimed = rt
            .queue()
            .claim(netscript::queue::ClaimRequest { topics: vec![], max: 1, lease: Duration::from_secs(30) })
            .await
            .unwrap();
        assert_eq!(claimed[0].priority, expected);
    }
}

#[tokio::test]
async fn the_api_and_the_cli_list_tasks_with_env_names_only() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let secret = define_task("with-secret")
        .runtime(TaskRuntime::Executable)
        .entrypoint("/bin/true")
        .env("API_KEY", "s3cr3t")
        .build()
        .unwrap();
    let rt = Runtime::builder()
        .ignore_env()
        .provider(QueueProvider::Memory)
        .task_manifests(None)
        .task(secret.clone())
        .task(double())
        .build()
        .await
        .unwrap();
    let request = axum::http::Request::get("/api/v1/workers/tasks").body(axum::body::Body::empty()).unwrap();
    let response = netscript::api::router(rt.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(!text.contains("s3cr3t"), "{text}");
    let tasks: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<&str> = tasks.as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["double", "with-secret"]);
    assert_eq!((tasks[1]["runtime"].as_str(), &tasks[1]["env"]), (Some("executable"), &serde_json::json!(["API_KEY"])));
    // Each is a job too: listed with the jobs, and triggered at the job's route.
    assert!(rt.registry().get("with-secret").is_some_and(|j| j.tags.contains(&"task")));

    use clap::Parser as _;
    for args in [&["app", "tasks"][..], &["app", "tasks", "--json"]] {
        let cli = netscript::cli::Cli::try_parse_from(args).unwrap();
        let builder =
            Runtime::builder().ignore_env().provider(QueueProvider::Memory).task_manifests(None).task(secret.clone());
        assert_eq!(netscript::cli::run_cli(builder, cli).await, std::process::ExitCode::SUCCESS);
    }
}

#[tokio::test]
async fn manifests_load_the_highest_version_and_bad_ones_stop_startup() {
    let dir = tempfile::tempdir().unwrap();
    let task = |id: &str| serde_json::json!({ "id": id, "runtime": "shell", "entrypoint": "echo hi" });
    std::fs::write(dir.path().join("v1.2.0.json"), serde_json::json!({ "tasks": [task("new-one")] }).to_string())
        .unwrap();
    std::fs::write(dir.path().join("v1.10.0.json"), serde_json::json!({ "tasks": [task("newest")] }).to_string())
        .unwrap();
    let rt = Runtime::builder()
        .ignore_env()
        .provider(QueueProvider::Memory)
        .task_manifests(Some(dir.path().to_owned()))
        .build()
        .await
        .unwrap();
    let ids: Vec<&str> = rt.tasks().iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["newest"]);

    let bad = serde_json::json!({ "tasks": [{ "id": "slow", "runtime": "shell", "entrypoint": "x", "timeout": "3 parsecs" }] });
    std::fs::write(dir.path().join("v2.0.0.json"), bad.to_string()).unwrap();
    let e = Runtime::builder()
        .ignore_env()
        .provider(QueueProvider::Memory)
        .task_manifests(Some(dir.path().to_owned()))
        .build()
        .await
        .err()
        .unwrap();
    assert!(matches!(e, StartupError::Tasks(_)), "{e}");
    let message = e.to_string();
    assert!(message.contains("v2.0.0.json") && message.contains("tasks[0].timeout"), "{message}");

    // A task may not take a job's id.
    let e = Runtime::builder()
        .ignore_env()
        .provider(QueueProvider::Memory)
        .task_manifests(None)
        .task(double())
        .task(double())
        .build()
        .await
        .err()
        .unwrap();
    assert_eq!(e.to_string(), "tasks: two tasks have the id `double`");
}
