//! The queue on a [Redis store](crate::redis): messages live in the server, so every worker
//! connected to it shares them, and they survive worker restarts (and server restarts, as far
//! as the server's persistence settings go).
//!
//! Semantics are those of the [`Queue`] contract, exactly as the [memory queue](super::memory)
//! implements them. Every call is one Lua script (`EVALSHA`): it reads and writes atomically on
//! the server, in one round trip, whatever the batch size.
//!
//! # Layout
//!
//! Under `{prefix}:q:{<queue>}:` (the queue name with `\` and `}` escaped):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `m:<id>` | hash | one message: topic `t`, kind `k`, payload `p`, headers `h`, priority `pr`, keys `ik` / `ck`, attempts `a`, fencing token `tk`, enqueued-at `e`, last error `er`, state `s` (`r` ready, `p` parked, `d` delayed, `l` leased, `x` dead), its place in the ready order `rk`, and the failure time `u` of a dead letter |
//! | `r:<topic>` | sorted set, all scores 0 | ready messages in claim order: members are `rk` = 8 hex digits of `2^31-1-priority`, 12 of the time the message became visible (ms), 12 of a sequence number, then the id, so byte order is "higher priority, then older" |
//! | `delayed` | sorted set | delayed messages and retry backoffs, scored by due time (the time they become visible) |
//! | `leased` | sorted set | leased messages, scored by lease expiry |
//! | `dead` | sorted set | dead letters, scored by failure time |
//! | `locks` | hash | concurrency key → the id of the message that holds it |
//! | `p:<key>` | sorted set, scores 0 | messages parked behind a held concurrency key, in claim order |
//! | `i:<key>` | string | idempotency key → message id; no TTL while the message lives (dead letters included), the idempotency window after it finished or its dead letter was purged |
//! | `topics` | set | every topic ever enqueued to |
//! | `n` | hash | per-topic counts of parked, delayed, leased and dead messages (`p:<topic>`, ...) |
//! | `seq`, `stale` | strings | the sequence counter and the count of refused settlements |
//!
//! # Claiming
//!
//! The claim script first moves due delayed messages and lapsed leases (at most 1,000 of each
//! per call) into the ready sets, so a crashed worker's messages are claimable again as soon
//! as its leases lapse, with no background rescuer. It then walks the heads of the requested
//! topics' ready sets in merged order (`ZRANGE` by rank: O(log n) per message handed out,
//! whatever the backlog). A message whose concurrency key is held is moved to that key's
//! parked set instead of being skipped over and over; when the key is freed (ack, retry,
//! dead letter, release, lapsed lease), the first parked message goes back to its ready set,
//! keeping its place. Every claim adds one to the message's fencing token, and settlements and
//! extensions must name the current token.
//!
//! A message whose fields cannot be read is never handed out: it goes to the dead-letter set
//! with the reason as its error.
//!
//! # Waking workers
//!
//! Enqueue, retry, release, redrive and freed concurrency keys `PUBLISH` on the queue's
//! channel; the store's pub/sub connection turns that into a wake-up of `wait_for_work`,
//! which also sleeps no longer than until the next delayed message is due or lease lapses.
//! That due time is read from the server and reused while no notice arrives (at most
//! 500 ms), so an idle worker costs no round trip per wait.
//!
//! Times (delays, leases, failure times) come from the server's clock.
//!
//! # Limits
//!
//! - One claim hands out at most 1,000 messages and looks at most at `4 × max + 1,000`
//!   candidates (the ones it parks count), so one call never holds the server for long.
//! - `stats` and `topic_stats` promote due messages too (1,000 of each kind per call): with
//!   more overdue than that, the rest counts as delayed or leased until claims move it.
//! - Enqueuing an id that is already in the queue returns [`Enqueued::Duplicate`] with it (an
//!   enqueue repeated after an unclear outcome), as the embedded queue does.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use ::redis::{Script, ScriptInvocation, Value};
use async_trait::async_trait;
use futures::FutureExt;

use super::memory::DEFAULT_IDEMPOTENCY_WINDOW;
use super::{
    Cancelled, ClaimRequest, DeadLetter, Delivery, Enqueued, Lease, MessageId, NewMessage, Queue, QueueError,
    QueueStats, Settled, Settlement,
};
use crate::redis::{LUA_COMMON, QueueSignal, RedisDb, array, bytes, int};
use crate::time::Timestamp;

const BACKEND: &str = "redis";

/// The most messages one claim call hands out; larger requests are capped.
const MAX_CLAIM: usize = 1000;

/// Lua shared by the queue scripts. `ARGV[1]` is the queue's key prefix, `ARGV[2]` its
/// channel, `ARGV[3]` the idempotency window in ms.
const QUEUE_COMMON: &str = r#"
local B = ARGV[1]
local CH = ARGV[2]
local WINDOW = tonumber(ARGV[3])
local MAX_MS = 99999999999999
local deltas = {}
local woke = false
local function clamp_ms(t)
  if t > MAX_MS then return MAX_MS end
  if t < 0 then return 0 end
  return t
end
local function delta(kind, topic, n)
  local f = kind .. ':' .. topic
  deltas[f] = (deltas[f] or 0) + n
end
local function flush_counts()
  for f, n in pairs(deltas) do
    if n ~= 0 then redis.call('HINCRBY', B .. 'n', f, n) end
  end
  deltas = {}
end
local function finish()
  flush_counts()
  if woke then redis.call('PUBLISH', CH, '1') end
end
local function rank(prio, visible, seq)
  if prio > 2147483647 then prio = 2147483647 end
  if prio < -2147483648 then prio = -2147483648 end
  return string.format('%08x%012x%012x', 2147483647 - prio, clamp_ms(visible), seq)
end
local function make_ready(id, topic, prio, visible)
  local m = rank(prio, visible, redis.call('INCR', B .. 'seq')) .. id
  redis.call('ZADD', B .. 'r:' .. topic, 0, m)
  redis.call('HSET', B .. 'm:' .. id, 's', 'r', 'rk', m)
end
local function remember(ik, id)
  if ik and redis.call('GET', B .. 'i:' .. ik) == id then
    redis.call('PEXPIRE', B .. 'i:' .. ik, WINDOW)
  end
end
local function unlock(ck, id)
  if not ck then return end
  local locks = B .. 'locks'
  if redis.call('HGET', locks, ck) ~= id then return end
  redis.call('HDEL', locks, ck)
  local pk = B .. 'p:' .. ck
  while true do
    local head = redis.call('ZRANGE', pk, 0, 0)[1]
    if not head then return end
    redis.call('ZREM', pk, head)
    local hid = string.sub(head, 33)
    local f = redis.call('HMGET', B .. 'm:' .. hid, 't', 's', 'rk')
    if f[1] and f[2] == 'p' and f[3] == head then
      redis.call('ZADD', B .. 'r:' .. f[1], 0, head)
      redis.call('HSET', B .. 'm:' .. hid, 's', 'r')
      delta('p', f[1], -1)
      woke = true
      return
    end
  end
end
local function chunked(cmd, key, items, per)
  -- Variadic commands in chunks, so no call unpacks more than Lua's stack allows.
  local n = #items
  local i = 1
  while i <= n do
    local j = math.min(i + 1000 * per - 1, n)
    if key then
      redis.call(cmd, key, unpack(items, i, j))
    else
      redis.call(cmd, unpack(items, i, j))
    end
    i = j + 1
  end
end
local function promote(now, limit)
  -- Due delayed messages and lapsed leases become ready, visible since their due time or
  -- lease expiry (the sorted sets' scores).
  for _, set in ipairs({'delayed', 'leased'}) do
    local key = B .. set
    local found = redis.call('ZRANGEBYSCORE', key, '-inf', s(now), 'WITHSCORES', 'LIMIT', 0, limit)
    for j = 1, #found, 2 do
      local id = found[j]
      local f = redis.call('HMGET', B .. 'm:' .. id, 't', 'pr', 's', 'ck')
      if set == 'delayed' and f[1] and f[3] == 'd' then
        make_ready(id, f[1], tonumber(f[2]) or 0, tonumber(found[j + 1]) or now)
        delta('d', f[1], -1)
      elseif set == 'leased' and f[1] and f[3] == 'l' then
        make_ready(id, f[1], tonumber(f[2]) or 0, tonumber(found[j + 1]) or now)
        delta('l', f[1], -1)
        unlock(f[4], id)
      end
    end
    -- What was found is the set's first members, and nothing above touched the set.
    if #found > 0 then redis.call('ZREMRANGEBYRANK', key, 0, math.floor(#found / 2) - 1) end
  end
end
"#;

/// ARGV[4] = n, then per message: id, topic, kind, payload, headers, priority, delay ms,
/// has idempotency key, key, has concurrency key, key. Returns `[created (0/1), id]...`.
const ENQUEUE: &str = r#"
local now = now_ms()
local snow = s(now)
local n = tonumber(ARGV[4])
local seq = redis.call('INCRBY', B .. 'seq', n) - n
local out = {}
local ready = {}
local delayed = {}
for i = 0, n - 1 do
  local o = 5 + i * 11
  local id, topic = ARGV[o], ARGV[o + 1]
  local prio, delay = tonumber(ARGV[o + 5]), tonumber(ARGV[o + 6])
  local ik, ck = nil, nil
  if ARGV[o + 7] == '1' then ik = ARGV[o + 8] end
  if ARGV[o + 9] == '1' then ck = ARGV[o + 10] end
  local mk = B .. 'm:' .. id
  local dup = false
  if ik then dup = redis.call('GET', B .. 'i:' .. ik) end
  if not dup and redis.call('EXISTS', mk) == 1 then dup = id end
  if dup then
    out[#out + 1] = 0
    out[#out + 1] = dup
  else
    seq = seq + 1
    -- Small hashes are scanned field by field: the fields every claim and settlement reads
    -- or writes come first, the payload last.
    local fields = {'s', 'r', 'tk', '0', 'a', '0', 'rk', '', 't', topic, 'pr', ARGV[o + 5], 'e', snow,
      'k', ARGV[o + 2]}
    if ck then
      fields[#fields + 1] = 'ck'
      fields[#fields + 1] = ck
    end
    if ik then
      fields[#fields + 1] = 'ik'
      fields[#fields + 1] = ik
      redis.call('SET', B .. 'i:' .. ik, id)
    end
    if ARGV[o + 4] ~= '' then
      fields[#fields + 1] = 'h'
      fields[#fields + 1] = ARGV[o + 4]
    end
    fields[#fields + 1] = 'p'
    fields[#fields + 1] = ARGV[o + 3]
    if delay > 0 then
      local due = clamp_ms(now + delay)
      fields[2] = 'd'
      redis.call('HSET', mk, unpack(fields))
      delayed[#delayed + 1] = s(due)
      delayed[#delayed + 1] = id
      delta('d', topic, 1)
    else
      local m = rank(prio, now, seq) .. id
      fields[8] = m
      redis.call('HSET', mk, unpack(fields))
      if not ready[topic] then ready[topic] = {} end
      local r = ready[topic]
      r[#r + 1] = '0'
      r[#r + 1] = m
    end
    if not ready[topic] then ready[topic] = {} end
    woke = true
    out[#out + 1] = 1
    out[#out + 1] = id
  end
end
for topic, members in pairs(ready) do
  redis.call('SADD', B .. 'topics', topic)
  chunked('ZADD', B .. 'r:' .. topic, members, 2)
end
chunked('ZADD', B .. 'delayed', delayed, 2)
finish()
return out
"#;

/// ARGV[4] = lease ms, ARGV[5] = max, then the topics (none: every topic). Returns one array
/// per claimed message: id, topic, kind, payload, headers, priority, idempotency key,
/// concurrency key, attempts, enqueued at, last error, token.
const CLAIM: &str = r#"
local LEASE = tonumber(ARGV[4])
local MAX = tonumber(ARGV[5])
local now = now_ms()
promote(now, 1000)
local topics = {}
if #ARGV > 5 then
  for i = 6, #ARGV do topics[#topics + 1] = ARGV[i] end
else
  topics = redis.call('SMEMBERS', B .. 'topics')
end
local until_ = clamp_ms(now + LEASE)
local fetch = MAX
if fetch > 256 then fetch = 256 end
local bufs, pos, taken, done = {}, {}, {}, {}
local function head(i)
  if done[i] then return nil end
  local b = bufs[i]
  if not b or pos[i] > #b then
    -- The members met so far are the set's first `taken[i]` (removed at the end).
    local from = taken[i] or 0
    b = redis.call('ZRANGE', B .. 'r:' .. topics[i], from, from + fetch - 1)
    bufs[i] = b
    pos[i] = 1
    if #b == 0 then
      done[i] = true
      return nil
    end
  end
  return b[pos[i]]
end
local function part(m, a, b)
  return tonumber(string.sub(m, a, b), 16) or 0
end
local function before(x, y)
  local a, b = part(x, 1, 8), part(y, 1, 8)
  if a ~= b then return a < b end
  a, b = part(x, 9, 20), part(y, 9, 20)
  if a ~= b then return a < b end
  return part(x, 21, 32) < part(y, 21, 32)
end
local out = {}
local leased = {}
local scanned = 0
local limit = MAX * 4 + 1000
local su = s(until_)
while #out < MAX and scanned < limit do
  local best, bi = nil, nil
  for i = 1, #topics do
    local h = head(i)
    if h and (not best or before(h, best)) then
      best, bi = h, i
    end
  end
  if not best then break end
  pos[bi] = pos[bi] + 1
  taken[bi] = (taken[bi] or 0) + 1
  scanned = scanned + 1
  local topic = topics[bi]
  local id = string.sub(best, 33)
  local mk = B .. 'm:' .. id
  local f = redis.call('HMGET', mk, 's', 'rk', 'ck', 'a', 'tk', 't', 'k', 'p', 'h', 'pr', 'ik', 'e', 'er')
  if f[1] == 'r' and f[2] == best and f[6] == topic then
    local a, tk = tonumber(f[4]), tonumber(f[5])
    local ck = f[3]
    if not a or not tk then
      redis.call('HSET', mk, 's', 'x', 'u', s(now),
        'er', 'corrupt message: its attempt count or fencing token is not a number')
      redis.call('ZADD', B .. 'dead', s(now), id)
      delta('x', topic, 1)
    else
      local free = true
      if ck then
        local holder = redis.call('HGET', B .. 'locks', ck)
        if holder and holder ~= id and redis.call('HGET', B .. 'm:' .. holder, 's') == 'l' then
          free = false
        end
      end
      if free then
        if ck then redis.call('HSET', B .. 'locks', ck, id) end
        -- Small integers go to Redis as numbers: formatting them in Lua costs more.
        local sa, stk = a + 1, tk + 1
        redis.call('HSET', mk, 's', 'l', 'a', sa, 'tk', stk)
        leased[#leased + 1] = su
        leased[#leased + 1] = id
        delta('l', topic, 1)
        out[#out + 1] = {id, topic, f[7], f[8], f[9], f[10], f[11], ck, sa, f[12], f[13], stk}
      else
        redis.call('ZADD', B .. 'p:' .. ck, 0, best)
        redis.call('HSET', mk, 's', 'p')
        delta('p', topic, 1)
      end
    end
  end
end
-- The members met are each set's first `taken[i]`: nothing was added to a ready set meanwhile.
for i, k in pairs(taken) do
  redis.call('ZREMRANGEBYRANK', B .. 'r:' .. topics[i], 0, k - 1)
end
chunked('ZADD', B .. 'leased', leased, 2)
finish()
return out
"#;

/// ARGV[4] = n, then per settlement: op (`a` ack, `r` retry, `d` dead letter, `l` release),
/// id, token, delay ms, error. Returns 1 (applied) or 0 (stale) per settlement.
const SETTLE: &str = r#"
local now = now_ms()
local n = tonumber(ARGV[4])
local out = {}
local stale = 0
local settled, acked, seen = {}, {}, {}
for i = 0, n - 1 do
  local o = 5 + i * 5
  local op, id, token = ARGV[o], ARGV[o + 1], ARGV[o + 2]
  local mk = B .. 'm:' .. id
  local f = redis.call('HMGET', mk, 's', 'tk', 't', 'ck', 'ik', 'pr', 'a')
  if f[1] ~= 'l' or f[2] ~= token or not f[3] or seen[id] then
    stale = stale + 1
    out[#out + 1] = 0
  else
    local topic = f[3]
    seen[id] = true
    settled[#settled + 1] = id
    delta('l', topic, -1)
    if op == 'a' then
      acked[#acked + 1] = mk
      remember(f[5], id)
    elseif op == 'r' then
      local delay = tonumber(ARGV[o + 3]) or 0
      redis.call('HSET', mk, 'er', ARGV[o + 4])
      if delay > 0 then
        local due = clamp_ms(now + delay)
        redis.call('HSET', mk, 's', 'd')
        redis.call('ZADD', B .. 'delayed', s(due), id)
        delta('d', topic, 1)
      else
        make_ready(id, topic, tonumber(f[6]) or 0, now)
      end
      woke = true
    elseif op == 'd' then
      redis.call('HSET', mk, 's', 'x', 'er', ARGV[o + 4], 'u', s(now))
      redis.call('ZADD', B .. 'dead', s(now), id)
      delta('x', topic, 1)
    else
      local a = (tonumber(f[7]) or 1) - 1
      if a < 0 then a = 0 end
      redis.call('HSET', mk, 'a', s(a))
      make_ready(id, topic, tonumber(f[6]) or 0, now)
      woke = true
    end
    unlock(f[4], id)
    out[#out + 1] = 1
  end
end
chunked('ZREM', B .. 'leased', settled, 1)
chunked('DEL', false, acked, 1)
if stale > 0 then redis.call('INCRBY', B .. 'stale', stale) end
finish()
return out
"#;

/// ARGV[4] = lease ms, ARGV[5] = n, then id, token pairs. Returns 1 or 0 per lease.
const EXTEND: &str = r#"
local now = now_ms()
local until_ = clamp_ms(now + tonumber(ARGV[4]))
local n = tonumber(ARGV[5])
local out = {}
local stale = 0
for i = 0, n - 1 do
  local id, token = ARGV[6 + i * 2], ARGV[7 + i * 2]
  local mk = B .. 'm:' .. id
  local f = redis.call('HMGET', mk, 's', 'tk')
  if f[1] == 'l' and f[2] == token then
    redis.call('ZADD', B .. 'leased', s(until_), id)
    out[#out + 1] = 1
  else
    stale = stale + 1
    out[#out + 1] = 0
  end
end
if stale > 0 then redis.call('INCRBY', B .. 'stale', stale) end
return out
"#;

/// ARGV[4] = id. Returns 1 removed, 2 leased, 0 not found.
const CANCEL: &str = r#"
local id = ARGV[4]
local mk = B .. 'm:' .. id
local f = redis.call('HMGET', mk, 's', 't', 'rk', 'ck', 'ik')
local st = f[1]
if st == 'l' then return 2 end
if not f[2] or (st ~= 'r' and st ~= 'p' and st ~= 'd') then return 0 end
if st == 'r' then
  if f[3] then redis.call('ZREM', B .. 'r:' .. f[2], f[3]) end
elseif st == 'p' then
  if f[3] and f[4] then redis.call('ZREM', B .. 'p:' .. f[4], f[3]) end
  delta('p', f[2], -1)
else
  redis.call('ZREM', B .. 'delayed', id)
  delta('d', f[2], -1)
end
redis.call('DEL', mk)
remember(f[5], id)
finish()
return 1
"#;

/// ARGV[4] = id. Returns 1 when a dead letter was moved back.
const REDRIVE: &str = r#"
local id = ARGV[4]
local mk = B .. 'm:' .. id
local f = redis.call('HMGET', mk, 's', 't', 'pr')
if f[1] ~= 'x' or not f[2] then return 0 end
redis.call('ZREM', B .. 'dead', id)
redis.call('HSET', mk, 'a', '0')
make_ready(id, f[2], tonumber(f[3]) or 0, now_ms())
delta('x', f[2], -1)
woke = true
finish()
return 1
"#;

/// ARGV[4] = failed before (ms), ARGV[5] = limit. Deletes the oldest dead letters that
/// failed before, remembering their idempotency keys for the window; returns how many.
const PURGE_DEAD: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', B .. 'dead', '-inf', '(' .. ARGV[4], 'LIMIT', 0, tonumber(ARGV[5]))
local n = 0
for _, id in ipairs(ids) do
  local mk = B .. 'm:' .. id
  local f = redis.call('HMGET', mk, 's', 't', 'ik')
  -- An entry whose message is gone or no longer dead is only dropped from the set.
  if f[1] == 'x' then
    redis.call('DEL', mk)
    if f[2] then delta('x', f[2], -1) end
    remember(f[3], id)
    n = n + 1
  end
end
chunked('ZREM', B .. 'dead', ids, 1)
finish()
return n
"#;

/// ARGV[4] = limit. Returns the newest dead letters: the claim fields, then failed at.
const DEAD_LETTERS: &str = r#"
local ids = redis.call('ZREVRANGE', B .. 'dead', 0, tonumber(ARGV[4]) - 1)
local out = {}
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', B .. 'm:' .. id, 't', 'k', 'p', 'h', 'pr', 'ik', 'ck', 'a', 'e', 'er', 'tk', 'u')
  if f[1] then
    table.insert(f, 1, id)
    out[#out + 1] = f
  end
end
return out
"#;

/// Returns the stale count, then per topic: topic, ready, parked, delayed, leased, dead.
const STATS: &str = r#"
promote(now_ms(), 1000)
flush_counts()
local out = {tonumber(redis.call('GET', B .. 'stale')) or 0}
for _, t in ipairs(redis.call('SMEMBERS', B .. 'topics')) do
  local c = redis.call('HMGET', B .. 'n', 'p:' .. t, 'd:' .. t, 'l:' .. t, 'x:' .. t)
  out[#out + 1] = t
  out[#out + 1] = redis.call('ZCARD', B .. 'r:' .. t)
  for j = 1, 4 do out[#out + 1] = tonumber(c[j]) or 0 end
end
finish()
return out
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{LUA_COMMON}{QUEUE_COMMON}{body}"))
}

static ENQUEUE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(ENQUEUE));
static CLAIM_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(CLAIM));
static SETTLE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(SETTLE));
static EXTEND_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(EXTEND));
static CANCEL_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(CANCEL));
static REDRIVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(REDRIVE));
static DEAD_LETTERS_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(DEAD_LETTERS));
static PURGE_DEAD_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(PURGE_DEAD));
static STATS_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(STATS));

/// The queue on a Redis server. Cheap to clone; clones share the same queue.
#[derive(Clone)]
pub struct RedisQueue {
    db: Arc<RedisDb>,
    name: Arc<str>,
    /// `{prefix}:q:{<queue>}:`, the start of every key of the queue.
    base: Arc<str>,
    channel: Arc<str>,
    signal: Arc<QueueSignal>,
    /// The next due time last read from the server, while no notice came since.
    due: Arc<Mutex<Option<DueCache>>>,
    idempotency_window: Duration,
}

/// When the next delayed message is due or lease lapses, as read at `read_at`.
#[derive(Clone, Copy)]
struct DueCache {
    generation: u64,
    read_at: Instant,
    due: Option<Instant>,
}

/// How long a due time read from the server is trusted when no notice arrives. Notices come
/// with every change that makes a due time earlier but one: a short lease taken by another
/// worker, whose lapse (that worker died) is then noticed this much later at worst.
const DUE_CACHE_TTL: Duration = Duration::from_millis(500);

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue").field("db", &self.db).field("name", &self.name).finish_non_exhaustive()
    }
}

/// `name` with `\` and `}` escaped, so `{name}` is unambiguous inside a key.
fn escape_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '\\' | '}') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisQueue {
    /// The queue called `queue_name` in `db`.
    pub fn new(db: Arc<RedisDb>, queue_name: &str) -> Self {
        let escaped = escape_name(queue_name);
        let base: Arc<str> = format!("{}:q:{{{escaped}}}:", db.prefix()).into();
        let channel: Arc<str> = format!("{}:ch:q:{{{escaped}}}", db.prefix()).into();
        let signal = db.queue_signal(&channel);
        Self {
            db,
            name: queue_name.into(),
            base,
            channel,
            signal,
            due: Arc::default(),
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
        }
    }

    /// Sets how long an idempotency key is remembered after its message was acked (default
    /// 24 hours).
    pub fn with_idempotency_window(mut self, window: Duration) -> Self {
        self.idempotency_window = window;
        self
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The store it lives in.
    pub fn db(&self) -> &Arc<RedisDb> {
        &self.db
    }

    /// The prefix of every key of this queue (`{prefix}:q:{<queue>}:`), for inspection.
    pub fn key_prefix(&self) -> &str {
        &self.base
    }

    /// An invocation of `script` with the queue's common arguments.
    fn invocation<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.arg(&*self.base).arg(&*self.channel).arg(millis(self.idempotency_window).max(1));
        inv
    }

    async fn invoke(&self, inv: &ScriptInvocation<'_>) -> Result<Value, QueueError> {
        let mut conn = self.db.conn();
        inv.invoke_async(&mut conn)
            .await
            .map_err(|e| QueueError::Backend { backend: BACKEND, message: self.db.error(&e).to_string() })
    }

    /// Settles by raw id and token: `(op, id, token, delay ms, error)`.
    async fn settle_raw(&self, items: &[(&str, String, String, u64, String)]) -> Result<Vec<Settled>, QueueError> {
        let mut inv = self.invocation(&SETTLE_SCRIPT);
        inv.arg(items.len());
        for (op, id, token, delay, error) in items {
            inv.arg(*op).arg(id).arg(token).arg(*delay).arg(error);
        }
        let reply = array(self.invoke(&inv).await?).map_err(corrupt)?;
        results(reply, items.len())
    }

    /// The time until the next delayed message is due or lease lapses, by the server's clock.
    async fn next_due(&self) -> Result<Option<Duration>, QueueError> {
        let mut conn = self.db.conn();
        type Scored = Vec<(String, f64)>;
        let (time, delayed, leased): (Vec<u64>, Scored, Scored) = ::redis::pipe()
            .cmd("TIME")
            .cmd("ZRANGE")
            .arg(format!("{}delayed", self.base))
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .cmd("ZRANGE")
            .arg(format!("{}leased", self.base))
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .map_err(|e| QueueError::Backend { backend: BACKEND, message: self.db.error(&e).to_string() })?;
        let now = time
            .first()
            .copied()
            .unwrap_or(0)
            .saturating_mul(1000)
            .saturating_add(time.get(1).copied().unwrap_or(0) / 1000);
        let due = delayed.iter().chain(&leased).map(|(_, score)| *score as u64).min();
        Ok(due.map(|due| Duration::from_millis(due.saturating_sub(now))))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn corrupt(message: String) -> QueueError {
    QueueError::Corrupt { backend: BACKEND, message }
}

/// A script's 1/0 answers as settlement results.
fn results(reply: Vec<Value>, expected: usize) -> Result<Vec<Settled>, QueueError> {
    if reply.len() != expected {
        return Err(corrupt(format!("expected {expected} results, got {}", reply.len())));
    }
    Ok(reply.iter().map(|v| if int(v) == Some(1) { Settled::Ok } else { Settled::Stale }).collect())
}

fn encode_headers(headers: &[(String, String)]) -> Vec<u8> {
    // Serializing strings to JSON cannot fail.
    if headers.is_empty() { Vec::new() } else { serde_json::to_vec(headers).unwrap_or_default() }
}

/// A message as read back from its hash, decoded leniently: fields that cannot be read get a
/// default and a line in `problems`.
struct Decoded {
    raw_id: String,
    raw_token: String,
    delivery: Delivery,
    problems: Vec<String>,
    /// The field after the delivery's (failure time, for dead letters).
    extra: Option<Vec<u8>>,
}

/// Reads a message's fields in order, noting what cannot be read.
struct Reader {
    fields: std::vec::IntoIter<Value>,
    problems: Vec<String>,
}

impl Reader {
    fn raw(&mut self) -> Option<Vec<u8>> {
        self.fields.next().and_then(bytes)
    }

    fn text(&mut self, name: &str) -> Option<String> {
        match self.raw() {
            None => {
                self.problems.push(format!("no {name}"));
                None
            }
            Some(b) => self.utf8(name, b),
        }
    }

    fn optional_text(&mut self, name: &str) -> Option<String> {
        let b = self.raw()?;
        self.utf8(name, b)
    }

    fn utf8(&mut self, name: &str, b: Vec<u8>) -> Option<String> {
        match String::from_utf8(b) {
            Ok(s) => Some(s),
            Err(_) => {
                self.problems.push(format!("{name} is not UTF-8"));
                None
            }
        }
    }

    fn number<T: std::str::FromStr + Default>(&mut self, name: &str) -> T {
        let Some(s) = self.text(name) else { return T::default() };
        s.parse().unwrap_or_else(|_| {
            self.problems.push(format!("invalid {name} `{s}`"));
            T::default()
        })
    }
}

/// Decodes `id, topic, kind, payload, headers, priority, idempotency key, concurrency key,
/// attempts, enqueued at, last error, token [, extra]`.
fn decode(fields: Value) -> Result<Decoded, QueueError> {
    let fields = array(fields).map_err(corrupt)?;
    if fields.len() < 12 {
        return Err(corrupt(format!("a message has {} fields, expected 12", fields.len())));
    }
    let mut r = Reader { fields: fields.into_iter(), problems: Vec::new() };
    let raw_id = r.text("id").unwrap_or_default();
    let id = match raw_id.parse::<MessageId>() {
        Ok(id) => id,
        Err(e) => {
            r.problems.push(format!("invalid id `{raw_id}`: {e}"));
            MessageId(uuid::Uuid::nil())
        }
    };
    let topic = r.text("topic").unwrap_or_default();
    let kind = r.text("kind").unwrap_or_default();
    let payload = r.raw().unwrap_or_else(|| {
        r.problems.push("no payload".into());
        Vec::new()
    });
    let headers = match r.raw() {
        None => Vec::new(),
        Some(b) if b.is_empty() => Vec::new(),
        Some(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            r.problems.push(format!("invalid headers: {e}"));
            Vec::new()
        }),
    };
    let priority = r.number::<i32>("priority");
    let idempotency_key = r.optional_text("idempotency key");
    let concurrency_key = r.optional_text("concurrency key");
    let attempt = r.number::<u32>("attempt count");
    let enqueued_at = Timestamp(r.number::<u64>("enqueue time"));
    let last_error = r.raw().map(|b| String::from_utf8_lossy(&b).into_owned());
    let raw_token = r.text("fencing token").unwrap_or_default();
    let token = raw_token.parse::<u64>().unwrap_or_else(|_| {
        r.problems.push(format!("invalid fencing token `{raw_token}`"));
        0
    });
    let extra = r.raw();
    Ok(Decoded {
        raw_id,
        raw_token,
        delivery: Delivery {
            id,
            topic,
            kind,
            payload,
            headers,
            priority,
            idempotency_key,
            concurrency_key,
            attempt,
            enqueued_at,
            last_error,
            lease: Lease { message_id: id, token },
        },
        problems: r.problems,
        extra,
    })
}

#[async_trait]
impl Queue for RedisQueue {
    fn provider(&self) -> &'static str {
        BACKEND
    }

    async fn enqueue(&self, messages: Vec<NewMessage>) -> Result<Vec<Enqueued>, QueueError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.invocation(&ENQUEUE_SCRIPT);
        inv.arg(messages.len());
        for m in &messages {
            inv.arg(m.id.to_string())
                .arg(&m.topic)
                .arg(&m.kind)
                .arg(&m.payload)
                .arg(encode_headers(&m.headers))
                .arg(m.priority)
                .arg(millis(m.delay));
            match &m.idempotency_key {
                Some(k) => inv.arg(1).arg(k),
                None => inv.arg(0).arg(""),
            };
            match &m.concurrency_key {
                Some(k) => inv.arg(1).arg(k),
                None => inv.arg(0).arg(""),
            };
        }
        let reply = array(self.invoke(&inv).await?).map_err(corrupt)?;
        if reply.len() != messages.len() * 2 {
            return Err(corrupt(format!("enqueue answered {} values for {} messages", reply.len(), messages.len())));
        }
        let mut out = Vec::with_capacity(messages.len());
        let mut it = reply.into_iter();
        while let (Some(created), Some(id)) = (it.next(), it.next()) {
            let raw = bytes(id).unwrap_or_default();
            let id = std::str::from_utf8(&raw)
                .ok()
                .and_then(|s| s.parse::<MessageId>().ok())
                .ok_or_else(|| corrupt(format!("invalid message id {:?}", String::from_utf8_lossy(&raw))))?;
            out.push(if int(&created) == Some(1) { Enqueued::Created(id) } else { Enqueued::Duplicate(id) });
        }
        Ok(out)
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Delivery>, QueueError> {
        if request.max == 0 {
            return Ok(Vec::new());
        }
        let mut inv = self.invocation(&CLAIM_SCRIPT);
        inv.arg(millis(request.lease)).arg(request.max.min(MAX_CLAIM));
        let mut seen = HashSet::new();
        for t in &request.topics {
            if seen.insert(t.as_str()) {
                inv.arg(t);
            }
        }
        let reply = array(self.invoke(&inv).await?).map_err(corrupt)?;
        let mut out = Vec::with_capacity(reply.len());
        let mut buried = Vec::new();
        for fields in reply {
            let decoded = decode(fields)?;
            if decoded.problems.is_empty() {
                out.push(decoded.delivery);
            } else {
                let reason = format!("corrupt message: {}", decoded.problems.join("; "));
                tracing::warn!(queue = %self.name, id = %decoded.raw_id, %reason, "dead-lettering an unreadable message");
                buried.push(("d", decoded.raw_id, decoded.raw_token, 0, reason));
            }
        }
        if !buried.is_empty() {
            self.settle_raw(&buried).await?;
        }
        Ok(out)
    }

    async fn extend(&self, leases: &[Lease], lease: Duration) -> Result<Vec<Settled>, QueueError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.invocation(&EXTEND_SCRIPT);
        inv.arg(millis(lease)).arg(leases.len());
        for l in leases {
            inv.arg(l.message_id.to_string()).arg(l.token);
        }
        let reply = array(self.invoke(&inv).await?).map_err(corrupt)?;
        results(reply, leases.len())
    }

    async fn settle(&self, settlements: Vec<Settlement>) -> Result<Vec<Settled>, QueueError> {
        if settlements.is_empty() {
            return Ok(Vec::new());
        }
        let items: Vec<_> = settlements
            .into_iter()
            .map(|s| {
                let lease = *s.lease();
                let (id, token) = (lease.message_id.to_string(), lease.token.to_string());
                match s {
                    Settlement::Ack(_) => ("a", id, token, 0, String::new()),
                    Settlement::Retry { delay, error, .. } => ("r", id, token, millis(delay), error),
                    Settlement::DeadLetter { error, .. } => ("d", id, token, 0, error),
                    Settlement::Release(_) => ("l", id, token, 0, String::new()),
                }
            })
            .collect();
        self.settle_raw(&items).await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut inv = self.invocation(&DEAD_LETTERS_SCRIPT);
        // The script counts in Lua numbers; nobody reads a billion dead letters at once.
        inv.arg(limit.min(1_000_000_000));
        let reply = array(self.invoke(&inv).await?).map_err(corrupt)?;
        let mut out = Vec::with_capacity(reply.len());
        for fields in reply {
            let d = decode(fields)?;
            let failed_at = d
                .extra
                .as_deref()
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.parse::<u64>().ok())
                .map(Timestamp)
                .unwrap_or_default();
            let error = d.delivery.last_error.clone().unwrap_or_default();
            out.push(DeadLetter { message: d.delivery, error, failed_at });
        }
        Ok(out)
    }

    async fn redrive(&self, id: MessageId) -> Result<bool, QueueError> {
        let mut inv = self.invocation(&REDRIVE_SCRIPT);
        inv.arg(id.to_string());
        Ok(int(&self.invoke(&inv).await?) == Some(1))
    }

    async fn purge_dead(&self, failed_before: Timestamp, limit: usize) -> Result<usize, QueueError> {
        if limit == 0 {
            return Ok(0);
        }
        let mut inv = self.invocation(&PURGE_DEAD_SCRIPT);
        // Lua numbers count exactly far beyond any batch a pruner asks for.
        inv.arg(failed_before.as_millis()).arg(limit.min(1_000_000_000));
        let purged = int(&self.invoke(&inv).await?).ok_or_else(|| corrupt("purge_dead: expected a count".into()))?;
        Ok(usize::try_from(purged).unwrap_or(0))
    }

    async fn cancel(&self, id: MessageId) -> Result<Cancelled, QueueError> {
        let mut inv = self.invocation(&CANCEL_SCRIPT);
        inv.arg(id.to_string());
        Ok(match int(&self.invoke(&inv).await?) {
            Some(1) => Cancelled::Removed,
            Some(2) => Cancelled::Leased,
            _ => Cancelled::NotFound,
        })
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let (stale, by_topic) = self.counts().await?;
        let mut total = by_topic.into_values().fold(QueueStats::default(), |mut acc, s| {
            acc.ready += s.ready;
            acc.delayed += s.delayed;
            acc.leased += s.leased;
            acc.dead += s.dead;
            acc
        });
        total.stale_settlements = stale;
        Ok(total)
    }

    async fn topic_stats(&self) -> Result<BTreeMap<String, QueueStats>, QueueError> {
        Ok(self.counts().await?.1)
    }

    async fn wait_for_work(&self, timeout: Duration) {
        let notified = self.signal.notify.notified();
        tokio::pin!(notified);
        // Listen before looking, so a wake between the look and the wait is not lost.
        notified.as_mut().enable();
        if notified.as_mut().now_or_never().is_some() {
            return;
        }
        let generation = self.signal.generation.load(Ordering::Acquire);
        let now = Instant::now();
        let cached = *self.due.lock().unwrap_or_else(|e| e.into_inner());
        let due = match cached {
            Some(c)
                if c.generation == generation
                    && now.duration_since(c.read_at) < DUE_CACHE_TTL
                    && c.due.is_none_or(|d| d > now) =>
            {
                c.due
            }
            _ => match self.next_due().await {
                Ok(due) => {
                    let due = due.map(|d| now + d);
                    *self.due.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(DueCache { generation, read_at: now, due });
                    due
                }
                // A failing server: do not spin; the caller's next claim reports the error.
                Err(_) => None,
            },
        };
        let timeout = match due {
            Some(at) => timeout.min(at.saturating_duration_since(now) + Duration::from_millis(1)),
            None => timeout,
        };
        let _ = tokio::time::timeout(timeout, notified).await;
    }
}

impl RedisQueue {
    /// The stale-settlement count and the per-topic counts (topics with no message left out).
    async fn counts(&self) -> Result<(u64, BTreeMap<String, QueueStats>), QueueError> {
        let inv = self.invocation(&STATS_SCRIPT);
        let reply = array(self.invoke(&inv).await?).map_err(corrupt)?;
        let mut it = reply.into_iter();
        let count = |v: Option<Value>| v.as_ref().and_then(int).and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        let stale = count(it.next());
        let mut out = BTreeMap::new();
        while let Some(topic) = it.next() {
            let topic = bytes(topic).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            let (ready, parked, delayed, leased, dead) =
                (count(it.next()), count(it.next()), count(it.next()), count(it.next()), count(it.next()));
            let stats = QueueStats { ready: ready + parked, delayed, leased, dead, stale_settlements: 0 };
            if stats != QueueStats::default() {
                out.insert(topic, stats);
            }
        }
        Ok((stale, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_are_escaped() {
        assert_eq!(escape_name("jobs"), "jobs");
        assert_eq!(escape_name("a}b\\c{"), "a\\}b\\\\c{");
    }

    #[test]
    fn scripts_have_distinct_hashes() {
        let all = [
            &*ENQUEUE_SCRIPT,
            &*CLAIM_SCRIPT,
            &*SETTLE_SCRIPT,
            &*EXTEND_SCRIPT,
            &*CANCEL_SCRIPT,
            &*REDRIVE_SCRIPT,
            &*DEAD_LETTERS_SCRIPT,
            &*PURGE_DEAD_SCRIPT,
            &*STATS_SCRIPT,
        ];
        let hashes: HashSet<&str> = all.iter().map(|s| s.get_hash()).collect();
        assert_eq!(hashes.len(), all.len());
    }
}
