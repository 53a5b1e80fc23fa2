use netscript::prelude::*;

#[job(topic = "payments", retries = 3)]
async fn process_payment() -> JobResult<()> {
    Ok(())
}

fn main() {}
