use netscript::prelude::*;

#[job(id = "process-payment", timout = "30s", queue = "fast")]
async fn process_payment() -> JobResult<()> {
    Ok(())
}

fn main() {
    // The handle still exists, so this line adds no error of its own.
    let _ = process_payment::enqueue();
}
