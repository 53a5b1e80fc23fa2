//! ERP sync: an `import-products` job, and a `daily-resync` schedule at 06:00 UTC that
//! enqueues a full import as 20 page imports, which the workers drain in parallel.
//!
//! ```text
//! cargo run --example erp-sync             # fire the schedule once now, watch the burst drain
//! cargo run --example erp-sync -- serve    # API + workers + scheduler (06:00 UTC every day)
//! cargo run --example erp-sync -- schedules
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use netscript::prelude::*;
use netscript::{ExecutionStatus, QueueProvider};

/// Pages in a full import.
const PAGES: u32 = 20;

/// One page of the ERP's product catalogue.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ImportProducts {
    /// Which page (1-based).
    page: u32,
    /// Products per page.
    page_size: u32,
}

/// What one page import did.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct Imported {
    page: u32,
    products: u32,
}

/// Imports one page of products from the ERP (here: pretends to, taking 200 ms).
#[job(id = "import-products", topic = "erp", timeout = "1m", retries = 3, backoff = "exponential(2s)")]
async fn import_products(ctx: JobContext, payload: ImportProducts) -> JobResult<Imported> {
    ctx.progress(10, format!("fetching page {}", payload.page)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(Imported { page: payload.page, products: payload.page_size })
}

/// Re-imports the whole catalogue every morning, one job per page.
#[scheduled(id = "daily-resync", cron = "0 6 * * *", timezone = "UTC", tags = ["erp", "resync"])]
async fn daily_resync(tick: ScheduledTick) -> Vec<Action> {
    tracing::info!(tick = %tick.scheduled_at, "daily re-sync");
    (1..=PAGES).map(|page| import_products::enqueue(ImportProducts { page, page_size: 500 }).into()).collect()
}

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().len() > 1 {
        return Runtime::builder().concurrency(8).run().await;
    }
    netscript::cli::init_tracing();
    match burst().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("erp-sync: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Fires the schedule once by hand and waits for its 20 imports, run 8 at a time.
async fn burst() -> Result<(), Box<dyn std::error::Error>> {
    let rt = Runtime::builder().ignore_env().provider(QueueProvider::Memory).concurrency(8).build().await?;
    let workers = rt.spawn_workers();
    // A scheduler of our own to trigger by hand (the workers run theirs for the 06:00 ticks;
    // a tick fired by both would still enqueue once).
    let scheduler = rt.start_scheduler().await?;
    let started = Instant::now();
    let receipts = scheduler.trigger("daily-resync").await?;
    let mut products = 0;
    for receipt in &receipts {
        let record = rt.wait_for(receipt.execution_id, Duration::from_secs(30)).await?;
        match record {
            Some(r) if r.status == ExecutionStatus::Succeeded => {
                products += r.result.as_ref().and_then(|v| v["products"].as_u64()).unwrap_or(0);
            }
            other => return Err(format!("an import did not succeed: {other:?}").into()),
        }
    }
    println!(
        "{} page imports ({products} products) drained in {:.1?} (each takes 200 ms; 8 run at once)",
        receipts.len(),
        started.elapsed()
    );
    for info in scheduler.list() {
        println!("next `{}` fires: {:?}", info.id, info.next_fire_times.first());
    }
    scheduler.stop().await;
    workers.stop().await;
    Ok(())
}
