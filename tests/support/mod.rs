//! Shared by the tests and benchmarks that run against real brokers: where the servers are,
//! how to point a runtime at one in a namespace of its own, and how to remove that namespace.
//!
//! The servers: `NETSCRIPT_TEST_POSTGRES_URL`, `NETSCRIPT_TEST_REDIS_URL`,
//! `NETSCRIPT_TEST_AMQP_URL`, defaulting to the local services CI starts.

#![allow(dead_code)] // each user takes what it needs

pub mod http;
#[cfg(feature = "redis")]
pub mod own_redis;
pub mod workers;

use netscript::config::BrokerUrl;
use netscript::{QueueProvider, WorkersConfig};

/// The providers this build has, in the order runs report them.
pub fn providers() -> Vec<QueueProvider> {
    let mut all = vec![QueueProvider::Memory, QueueProvider::Embedded];
    if cfg!(feature = "postgres") {
        all.push(QueueProvider::Postgres);
    }
    if cfg!(feature = "redis") {
        all.push(QueueProvider::Redis);
    }
    if cfg!(feature = "amqp") {
        all.push(QueueProvider::Amqp);
    }
    all
}

/// The server of a broker provider (`None` for memory and embedded).
pub fn broker_url(provider: QueueProvider) -> Option<String> {
    let (var, default) = match provider {
        QueueProvider::Postgres => ("NETSCRIPT_TEST_POSTGRES_URL", "postgres://root@127.0.0.1:5432/test"),
        QueueProvider::Redis => ("NETSCRIPT_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
        QueueProvider::Amqp => ("NETSCRIPT_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        _ => return None,
    };
    Some(std::env::var(var).unwrap_or_else(|_| default.to_owned()))
}

/// A namespace no other run uses: `<stem>_<12 random hex digits>`.
pub fn unique_namespace(stem: &str) -> String {
    // The tail of a UUIDv7 is random.
    let id = netscript::queue::MessageId::new().to_string().replace('-', "");
    format!("{stem}_{}", &id[id.len() - 12..])
}

/// Points `c` at `provider`'s server, in `namespace` (also the queue's name).
pub fn configure(c: &mut WorkersConfig, provider: QueueProvider, namespace: &str) {
    c.queue_provider = provider;
    c.namespace = namespace.to_owned();
    c.queue_name = namespace.to_owned();
    let url = broker_url(provider).map(BrokerUrl::new);
    match provider {
        QueueProvider::Postgres => c.brokers.postgres = url,
        QueueProvider::Redis => c.brokers.redis = url,
        QueueProvider::Amqp => c.brokers.amqp = url,
        _ => {}
    }
}

/// Removes what a run left in `namespace` on `provider`'s server (best effort): the
/// PostgreSQL schema, the Redis keys, or the RabbitMQ topic queues of every job linked into
/// this binary (the delay queues expire by themselves; the companion store is the run's own).
pub async fn drop_namespace(provider: QueueProvider, namespace: &str) {
    let _ = namespace; // unused when no broker backend is compiled in
    match provider {
        #[cfg(feature = "postgres")]
        QueueProvider::Postgres => {
            let url = broker_url(provider).unwrap_or_default();
            if let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                tokio::spawn(conn);
                let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{namespace}\" CASCADE")).await;
            }
        }
        #[cfg(feature = "redis")]
        QueueProvider::Redis => {
            use netscript::redis::{RedisDb, RedisOptions};
            let url = broker_url(provider).unwrap_or_default();
            if let Ok(db) = RedisDb::connect(RedisOptions::new(url).prefix(namespace)).await {
                let _ = db.delete_all().await;
            }
        }
        #[cfg(feature = "amqp")]
        QueueProvider::Amqp => {
            use netscript::queue::amqp::{AmqpOptions, AmqpQueue};
            let url = broker_url(provider).unwrap_or_default();
            let kv = std::sync::Arc::new(netscript::kv::memory::MemoryKv::new());
            if let Ok(queue) = AmqpQueue::connect(AmqpOptions::new(url), namespace, kv).await {
                let topics = netscript::Registry::linked().map(|r| r.topics()).unwrap_or_default();
                let _ = queue.delete_topic_queues(&topics).await;
                queue.close().await;
            }
        }
        _ => {}
    }
}

/// Runs [`drop_namespace`] when dropped, on a thread of its own (it may drop inside a runtime).
pub struct DropNamespace(pub QueueProvider, pub String);

impl Drop for DropNamespace {
    fn drop(&mut self) {
        let (provider, namespace) = (self.0, std::mem::take(&mut self.1));
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(drop_namespace(provider, &namespace));
            }
        })
        .join();
    }
}
