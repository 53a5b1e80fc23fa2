//! An in-process queue: fast, exact, and gone when the process exits. For tests, benchmarks
//! and apps that need no durability.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{
    Cancelled, ClaimRequest, DeadLetter, Delivery, Enqueued, Lease, MessageId, NewMessage, Queue, QueueError,
    QueueStats, Settled, Settlement,
};
use crate::time::Timestamp;

/// How long an idempotency key is remembered after its message was acked.
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug)]
enum Place {
    Ready { seq: u64 },
    Delayed,
    Leased { until: Timestamp },
    Dead { error: String, failed_at: Timestamp, seq: u64 },
}

#[derive(Debug)]
struct Stored {
    message: NewMessage,
    enqueued_at: Timestamp,
    attempts: u32,
    token: u64,
    last_error: Option<String>,
    place: Place,
}

#[derive(Default)]
struct State {
    messages: super::IdMap<Stored>,
    ready: BTreeSet<(Reverse<i32>, u64, MessageId)>,
    delayed: BTreeSet<(Timestamp, u64, MessageId)>,
    leased: BTreeSet<(Timestamp, MessageId)>,
    dead: BTreeMap<(Timestamp, u64), MessageId>,
    active_keys: HashSet<String>,
    idempotency: HashMap<String, (MessageId, Option<Timestamp>)>,
    seq: u64,
    stale: u64,
}

impl State {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Puts a message where it waits, visible at `at` (or now).
    fn place_pending(&mut self, id: MessageId, at: Option<Timestamp>, now: Timestamp) {
        let seq = self.next_seq();
        let Some(stored) = self.messages.get_mut(&id) else { return };
        match at {
            Some(until) if until > now => {
                stored.place = Place::Delayed;
                self.delayed.insert((until, seq, id));
            }
            _ => {
                stored.place = Place::Ready { seq };
                self.ready.insert((Reverse(stored.message.priority), seq, id));
            }
        }
    }

    /// Takes a leased message out of the lease index, if `lease` is its current claim.
    fn unlease(&mut self, lease: &Lease) -> bool {
        let Some(stored) = self.messages.get_mut(&lease.message_id) else { return false };
        let Place::Leased { until } = stored.place else { return false };
        if stored.token != lease.token {
            return false;
        }
        self.leased.remove(&(until, lease.message_id));
        if let Some(key) = &stored.message.concurrency_key {
            self.active_keys.remove(key);
        }
        true
    }

    /// Moves due delayed messages and lapsed leases to the ready set.
    fn promote(&mut self, now: Timestamp) {
        while let Some(&(until, _, id)) = self.delayed.first() {
            if until > now {
                break;
            }
            self.delayed.pop_first();
            self.place_pending(id, None, now);
        }
        while let Some(&(until, id)) = self.leased.first() {
            if until > now {
                break;
            }
            self.leased.pop_first();
            if let Some(key) = self.messages.get(&id).and_then(|s| s.message.concurrency_key.clone()) {
                self.active_keys.remove(&key);
            }
            self.place_pending(id, None, now);
        }
    }

    fn delivery(stored: &Stored) -> Delivery {
        let m = &stored.message;
        Delivery {
            id: m.id,
            topic: m.topic.clone(),
            kind: m.kind.clone(),
            payload: m.payload.clone(),
            headers: m.headers.clone(),
            priority: m.priority,
            idempotency_key: m.idempotency_key.clone(),
            concurrency_key: m.concurrency_key.clone(),
            attempt: stored.attempts,
            enqueued_at: stored.enqueued_at,
            last_error: stored.last_error.clone(),
            lease: Lease { message_id: m.id, token: stored.token },
        }
    }

    /// Forgets a finished message; its idempotency key stays remembered for the window.
    fn remove(&mut self, id: MessageId, now: Timestamp, window: Duration) {
        if let Some(stored) = self.messages.remove(&id)
            && let Some(key) = stored.message.idempotency_key
        {
            self.idempotency.insert(key, (id, Some(now.plus(window))));
        }
    }
}

/// The in-memory queue. Cheap to create; share it behind an `Arc`.
pub struct MemoryQueue {
    state: Mutex<State>,
    notify: Notify,
    idempotency_window: Duration,
}

impl Default for MemoryQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self { state: Mutex::default(), notify: Notify::new(), idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW }
    }

    /// Sets how long an idempotency key is remembered after its message finished.
    pub fn with_idempotency_window(mut self, window: Duration) -> Self {
        self.idempotency_window = window;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than losing the queue, so recover the guard instead of propagating.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        self.notify.notify_waiters();
        self.notify.notify_one();
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    fn provider(&self) -> &'static str {
        "memory"
    }

    async fn enqueue(&self, messages: Vec<NewMessage>) -> Result<Vec<Enqueued>, QueueError> {
        let now = Timestamp::now();
        let mut out = Vec::with_capacity(messages.len());
        {
            let mut st = self.lock();
            for message in messages {
                // An id waiting, leased or dead (or earlier in this batch) is taken.
                if st.messages.contains_key(&message.id) {
                    out.push(Enqueued::Duplicate(message.id));
                    continue;
                }
                if let Some(key) = &message.idempotency_key {
                    match st.idempotency.get(key) {
                        Some(&(id, None)) => {
                            out.push(Enqueued::Duplicate(id));
                            continue;
                        }
                        Some(&(id, Some(until))) if until > now => {
                            out.push(Enqueued::Duplicate(id));
                            continue;
                        }
                        _ => {}
                    }
                    st.idempotency.insert(key.clone(), (message.id, None));
                }
                let id = message.id;
                let at = (!message.delay.is_zero()).then(|| now.plus(message.delay));
                st.messages.insert(
                    id,
                    Stored {
                        message,
                        enqueued_at: now,
                        attempts: 0,
                        token: 0,
                        last_error: None,
                        place: Place::Ready { seq: 0 },
                    },
                );
                st.place_pending(id, at, now);
                out.push(Enqueued::Created(id));
            }
        }
        self.wake();
        Ok(out)
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Delivery>, QueueError> {
        let now = Timestamp::now();
        let until = now.plus(request.lease);
        let mut st = self.lock();
        st.promote(now);
        let mut picked = Vec::new();
        let mut keys_in_batch: HashSet<&str> = HashSet::new();
        for &(_, _, id) in &st.ready {
            if picked.len() >= request.max {
                break;
            }
            let Some(stored) = st.messages.get(&id) else { continue };
            if !request.topics.is_empty() && !request.topics.contains(&stored.message.topic) {
                continue;
            }
            if let Some(key) = stored.message.concurrency_key.as_deref() {
                if st.active_keys.contains(key) || !keys_in_batch.insert(key) {
                    continue;
                }
            }
            picked.push(id);
        }
        let mut out = Vec::with_capacity(picked.len());
        for id in picked {
            let Some(stored) = st.messages.get_mut(&id) else { continue };
            let Place::Ready { seq } = stored.place else { continue };
            let ready_key = (Reverse(stored.message.priority), seq, id);
            stored.attempts += 1;
            stored.token += 1;
            stored.place = Place::Leased { until };
            let key = stored.message.concurrency_key.clone();
            out.push(State::delivery(stored));
            st.ready.remove(&ready_key);
            st.leased.insert((until, id));
            if let Some(key) = key {
                st.active_keys.insert(key);
            }
        }
        Ok(out)
    }

    async fn extend(&self, leases: &[Lease], lease: Duration) -> Result<Vec<Settled>, QueueError> {
        let until = Timestamp::now().plus(lease);
        let mut st = self.lock();
        let mut out = Vec::with_capacity(leases.len());
        for l in leases {
            let current = match st.messages.get_mut(&l.message_id) {
                Some(stored) if stored.token == l.token => match stored.place {
                    Place::Leased { until: old } => {
                        stored.place = Place::Leased { until };
                        Some(old)
                    }
                    _ => None,
                },
                _ => None,
            };
            match current {
                Some(old) => {
                    st.leased.remove(&(old, l.message_id));
                    st.leased.insert((until, l.message_id));
                    out.push(Settled::Ok);
                }
                None => {
                    st.stale += 1;
                    out.push(Settled::Stale);
                }
            }
        }
        Ok(out)
    }

    async fn settle(&self, settlements: Vec<Settlement>) -> Result<Vec<Settled>, QueueError> {
        let now = Timestamp::now();
        let mut out = Vec::with_capacity(settlements.len());
        let mut wake = false;
        {
            let mut st = self.lock();
            for s in settlements {
                let lease = *s.lease();
                if !st.unlease(&lease) {
                    st.stale += 1;
                    out.push(Settled::Stale);
                    continue;
                }
                let id = lease.message_id;
                match s {
                    Settlement::Ack(_) => st.remove(id, now, self.idempotency_window),
                    Settlement::Retry { delay, error, .. } => {
                        if let Some(stored) = st.messages.get_mut(&id) {
                            stored.last_error = Some(error);
                        }
                        st.place_pending(id, Some(now.plus(delay)), now);
                        wake |= delay.is_zero();
                    }
                    Settlement::DeadLetter { error, .. } => {
                        let seq = st.next_seq();
                        if let Some(stored) = st.messages.get_mut(&id) {
                            stored.last_error = Some(error.clone());
                            stored.place = Place::Dead { error, failed_at: now, seq };
                        }
                        st.dead.insert((now, seq), id);
                    }
                    Settlement::Release(_) => {
                        if let Some(stored) = st.messages.get_mut(&id) {
                            stored.attempts = stored.attempts.saturating_sub(1);
                        }
                        st.place_pending(id, None, now);
                        wake = true;
                    }
                }
                out.push(Settled::Ok);
            }
        }
        if wake {
            self.wake();
        }
        Ok(out)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let st = self.lock();
        Ok(st
            .dead
            .values()
            .rev()
            .filter_map(|id| st.messages.get(id))
            .filter_map(|stored| match &stored.place {
                Place::Dead { error, failed_at, .. } => {
                    Some(DeadLetter { message: State::delivery(stored), error: error.clone(), failed_at: *failed_at })
                }
                _ => None,
            })
            .take(limit)
            .collect())
    }

    async fn redrive(&self, id: MessageId) -> Result<bool, QueueError> {
        let now = Timestamp::now();
        {
            let mut st = self.lock();
            let key = match st.messages.get(&id).map(|s| &s.place) {
                Some(Place::Dead { failed_at, seq, .. }) => (*failed_at, *seq),
                _ => return Ok(false),
            };
            st.dead.remove(&key);
            if let Some(stored) = st.messages.get_mut(&id) {
                stored.attempts = 0;
            }
            st.place_pending(id, None, now);
        }
        self.wake();
        Ok(true)
    }

    async fn purge_dead(&self, failed_before: Timestamp, limit: usize) -> Result<usize, QueueError> {
        let now = Timestamp::now();
        let mut st = self.lock();
        let mut purged = 0;
        while purged < limit {
            let Some((&(failed_at, seq), _)) = st.dead.first_key_value() else { break };
            if failed_at >= failed_before {
                break;
            }
            if let Some(id) = st.dead.remove(&(failed_at, seq)) {
                st.remove(id, now, self.idempotency_window);
                purged += 1;
            }
        }
        Ok(purged)
    }

    async fn cancel(&self, id: MessageId) -> Result<Cancelled, QueueError> {
        let now = Timestamp::now();
        let mut st = self.lock();
        let Some(stored) = st.messages.get(&id) else { return Ok(Cancelled::NotFound) };
        match stored.place {
            Place::Ready { seq } => {
                let key = (Reverse(stored.message.priority), seq, id);
                st.ready.remove(&key);
            }
            // Delayed entries are keyed by due time; a cancel is rare enough to scan for it.
            Place::Delayed => st.delayed.retain(|&(_, _, i)| i != id),
            Place::Leased { .. } => return Ok(Cancelled::Leased),
            Place::Dead { .. } => return Ok(Cancelled::NotFound),
        }
        st.remove(id, now, self.idempotency_window);
        Ok(Cancelled::Removed)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let now = Timestamp::now();
        let mut st = self.lock();
        st.promote(now);
        Ok(QueueStats {
            ready: st.ready.len() as u64,
            delayed: st.delayed.len() as u64,
            leased: st.leased.len() as u64,
            dead: st.dead.len() as u64,
            stale_settlements: st.stale,
        })
    }

    async fn topic_stats(&self) -> Result<std::collections::BTreeMap<String, QueueStats>, QueueError> {
        let now = Timestamp::now();
        let mut st = self.lock();
        st.promote(now);
        let mut out = std::collections::BTreeMap::<String, QueueStats>::new();
        for stored in st.messages.values() {
            let stats = out.entry(stored.message.topic.clone()).or_default();
            match stored.place {
                Place::Ready { .. } => stats.ready += 1,
                Place::Delayed => stats.delayed += 1,
                Place::Leased { .. } => stats.leased += 1,
                Place::Dead { .. } => stats.dead += 1,
            }
        }
        Ok(out)
    }

    async fn wait_for_work(&self, timeout: Duration) {
        let now = Timestamp::now();
        // Wake for the next delayed message or lapsing lease, whichever is first.
        let next_due = {
            let st = self.lock();
            let d = st.delayed.first().map(|&(t, _, _)| t);
            let l = st.leased.first().map(|&(t, _)| t);
            d.into_iter().chain(l).min()
        };
        let timeout = match next_due {
            Some(t) => timeout.min(t.since(now) + Duration::from_millis(1)),
            None => timeout,
        };
        let _ = tokio::time::timeout(timeout, self.notify.notified()).await;
    }
}
