//! The scheduler: fires cron schedules and carries out the actions their handlers return.
//!
//! A [`Scheduler`] runs on a [`Runtime`]: each schedule is a [`CronSchedule`] (expression and
//! timezone, see [`crate::cron`]), a [`ScheduleHandler`] and [`ScheduleOptions`]. When a tick
//! comes due the handler gets a [`ScheduledTick`] and returns [`Action`]s, which the scheduler
//! carries out through [`Runtime::enqueue_json`]. A failing handler is retried after its
//! backoff, up to `max_retries`. Everything it does is observable as [`SchedulerEvent`]s.
//!
//! It is not a job runner (the enqueued jobs run on the workers, with their own retries), and
//! it does not elect a leader: every process may run the same schedules.
//!
//! # One enqueue per tick across a cluster
//!
//! Each enqueue a tick makes carries the idempotency key
//! `schedule:<id>:<scheduled_at>` (RFC 3339 UTC with milliseconds, e.g.
//! `schedule:daily-resync:2026-01-01T06:00:00.000Z`; the second action of a tick gets `:1`
//! appended, the third `:2`, ...), unless the action set its own key. Processes that run the
//! same schedule against one shared queue all fire the tick, and the queue collapses their
//! enqueues into one execution; the others get a receipt marked `duplicate`. A handler should
//! therefore be cheap and free of side effects beyond its actions. The guarantee lasts as long
//! as the queue remembers the key (while the execution exists, and for its idempotency window
//! after it ends, 24 hours by default): processes whose clocks disagree by more than that
//! could enqueue a tick twice. Fires that are not ticks
//! ([`Scheduler::trigger`], `run_on_init`) get no key: each one is a deliberate extra run.
//!
//! # Missed ticks
//!
//! After a tick is handled (successfully or not) it is recorded in the runtime's key-value
//! store under `("schedules", id)`, shared by every process on that store. When a schedule is
//! added, ticks between that record and now were missed (every process was down, or the
//! schedule was not deployed); [`MissedTicks`] decides: `Skip` (the default) forgets them,
//! `FireOnce` fires the most recent one once. While a scheduler runs, a tick that comes due
//! late (the process was busy, or the machine slept) still fires, in order: lateness is not a
//! miss.
//!
//! # Time
//!
//! The scheduler reads the time from a [`Clock`]: the [`SystemClock`] by default, or a
//! [`ManualClock`] that tests move by hand, which fires exactly the ticks that came due.
//!
//! ```
//! use std::sync::Arc;
//! use netscript_runtime::cron::CronSchedule;
//! use netscript_runtime::scheduler::{ManualClock, ScheduleOptions, Scheduler, SchedulerEvent};
//! use netscript_runtime::{QueueProvider, Runtime};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::builder().ignore_env().provider(QueueProvider::Memory).build().await?;
//! let clock = Arc::new(ManualClock::new("2026-01-01T00:00:30Z".parse()?));
//! let scheduler = Scheduler::with_clock(runtime, clock.clone());
//! let mut events = scheduler.subscribe();
//! let every_minute = CronSchedule::parse("* * * * *", "UTC")?;
//! scheduler.schedule("tick", every_minute, |_tick| async { Ok(vec![]) }, ScheduleOptions::default()).await?;
//! clock.advance(std::time::Duration::from_secs(30));
//! loop {
//!     if let SchedulerEvent::JobRun { tick, .. } = events.recv().await? {
//!         assert_eq!(tick.scheduled_at.to_rfc3339(), "2026-01-01T00:01:00+00:00");
//!         break;
//!     }
//! }
//! scheduler.stop().await;
//! # Ok(()) }
//! ```

pub(crate) mod action;
mod clock;
mod descriptor;
mod error;
mod event;
mod handler;
mod options;
mod state;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, SecondsFormat, Utc};
use futures::FutureExt;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cron::{CronSchedule, parse_cron_expression, parse_timezone};
use crate::job::JobError;
use crate::runtime::{Receipt, Runtime};

pub use action::{Action, EnqueueAction};
pub use clock::{Clock, ManualClock, SleepFuture, SystemClock};
pub use descriptor::{SCHEDULES, ScheduleDescriptor, ScheduleFn, ScheduleSetError, check_schedules};
pub use error::SchedulerError;
pub use event::SchedulerEvent;
pub use handler::{ScheduleFuture, ScheduleHandler, ScheduledTick};
pub use options::{MissedTicks, ScheduleOptions};

/// How many events a slow subscriber may fall behind before it misses some.
const EVENT_CAPACITY: usize = 1024;

/// How many fire times [`Scheduler::list`] shows per schedule.
pub const LISTED_FIRE_TIMES: usize = 5;

/// One schedule as [`Scheduler::list`] shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleInfo {
    /// The schedule's id.
    pub id: String,
    /// The cron expression as written.
    pub expression: String,
    /// The IANA timezone the expression is read in.
    pub timezone: String,
    /// Whether it fires on its own.
    pub enabled: bool,
    /// The next fire times (empty when disabled), at most [`LISTED_FIRE_TIMES`].
    pub next_fire_times: Vec<DateTime<Utc>>,
    /// The missed-tick policy.
    pub missed: MissedTicks,
    /// What the schedule is for.
    pub description: Option<String>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its metadata.
    pub metadata: BTreeMap<String, String>,
}

impl ScheduleInfo {
    /// A schedule with these options, with its fire times after `now` (none when disabled).
    pub fn new(id: &str, schedule: &CronSchedule, options: &ScheduleOptions, now: DateTime<Utc>) -> Self {
        ScheduleInfo {
            id: id.to_owned(),
            expression: schedule.expression().to_string(),
            timezone: schedule.timezone().name().to_owned(),
            enabled: options.enabled,
            next_fire_times: if options.enabled { schedule.upcoming(now, LISTED_FIRE_TIMES) } else { Vec::new() },
            missed: options.missed,
            description: options.description.clone(),
            tags: options.tags.clone(),
            metadata: options.metadata.clone(),
        }
    }

    /// A registered schedule as the workers run it, with its fire times after `now`. `None`
    /// if its expression or timezone is invalid (the runtime refuses to start with such a
    /// schedule, so only a hand-made descriptor can be).
    pub fn of(descriptor: &ScheduleDescriptor, now: DateTime<Utc>) -> Option<Self> {
        let schedule = descriptor.schedule().ok()?;
        Some(Self::new(descriptor.id, &schedule, &descriptor.options(), now))
    }
}

/// Fires cron schedules on a [`Runtime`]; see the [module docs](self). Cheap to clone: clones
/// share the schedules. Call [`stop`](Self::stop) when done.
#[derive(Clone)]
pub struct Scheduler {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").field("schedules", &self.shared.entries().keys().collect::<Vec<_>>()).finish()
    }
}

struct Shared {
    runtime: Runtime,
    clock: Arc<dyn Clock>,
    events: broadcast::Sender<SchedulerEvent>,
    entries: Mutex<BTreeMap<String, Entry>>,
    stop: CancellationToken,
}

struct Entry {
    schedule: CronSchedule,
    spec: Arc<Spec>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// What a fire needs, shared by the schedule's task and by triggers.
struct Spec {
    id: String,
    handler: Box<dyn ScheduleHandler>,
    options: ScheduleOptions,
}

impl Shared {
    fn entries(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic while holding this lock leaves the map consistent (every update is one insert
        // or remove), so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn emit(&self, event: SchedulerEvent) {
        // No subscriber is fine: events are for whoever listens.
        let _ = self.events.send(event);
    }
}

impl Scheduler {
    /// A scheduler on `runtime`, on the system clock.
    pub fn new(runtime: Runtime) -> Self {
        Self::with_clock(runtime, Arc::new(SystemClock))
    }

    /// A scheduler on `runtime` that reads the time from `clock` (a [`ManualClock`] in tests).
    pub fn with_clock(runtime: Runtime, clock: Arc<dyn Clock>) -> Self {
        Self {
            shared: Arc::new(Shared {
                runtime,
                clock,
                events: broadcast::channel(EVENT_CAPACITY).0,
                entries: Mutex::new(BTreeMap::new()),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// The runtime the actions go to.
    pub fn runtime(&self) -> &Runtime {
        &self.shared.runtime
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }

    /// Events from now on: schedules added and removed, runs and errors.
    pub fn subscribe(&self) -> broadcast::Receiver<SchedulerEvent> {
        self.shared.events.subscribe()
    }

    /// Adds a schedule parsed from a cron expression and an IANA timezone name. An invalid
    /// one is an error naming the field (`cron expression` or `timezone`) and what is wrong.
    pub async fn schedule_cron(
        &self,
        id: impl Into<String>,
        expression: &str,
        timezone: &str,
        handler: impl ScheduleHandler,
        options: ScheduleOptions,
    ) -> Result<(), SchedulerError> {
        let id = id.into();
        let expression = parse_cron_expression(expression)
            .map_err(|source| SchedulerError::InvalidExpression { id: id.clone(), source })?;
        let timezone =
            parse_timezone(timezone).map_err(|source| SchedulerError::InvalidTimezone { id: id.clone(), source })?;
        self.schedule(id, CronSchedule::new(expression, timezone), handler, options).await
    }

    /// Adds a schedule and starts firing it. When this returns, the schedule's timeline is
    /// fixed: ticks after the clock's current time fire (and, with [`MissedTicks::FireOnce`],
    /// the most recent missed one fires at once).
    pub async fn schedule(
        &self,
        id: impl Into<String>,
        schedule: CronSchedule,
        handler: impl ScheduleHandler,
        options: ScheduleOptions,
    ) -> Result<(), SchedulerError> {
        let id = id.into();
        if id.trim().is_empty() {
            return Err(SchedulerError::EmptyId);
        }
        if self.shared.stop.is_cancelled() {
            return Err(SchedulerError::Stopped);
        }
        if self.shared.entries().contains_key(&id) {
            return Err(SchedulerError::DuplicateId(id));
        }
        let now = self.shared.clock.now();
        let catch_up = match (options.enabled, options.missed) {
            (true, MissedTicks::FireOnce) => {
                let kv = self.shared.runtime.store().kv();
                match state::last_tick(kv.as_ref(), &id).await? {
                    Some(last) => latest_tick_in(&schedule, last, now),
                    None => None,
                }
            }
            _ => None,
        };
        let enabled = options.enabled;
        let next_fire = enabled.then(|| schedule.next_after(now)).flatten();
        let spec = Arc::new(Spec { id: id.clone(), handler: Box::new(handler), options });
        let cancel = self.shared.stop.child_token();
        {
            let mut entries = self.shared.entries();
            if entries.contains_key(&id) {
                return Err(SchedulerError::DuplicateId(id));
            }
            let task = enabled.then(|| {
                let timeline = Timeline { schedule: schedule.clone(), cursor: now, catch_up };
                tokio::spawn(run(Arc::clone(&self.shared), Arc::clone(&spec), timeline, cancel.clone()))
            });
            entries.insert(id.clone(), Entry { schedule, spec, cancel, task });
        }
        self.shared.emit(SchedulerEvent::JobScheduled { schedule_id: id, next_fire });
        Ok(())
    }

    /// Adds schedules registered with `#[scheduled]` (see [`SCHEDULES`]), with the default
    /// options plus their description and tags.
    pub async fn schedule_all(
        &self,
        descriptors: impl IntoIterator<Item = &'static ScheduleDescriptor>,
    ) -> Result<(), SchedulerError> {
        for descriptor in descriptors {
            self.schedule(descriptor.id, descriptor.schedule()?, descriptor.handler, descriptor.options()).await?;
        }
        Ok(())
    }

    /// Fires the schedule now, whether or not it is enabled, and waits for the result
    /// (retries included). The tick's `scheduled_at` is now; its enqueues get no tick
    /// idempotency key, since a trigger is a deliberate extra run. Not recorded as a tick.
    pub async fn trigger(&self, id: &str) -> Result<Vec<Receipt>, SchedulerError> {
        let spec = match self.shared.entries().get(id) {
            Some(entry) => Arc::clone(&entry.spec),
            None => return Err(SchedulerError::UnknownSchedule(id.to_owned())),
        };
        let now = self.shared.clock.now();
        match fire(&self.shared, &spec, now, false, &self.shared.stop).await {
            Fired::Ok(receipts) => Ok(receipts),
            Fired::Failed { attempts, message } => Err(SchedulerError::Failed { id: id.to_owned(), attempts, message }),
            Fired::Cancelled => Err(SchedulerError::Stopped),
        }
    }

    /// Removes a schedule: it fires no more (a fire in progress is abandoned; its enqueues
    /// so far stand). Its last fired tick stays recorded for a later `FireOnce`.
    pub async fn unschedule(&self, id: &str) -> Result<(), SchedulerError> {
        let entry = self.shared.entries().remove(id).ok_or_else(|| SchedulerError::UnknownSchedule(id.to_owned()))?;
        entry.cancel.cancel();
        if let Some(task) = entry.task {
            let _ = task.await;
        }
        self.shared.emit(SchedulerEvent::JobUnscheduled { schedule_id: id.to_owned() });
        Ok(())
    }

    /// Every schedule, by id, with its next fire times from the clock's current time.
    pub fn list(&self) -> Vec<ScheduleInfo> {
        let now = self.shared.clock.now();
        self.shared
            .entries()
            .values()
            .map(|entry| ScheduleInfo::new(&entry.spec.id, &entry.schedule, &entry.spec.options, now))
            .collect()
    }

    /// Stops every schedule and waits for their tasks to end; fires in progress are
    /// abandoned. Later calls to [`schedule`](Self::schedule) are refused.
    pub async fn stop(&self) {
        self.shared.stop.cancel();
        let entries = std::mem::take(&mut *self.shared.entries());
        for (id, entry) in entries {
            if let Some(task) = entry.task {
                let _ = task.await;
            }
            self.shared.emit(SchedulerEvent::JobUnscheduled { schedule_id: id });
        }
    }
}

/// Where a schedule's task starts.
struct Timeline {
    schedule: CronSchedule,
    /// Fire the ticks strictly after this.
    cursor: DateTime<Utc>,
    /// A missed tick to fire first.
    catch_up: Option<DateTime<Utc>>,
}

/// The task of one enabled schedule.
async fn run(shared: Arc<Shared>, spec: Arc<Spec>, timeline: Timeline, cancel: CancellationToken) {
    let Timeline { schedule, mut cursor, catch_up } = timeline;
    if spec.options.run_on_init {
        let now = shared.clock.now();
        if let Fired::Cancelled = fire(&shared, &spec, now, false, &cancel).await {
            return;
        }
    }
    if let Some(tick) = catch_up {
        tracing::info!(schedule = %spec.id, tick = %tick, "firing the most recent missed tick");
        if !fire_tick(&shared, &spec, tick, &cancel).await {
            return;
        }
    }
    while let Some(next) = schedule.next_after(cursor) {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = shared.clock.sleep_until(next) => {}
        }
        if !fire_tick(&shared, &spec, next, &cancel).await {
            return;
        }
        cursor = next;
    }
    tracing::warn!(schedule = %spec.id, "the schedule has no fire time left");
}

/// Fires a cron tick and records it; `false` when cancelled.
async fn fire_tick(shared: &Shared, spec: &Spec, tick: DateTime<Utc>, cancel: &CancellationToken) -> bool {
    if let Fired::Cancelled = fire(shared, spec, tick, true, cancel).await {
        return false;
    }
    let kv = shared.runtime.store().kv();
    if let Err(e) = state::record_tick(kv.as_ref(), &spec.id, tick).await {
        tracing::warn!(schedule = %spec.id, error = %e, "could not record the last fired tick");
    }
    true
}

enum Fired {
    Ok(Vec<Receipt>),
    Failed { attempts: u32, message: String },
    Cancelled,
}

/// Runs the handler for the tick at `scheduled_at` and its actions, retrying per the options.
async fn fire(
    shared: &Shared,
    spec: &Spec,
    scheduled_at: DateTime<Utc>,
    is_tick: bool,
    cancel: &CancellationToken,
) -> Fired {
    let key = is_tick.then(|| tick_key(&spec.id, scheduled_at));
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let tick = ScheduledTick { schedule_id: spec.id.clone(), scheduled_at, fired_at: shared.clock.now() };
        // A span per fire: the jobs it enqueues join its trace.
        let span = tracing::info_span!(
            "schedule.tick",
            schedule.id = %spec.id,
            scheduled_at = %scheduled_at,
            attempt = i64::from(attempt),
            cron = is_tick
        );
        let work = tracing::Instrument::instrument(
            async {
                let actions =
                    AssertUnwindSafe(spec.handler.call(tick.clone())).catch_unwind().await.unwrap_or_else(|panic| {
                        Err(JobError::retryable(format!(
                            "handler panicked: {}",
                            crate::worker::runner::panic_message(&*panic)
                        )))
                    })?;
                action::carry_out(&shared.runtime, actions, key.as_deref()).await
            },
            span,
        );
        let result = tokio::select! {
            () = cancel.cancelled() => return Fired::Cancelled,
            result = work => result,
        };
        let error = match result {
            Ok(receipts) => {
                shared.emit(SchedulerEvent::JobRun { tick, attempt, receipts: receipts.clone() });
                return Fired::Ok(receipts);
            }
            Err(error) => error,
        };
        let last = error.is_fatal() || attempt > spec.options.max_retries;
        let retry_at = (!last).then(|| {
            let delay = spec.options.backoff.delay(attempt);
            shared.clock.now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX)
        });
        tracing::warn!(schedule = %spec.id, attempt, error = error.message(), retry = retry_at.is_some(), "schedule handler failed");
        shared.emit(SchedulerEvent::JobError {
            tick,
            attempt,
            kind: error.kind(),
            message: error.message().to_owned(),
            retry_at,
        });
        let Some(retry_at) = retry_at else {
            return Fired::Failed { attempts: attempt, message: error.message().to_owned() };
        };
        tokio::select! {
            () = cancel.cancelled() => return Fired::Cancelled,
            () = shared.clock.sleep_until(retry_at) => {}
        }
    }
}

/// The idempotency key of a tick's first enqueue.
pub fn tick_key(schedule_id: &str, scheduled_at: DateTime<Utc>) -> String {
    format!("schedule:{schedule_id}:{}", scheduled_at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// The most recent tick of `schedule` in `(after, until]`, found without walking every tick of
/// a long outage: windows that grow back from `until` are searched, the first with a tick wins.
fn latest_tick_in(schedule: &CronSchedule, after: DateTime<Utc>, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
    const WINDOWS: [i64; 6] = [60, 3_600, 86_400, 32 * 86_400, 400 * 86_400, 10 * 366 * 86_400];
    for window in WINDOWS {
        let start = (until - chrono::Duration::seconds(window)).max(after);
        let mut latest = None;
        let mut cursor = start;
        while let Some(next) = schedule.next_after(cursor).filter(|t| *t <= until) {
            latest = Some(next);
            cursor = next;
        }
        if latest.is_some() || start == after {
            return latest;
        }
    }
    // Ten years without a tick, and the record is older still: walk from the record.
    let mut latest = None;
    let mut cursor = after;
    while let Some(next) = schedule.next_after(cursor).filter(|t| *t <= until) {
        latest = Some(next);
        cursor = next;
    }
    latest
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn latest_missed_tick_is_the_most_recent_one_before_now() {
        let every_minute = CronSchedule::parse("* * * * *", "UTC").unwrap();
        let latest = latest_tick_in(&every_minute, at("2026-01-01T00:00:00Z"), at("2026-03-01T10:30:30Z"));
        assert_eq!(latest, Some(at("2026-03-01T10:30:00Z")));
        let daily = CronSchedule::parse("0 6 * * *", "UTC").unwrap();
        assert_eq!(
            latest_tick_in(&daily, at("2026-01-01T06:00:00Z"), at("2026-01-05T05:00:00Z")),
            Some(at("2026-01-04T06:00:00Z"))
        );
        // Nothing between the record and now.
        assert_eq!(latest_tick_in(&daily, at("2026-01-04T06:00:00Z"), at("2026-01-05T05:00:00Z")), None);
        let yearly = CronSchedule::parse("@yearly", "UTC").unwrap();
        assert_eq!(
            latest_tick_in(&yearly, at("2001-01-01T00:00:00Z"), at("2026-06-01T00:00:00Z")),
            Some(at("2026-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn tick_keys_name_the_schedule_and_the_tick_in_utc_millis() {
        assert_eq!(
            tick_key("daily-resync", at("2026-01-01T07:00:00+01:00")),
            "schedule:daily-resync:2026-01-01T06:00:00.000Z"
        );
    }
}
