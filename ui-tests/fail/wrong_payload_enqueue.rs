use netscript::prelude::*;

#[derive(Serialize, Deserialize, JsonSchema)]
struct ProcessPayment {
    order_id: String,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct RefundPayment {
    order_id: String,
}

#[job(id = "process-payment")]
async fn process_payment(payload: ProcessPayment) -> JobResult<()> {
    let _ = payload.order_id;
    Ok(())
}

fn main() {
    let _ = process_payment::enqueue(RefundPayment { order_id: "o-1".into() });
}
