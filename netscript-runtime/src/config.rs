//! `WorkersConfig`: how many workers, on which queue backend, with which runner, where the
//! embedded store keeps its file, where the API listens.
//!
//! Built in code with defaults, then overridden by the environment
//! ([`WorkersConfig::apply_env`]), and checked by [`WorkersConfig::validate`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which queue backend to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueueProvider {
    /// Pick from the environment (see [`crate::runtime`]); the embedded store when nothing
    /// else is configured.
    #[default]
    Auto,
    /// The durable SQLite store in the data directory.
    Embedded,
    /// PostgreSQL (feature `postgres`; never picked by `auto`).
    Postgres,
    /// Redis or Garnet (feature `redis`).
    Redis,
    /// RabbitMQ over AMQP 0.9.1 (feature `amqp`).
    Amqp,
    /// In-process, not durable.
    Memory,
}

impl std::str::FromStr for QueueProvider {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => Self::Auto,
            "embedded" => Self::Embedded,
            "postgres" | "postgresql" => Self::Postgres,
            "redis" | "garnet" => Self::Redis,
            "amqp" | "rabbitmq" => Self::Amqp,
            "memory" => Self::Memory,
            _ => {
                return Err(ConfigError::Invalid {
                    field: "queue_provider",
                    message: format!(
                        "unknown provider `{s}`; expected auto, embedded, postgres, redis, amqp or memory"
                    ),
                });
            }
        })
    }
}

impl QueueProvider {
    /// The provider's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Embedded => "embedded",
            Self::Postgres => "postgres",
            Self::Redis => "redis",
            Self::Amqp => "amqp",
            Self::Memory => "memory",
        }
    }
}

/// Where a job's attempt runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RunnerMode {
    /// A tokio task in the serving process.
    #[default]
    InProcess,
    /// A pool of dedicated OS threads, one per slot, each with its own runtime.
    ThreadPool,
    /// A child process re-executing this binary, per attempt.
    Subprocess,
}

impl std::str::FromStr for RunnerMode {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        Ok(match s {
            "in-process" => Self::InProcess,
            "thread-pool" => Self::ThreadPool,
            "subprocess" => Self::Subprocess,
            _ => {
                return Err(ConfigError::Invalid {
                    field: "runner",
                    message: format!("unknown runner `{s}`; expected in-process, thread-pool or subprocess"),
                });
            }
        })
    }
}

/// How a worker group is deployed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScalingMode {
    /// The group's workers run in every process that runs workers, `serve` included (with the
    /// API and the scheduler).
    #[default]
    Combined,
    /// The group's workers run only in worker processes (`worker`, or `worker --topic <it>`);
    /// `serve` runs the API and the other groups, not this one.
    Distributed,
}

/// Scaling of one worker group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scaling {
    /// Deployment mode.
    pub mode: ScalingMode,
    /// Slots for this group, in each process that runs it.
    pub concurrency: usize,
}

/// How long history is kept. Worker processes prune, in bounded batches, the records of
/// executions that ended more than `kv_days` ago (see
/// [`ExecutionStore::prune`](crate::store::ExecutionStore::prune); waiting and running ones
/// are never pruned), and the dead letters that failed more than `db_days` ago (see
/// [`Queue::purge_dead`](crate::queue::Queue::purge_dead)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Days an ended execution's record stays in the key-value store (0: forever).
    pub kv_days: u32,
    /// Days a dead letter stays in the queue's dead-letter store, where it can be redriven
    /// (0: forever). The dead-letter store is queue-wide, so only the process's retention
    /// ([`WorkersConfig::retention`]) sets it; a group's `db_days` is not used.
    pub db_days: u32,
}

impl Retention {
    /// How long an ended record is kept in the key-value store; `None` for forever.
    pub fn kv(&self) -> Option<Duration> {
        (self.kv_days > 0).then(|| Duration::from_secs(u64::from(self.kv_days) * 86_400))
    }

    /// How long a dead letter is kept; `None` for forever.
    pub fn db(&self) -> Option<Duration> {
        (self.db_days > 0).then(|| Duration::from_secs(u64::from(self.db_days) * 86_400))
    }
}

impl Default for Retention {
    fn default() -> Self {
        Self { kv_days: 7, db_days: 90 }
    }
}

/// Settings of one topic's worker group: its own slots (and runner) instead of a share of
/// the process-wide pool, so a slow topic never starves the others.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupConfig {
    /// Scaling; `None`: combined, with the process's `concurrency`.
    pub scaling: Option<Scaling>,
    /// The group's runner; `None`: the process's `runner`.
    pub runner: Option<RunnerMode>,
    /// Retention.
    pub retention: Retention,
}

impl GroupConfig {
    /// A combined group with `concurrency` slots.
    pub fn with_concurrency(concurrency: usize) -> Self {
        Self { scaling: Some(Scaling { mode: ScalingMode::Combined, concurrency }), ..Self::default() }
    }

    /// The same group, deployed `mode`.
    pub fn mode(mut self, mode: ScalingMode) -> Self {
        let concurrency = self.scaling.map_or(0, |s| s.concurrency);
        self.scaling = Some(Scaling { mode, concurrency });
        self
    }

    /// The same group, on `runner`.
    pub fn runner(mut self, runner: RunnerMode) -> Self {
        self.runner = Some(runner);
        self
    }
}

/// A configuration problem.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A setting has a bad value.
    #[error("invalid `{field}`: {message}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A setting asks for something this build does not have yet.
    #[error("`{field}` = {value} is not supported yet: {message}")]
    Unsupported {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: String,
        /// What to do instead.
        message: String,
    },
}

/// The runtime's configuration. See the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkersConfig {
    /// Run workers at all (an API-only process sets this to false).
    pub enabled: bool,
    /// Fire the `#[scheduled]` schedules in this process along with the workers (default true;
    /// `NETSCRIPT_SCHEDULER=off`, or `--no-scheduler`). Every process may run the scheduler: each
    /// tick enqueues once across a cluster. Turn it off on worker-only processes to keep schedule
    /// handlers, and their load, in the processes you choose.
    pub scheduler: bool,
    /// Jobs run at once (default 2; `WORKERS_CONCURRENCY`).
    pub concurrency: usize,
    /// Queue backend (`NETSCRIPT_QUEUE_PROVIDER`).
    pub queue_provider: QueueProvider,
    /// Name of the queue (default `jobs`).
    pub queue_name: String,
    /// Per-topic worker groups.
    pub groups: BTreeMap<String, GroupConfig>,
    /// Retention of execution history for topics in no group (`NETSCRIPT_RETENTION_DAYS` sets
    /// `kv_days`; default 7), and of the queue's dead letters
    /// (`NETSCRIPT_DEAD_LETTER_RETENTION_DAYS` sets `db_days`; default 90).
    pub retention: Retention,
    /// Where attempts run.
    pub runner: RunnerMode,
    /// Directory of the embedded store (default `.netscript`; `NETSCRIPT_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Address of the HTTP API (default 127.0.0.1:8091; `NETSCRIPT_API_ADDR`).
    pub api_addr: SocketAddr,
    /// How long a claim holds before another worker may take the message; running jobs
    /// extend it every third of this.
    pub lease: Duration,
    /// Timeout of jobs that set none.
    pub default_timeout: Duration,
    /// How long shutdown waits for running jobs before cancelling them.
    pub shutdown_timeout: Duration,
    /// Longest idle wait between claims when the backend cannot notify (another process
    /// enqueued into the embedded store).
    pub poll_interval: Duration,
    /// When set, every API route but `/health` requires `Authorization: Bearer <token>`
    /// (`NETSCRIPT_API_TOKEN`).
    pub api_token: Option<ApiToken>,
    /// Largest request body the API accepts, in bytes (default 1 MiB).
    pub api_body_limit: usize,
    /// Where the brokers are (from code, or the environment: see [`Brokers`]).
    pub brokers: Brokers,
    /// Separates apps that share a broker: the PostgreSQL schema, the Redis key prefix, the
    /// RabbitMQ exchange and queue prefix (default `netscript`; `NETSCRIPT_NAMESPACE`).
    pub namespace: String,
    /// How long startup keeps retrying a broker that does not answer, with a logged backoff
    /// (default 0: fail at once with an error naming the URL; `NETSCRIPT_BROKER_WAIT`, e.g. `30s`).
    pub broker_wait: Duration,
}

/// A broker's URL and where it came from (`REDIS_URL`, `configured in code`, ...). Its `Debug`
/// and `Display` output hide the password.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// The URL, password included.
    pub url: String,
    /// Where it was found, for the startup log and `GET /health`.
    pub source: String,
}

impl BrokerUrl {
    /// A URL set in code.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), source: "configured in code".into() }
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.url)
    }
}

impl std::fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BrokerUrl({} from {})", self.redacted(), self.source)
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `scheme://user:secret@host/...` → `scheme://user:***@host/...`; anything else unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return url.to_owned() };
    match rest[..at].find(':') {
        Some(colon) => format!("{}{}:***{}", &url[..scheme_end], &rest[..colon], &rest[at..]),
        None => url.to_owned(),
    }
}

/// The brokers a runtime may use. From the environment: PostgreSQL from `DATABASE_URL` or
/// `POSTGRES_URL`; Redis from `REDIS_URL`, `REDIS_URI`, `GARNET_URI`, `services__redis__*`, or
/// `CACHE_PROVIDER=redis|garnet` (then `redis://127.0.0.1:6379`); RabbitMQ from `RABBITMQ_URL`,
/// `AMQP_URL` or `services__rabbitmq__*`; the CAs of a `rediss://` server from
/// `REDIS_TLS_CA_FILE`. Setting a URL does not choose the provider: `auto`
/// discovery does (see [`crate::backends`]), or `queue_provider`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Brokers {
    /// PostgreSQL.
    pub postgres: Option<BrokerUrl>,
    /// Redis or Garnet.
    pub redis: Option<BrokerUrl>,
    /// RabbitMQ.
    pub amqp: Option<BrokerUrl>,
    /// A PEM file of the certificate authorities a `rediss://` server's certificate is checked
    /// against, instead of the system's (`REDIS_TLS_CA_FILE`): for a private CA.
    pub redis_tls_ca: Option<std::path::PathBuf>,
}

impl Brokers {
    /// Reads the variables above: `var` looks one up, `names` lists every variable's name (for
    /// the `services__*` prefixes, whose value may be `host:port` or `tcp://host:port`).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>, names: &[String]) -> Self {
        let first = |candidates: &[&str]| {
            candidates.iter().find_map(|n| {
                var(n)
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| BrokerUrl { url: v.trim().to_owned(), source: (*n).into() })
            })
        };
        let service = |prefix: &str, scheme: &str| {
            let mut found: Vec<&String> = names.iter().filter(|n| n.starts_with(prefix)).collect();
            found.sort();
            found.into_iter().find_map(|n| {
                let v = var(n)?;
                let v = v.trim();
                let url = match v.split_once("://") {
                    Some(("tcp", rest)) => format!("{scheme}://{rest}"),
                    Some(_) => v.to_owned(),
                    None if v.is_empty() => return None,
                    None => format!("{scheme}://{v}"),
                };
                Some(BrokerUrl { url, source: n.clone() })
            })
        };
        let redis = first(&["REDIS_URL", "REDIS_URI", "GARNET_URI"])
            .or_else(|| service("services__redis__", "redis"))
            .or_else(|| {
                var("CACHE_PROVIDER")
                    .filter(|v| v.eq_ignore_ascii_case("redis") || v.eq_ignore_ascii_case("garnet"))
                    .map(|v| BrokerUrl { url: "redis://127.0.0.1:6379".into(), source: format!("CACHE_PROVIDER={v}") })
            });
        Self {
            postgres: first(&["DATABASE_URL", "POSTGRES_URL"]),
            redis,
            amqp: first(&["RABBITMQ_URL", "AMQP_URL"]).or_else(|| service("services__rabbitmq__", "amqp")),
            redis_tls_ca: var("REDIS_TLS_CA_FILE").filter(|v| !v.trim().is_empty()).map(|v| v.trim().into()),
        }
    }

    /// Fills in the brokers `other` knows and this does not (code wins over the environment).
    pub fn or(self, other: Brokers) -> Self {
        Self {
            postgres: self.postgres.or(other.postgres),
            redis: self.redis.or(other.redis),
            amqp: self.amqp.or(other.amqp),
            redis_tls_ca: self.redis_tls_ca.or(other.redis_tls_ca),
        }
    }
}

/// The API's bearer token. Its `Debug` output never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    /// A token; empty strings are refused by [`WorkersConfig::validate`].
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// Whether `candidate` is this token, in time that does not depend on where they differ.
    pub fn matches(&self, candidate: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(candidate.as_bytes()).into()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(redacted)")
    }
}

impl Default for WorkersConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            scheduler: true,
            concurrency: 2,
            queue_provider: QueueProvider::Auto,
            queue_name: "jobs".into(),
            groups: BTreeMap::new(),
            retention: Retention::default(),
            runner: RunnerMode::InProcess,
            data_dir: PathBuf::from(".netscript"),
            api_addr: SocketAddr::from(([127, 0, 0, 1], 8091)),
            lease: Duration::from_secs(30),
            default_timeout: Duration::from_secs(300),
            shutdown_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(200),
            api_token: None,
            api_body_limit: 1024 * 1024,
            brokers: Brokers::default(),
            namespace: "netscript".into(),
            broker_wait: Duration::ZERO,
        }
    }
}

/// What `apply_env` noticed, for the caller to log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvReport {
    /// Warnings to show loudly.
    pub warnings: Vec<String>,
}

impl WorkersConfig {
    /// Overrides settings from the process environment.
    pub fn apply_env(&mut self) -> Result<EnvReport, ConfigError> {
        let vars: BTreeMap<String, String> = std::env::vars().collect();
        let names: Vec<String> = vars.keys().cloned().collect();
        self.apply_environment(|name| vars.get(name).cloned(), &names)
    }

    /// Overrides settings from `var` (a lookup such as `std::env::var`). The `services__*`
    /// broker variables need their names listed: see [`WorkersConfig::apply_environment`].
    pub fn apply_vars(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<EnvReport, ConfigError> {
        self.apply_environment(var, &[])
    }

    /// Overrides settings from `var`; `names` lists the variables' names.
    pub fn apply_environment(
        &mut self,
        var: impl Fn(&str) -> Option<String>,
        names: &[String],
    ) -> Result<EnvReport, ConfigError> {
        let mut report = EnvReport::default();
        self.brokers = std::mem::take(&mut self.brokers).or(Brokers::from_vars(&var, names));
        if let Some(v) = var("NETSCRIPT_NAMESPACE") {
            self.namespace = v.trim().to_owned();
        }
        if let Some(v) = var("NETSCRIPT_BROKER_WAIT") {
            self.broker_wait = humantime::parse_duration(v.trim()).map_err(|e| ConfigError::Invalid {
                field: "broker_wait",
                message: format!("NETSCRIPT_BROKER_WAIT=`{v}` is not a duration such as 30s: {e}"),
            })?;
        }
        match (var("WORKERS_CONCURRENCY"), var("WORKER_CONCURRENCY")) {
            (Some(v), _) => self.concurrency = parse_concurrency(&v)?,
            (None, Some(v)) => report.warnings.push(format!(
                "WORKER_CONCURRENCY={v} is IGNORED: the variable is WORKERS_CONCURRENCY (plural); \
                 running with concurrency {}",
                self.concurrency
            )),
            (None, None) => {}
        }
        if let Some(v) = var("NETSCRIPT_QUEUE_PROVIDER") {
            self.queue_provider = v.parse()?;
        }
        if let Some(v) = var("NETSCRIPT_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = var("NETSCRIPT_API_ADDR") {
            self.api_addr = v.parse().map_err(|e| ConfigError::Invalid {
                field: "api_addr",
                message: format!("`{v}` is not a socket address such as 127.0.0.1:8091: {e}"),
            })?;
        }
        if let Some(v) = var("NETSCRIPT_RUNNER") {
            self.runner = v.parse()?;
        }
        // Whole days, 0 for forever.
        let days = |name: &str, v: String, kept: &str| {
            v.trim().parse::<u32>().map_err(|_| ConfigError::Invalid {
                field: "retention",
                message: format!("{name}=`{v}` is not a whole number of days (0 keeps {kept} forever)"),
            })
        };
        if let Some(v) = var("NETSCRIPT_RETENTION_DAYS") {
            self.retention.kv_days = days("NETSCRIPT_RETENTION_DAYS", v, "history")?;
        }
        if let Some(v) = var("NETSCRIPT_DEAD_LETTER_RETENTION_DAYS") {
            self.retention.db_days = days("NETSCRIPT_DEAD_LETTER_RETENTION_DAYS", v, "dead letters")?;
        }
        if let Some(v) = var("NETSCRIPT_SCHEDULER") {
            self.scheduler = parse_switch(&v).ok_or_else(|| ConfigError::Invalid {
                field: "scheduler",
                message: format!("NETSCRIPT_SCHEDULER=`{v}` is not one of on, off, true, false, 1, 0"),
            })?;
        }
        if let Some(v) = var("NETSCRIPT_API_TOKEN") {
            self.api_token = Some(ApiToken::new(v));
        }
        Ok(report)
    }

    /// Refuses settings that are wrong or not supported by this build.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.concurrency == 0 {
            return Err(ConfigError::Invalid { field: "concurrency", message: "must be at least 1".into() });
        }
        if self.queue_name.is_empty() {
            return Err(ConfigError::Invalid { field: "queue_name", message: "must not be empty".into() });
        }
        let namespace_ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
        if self.namespace.is_empty()
            || self.namespace.len() > 48
            || !self.namespace.chars().all(namespace_ok)
            || self.namespace.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(ConfigError::Invalid {
                field: "namespace",
                message: format!(
                    "`{}` must be 1 to 48 lowercase letters, digits or `_`, starting with a letter \
                     (it names a PostgreSQL schema)",
                    self.namespace
                ),
            });
        }
        if self.api_token.as_ref().is_some_and(ApiToken::is_empty) {
            return Err(ConfigError::Invalid {
                field: "api_token",
                message: "is empty; unset NETSCRIPT_API_TOKEN to run without authentication".into(),
            });
        }
        if self.api_body_limit == 0 {
            return Err(ConfigError::Invalid { field: "api_body_limit", message: "must be at least 1 byte".into() });
        }
        if self.lease < Duration::from_millis(300) {
            return Err(ConfigError::Invalid { field: "lease", message: "must be at least 300ms".into() });
        }
        for (topic, group) in &self.groups {
            if topic.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    field: "groups",
                    message: "a group's topic must not be empty".into(),
                });
            }
            if group.scaling.is_some_and(|s| s.concurrency == 0) {
                return Err(ConfigError::Invalid {
                    field: "groups",
                    message: format!("group `{topic}`: concurrency must be at least 1"),
                });
            }
        }
        Ok(())
    }
}

/// `on`/`off`, `true`/`false`, `1`/`0`, `yes`/`no`, in any case.
fn parse_switch(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Some(true),
        "off" | "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

fn parse_concurrency(v: &str) -> Result<usize, ConfigError> {
    match v.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ConfigError::Invalid {
            field: "concurrency",
            message: format!("WORKERS_CONCURRENCY=`{v}` is not a positive whole number"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn retention_days_come_from_the_environment() {
        let mut c = WorkersConfig::default();
        assert_eq!(c.retention.kv(), Some(Duration::from_secs(7 * 86_400)));
        c.apply_vars(vars(&[("NETSCRIPT_RETENTION_DAYS", "0")])).unwrap();
        assert_eq!(c.retention.kv(), None);
        let e = c.apply_vars(vars(&[("NETSCRIPT_RETENTION_DAYS", "a week")])).unwrap_err();
        assert!(e.to_string().contains("NETSCRIPT_RETENTION_DAYS=`a week`"), "{e}");
    }

    #[test]
    fn dead_letter_retention_comes_from_the_environment() {
        let mut c = WorkersConfig::default();
        assert_eq!(c.retention.db(), Some(Duration::from_secs(90 * 86_400)));
        c.apply_vars(vars(&[("NETSCRIPT_DEAD_LETTER_RETENTION_DAYS", " 30 ")])).unwrap();
        assert_eq!(c.retention.db(), Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(c.retention.kv(), Some(Duration::from_secs(7 * 86_400)), "kv_days is left alone");
        c.apply_vars(vars(&[("NETSCRIPT_DEAD_LETTER_RETENTION_DAYS", "0")])).unwrap();
        assert_eq!(c.retention.db(), None);
        let e = c.apply_vars(vars(&[("NETSCRIPT_DEAD_LETTER_RETENTION_DAYS", "-1")])).unwrap_err();
        assert!(e.to_string().contains("NETSCRIPT_DEAD_LETTER_RETENTION_DAYS=`-1`"), "{e}");
    }

    #[test]
    fn the_scheduler_switch_reads_on_and_off() {
        let mut c = WorkersConfig::default();
        assert!(c.scheduler);
        c.apply_vars(vars(&[("NETSCRIPT_SCHEDULER", "OFF")])).unwrap();
        assert!(!c.scheduler);
        c.apply_vars(vars(&[("NETSCRIPT_SCHEDULER", "1")])).unwrap();
        assert!(c.scheduler);
        let e = c.apply_vars(vars(&[("NETSCRIPT_SCHEDULER", "sometimes")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid `scheduler`: NETSCRIPT_SCHEDULER=`sometimes` is not one of on, off, true, false, 1, 0"
        );
    }

    #[test]
    fn plural_variable_sets_concurrency() {
        let mut c = WorkersConfig::default();
        let r = c.apply_vars(vars(&[("WORKERS_CONCURRENCY", "8")])).unwrap();
        assert_eq!(c.concurrency, 8);
        assert!(r.warnings.is_empty());
    }

    #[test]
    fn singular_variable_alone_is_ignored_loudly() {
        let mut c = WorkersConfig::default();
        let r = c.apply_vars(vars(&[("WORKER_CONCURRENCY", "8")])).unwrap();
        assert_eq!(c.concurrency, 2);
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("IGNORED"), "{}", r.warnings[0]);
    }

    #[test]
    fn bad_values_name_the_field() {
        let mut c = WorkersConfig::default();
        let e = c.apply_vars(vars(&[("WORKERS_CONCURRENCY", "lots")])).unwrap_err();
        assert!(e.to_string().contains("concurrency"), "{e}");
        let e = c.apply_vars(vars(&[("NETSCRIPT_QUEUE_PROVIDER", "kafka")])).unwrap_err();
        assert!(e.to_string().contains("kafka"), "{e}");
    }

    #[test]
    fn the_api_token_comes_from_the_environment_and_never_shows() {
        let mut c = WorkersConfig::default();
        c.apply_vars(vars(&[("NETSCRIPT_API_TOKEN", "s3cret")])).unwrap();
        let token = c.api_token.clone().unwrap();
        assert!(token.matches("s3cret"));
        assert!(!token.matches("s3cre") && !token.matches("s3cret!") && !token.matches(""));
        assert!(!format!("{c:?}").contains("s3cret"));
        c.api_token = Some(ApiToken::new(""));
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "api_token", .. })));
    }

    #[test]
    fn broker_urls_come_from_the_documented_variables_and_hide_passwords() {
        let pairs: &[(&str, &str)] = &[
            ("AMQP_URL", "amqp://guest:guest@mq:5672/%2f"),
            ("services__redis__tcp__0", "tcp://cache:6379"),
            ("POSTGRES_URL", "postgres://app:pw@db/app"),
            ("REDIS_TLS_CA_FILE", " /etc/ssl/private-ca.pem "),
        ];
        let names: Vec<String> = pairs.iter().map(|(k, _)| k.to_string()).collect();
        let var = |n: &str| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string());
        let mut c = WorkersConfig::default();
        c.apply_environment(var, &names).unwrap();
        let b = &c.brokers;
        assert_eq!(b.amqp.as_ref().unwrap().source, "AMQP_URL");
        assert_eq!(b.redis.as_ref().unwrap().url, "redis://cache:6379");
        assert_eq!(b.postgres.as_ref().unwrap().url, "postgres://app:pw@db/app");
        assert_eq!(b.redis_tls_ca.as_deref(), Some(std::path::Path::new("/etc/ssl/private-ca.pem")));
        let shown = format!("{c:?}");
        assert!(!shown.contains("pw@") && !shown.contains("guest@"), "{shown}");
        assert_eq!(redact_url("redis://:s3cret@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        // Code wins over the environment.
        let mut c = WorkersConfig::default();
        c.brokers.postgres = Some(BrokerUrl::new("postgres://code/db"));
        c.apply_vars(vars(&[("DATABASE_URL", "postgres://env/db"), ("CACHE_PROVIDER", "Garnet")])).unwrap();
        assert_eq!(c.brokers.postgres.as_ref().unwrap().url, "postgres://code/db");
        assert_eq!(c.brokers.redis.as_ref().unwrap().source, "CACHE_PROVIDER=Garnet");
        c.apply_vars(vars(&[("NETSCRIPT_NAMESPACE", "billing")])).unwrap();
        assert_eq!((c.namespace.as_str(), c.validate()), ("billing", Ok(())));
        c.namespace = "Bad-Name".into();
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "namespace", .. })));
        let e = c.apply_vars(vars(&[("NETSCRIPT_BROKER_WAIT", "soon")])).unwrap_err();
        assert!(e.to_string().contains("NETSCRIPT_BROKER_WAIT"), "{e}");
    }

    #[test]
    fn runners_and_groups_are_validated() {
        for runner in [RunnerMode::InProcess, RunnerMode::ThreadPool, RunnerMode::Subprocess] {
            assert_eq!(WorkersConfig { runner, ..WorkersConfig::default() }.validate(), Ok(()));
        }
        let mut c = WorkersConfig::default();
        c.groups.insert("payments".into(), GroupConfig::with_concurrency(0));
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid `groups`: group `payments`: concurrency must be at least 1"
        );
        c.groups.insert("payments".into(), GroupConfig::with_concurrency(4).mode(ScalingMode::Distributed));
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(WorkersConfig::default().validate(), Ok(()));
    }
}
