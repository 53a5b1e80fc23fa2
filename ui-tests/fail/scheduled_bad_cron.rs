use netscript::prelude::*;

#[scheduled(id = "nightly", cron = "0 25 * * *")]
async fn nightly(_tick: ScheduledTick) -> Vec<Action> {
    vec![]
}

#[scheduled(id = "weekly", cron = "0 0 * * MON-FRY")]
async fn weekly(_tick: ScheduledTick) -> Vec<Action> {
    vec![]
}

#[scheduled(id = "short", cron = "0 6 * *")]
async fn short(_tick: ScheduledTick) -> Vec<Action> {
    vec![]
}

fn main() {}
