use netscript::prelude::*;

#[scheduled(id = "nightly", cron = "0 2 * * *", missed = "sometimes", backoff = "forever")]
async fn nightly() -> Vec<Action> {
    vec![]
}

#[scheduled(id = "hourly", cron = "@hourly", run_on_init = "yes", enabled = 1, retries = -1)]
async fn hourly() -> Vec<Action> {
    vec![]
}

fn main() {}
