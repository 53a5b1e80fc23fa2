use netscript::prelude::*;

#[job(id = "unknown-policy", backoff = "random(1s)")]
async fn unknown_policy() -> JobResult<()> {
    Ok(())
}

#[job(id = "bad-delay", backoff = "exponential(fast)")]
async fn bad_delay() -> JobResult<()> {
    Ok(())
}

fn main() {}
