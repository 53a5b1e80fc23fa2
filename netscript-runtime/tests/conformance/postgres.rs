//! The conformance suite against a real PostgreSQL server (`NETSCRIPT_TEST_POSTGRES_URL`,
//! default `postgres://root@127.0.0.1:5432/test`). Every test gets a schema of its own,
//! dropped when the test ends.

use super::*;

use netscript_runtime::kv::postgres::PostgresKv;
use netscript_runtime::postgres::PostgresDb;
use netscript_runtime::queue::postgres::PostgresQueue;

#[path = "../support/postgres_schema.rs"]
mod postgres_schema;

use postgres_schema::Schema;

async fn postgres_db() -> (Arc<PostgresDb>, Guard) {
    let schema = Schema::new();
    let db = schema.connect().await;
    (db, Some(Box::new(schema)))
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
