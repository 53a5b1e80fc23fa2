use super::*;

use netscript_runtime::redis::RedisDb;

#[path = "../support/redis_namespace.rs"]
mod redis_namespace;

use redis_namespace::Namespace;

async fn redis_db() -> (Arc<RedisDb>, Guard) {
    let namespace = Namespace::new();
    let db = namespace.db().await;
    (db, Some(Box::new(namespace)))
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
