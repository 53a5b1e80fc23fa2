//! The key-value store on a [Redis store](crate::redis): entries live in the server and are
//! shared by every process connected to it, and so is the change feed.
//!
//! # Layout
//!
//! Under `{prefix}:kv:`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `e:<encoded key>` | hash | one entry: value `v`, versionstamp `vs`, expiry `x` (ms, only with a TTL); the hash carries the same TTL (`PEXPIRE`), so Redis frees it |
//! | `idx` | sorted set, all scores 0 | every live key's [`Key::encode`] bytes; `ZRANGEBYLEX` lists a prefix in key order |
//! | `vs` | string | the versionstamp counter |
//!
//! Every write is one Lua script: it checks the [`AtomicWrite`]'s conditions, takes the next
//! versionstamp (`INCR`), applies the mutations and publishes them on `{prefix}:ch:kv`, all or
//! nothing. Writes that several tasks make at the same time go in one call of that script
//! (group commit, as the embedded store does): each is still checked and applied on its own,
//! in the order they arrived, but they share one round trip. Index members of entries that expired are removed by the next listing that meets
//! them. Every [`RedisDb`] listens on the channel and feeds its watchers, so a watch sees the
//! writes of every process; changes made while its pub/sub connection is down are not
//! replayed.
//!
//! Times (TTLs, `expires_at`) come from the server's clock.

use std::sync::{Arc, LazyLock, OnceLock};

use ::redis::{Script, ScriptInvocation, Value};
use async_trait::async_trait;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{AtomicWrite, Entry, Key, KeyRange, Kv, KvError, KvEvent, KvWatch, ListOptions, Mutation, Versionstamp};
use crate::redis::{LUA_COMMON, RedisDb, array, bytes};
use crate::time::Timestamp;

const BACKEND: &str = "redis";

/// Lua shared by the KV scripts: whether a stored expiry has passed.
const KV_COMMON: &str = r#"
local function expired(x, now)
  return x and (tonumber(x) or 0) <= now
end
"#;

/// ARGV[1] = entry prefix, then the encoded keys. Returns `{v, vs, x}` or nil per key.
const GET_MANY: &str = r#"
local E = ARGV[1]
local now = now_ms()
local out = {}
for i = 2, #ARGV do
  local f = redis.call('HMGET', E .. ARGV[i], 'v', 'vs', 'x')
  if f[2] and not expired(f[3], now) then
    out[i - 1] = {f[1] or '', f[2], f[3] or ''}
  else
    out[i - 1] = false
  end
end
return out
"#;

/// ARGV: entry prefix, index, counter, channel, the number of writes, then per write: the
/// number of checks and `key, versionstamp ('' = absent)` pairs, the number of mutations and
/// `op ('s' / 'd'), key, value, ttl ms ('' = none)` quadruples. The writes are applied in
/// order, each all or nothing. Returns per write its versionstamp, or nil when a check failed.
const ATOMIC: &str = r#"
local E, IDX, VS, CH = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = now_ms()
local nw = tonumber(ARGV[5])
local i = 6
local out = {}
local ev = {}
for w = 1, nw do
  local nc = tonumber(ARGV[i])
  local checks = i + 1
  local nmi = checks + 2 * nc
  local nm = tonumber(ARGV[nmi])
  local muts = nmi + 1
  i = muts + 4 * nm
  local ok = true
  for c = 0, nc - 1 do
    local f = redis.call('HMGET', E .. ARGV[checks + 2 * c], 'vs', 'x')
    local current = f[1]
    if not current or expired(f[2], now) then current = '' end
    if current ~= ARGV[checks + 2 * c + 1] then
      ok = false
      break
    end
  end
  if ok then
    local v = s(redis.call('INCR', VS))
    for m = 0, nm - 1 do
      local o = muts + 4 * m
      local op, k, val, ttl = ARGV[o], ARGV[o + 1], ARGV[o + 2], ARGV[o + 3]
      local ek = E .. k
      if op == 's' then
        local x = ''
        redis.call('DEL', ek)
        if ttl ~= '' then
          x = s(now + tonumber(ttl))
          redis.call('HSET', ek, 'v', val, 'vs', v, 'x', x)
          redis.call('PEXPIRE', ek, ttl)
        else
          redis.call('HSET', ek, 'v', val, 'vs', v)
        end
        redis.call('ZADD', IDX, 0, k)
        ev[#ev + 1] = 's' .. v .. '\n' .. x .. '\n' .. #k .. '\n' .. k .. #val .. '\n' .. val
      elseif redis.call('DEL', ek) == 1 then
        redis.call('ZREM', IDX, k)
        ev[#ev + 1] = 'd\n\n' .. #k .. '\n' .. k .. '0\n'
      end
    end
    out[w] = v
  else
    out[w] = false
  end
end
if #ev > 0 then redis.call('PUBLISH', CH, table.concat(ev)) end
return out
"#;

/// ARGV: entry prefix, index, lower bound, upper bound (`ZRANGEBYLEX` syntax), limit,
/// reverse (`1`). Returns `{key, v, vs, x}` per live entry, in order.
const LIST: &str = r#"
local E, IDX = ARGV[1], ARGV[2]
local lo, hi = ARGV[3], ARGV[4]
local limit = tonumber(ARGV[5])
local rev = ARGV[6] == '1'
local now = now_ms()
local out = {}
local gone = {}
while #out < limit do
  local want = limit - #out
  local batch
  if rev then
    batch = redis.call('ZREVRANGEBYLEX', IDX, hi, lo, 'LIMIT', 0, want)
  else
    batch = redis.call('ZRANGEBYLEX', IDX, lo, hi, 'LIMIT', 0, want)
  end
  for _, k in ipairs(batch) do
    local f = redis.call('HMGET', E .. k, 'v', 'vs', 'x')
    if not f[2] then
      gone[#gone + 1] = k
    elseif not expired(f[3], now) then
      out[#out + 1] = {k, f[1] or '', f[2], f[3] or ''}
    end
  end
  if #batch < want then break end
  if rev then hi = '(' .. batch[#batch] else lo = '(' .. batch[#batch] end
end
for _, k in ipairs(gone) do redis.call('ZREM', IDX, k) end
return out
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{LUA_COMMON}{KV_COMMON}{body}"))
}

static GET_MANY_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(GET_MANY));
static ATOMIC_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(ATOMIC));
static LIST_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(LIST));

/// Most writes one call of the write script commits.
const MAX_WRITE_BATCH: usize = 256;

/// The key-value store on a Redis server. Cheap to clone; clones share the same store.
///
/// Writes made at the same time by many tasks are committed together: when more than a few
/// calls are already on their way, the writes waiting go in one script call (each still
/// checked and applied on its own, with its own versionstamp), so concurrent writers share
/// round trips instead of queueing for them.
#[derive(Clone, Debug)]
pub struct RedisKv {
    store: Store,
    /// Feeds the task that commits writes; started by the first write.
    writer: Arc<OnceLock<mpsc::UnboundedSender<PendingWrite>>>,
}

/// Where the store lives.
#[derive(Clone, Debug)]
struct Store {
    db: Arc<RedisDb>,
    entries: Arc<str>,
    index: Arc<str>,
    counter: Arc<str>,
    channel: Arc<str>,
}

/// A write waiting for the writer task.
struct PendingWrite {
    write: AtomicWrite,
    reply: oneshot::Sender<Result<Option<Versionstamp>, KvError>>,
}

impl std::fmt::Debug for PendingWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingWrite").finish_non_exhaustive()
    }
}

impl RedisKv {
    /// The key-value store of `db`.
    pub fn new(db: Arc<RedisDb>) -> Self {
        let prefix = db.prefix().to_owned();
        Self {
            store: Store {
                db,
                entries: format!("{prefix}:kv:e:").into(),
                index: format!("{prefix}:kv:idx").into(),
                counter: format!("{prefix}:kv:vs").into(),
                channel: format!("{prefix}:ch:kv").into(),
            },
            writer: Arc::default(),
        }
    }

    /// The store it lives in.
    pub fn db(&self) -> &Arc<RedisDb> {
        &self.store.db
    }

    async fn invoke(&self, inv: &ScriptInvocation<'_>) -> Result<Value, KvError> {
        self.store.invoke(inv).await
    }
}

impl Store {
    async fn invoke(&self, inv: &ScriptInvocation<'_>) -> Result<Value, KvError> {
        let mut conn = self.db.conn();
        inv.invoke_async(&mut conn)
            .await
            .map_err(|e| KvError::Backend { backend: BACKEND, message: self.db.error(&e).to_string() })
    }

    /// Commits `writes` in one script call, in order: per write its versionstamp, or `None`
    /// when one of its checks failed.
    async fn commit(&self, writes: &[&AtomicWrite]) -> Result<Vec<Option<Versionstamp>>, KvError> {
        let mut inv = ATOMIC_SCRIPT.prepare_invoke();
        inv.arg(&*self.entries).arg(&*self.index).arg(&*self.counter).arg(&*self.channel).arg(writes.len());
        for write in writes {
            inv.arg(write.checks.len());
            for check in &write.checks {
                inv.arg(check.key.as_bytes()).arg(check.versionstamp.map(|v| v.0.to_string()).unwrap_or_default());
            }
            inv.arg(write.mutations.len());
            for m in &write.mutations {
                match m {
                    Mutation::Set { key, value, ttl } => inv
                        .arg("s")
                        .arg(key.as_bytes())
                        .arg(value)
                        .arg(ttl.map(|t| ms(t).to_string()).unwrap_or_default()),
                    Mutation::Delete { key } => inv.arg("d").arg(key.as_bytes()).arg("").arg(""),
                };
            }
        }
        let reply = array(self.invoke(&inv).await?).map_err(corrupt)?;
        if reply.len() != writes.len() {
            return Err(corrupt(format!("committed {} writes, got {} answers", writes.len(), reply.len())));
        }
        reply.into_iter().map(|v| bytes(v).map(|v| versionstamp(Some(v))).transpose()).collect()
    }
}

/// How many write batches may be on their way to the server at once: writes go out at once
/// while fewer are in flight, and wait to share a call only when more are.
const WRITES_IN_FLIGHT: usize = 4;

/// Commits the writes sent on `pending`, taking every write waiting at once, until every
/// sender is gone.
async fn write_loop(store: Store, mut pending: mpsc::UnboundedReceiver<PendingWrite>) {
    let slots = Arc::new(Semaphore::new(WRITES_IN_FLIGHT));
    while let Some(first) = pending.recv().await {
        // The semaphore is never closed, so acquiring only waits.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < MAX_WRITE_BATCH {
            match pending.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            let writes: Vec<&AtomicWrite> = batch.iter().map(|p| &p.write).collect();
            let outcome = store.commit(&writes).await;
            drop(writes);
            match outcome {
                Ok(stamps) => {
                    for (p, stamp) in batch.into_iter().zip(stamps) {
                        // A writer that stopped waiting is fine.
                        let _ = p.reply.send(Ok(stamp));
                    }
                }
                Err(e) => {
                    for p in batch {
                        let _ = p.reply.send(Err(same_error(&e)));
                    }
                }
            }
            drop(slot);
        });
    }
}

/// A copy of `e` for each writer of a failed batch.
fn same_error(e: &KvError) -> KvError {
    match e {
        KvError::Backend { backend, message } => KvError::Backend { backend, message: message.clone() },
        KvError::Corrupt { backend, message } => KvError::Corrupt { backend, message: message.clone() },
    }
}

fn corrupt(message: impl Into<String>) -> KvError {
    KvError::Corrupt { backend: BACKEND, message: message.into() }
}

fn text(v: Option<Vec<u8>>) -> String {
    v.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

fn versionstamp(v: Option<Vec<u8>>) -> Result<Versionstamp, KvError> {
    let s = text(v);
    s.parse().map(Versionstamp).map_err(|_| corrupt(format!("invalid versionstamp `{s}`")))
}

fn expiry(v: Option<Vec<u8>>) -> Result<Option<Timestamp>, KvError> {
    let s = text(v);
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(|ms| Some(Timestamp(ms))).map_err(|_| corrupt(format!("invalid expiry `{s}`")))
}

/// Longest TTL passed to the server (about 317 years): larger ones are not valid `PEXPIRE`
/// arguments.
const MAX_TTL_MS: u64 = 10_000_000_000_000;

/// Most entries one listing returns: the scripts count in Lua numbers.
const MAX_LIST: usize = 1_000_000_000;

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).min(MAX_TTL_MS)
}

/// Decodes the change notices the write script publishes: per change, `s` or `d`, the
/// versionstamp, `\n`, the expiry, `\n`, the key's length, `\n`, the key, the value's length,
/// `\n`, the value.
pub(crate) fn decode_events(mut payload: &[u8]) -> Result<Vec<(Vec<u8>, KvEvent)>, String> {
    fn line<'a>(p: &mut &'a [u8]) -> Result<&'a str, String> {
        let end = p.iter().position(|&b| b == b'\n').ok_or("truncated notice")?;
        let (head, rest) = p.split_at(end);
        *p = &rest[1..];
        std::str::from_utf8(head).map_err(|_| "non-text length or stamp".to_string())
    }
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if p.len() < n {
            return Err("truncated notice".into());
        }
        let (head, rest) = p.split_at(n);
        *p = rest;
        Ok(head)
    }
    let mut out = Vec::new();
    while let Some((&op, rest)) = payload.split_first() {
        payload = rest;
        let vs = line(&mut payload)?;
        let x = line(&mut payload)?;
        let key_len: usize = line(&mut payload)?.parse().map_err(|_| "invalid key length")?;
        let raw_key = take(&mut payload, key_len)?.to_vec();
        let value_len: usize = line(&mut payload)?.parse().map_err(|_| "invalid value length")?;
        let value = take(&mut payload, value_len)?.to_vec();
        let key = Key::decode(&raw_key).map_err(|e| format!("stored key: {e}"))?;
        let event = match op {
            b's' => KvEvent::Set(Entry {
                key,
                value,
                versionstamp: Versionstamp(vs.parse().map_err(|_| format!("invalid versionstamp `{vs}`"))?),
                expires_at: if x.is_empty() {
                    None
                } else {
                    Some(Timestamp(x.parse().map_err(|_| format!("invalid expiry `{x}`"))?))
                },
            }),
            b'd' => KvEvent::Deleted(key),
            other => return Err(format!("unknown change kind {other:#04x}")),
        };
        out.push((raw_key, event));
    }
    Ok(out)
}

#[async_trait]
impl Kv for RedisKv {
    fn provider(&self) -> &'static str {
        BACKEND
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>, KvError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = GET_MANY_SCRIPT.prepare_invoke();
        inv.arg(&*self.store.entries);
        for key in keys {
            inv.arg(key.as_bytes());
        }
        let reply = array(self.invoke(&inv).await?).map_err(corrupt)?;
        if reply.len() != keys.len() {
            return Err(corrupt(format!("asked for {} keys, got {} answers", keys.len(), reply.len())));
        }
        keys.iter()
            .zip(reply)
            .map(|(key, found)| {
                let fields = array(found).map_err(corrupt)?;
                if fields.is_empty() {
                    return Ok(None);
                }
                let mut f = fields.into_iter().map(bytes);
                let value = f.next().flatten().unwrap_or_default();
                Ok(Some(Entry {
                    key: key.clone(),
                    value,
                    versionstamp: versionstamp(f.next().flatten())?,
                    expires_at: expiry(f.next().flatten())?,
                }))
            })
            .collect()
    }

    async fn atomic(&self, write: AtomicWrite) -> Result<Option<Versionstamp>, KvError> {
        let writer = self.writer.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_loop(self.store.clone(), rx));
            tx
        });
        let (reply, outcome) = oneshot::channel();
        match writer.send(PendingWrite { write, reply }) {
            Ok(()) => outcome.await.unwrap_or_else(|_| {
                Err(KvError::Backend {
                    backend: BACKEND,
                    message: "the write task stopped (its runtime shut down); the write's outcome is unknown".into(),
                })
            }),
            // The writer task is gone with the runtime that started it: commit directly.
            Err(mpsc::error::SendError(p)) => Ok(self.store.commit(&[&p.write]).await?.pop().flatten()),
        }
    }

    async fn list(&self, options: ListOptions) -> Result<Vec<Entry>, KvError> {
        let Some(KeyRange { lower, upper }) = options.key_range() else { return Ok(Vec::new()) };
        let bound = |b: Vec<u8>| {
            let mut out = Vec::with_capacity(b.len() + 1);
            out.push(b'(');
            out.extend_from_slice(&b);
            out
        };
        let mut inv = LIST_SCRIPT.prepare_invoke();
        inv.arg(&*self.store.entries)
            .arg(&*self.store.index)
            .arg(bound(lower))
            .arg(upper.map(bound).unwrap_or_else(|| b"+".to_vec()))
            .arg(options.limit.min(MAX_LIST))
            .arg(if options.reverse { "1" } else { "0" });
        let reply = array(self.invoke(&inv).await?).map_err(corrupt)?;
        reply
            .into_iter()
            .map(|row| {
                let mut f = array(row).map_err(corrupt)?.into_iter().map(bytes);
                let raw = f.next().flatten().unwrap_or_default();
                let key = Key::decode(&raw).map_err(|e| corrupt(format!("stored key: {e}")))?;
                let value = f.next().flatten().unwrap_or_default();
                Ok(Entry {
                    key,
                    value,
                    versionstamp: versionstamp(f.next().flatten())?,
                    expires_at: expiry(f.next().flatten())?,
                })
            })
            .collect()
    }

    fn watch(&self, prefix: &Key) -> KvWatch {
        KvWatch::new(prefix, self.store.db.kv_events().subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_notices_round_trip() {
        let key = Key::from(("a", 1i64));
        let raw = key.encode();
        let mut notice = Vec::new();
        notice.extend_from_slice(format!("s7\n1234\n{}\n", raw.len()).as_bytes());
        notice.extend_from_slice(&raw);
        notice.extend_from_slice(b"3\nx\ny");
        notice.extend_from_slice(format!("d\n\n{}\n", raw.len()).as_bytes());
        notice.extend_from_slice(&raw);
        notice.extend_from_slice(b"0\n");
        let events = decode_events(&notice).unwrap_or_default();
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0].1,
            KvEvent::Set(Entry {
                key: key.clone(),
                value: b"x\ny".to_vec(),
                versionstamp: Versionstamp(7),
                expires_at: Some(Timestamp(1234)),
            })
        );
        assert_eq!(events[1], (raw, KvEvent::Deleted(key)));
        assert!(decode_events(b"s1\n\n5\nab").is_err());
    }
}
