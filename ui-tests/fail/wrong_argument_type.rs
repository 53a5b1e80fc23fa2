use netscript::prelude::*;

#[job(id = process_payment, retries = "3", timeout = 30, tags = "billing")]
async fn process_payment() -> JobResult<()> {
    Ok(())
}

#[job(id = "sync-stock", tags = ["stock", 2])]
async fn sync_stock() -> JobResult<()> {
    Ok(())
}

fn main() {}
