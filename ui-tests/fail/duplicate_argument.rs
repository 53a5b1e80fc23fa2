use netscript::prelude::*;

#[job(id = "process-payment", retries = 3, timeout = "30s", retries = 5)]
async fn process_payment() -> JobResult<()> {
    Ok(())
}

fn main() {}
