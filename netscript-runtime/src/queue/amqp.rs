//! A RabbitMQ queue over AMQP 0.9.1 (lapin): the broker carries the messages, a companion
//! key-value store ([`Kv`]) keeps the bookkeeping AMQP has no primitive for.
//!
//! What lives where:
//!
//! - **Broker.** One durable priority queue per topic (`{prefix}.{queue}.t.{topic}`,
//!   `x-max-priority` 10), fed through the default exchange with persistent messages and
//!   publisher confirms. Delays go through per-topic delay queues, one per delay bucket
//!   (`{prefix}.{queue}.d.{topic}.{ms}`): a queue-level TTL dead-letters every message back
//!   to its topic queue when due. One TTL per queue keeps expiry in FIFO order, so a long delay
//!   never holds back a short one; buckets round a delay up to two significant digits, and
//!   unused delay queues expire by themselves (`x-expires`). The message body is a small JSON
//!   header (id, kind, headers, keys, enqueue and visibility times, copy generation) followed
//!   by the payload.
//! - **Companion KV**, under `("amqpq", queue, ...)`: one record per live message (state,
//!   fencing token, attempts, copy generation, last error), idempotency keys, concurrency-key
//!   locks, an index of leased and of delayed messages (entries that expire with the lease or
//!   the delay, for the counts), the dead-letter store, the topic registry and the count of
//!   stale settlements. Every change that must be atomic is one [`AtomicWrite`] with checks on
//!   versionstamps.
//!
//! Claims: a consumer per claimed topic, on a channel of its own (manual ack, `basic_qos`
//! prefetch; own delivery tags, so a batch of acks goes as one `multiple` ack when nothing
//! below it is outstanding), fills a local buffer ordered by priority, then visibility time; `claim` takes from it, fences the batch
//! with one read and one atomic write to the KV (token and attempt + 1, concurrency-key locks),
//! and keeps the AMQP delivery tag for the settlement. A record that is gone (cancelled or
//! finished) or a copy older than the record's generation is dropped (acked) when delivered.
//!
//! Leases: the holder's process owns the lapse. A local timer ends a lease that was not
//! extended: the record goes back to waiting, then the delivery is nacked with requeue, and
//! the old holder's settlement is stale. A crashed process's unacked deliveries come back from
//! the broker as soon as its connection drops.
//!
//! A connection cut (the broker restarting, a network fault) keeps the leases of the dead
//! connection as orphans: their records still say leased with their token, and their jobs
//! go on. A supervisor task re-opens the connection with backoff (100 ms doubling to 2 s) and
//! re-subscribes; the broker then redelivers the unacked messages, and a redelivered copy of
//! an orphan (same copy generation) is adopted: the lease takes its new delivery tag and
//! stays valid with the same token, so a result produced meanwhile is settled, not run again.
//! `extend` and `settle` wait for the orphans they name to be adopted or given up; an orphan
//! is given up (stale) when its lease ends, or when its copy has not come back shortly after
//! the reconnect (a quarter of the lease, at most 2 s: another process got it and claims it
//! with a new token). A given-up orphan writes nothing to the KV: a claim of its copy takes
//! the record over, and its `leased` index entry expires with its TTL. Deliveries of the
//! dropped connection are void: the buffer is emptied when it drops and again when the new
//! one opens, and nothing of it enters the buffer afterwards (a delivery still in the
//! consumer's stream, a claim handed back). A void entry left there would take the place of
//! its redelivered copy, which would then be acked as a duplicate: the message would be
//! fenced as leased, never run, and gone from the broker.
//!
//! Concurrency keys: a lock entry in the KV (expiring with the lease) says which message holds
//! a key. A delivery whose key is held stays parked in the buffer, skipped by claims; when
//! parked deliveries crowd a topic's prefetch window, the surplus is republished through a
//! one-second delay queue, so a held key never blocks the other messages of its topic.
//!
//! Settlements: ack, dead-letter and retry ack the delivery after the KV write (a retry first
//! publishes its copy, confirmed, to the delay queue or the topic queue); a dead letter is
//! kept in the KV's dead-letter store (not in a broker dead-letter queue: `dead_letters` and
//! `redrive` need to find it by id; `purge_dead` deletes it with its record). A release keeps the delivery unacked and puts it back in
//! the buffer, behind what became visible meanwhile.
//!
//! Not exact: `ready` is the broker's count of messages in the topic queues plus this
//! process's buffer, so messages prefetched by other processes are not counted, and
//! cancelled messages still in a queue are counted until they are delivered and dropped.
//! `leased` and `delayed` come from KV entries that expire with the lease or the delay, so a
//! crashed process's leases count until their entries expire. RabbitMQ closes a channel
//! whose delivery stays unacked longer than its `consumer_timeout` (30 minutes by default),
//! which ends every lease on it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::future::join_all;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    Cancelled, ClaimRequest, DeadLetter, Delivery, Enqueued, Lease, MessageId, NewMessage, Queue, QueueError,
    QueueStats, Settled, Settlement,
};
use crate::config::redact_url;
use crate::kv::{AtomicWrite, Entry, Key, Kv, KvError, ListOptions};
use crate::time::Timestamp;

const BACKEND: &str = "amqp";

/// How long an idempotency key is remembered after its message finished, by default.
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The broker priority range: contract priorities are clamped to `-5..=5` for the broker,
/// which only decides which messages reach the local buffer first; the buffer orders by the
/// exact `i32` priority.
const MAX_PRIORITY: u8 = 10;

/// Extra life of KV lease entries (locks, leased index) past the lease, so the holder's own
/// timer always ends a lease before the store forgets it.
const LEASE_GRACE: Duration = Duration::from_secs(5);

/// How long a delivery whose concurrency key is locked by another process waits in the
/// buffer before it is tried again.
const REMOTE_LOCK_BACKOFF: Duration = Duration::from_millis(100);

/// Entries looked at beyond `max` in one claim (deliveries parked behind a held key).
const SCAN_WINDOW: usize = 512;

/// Times a claim or an enqueue re-reads and retries after a concurrent KV change.
const KV_ATTEMPTS: usize = 6;

/// How long a delivery parked behind a held concurrency key waits in a delay queue when
/// parked deliveries crowd the prefetch window.
const PARK_DELAY: Duration = Duration::from_secs(1);

/// How often the known topics are re-read from the KV for claims on every topic.
const TOPIC_REFRESH: Duration = Duration::from_secs(1);

/// How long after a reconnect an orphaned lease waits for its message to be redelivered
/// here, at most (a quarter of the lease when that is shorter).
const ORPHAN_GRACE: Duration = Duration::from_secs(2);

/// Longest pause between two attempts to re-open a dropped connection.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------

/// How to reach RabbitMQ and name things there.
#[derive(Clone, Debug)]
pub struct AmqpOptions {
    /// `amqp://user:password@host:port/vhost` (the vhost URL-encoded: `%2f` is `/`).
    pub url: String,
    /// First part of every queue name (`{prefix}.{queue}.t.{topic}`); default `netscript`.
    pub prefix: String,
    /// Deliveries each topic's consumer holds unacked (buffered or leased); default 1,000.
    /// Must exceed the number of messages leased at once from one topic.
    pub prefetch: u16,
    /// How long `claim` and `stats` wait for messages this process just published (or that a
    /// new consumer is about to receive) to arrive; default 50 ms.
    pub arrival_wait: Duration,
    /// How long the first connection may take; default 10 s.
    pub connect_timeout: Duration,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        Self::new("amqp://127.0.0.1:5672/%2f")
    }
}

impl AmqpOptions {
    /// Options for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "netscript".into(),
            prefetch: 1000,
            arrival_wait: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Sets the queue name prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the per-topic prefetch.
    pub fn with_prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// Sets how long a claim waits for messages already on their way.
    pub fn with_arrival_wait(mut self, wait: Duration) -> Self {
        self.arrival_wait = wait;
        self
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

// ---------------------------------------------------------------------------------------
// Stored shapes
// ---------------------------------------------------------------------------------------

/// What travels in front of the payload in every AMQP body.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Meta {
    id: MessageId,
    topic: String,
    kind: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    ik: Option<String>,
    #[serde(default)]
    ck: Option<String>,
    /// Enqueued at, ms since the epoch.
    enq: u64,
    /// Visible from, ms since the epoch.
    vis: u64,
    /// Publisher sequence: orders messages visible in the same millisecond.
    seq: u64,
    /// Copy generation: every republish (retry, redrive) makes a new one; older copies are
    /// dropped when delivered.
    #[serde(default)]
    generation: u32,
}

const BODY_MAGIC: &[u8; 4] = b"NSQ1";

fn encode_body(meta: &Meta, payload: &[u8]) -> Result<Vec<u8>, QueueError> {
    let head = serde_json::to_vec(meta).map_err(|e| backend(format!("cannot encode a message header: {e}")))?;
    let len = u32::try_from(head.len()).map_err(|_| backend("message header too large"))?;
    let mut out = Vec::with_capacity(8 + head.len() + payload.len());
    out.extend_from_slice(BODY_MAGIC);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    Ok(out)
}

fn decode_body(mut body: Vec<u8>) -> Result<(Meta, Vec<u8>), (String, Vec<u8>)> {
    if body.len() < 8 || &body[..4] != BODY_MAGIC {
        return Err(("not a netscript message (missing header)".into(), body));
    }
    let len = u32::from_be_bytes([body[4], body[5], body[6], body[7]]) as usize;
    let Some(head_end) = 8usize.checked_add(len).filter(|end| *end <= body.len()) else {
        return Err(("truncated message header".into(), body));
    };
    let meta: Meta = match serde_json::from_slice(&body[8..head_end]) {
        Ok(meta) => meta,
        Err(e) => return Err((format!("unreadable message header: {e}"), body)),
    };
    let payload = body.split_off(head_end);
    Ok((meta, payload))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum RecState {
    Waiting,
    Leased,
    Dead,
}

/// The KV record of a live message.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    topic: String,
    state: RecState,
    token: u64,
    attempts: u32,
    generation: u32,
    #[serde(default)]
    ik: Option<String>,
    #[serde(default)]
    error: Option<String>,
    /// Failure time of a dead letter: the key of its entry in the dead-letter store.
    #[serde(default)]
    dead_at: Option<u64>,
}

impl Record {
    fn encode(&self) -> Result<Vec<u8>, QueueError> {
        serde_json::to_vec(self).map_err(|e| backend(format!("cannot encode a message record: {e}")))
    }

    fn decode(entry: &Entry) -> Result<Record, QueueError> {
        serde_json::from_slice(&entry.value)
            .map_err(|e| QueueError::Corrupt { backend: BACKEND, message: format!("record at {}: {e}", entry.key) })
    }
}

/// A dead letter in the KV.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredDead {
    meta: Meta,
    payload: Vec<u8>,
    attempt: u32,
    token: u64,
    error: String,
    failed_at: u64,
}

impl StoredDead {
    fn dead_letter(self) -> DeadLetter {
        let m = self.meta;
        DeadLetter {
            message: Delivery {
                id: m.id,
                topic: m.topic,
                kind: m.kind,
                payload: self.payload,
                headers: m.headers,
                priority: m.priority,
                idempotency_key: m.ik,
                concurrency_key: m.ck,
                attempt: self.attempt,
                enqueued_at: Timestamp(m.enq),
                last_error: Some(self.error.clone()),
                lease: Lease { message_id: m.id, token: self.token },
            },
            error: self.error,
            failed_at: Timestamp(self.failed_at),
        }
    }
}

/// The KV key layout, under `("amqpq", queue)`.
struct Keys {
    prefix: Key,
}

impl Keys {
    fn under(&self, part: &str) -> Key {
        self.prefix.clone().with(part)
    }
    fn record(&self, id: MessageId) -> Key {
        self.under("m").with(id)
    }
    fn idempotency(&self, key: &str) -> Key {
        self.under("i").with(key)
    }
    fn lock(&self, key: &str) -> Key {
        self.under("c").with(key)
    }
    fn leased(&self, topic: &str, id: MessageId) -> Key {
        self.under("l").with(topic).with(id)
    }
    fn delayed(&self, topic: &str, id: MessageId) -> Key {
        self.under("d").with(topic).with(id)
    }
    fn dead(&self, failed_at: u64, id: MessageId) -> Key {
        self.under("x").with(i64::try_from(failed_at).unwrap_or(i64::MAX)).with(id)
    }
    fn topic(&self, topic: &str) -> Key {
        self.under("t").with(topic)
    }
    fn stale(&self, instance: uuid::Uuid) -> Key {
        self.under("s").with(instance.as_bytes().to_vec())
    }
}

/// The failure time and id of a dead-letter key (see [`Keys::dead`]).
fn dead_key_parts(key: &Key) -> Option<(u64, MessageId)> {
    match key.parts().as_slice() {
        [.., crate::kv::KeyPart::Int(at), crate::kv::KeyPart::Bytes(id)] => {
            Some((u64::try_from(*at).ok()?, id_from_bytes(id)?))
        }
        _ => None,
    }
}

fn id_from_bytes(bytes: &[u8]) -> Option<MessageId> {
    uuid::Uuid::from_slice(bytes).ok().map(MessageId)
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

fn backend(message: impl Into<String>) -> QueueError {
    QueueError::Backend { backend: BACKEND, message: message.into() }
}

fn kv_error(e: KvError) -> QueueError {
    backend(format!("companion key-value store: {e}"))
}

fn short(s: String) -> Result<ShortString, QueueError> {
    ShortString::try_new(s).map_err(|e| backend(format!("name too long for AMQP: {e}")))
}

// ---------------------------------------------------------------------------------------
// Local state
// ---------------------------------------------------------------------------------------

/// Buffer order: priority (highest first), then visible time, then publisher sequence, then
/// arrival.
type Order = (Reverse<i32>, u64, u64, u64);

struct Buffered {
    meta: Meta,
    payload: Vec<u8>,
    tag: u64,
    epoch: u64,
    /// Not offered before this (a concurrency key locked by another process).
    not_before: Option<Instant>,
}

struct Held {
    token: u64,
    until: Instant,
    ttl: Duration,
    tag: u64,
    epoch: u64,
    record: Record,
    meta: Meta,
    payload: Vec<u8>,
}

/// Deliveries of one topic on their way to this process's consumer.
#[derive(Default)]
struct Expect {
    /// Published here: id -> publisher sequence.
    ids: HashMap<MessageId, u64>,
    /// Publisher sequence -> id.
    by_seq: BTreeMap<u64, MessageId>,
    /// Announced by the queue's count when the consumer started.
    count: usize,
    /// The last publish or arrival: waiting goes on while deliveries keep coming.
    progress: Option<Instant>,
}

impl Expect {
    /// Until when to wait for the deliveries published up to `upto`; forgets everything
    /// once nothing arrived for `wait` (those went to another consumer).
    fn pending(&mut self, now: Instant, upto: u64, wait: Duration) -> Option<Instant> {
        let until = self.progress? + wait;
        if until <= now {
            *self = Expect::default();
            return None;
        }
        (self.count > 0 || self.by_seq.range(..=upto).next().is_some()).then_some(until)
    }

    fn published(&mut self, id: MessageId, seq: u64, now: Instant) {
        self.ids.insert(id, seq);
        self.by_seq.insert(seq, id);
        self.progress = Some(now);
    }

    fn arrived(&mut self, id: MessageId, now: Instant) {
        match self.ids.remove(&id) {
            Some(seq) => {
                self.by_seq.remove(&seq);
            }
            None => self.count = self.count.saturating_sub(1),
        }
        self.progress = Some(now);
    }
}

#[derive(Default)]
struct Local {
    epoch: u64,
    buffers: HashMap<String, BTreeMap<Order, Buffered>>,
    by_id: HashMap<MessageId, (String, Order)>,
    held_keys: HashSet<String>,
    leases: HashMap<MessageId, Held>,
    due: BTreeSet<(Instant, MessageId)>,
    leased_per_topic: HashMap<String, usize>,
    expect: HashMap<String, Expect>,
    consumers: HashSet<String>,
    /// Topics consumed before the connection dropped, to re-subscribe.
    resubscribe: HashSet<String>,
    /// Topics of the last claim (`None`: every topic).
    wanted: Option<Vec<String>>,
    arrivals: u64,
    /// Whether the connection of `epoch` is up.
    live: bool,
    /// Leases held on a connection that dropped, waiting for their messages to come back.
    orphaned: HashSet<MessageId>,
    /// When the connection was last re-opened.
    reconnected_at: Option<Instant>,
}

impl Local {
    fn insert_buffered(&mut self, topic: &str, order: Order, b: Buffered) {
        self.by_id.insert(b.meta.id, (topic.to_owned(), order));
        self.buffers.entry(topic.to_owned()).or_default().insert(order, b);
    }

    fn remove_buffered(&mut self, id: MessageId) -> Option<Buffered> {
        let (topic, order) = self.by_id.remove(&id)?;
        self.buffers.get_mut(&topic)?.remove(&order)
    }

    fn window(&self, topic: &str) -> usize {
        self.buffers.get(topic).map_or(0, BTreeMap::len) + self.leased_per_topic.get(topic).copied().unwrap_or(0)
    }

    fn take_lease(&mut self, id: MessageId) -> Option<Held> {
        self.orphaned.remove(&id);
        let held = self.leases.remove(&id)?;
        self.due.remove(&(held.until, id));
        if let Some(n) = self.leased_per_topic.get_mut(&held.meta.topic) {
            *n = n.saturating_sub(1);
        }
        Some(held)
    }

    fn put_lease(&mut self, id: MessageId, held: Held) {
        self.due.insert((held.until, id));
        *self.leased_per_topic.entry(held.meta.topic.clone()).or_default() += 1;
        self.leases.insert(id, held);
    }

    fn release_key(&mut self, key: &Option<String>) {
        if let Some(k) = key {
            self.held_keys.remove(k);
        }
    }

    /// Whether deliveries of the connection of `epoch` may enter the buffer: it is the
    /// current connection and it is up. A delivery of a dropped connection is void (its tag
    /// cannot be acked) and the broker sends its message again on the next connection.
    fn current(&self, epoch: u64) -> bool {
        self.live && self.epoch == epoch
    }

    /// Takes the connection of `epoch` (just opened) as current: drops whatever the buffer
    /// still holds of older connections and returns the topics to subscribe again.
    fn reconnected(&mut self, epoch: u64, now: Instant) -> Vec<String> {
        self.epoch = epoch;
        self.live = true;
        self.reconnected_at = Some(now);
        self.buffers.retain(|_, buffer| {
            buffer.retain(|_, b| b.epoch == epoch);
            !buffer.is_empty()
        });
        let buffers = &self.buffers;
        self.by_id.retain(|_, (topic, order)| buffers.get(topic).is_some_and(|b| b.contains_key(order)));
        self.resubscribe.drain().collect()
    }

    /// Forgets the deliveries of the connection that dropped (their tags are void) and keeps
    /// its leases as orphans; returns how many leases are orphaned.
    fn wipe(&mut self) -> usize {
        self.live = false;
        self.buffers.clear();
        self.by_id.clear();
        self.expect.clear();
        self.resubscribe.extend(self.consumers.drain());
        // Buffered deliveries give their keys up; leases keep theirs.
        self.held_keys = self.leases.values().filter_map(|h| h.meta.ck.clone()).collect();
        self.orphaned.extend(self.leases.keys().copied());
        self.orphaned.len()
    }

    /// When an orphan is given up: at the end of its lease, or shortly after the reconnect if
    /// its message has not come back by then.
    fn orphan_deadline(&self, held: &Held) -> Instant {
        match self.reconnected_at.filter(|_| self.live) {
            Some(at) => held.until.min(at + ORPHAN_GRACE.min(held.ttl / 4)),
            None => held.until,
        }
    }

    /// Gives up the orphans past their deadline; returns how many.
    fn drop_expired_orphans(&mut self, now: Instant) -> usize {
        let expired: Vec<MessageId> = self
            .orphaned
            .iter()
            .filter(|id| self.leases.get(id).is_none_or(|h| self.orphan_deadline(h) <= now))
            .copied()
            .collect();
        for id in &expired {
            if let Some(held) = self.take_lease(*id) {
                self.release_key(&held.meta.ck);
            }
        }
        expired.len()
    }
}

struct Link {
    epoch: u64,
    conn: Connection,
    publish: Channel,
    admin: Channel,
    /// One consumer channel per topic.
    consumers: Mutex<HashMap<String, Arc<TopicChannel>>>,
}

impl Link {
    fn healthy(&self) -> bool {
        self.conn.status().connected()
            && self.publish.status().connected()
            && self.admin.status().connected()
            && lock(&self.consumers).values().all(|c| c.channel.status().connected())
    }

    fn consumer(&self, topic: &str) -> Option<Arc<TopicChannel>> {
        lock(&self.consumers).get(topic).cloned()
    }
}

/// A topic's consumer channel. Its delivery tags are its own and arrive in order through one
/// stream, so every tag below one being acked has been seen: acks can use `multiple`.
struct TopicChannel {
    channel: Channel,
    /// Delivered and not yet acked or nacked.
    outstanding: Mutex<BTreeSet<u64>>,
    /// Plans and sends one batch of acks at a time, so a `multiple` ack never covers a tag
    /// that another batch is about to nack.
    sending: tokio::sync::Mutex<()>,
}

/// A message to publish.
struct Outgoing {
    queue: ShortString,
    body: Vec<u8>,
    priority: u8,
    id: MessageId,
}

struct Shared {
    options: AmqpOptions,
    name: String,
    keys: Keys,
    kv: Arc<dyn Kv>,
    instance: uuid::Uuid,
    window_ms: AtomicU64,
    link: Mutex<Option<Arc<Link>>>,
    connecting: tokio::sync::Mutex<()>,
    subscribing: tokio::sync::Mutex<()>,
    next_epoch: AtomicU64,
    local: Mutex<Local>,
    work: Notify,
    broken: Notify,
    /// Woken when an orphaned lease is adopted or given up, and at a reconnect.
    orphans: Notify,
    stale: AtomicU64,
    /// Orders this process's writes of its lease entries: an extension holds it exclusively
    /// from its check of the local lease to its KV write, settlements and lapses share it for
    /// their KV writes. Without it an extension checked before a settlement could write the
    /// `leased` entry back after the settlement deleted it (a ghost lease until its TTL).
    lease_writes: tokio::sync::RwLock<()>,
    seq: AtomicU64,
    declared: Mutex<HashSet<String>>,
    delay_declared: Mutex<HashMap<String, Instant>>,
    registered: Mutex<HashSet<String>>,
    known: Mutex<(BTreeSet<String>, Option<Instant>)>,
    topology: Mutex<BTreeSet<String>>,
    stop: CancellationToken,
}

// ---------------------------------------------------------------------------------------
// The queue
// ---------------------------------------------------------------------------------------

/// The RabbitMQ queue. See the [module docs](self).
pub struct AmqpQueue {
    shared: Arc<Shared>,
}

impl AmqpQueue {
    /// Connects to the broker and starts the background tasks (lease timer, reconnection).
    /// `queue_name` names this queue's broker queues and KV keys; `kv` holds the bookkeeping
    /// and must be shared by every process using the queue.
    pub async fn connect(options: AmqpOptions, queue_name: &str, kv: Arc<dyn Kv>) -> Result<AmqpQueue, QueueError> {
        if queue_name.is_empty() {
            return Err(backend("the queue name is empty"));
        }
        let shared = Arc::new(Shared::new(options, queue_name, kv));
        let timeout = shared.options.connect_timeout;
        match tokio::time::timeout(timeout, shared.link()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(backend(format!(
                    "cannot connect to {} within {timeout:?}",
                    redact_url(&shared.options.url)
                )));
            }
        }
        tokio::spawn(reaper(Arc::downgrade(&shared), shared.stop.clone()));
        tokio::spawn(supervisor(Arc::downgrade(&shared), shared.stop.clone()));
        Ok(AmqpQueue { shared })
    }

    /// Sets how long an idempotency key is remembered after its message finished.
    pub fn with_idempotency_window(self, window: Duration) -> Self {
        self.shared.window_ms.store(millis(window), Ordering::Relaxed);
        self
    }

    /// The queue name given to [`AmqpQueue::connect`].
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Names of the broker queues this handle declared (topic and delay queues), for
    /// teardown and inspection.
    pub fn declared_queues(&self) -> Vec<String> {
        lock(&self.shared.topology).iter().cloned().collect()
    }

    /// Deletes the broker queues this handle declared, with their messages. For tests and
    /// teardown; the KV bookkeeping is left to the caller.
    pub async fn delete_declared_queues(&self) -> Result<usize, QueueError> {
        let link = self.shared.link().await?;
        let names = self.declared_queues();
        for name in &names {
            link.admin
                .queue_delete(short(name.clone())?, QueueDeleteOptions::default())
                .await
                .map_err(|e| backend(format!("cannot delete queue `{name}`: {e}")))?;
        }
        Ok(names.len())
    }

    /// Deletes the topic queues of `topics` in this queue's namespace, with their messages,
    /// whether or not this handle declared them (a queue that does not exist is skipped). For
    /// teardown: the delay queues expire by themselves; the KV bookkeeping is left to the
    /// caller.
    pub async fn delete_topic_queues(&self, topics: &[&str]) -> Result<(), QueueError> {
        let link = self.shared.link().await?;
        for topic in topics {
            let name = self.shared.topic_queue(topic);
            link.admin
                .queue_delete(short(name.clone())?, QueueDeleteOptions::default())
                .await
                .map_err(|e| backend(format!("cannot delete queue `{name}`: {e}")))?;
        }
        Ok(())
    }

    /// Closes the connection; leases still held come back from the broker.
    pub async fn close(&self) {
        self.shared.stop.cancel();
        let link = lock(&self.shared.link).take();
        if let Some(link) = link {
            let _ = link.conn.close(200, "closed".into()).await;
        }
    }
}

impl Drop for AmqpQueue {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        let link = lock(&self.shared.link).take();
        if let (Some(link), Ok(handle)) = (link, tokio::runtime::Handle::try_current()) {
            handle.spawn(async move {
                let _ = link.conn.close(200, "closed".into()).await;
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the data consistent before it can panic, so a poisoned
    // lock still guards usable state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn amqp_priority(priority: i32) -> u8 {
    // In 0..=10 after the clamp, so the cast is exact.
    (priority.clamp(-5, 5) + 5) as u8
}

/// Rounds a delay up to two significant digits (in milliseconds): the delay queue bucket.
fn delay_bucket(delay: Duration) -> u64 {
    let ms = millis(delay).max(1);
    let mut scale = 1u64;
    while ms / scale >= 100 {
        scale *= 10;
    }
    ms.div_ceil(scale).saturating_mul(scale)
}

impl Shared {
    /// The state of a queue not connected yet.
    fn new(options: AmqpOptions, queue_name: &str, kv: Arc<dyn Kv>) -> Shared {
        Shared {
            keys: Keys { prefix: Key::from(("amqpq", queue_name)) },
            name: queue_name.to_owned(),
            kv,
            instance: uuid::Uuid::now_v7(),
            window_ms: AtomicU64::new(millis(DEFAULT_IDEMPOTENCY_WINDOW)),
            link: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            subscribing: tokio::sync::Mutex::new(()),
            next_epoch: AtomicU64::new(1),
            local: Mutex::default(),
            work: Notify::new(),
            broken: Notify::new(),
            orphans: Notify::new(),
            stale: AtomicU64::new(0),
            lease_writes: tokio::sync::RwLock::new(()),
            seq: AtomicU64::new(0),
            declared: Mutex::default(),
            delay_declared: Mutex::default(),
            registered: Mutex::default(),
            known: Mutex::default(),
            topology: Mutex::default(),
            stop: CancellationToken::new(),
            options,
        }
    }

    fn topic_queue(&self, topic: &str) -> String {
        format!("{}.{}.t.{}", self.options.prefix, self.name, topic)
    }

    fn delay_queue(&self, topic: &str, bucket: u64) -> String {
        format!("{}.{}.d.{}.{}", self.options.prefix, self.name, topic, bucket)
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms.load(Ordering::Relaxed))
    }

    fn wake(&self) {
        self.work.notify_waiters();
    }

    // -- connection -----------------------------------------------------------------------

    fn current_link(&self) -> Option<Arc<Link>> {
        lock(&self.link).clone()
    }

    /// The live connection, re-opened if it dropped.
    async fn link(self: &Arc<Self>) -> Result<Arc<Link>, QueueError> {
        if self.stop.is_cancelled() {
            return Err(QueueError::Closed);
        }
        if let Some(link) = self.current_link() {
            if link.healthy() {
                return Ok(link);
            }
            self.mark_broken(link.epoch, "connection or channel closed");
        }
        let _connecting = self.connecting.lock().await;
        if let Some(link) = self.current_link() {
            return Ok(link);
        }
        let link = Arc::new(self.open().await?);
        let resubscribe = lock(&self.local).reconnected(link.epoch, Instant::now());
        lock(&self.declared).clear();
        lock(&self.delay_declared).clear();
        *lock(&self.link) = Some(Arc::clone(&link));
        if !resubscribe.is_empty() {
            self.ensure_consumers(&link, &resubscribe).await?;
        }
        // Orphans now have a deadline for their messages to come back.
        self.orphans.notify_waiters();
        self.wake();
        Ok(link)
    }

    async fn open(&self) -> Result<Link, QueueError> {
        let url = redact_url(&self.options.url);
        let properties =
            ConnectionProperties::default().with_connection_name(format!("netscript {}", self.name).into());
        let conn = Connection::connect(&self.options.url, properties)
            .await
            .map_err(|e| backend(format!("cannot connect to {url}: {e}")))?;
        let channel_error = |e: lapin::Error| backend(format!("cannot open a channel on {url}: {e}"));
        let publish = conn.create_channel().await.map_err(channel_error)?;
        publish.confirm_select(ConfirmSelectOptions::default()).await.map_err(channel_error)?;
        let admin = conn.create_channel().await.map_err(channel_error)?;
        let epoch = self.next_epoch.fetch_add(1, Ordering::Relaxed);
        Ok(Link { epoch, conn, publish, admin, consumers: Mutex::default() })
    }

    /// Drops the connection of `epoch`: its deliveries are void; the broker gives them back.
    /// Its leases are kept as orphans (see the module docs).
    fn mark_broken(self: &Arc<Self>, epoch: u64, why: &str) {
        let orphaned = {
            let mut link = lock(&self.link);
            if link.as_ref().is_none_or(|l| l.epoch != epoch) {
                return;
            }
            *link = None;
            let mut local = lock(&self.local);
            if local.epoch != epoch {
                return;
            }
            local.wipe()
        };
        tracing::warn!(
            queue = %self.name,
            reason = why,
            orphaned_leases = orphaned,
            "amqp connection lost; reconnecting, running jobs keep their leases until their messages come back"
        );
        self.broken.notify_one();
        self.wake();
    }

    fn on_amqp_error(self: &Arc<Self>, link: &Link, what: &str, e: &lapin::Error) -> QueueError {
        self.mark_broken(link.epoch, what);
        backend(format!("{what} on {}: {e}", redact_url(&self.options.url)))
    }

    // -- topology -------------------------------------------------------------------------

    /// Declares a topic's queue (once per connection); returns its ready count when declared
    /// now.
    async fn ensure_topic(self: &Arc<Self>, link: &Link, topic: &str) -> Result<Option<u32>, QueueError> {
        let name = self.topic_queue(topic);
        if lock(&self.declared).contains(&name) {
            return Ok(None);
        }
        let count = self.declare_topic(link, topic).await?;
        lock(&self.declared).insert(name);
        Ok(Some(count))
    }

    /// Declares (or re-declares, which is idempotent) a topic queue; returns its ready count.
    async fn declare_topic(self: &Arc<Self>, link: &Link, topic: &str) -> Result<u32, QueueError> {
        let name = self.topic_queue(topic);
        let mut args = FieldTable::default();
        args.insert("x-max-priority".into(), AMQPValue::LongInt(i32::from(MAX_PRIORITY)));
        let q = link
            .admin
            .queue_declare(short(name.clone())?, QueueDeclareOptions::durable(), args)
            .await
            .map_err(|e| self.on_amqp_error(link, &format!("declaring queue `{name}`"), &e))?;
        lock(&self.topology).insert(name);
        Ok(q.message_count())
    }

    async fn ensure_delay(self: &Arc<Self>, link: &Link, topic: &str, bucket: u64) -> Result<ShortString, QueueError> {
        let name = self.delay_queue(topic, bucket);
        let queue = short(name.clone())?;
        // The queue expires after `2 * bucket + 60 s` unused (publishing does not count as
        // use): re-declare well before a message published now could outlive it.
        let redeclare_after = Duration::from_millis(bucket.saturating_add(30_000));
        let fresh = lock(&self.delay_declared).get(&name).is_some_and(|at| at.elapsed() < redeclare_after);
        if fresh {
            return Ok(queue);
        }
        let mut args = FieldTable::default();
        let ttl = i64::try_from(bucket).unwrap_or(i64::MAX);
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
        args.insert("x-expires".into(), AMQPValue::LongLongInt(ttl.saturating_mul(2).saturating_add(60_000)));
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(LongString::from("")));
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(LongString::from(self.topic_queue(topic))),
        );
        args.insert("x-max-priority".into(), AMQPValue::LongInt(i32::from(MAX_PRIORITY)));
        link.admin
            .queue_declare(queue.clone(), QueueDeclareOptions::durable(), args)
            .await
            .map_err(|e| self.on_amqp_error(link, &format!("declaring delay queue `{name}`"), &e))?;
        lock(&self.topology).insert(name.clone());
        lock(&self.delay_declared).insert(name, Instant::now());
        Ok(queue)
    }

    /// Starts a consumer on each topic that has none on this connection.
    async fn ensure_consumers(self: &Arc<Self>, link: &Link, topics: &[String]) -> Result<(), QueueError> {
        if topics.iter().all(|t| lock(&self.local).consumers.contains(t)) {
            return Ok(());
        }
        // One subscriber at a time: two consumers with one tag would be a connection error.
        let _subscribing = self.subscribing.lock().await;
        for topic in topics {
            if lock(&self.local).consumers.contains(topic) {
                continue;
            }
            let count = self.declare_topic(link, topic).await?;
            lock(&self.declared).insert(self.topic_queue(topic));
            let name = self.topic_queue(topic);
            let tag = format!("netscript-{}-{}-{}", self.instance.simple(), link.epoch, topic);
            let fail = |e: lapin::Error| self.on_amqp_error(link, &format!("consuming from `{name}`"), &e);
            let channel = link.conn.create_channel().await.map_err(fail)?;
            channel.basic_qos(self.options.prefetch, BasicQosOptions::default()).await.map_err(fail)?;
            let consumer = channel
                .basic_consume(short(name.clone())?, short(tag)?, BasicConsumeOptions::default(), FieldTable::default())
                .await
                .map_err(fail)?;
            let tc =
                Arc::new(TopicChannel { channel, outstanding: Mutex::default(), sending: tokio::sync::Mutex::new(()) });
            lock(&link.consumers).insert(topic.clone(), Arc::clone(&tc));
            {
                let mut local = lock(&self.local);
                if local.epoch != link.epoch {
                    return Err(backend("the connection dropped while subscribing"));
                }
                local.consumers.insert(topic.clone());
                let prefetch = usize::from(self.options.prefetch);
                let e = local.expect.entry(topic.clone()).or_default();
                e.count = (count as usize).min(prefetch);
                e.progress = Some(Instant::now());
            }
            tokio::spawn(consume(Arc::downgrade(self), link.epoch, topic.clone(), consumer, tc, self.stop.clone()));
        }
        Ok(())
    }

    /// Topics of a claim: the requested ones, or every known topic.
    async fn resolve_topics(&self, requested: &[String], force_refresh: bool) -> Result<Vec<String>, QueueError> {
        if !requested.is_empty() {
            return Ok(requested.to_vec());
        }
        let stale = {
            let known = lock(&self.known);
            force_refresh || known.1.is_none_or(|at| at.elapsed() >= TOPIC_REFRESH)
        };
        if stale {
            let entries = list_all(&*self.kv, self.keys.under("t")).await.map_err(kv_error)?;
            let mut known = lock(&self.known);
            for e in entries {
                if let Some(crate::kv::KeyPart::String(t)) = e.key.parts().last() {
                    known.0.insert(t.clone());
                }
            }
            known.1 = Some(Instant::now());
        }
        Ok(lock(&self.known).0.iter().cloned().collect())
    }

    // -- publishing -----------------------------------------------------------------------

    /// Publishes all, then waits for every confirm.
    async fn publish(self: &Arc<Self>, link: &Link, items: Vec<Outgoing>) -> Result<(), QueueError> {
        let mut confirms = Vec::with_capacity(items.len());
        for item in items {
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_priority(item.priority)
                .with_message_id(item.id.to_string().into());
            let confirm = link
                .publish
                .basic_publish(
                    ShortString::from(""),
                    item.queue,
                    BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                    &item.body,
                    properties,
                )
                .await
                .map_err(|e| self.on_amqp_error(link, "publishing", &e))?;
            confirms.push(confirm);
        }
        for confirm in join_all(confirms).await {
            let confirmation = confirm.map_err(|e| self.on_amqp_error(link, "waiting for a publisher confirm", &e))?;
            if confirmation.is_nack() {
                return Err(backend("the broker refused a message (publisher nack)"));
            }
            if let Some(returned) = confirmation.take_message() {
                lock(&self.declared).clear();
                lock(&self.delay_declared).clear();
                return Err(backend(format!(
                    "the broker could not route a message to `{}` ({}); was the queue deleted?",
                    returned.delivery.routing_key, returned.reply_text
                )));
            }
        }
        Ok(())
    }

    /// The broker copy of a message: to its topic queue, or to a delay queue when not
    /// visible yet.
    async fn outgoing(
        self: &Arc<Self>,
        link: &Link,
        meta: &Meta,
        payload: &[u8],
        delay: Duration,
    ) -> Result<Outgoing, QueueError> {
        let queue = if delay.is_zero() {
            short(self.topic_queue(&meta.topic))?
        } else {
            self.ensure_delay(link, &meta.topic, delay_bucket(delay)).await?
        };
        Ok(Outgoing { queue, body: encode_body(meta, payload)?, priority: amqp_priority(meta.priority), id: meta.id })
    }

    /// Notes messages this process published to a topic it consumes, so a claim right after
    /// waits (briefly) for them to arrive.
    fn expect(&self, items: impl IntoIterator<Item = (String, MessageId, u64)>) {
        let now = Instant::now();
        let mut local = lock(&self.local);
        for (topic, id, seq) in items {
            if local.consumers.contains(&topic) {
                local.expect.entry(topic).or_default().published(id, seq, now);
            }
        }
    }

    /// Waits for the deliveries of `topics` that were on their way when the call began, so
    /// a claim sees what was published before it in order: as long as deliveries keep coming
    /// (each one within `arrival_wait`), and at most ten times `arrival_wait` in all.
    async fn await_arrivals(&self, topics: &[String]) {
        let prefetch = usize::from(self.options.prefetch);
        let wait = self.options.arrival_wait;
        let upto = self.seq.load(Ordering::Relaxed);
        let give_up = Instant::now() + wait * 10;
        loop {
            let notified = self.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let deadline = {
                let mut local = lock(&self.local);
                let now = Instant::now();
                let mut deadline: Option<Instant> = None;
                for t in topics {
                    // A full window gets nothing more until something is acked.
                    if local.window(t) >= prefetch {
                        continue;
                    }
                    if let Some(e) = local.expect.get_mut(t) {
                        deadline = deadline.max(e.pending(now, upto, wait));
                    }
                }
                match deadline {
                    Some(d) if now < give_up => d.min(give_up),
                    _ => return,
                }
            };
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    // -- arrivals -------------------------------------------------------------------------

    /// Takes one delivery into the buffer; returns the tag to ack when it is a duplicate.
    fn arrive(
        &self,
        epoch: u64,
        topic: &str,
        meta: Meta,
        payload: Vec<u8>,
        tag: u64,
        redelivered: bool,
    ) -> Option<u64> {
        let mut local = lock(&self.local);
        if !local.current(epoch) {
            // Its connection dropped: the broker delivers it again on the next one.
            return None;
        }
        local.arrivals += 1;
        if let Some(e) = local.expect.get_mut(topic) {
            e.arrived(meta.id, Instant::now());
        }
        // The copy of a lease whose connection dropped: the lease adopts it and stays valid.
        if local.orphaned.contains(&meta.id)
            && let Some(held) = local.leases.get_mut(&meta.id)
            && held.meta.generation == meta.generation
        {
            held.tag = tag;
            held.epoch = epoch;
            if let Some(k) = held.meta.ck.clone() {
                local.held_keys.insert(k);
            }
            local.orphaned.remove(&meta.id);
            drop(local);
            self.orphans.notify_waiters();
            return None;
        }
        // A second copy of a message already here: keep the newer generation.
        if let Some(held) = local.leases.get(&meta.id)
            && held.meta.generation >= meta.generation
        {
            return Some(tag);
        }
        if let Some((t, order)) = local.by_id.get(&meta.id).cloned() {
            let older = local.buffers.get(&t).and_then(|b| b.get(&order)).map(|b| (b.meta.generation, b.tag, b.epoch));
            match older {
                Some((generation, _, old_epoch)) if old_epoch == epoch && generation >= meta.generation => {
                    return Some(tag);
                }
                Some((_, old_tag, old_epoch)) => {
                    // A newer copy, or the old one's connection dropped (its tag is void):
                    // this delivery takes its place.
                    local.remove_buffered(meta.id);
                    self.insert_arrival(&mut local, topic, meta, payload, tag, epoch, redelivered);
                    return (old_epoch == epoch).then_some(old_tag);
                }
                None => {
                    local.by_id.remove(&meta.id);
                }
            }
        }
        self.insert_arrival(&mut local, topic, meta, payload, tag, epoch, redelivered);
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_arrival(
        &self,
        local: &mut Local,
        topic: &str,
        meta: Meta,
        payload: Vec<u8>,
        tag: u64,
        epoch: u64,
        redelivered: bool,
    ) {
        // A requeued message became visible again now, behind what waited meanwhile.
        let (vis, seq) = if redelivered {
            (Timestamp::now().as_millis().max(meta.vis), self.next_seq())
        } else {
            (meta.vis, meta.seq)
        };
        let order = (Reverse(meta.priority), vis, seq, local.arrivals);
        local.insert_buffered(topic, order, Buffered { meta, payload, tag, epoch, not_before: None });
    }

    /// Moves an unreadable delivery to the dead-letter store with the reason, then acks it.
    async fn quarantine(
        self: &Arc<Self>,
        link_epoch: u64,
        topic: &str,
        delivery: &lapin::message::Delivery,
        reason: String,
        body: Vec<u8>,
    ) {
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .and_then(|s| s.as_str().parse::<MessageId>().ok())
            .unwrap_or_default();
        let id = if id == MessageId::default() { MessageId::new() } else { id };
        let now = Timestamp::now().as_millis();
        let meta = Meta {
            id,
            topic: topic.to_owned(),
            kind: String::new(),
            headers: Vec::new(),
            priority: 0,
            ik: None,
            ck: None,
            enq: now,
            vis: now,
            seq: 0,
            generation: 0,
        };
        let error = format!("undeliverable: {reason}");
        let dead = StoredDead { meta, payload: body, attempt: 0, token: 0, error: error.clone(), failed_at: now };
        let record = Record {
            topic: topic.to_owned(),
            state: RecState::Dead,
            token: 0,
            attempts: 0,
            generation: 0,
            ik: None,
            error: Some(error),
            dead_at: Some(now),
        };
        let write = match (serde_json::to_vec(&dead), record.encode()) {
            (Ok(d), Ok(r)) => AtomicWrite::new().set(self.keys.dead(now, id), d).set(self.keys.record(id), r),
            _ => return,
        };
        tracing::warn!(queue = %self.name, %id, reason = %reason, "unreadable delivery moved to the dead letters");
        if let Err(e) = self.kv.atomic(write).await {
            tracing::warn!(error = %e, "cannot store an unreadable delivery; it stays in the broker");
            return;
        }
        self.ack_tags(link_epoch, topic, &[delivery.delivery_tag]).await;
    }

    async fn ack_tags(self: &Arc<Self>, epoch: u64, topic: &str, tags: &[u64]) {
        self.send_acks(epoch, topic, tags, false).await;
    }

    /// Acks (or nacks with requeue) deliveries of one topic's channel: the lowest run of
    /// tags with nothing outstanding below it goes as one `multiple` ack, the rest one by
    /// one. Tags no longer outstanding are skipped, so nothing is acked twice.
    async fn send_acks(self: &Arc<Self>, epoch: u64, topic: &str, tags: &[u64], requeue: bool) {
        if tags.is_empty() {
            return;
        }
        let Some(link) = self.current_link().filter(|l| l.epoch == epoch) else { return };
        let Some(tc) = link.consumer(topic) else { return };
        let _sending = tc.sending.lock().await;
        let (multiple, singles) = {
            let mut outstanding = lock(&tc.outstanding);
            let mut mine: Vec<u64> = tags.iter().copied().filter(|t| outstanding.remove(t)).collect();
            mine.sort_unstable();
            let lowest_left = outstanding.first().copied().unwrap_or(u64::MAX);
            let covered = if requeue { 0 } else { mine.partition_point(|t| *t < lowest_left) };
            if covered >= 2 { (Some(mine[covered - 1]), mine.split_off(covered)) } else { (None, mine) }
        };
        if let Some(upto) = multiple
            && let Err(e) = tc.channel.basic_ack(upto, BasicAckOptions { multiple: true }).await
        {
            self.on_amqp_error(&link, "acknowledging", &e);
            return;
        }
        let results = if requeue {
            let options = BasicNackOptions { requeue: true, ..BasicNackOptions::default() };
            join_all(singles.iter().map(|t| tc.channel.basic_nack(*t, options))).await
        } else {
            join_all(singles.iter().map(|t| tc.channel.basic_ack(*t, BasicAckOptions::default()))).await
        };
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            self.on_amqp_error(&link, if requeue { "requeueing" } else { "acknowledging" }, &e);
        }
    }

    /// Acks deliveries grouped by connection epoch and topic.
    async fn ack_grouped(self: &Arc<Self>, tags: Vec<(u64, String, u64)>) {
        let mut groups: HashMap<(u64, String), Vec<u64>> = HashMap::new();
        for (epoch, topic, tag) in tags {
            groups.entry((epoch, topic)).or_default().push(tag);
        }
        for ((epoch, topic), tags) in groups {
            self.ack_tags(epoch, &topic, &tags).await;
        }
    }

    // -- leases ---------------------------------------------------------------------------

    /// Puts the records of lost or lapsed leases back to waiting.
    async fn unlease_in_kv(&self, held: &[Held]) -> Result<(), QueueError> {
        if held.is_empty() {
            return Ok(());
        }
        let mut write = AtomicWrite::new();
        for h in held {
            let mut record = h.record.clone();
            record.state = RecState::Waiting;
            write = write
                .set(self.keys.record(h.meta.id), record.encode()?)
                .delete(self.keys.leased(&h.meta.topic, h.meta.id));
            if let Some(k) = &h.meta.ck {
                write = write.delete(self.keys.lock(k));
            }
        }
        let _order = self.lease_writes.read().await;
        self.kv.atomic(write).await.map_err(kv_error)?;
        Ok(())
    }

    /// Ends the leases whose time is up: record back to waiting, then nack with requeue.
    /// Orphans past their deadline are given up without a write (see the module docs).
    async fn lapse_due(self: &Arc<Self>) {
        let now = Instant::now();
        let (lapsed, given_up) = {
            let mut local = lock(&self.local);
            let given_up = if local.orphaned.is_empty() { 0 } else { local.drop_expired_orphans(now) };
            let mut out = Vec::new();
            while let Some(&(until, id)) = local.due.first() {
                if until > now {
                    break;
                }
                local.due.pop_first();
                if let Some(held) = local.take_lease(id) {
                    local.release_key(&held.meta.ck);
                    out.push(held);
                }
            }
            (out, given_up)
        };
        if given_up > 0 {
            tracing::warn!(
                queue = %self.name,
                given_up,
                "leases of a dropped connection given up: their messages did not come back here"
            );
            self.orphans.notify_waiters();
        }
        if lapsed.is_empty() {
            return;
        }
        if let Err(e) = self.unlease_in_kv(&lapsed).await {
            tracing::warn!(error = %e, "cannot record lapsed leases");
        }
        let mut groups: HashMap<(u64, &str), Vec<u64>> = HashMap::new();
        for h in &lapsed {
            groups.entry((h.epoch, h.meta.topic.as_str())).or_default().push(h.tag);
        }
        for ((epoch, topic), tags) in groups {
            self.send_acks(epoch, topic, &tags, true).await;
        }
        self.wake();
    }

    /// Waits until none of `ids` is an orphaned lease: each is adopted by its redelivered copy
    /// or given up (see the module docs).
    async fn await_orphans(&self, ids: impl Iterator<Item = MessageId>) {
        let ids: Vec<MessageId> = {
            let local = lock(&self.local);
            if local.orphaned.is_empty() {
                return;
            }
            ids.filter(|id| local.orphaned.contains(id)).collect()
        };
        loop {
            let notified = self.orphans.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next = {
                let mut local = lock(&self.local);
                let now = Instant::now();
                let given_up = local.drop_expired_orphans(now);
                if given_up > 0 {
                    self.orphans.notify_waiters();
                }
                ids.iter()
                    .filter(|id| local.orphaned.contains(id))
                    .filter_map(|id| local.leases.get(id).map(|h| local.orphan_deadline(h)))
                    .min()
            };
            let Some(deadline) = next else { return };
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => {}
                () = self.stop.cancelled() => return,
            }
        }
    }

    /// Counts a refused settlement or extension; returns the new local total.
    fn count_stale(&self, n: u64) -> Option<u64> {
        (n > 0).then(|| self.stale.fetch_add(n, Ordering::Relaxed) + n)
    }

    fn stale_write(&self, write: AtomicWrite, total: Option<u64>) -> AtomicWrite {
        match total {
            Some(total) => write.set(self.keys.stale(self.instance), total.to_be_bytes().to_vec()),
            None => write,
        }
    }

    // -- claim ----------------------------------------------------------------------------

    /// Takes up to `max` claimable deliveries of `topics` out of the buffer, in order,
    /// reserving their concurrency keys.
    fn pick(&self, topics: &[String], max: usize) -> Vec<Buffered> {
        let now = Instant::now();
        let mut local = lock(&self.local);
        let window = max.saturating_add(SCAN_WINDOW);
        let mut candidates: Vec<(&Order, &String, &Buffered)> = Vec::new();
        for topic in topics {
            if let Some(buffer) = local.buffers.get(topic) {
                candidates.extend(buffer.iter().take(window).map(|(o, b)| (o, topic, b)));
            }
        }
        candidates.sort_by(|a, b| a.0.cmp(b.0));
        let mut chosen: Vec<(String, Order)> = Vec::new();
        let mut batch_keys: HashSet<&str> = HashSet::new();
        for (order, topic, b) in candidates {
            if chosen.len() >= max {
                break;
            }
            if b.not_before.is_some_and(|t| t > now) {
                continue;
            }
            if let Some(k) = b.meta.ck.as_deref()
                && (local.held_keys.contains(k) || !batch_keys.insert(k))
            {
                continue;
            }
            chosen.push((topic.clone(), *order));
        }
        let mut out = Vec::with_capacity(chosen.len());
        for (topic, order) in chosen {
            let Some(b) = local.buffers.get_mut(&topic).and_then(|buf| buf.remove(&order)) else { continue };
            local.by_id.remove(&b.meta.id);
            if let Some(k) = &b.meta.ck {
                local.held_keys.insert(k.clone());
            }
            out.push(b);
        }
        out
    }

    /// Puts picked deliveries back (claim failed or was refused for them).
    fn unpick(&self, items: Vec<Buffered>, not_before: Option<Instant>) {
        let mut local = lock(&self.local);
        for mut b in items {
            local.release_key(&b.meta.ck);
            if !local.current(b.epoch) {
                continue;
            }
            b.not_before = not_before;
            let topic = b.meta.topic.clone();
            local.arrivals += 1;
            let order = (Reverse(b.meta.priority), b.meta.vis, b.meta.seq, local.arrivals);
            local.insert_buffered(&topic, order, b);
        }
    }

    /// Fences a picked batch in the KV; returns the deliveries, and hands back or drops the
    /// rest.
    async fn lease_batch(
        self: &Arc<Self>,
        mut picked: Vec<Buffered>,
        lease: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let ttl = lease + LEASE_GRACE;
        for _ in 0..KV_ATTEMPTS {
            let mut keys: Vec<Key> = picked.iter().map(|b| self.keys.record(b.meta.id)).collect();
            let lock_at: Vec<Option<usize>> = picked
                .iter()
                .map(|b| {
                    b.meta.ck.as_ref().map(|k| {
                        keys.push(self.keys.lock(k));
                        keys.len() - 1
                    })
                })
                .collect();
            let entries = match self.kv.get_many(&keys).await {
                Ok(e) => e,
                Err(e) => {
                    self.unpick(picked, None);
                    return Err(kv_error(e));
                }
            };
            let mut write = AtomicWrite::new();
            let mut leased: Vec<(Buffered, Record)> = Vec::new();
            let mut dropped: Vec<Buffered> = Vec::new();
            let mut blocked: Vec<Buffered> = Vec::new();
            let mut dead: Vec<(Buffered, String)> = Vec::new();
            for (i, b) in picked.into_iter().enumerate() {
                let Some(entry) = entries.get(i).and_then(Option::as_ref) else {
                    // Cancelled, or finished and delivered again.
                    dropped.push(b);
                    continue;
                };
                let mut record = match Record::decode(entry) {
                    Ok(r) => r,
                    Err(e) => {
                        dead.push((b, e.to_string()));
                        continue;
                    }
                };
                if record.state == RecState::Dead || b.meta.generation < record.generation {
                    dropped.push(b);
                    continue;
                }
                if record.state == RecState::Leased && lock(&self.local).leases.contains_key(&b.meta.id) {
                    dropped.push(b);
                    continue;
                }
                let lock_entry = lock_at[i].and_then(|at| entries.get(at).cloned().flatten());
                let lock_check = match (&b.meta.ck, lock_entry) {
                    (None, _) => None,
                    (Some(k), None) => Some((self.keys.lock(k), None)),
                    (Some(k), Some(e)) if id_from_bytes(&e.value) == Some(b.meta.id) => {
                        Some((self.keys.lock(k), Some(e.versionstamp)))
                    }
                    (Some(_), Some(_)) => {
                        blocked.push(b);
                        continue;
                    }
                };
                record.state = RecState::Leased;
                record.token += 1;
                record.attempts += 1;
                record.generation = record.generation.max(b.meta.generation);
                write = write
                    .check(entry.key.clone(), Some(entry.versionstamp))
                    .set(entry.key.clone(), record.encode()?)
                    .set_with_ttl(self.keys.leased(&b.meta.topic, b.meta.id), Vec::new(), ttl);
                if b.meta.vis > b.meta.enq {
                    write = write.delete(self.keys.delayed(&b.meta.topic, b.meta.id));
                }
                if let Some((key, vs)) = lock_check {
                    write = write.check(key.clone(), vs).set_with_ttl(key, b.meta.id.as_bytes().to_vec(), ttl);
                }
                leased.push((b, record));
            }
            for (b, reason) in &dead {
                let now = Timestamp::now().as_millis();
                let stored = StoredDead {
                    meta: b.meta.clone(),
                    payload: b.payload.clone(),
                    attempt: 0,
                    token: 0,
                    error: format!("undeliverable: {reason}"),
                    failed_at: now,
                };
                if let Ok(value) = serde_json::to_vec(&stored) {
                    write = write.set(self.keys.dead(now, b.meta.id), value);
                }
            }
            let committed = if write.mutations.is_empty() {
                true
            } else {
                match self.kv.atomic(write).await {
                    Ok(v) => v.is_some(),
                    Err(e) => {
                        let back: Vec<Buffered> = leased
                            .into_iter()
                            .map(|(b, _)| b)
                            .chain(dropped)
                            .chain(blocked)
                            .chain(dead.into_iter().map(|(b, _)| b))
                            .collect();
                        self.unpick(back, None);
                        return Err(kv_error(e));
                    }
                }
            };
            if !committed {
                // Another process changed a record or a lock meanwhile: read again.
                picked = leased
                    .into_iter()
                    .map(|(b, _)| b)
                    .chain(dropped)
                    .chain(blocked)
                    .chain(dead.into_iter().map(|(b, _)| b))
                    .collect();
                continue;
            }
            let now = Instant::now();
            let until = now + lease;
            let mut out = Vec::with_capacity(leased.len());
            let mut void: Vec<(u64, String, u64)> = dropped
                .iter()
                .chain(dead.iter().map(|(b, _)| b))
                .map(|b| (b.epoch, b.meta.topic.clone(), b.tag))
                .collect();
            {
                let mut local = lock(&self.local);
                for b in dropped.iter().chain(dead.iter().map(|(b, _)| b)) {
                    local.release_key(&b.meta.ck);
                }
                for (b, record) in leased {
                    if b.epoch != local.epoch {
                        // The connection dropped: the broker gives the message back, and the
                        // next claim takes the record over.
                        local.release_key(&b.meta.ck);
                        continue;
                    }
                    out.push(Delivery {
                        id: b.meta.id,
                        topic: b.meta.topic.clone(),
                        kind: b.meta.kind.clone(),
                        payload: b.payload.clone(),
                        headers: b.meta.headers.clone(),
                        priority: b.meta.priority,
                        idempotency_key: b.meta.ik.clone(),
                        concurrency_key: b.meta.ck.clone(),
                        attempt: record.attempts,
                        enqueued_at: Timestamp(b.meta.enq),
                        last_error: record.error.clone(),
                        lease: Lease { message_id: b.meta.id, token: record.token },
                    });
                    let held = Held {
                        token: record.token,
                        until,
                        ttl: lease,
                        tag: b.tag,
                        epoch: b.epoch,
                        record,
                        meta: b.meta,
                        payload: b.payload,
                    };
                    let id = held.meta.id;
                    local.put_lease(id, held);
                    if !local.live {
                        // The connection dropped after the pick: the message comes back.
                        local.orphaned.insert(id);
                    }
                }
            }
            self.unpick(blocked, Some(now + REMOTE_LOCK_BACKOFF));
            void.sort_unstable();
            self.ack_grouped(void).await;
            return Ok(out);
        }
        tracing::warn!(queue = %self.name, "claim gave up after repeated concurrent changes; trying again later");
        self.unpick(picked, Some(Instant::now() + REMOTE_LOCK_BACKOFF));
        Ok(Vec::new())
    }

    /// When deliveries parked behind held concurrency keys fill a topic's prefetch window,
    /// republishes the surplus with a short delay (a new copy generation) and acks the
    /// originals, so a held key never starves the other messages of its topic.
    async fn spill_parked(self: &Arc<Self>, link: &Link, topics: &[String]) -> Result<(), QueueError> {
        let prefetch = usize::from(self.options.prefetch);
        let high = prefetch - prefetch / 10;
        let now = Instant::now();
        let parked: Vec<Buffered> = {
            let mut local = lock(&self.local);
            let mut out = Vec::new();
            for topic in topics {
                let window = local.window(topic);
                if window < high.max(1) {
                    continue;
                }
                let surplus = window - prefetch / 2;
                let Some(buffer) = local.buffers.get(topic) else { continue };
                let victims: Vec<Order> = buffer
                    .iter()
                    .rev()
                    .filter(|(_, b)| {
                        b.not_before.is_some_and(|t| t > now)
                            || b.meta.ck.as_ref().is_some_and(|k| local.held_keys.contains(k))
                    })
                    .take(surplus)
                    .map(|(o, _)| *o)
                    .collect();
                for order in victims {
                    if let Some(b) = local.buffers.get_mut(topic).and_then(|m| m.remove(&order)) {
                        local.by_id.remove(&b.meta.id);
                        out.push(b);
                    }
                }
            }
            out
        };
        if parked.is_empty() {
            return Ok(());
        }
        let stamp = Timestamp::now();
        let mut outgoing = Vec::with_capacity(parked.len());
        let mut write = AtomicWrite::new();
        for b in &parked {
            let mut meta = b.meta.clone();
            meta.generation += 1;
            meta.vis = stamp.plus(PARK_DELAY).as_millis();
            meta.seq = self.next_seq();
            match self.outgoing(link, &meta, &b.payload, PARK_DELAY).await {
                Ok(o) => outgoing.push(o),
                Err(e) => {
                    self.unpick_parked(parked);
                    return Err(e);
                }
            }
            write = write.set_with_ttl(self.keys.delayed(&meta.topic, meta.id), Vec::new(), PARK_DELAY);
        }
        if let Err(e) = self.publish(link, outgoing).await {
            self.unpick_parked(parked);
            return Err(e);
        }
        // The new copies carry a newer generation, so the originals are done either way; the
        // delayed index only feeds the counts.
        if let Err(e) = self.kv.atomic(write).await {
            tracing::warn!(error = %e, "cannot index parked messages as delayed");
        }
        tracing::debug!(queue = %self.name, parked = parked.len(), "parked deliveries behind held keys republished");
        self.ack_grouped(parked.iter().map(|b| (b.epoch, b.meta.topic.clone(), b.tag)).collect()).await;
        Ok(())
    }

    fn unpick_parked(&self, items: Vec<Buffered>) {
        let mut local = lock(&self.local);
        for b in items {
            if !local.current(b.epoch) {
                continue;
            }
            let topic = b.meta.topic.clone();
            local.arrivals += 1;
            let order = (Reverse(b.meta.priority), b.meta.vis, b.meta.seq, local.arrivals);
            local.insert_buffered(&topic, order, b);
        }
    }

    /// Whether the buffer holds something a claim of `topics` could take now, and when a
    /// deferred entry becomes eligible.
    fn claimable(&self, topics: Option<&[String]>) -> (bool, Option<Instant>) {
        let now = Instant::now();
        let local = lock(&self.local);
        let mut retry_at: Option<Instant> = None;
        for (topic, buffer) in &local.buffers {
            if topics.is_some_and(|ts| !ts.contains(topic)) {
                continue;
            }
            for b in buffer.values().take(SCAN_WINDOW) {
                if let Some(t) = b.not_before.filter(|t| *t > now) {
                    retry_at = Some(retry_at.map_or(t, |r| r.min(t)));
                    continue;
                }
                if b.meta.ck.as_ref().is_some_and(|k| local.held_keys.contains(k)) {
                    continue;
                }
                return (true, None);
            }
        }
        (false, retry_at)
    }

    // -- counts ---------------------------------------------------------------------------

    async fn counts(self: &Arc<Self>) -> Result<(BTreeMap<String, QueueStats>, u64), QueueError> {
        let link = self.link().await?;
        let topics = self.resolve_topics(&[], true).await?;
        let consumed: Vec<String> = {
            let local = lock(&self.local);
            topics.iter().filter(|t| local.consumers.contains(*t)).cloned().collect()
        };
        self.await_arrivals(&consumed).await;
        let mut out: BTreeMap<String, QueueStats> = BTreeMap::new();
        let declares = topics.iter().map(|t| self.declare_topic(&link, t));
        for (topic, count) in topics.iter().zip(join_all(declares).await) {
            out.entry(topic.clone()).or_default().ready += u64::from(count?);
        }
        {
            let local = lock(&self.local);
            for (topic, buffer) in &local.buffers {
                if !buffer.is_empty() {
                    out.entry(topic.clone()).or_default().ready += buffer.len() as u64;
                }
            }
        }
        let topic_part = |e: &Entry| match e.key.parts().get(3) {
            Some(crate::kv::KeyPart::String(t)) => Some(t.clone()),
            _ => None,
        };
        for e in list_all(&*self.kv, self.keys.under("d")).await.map_err(kv_error)? {
            if let Some(t) = topic_part(&e) {
                out.entry(t).or_default().delayed += 1;
            }
        }
        for e in list_all(&*self.kv, self.keys.under("l")).await.map_err(kv_error)? {
            if let Some(t) = topic_part(&e) {
                out.entry(t).or_default().leased += 1;
            }
        }
        for e in list_all(&*self.kv, self.keys.under("x")).await.map_err(kv_error)? {
            match serde_json::from_slice::<StoredDead>(&e.value) {
                Ok(d) => out.entry(d.meta.topic).or_default().dead += 1,
                Err(err) => tracing::warn!(key = %e.key, error = %err, "unreadable dead letter"),
            }
        }
        let mut stale = self.stale.load(Ordering::Relaxed);
        let mine = self.keys.stale(self.instance);
        for e in list_all(&*self.kv, self.keys.under("s")).await.map_err(kv_error)? {
            if e.key != mine
                && let Ok(bytes) = <[u8; 8]>::try_from(e.value.as_slice())
            {
                stale += u64::from_be_bytes(bytes);
            }
        }
        out.retain(|_, s| *s != QueueStats::default());
        Ok((out, stale))
    }
}

async fn list_all(kv: &dyn Kv, prefix: Key) -> Result<Vec<Entry>, KvError> {
    let mut out = Vec::new();
    let mut options = ListOptions::prefix(prefix).limit(1000);
    loop {
        let page = kv.list(options.clone()).await?;
        let Some(last) = page.last() else { break };
        options = options.after(last.key.clone());
        let done = page.len() < 1000;
        out.extend(page);
        if done {
            break;
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Background tasks
// ---------------------------------------------------------------------------------------

/// Feeds one topic's deliveries into the buffer.
async fn consume(
    weak: Weak<Shared>,
    epoch: u64,
    topic: String,
    mut consumer: lapin::Consumer,
    channel: Arc<TopicChannel>,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            next = consumer.next() => next,
        };
        let Some(shared) = weak.upgrade() else { return };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                shared.mark_broken(epoch, &format!("consumer of `{topic}` failed: {e}"));
                return;
            }
            None => {
                shared.mark_broken(epoch, &format!("consumer of `{topic}` was cancelled"));
                return;
            }
        };
        let mut delivery = delivery;
        let tag = delivery.delivery_tag;
        lock(&channel.outstanding).insert(tag);
        let redelivered = delivery.redelivered;
        let body = std::mem::take(&mut delivery.data);
        match decode_body(body) {
            Ok((meta, payload)) if meta.topic == topic => {
                if let Some(dup) = shared.arrive(epoch, &topic, meta, payload, tag, redelivered) {
                    shared.ack_tags(epoch, &topic, &[dup]).await;
                }
                shared.wake();
            }
            Ok((meta, payload)) => {
                let reason = format!("message of topic `{}` found in the queue of `{topic}`", meta.topic);
                shared.quarantine(epoch, &topic, &delivery, reason, payload).await;
            }
            Err((reason, body)) => shared.quarantine(epoch, &topic, &delivery, reason, body).await,
        }
    }
}

/// Ends lapsed leases.
async fn reaper(weak: Weak<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(shared) = weak.upgrade() else { return };
        shared.lapse_due().await;
    }
}

/// Re-opens a dropped connection and re-subscribes, with backoff. Holding the shared state
/// while waiting is fine: dropping the queue cancels `stop`.
async fn supervisor(weak: Weak<Shared>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(shared) = weak.upgrade() else { return };
        {
            let notified = shared.broken.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if shared.current_link().is_some_and(|l| l.healthy()) {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = &mut notified => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
        if shared.current_link().is_some_and(|l| l.healthy()) {
            continue;
        }
        match shared.link().await {
            Ok(_) => {
                backoff = Duration::from_millis(100);
                tracing::info!(queue = %shared.name, "amqp connection re-established");
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "amqp reconnect failed");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_RECONNECT_DELAY);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The contract
// ---------------------------------------------------------------------------------------

#[async_trait]
impl Queue for AmqpQueue {
    fn provider(&self) -> &'static str {
        BACKEND
    }

    async fn enqueue(&self, messages: Vec<NewMessage>) -> Result<Vec<Enqueued>, QueueError> {
        let s = &self.shared;
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let link = s.link().await?;
        let mut topics: Vec<&str> = messages.iter().map(|m| m.topic.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        for topic in &topics {
            s.ensure_topic(&link, topic).await?;
        }
        let now = Timestamp::now();
        let new_topics: Vec<String> = {
            let registered = lock(&s.registered);
            topics.iter().filter(|t| !registered.contains(**t)).map(|t| (*t).to_owned()).collect()
        };

        // Idempotency and records: one read, one conditional write (again on a conflict).
        let mut results: Vec<Enqueued> = Vec::new();
        let mut created: Vec<usize> = Vec::new();
        let mut committed = false;
        for _ in 0..KV_ATTEMPTS {
            let mut ik_keys: Vec<&str> = messages.iter().filter_map(|m| m.idempotency_key.as_deref()).collect();
            ik_keys.sort_unstable();
            ik_keys.dedup();
            let read: Vec<Key> = ik_keys.iter().map(|k| s.keys.idempotency(k)).collect();
            let existing = if read.is_empty() { Vec::new() } else { s.kv.get_many(&read).await.map_err(kv_error)? };
            let mut taken: HashMap<&str, MessageId> = HashMap::new();
            let mut write = AtomicWrite::new();
            for (k, e) in ik_keys.iter().zip(&existing) {
                match e {
                    Some(e) => match id_from_bytes(&e.value) {
                        Some(id) => {
                            taken.insert(k, id);
                        }
                        None => {
                            return Err(QueueError::Corrupt {
                                backend: BACKEND,
                                message: format!("idempotency entry {} is not a message id", e.key),
                            });
                        }
                    },
                    None => write = write.check(s.keys.idempotency(k), None),
                }
            }
            results.clear();
            created.clear();
            for (i, m) in messages.iter().enumerate() {
                if let Some(k) = m.idempotency_key.as_deref() {
                    if let Some(id) = taken.get(k) {
                        results.push(Enqueued::Duplicate(*id));
                        continue;
                    }
                    taken.insert(k, m.id);
                    write = write.set(s.keys.idempotency(k), m.id.as_bytes().to_vec());
                }
                let record = Record {
                    topic: m.topic.clone(),
                    state: RecState::Waiting,
                    token: 0,
                    attempts: 0,
                    generation: 0,
                    ik: m.idempotency_key.clone(),
                    error: None,
                    dead_at: None,
                };
                write = write.check(s.keys.record(m.id), None).set(s.keys.record(m.id), record.encode()?);
                if !m.delay.is_zero() {
                    let due = Duration::from_millis(delay_bucket(m.delay));
                    write = write.set_with_ttl(s.keys.delayed(&m.topic, m.id), Vec::new(), due);
                }
                results.push(Enqueued::Created(m.id));
                created.push(i);
            }
            for t in &new_topics {
                write = write.set(s.keys.topic(t), Vec::new());
            }
            if created.is_empty() && new_topics.is_empty() {
                committed = true;
                break;
            }
            if s.kv.atomic(write).await.map_err(kv_error)?.is_some() {
                committed = true;
                break;
            }
        }
        if !committed {
            return Err(backend("enqueue kept conflicting with concurrent writes to the same keys"));
        }
        {
            lock(&s.registered).extend(new_topics.iter().cloned());
            lock(&s.known).0.extend(new_topics);
        }

        let mut outgoing = Vec::with_capacity(created.len());
        let mut expected = Vec::new();
        for &i in &created {
            let m = &messages[i];
            let meta = Meta {
                id: m.id,
                topic: m.topic.clone(),
                kind: m.kind.clone(),
                headers: m.headers.clone(),
                priority: m.priority,
                ik: m.idempotency_key.clone(),
                ck: m.concurrency_key.clone(),
                enq: now.as_millis(),
                vis: now.plus(m.delay).as_millis(),
                seq: s.next_seq(),
                generation: 0,
            };
            outgoing.push(s.outgoing(&link, &meta, &m.payload, m.delay).await?);
            if m.delay.is_zero() {
                expected.push((m.topic.clone(), m.id, meta.seq));
            }
        }
        s.expect(expected);
        if let Err(e) = s.publish(&link, outgoing).await {
            // Undo the records of what may not have reached the broker (best effort: a copy
            // that did arrive is dropped when delivered, its record being gone).
            let mut undo = AtomicWrite::new();
            for &i in &created {
                let m = &messages[i];
                undo = undo.delete(s.keys.record(m.id)).delete(s.keys.delayed(&m.topic, m.id));
                if let Some(k) = &m.idempotency_key {
                    undo = undo.delete(s.keys.idempotency(k));
                }
            }
            if let Err(kv) = s.kv.atomic(undo).await {
                tracing::warn!(error = %kv, "cannot undo the records of a failed enqueue");
            }
            return Err(e);
        }
        s.wake();
        Ok(results)
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Delivery>, QueueError> {
        let s = &self.shared;
        if request.max == 0 {
            return Ok(Vec::new());
        }
        let link = s.link().await?;
        let topics = s.resolve_topics(&request.topics, false).await?;
        lock(&s.local).wanted = (!request.topics.is_empty()).then(|| request.topics.clone());
        s.ensure_consumers(&link, &topics).await?;
        s.spill_parked(&link, &topics).await?;
        s.await_arrivals(&topics).await;
        let picked = s.pick(&topics, request.max);
        if picked.is_empty() {
            return Ok(Vec::new());
        }
        s.lease_batch(picked, request.lease).await
    }

    async fn extend(&self, leases: &[Lease], lease: Duration) -> Result<Vec<Settled>, QueueError> {
        let s = &self.shared;
        let ttl = lease + LEASE_GRACE;
        let until = Instant::now() + lease;
        let mut out = Vec::with_capacity(leases.len());
        let mut write = AtomicWrite::new();
        let mut stale = 0;
        s.await_orphans(leases.iter().map(|l| l.message_id)).await;
        // Held until the write lands: a settlement that takes a lease after this check writes
        // its deletion after this write.
        let _order = s.lease_writes.write().await;
        {
            let mut local = lock(&s.local);
            for l in leases {
                let current = local.leases.get(&l.message_id).filter(|h| h.token == l.token);
                // An orphan still waiting here means the queue is closing: refuse it.
                let current = current.filter(|_| !local.orphaned.contains(&l.message_id));
                let Some(old) = current.map(|h| h.until) else {
                    stale += 1;
                    out.push(Settled::Stale);
                    continue;
                };
                local.due.remove(&(old, l.message_id));
                local.due.insert((until, l.message_id));
                if let Some(h) = local.leases.get_mut(&l.message_id) {
                    h.until = until;
                    h.ttl = lease;
                    write = write.set_with_ttl(s.keys.leased(&h.meta.topic, l.message_id), Vec::new(), ttl);
                    if let Some(k) = &h.meta.ck {
                        write = write.set_with_ttl(s.keys.lock(k), l.message_id.as_bytes().to_vec(), ttl);
                    }
                }
                out.push(Settled::Ok);
            }
        }
        let write = s.stale_write(write, s.count_stale(stale));
        if !write.mutations.is_empty() {
            s.kv.atomic(write).await.map_err(kv_error)?;
        }
        Ok(out)
    }

    async fn settle(&self, settlements: Vec<Settlement>) -> Result<Vec<Settled>, QueueError> {
        let s = &self.shared;
        let mut out = Vec::with_capacity(settlements.len());
        let mut valid: Vec<(Settlement, Held)> = Vec::new();
        let mut stale = 0;
        s.await_orphans(settlements.iter().map(|st| st.lease().message_id)).await;
        {
            let mut local = lock(&s.local);
            for settlement in settlements {
                let lease = *settlement.lease();
                let current = local.leases.get(&lease.message_id).is_some_and(|h| h.token == lease.token)
                    && !local.orphaned.contains(&lease.message_id);
                match current.then(|| local.take_lease(lease.message_id)).flatten() {
                    Some(held) => {
                        valid.push((settlement, held));
                        out.push(Settled::Ok);
                    }
                    None => {
                        stale += 1;
                        out.push(Settled::Stale);
                    }
                }
            }
        }
        let stale_total = s.count_stale(stale);
        if valid.is_empty() {
            let write = s.stale_write(AtomicWrite::new(), stale_total);
            if !write.mutations.is_empty() {
                s.kv.atomic(write).await.map_err(kv_error)?;
            }
            return Ok(out);
        }
        let restore = |valid: Vec<(Settlement, Held)>| {
            let mut local = lock(&s.local);
            for (_, held) in valid {
                if held.epoch == local.epoch {
                    let id = held.meta.id;
                    local.put_lease(id, held);
                    if !local.live {
                        // Its connection dropped meanwhile: it waits for its message.
                        local.orphaned.insert(id);
                    }
                }
            }
        };

        // Retry copies first: a crash after this leaves two copies (the message runs again),
        // never none.
        let now = Timestamp::now();
        let mut outgoing = Vec::new();
        let mut expected = Vec::new();
        let link = match s.link().await {
            Ok(l) => l,
            Err(e) => {
                restore(valid);
                return Err(e);
            }
        };
        for (settlement, held) in &valid {
            if let Settlement::Retry { delay, .. } = settlement {
                let mut meta = held.meta.clone();
                meta.generation = held.record.generation + 1;
                meta.vis = now.plus(*delay).as_millis();
                meta.seq = s.next_seq();
                match s.outgoing(&link, &meta, &held.payload, *delay).await {
                    Ok(o) => outgoing.push(o),
                    Err(e) => {
                        restore(valid);
                        return Err(e);
                    }
                }
                if delay.is_zero() {
                    expected.push((meta.topic.clone(), meta.id, meta.seq));
                }
            }
        }
        if !outgoing.is_empty() {
            s.expect(expected);
            if let Err(e) = s.publish(&link, outgoing).await {
                restore(valid);
                return Err(e);
            }
        }

        let window = s.window();
        let mut write = AtomicWrite::new();
        for (settlement, held) in &valid {
            let id = held.meta.id;
            let topic = &held.meta.topic;
            write = write.delete(s.keys.leased(topic, id));
            if let Some(k) = &held.meta.ck {
                write = write.delete(s.keys.lock(k));
            }
            let mut record = held.record.clone();
            match settlement {
                Settlement::Ack(_) => {
                    write = write.delete(s.keys.record(id));
                    if let Some(k) = &held.meta.ik {
                        write = write.set_with_ttl(s.keys.idempotency(k), id.as_bytes().to_vec(), window);
                    }
                }
                Settlement::Retry { delay, error, .. } => {
                    record.state = RecState::Waiting;
                    record.generation += 1;
                    record.error = Some(error.clone());
                    write = write.set(s.keys.record(id), record.encode()?);
                    if !delay.is_zero() {
                        let due = Duration::from_millis(delay_bucket(*delay));
                        write = write.set_with_ttl(s.keys.delayed(topic, id), Vec::new(), due);
                    }
                }
                Settlement::DeadLetter { error, .. } => {
                    record.state = RecState::Dead;
                    record.error = Some(error.clone());
                    record.dead_at = Some(now.as_millis());
                    let dead = StoredDead {
                        meta: held.meta.clone(),
                        payload: held.payload.clone(),
                        attempt: record.attempts,
                        token: record.token,
                        error: error.clone(),
                        failed_at: now.as_millis(),
                    };
                    let value =
                        serde_json::to_vec(&dead).map_err(|e| backend(format!("cannot encode a dead letter: {e}")))?;
                    write = write.set(s.keys.record(id), record.encode()?).set(s.keys.dead(now.as_millis(), id), value);
                }
                Settlement::Release(_) => {
                    record.state = RecState::Waiting;
                    record.attempts = record.attempts.saturating_sub(1);
                    write = write.set(s.keys.record(id), record.encode()?);
                }
            }
        }
        let write = s.stale_write(write, stale_total);
        let written = {
            let _order = s.lease_writes.read().await;
            s.kv.atomic(write).await
        };
        if let Err(e) = written {
            restore(valid);
            return Err(kv_error(e));
        }

        // The broker: ack what is done; released deliveries go back to the buffer unacked.
        let mut acks: Vec<(u64, String, u64)> = Vec::new();
        {
            let mut local = lock(&s.local);
            for (settlement, held) in valid {
                local.release_key(&held.meta.ck);
                match settlement {
                    Settlement::Release(_) if local.current(held.epoch) => {
                        local.arrivals += 1;
                        let order = (Reverse(held.meta.priority), now.as_millis(), s.next_seq(), local.arrivals);
                        let topic = held.meta.topic.clone();
                        local.insert_buffered(
                            &topic,
                            order,
                            Buffered {
                                meta: held.meta,
                                payload: held.payload,
                                tag: held.tag,
                                epoch: held.epoch,
                                not_before: None,
                            },
                        );
                    }
                    Settlement::Release(_) => {}
                    _ => acks.push((held.epoch, held.meta.topic, held.tag)),
                }
            }
        }
        s.ack_grouped(acks).await;
        s.wake();
        Ok(out)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let s = &self.shared;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let entries =
            s.kv.list(ListOptions::prefix(s.keys.under("x")).reverse().limit(limit)).await.map_err(kv_error)?;
        entries
            .into_iter()
            .map(|e| {
                serde_json::from_slice::<StoredDead>(&e.value).map(StoredDead::dead_letter).map_err(|err| {
                    QueueError::Corrupt { backend: BACKEND, message: format!("dead letter at {}: {err}", e.key) }
                })
            })
            .collect()
    }

    async fn redrive(&self, id: MessageId) -> Result<bool, QueueError> {
        let s = &self.shared;
        let link = s.link().await?;
        for _ in 0..KV_ATTEMPTS {
            let Some(entry) = s.kv.get(&s.keys.record(id)).await.map_err(kv_error)? else { return Ok(false) };
            let mut record = Record::decode(&entry)?;
            let (RecState::Dead, Some(dead_at)) = (record.state, record.dead_at) else { return Ok(false) };
            let dead_key = s.keys.dead(dead_at, id);
            let Some(dead_entry) = s.kv.get(&dead_key).await.map_err(kv_error)? else { return Ok(false) };
            let dead: StoredDead = serde_json::from_slice(&dead_entry.value).map_err(|e| QueueError::Corrupt {
                backend: BACKEND,
                message: format!("dead letter at {dead_key}: {e}"),
            })?;
            let before = record.clone();
            record.state = RecState::Waiting;
            record.attempts = 0;
            record.generation += 1;
            record.dead_at = None;
            record.topic = dead.meta.topic.clone();
            let write = AtomicWrite::new()
                .check(entry.key.clone(), Some(entry.versionstamp))
                .check(dead_key.clone(), Some(dead_entry.versionstamp))
                .set(entry.key.clone(), record.encode()?)
                .delete(dead_key.clone());
            if s.kv.atomic(write).await.map_err(kv_error)?.is_none() {
                continue;
            }
            let mut meta = dead.meta.clone();
            meta.generation = record.generation;
            let now = Timestamp::now().as_millis();
            meta.vis = now;
            meta.seq = s.next_seq();
            let published = match s.outgoing(&link, &meta, &dead.payload, Duration::ZERO).await {
                Ok(o) => {
                    s.expect([(meta.topic.clone(), id, meta.seq)]);
                    s.publish(&link, vec![o]).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = published {
                // Put the dead letter back as it was.
                let undo =
                    AtomicWrite::new().set(entry.key.clone(), before.encode()?).set(dead_key, dead_entry.value.clone());
                if let Err(kv) = s.kv.atomic(undo).await {
                    tracing::warn!(error = %kv, %id, "cannot restore a dead letter after a failed redrive");
                }
                return Err(e);
            }
            s.wake();
            return Ok(true);
        }
        Err(backend("redrive kept conflicting with concurrent changes"))
    }

    async fn purge_dead(&self, failed_before: Timestamp, limit: usize) -> Result<usize, QueueError> {
        let s = &self.shared;
        let cutoff = failed_before.as_millis();
        let mut purged = 0;
        // A dead letter redriven (or purged by another process) meanwhile fails its check;
        // the next round reads the store again.
        for _ in 0..KV_ATTEMPTS {
            if purged >= limit {
                break;
            }
            let listed =
                s.kv.list(ListOptions::prefix(s.keys.under("x")).limit(limit - purged)).await.map_err(kv_error)?;
            // Key order is failure-time order: stop at the first one too recent.
            let mut due = Vec::with_capacity(listed.len());
            for entry in listed {
                let Some((failed_at, id)) = dead_key_parts(&entry.key) else {
                    return Err(QueueError::Corrupt {
                        backend: BACKEND,
                        message: format!("dead-letter key {} is not (failure time, id)", entry.key),
                    });
                };
                if failed_at >= cutoff {
                    break;
                }
                due.push((entry, failed_at, id));
            }
            if due.is_empty() {
                break;
            }
            let record_keys: Vec<Key> = due.iter().map(|(_, _, id)| s.keys.record(*id)).collect();
            let records = s.kv.get_many(&record_keys).await.map_err(kv_error)?;
            let mut writes = Vec::with_capacity(due.len());
            for ((entry, failed_at, id), record) in due.iter().zip(records) {
                let mut write =
                    AtomicWrite::new().check(entry.key.clone(), Some(entry.versionstamp)).delete(entry.key.clone());
                // The record goes with its dead letter; a record of another life of the id
                // (or none) is left alone.
                if let Some(record_entry) = record {
                    let r = Record::decode(&record_entry)?;
                    if r.state == RecState::Dead && r.dead_at == Some(*failed_at) {
                        write = write
                            .check(record_entry.key.clone(), Some(record_entry.versionstamp))
                            .delete(record_entry.key.clone());
                        if let Some(k) = &r.ik {
                            write = write.set_with_ttl(s.keys.idempotency(k), id.as_bytes().to_vec(), s.window());
                        }
                    }
                }
                writes.push(write);
            }
            let results = s.kv.atomic_many(writes).await.map_err(kv_error)?;
            let done = results.iter().filter(|r| r.is_some()).count();
            purged += done;
            if done == results.len() {
                break;
            }
        }
        Ok(purged)
    }

    async fn cancel(&self, id: MessageId) -> Result<Cancelled, QueueError> {
        let s = &self.shared;
        for _ in 0..KV_ATTEMPTS {
            let Some(entry) = s.kv.get(&s.keys.record(id)).await.map_err(kv_error)? else {
                return Ok(Cancelled::NotFound);
            };
            let record = Record::decode(&entry)?;
            match record.state {
                RecState::Leased => return Ok(Cancelled::Leased),
                RecState::Dead => return Ok(Cancelled::NotFound),
                RecState::Waiting => {}
            }
            let mut write = AtomicWrite::new()
                .check(entry.key.clone(), Some(entry.versionstamp))
                .delete(entry.key.clone())
                .delete(s.keys.delayed(&record.topic, id));
            if let Some(k) = &record.ik {
                write = write.set_with_ttl(s.keys.idempotency(k), id.as_bytes().to_vec(), s.window());
            }
            if s.kv.atomic(write).await.map_err(kv_error)?.is_none() {
                continue;
            }
            // Its broker copy is dropped when delivered; if it is in this buffer, now.
            let buffered = lock(&s.local).remove_buffered(id);
            if let Some(b) = buffered {
                s.ack_tags(b.epoch, &b.meta.topic, &[b.tag]).await;
            }
            return Ok(Cancelled::Removed);
        }
        Err(backend("cancel kept conflicting with concurrent changes"))
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let (by_topic, stale) = self.shared.counts().await?;
        let mut total = QueueStats { stale_settlements: stale, ..QueueStats::default() };
        for s in by_topic.values() {
            total.ready += s.ready;
            total.delayed += s.delayed;
            total.leased += s.leased;
            total.dead += s.dead;
        }
        Ok(total)
    }

    async fn topic_stats(&self) -> Result<BTreeMap<String, QueueStats>, QueueError> {
        Ok(self.shared.counts().await?.0)
    }

    async fn wait_for_work(&self, timeout: Duration) {
        let s = &self.shared;
        let deadline = Instant::now() + timeout;
        let notified = s.work.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let wanted = lock(&s.local).wanted.clone();
        let topics = match &wanted {
            Some(t) => Some(t.clone()),
            None => s.resolve_topics(&[], false).await.ok(),
        };
        if let (Some(topics), Ok(link)) = (&topics, s.link().await)
            && let Err(e) = s.ensure_consumers(&link, topics).await
        {
            tracing::warn!(error = %e, "cannot subscribe while waiting for work");
        }
        let (ready, retry_at) = s.claimable(topics.as_deref());
        if ready {
            return;
        }
        let until = retry_at.map_or(deadline, |r| r.min(deadline));
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(until) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_the_password() {
        assert_eq!(redact_url("amqp://guest:secret@host:5672/%2f"), "amqp://guest:***@host:5672/%2f");
        assert_eq!(redact_url("amqp://host:5672/%2f"), "amqp://host:5672/%2f");
        assert_eq!(redact_url("amqp://user@host/v"), "amqp://user@host/v");
    }

    #[test]
    fn delay_buckets_round_up_to_two_digits() {
        assert_eq!(delay_bucket(Duration::from_millis(300)), 300);
        assert_eq!(delay_bucket(Duration::from_millis(1234)), 1300);
        assert_eq!(delay_bucket(Duration::from_millis(99)), 99);
        assert_eq!(delay_bucket(Duration::from_millis(101)), 110);
        assert_eq!(delay_bucket(Duration::ZERO), 1);
        assert_eq!(delay_bucket(Duration::from_secs(60)), 60_000);
    }

    fn meta(topic: &str) -> Meta {
        Meta {
            id: MessageId::new(),
            topic: topic.into(),
            kind: "k".into(),
            headers: Vec::new(),
            priority: 0,
            ik: None,
            ck: None,
            enq: 1,
            vis: 1,
            seq: 1,
            generation: 0,
        }
    }

    fn buffered_epoch(s: &Shared, id: MessageId) -> Option<(u64, u64)> {
        let local = lock(&s.local);
        let (topic, order) = local.by_id.get(&id)?;
        local.buffers.get(topic)?.get(order).map(|b| (b.epoch, b.tag))
    }

    /// A broker cut: deliveries of the dropped connection that reach the buffer after the
    /// drop (still in the consumer's stream, or a claim handed back) must not stay there, or
    /// the redelivered copy is acked as their duplicate and the message is lost (fenced as
    /// leased, never run, gone from the broker).
    #[test]
    fn deliveries_of_a_dropped_connection_never_shadow_their_redelivered_copy() {
        let s = Shared::new(AmqpOptions::default(), "q", Arc::new(crate::kv::memory::MemoryKv::new()));
        lock(&s.local).reconnected(1, Instant::now());
        let (x, y, z) = (meta("t"), meta("t"), meta("t"));
        let (xid, yid, zid) = (x.id, y.id, z.id);
        assert_eq!(s.arrive(1, "t", x.clone(), b"x".to_vec(), 7, false), None);
        assert_eq!(buffered_epoch(&s, xid), Some((1, 7)));

        // The connection drops: the buffer is emptied, and what of it comes late stays out.
        lock(&s.local).wipe();
        assert_eq!(buffered_epoch(&s, xid), None);
        assert_eq!(s.arrive(1, "t", y.clone(), b"y".to_vec(), 8, false), None, "a void tag is never acked");
        assert_eq!(buffered_epoch(&s, yid), None, "a delivery after the drop is void");
        let handed_back = Buffered { meta: z.clone(), payload: b"z".to_vec(), tag: 9, epoch: 1, not_before: None };
        s.unpick(vec![handed_back], None);
        assert_eq!(buffered_epoch(&s, zid), None, "a claim handed back after the drop is void");

        // A void entry that got in anyway is dropped at the reconnect.
        {
            let mut local = lock(&s.local);
            let stale = Buffered { meta: z.clone(), payload: b"z".to_vec(), tag: 9, epoch: 1, not_before: None };
            local.insert_buffered("t", (Reverse(0), 1, 1, 99), stale);
        }
        assert_eq!(lock(&s.local).reconnected(2, Instant::now()), Vec::<String>::new());
        assert_eq!(buffered_epoch(&s, zid), None);

        // The redelivered copies are buffered under the new connection, none acked.
        for (i, m) in [x, y, z.clone()].into_iter().enumerate() {
            let id = m.id;
            let tag = i as u64 + 1;
            assert_eq!(s.arrive(2, "t", m, b"p".to_vec(), tag, true), None, "the copy is not a duplicate");
            assert_eq!(buffered_epoch(&s, id), Some((2, tag)));
        }
        // A true duplicate on the same connection is still acked.
        assert_eq!(s.arrive(2, "t", z, b"z".to_vec(), 4, true), Some(4));
        assert_eq!(buffered_epoch(&s, zid), Some((2, 3)));
    }

    #[test]
    fn body_round_trips_and_garbage_is_refused() {
        let meta = Meta {
            id: MessageId::new(),
            topic: "t".into(),
            kind: "k".into(),
            headers: vec![("a".into(), "b".into())],
            priority: 3,
            ik: Some("i".into()),
            ck: None,
            enq: 1,
            vis: 2,
            seq: 3,
            generation: 4,
        };
        let body = encode_body(&meta, b"payload").unwrap();
        let (back, payload) = decode_body(body).unwrap();
        assert_eq!((back.id, back.generation, payload.as_slice()), (meta.id, 4, &b"payload"[..]));
        assert!(decode_body(b"hello".to_vec()).is_err());
        assert!(decode_body(b"NSQ1\0\0\0\x09{}".to_vec()).is_err());
    }
}
