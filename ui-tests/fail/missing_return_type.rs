use netscript::prelude::*;

#[job(id = "send-report")]
async fn send_report(ctx: JobContext) {
    ctx.progress(100, "sent").await;
}

fn main() {}
