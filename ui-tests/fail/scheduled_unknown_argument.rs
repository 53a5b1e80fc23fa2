use netscript::prelude::*;

#[scheduled(id = "daily-resync", cron = "0 6 * * *", timzone = "UTC", retries = 3)]
async fn daily_resync(_tick: ScheduledTick) -> Vec<Action> {
    vec![]
}

fn main() {}
