use netscript::prelude::*;

#[scheduled(cron = "0 6 * * *")]
async fn daily_resync(_tick: ScheduledTick) -> Vec<Action> {
    vec![]
}

fn main() {}
