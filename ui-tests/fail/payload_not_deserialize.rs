use netscript::prelude::*;

#[derive(JsonSchema)]
struct ProcessPayment {
    order_id: String,
}

#[job(id = "process-payment")]
async fn process_payment(payload: ProcessPayment) -> JobResult<()> {
    let _ = payload.order_id;
    Ok(())
}

fn main() {}
