//! A Redis key prefix of one test's own, removed with everything under it when dropped
//! (through [`RedisDb::delete_all`]). Shared by `tests/redis.rs` and the conformance suite.

use std::sync::Arc;

use netscript_runtime::redis::{RedisDb, RedisOptions};

/// The server the tests use: `NETSCRIPT_TEST_REDIS_URL`, or the local one.
pub fn redis_url() -> String {
    std::env::var("NETSCRIPT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A unique key prefix, deleted with everything under it when dropped.
pub struct Namespace {
    /// The prefix (no glob characters).
    pub prefix: String,
}

impl Namespace {
    /// A fresh prefix.
    pub fn new() -> Self {
        Self { prefix: format!("nstest-{}", uuid::Uuid::now_v7().simple()) }
    }

    /// A store on this prefix.
    pub async fn db(&self) -> Arc<RedisDb> {
        Arc::new(RedisDb::connect(RedisOptions::new(redis_url()).prefix(self.prefix.clone())).await.unwrap())
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Best effort, on a thread with a runtime of its own: the test's runtime may be gone.
        let prefix = std::mem::take(&mut self.prefix);
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                if let Ok(db) = RedisDb::connect(RedisOptions::new(redis_url()).prefix(prefix)).await {
                    let _ = db.delete_all().await;
                }
            });
        })
        .join();
    }
}
