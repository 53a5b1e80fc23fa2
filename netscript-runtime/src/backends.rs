//! Choosing and opening the queue and key-value backends.
//!
//! Discovery for `auto` (DESIGN.md §4): RabbitMQ when its URL is known, then Redis, then the
//! embedded store. PostgreSQL is never discovered: it is used only when `queue_provider` names
//! it. A broker whose URL is set but whose backend is not compiled into this binary is skipped
//! with a warning that says which cargo feature brings it. The choice and its reason are logged
//! at startup and shown by `GET /health`.
//!
//! The key-value store (execution records, schedules, pause and cancel flags) follows the queue:
//!
//! | queue      | key-value store                                                        |
//! |------------|------------------------------------------------------------------------|
//! | `postgres` | tables in the same PostgreSQL database                                 |
//! | `redis`    | the same Redis                                                         |
//! | `amqp`     | Redis when a Redis URL is known, else the embedded store (one machine) |
//! | `embedded` | the same SQLite file                                                   |
//! | `memory`   | memory                                                                 |
//!
//! A broker that does not answer at startup is a clear error naming its URL (password hidden),
//! or, with `broker_wait` set, a retry loop with a logged, growing backoff until it answers or
//! the wait is over.

use std::sync::Arc;
#[cfg(any(feature = "postgres", feature = "redis", feature = "amqp"))]
use std::time::Duration;

#[cfg(any(feature = "postgres", feature = "redis", feature = "amqp"))]
use crate::config::BrokerUrl;
use crate::config::{ConfigError, QueueProvider, WorkersConfig};
use crate::kv::{AtomicWrite, Kv};
use crate::queue::{Enqueued, NewMessage, Queue, QueueError};
use crate::runtime::StartupError;

/// A queue, a key-value store, why they were chosen, and their joint writer when they share
/// one database.
pub(crate) type Backends = (Arc<dyn Queue>, Arc<dyn Kv>, String, Option<Arc<dyn Joint>>);

/// A queue and a key-value store, and their joint writer if they have one.
type BackendPair = (Arc<dyn Queue>, Arc<dyn Kv>, Option<Arc<dyn Joint>>);

/// What runs once a joint enqueue committed, with its outcomes.
pub(crate) type OnCommit = Box<dyn for<'a> FnOnce(&'a [Enqueued]) + Send + 'static>;

/// Enqueues messages and writes to the key-value store in one transaction, for a queue and a
/// store in one database: an execution's queued record and its message commit together (one
/// commit, not two, on the enqueue path of every trigger; and no record without its message).
#[async_trait::async_trait]
pub(crate) trait Joint: Send + Sync {
    /// Enqueues `messages`, writing `writes[i]` with `messages[i]` when it is created (not for a
    /// duplicate); `on_commit` runs with the outcomes once committed, before the queue hands any
    /// of the messages to a worker.
    async fn enqueue_with(
        &self,
        messages: Vec<NewMessage>,
        writes: Vec<AtomicWrite>,
        on_commit: OnCommit,
    ) -> Result<Vec<Enqueued>, QueueError>;
}

/// The embedded store's queue and key-value store, in one SQLite file.
#[cfg(feature = "embedded")]
struct EmbeddedJoint {
    queue: crate::queue::embedded::EmbeddedQueue,
    kv: crate::kv::embedded::EmbeddedKv,
}

#[cfg(feature = "embedded")]
#[async_trait::async_trait]
impl Joint for EmbeddedJoint {
    async fn enqueue_with(
        &self,
        messages: Vec<NewMessage>,
        writes: Vec<AtomicWrite>,
        on_commit: OnCommit,
    ) -> Result<Vec<Enqueued>, QueueError> {
        self.queue.enqueue_with_kv(&self.kv, messages, writes, on_commit).await
    }
}

/// The queue and the key-value store of one PostgreSQL database.
#[cfg(feature = "postgres")]
struct PostgresJoint {
    queue: crate::queue::postgres::PostgresQueue,
    kv: crate::kv::postgres::PostgresKv,
}

#[cfg(feature = "postgres")]
#[async_trait::async_trait]
impl Joint for PostgresJoint {
    async fn enqueue_with(
        &self,
        messages: Vec<NewMessage>,
        writes: Vec<AtomicWrite>,
        on_commit: OnCommit,
    ) -> Result<Vec<Enqueued>, QueueError> {
        self.queue.enqueue_with_kv(&self.kv, messages, writes, on_commit).await
    }
}

/// Which backends a build has, by provider.
fn compiled(provider: QueueProvider) -> Option<&'static str> {
    let (on, feature) = match provider {
        QueueProvider::Postgres => (cfg!(feature = "postgres"), "postgres"),
        QueueProvider::Redis => (cfg!(feature = "redis"), "redis"),
        QueueProvider::Amqp => (cfg!(feature = "amqp"), "amqp"),
        QueueProvider::Embedded => (cfg!(feature = "embedded"), "embedded"),
        QueueProvider::Auto | QueueProvider::Memory => (true, ""),
    };
    (!on).then_some(feature)
}

/// Picks the provider for `config.queue_provider`, resolving `auto` from the known broker URLs.
/// Returns the provider and the reason, for the log and `GET /health`.
pub fn discover(config: &WorkersConfig) -> (QueueProvider, String) {
    if config.queue_provider != QueueProvider::Auto {
        return (config.queue_provider, format!("configured as `{}`", config.queue_provider.as_str()));
    }
    let mut skipped = Vec::new();
    let mut chosen = None;
    for (provider, url) in [(QueueProvider::Amqp, &config.brokers.amqp), (QueueProvider::Redis, &config.brokers.redis)]
    {
        let Some(url) = url else { continue };
        match compiled(provider) {
            None => {
                chosen = Some((provider, format!("{} is set", url.source)));
                break;
            }
            Some(feature) => {
                skipped.push(format!("{} is set but this binary was built without the `{feature}` feature", url.source))
            }
        }
    }
    for s in &skipped {
        tracing::warn!("queue discovery: {s}");
    }
    let fallback = if cfg!(feature = "embedded") { QueueProvider::Embedded } else { QueueProvider::Memory };
    let (provider, why) =
        chosen.unwrap_or_else(|| (fallback, format!("no usable broker configured, using {}", fallback.as_str())));
    skipped.push(why);
    let reason = format!("auto: {}", skipped.join("; "));
    (provider, reason)
}

/// Opens the backends `config` asks for; a queue or store given to the builder wins.
pub(crate) async fn open(
    config: &WorkersConfig,
    queue: Option<Arc<dyn Queue>>,
    kv: Option<Arc<dyn Kv>>,
) -> Result<Backends, StartupError> {
    if let (Some(q), Some(kv)) = (&queue, &kv) {
        return Ok((Arc::clone(q), Arc::clone(kv), "given to the runtime builder".into(), None));
    }
    let (provider, reason) = discover(config);
    if let Some(feature) = compiled(provider) {
        return Err(ConfigError::Unsupported {
            field: "queue_provider",
            value: provider.as_str().into(),
            message: format!("this binary was built without the `{feature}` feature of netscript"),
        }
        .into());
    }
    let (q, k, joint): BackendPair = match provider {
        QueueProvider::Memory | QueueProvider::Auto => {
            (Arc::new(crate::queue::memory::MemoryQueue::new()), Arc::new(crate::kv::memory::MemoryKv::new()), None)
        }
        QueueProvider::Embedded => open_embedded(config)?,
        QueueProvider::Postgres => open_postgres(config).await?,
        QueueProvider::Redis => open_redis(config).await?,
        QueueProvider::Amqp => open_amqp(config, kv.clone()).await?,
    };
    tracing::info!(provider = provider.as_str(), %reason, "queue provider chosen");
    // The joint writer only serves the pair it was made for.
    let joint = joint.filter(|_| queue.is_none() && kv.is_none());
    Ok((queue.unwrap_or(q), kv.unwrap_or(k), reason, joint))
}

/// The broker URL a provider needs, or a clear error naming the variables that set it.
#[cfg(any(feature = "postgres", feature = "redis", feature = "amqp"))]
fn needed<'a>(url: &'a Option<BrokerUrl>, provider: &str, vars: &str) -> Result<&'a BrokerUrl, StartupError> {
    url.as_ref().ok_or_else(|| {
        ConfigError::Invalid {
            field: "brokers",
            message: format!("queue provider `{provider}` needs a URL: set {vars}, or `brokers` in code"),
        }
        .into()
    })
}

/// Runs `connect` until it succeeds; while `wait` lasts, failures are logged and retried with
/// a growing delay, after it the last failure is the error, naming the URL.
#[cfg(any(feature = "postgres", feature = "redis", feature = "amqp"))]
async fn connect_with_retry<T, E, F, Fut>(
    provider: &'static str,
    url: &BrokerUrl,
    wait: Duration,
    mut connect: F,
) -> Result<T, StartupError>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    let mut delay = Duration::from_millis(250);
    loop {
        match connect().await {
            Ok(t) => return Ok(t),
            Err(e) if tokio::time::Instant::now() + delay <= deadline => {
                tracing::warn!(provider, url = %url, source = %url.source, error = %e, retry_in = ?delay,
                    "broker not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(StartupError::Backend {
                    provider,
                    message: format!("cannot connect to {provider} at {url} (from {}): {e}", url.source),
                });
            }
        }
    }
}

#[cfg(feature = "embedded")]
fn open_embedded(config: &WorkersConfig) -> Result<BackendPair, StartupError> {
    use crate::embedded::EmbeddedDb;
    // The error names the file: a corrupt or unreadable store stops the app with its path.
    let db = EmbeddedDb::open(&config.data_dir)
        .map_err(|e| StartupError::Backend { provider: "embedded", message: e.to_string() })?;
    let db = Arc::new(db);
    let queue = crate::queue::embedded::EmbeddedQueue::new(Arc::clone(&db), &config.queue_name);
    let kv = crate::kv::embedded::EmbeddedKv::new(db);
    let joint = EmbeddedJoint { queue: queue.clone(), kv: kv.clone() };
    Ok((Arc::new(queue), Arc::new(kv), Some(Arc::new(joint))))
}

#[cfg(not(feature = "embedded"))]
fn open_embedded(_: &WorkersConfig) -> Result<BackendPair, StartupError> {
    Err(ConfigError::Unsupported {
        field: "queue_provider",
        value: "embedded".into(),
        message: "this binary was built without the `embedded` feature".into(),
    }
    .into())
}

#[cfg(feature = "postgres")]
async fn open_postgres(config: &WorkersConfig) -> Result<BackendPair, StartupError> {
    use crate::postgres::{PostgresDb, PostgresOptions};
    let url = needed(&config.brokers.postgres, "postgres", "DATABASE_URL or POSTGRES_URL")?;
    let db = connect_with_retry("postgres", url, config.broker_wait, || {
        let mut options = PostgresOptions::new(url.url.clone());
        options.schema = config.namespace.clone();
        PostgresDb::connect(options)
    })
    .await?;
    let db = Arc::new(db);
    let queue = crate::queue::postgres::PostgresQueue::new(Arc::clone(&db), &config.queue_name);
    let kv = crate::kv::postgres::PostgresKv::new(db);
    let joint = PostgresJoint { queue: queue.clone(), kv: kv.clone() };
    Ok((Arc::new(queue), Arc::new(kv), Some(Arc::new(joint))))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(_: &WorkersConfig) -> Result<BackendPair, StartupError> {
    unreachable_provider("postgres")
}

#[cfg(feature = "redis")]
async fn redis_db(config: &WorkersConfig) -> Result<Arc<crate::redis::RedisDb>, StartupError> {
    use crate::redis::{RedisDb, RedisOptions};
    let url = needed(&config.brokers.redis, "redis", "REDIS_URL, REDIS_URI, GARNET_URI or CACHE_PROVIDER=redis")?;
    let db = connect_with_retry("redis", url, config.broker_wait, || {
        let mut options = RedisOptions::new(url.url.clone());
        options.prefix = config.namespace.clone();
        options.tls_ca = config.brokers.redis_tls_ca.clone();
        RedisDb::connect(options)
    })
    .await?;
    Ok(Arc::new(db))
}

#[cfg(feature = "redis")]
async fn open_redis(config: &WorkersConfig) -> Result<BackendPair, StartupError> {
    let db = redis_db(config).await?;
    Ok((
        Arc::new(crate::queue::redis::RedisQueue::new(Arc::clone(&db), &config.queue_name)),
        Arc::new(crate::kv::redis::RedisKv::new(db)),
        None,
    ))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(_: &WorkersConfig) -> Result<BackendPair, StartupError> {
    unreachable_provider("redis")
}

/// RabbitMQ carries the messages; the key-value store (given, or Redis when known, or the
/// embedded store) holds the queue's bookkeeping and the execution records.
#[cfg(feature = "amqp")]
async fn open_amqp(config: &WorkersConfig, kv: Option<Arc<dyn Kv>>) -> Result<BackendPair, StartupError> {
    use crate::queue::amqp::{AmqpOptions, AmqpQueue};
    let url = needed(&config.brokers.amqp, "amqp", "RABBITMQ_URL or AMQP_URL")?;
    let kv: Arc<dyn Kv> = match kv {
        Some(kv) => kv,
        None => amqp_companion_kv(config).await?,
    };
    let queue = connect_with_retry("amqp", url, config.broker_wait, || {
        AmqpQueue::connect(AmqpOptions::new(url.url.clone()), &config.queue_name, Arc::clone(&kv))
    })
    .await?;
    Ok((Arc::new(queue), kv, None))
}

#[cfg(feature = "amqp")]
async fn amqp_companion_kv(config: &WorkersConfig) -> Result<Arc<dyn Kv>, StartupError> {
    #[cfg(feature = "redis")]
    if config.brokers.redis.is_some() {
        return Ok(Arc::new(crate::kv::redis::RedisKv::new(redis_db(config).await?)));
    }
    Ok(open_embedded(config)?.1)
}

#[cfg(not(feature = "amqp"))]
async fn open_amqp(_: &WorkersConfig, _: Option<Arc<dyn Kv>>) -> Result<BackendPair, StartupError> {
    unreachable_provider("amqp")
}

/// `open` refuses providers that are not compiled in before it gets here.
#[cfg(any(not(feature = "postgres"), not(feature = "redis"), not(feature = "amqp")))]
fn unreachable_provider(provider: &str) -> Result<BackendPair, StartupError> {
    Err(ConfigError::Unsupported {
        field: "queue_provider",
        value: provider.into(),
        message: format!("this binary was built without the `{provider}` feature of netscript"),
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Brokers;

    fn config(pairs: &[(&str, &str)]) -> WorkersConfig {
        let names: Vec<String> = pairs.iter().map(|(k, _)| k.to_string()).collect();
        let var = |n: &str| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string());
        WorkersConfig { brokers: Brokers::from_vars(var, &names), ..WorkersConfig::default() }
    }

    #[test]
    fn discovery_falls_back_to_embedded_and_says_why() {
        let (p, reason) = discover(&config(&[]));
        assert_eq!(p, QueueProvider::Embedded);
        assert_eq!(reason, format!("auto: no usable broker configured, using {}", p.as_str()));
    }

    #[test]
    fn discovery_order_is_rabbitmq_then_redis_and_never_postgres() {
        let all = [("REDIS_URL", "redis://r"), ("AMQP_URL", "amqp://a"), ("DATABASE_URL", "postgres://p/db")];
        let (p, reason) = discover(&config(&all));
        match (cfg!(feature = "amqp"), cfg!(feature = "redis")) {
            (true, _) => assert_eq!((p, reason.as_str()), (QueueProvider::Amqp, "auto: AMQP_URL is set")),
            (false, true) => {
                assert_eq!(p, QueueProvider::Redis);
                assert!(reason.contains("without the `amqp` feature"), "{reason}");
            }
            (false, false) => {
                assert_eq!(p, QueueProvider::Embedded);
                assert!(reason.contains("without the `amqp` feature"), "{reason}");
                assert!(reason.contains("without the `redis` feature"), "{reason}");
            }
        }
        let (p, reason) = discover(&config(&[("CACHE_PROVIDER", "garnet"), ("DATABASE_URL", "postgres://p/db")]));
        if cfg!(feature = "redis") {
            assert_eq!(p, QueueProvider::Redis);
            assert!(reason.contains("CACHE_PROVIDER=garnet"), "{reason}");
        } else {
            assert_eq!(p, QueueProvider::Embedded);
        }
        let (p, _) = discover(&config(&[("DATABASE_URL", "postgres://p/db"), ("CACHE_PROVIDER", "memcached")]));
        assert_eq!(p, QueueProvider::Embedded);
    }

    #[test]
    fn a_named_provider_is_used_as_configured() {
        let c = WorkersConfig { queue_provider: QueueProvider::Postgres, ..config(&[("REDIS_URL", "redis://r")]) };
        assert_eq!(discover(&c), (QueueProvider::Postgres, "configured as `postgres`".into()));
    }

    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn a_provider_without_its_url_is_a_clear_error() {
        let c = WorkersConfig { queue_provider: QueueProvider::Postgres, ..WorkersConfig::default() };
        let Err(e) = open(&c, None, None).await else { panic!("opened postgres without a URL") };
        assert!(e.to_string().contains("DATABASE_URL or POSTGRES_URL"), "{e}");
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn a_broker_that_is_down_is_an_error_naming_the_url_without_the_password() {
        // Nothing listens on port 1.
        let mut c = WorkersConfig { queue_provider: QueueProvider::Redis, ..WorkersConfig::default() };
        c.brokers.redis = Some(BrokerUrl::new("redis://:hunter2@127.0.0.1:1"));
        let Err(e) = open(&c, None, None).await else { panic!("connected to a closed port") };
        let e = e.to_string();
        assert!(e.contains("redis://:***@127.0.0.1:1"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        // With a wait, it retries (and logs) until the wait is over, then says the same.
        c.broker_wait = Duration::from_millis(700);
        let started = std::time::Instant::now();
        let Err(e) = open(&c, None, None).await else { panic!("connected to a closed port") };
        assert!(started.elapsed() >= Duration::from_millis(250), "retried once after 250 ms: {:?}", started.elapsed());
        assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
    }
}
