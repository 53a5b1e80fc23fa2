use netscript::prelude::*;

#[scheduled(id = "not-async", cron = "@daily")]
fn not_async(_tick: ScheduledTick) -> Vec<Action> {
    vec![]
}

#[scheduled(id = "two-params", cron = "@daily")]
async fn two_params(_tick: ScheduledTick, _extra: u32) -> Vec<Action> {
    vec![]
}

#[scheduled(id = "no-actions", cron = "@daily")]
async fn no_actions(_tick: ScheduledTick) {}

#[scheduled(id = "wrong-return", cron = "@daily")]
async fn wrong_return(_tick: ScheduledTick) -> String {
    String::new()
}

#[scheduled(id = "wrong-tick", cron = "@daily")]
async fn wrong_tick(_tick: String) -> Vec<Action> {
    vec![]
}

fn main() {}
