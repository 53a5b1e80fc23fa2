use netscript::prelude::*;

#[job(id = "unsafe-job")]
async unsafe fn unsafe_job() -> JobResult<()> {
    Ok(())
}

#[job(id = "extern-job")]
async extern "C" fn extern_job() -> JobResult<()> {
    Ok(())
}

fn main() {}
