use netscript::prelude::*;

#[job(
    id = "process-payment",
    name = " ",
    topic = "Payments",
    timeout = "0s",
    retries = 5000000000,
    tags = ["billing", "", "billing"]
)]
async fn process_payment() -> JobResult<()> {
    Ok(())
}

#[job(id = "empty-topic", topic = "")]
async fn empty_topic() -> JobResult<()> {
    Ok(())
}

fn main() {}
