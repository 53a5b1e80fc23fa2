use netscript::prelude::*;

#[derive(Deserialize, JsonSchema)]
struct ProcessPayment {
    order_id: String,
}

struct Db;

#[job(id = "process-payment")]
async fn process_payment(ctx: JobContext, payload: ProcessPayment, db: Db) -> JobResult<()> {
    let _ = (ctx, payload, db);
    Ok(())
}

fn main() {}
