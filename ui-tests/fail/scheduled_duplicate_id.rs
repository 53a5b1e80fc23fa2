mod catalogue {
    use netscript::prelude::*;

    #[scheduled(id = "daily-resync", cron = "0 6 * * *")]
    pub async fn resync_products() -> Vec<Action> {
        vec![]
    }
}

mod prices {
    use netscript::prelude::*;

    #[scheduled(id = "daily-resync", cron = "0 7 * * *")]
    pub async fn resync_prices() -> Vec<Action> {
        vec![]
    }
}

fn main() {}
