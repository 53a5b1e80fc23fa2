//! Payments: the `process-payment` job of the design document, with a typed payload and
//! output, and the `payment-webhook` a payment provider calls: it checks the HMAC signature
//! and enqueues `process-payment` with the order id as idempotency key, so a redelivered
//! webhook charges once.
//!
//! ```text
//! export WEBHOOK_SECRET=whsec_demo       # the webhook refuses to start without it
//! cargo run --example payments -- serve
//! curl -X POST localhost:8091/api/v1/workers/jobs/process-payment/trigger \
//!      -d '{"payload":{"orderId":"o-1001","amountCents":2599},"idempotencyKey":"o-1001"}'
//! cargo run --example payments -- trigger process-payment \
//!      --payload '{"orderId":"o-1002","amountCents":100}' --wait
//!
//! body='{"type":"payment.succeeded","orderId":"o-1003","amountCents":4200}'
//! sig=$(printf '%s' "$body" | openssl dgst -sha256 -hmac "$WEBHOOK_SECRET" -hex | cut -d' ' -f2)
//! curl -X POST localhost:8091/webhooks/payment -H "X-Signature: sha256=$sig" -d "$body"
//! ```

use std::process::ExitCode;

use netscript::prelude::*;

/// A charge to make.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ProcessPayment {
    /// The order being paid.
    order_id: String,
    /// Amount in cents; must be positive.
    amount_cents: u64,
}

/// A charge that was made.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct Charged {
    order_id: String,
    charge_id: String,
    amount_cents: u64,
}

/// Charges a customer.
#[job(id = "process-payment", topic = "payments", timeout = "30s", retries = 3)]
async fn process_payment(ctx: JobContext, payload: ProcessPayment) -> JobResult<Charged> {
    if payload.amount_cents == 0 {
        // Another attempt cannot make a zero charge valid.
        return Err(JobError::fatal(format!("order {}: amount must be positive", payload.order_id)));
    }
    ctx.progress(10, "charging customer").await;
    // A real job would call the payment provider here, passing the execution id as its
    // idempotency key so a retried attempt cannot charge twice.
    let charge_id = format!("ch_{}", ctx.execution_id().to_string().replace('-', "")[..16].to_owned());
    ctx.progress(100, "charged").await;
    Ok(Charged { order_id: payload.order_id, charge_id, amount_cents: payload.amount_cents })
}

/// What the payment provider sends.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct PaymentEvent {
    /// `payment.succeeded`, `payment.failed`, ...
    #[serde(rename = "type")]
    kind: String,
    order_id: String,
    amount_cents: u64,
}

/// The payment provider's events: each succeeded payment is processed once, however often
/// the provider delivers it.
#[webhook(id = "payment-webhook", path = "/webhooks/payment", verifier = "hmac-sha256", secret_env = "WEBHOOK_SECRET")]
async fn payment_webhook(event: WebhookEvent<PaymentEvent>) -> Vec<Action> {
    let PaymentEvent { kind, order_id, amount_cents } = event.body;
    if kind != "payment.succeeded" {
        return vec![];
    }
    let key = format!("payment:{order_id}");
    vec![process_payment::enqueue(ProcessPayment { order_id, amount_cents }).idempotency_key(key).into()]
}

#[tokio::main]
async fn main() -> ExitCode {
    netscript::run().await
}
