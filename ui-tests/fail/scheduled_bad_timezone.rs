use netscript::prelude::*;

#[scheduled(id = "nightly", cron = "0 2 * * *", timezone = "Europe/Berlinn")]
async fn nightly(_tick: ScheduledTick) -> Vec<Action> {
    vec![]
}

fn main() {}
