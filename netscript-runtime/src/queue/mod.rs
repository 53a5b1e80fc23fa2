//! The queue contract: durable messages with delays, priorities, idempotency and concurrency
//! keys, claimed under a lease and settled by ack, retry, dead-letter or release.
//!
//! It is a public API in its own right: nothing here knows about jobs. The job runtime puts
//! the job id in [`NewMessage::kind`] and the JSON payload in [`NewMessage::payload`].
//!
//! Every call is batch-first (`enqueue` takes many messages, `settle` many settlements):
//! backends turn a batch into one round trip or one transaction, which is where their speed
//! comes from. Delivery is at least once: a lease that is not extended in time lapses and the
//! message is claimed again, with a new fencing token, so a late settlement from the old
//! holder is refused ([`Settled::Stale`]) instead of clobbering the new run.
//!
//! Backends: [`memory`] (tests, benchmarks; not durable) and `embedded` (SQLite, the durable
//! default; feature `embedded`).

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
pub mod typed;

/// A message's id: a UUIDv7, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub uuid::Uuid);

/// A hash map keyed by message id, hashed with foldhash (seeded per process) instead of
/// SipHash: the worker looks ids up several times per job.
pub(crate) type IdMap<V> = std::collections::HashMap<MessageId, V, foldhash::fast::RandomState>;

/// A hash set of message ids (see [`IdMap`]).
pub(crate) type IdSet = std::collections::HashSet<MessageId, foldhash::fast::RandomState>;

impl MessageId {
    /// A new time-ordered id.
    pub fn new() -> Self {
        MessageId(uuid::Uuid::now_v7())
    }

    /// The 16 bytes of the id.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// The id as text, the same as its `Display`, written into `buf` without allocating or
    /// going through `core::fmt` (the worker does this for every attempt's log span).
    pub fn encode<'b>(&self, buf: &'b mut [u8; MessageId::TEXT_LEN]) -> &'b str {
        self.0.hyphenated().encode_lower(buf)
    }

    /// The length of the id as text: a hyphenated UUID.
    pub const TEXT_LEN: usize = uuid::fmt::Hyphenated::LENGTH;
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for MessageId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(MessageId)
    }
}

impl schemars::JsonSchema for MessageId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MessageId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "format": "uuid" })
    }
}

/// A message to enqueue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    /// Chosen by the caller, so it can be recorded before the message is visible.
    pub id: MessageId,
    /// The topic; workers claim from the topics they serve.
    pub topic: String,
    /// What the message is for, inside its topic (the job runtime puts the job id here).
    pub kind: String,
    /// Opaque body.
    pub payload: Vec<u8>,
    /// Small string metadata: correlation id, trace context.
    pub headers: Vec<(String, String)>,
    /// Higher is claimed first.
    pub priority: i32,
    /// Not claimable before this much time has passed.
    pub delay: Duration,
    /// A second enqueue with the same key, while the key is remembered, returns the first
    /// message's id instead of adding a message.
    pub idempotency_key: Option<String>,
    /// Two messages with the same key are never leased at the same time.
    pub concurrency_key: Option<String>,
}

impl NewMessage {
    /// A message with a fresh id, priority 0, no delay and no keys.
    pub fn new(topic: impl Into<String>, kind: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            id: MessageId::new(),
            topic: topic.into(),
            kind: kind.into(),
            payload: payload.into(),
            headers: Vec::new(),
            priority: 0,
            delay: Duration::ZERO,
            idempotency_key: None,
            concurrency_key: None,
        }
    }

    /// Sets the priority.
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the delay.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Sets the idempotency key.
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the concurrency key.
    pub fn with_concurrency_key(mut self, key: impl Into<String>) -> Self {
        self.concurrency_key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// What `enqueue` did with one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// The message was added.
    Created(MessageId),
    /// Its idempotency key was taken: this is the id of the message that holds it.
    Duplicate(MessageId),
}

impl Enqueued {
    /// The id of the message that will run.
    pub fn id(&self) -> MessageId {
        match *self {
            Enqueued::Created(id) | Enqueued::Duplicate(id) => id,
        }
    }
}

/// Proof of a claim. Settling or extending with a lease whose token is no longer current
/// is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The claimed message.
    pub message_id: MessageId,
    /// The fencing token: grows by one at every claim of the message.
    pub token: u64,
}

/// A claimed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The message's id.
    pub id: MessageId,
    /// Its topic.
    pub topic: String,
    /// Its kind.
    pub kind: String,
    /// Its body.
    pub payload: Vec<u8>,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Its priority.
    pub priority: i32,
    /// Its idempotency key.
    pub idempotency_key: Option<String>,
    /// Its concurrency key.
    pub concurrency_key: Option<String>,
    /// 1 on the first delivery; grows at every claim, including after a lapsed lease.
    pub attempt: u32,
    /// When it was first enqueued.
    pub enqueued_at: Timestamp,
    /// The error of the previous attempt, when it was retried.
    pub last_error: Option<String>,
    /// The claim.
    pub lease: Lease,
}

impl Delivery {
    /// The value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// What a joint enqueue (`enqueue_with_kv`: a queue and a key-value store in one database)
/// refuses before it touches the database: a store of another database (`own` names the
/// queue's: "file", "database"), writes not paired one to one with the messages, and writes
/// the backend cannot join (`joinable`; `takes` says which it can).
#[cfg(any(feature = "embedded", feature = "postgres"))]
pub(crate) fn joint_refusal(
    backend: &'static str,
    same_store: bool,
    own: &str,
    messages: usize,
    writes: &[crate::kv::AtomicWrite],
    joinable: impl Fn(&crate::kv::AtomicWrite) -> bool,
    takes: &str,
) -> Result<(), QueueError> {
    let refused = |message: String| Err(QueueError::Backend { backend, message });
    if !same_store {
        return refused(format!("enqueue_with_kv needs the key-value store of the queue's own {own}"));
    }
    if messages != writes.len() {
        return refused(format!("enqueue_with_kv: {messages} messages but {} writes", writes.len()));
    }
    if !writes.iter().all(joinable) {
        return refused(format!("enqueue_with_kv takes {takes}"));
    }
    Ok(())
}

/// The topics a queue handle knows its table of topics to hold (the embedded and PostgreSQL
/// queues keep one, for claims of every topic): an enqueue writes only the others.
#[cfg(any(feature = "embedded", feature = "postgres"))]
#[derive(Debug, Default)]
pub(crate) struct KnownTopics(std::sync::Mutex<std::collections::HashSet<String>>);

#[cfg(any(feature = "embedded", feature = "postgres"))]
impl KnownTopics {
    /// The topics of `messages` not known yet, each once.
    pub(crate) fn unknown(&self, messages: &[NewMessage]) -> Vec<String> {
        let known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = std::collections::HashSet::new();
        messages
            .iter()
            .map(|m| m.topic.as_str())
            .filter(|t| !known.contains(*t) && seen.insert(*t))
            .map(str::to_owned)
            .collect()
    }

    /// Remembers topics that a committed enqueue wrote.
    pub(crate) fn remember(&self, topics: impl IntoIterator<Item = String>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend(topics);
    }
}

/// Which messages to claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRequest {
    /// Topics to claim from; empty means every topic.
    pub topics: Vec<String>,
    /// At most this many.
    pub max: usize,
    /// How long the claim holds unless extended.
    pub lease: Duration,
}

/// How a claimed message ends (or goes back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Done: remove the message.
    Ack(Lease),
    /// Failed: make it claimable again after `delay`, remembering `error`.
    Retry {
        /// The claim.
        lease: Lease,
        /// Not claimable before this.
        delay: Duration,
        /// Why the attempt failed.
        error: String,
    },
    /// Failed for good: move it to the dead-letter store with `error`.
    DeadLetter {
        /// The claim.
        lease: Lease,
        /// Why.
        error: String,
    },
    /// Give the message back unrun (shutdown): claimable again at once, and the attempt it
    /// was claimed for does not count.
    Release(Lease),
}

impl Settlement {
    /// The lease this settles.
    pub fn lease(&self) -> &Lease {
        match self {
            Settlement::Ack(l) | Settlement::Release(l) => l,
            Settlement::Retry { lease, .. } | Settlement::DeadLetter { lease, .. } => lease,
        }
    }
}

/// Result of one settlement or lease extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Applied.
    Ok,
    /// Refused: the lease lapsed and the message was claimed again (or is gone).
    Stale,
}

/// What [`Queue::cancel`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancelled {
    /// The message was waiting (ready or delayed) and is gone; it will not run.
    Removed,
    /// A worker holds it: the queue leaves it alone, and the caller must stop the run.
    Leased,
    /// No waiting or leased message has this id (it finished, is dead-lettered, or never was).
    NotFound,
}

/// A message in the dead-letter store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message, as last delivered (`lease.token` is its last fencing token).
    pub message: Delivery,
    /// The error that sent it here.
    pub error: String,
    /// When.
    pub failed_at: Timestamp,
}

/// Counts of messages, for the API and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueStats {
    /// Claimable now.
    pub ready: u64,
    /// Waiting for a delay or a retry backoff.
    pub delayed: u64,
    /// Leased by a worker.
    pub leased: u64,
    /// In the dead-letter store.
    pub dead: u64,
    /// Settlements and extensions refused because their lease was stale.
    pub stale_settlements: u64,
}

/// A queue error.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The backend could not be reached or failed.
    #[error("queue backend `{backend}`: {message}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The backend's stored data could not be read.
    #[error("queue backend `{backend}`: corrupt data: {message}")]
    Corrupt {
        /// Which backend.
        backend: &'static str,
        /// What was wrong.
        message: String,
    },
    /// The queue was closed.
    #[error("queue is closed")]
    Closed,
}

/// The queue contract. See the [module docs](self).
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// The backend's name: `memory`, `embedded`, ...
    fn provider(&self) -> &'static str;

    /// Adds messages; one result per message, in order.
    async fn enqueue(&self, messages: Vec<NewMessage>) -> Result<Vec<Enqueued>, QueueError>;

    /// Claims up to `request.max` claimable messages: highest priority first, then oldest
    /// visible first. Includes messages whose lease lapsed. Never hands out two messages
    /// with the same concurrency key at once, nor one whose key is already leased.
    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Delivery>, QueueError>;

    /// Extends leases to `lease` from now; one result per lease.
    async fn extend(&self, leases: &[Lease], lease: Duration) -> Result<Vec<Settled>, QueueError>;

    /// Settles claimed messages; one result per settlement.
    async fn settle(&self, settlements: Vec<Settlement>) -> Result<Vec<Settled>, QueueError>;

    /// The newest dead letters, newest first.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError>;

    /// Moves a dead letter back to the queue, claimable at once with its attempts reset.
    /// `false` if no dead letter has this id.
    async fn redrive(&self, id: MessageId) -> Result<bool, QueueError>;

    /// Deletes up to `limit` dead letters whose [`DeadLetter::failed_at`] is strictly before
    /// `failed_before`, oldest first, and returns how many it deleted: the dead-letter
    /// retention, called by the runtime's pruner in bounded batches until a call deletes fewer
    /// than `limit`.
    ///
    /// A purged message is finished: it can no longer be redriven, and an idempotency key it
    /// held (a dead letter keeps its key, so a duplicate enqueue does not run it again) is
    /// remembered for the idempotency window from the purge, as after an ack, then forgotten.
    async fn purge_dead(&self, failed_before: Timestamp, limit: usize) -> Result<usize, QueueError>;

    /// Removes a waiting message so it never runs; leaves a leased one to its holder (see
    /// [`Cancelled`]). An idempotency key it held is remembered as after an ack.
    async fn cancel(&self, id: MessageId) -> Result<Cancelled, QueueError>;

    /// Counts.
    async fn stats(&self) -> Result<QueueStats, QueueError>;

    /// Counts per topic (`stale_settlements` is only counted queue-wide, so 0 here).
    async fn topic_stats(&self) -> Result<std::collections::BTreeMap<String, QueueStats>, QueueError>;

    /// Returns when messages may have become claimable (something was enqueued, retried or
    /// released), or after `timeout`. May return early; callers re-check with `claim`.
    async fn wait_for_work(&self, timeout: Duration);

    /// Enqueues one message.
    async fn enqueue_one(&self, message: NewMessage) -> Result<Enqueued, QueueError> {
        let mut out = self.enqueue(vec![message]).await?;
        out.pop().ok_or(QueueError::Closed)
    }

    /// Settles one message.
    async fn settle_one(&self, settlement: Settlement) -> Result<Settled, QueueError> {
        let mut out = self.settle(vec![settlement]).await?;
        out.pop().ok_or(QueueError::Closed)
    }
}

/// Serde helper: an optional duration written as a humantime string (`"250ms"`, `"5s"`) or a
/// number of milliseconds.
pub mod duration_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as `"1s 500ms"`.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    /// Accepts `"250ms"`, `"5s"`, `"1m 30s"` or a number of milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Millis(u64),
            Text(String),
        }
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Millis(ms)) => Ok(Some(Duration::from_millis(ms))),
            Some(Raw::Text(t)) => humantime::parse_duration(&t)
                .map(Some)
                .map_err(|e| serde::de::Error::custom(format!("invalid duration `{t}`: {e}"))),
        }
    }
}
