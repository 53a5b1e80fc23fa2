use super::*;

use netscript_runtime::redis::{RedisDb, RedisOptions};

fn redis_url() -> String {
    std::env::var("NETSCRIPT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Deletes every key of a test's namespace when the test ends.
struct Namespace {
    url: String,
    prefix: String,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Best effort, on a plain synchronous connection: the test's runtime may be gone.
        let Ok(client) = ::redis::Client::open(self.url.as_str()) else { return };
        let Ok(mut conn) = client.get_connection() else { return };
        let mut cursor: u64 = 0;
        loop {
            let Ok((next, keys)): Result<(u64, Vec<Vec<u8>>), _> = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}:*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query(&mut conn)
            else {
                return;
            };
            if !keys.is_empty() {
                let _: Result<u64, _> = ::redis::cmd("UNLINK").arg(&keys).query(&mut conn);
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}

async fn redis_db() -> (Arc<RedisDb>, Guard) {
    // The prefix has no glob characters, so it can be used as a SCAN pattern as is.
    let prefix = format!("nstest-{}", uuid::Uuid::now_v7().simple());
    let url = redis_url();
    let guard = Namespace { url: url.clone(), prefix: prefix.clone() };
    let db = RedisDb::connect(RedisOptions::new(url).prefix(prefix)).await.unwrap();
    (Arc::new(db), Some(Box::new(guard)))
}

async fn redis_queue(window: Duration) -> (Arc<dyn Queue>, Guard) {
    use netscript_runtime::queue::redis::RedisQueue;
    let (db, guard) = redis_db().await;
    // A second queue in the same namespace: its messages must never show up in the one tested.
    let other = RedisQueue::new(Arc::clone(&db), "other");
    other.enqueue(vec![msg("t", "noise"), msg("mail", "noise"), msg("sms", "noise")]).await.unwrap();
    (Arc::new(RedisQueue::new(db, "jobs").with_idempotency_window(window)), guard)
}

async fn redis_kv() -> (Arc<dyn Kv>, Guard) {
    let (db, guard) = redis_db().await;
    (Arc::new(netscript_runtime::kv::redis::RedisKv::new(db)), guard)
}

conformance!(redis, queue: redis_queue, kv: redis_kv);
