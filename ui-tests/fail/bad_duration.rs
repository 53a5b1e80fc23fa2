use netscript::prelude::*;

#[job(id = "no-unit", timeout = "30")]
async fn no_unit() -> JobResult<()> {
    Ok(())
}

#[job(id = "unknown-unit", timeout = "30 secnds")]
async fn unknown_unit() -> JobResult<()> {
    Ok(())
}

fn main() {}
