//! A PostgreSQL schema of one test's own, dropped with everything in it when dropped. Shared by
//! `tests/postgres.rs` and the conformance suite.

use std::sync::Arc;

use netscript_runtime::postgres::{PostgresDb, PostgresOptions};

/// The server the tests use: `NETSCRIPT_TEST_POSTGRES_URL`, or the local one.
pub fn url() -> String {
    std::env::var("NETSCRIPT_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

/// A fresh schema name, dropped (with everything in it) when the value is dropped.
pub struct Schema(pub String);

impl Schema {
    /// A fresh name.
    pub fn new() -> Self {
        Schema(format!("ns_test_{:016x}", fastrand::u64(..)))
    }

    /// Options for a store in this schema (6 pooled connections).
    pub fn options(&self) -> PostgresOptions {
        PostgresOptions::new(url()).schema(self.0.clone()).pool_size(6)
    }

    /// A store in this schema.
    pub async fn connect(&self) -> Arc<PostgresDb> {
        Arc::new(PostgresDb::connect(self.options()).await.unwrap())
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let schema = std::mem::take(&mut self.0);
        // Best effort, on a thread of its own: the test's runtime may be shutting down.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.ok()?;
                tokio::spawn(conn);
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await.ok()
            })
        })
        .join();
    }
}
