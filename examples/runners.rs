//! The same jobs on each runner: in process, on a thread pool, or in a child process per
//! attempt. Pick the runner with `NETSCRIPT_RUNNER`; the jobs do not change.
//!
//! ```text
//! NETSCRIPT_RUNNER=subprocess cargo run --example runners -- serve
//! cargo run --example runners -- trigger checksum --payload '{"rounds":2000000}' --wait
//! cargo run --example runners -- trigger abort --wait      # subprocess only: kills its child
//! ```
//!
//! `abort`, `hang` and `noisy` show what isolation buys: under `subprocess`, an abort is a
//! failed attempt with the signal and the end of stderr, a job stuck in a blocking call is
//! killed at its timeout, and garbage on stdout is logged, not fatal. Run `abort` and `hang`
//! only under `subprocess`: in process, `abort` ends the whole server and `hang` holds its
//! slot for a minute.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use netscript::prelude::*;

/// How much work.
#[derive(Deserialize, JsonSchema)]
struct Checksum {
    /// Rounds of mixing; 2,000,000 take a few milliseconds in a release build.
    rounds: u64,
}

/// The result of the work.
#[derive(Serialize, JsonSchema)]
struct Sum {
    rounds: u64,
    value: u64,
}

/// CPU-bound work with a deterministic result, reporting progress at the half-way mark.
#[job(id = "checksum", timeout = "1m", retries = 0)]
async fn checksum(ctx: JobContext, payload: Checksum) -> JobResult<Sum> {
    let half = payload.rounds / 2;
    let mut value: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..payload.rounds {
        value = mix(value ^ round);
        if round == half {
            ctx.progress(50, "half-way").await;
        }
    }
    Ok(Sum { rounds: payload.rounds, value })
}

/// One round of a 64-bit mixer (splitmix64's finaliser).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Aborts its process after a word on stderr. Retried once.
#[job(id = "abort", retries = 1, backoff = "fixed(100ms)")]
async fn abort() -> JobResult<()> {
    eprintln!("abort: giving up on purpose");
    std::process::abort()
}

/// Blocks its thread far past its one-second timeout.
#[job(id = "hang", timeout = "1s", retries = 0)]
async fn hang() -> JobResult<()> {
    std::thread::sleep(Duration::from_secs(60));
    Ok(())
}

/// Writes garbage to stdout (plain lines, bytes that are not UTF-8, a protocol line that does
/// not decode), then succeeds.
#[job(id = "noisy", retries = 0)]
async fn noisy() -> JobResult<String> {
    let mut out = std::io::stdout().lock();
    out.write_all(b"plain output\n\xff\xfe not utf-8\n@netscript {not json\n@netscript\n")?;
    out.flush()?;
    Ok("survived".into())
}

#[tokio::main]
async fn main() -> ExitCode {
    netscript::run().await
}
