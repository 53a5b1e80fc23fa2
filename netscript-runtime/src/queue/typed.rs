//! A typed queue over the [queue contract](super): payloads of one Rust type, checked against
//! that type's JSON Schema when they go in and when they come out, and a parallel
//! [`Consumer`] that runs a handler for each of them with its own concurrency.
//!
//! It sits beside the job runtime, not inside it: no job registry, no execution records, no
//! dispatcher. Any [`Queue`] backend works (memory, embedded, postgres, redis, amqp), for
//! example the runtime's own (`Runtime::queue()`) on a topic of its own.
//!
//! The schema is `schemars::schema_for!(T)`, compiled once into a validator, so schemars
//! attributes such as `#[schemars(range(min = 1))]`, `length(...)`, `regex(...)` or `email`
//! constrain the payload beyond its Rust type. On enqueue a payload that fails is always an
//! error ([`TypedQueueError::Invalid`]): it is the caller's bug. On dequeue a payload that
//! fails (another producer, an older version of `T`, a hand-edited row) follows the
//! configured [`OnInvalid`] policy.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use netscript_runtime::queue::memory::MemoryQueue;
//! use netscript_runtime::queue::typed::TypedQueue;
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, JsonSchema)]
//! struct Email {
//!     #[schemars(email)]
//!     to: String,
//!     #[schemars(length(min = 1, max = 200))]
//!     subject: String,
//! }
//!
//! let emails = TypedQueue::<Email>::new(Arc::new(MemoryQueue::new()), "emails")?;
//! emails.enqueue(&Email { to: "ada@example.com".into(), subject: "Hello".into() }).await?;
//!
//! // Untyped input is checked against the schema: an empty subject is refused, with its path.
//! let err = emails.enqueue_json(serde_json::json!({ "to": "ada@example.com", "subject": "" })).await;
//! assert!(err.unwrap_err().to_string().contains("/subject"));
//!
//! // Claim, handle, settle.
//! for item in emails.claim(10, Duration::from_secs(30)).await? {
//!     let delivery = item?; // only an error under `OnInvalid::Error`
//!     assert_eq!(delivery.value.subject, "Hello");
//!     delivery.ack().await?;
//! }
//!
//! // Or let a consumer run a handler for each, four at a time, until `stop` fires.
//! let stop = netscript_runtime::CancellationToken::new();
//! stop.cancel(); // here: return at once; in an app, on shutdown
//! let report = emails
//!     .consumer()
//!     .concurrency(4)
//!     .run(|email: Email| async move { println!("to {}", email.to); Ok::<(), std::io::Error>(()) }, stop)
//!     .await;
//! assert_eq!(report.failed, 0);
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt as _;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{ClaimRequest, Delivery, Enqueued, Lease, MessageId, NewMessage, Queue, QueueError, Settled, Settlement};
use crate::job::Backoff;
use crate::time::Timestamp;

/// What happens to a claimed message whose payload does not match the schema of `T` (or is
/// not JSON, or does not decode as `T`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnInvalid {
    /// Ack it (it is gone) and log a warning with its id and the reason.
    Discard,
    /// Move it to the dead-letter store with the error "payload does not match the schema of
    /// `<type>`: `<path>`: `<reason>`", where it can be read and redriven. The default.
    #[default]
    DeadLetter,
    /// Hand it to the caller of [`TypedQueue::claim`] as an [`InvalidDelivery`], still leased,
    /// to ack, retry, dead-letter or release. (A [`Consumer`] has no caller to hand it to: it
    /// dead-letters it.)
    Error,
}

/// A typed queue error.
#[derive(Debug, thiserror::Error)]
pub enum TypedQueueError {
    /// The JSON Schema of the payload type did not compile into a validator.
    #[error("the JSON Schema of `{type_name}` does not compile: {message}")]
    Schema {
        /// The payload type.
        type_name: String,
        /// The validator's message.
        message: String,
    },
    /// A payload did not match the schema (or does not decode as the payload type).
    #[error("invalid payload at `{path}`: {reason}")]
    Invalid {
        /// JSON pointer of the first failing value (`""` for the whole payload).
        path: String,
        /// Why it fails.
        reason: String,
    },
    /// The value could not be serialized to JSON.
    #[error("payload could not be serialized: {0}")]
    Encode(String),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The compiled schema of a payload type.
struct Schema {
    type_name: String,
    validator: jsonschema::Validator,
}

impl Schema {
    /// The first problem with `value`, as (JSON pointer, reason).
    fn check<T: DeserializeOwned>(&self, value: &serde_json::Value) -> Result<(), (String, String)> {
        if let Err(e) = self.validator.validate(value) {
            return Err((e.instance_path().as_str().to_owned(), e.to_string()));
        }
        // A schema can be looser than serde (a custom `Deserialize`, `deny_unknown_fields`
        // without `additionalProperties`): what is accepted must also decode.
        serde_path_to_error::deserialize::<_, T>(value)
            .map(drop)
            .map_err(|e| (pointer(e.path()), e.inner().to_string()))
    }
}

/// A serde path (`items[2].sku`) as a JSON pointer (`/items/2/sku`).
fn pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        out.push('/');
        match segment {
            Segment::Seq { index } => out.push_str(&index.to_string()),
            Segment::Map { key } => out.push_str(&key.replace('~', "~0").replace('/', "~1")),
            Segment::Enum { variant } => out.push_str(variant),
            Segment::Unknown => out.push('?'),
        }
    }
    out
}

/// A queue of `T` payloads on one topic of an [`Arc<dyn Queue>`], checked against `T`'s JSON
/// Schema on enqueue and on claim. Cheap to clone.
///
/// Messages are written with [`NewMessage::kind`] set to the schema's name
/// (`T::schema_name()`), or to the name given to [`with_kind`](Self::with_kind). The kind is a
/// label for people and other consumers: claims take every message of the topic and check each
/// by its payload, whatever its kind. Give the typed queue a topic of its own.
///
/// See the [module docs](self) for an example.
pub struct TypedQueue<T> {
    queue: Arc<dyn Queue>,
    topic: String,
    kind: String,
    on_invalid: OnInvalid,
    schema: Arc<Schema>,
    _payload: PhantomData<fn() -> T>,
}

impl<T> Clone for TypedQueue<T> {
    fn clone(&self) -> Self {
        Self {
            queue: Arc::clone(&self.queue),
            topic: self.topic.clone(),
            kind: self.kind.clone(),
            on_invalid: self.on_invalid,
            schema: Arc::clone(&self.schema),
            _payload: PhantomData,
        }
    }
}

impl<T> fmt::Debug for TypedQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedQueue")
            .field("provider", &self.queue.provider())
            .field("topic", &self.topic)
            .field("kind", &self.kind)
            .field("type", &self.schema.type_name)
            .field("on_invalid", &self.on_invalid)
            .finish()
    }
}

impl<T> TypedQueue<T>
where
    T: Serialize + DeserializeOwned + JsonSchema + Send + Sync + 'static,
{
    /// A typed queue on `topic`, with the kind `T::schema_name()` and [`OnInvalid::DeadLetter`].
    /// Fails only if `T`'s schema does not compile (a hand-written `JsonSchema` impl with an
    /// invalid schema).
    pub fn new(queue: Arc<dyn Queue>, topic: impl Into<String>) -> Result<Self, TypedQueueError> {
        let type_name = T::schema_name().into_owned();
        let schema = schemars::schema_for!(T);
        // Formats (`email`, `uuid`, `date-time`, ...) are checked; ones the validator does not
        // know (schemars' `uint64`, `int32`) are ignored, the range beside them still holds.
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(schema.as_value())
            .map_err(|e| TypedQueueError::Schema { type_name: type_name.clone(), message: e.to_string() })?;
        Ok(Self {
            queue,
            topic: topic.into(),
            kind: type_name.clone(),
            on_invalid: OnInvalid::default(),
            schema: Arc::new(Schema { type_name, validator }),
            _payload: PhantomData,
        })
    }

    /// Writes messages with this kind instead of the schema's name.
    pub fn with_kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = kind.into();
        self
    }

    /// What to do with a claimed payload that does not match the schema.
    pub fn on_invalid(mut self, policy: OnInvalid) -> Self {
        self.on_invalid = policy;
        self
    }

    /// The underlying queue.
    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.queue
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The kind written on enqueued messages.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Checks `value` against the schema and that it decodes as `T`.
    pub fn validate(&self, value: &serde_json::Value) -> Result<(), TypedQueueError> {
        self.schema.check::<T>(value).map_err(|(path, reason)| TypedQueueError::Invalid { path, reason })
    }

    /// Enqueues `value` with default options.
    pub async fn enqueue(&self, value: &T) -> Result<Enqueued, TypedQueueError> {
        self.enqueue_with(value, |m| m).await
    }

    /// Enqueues `value`, with options set on the message by `options` through the
    /// [`NewMessage`] builder methods (`with_delay`, `with_priority`, `with_idempotency_key`,
    /// `with_concurrency_key`, `with_header`). The topic, kind and payload are this queue's
    /// whatever `options` does.
    pub async fn enqueue_with(
        &self,
        value: &T,
        options: impl FnOnce(NewMessage) -> NewMessage,
    ) -> Result<Enqueued, TypedQueueError> {
        let json = serde_json::to_value(value).map_err(|e| TypedQueueError::Encode(e.to_string()))?;
        self.enqueue_json_with(json, options).await
    }

    /// Enqueues an untyped payload after checking it against the schema: a mismatch is
    /// [`TypedQueueError::Invalid`] with the JSON pointer of the first failing value.
    pub async fn enqueue_json(&self, value: serde_json::Value) -> Result<Enqueued, TypedQueueError> {
        self.enqueue_json_with(value, |m| m).await
    }

    /// [`enqueue_json`](Self::enqueue_json) with options, as in
    /// [`enqueue_with`](Self::enqueue_with).
    pub async fn enqueue_json_with(
        &self,
        value: serde_json::Value,
        options: impl FnOnce(NewMessage) -> NewMessage,
    ) -> Result<Enqueued, TypedQueueError> {
        self.validate(&value)?;
        let payload = serde_json::to_vec(&value).map_err(|e| TypedQueueError::Encode(e.to_string()))?;
        let mut message = options(NewMessage::new(self.topic.clone(), self.kind.clone(), Vec::new()));
        message.topic.clone_from(&self.topic);
        message.kind.clone_from(&self.kind);
        message.payload = payload;
        Ok(self.queue.enqueue_one(message).await?)
    }

    /// Claims up to `max` messages of the topic under a lease of `lease`, checks and decodes
    /// each payload, and returns them in claim order (priority, then age).
    ///
    /// A payload that fails is handled by the [`OnInvalid`] policy: under `Discard` and
    /// `DeadLetter` it is settled here and left out of the result (so fewer than the claimed
    /// number may come back, even none while more wait: claim again); under `Error` it comes
    /// back as `Err(InvalidDelivery)`, still leased, for the caller to settle.
    pub async fn claim(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Result<TypedDelivery<T>, InvalidDelivery>>, TypedQueueError> {
        let request = ClaimRequest { topics: vec![self.topic.clone()], max, lease };
        let deliveries = self.queue.claim(request).await?;
        let mut out = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            match self.decode(delivery) {
                Ok(d) => out.push(Ok(d)),
                Err(invalid) => match self.on_invalid {
                    OnInvalid::Error => out.push(Err(invalid)),
                    policy => invalid.settle_by(policy).await,
                },
            }
        }
        Ok(out)
    }

    /// Checks and decodes one claimed message.
    fn decode(&self, delivery: Delivery) -> Result<TypedDelivery<T>, InvalidDelivery> {
        let checked = serde_json::from_slice::<serde_json::Value>(&delivery.payload)
            .map_err(|e| (String::new(), format!("not JSON: {e}")))
            .and_then(|json| {
                self.schema.check::<T>(&json)?;
                serde_json::from_value::<T>(json).map_err(|e| (String::new(), e.to_string()))
            });
        match checked {
            Ok(value) => Ok(TypedDelivery { value, delivery, queue: Arc::clone(&self.queue) }),
            Err((path, reason)) => Err(InvalidDelivery {
                delivery: Box::new(delivery),
                type_name: self.schema.type_name.clone(),
                path,
                reason,
                queue: Arc::clone(&self.queue),
            }),
        }
    }

    /// A parallel consumer of this queue, to configure and [`run`](Consumer::run).
    pub fn consumer(self) -> Consumer<T> {
        Consumer {
            queue: self,
            concurrency: 1,
            lease: Duration::from_secs(30),
            retries: 3,
            backoff: Backoff::default(),
        }
    }

    /// Runs `handler` for every message, up to `concurrency` at once, until `stop` fires:
    /// [`consumer`](Self::consumer) with its defaults and `concurrency`, then
    /// [`run`](Consumer::run).
    pub async fn consume<F, Fut, E>(self, concurrency: usize, handler: F, stop: CancellationToken) -> ConsumeReport
    where
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        self.consumer().concurrency(concurrency).run(handler, stop).await
    }
}

/// A claimed message with its decoded payload. Settle it once with [`ack`](Self::ack),
/// [`retry`](Self::retry), [`dead_letter`](Self::dead_letter) or [`release`](Self::release);
/// one left unsettled goes back to the queue when its lease lapses.
pub struct TypedDelivery<T> {
    /// The decoded payload.
    pub value: T,
    delivery: Delivery,
    queue: Arc<dyn Queue>,
}

impl<T: fmt::Debug> fmt::Debug for TypedDelivery<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedDelivery")
            .field("id", &self.delivery.id)
            .field("attempt", &self.delivery.attempt)
            .field("value", &self.value)
            .finish_non_exhaustive()
    }
}

impl<T> TypedDelivery<T> {
    /// The message's id.
    pub fn id(&self) -> MessageId {
        self.delivery.id
    }

    /// 1 on the first delivery; grows at every claim, including after a lapsed lease.
    pub fn attempt(&self) -> u32 {
        self.delivery.attempt
    }

    /// The message's headers.
    pub fn headers(&self) -> &[(String, String)] {
        &self.delivery.headers
    }

    /// The value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.delivery.header(name)
    }

    /// The claim.
    pub fn lease(&self) -> Lease {
        self.delivery.lease
    }

    /// When the message was first enqueued.
    pub fn enqueued_at(&self) -> Timestamp {
        self.delivery.enqueued_at
    }

    /// The error of the previous attempt, when it was retried.
    pub fn last_error(&self) -> Option<&str> {
        self.delivery.last_error.as_deref()
    }

    /// The message as the queue delivered it.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// The payload, dropping the claim (it lapses unless settled through the queue).
    pub fn into_value(self) -> T {
        self.value
    }

    /// Extends the lease to `lease` from now; [`Settled::Stale`] if it already lapsed and the
    /// message was claimed again.
    pub async fn extend(&self, lease: Duration) -> Result<Settled, TypedQueueError> {
        let mut out = self.queue.extend(&[self.delivery.lease], lease).await?;
        Ok(out.pop().unwrap_or(Settled::Stale))
    }

    /// Done: removes the message.
    pub async fn ack(self) -> Result<Settled, TypedQueueError> {
        Ok(self.queue.settle_one(Settlement::Ack(self.delivery.lease)).await?)
    }

    /// Failed: claimable again after `delay`, remembering `error`.
    pub async fn retry(self, delay: Duration, error: impl Into<String>) -> Result<Settled, TypedQueueError> {
        let settlement = Settlement::Retry { lease: self.delivery.lease, delay, error: error.into() };
        Ok(self.queue.settle_one(settlement).await?)
    }

    /// Failed for good: moves the message to the dead-letter store with `error`.
    pub async fn dead_letter(self, error: impl Into<String>) -> Result<Settled, TypedQueueError> {
        let settlement = Settlement::DeadLetter { lease: self.delivery.lease, error: error.into() };
        Ok(self.queue.settle_one(settlement).await?)
    }

    /// Gives the message back unrun: claimable again at once, and this attempt does not count.
    pub async fn release(self) -> Result<Settled, TypedQueueError> {
        Ok(self.queue.settle_one(Settlement::Release(self.delivery.lease)).await?)
    }
}

/// A claimed message whose payload does not match the schema, still leased (see
/// [`OnInvalid::Error`]). Settle it with one of its methods; left alone, it goes back to the
/// queue when its lease lapses and comes back at the next claim.
pub struct InvalidDelivery {
    // Boxed: it travels in the `Err` of a `Result` beside the (smaller) valid delivery.
    delivery: Box<Delivery>,
    type_name: String,
    path: String,
    reason: String,
    queue: Arc<dyn Queue>,
}

impl fmt::Debug for InvalidDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidDelivery")
            .field("id", &self.delivery.id)
            .field("type", &self.type_name)
            .field("path", &self.path)
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for InvalidDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "payload does not match the schema of {}: {}: {}", self.type_name, self.path, self.reason)
    }
}

impl std::error::Error for InvalidDelivery {}

impl InvalidDelivery {
    /// The message as the queue delivered it, with its raw payload.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// JSON pointer of the first failing value (`""` for the whole payload).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Why it fails.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Drops the message (acks it).
    pub async fn discard(self) -> Result<Settled, TypedQueueError> {
        Ok(self.queue.settle_one(Settlement::Ack(self.delivery.lease)).await?)
    }

    /// Moves the message to the dead-letter store with this error's message.
    pub async fn dead_letter(self) -> Result<Settled, TypedQueueError> {
        let settlement = Settlement::DeadLetter { lease: self.delivery.lease, error: self.to_string() };
        Ok(self.queue.settle_one(settlement).await?)
    }

    /// Makes the message claimable again after `delay` (for a fixed producer or consumer).
    pub async fn retry(self, delay: Duration) -> Result<Settled, TypedQueueError> {
        let settlement = Settlement::Retry { lease: self.delivery.lease, delay, error: self.to_string() };
        Ok(self.queue.settle_one(settlement).await?)
    }

    /// Gives the message back at once, unrun.
    pub async fn release(self) -> Result<Settled, TypedQueueError> {
        Ok(self.queue.settle_one(Settlement::Release(self.delivery.lease)).await?)
    }

    /// Settles by `policy` (discard, or dead-letter otherwise). A failure is logged: the lease
    /// then lapses and the message comes back to be handled again.
    async fn settle_by(self, policy: OnInvalid) {
        let id = self.delivery.id;
        let reason = self.to_string();
        let result = if policy == OnInvalid::Discard {
            tracing::warn!(message_id = %id, %reason, "discarding a message whose payload does not match the schema");
            self.discard().await
        } else {
            tracing::warn!(message_id = %id, %reason, "dead-lettering a message whose payload does not match the schema");
            self.dead_letter().await
        };
        if let Err(e) = result {
            tracing::warn!(message_id = %id, error = %e, "could not settle an invalid message; it comes back when its lease lapses");
        }
    }
}

/// What a [`Consumer`] did, returned when it stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsumeReport {
    /// Messages whose handler returned `Ok` (acked).
    pub processed: u64,
    /// Handler attempts that returned an error or panicked (retried or dead-lettered).
    pub failed: u64,
    /// Messages dead-lettered after their last failed attempt.
    pub dead_lettered: u64,
    /// Payloads that did not match the schema (discarded or dead-lettered by the policy).
    pub invalid: u64,
}

/// A parallel consumer of a [`TypedQueue`]: runs a handler for each message with its own
/// concurrency, independent of the job runtime's. Made by [`TypedQueue::consumer`].
///
/// It claims as many messages as it has free slots, extends the lease of each running one every
/// third of the lease, acks on `Ok`, retries an `Err` (or a panic, which is caught) after the
/// [`Backoff`] delay until `1 + retries` attempts are used, then dead-letters it with the last
/// error. When the queue is empty it waits on [`Queue::wait_for_work`] rather than polling.
#[derive(Debug)]
pub struct Consumer<T> {
    queue: TypedQueue<T>,
    concurrency: usize,
    lease: Duration,
    retries: u32,
    backoff: Backoff,
}

/// A running handler's claim, kept alive by the heartbeat.
type InFlight = Arc<Mutex<HashMap<MessageId, Lease>>>;

fn lock(in_flight: &InFlight) -> MutexGuard<'_, HashMap<MessageId, Lease>> {
    // The map stays consistent whatever panicked while holding it: insert and remove only.
    in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How one message ended in the consumer.
enum Outcome {
    Processed,
    Retried,
    Dead,
}

impl<T> Consumer<T>
where
    T: Serialize + DeserializeOwned + JsonSchema + Send + Sync + 'static,
{
    /// How many handlers run at once (default 1, at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The claim lease, extended every third of it while the handler runs (default 30 s,
    /// at least 30 ms).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(30));
        self
    }

    /// Retries after the first failed attempt before dead-lettering (default 3).
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// The delay before each retry (default exponential from 1 s, with jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Runs until `stop` fires, then stops claiming, lets the running handlers finish, and
    /// returns what it did. Queue errors are logged and retried with a growing pause; they do
    /// not stop the consumer.
    pub async fn run<F, Fut, E>(self, handler: F, stop: CancellationToken) -> ConsumeReport
    where
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let handler = Arc::new(handler);
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let in_flight: InFlight = Arc::default();
        let heartbeat = tokio::spawn(heartbeat(Arc::clone(self.queue.queue()), Arc::clone(&in_flight), self.lease));
        let mut running = JoinSet::new();
        let mut report = ConsumeReport::default();
        let mut claim_failures = 0u32;
        loop {
            while let Some(done) = running.try_join_next() {
                count(&mut report, done);
            }
            if stop.is_cancelled() {
                break;
            }
            let free = slots.available_permits();
            if free == 0 {
                tokio::select! {
                    () = stop.cancelled() => break,
                    Some(done) = running.join_next() => count(&mut report, done),
                }
                continue;
            }
            let request = ClaimRequest { topics: vec![self.queue.topic.clone()], max: free, lease: self.lease };
            let deliveries = match self.queue.queue.claim(request).await {
                Ok(d) => {
                    claim_failures = 0;
                    d
                }
                Err(e) => {
                    claim_failures = claim_failures.saturating_add(1);
                    let pause = claim_pause(claim_failures);
                    if claim_failures == 1 {
                        tracing::warn!(error = %e, topic = %self.queue.topic, "typed consumer could not claim; retrying");
                    }
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(pause) => continue,
                    }
                }
            };
            if deliveries.is_empty() {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = self.queue.queue.wait_for_work(Duration::from_secs(1)) => {}
                }
                continue;
            }
            if stop.is_cancelled() {
                // Stopped while claiming: give back what has not started.
                let unstarted = deliveries.iter().map(|d| Settlement::Release(d.lease)).collect();
                if let Err(e) = self.queue.queue.settle(unstarted).await {
                    tracing::warn!(error = %e, "could not release unstarted messages; they come back when their leases lapse");
                }
                break;
            }
            for delivery in deliveries {
                let typed = match self.queue.decode(delivery) {
                    Ok(d) => d,
                    Err(invalid) => {
                        report.invalid += 1;
                        let policy = match self.queue.on_invalid {
                            OnInvalid::Discard => OnInvalid::Discard,
                            OnInvalid::DeadLetter | OnInvalid::Error => OnInvalid::DeadLetter,
                        };
                        invalid.settle_by(policy).await;
                        continue;
                    }
                };
                // Claimed no more than the free slots, and only this loop takes them.
                let permit = match Arc::clone(&slots).try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => match Arc::clone(&slots).acquire_owned().await {
                        Ok(p) => p,
                        // Never closed; give the message back rather than run it unbounded.
                        Err(_) => {
                            let _ = typed.release().await;
                            continue;
                        }
                    },
                };
                lock(&in_flight).insert(typed.id(), typed.lease());
                let task = Attempt {
                    handler: Arc::clone(&handler),
                    in_flight: Arc::clone(&in_flight),
                    retries: self.retries,
                    backoff: self.backoff,
                };
                running.spawn(async move {
                    let outcome = task.run(typed).await;
                    drop(permit);
                    outcome
                });
            }
        }
        while let Some(done) = running.join_next().await {
            count(&mut report, done);
        }
        heartbeat.abort();
        report
    }
}

/// One message's run under the consumer.
struct Attempt<F> {
    handler: Arc<F>,
    in_flight: InFlight,
    retries: u32,
    backoff: Backoff,
}

impl<F> Attempt<F> {
    async fn run<T, Fut, E>(self, typed: TypedDelivery<T>) -> Outcome
    where
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let TypedDelivery { value, delivery, queue } = typed;
        // A panic while making the future counts as much as one while polling it.
        let result = match std::panic::catch_unwind(AssertUnwindSafe(|| (self.handler)(value))) {
            Ok(future) => AssertUnwindSafe(future).catch_unwind().await,
            Err(panic) => Err(panic),
        };
        let error = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(panic) => Some(format!("handler panicked: {}", panic_message(panic.as_ref()))),
        };
        let (settlement, outcome) = match error {
            None => (Settlement::Ack(delivery.lease), Outcome::Processed),
            Some(error) if delivery.attempt > self.retries => {
                (Settlement::DeadLetter { lease: delivery.lease, error }, Outcome::Dead)
            }
            Some(error) => {
                let delay = self.backoff.delay(delivery.attempt);
                (Settlement::Retry { lease: delivery.lease, delay, error }, Outcome::Retried)
            }
        };
        // Out of the heartbeat first: an extension racing the settlement is then refused as
        // stale without being taken for a lost lease. The lease has at least two thirds left.
        lock(&self.in_flight).remove(&delivery.id);
        let result = queue.settle_one(settlement).await;
        match result {
            Ok(Settled::Ok) => {}
            Ok(Settled::Stale) => {
                tracing::warn!(message_id = %delivery.id, "lease lapsed before the message was settled; it may run again")
            }
            Err(e) => {
                tracing::warn!(message_id = %delivery.id, error = %e, "could not settle a message; it comes back when its lease lapses")
            }
        }
        outcome
    }
}

fn count(report: &mut ConsumeReport, done: Result<Outcome, tokio::task::JoinError>) {
    match done {
        Ok(Outcome::Processed) => report.processed += 1,
        Ok(Outcome::Retried) => report.failed += 1,
        Ok(Outcome::Dead) => {
            report.failed += 1;
            report.dead_lettered += 1;
        }
        // The handler's panic is caught inside the task; this is a panic in settling.
        Err(e) => tracing::error!(error = %e, "a typed consumer task failed"),
    }
}

/// The pause after `n` failed claims in a row: 50 ms doubling to 2 s.
fn claim_pause(n: u32) -> Duration {
    let ms = 50u64.saturating_mul(1 << n.saturating_sub(1).min(6));
    Duration::from_millis(ms.min(2000))
}

/// Extends the leases of running handlers every third of the lease.
async fn heartbeat(queue: Arc<dyn Queue>, in_flight: InFlight, lease: Duration) {
    // A fixed rate, not a sleep after each extension: a slow extension (a busy disk, a far
    // broker) must not stretch the gap between two of them towards the lease.
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + lease / 3, lease / 3);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let leases: Vec<Lease> = lock(&in_flight).values().copied().collect();
        if leases.is_empty() {
            continue;
        }
        match queue.extend(&leases, lease).await {
            Ok(results) => {
                for (l, r) in leases.iter().zip(results) {
                    // Settled while the extension ran: not lost.
                    if r == Settled::Stale && lock(&in_flight).get(&l.message_id) == Some(l) {
                        tracing::warn!(message_id = %l.message_id, "lease lost; the message may run twice");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, leases = leases.len(), "could not extend leases; trying again"),
        }
    }
}

/// The text of a panic payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_paths_become_json_pointers() {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)] // only decoded
        struct Item {
            n: u32,
        }
        #[derive(serde::Deserialize)]
        #[allow(dead_code)] // only decoded
        struct Order {
            items: Vec<Item>,
        }
        let v = serde_json::json!({ "items": [{ "n": 1 }, { "n": "x" }] });
        let Err(e) = serde_path_to_error::deserialize::<_, Order>(&v) else { panic!("decoded") };
        assert_eq!(pointer(e.path()), "/items/1/n");
    }

    #[test]
    fn claim_pauses_grow_to_two_seconds() {
        let ms: Vec<u128> = (1..=8).map(|n| claim_pause(n).as_millis()).collect();
        assert_eq!(ms, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
    }
}
