use std::rc::Rc;

use netscript::prelude::*;

#[job(id = "not-send")]
async fn not_send(ctx: JobContext) -> JobResult<()> {
    let counter = Rc::new(1);
    ctx.progress(50, "half way").await;
    let _ = counter;
    Ok(())
}

fn main() {}
