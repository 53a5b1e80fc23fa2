use netscript::prelude::*;

#[job(id)]
async fn process_payment() -> JobResult<()> {
    Ok(())
}

fn main() {}
