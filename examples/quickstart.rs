//! The quickstart: three jobs on the embedded store, served with one command.
//!
//! ```text
//! cargo run --example quickstart -- serve
//! curl -X POST localhost:8091/api/v1/workers/jobs/hello/trigger -d '{"name":"Ada"}'
//! curl -X POST localhost:8091/api/v1/workers/jobs/build-report/trigger -d '{"sections":4}'
//! curl -X POST localhost:8091/api/v1/workers/jobs/flaky/trigger
//! curl 'localhost:8091/api/v1/workers/executions?limit=10'
//! cargo run --example quickstart -- executions
//! ```

use std::process::ExitCode;
use std::time::Duration;

use netscript::prelude::*;

/// Who to greet.
#[derive(Deserialize, JsonSchema)]
struct Hello {
    name: String,
}

/// The greeting.
#[derive(Serialize, JsonSchema)]
struct Greeting {
    message: String,
}

/// Greets someone. Always succeeds.
#[job(id = "hello", timeout = "5s")]
async fn hello(payload: Hello) -> JobResult<Greeting> {
    Ok(Greeting { message: format!("Hello, {}!", payload.name) })
}

/// What to build.
#[derive(Deserialize, JsonSchema)]
struct Report {
    /// How many sections (1 to 20).
    sections: u8,
}

/// The built report.
#[derive(Serialize, JsonSchema)]
struct Built {
    sections: u8,
    pages: u32,
}

/// Builds a report section by section, reporting progress as it goes.
#[job(id = "build-report", timeout = "1m", retries = 1)]
async fn build_report(ctx: JobContext, payload: Report) -> JobResult<Built> {
    if !(1..=20).contains(&payload.sections) {
        return Err(JobError::fatal("sections must be between 1 and 20"));
    }
    let n = payload.sections;
    for section in 1..=n {
        let percent = u8::try_from(u32::from(section) * 100 / u32::from(n)).unwrap_or(100);
        ctx.progress(percent, format!("section {section} of {n}")).await;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(300)) => {}
            () = ctx.cancellation().cancelled() => return Err(JobError::retryable("cancelled")),
        }
    }
    Ok(Built { sections: n, pages: u32::from(n) * 3 })
}

/// Fails on its first attempt and succeeds on the retry: `executions` shows both attempts.
#[job(id = "flaky", retries = 3, backoff = "fixed(1s)")]
async fn flaky(ctx: JobContext) -> JobResult<String> {
    if ctx.attempt() == 1 {
        return Err(JobError::retryable("the upstream service is still warming up"));
    }
    Ok(format!("succeeded on attempt {}", ctx.attempt()))
}

#[tokio::main]
async fn main() -> ExitCode {
    netscript::run().await
}
