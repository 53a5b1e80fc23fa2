//! Generated code compiles cleanly under strict lints: public and private jobs, with and
//! without payload, context or state, in the crate root and in a module.
#![deny(warnings, missing_docs)]

use netscript::prelude::*;

/// A payload that is never enqueued from Rust, so it needs no `Serialize`.
#[derive(Deserialize, JsonSchema)]
pub struct Import {
    /// Where to import from.
    pub url: String,
}

/// What an import produced.
#[derive(Serialize, JsonSchema)]
pub struct Imported {
    /// Rows imported.
    pub rows: u64,
}

/// Imports a file.
#[job(id = "import-file", topic = "imports", timeout = "5m", retries = 1, backoff = "fixed(10s)", tags = ["io"])]
pub async fn import_file(ctx: JobContext, payload: Import) -> JobResult<Imported> {
    ctx.progress(0, payload.url).await;
    Ok(Imported { rows: 0 })
}

/// A connection pool.
pub struct Db;

/// A private job that nobody enqueues from Rust.
#[job(id = "vacuum")]
async fn vacuum(State(db): State<Db>) -> JobResult<()> {
    let Db = *db;
    Ok(())
}

/// A job named like the handler's own locals.
#[job(id = "ctx")]
async fn ctx(ctx: JobContext, bytes: Import) -> JobResult<()> {
    let _ = (ctx.job_id(), bytes.url);
    Ok(())
}

/// Compiled out: the handle and the registration go with the function.
#[job(id = "never-compiled")]
#[cfg(any())]
async fn never_compiled(payload: NotAType) -> JobResult<()> {
    Ok(())
}

/// Jobs in a module, including one whose payload is enqueued from Rust.
pub mod billing {
    use netscript::prelude::*;

    /// An invoice to send.
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Invoice {
        /// The invoice's number.
        pub number: u32,
    }

    /// Sends an invoice.
    #[job(id = "send-invoice")]
    pub(crate) async fn send_invoice(invoice: Invoice) -> JobResult<u32> {
        Ok(invoice.number)
    }

    /// A request to send invoice 7.
    pub fn invoice_seven() -> EnqueueJob<Invoice> {
        send_invoice::enqueue(Invoice { number: 7 }).priority(1)
    }

    /// Sends invoice 7 every morning, Berlin time.
    #[scheduled(id = "morning-invoice", cron = "0 7 * * MON-FRI", timezone = "Europe/Berlin", tags = ["billing"])]
    async fn morning_invoice(_tick: ScheduledTick) -> Vec<Action> {
        vec![invoice_seven().into()]
    }

    /// Invoices paid at the provider: sends invoice 7 (once per delivery).
    #[webhook(
        id = "invoice-paid",
        path = "/webhooks/invoice-paid",
        verifier = "hmac-sha256",
        secret_env = "INVOICE_WEBHOOK_SECRET",
        header = "X-Hub-Signature-256",
        timestamp_header = "X-Timestamp",
        tolerance = "2m",
        tags = ["billing"]
    )]
    pub async fn invoice_paid(event: WebhookEvent<Invoice>) -> JobResult<Vec<Action>> {
        let key = format!("invoice:{}", event.body.number);
        Ok(vec![send_invoice::enqueue(event.body).idempotency_key(key).into()])
    }

    /// Never fails, but could.
    #[scheduled(
        id = "fallible",
        cron = "@hourly",
        retries = 5,
        backoff = "linear(30s)",
        missed = "fire-once",
        run_on_init = true,
        enabled = true
    )]
    pub async fn fallible() -> JobResult<Vec<Action>> {
        Ok(Vec::new())
    }
}

fn main() {
    assert_eq!(import_file::ID, "import-file");
    assert_eq!(billing::invoice_seven().job_id(), "send-invoice");
    let registry = netscript::Registry::linked().expect("distinct ids");
    assert_eq!(registry.len(), 4);
    assert_eq!(netscript::scheduler::SCHEDULES.len(), 2);
}
