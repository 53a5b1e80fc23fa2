//! The conformance suite against a real PostgreSQL server (`NETSCRIPT_TEST_POSTGRES_URL`,
//! default `postgres://root@127.0.0.1:5432/test`). Every test gets a schema of its own,
//! dropped when the test ends.

use super::*;

use netscript_runtime::kv::postgres::PostgresKv;
use netscript_runtime::postgres::{PostgresDb, PostgresOptions};
use netscript_runtime::queue::postgres::PostgresQueue;

fn url() -> String {
    std::env::var("NETSCRIPT_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

/// Drops the test's schema when the test ends.
struct DropSchema {
    url: String,
    schema: String,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        // Best effort, on a thread of its own: the test's runtime may be shutting down.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.ok()?;
                tokio::spawn(conn);
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await.ok()
            })
        })
        .join();
    }
}

async fn postgres_db() -> (Arc<PostgresDb>, Guard) {
    let schema = format!("ns_test_{:016x}", fastrand::u64(..));
    let guard = DropSchema { url: url(), schema: schema.clone() };
    let db = PostgresDb::connect(PostgresOptions::new(url()).schema(schema).pool_size(4)).await.unwrap();
    (Arc::new(db), Some(Box::new(guard)))
}

async fn postgres_queue(window: Duration) -> (Arc<dyn Queue>, Guard) {
    let (db, guard) = postgres_db().await;
    // A second queue in the same tables: its messages must never show up in the one tested.
    let other = PostgresQueue::new(Arc::clone(&db), "other");
    other.enqueue(vec![msg("t", "noise"), msg("mail", "noise"), msg("sms", "noise")]).await.unwrap();
    (Arc::new(PostgresQueue::new(db, "jobs").with_idempotency_window(window)), guard)
}

async fn postgres_kv() -> (Arc<dyn Kv>, Guard) {
    let (db, guard) = postgres_db().await;
    (Arc::new(PostgresKv::new(db)), guard)
}

conformance!(postgres, queue: postgres_queue, kv: postgres_kv);
