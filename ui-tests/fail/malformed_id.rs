use netscript::prelude::*;

#[job(id = "Process_Payment")]
async fn process_payment() -> JobResult<()> {
    Ok(())
}

fn main() {}
