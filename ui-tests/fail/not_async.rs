use netscript::prelude::*;

#[job(id = "send-report")]
fn send_report() -> JobResult<()> {
    Ok(())
}

fn main() {}
