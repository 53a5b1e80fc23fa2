//! The Redis store: one Redis (or Garnet) server that holds the queue
//! ([`RedisQueue`](crate::queue::redis::RedisQueue)) and the key-value store
//! ([`RedisKv`](crate::kv::redis::RedisKv)), shared by every worker that connects to it.
//!
//! # How it talks to the server
//!
//! A [`RedisDb`] holds two connections. Commands go over one multiplexed connection (a
//! `ConnectionManager`, which pipelines concurrent calls and reconnects after a failure).
//! Every operation that reads and then writes is one Lua script run with `EVALSHA`, so it is
//! atomic on the server and costs one round trip however many messages or keys it touches.
//! Only plain commands and Lua are used (no modules), so Garnet works as well as Redis.
//!
//! The second connection is subscribed to the store's channels (`{prefix}:ch:*`): the queue
//! scripts publish there when work appears (wakes `wait_for_work` at once) and the KV
//! scripts publish every committed change (feeds `Kv::watch`). When that connection drops
//! it is re-opened with a growing delay; waiting workers are woken then, in case they missed
//! something, while KV changes made during the gap are not replayed to watchers.
//!
//! # Keys
//!
//! Every key lives under `{prefix}:` (default `netscript`), so several apps or test runs
//! share one server without seeing each other: `{prefix}:q:{<queue>}:…` for a queue,
//! `{prefix}:kv:…` for the key-value store, `{prefix}:ch:…` for channels. The layouts are
//! described in the queue and KV modules.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use netscript_runtime::kv::redis::RedisKv;
//! use netscript_runtime::queue::redis::RedisQueue;
//! use netscript_runtime::queue::{NewMessage, Queue};
//! use netscript_runtime::redis::{RedisDb, RedisOptions};
//!
//! let db = Arc::new(RedisDb::connect(RedisOptions::new("redis://127.0.0.1:6379").prefix("shop")).await?);
//! let queue = RedisQueue::new(Arc::clone(&db), "jobs");
//! let kv = RedisKv::new(db);
//! queue.enqueue_one(NewMessage::new("payments", "charge", b"{}".to_vec())).await?;
//! # let _ = kv;
//! # Ok(())
//! # }
//! ```
//!
//! # Server settings
//!
//! The server must keep what it is given: with a `maxmemory` limit, use the `noeviction`
//! policy (a warning is logged at connect otherwise), and turn persistence (AOF or RDB) on as
//! far as the messages must survive a server restart.
//!
//! What it is not: a Redis Cluster client. The scripts compute key names at run time, so the
//! server must be one node (a primary with replicas is fine).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Notify, broadcast, oneshot};

use crate::kv::KvEvent;

/// Capacity of the KV change channel; a watcher further behind gets `WatchError::Lagged`.
const WATCH_CAPACITY: usize = 4096;

/// Longest pause between two attempts to re-open the pub/sub connection.
const MAX_RESUBSCRIBE_DELAY: Duration = Duration::from_secs(5);

/// How to connect a [`RedisDb`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RedisOptions {
    /// `redis://[user:password@]host[:port][/db]`, or `rediss://` for TLS: the server's
    /// certificate is checked against the system's roots, or against [`Self::tls_ca`].
    pub url: String,
    /// A PEM file of the certificate authorities to check a `rediss://` server against
    /// instead of the system's (a private CA). Ignored for `redis://`.
    pub tls_ca: Option<std::path::PathBuf>,
    /// Every key and channel starts with `{prefix}:` (default `netscript`).
    pub prefix: String,
    /// How long connecting may take before it fails (default 5 s).
    pub connect_timeout: Duration,
    /// How long one command may wait for its reply before it fails (default 5 s).
    pub response_timeout: Duration,
}

impl RedisOptions {
    /// Options for the server at `url`, with the default prefix and timeouts.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tls_ca: None,
            prefix: "netscript".into(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
        }
    }

    /// Checks a `rediss://` server's certificate against the CAs in this PEM file.
    pub fn tls_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls_ca = Some(path.into());
        self
    }

    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the response timeout.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }
}

/// An error of the Redis store. Every variant names the server's URL, without its password.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RedisError {
    /// The URL could not be understood.
    #[error("invalid Redis URL `{url}`: {message}")]
    Url {
        /// The URL, password removed.
        url: String,
        /// Why.
        message: String,
    },
    /// The server could not be reached, or refused the connection.
    #[error("cannot connect to Redis at {url}: {message}")]
    Connect {
        /// The URL, password removed.
        url: String,
        /// Why.
        message: String,
    },
    /// A command failed.
    #[error("Redis at {url}: {message}")]
    Command {
        /// The URL, password removed.
        url: String,
        /// Why.
        message: String,
    },
}

/// What the pub/sub listener shares with the [`RedisDb`].
struct Shared {
    /// Queue wake-ups, by channel name.
    queues: Mutex<HashMap<String, Arc<QueueSignal>>>,
    kv_events: broadcast::Sender<(Vec<u8>, KvEvent)>,
    kv_channel: String,
    queue_channel_prefix: String,
}

impl Shared {
    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<QueueSignal>>> {
        // The map only ever gains entries; a panic elsewhere cannot leave it inconsistent.
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dispatch(&self, channel: &str, payload: &[u8]) {
        if channel == self.kv_channel {
            if self.kv_events.receiver_count() == 0 {
                return;
            }
            match crate::kv::redis::decode_events(payload) {
                Ok(events) => {
                    for e in events {
                        // A receiver that left meanwhile is fine.
                        let _ = self.kv_events.send(e);
                    }
                }
                Err(e) => tracing::warn!(channel, error = %e, "ignoring an undecodable KV change notice"),
            }
        } else if channel.starts_with(&self.queue_channel_prefix) {
            let signal = self.queues().get(channel).cloned();
            if let Some(signal) = signal {
                signal.wake();
            }
        }
    }

    fn wake_all_queues(&self) {
        for signal in self.queues().values() {
            signal.wake();
        }
    }
}

/// What a queue's channel tells its waiters in this process.
#[derive(Default)]
pub(crate) struct QueueSignal {
    /// Woken when a notice arrives.
    pub(crate) notify: Notify,
    /// Counts the notices: what a waiter learned from the server is current while it has not
    /// changed.
    pub(crate) generation: AtomicU64,
}

impl QueueSignal {
    /// Wakes every waiter, and the next one to come if none waits now.
    fn wake(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }
}

/// A connection to the Redis server that holds a queue and a key-value store. Share it
/// behind an `Arc` between [`RedisQueue`](crate::queue::redis::RedisQueue)s and a
/// [`RedisKv`](crate::kv::redis::RedisKv).
pub struct RedisDb {
    conn: ::redis::aio::ConnectionManager,
    prefix: String,
    url: String,
    shared: Arc<Shared>,
    listener: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RedisDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDb").field("url", &self.url).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Drop for RedisDb {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// The client for `options.url`: over TLS with `options.tls_ca`'s authorities when given.
fn client(options: &RedisOptions, url: &str) -> Result<::redis::Client, RedisError> {
    let bad_url = |message: String| RedisError::Url { url: url.to_owned(), message };
    if options.url.starts_with("rediss://") {
        // rustls on ring, the provider this crate builds in; an app that installed its own
        // first keeps it (the call fails, harmlessly).
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    match &options.tls_ca {
        Some(path) if options.url.starts_with("rediss://") => {
            let pem = std::fs::read(path)
                .map_err(|e| bad_url(format!("cannot read the TLS CA file {}: {e}", path.display())))?;
            let certificates = ::redis::TlsCertificates { client_tls: None, root_cert: Some(pem) };
            ::redis::Client::build_with_tls(options.url.as_str(), certificates)
                .map_err(|e| bad_url(format!("the TLS CA file {} is not usable: {e}", path.display())))
        }
        _ => ::redis::Client::open(options.url.as_str()).map_err(|e| bad_url(e.to_string())),
    }
}

impl RedisDb {
    /// Connects to the server, checks that it answers, and subscribes to the store's channels.
    /// Must be called inside a Tokio runtime, which runs the connections' tasks.
    pub async fn connect(options: RedisOptions) -> Result<RedisDb, RedisError> {
        let url = redact_url(&options.url);
        let client = client(&options, &url)?;
        let connect_error = |message: String| RedisError::Connect { url: url.clone(), message };
        let config = ::redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let mut conn = tokio::time::timeout(
            options.connect_timeout,
            ::redis::aio::ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| connect_error(format!("no connection after {:?}", options.connect_timeout)))?
        .map_err(|e| connect_error(e.to_string()))?;
        let pong: String =
            ::redis::cmd("PING").query_async(&mut conn).await.map_err(|e| connect_error(e.to_string()))?;
        if pong != "PONG" {
            return Err(connect_error(format!("unexpected answer to PING: {pong}")));
        }

        warn_if_evicting(&mut conn, &url).await;

        let prefix = options.prefix.clone();
        let shared = Arc::new(Shared {
            queues: Mutex::default(),
            kv_events: broadcast::channel(WATCH_CAPACITY).0,
            kv_channel: format!("{prefix}:ch:kv"),
            queue_channel_prefix: format!("{prefix}:ch:q:"),
        });
        let pattern = format!("{}:ch:*", glob_escape(&prefix));
        let (ready_tx, ready_rx) = oneshot::channel();
        let listener =
            tokio::spawn(listen(client, pattern, Arc::clone(&shared), url.clone(), options.connect_timeout, ready_tx));
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                listener.abort();
                return Err(connect_error(format!("cannot subscribe to change notices: {message}")));
            }
            Err(_) => return Err(connect_error("the pub/sub listener stopped".into())),
        }
        Ok(RedisDb { conn, prefix, url, shared, listener })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The server's URL, password removed.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A handle on the command connection (cheap: it is shared).
    pub(crate) fn conn(&self) -> ::redis::aio::ConnectionManager {
        self.conn.clone()
    }

    /// The wake-up of the queue whose channel is `channel`.
    pub(crate) fn queue_signal(&self, channel: &str) -> Arc<QueueSignal> {
        Arc::clone(self.shared.queues().entry(channel.to_owned()).or_default())
    }

    /// The KV change channel's sender.
    pub(crate) fn kv_events(&self) -> &broadcast::Sender<(Vec<u8>, KvEvent)> {
        &self.shared.kv_events
    }

    /// A command error, naming the server.
    pub(crate) fn error(&self, e: &::redis::RedisError) -> RedisError {
        RedisError::Command { url: self.url.clone(), message: e.to_string() }
    }

    /// Removes every key under this store's prefix (its queues and key-value store). For
    /// tests and for tearing an environment down; other clients using the prefix lose their
    /// data.
    pub async fn delete_all(&self) -> Result<u64, RedisError> {
        let mut conn = self.conn();
        let pattern = format!("{}:*", glob_escape(&self.prefix));
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.error(&e))?;
            if !keys.is_empty() {
                let n: u64 =
                    ::redis::cmd("UNLINK").arg(&keys).query_async(&mut conn).await.map_err(|e| self.error(&e))?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

/// Logs a warning when the server may evict keys to stay under its memory limit: an evicted
/// message hash or index loses messages without an error.
async fn warn_if_evicting(conn: &mut ::redis::aio::ConnectionManager, url: &str) {
    let Ok(info) = ::redis::cmd("INFO").arg("memory").query_async::<String>(conn).await else { return };
    let field =
        |name: &str| info.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':'))).map(str::trim);
    let limited = field("maxmemory").and_then(|v| v.parse::<u64>().ok()).is_some_and(|v| v > 0);
    if let Some(policy) = field("maxmemory_policy")
        && limited
        && policy != "noeviction"
    {
        tracing::warn!(
            url,
            policy,
            "the Redis server evicts keys when full: queued messages can be lost; use `maxmemory-policy noeviction`"
        );
    }
}

/// Keeps the pub/sub connection open and feeds what it receives to the queues' wake-ups and
/// the KV watchers. Reports the first subscription's outcome on `ready`.
async fn listen(
    client: ::redis::Client,
    pattern: String,
    shared: Arc<Shared>,
    url: String,
    connect_timeout: Duration,
    ready: oneshot::Sender<Result<(), String>>,
) {
    let mut ready = Some(ready);
    let mut delay = Duration::from_millis(100);
    loop {
        let subscribed = async {
            let mut pubsub = tokio::time::timeout(connect_timeout, client.get_async_pubsub())
                .await
                .map_err(|_| format!("no connection after {connect_timeout:?}"))?
                .map_err(|e| e.to_string())?;
            pubsub.psubscribe(&pattern).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(pubsub.into_on_message())
        }
        .await;
        match subscribed {
            Ok(mut messages) => {
                match ready.take() {
                    Some(r) => {
                        let _ = r.send(Ok(()));
                    }
                    // Wakes may have been lost while the connection was down.
                    None => {
                        tracing::info!(url = %url, "Redis pub/sub connection restored");
                        shared.wake_all_queues();
                    }
                }
                delay = Duration::from_millis(100);
                while let Some(msg) = messages.next().await {
                    shared.dispatch(msg.get_channel_name(), msg.get_payload_bytes());
                }
                tracing::warn!(url = %url, "Redis pub/sub connection lost; reconnecting");
            }
            Err(message) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(message));
                    return;
                }
                tracing::warn!(url = %url, error = %message, retry_in = ?delay, "cannot re-open the Redis pub/sub connection");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RESUBSCRIBE_DELAY);
    }
}

/// `url` with the password (if any) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return url.to_owned() };
    let userinfo = &rest[..at];
    let user = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        // `redis://password@host` is a password alone.
        None => "***".to_owned(),
    };
    format!("{}{}{}", &url[..scheme_end], user, &rest[at..])
}

/// `s` with the glob characters of `PSUBSCRIBE` and `SCAN MATCH` escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Lua shared by the scripts: the server's clock and integer formatting.
///
/// Times come from the server (`TIME`), so leases and delays mean the same on every worker
/// whatever its clock. Numbers written to keys are formatted here rather than by the
/// server's number conversion, which may use exponents for large values. Only Lua 5.1
/// features that Lua 5.4 (Garnet) also has are used; `unpack` is looked up in both places.
pub(crate) const LUA_COMMON: &str = r#"
local unpack = unpack or table.unpack
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function s(n)
  return string.format('%d', n)
end
"#;

/// A reply value as bytes (`None` for nil).
pub(crate) fn bytes(v: ::redis::Value) -> Option<Vec<u8>> {
    match v {
        ::redis::Value::BulkString(b) => Some(b),
        ::redis::Value::SimpleString(s) => Some(s.into_bytes()),
        ::redis::Value::Int(i) => Some(i.to_string().into_bytes()),
        ::redis::Value::Okay => Some(b"OK".to_vec()),
        _ => None,
    }
}

/// A reply value as an array (empty for nil).
pub(crate) fn array(v: ::redis::Value) -> Result<Vec<::redis::Value>, String> {
    match v {
        ::redis::Value::Array(a) | ::redis::Value::Set(a) => Ok(a),
        ::redis::Value::Nil => Ok(Vec::new()),
        other => Err(format!("expected an array, got {other:?}")),
    }
}

/// A reply value as an integer.
pub(crate) fn int(v: &::redis::Value) -> Option<i64> {
    match v {
        ::redis::Value::Int(i) => Some(*i),
        ::redis::Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        ::redis::Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("redis://user:secret@host:6379/0"), "redis://user:***@host:6379/0");
        assert_eq!(redact_url("redis://:secret@host"), "redis://:***@host");
        assert_eq!(redact_url("rediss://secret@host/1"), "rediss://***@host/1");
        assert_eq!(redact_url("redis://host/0?x=a@b"), "redis://host/0?x=a@b");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("app"), "app");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
