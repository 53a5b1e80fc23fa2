//! The scheduler on a controllable clock: ticks fire as the clock moves, triggers, unschedule,
//! listings, events, retries, missed-tick policies across a restart, and one enqueue per tick
//! when three schedulers share one store (the embedded file, and each broker in the build).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use netscript::cron::{CronSchedule, DateTime, Utc};
use netscript::prelude::*;
use netscript::scheduler::{
    Action, Clock, ManualClock, MissedTicks, ScheduleOptions, ScheduledTick, Scheduler, SchedulerError, SchedulerEvent,
};
use netscript::store::ExecutionFilter;
use netscript::{QueueProvider, Receipt};
use tokio::sync::broadcast;

mod support;

/// Notes which tick enqueued it.
#[job(id = "sync-note", retries = 0)]
async fn sync_note(tick: String) -> JobResult<String> {
    Ok(tick)
}

const WAIT: Duration = Duration::from_secs(10);

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn every_minute() -> CronSchedule {
    CronSchedule::parse("* * * * *", "UTC").unwrap()
}

/// A handler that enqueues `sync-note` with the tick's time.
async fn enqueue_note(tick: ScheduledTick) -> JobResult<Vec<Action>> {
    Ok(vec![sync_note::enqueue(tick.scheduled_at.to_rfc3339()).into()])
}

async fn memory_runtime() -> Runtime {
    Runtime::builder().ignore_env().provider(QueueProvider::Memory).build().await.unwrap()
}

async fn embedded_runtime(dir: &std::path::Path) -> Runtime {
    Runtime::builder().ignore_env().provider(QueueProvider::Embedded).data_dir(dir).build().await.unwrap()
}

/// The next event that `keep` accepts, within [`WAIT`].
async fn next_event(
    events: &mut broadcast::Receiver<SchedulerEvent>,
    keep: impl Fn(&SchedulerEvent) -> bool,
) -> SchedulerEvent {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = events.recv().await.unwrap();
            if keep(&event) {
                return event;
            }
        }
    })
    .await
    .expect("no matching scheduler event in time")
}

/// The next run of `id`: its tick time and receipts.
async fn next_run(events: &mut broadcast::Receiver<SchedulerEvent>, id: &str) -> (DateTime<Utc>, Vec<Receipt>) {
    match next_event(events, |e| matches!(e, SchedulerEvent::JobRun { tick, .. } if tick.schedule_id == id)).await {
        SchedulerEvent::JobRun { tick, receipts, .. } => (tick.scheduled_at, receipts),
        _ => unreachable!(),
    }
}

/// The next `n` runs of any schedule, as (schedule id, tick), sorted.
async fn next_runs(events: &mut broadcast::Receiver<SchedulerEvent>, n: usize) -> Vec<(String, DateTime<Utc>)> {
    let mut runs = Vec::new();
    while runs.len() < n {
        if let SchedulerEvent::JobRun { tick, .. } =
            next_event(events, |e| matches!(e, SchedulerEvent::JobRun { .. })).await
        {
            runs.push((tick.schedule_id, tick.scheduled_at));
        }
    }
    runs.sort();
    runs
}

/// Lets spawned tasks run; used only to show that nothing happened, never to wait for something.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
}

fn no_run_pending(events: &mut broadcast::Receiver<SchedulerEvent>) {
    while let Ok(event) = events.try_recv() {
        assert!(!matches!(event, SchedulerEvent::JobRun { .. }), "unexpected run: {event:?}");
    }
}

async fn executions(rt: &Runtime) -> Vec<netscript::ExecutionRecord> {
    let filter = ExecutionFilter { limit: Some(1000), job: Some("sync-note".into()), ..Default::default() };
    rt.store().list(&filter).await.unwrap()
}

#[tokio::test]
async fn fires_each_tick_as_the_clock_moves_and_enqueues_with_the_tick_key() {
    let rt = memory_runtime().await;
    let clock = Arc::new(ManualClock::new(at("2026-01-01T00:00:30Z")));
    let scheduler = Scheduler::with_clock(rt.clone(), clock.clone());
    let mut events = scheduler.subscribe();
    scheduler.schedule("notes", every_minute(), enqueue_note, ScheduleOptions::default()).await.unwrap();

    settle().await;
    no_run_pending(&mut events);
    clock.advance(Duration::from_secs(29));
    settle().await;
    no_run_pending(&mut events);

    clock.advance(Duration::from_secs(1));
    let (tick, receipts) = next_run(&mut events, "notes").await;
    assert_eq!(tick, at("2026-01-01T00:01:00Z"));
    assert_eq!(receipts.len(), 1);
    assert!(!receipts[0].duplicate);
    let record = rt.store().get(receipts[0].execution_id).await.unwrap().unwrap();
    assert_eq!(record.job_id, "sync-note");
    assert_eq!(record.payload, serde_json::json!("2026-01-01T00:01:00+00:00"));

    // The tick's idempotency key is taken: enqueueing with it again is a duplicate.
    let again = rt
        .enqueue(sync_note::enqueue("x".into()).idempotency_key("schedule:notes:2026-01-01T00:01:00.000Z"))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.execution_id, receipts[0].execution_id);

    // Three minutes at once: the three ticks that came due fire, in order.
    clock.advance(Duration::from_secs(180));
    for expected in ["2026-01-01T00:02:00Z", "2026-01-01T00:03:00Z", "2026-01-01T00:04:00Z"] {
        assert_eq!(next_run(&mut events, "notes").await.0, at(expected));
    }
    settle().await;
    no_run_pending(&mut events);
    assert_eq!(executions(&rt).await.len(), 4);
    scheduler.stop().await;
}

#[tokio::test]
async fn trigger_fires_now_and_unschedule_stops_the_ticks() {
    let rt = memory_runtime().await;
    let clock = Arc::new(ManualClock::new(at("2026-01-01T00:00:30Z")));
    let scheduler = Scheduler::with_clock(rt.clone(), clock.clone());
    let mut events = scheduler.subscribe();
    let disabled = ScheduleOptions { enabled: false, ..Default::default() };
    scheduler.schedule("notes", every_minute(), enqueue_note, disabled).await.unwrap();

    // Triggers fire even a disabled schedule, each one a separate run (no tick key).
    let first = scheduler.trigger("notes").await.unwrap();
    let second = scheduler.trigger("notes").await.unwrap();
    assert_eq!((first.len(), second.len()), (1, 1));
    assert!(!first[0].duplicate && !second[0].duplicate);
    assert_ne!(first[0].execution_id, second[0].execution_id);
    let (tick, _) = next_run(&mut events, "notes").await;
    assert_eq!(tick, at("2026-01-01T00:00:30Z"));

    // Disabled: the clock passing a tick fires nothing.
    clock.advance(Duration::from_secs(60));
    settle().await;
    assert_eq!(executions(&rt).await.len(), 2);

    scheduler.schedule("ticking", every_minute(), enqueue_note, ScheduleOptions::default()).await.unwrap();
    scheduler.unschedule("ticking").await.unwrap();
    clock.advance(Duration::from_secs(120));
    settle().await;
    assert_eq!(executions(&rt).await.len(), 2);

    assert!(matches!(scheduler.trigger("ticking").await, Err(SchedulerError::UnknownSchedule(id)) if id == "ticking"));
    assert!(matches!(scheduler.unschedule("ticking").await, Err(SchedulerError::UnknownSchedule(_))));
    assert!(matches!(
        scheduler.schedule("notes", every_minute(), enqueue_note, ScheduleOptions::default()).await,
        Err(SchedulerError::DuplicateId(id)) if id == "notes"
    ));
    scheduler.stop().await;
    assert!(matches!(
        scheduler.schedule("late", every_minute(), enqueue_note, ScheduleOptions::default()).await,
        Err(SchedulerError::Stopped)
    ));
}

#[tokio::test]
async fn list_shows_expression_timezone_and_the_next_five_fire_times() {
    let rt = memory_runtime().await;
    let clock = Arc::new(ManualClock::new(at("2025-03-08T12:00:00Z")));
    let scheduler = Scheduler::with_clock(rt, clock.clone());
    let options = ScheduleOptions {
        description: Some("nightly".into()),
        tags: vec!["resync".into()],
        metadata: [("team".to_owned(), "erp".to_owned())].into(),
        missed: MissedTicks::FireOnce,
        ..Default::default()
    };
    let nightly = CronSchedule::parse("30 2 * * *", "America/New_York").unwrap();
    scheduler.schedule("nightly", nightly, enqueue_note, options).await.unwrap();
    let off = ScheduleOptions { enabled: false, ..Default::default() };
    scheduler.schedule("off", every_minute(), enqueue_note, off).await.unwrap();

    let list = scheduler.list();
    assert_eq!(list.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["nightly", "off"]);
    let nightly = &list[0];
    assert_eq!((nightly.expression.as_str(), nightly.timezone.as_str()), ("30 2 * * *", "America/New_York"));
    assert!(nightly.enabled);
    assert_eq!(
        (nightly.description.as_deref(), nightly.tags.as_slice()),
        (Some("nightly"), &["resync".to_owned()][..])
    );
    assert_eq!(nightly.metadata["team"], "erp");
    assert_eq!(nightly.missed, MissedTicks::FireOnce);
    // 2025-03-09 springs forward: 02:30 does not exist and fires at 03:00 EDT (07:00Z).
    let times: Vec<String> = nightly.next_fire_times.iter().map(|t| t.to_rfc3339()).collect();
    assert_eq!(
        times,
        [
            "2025-03-09T07:00:00+00:00",
            "2025-03-10T06:30:00+00:00",
            "2025-03-11T06:30:00+00:00",
            "2025-03-12T06:30:00+00:00",
            "2025-03-13T06:30:00+00:00",
        ]
    );
    assert!(!list[1].enabled);
    assert!(list[1].next_fire_times.is_empty());

    // The listing follows the clock.
    clock.set(at("2025-03-12T12:00:00Z"));
    assert_eq!(scheduler.list()[0].next_fire_times[0], at("2025-03-13T06:30:00Z"));
    let json = serde_json::to_value(&scheduler.list()[0]).unwrap();
    assert_eq!(json["nextFireTimes"][0], "2025-03-13T06:30:00Z");
    scheduler.stop().await;
}

#[tokio::test]
async fn events_report_scheduled_run_and_unscheduled() {
    let rt = memory_runtime().await;
    let clock = Arc::new(ManualClock::new(at("2026-01-01T00:00:00Z")));
    let scheduler = Scheduler::with_clock(rt, clock.clone());
    let mut events = scheduler.subscribe();
    scheduler.schedule("notes", every_minute(), enqueue_note, ScheduleOptions::default()).await.unwrap();
    assert_eq!(
        events.recv().await.unwrap(),
        SchedulerEvent::JobScheduled { schedule_id: "notes".into(), next_fire: Some(at("2026-01-01T00:01:00Z")) }
    );
    clock.advance(Duration::from_secs(60));
    match next_event(&mut events, |_| true).await {
        SchedulerEvent::JobRun { tick, attempt, receipts } => {
            assert_eq!(tick.schedule_id, "notes");
            assert_eq!(tick.scheduled_at, at("2026-01-01T00:01:00Z"));
            assert_eq!(tick.fired_at, at("2026-01-01T00:01:00Z"));
            assert_eq!((attempt, receipts.len()), (1, 1));
        }
        other => panic!("expected a run, got {other:?}"),
    }
    scheduler.unschedule("notes").await.unwrap();
    assert_eq!(events.recv().await.unwrap(), SchedulerEvent::JobUnscheduled { schedule_id: "notes".into() });

    // `run_on_init` fires at once; `stop` unschedules what is left.
    let init = ScheduleOptions { run_on_init: true, ..Default::default() };
    scheduler.schedule("init", every_minute(), enqueue_note, init).await.unwrap();
    assert!(matches!(events.recv().await.unwrap(), SchedulerEvent::JobScheduled { .. }));
    let (tick, _) = next_run(&mut events, "init").await;
    assert_eq!(tick, at("2026-01-01T00:01:00Z"));
    scheduler.stop().await;
    assert_eq!(events.recv().await.unwrap(), SchedulerEvent::JobUnscheduled { schedule_id: "init".into() });
}

#[tokio::test]
async fn a_failing_handler_follows_its_backoff_and_max_retries_and_reports_job_errors() {
    let rt = memory_runtime().await;
    let clock = Arc::new(ManualClock::new(at("2026-01-01T00:00:30Z")));
    let scheduler = Scheduler::with_clock(rt.clone(), clock.clone());
    let mut events = scheduler.subscribe();
    let calls = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&calls);
    let options =
        ScheduleOptions { max_retries: 2, backoff: Backoff::Fixed(Duration::from_secs(10)), ..Default::default() };
    let failing = move |_tick: ScheduledTick| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Err::<Vec<Action>, _>(JobError::retryable("upstream down")) }
    };
    scheduler.schedule("flaky", every_minute(), failing, options).await.unwrap();
    let is_error = |e: &SchedulerEvent| matches!(e, SchedulerEvent::JobError { .. });

    clock.advance(Duration::from_secs(30));
    for attempt in 1..=3u32 {
        let SchedulerEvent::JobError { tick, attempt: got, message, retry_at, .. } =
            next_event(&mut events, is_error).await
        else {
            unreachable!()
        };
        assert_eq!((got, message.as_str()), (attempt, "upstream down"));
        assert_eq!(tick.scheduled_at, at("2026-01-01T00:01:00Z"));
        match retry_at {
            Some(retry_at) if attempt < 3 => {
                // Fixed 10 s with ±20 % jitter, on the manual clock.
                let wait = (retry_at - clock.now()).num_milliseconds();
                assert!((8_000..=12_000).contains(&wait), "{wait}");
                settle().await;
                assert_eq!(calls.load(Ordering::SeqCst), attempt, "no retry before the backoff has passed");
                clock.set(retry_at);
            }
            None if attempt == 3 => {}
            other => panic!("attempt {attempt}: unexpected retry_at {other:?}"),
        }
    }
    settle().await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    no_run_pending(&mut events);

    // A fatal error is not retried; a trigger reports the failure to its caller.
    let fatal = |_tick: ScheduledTick| async { Err::<Vec<Action>, _>(JobError::fatal("bad config")) };
    scheduler.schedule("fatal", every_minute(), fatal, ScheduleOptions::default()).await.unwrap();
    match scheduler.trigger("fatal").await {
        Err(SchedulerError::Failed { id, attempts, message }) => {
            assert_eq!((id.as_str(), attempts, message.as_str()), ("fatal", 1, "bad config"));
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    // An action naming an unknown job fails the fire, fatally.
    let unknown = |_tick: ScheduledTick| async {
        Ok(vec![Action::enqueue_json("no-such-job", serde_json::json!({}), Default::default())])
    };
    scheduler.schedule("unknown", every_minute(), unknown, ScheduleOptions::default()).await.unwrap();
    let err = scheduler.trigger("unknown").await.unwrap_err().to_string();
    assert!(err.contains("no job `no-such-job`"), "{err}");
    // A panicking handler is a failed attempt, not a dead scheduler.
    let panics = |_tick: ScheduledTick| async { panic!("boom") };
    let once = ScheduleOptions { max_retries: 0, ..Default::default() };
    scheduler.schedule("panics", every_minute(), panics, once).await.unwrap();
    let err = scheduler.trigger("panics").await.unwrap_err().to_string();
    assert!(err.contains("handler panicked: boom"), "{err}");
    scheduler.stop().await;
}

#[tokio::test]
async fn invalid_expressions_and_timezones_are_errors_naming_the_field() {
    let rt = memory_runtime().await;
    let scheduler = Scheduler::new(rt);
    let err = scheduler
        .schedule_cron("bad", "0 25 * * *", "UTC", enqueue_note, ScheduleOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(err, "schedule `bad`: invalid cron expression: invalid hour field: `25` must be 0-23");
    let err = scheduler
        .schedule_cron("bad", "0 6 * * *", "Mars/Olympus", enqueue_note, ScheduleOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("schedule `bad`: invalid timezone: unknown timezone `Mars/Olympus`"), "{err}");
    assert!(scheduler.list().is_empty());
    scheduler
        .schedule_cron("good", "0 6 * * *", "Europe/Berlin", enqueue_note, ScheduleOptions::default())
        .await
        .unwrap();
    assert_eq!(scheduler.list()[0].timezone, "Europe/Berlin");
    scheduler.stop().await;
}

#[tokio::test]
async fn missed_ticks_are_skipped_or_fired_once_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fire_once = ScheduleOptions { missed: MissedTicks::FireOnce, ..Default::default() };
    let clock = Arc::new(ManualClock::new(at("2026-01-01T00:00:30Z")));
    {
        let rt = embedded_runtime(dir.path()).await;
        let scheduler = Scheduler::with_clock(rt, clock.clone());
        let mut events = scheduler.subscribe();
        scheduler.schedule("skip", every_minute(), enqueue_note, ScheduleOptions::default()).await.unwrap();
        scheduler.schedule("once", every_minute(), enqueue_note, fire_once.clone()).await.unwrap();
        // A schedule that never fired has missed nothing.
        settle().await;
        no_run_pending(&mut events);
        clock.advance(Duration::from_secs(30));
        let first = at("2026-01-01T00:01:00Z");
        assert_eq!(next_runs(&mut events, 2).await, [("once".into(), first), ("skip".into(), first)]);
        scheduler.stop().await;
    }
    // Everything is down from 00:01:00 to 00:05:30: ticks 00:02 to 00:05 are missed.
    clock.set(at("2026-01-01T00:05:30Z"));
    let rt = embedded_runtime(dir.path()).await;
    let scheduler = Scheduler::with_clock(rt.clone(), clock.clone());
    let mut events = scheduler.subscribe();
    scheduler.schedule("skip", every_minute(), enqueue_note, ScheduleOptions::default()).await.unwrap();
    scheduler.schedule("once", every_minute(), enqueue_note, fire_once).await.unwrap();
    let (tick, receipts) = next_run(&mut events, "once").await;
    assert_eq!(tick, at("2026-01-01T00:05:00Z"), "the most recent missed tick, once");
    assert!(!receipts[0].duplicate);
    settle().await;
    no_run_pending(&mut events);

    clock.advance(Duration::from_secs(30));
    let sixth = at("2026-01-01T00:06:00Z");
    assert_eq!(next_runs(&mut events, 2).await, [("once".into(), sixth), ("skip".into(), sixth)]);
    // 2 in the first life, then `once` at 00:05 and both at 00:06.
    assert_eq!(executions(&rt).await.len(), 5);
    scheduler.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_schedulers_on_one_store_enqueue_each_tick_once() {
    let dir = tempfile::tempdir().unwrap();
    // Three runtimes, each opening the same SQLite file, as three processes would.
    let mut runtimes = Vec::new();
    for _ in 0..3 {
        runtimes.push(embedded_runtime(dir.path()).await);
    }
    each_tick_enqueued_once(runtimes).await;
}

/// Three runtimes on one broker, each with connections of its own, as three processes would
/// have, in a namespace no other test uses.
#[cfg(any(feature = "postgres", feature = "redis", feature = "amqp"))]
async fn three_schedulers_on_a_broker(provider: QueueProvider) {
    let dir = tempfile::tempdir().unwrap();
    let namespace = support::unique_namespace("sched");
    let _cleanup = support::DropNamespace(provider, namespace.clone());
    let mut runtimes = Vec::new();
    for _ in 0..3 {
        let rt = Runtime::builder()
            .ignore_env()
            // RabbitMQ's companion store: the one embedded file all three share.
            .data_dir(dir.path())
            .configure(|c| support::configure(c, provider, &namespace))
            .build()
            .await
            .unwrap();
        runtimes.push(rt);
    }
    each_tick_enqueued_once(runtimes).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_schedulers_on_postgres_enqueue_each_tick_once() {
    three_schedulers_on_a_broker(QueueProvider::Postgres).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_schedulers_on_redis_enqueue_each_tick_once() {
    three_schedulers_on_a_broker(QueueProvider::Redis).await;
}

#[cfg(feature = "amqp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_schedulers_on_rabbitmq_enqueue_each_tick_once() {
    three_schedulers_on_a_broker(QueueProvider::Amqp).await;
}

/// Every runtime schedules the same every-minute schedule on one clock; each tick is enqueued
/// by all of them and creates one execution.
async fn each_tick_enqueued_once(runtimes: Vec<Runtime>) {
    const TICKS: usize = 6;
    let clock = Arc::new(ManualClock::new(at("2026-01-01T00:00:30Z")));
    let mut schedulers = Vec::new();
    for rt in runtimes {
        let scheduler = Scheduler::with_clock(rt, clock.clone());
        let events = scheduler.subscribe();
        scheduler.schedule("notes", every_minute(), enqueue_note, ScheduleOptions::default()).await.unwrap();
        schedulers.push((scheduler, events));
    }
    let mut created = 0;
    for n in 1..=TICKS {
        clock.advance(Duration::from_secs(60));
        let expected = at(&format!("2026-01-01T00:{n:02}:00Z"));
        for (_, events) in &mut schedulers {
            let (tick, receipts) = next_run(events, "notes").await;
            assert_eq!(tick, expected);
            assert_eq!(receipts.len(), 1);
            created += receipts.iter().filter(|r| !r.duplicate).count();
        }
    }
    assert_eq!(created, TICKS, "exactly one of the three enqueues of each tick creates an execution");
    let rt = schedulers[0].0.runtime().clone();
    let records = executions(&rt).await;
    assert_eq!(records.len(), TICKS);
    let mut payloads: Vec<String> = records.iter().map(|r| r.payload.as_str().unwrap().to_owned()).collect();
    payloads.sort();
    payloads.dedup();
    assert_eq!(payloads.len(), TICKS, "one execution per tick");
    assert_eq!(rt.queue().stats().await.unwrap().ready, TICKS as u64);
    for (scheduler, _) in &schedulers {
        scheduler.stop().await;
    }
}

/// Notes the hour, every hour on the hour, Berlin time.
#[scheduled(id = "hourly-note", cron = "0 * * * *", timezone = "Europe/Berlin", tags = ["notes", "hourly"])]
async fn hourly_note(tick: ScheduledTick) -> Vec<Action> {
    vec![sync_note::enqueue(format!("hourly {}", tick.scheduled_at.to_rfc3339())).into()]
}

#[scheduled(id = "fallible-note", cron = "@daily", description = "May fail")]
async fn fallible_note() -> JobResult<Vec<Action>> {
    Ok(vec![])
}

/// Fires once a year, and once whenever a scheduler starts.
#[scheduled(
    id = "init-note",
    cron = "0 0 1 1 *",
    run_on_init = true,
    retries = 0,
    backoff = "fixed(5s)",
    missed = "fire-once"
)]
async fn init_note() -> Vec<Action> {
    vec![]
}

#[tokio::test]
async fn scheduled_functions_register_at_link_time_and_fire_on_the_runtime_scheduler() {
    let clock = Arc::new(ManualClock::new(at("2026-01-01T00:59:30Z")));
    let rt =
        Runtime::builder().ignore_env().provider(QueueProvider::Memory).clock(clock.clone()).build().await.unwrap();
    let ids: Vec<&str> = rt.schedules().iter().map(|s| s.id).collect();
    assert_eq!(ids, ["fallible-note", "hourly-note", "init-note"]);
    let hourly = rt.schedules()[1];
    assert_eq!((hourly.cron, hourly.timezone), ("0 * * * *", "Europe/Berlin"));
    assert_eq!(hourly.tags, ["notes", "hourly"]);
    assert_eq!(hourly.description, "Notes the hour, every hour on the hour, Berlin time.");
    assert_eq!((rt.schedules()[0].timezone, rt.schedules()[0].description), ("UTC", "May fail"));

    let scheduler = rt.start_scheduler().await.unwrap();
    let mut events = scheduler.subscribe();
    let list = scheduler.list();
    assert_eq!(list[1].next_fire_times[0], at("2026-01-01T01:00:00Z"));
    assert_eq!(list[1].tags, ["notes", "hourly"]);
    assert_eq!(list[0].next_fire_times[0], at("2026-01-02T00:00:00Z"));

    clock.advance(Duration::from_secs(30));
    let (tick, receipts) = next_run(&mut events, "hourly-note").await;
    assert_eq!(tick, at("2026-01-01T01:00:00Z"));
    let record = rt.store().get(receipts[0].execution_id).await.unwrap().unwrap();
    assert_eq!(record.payload, serde_json::json!("hourly 2026-01-01T01:00:00+00:00"));
    // The generated handler is callable through the descriptor too.
    let tick = ScheduledTick { schedule_id: "fallible-note".into(), scheduled_at: tick, fired_at: tick };
    assert_eq!((rt.schedules()[0].handler)(tick).await.unwrap(), vec![]);
    scheduler.stop().await;
}

fn never(_tick: ScheduledTick) -> netscript::scheduler::ScheduleFuture {
    Box::pin(async { Ok(vec![]) })
}

const HERE: netscript::jobs::Location = netscript::jobs::Location { module_path: "tests", file: "here.rs", line: 1 };
static FIRST: netscript::scheduler::ScheduleDescriptor = netscript::scheduler::ScheduleDescriptor {
    id: "twice",
    cron: "@hourly",
    timezone: "UTC",
    description: "",
    tags: &[],
    run_on_init: false,
    enabled: true,
    max_retries: 3,
    backoff: netscript::Backoff::Exponential(Duration::from_secs(1)),
    missed: MissedTicks::Skip,
    handler: never,
    location: HERE,
};
static SECOND: netscript::scheduler::ScheduleDescriptor =
    netscript::scheduler::ScheduleDescriptor { location: netscript::jobs::Location { line: 2, ..HERE }, ..FIRST };
static INVALID: netscript::scheduler::ScheduleDescriptor =
    netscript::scheduler::ScheduleDescriptor { id: "invalid", timezone: "Mars/Olympus", ..FIRST };

#[tokio::test]
async fn duplicate_or_invalid_schedules_are_startup_errors() {
    let build =
        |schedules| Runtime::builder().ignore_env().provider(QueueProvider::Memory).schedules(schedules).build();
    let err = build(vec![&FIRST, &SECOND]).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "two schedules have the id `twice`: one in tests (here.rs:1), one in tests (here.rs:2); \
         schedule ids must be unique in a binary"
    );
    let err = build(vec![&INVALID]).await.unwrap_err().to_string();
    assert!(err.starts_with("schedule `invalid`: unknown timezone `Mars/Olympus`"), "{err}");
    assert!(build(vec![]).await.unwrap().schedules().is_empty());
}

#[tokio::test]
async fn scheduled_options_reach_the_scheduler() {
    let init = netscript::scheduler::SCHEDULES.iter().find(|s| s.id == "init-note").unwrap();
    let options = init.options();
    assert!(options.run_on_init && options.enabled);
    assert_eq!((options.max_retries, options.missed), (0, MissedTicks::FireOnce));
    assert_eq!(options.backoff, netscript::Backoff::Fixed(Duration::from_secs(5)));
    assert_eq!(options.description.as_deref(), Some("Fires once a year, and once whenever a scheduler starts."));
    // The defaults, for a schedule that sets none.
    let hourly = hourly_note_descriptor().options();
    assert!(!hourly.run_on_init && hourly.enabled);
    assert_eq!((hourly.max_retries, hourly.missed), (3, MissedTicks::Skip));

    // `run_on_init` fires as the scheduler starts, long before the yearly tick.
    let clock = Arc::new(ManualClock::new(at("2026-06-01T12:00:00Z")));
    let rt = Runtime::builder()
        .ignore_env()
        .provider(QueueProvider::Memory)
        .clock(clock)
        .schedules(vec![init, hourly_note_descriptor()])
        .build()
        .await
        .unwrap();
    let scheduler = Scheduler::with_clock(rt.clone(), rt.clock().clone());
    let mut events = scheduler.subscribe();
    scheduler.schedule_all(rt.schedules().iter().copied()).await.unwrap();
    let (tick, receipts) = next_run(&mut events, "init-note").await;
    assert_eq!((tick, receipts.len()), (at("2026-06-01T12:00:00Z"), 0));
    let listed = scheduler.list();
    assert_eq!(listed[1].id, "init-note");
    assert_eq!((listed[1].missed, listed[1].next_fire_times[0]), (MissedTicks::FireOnce, at("2027-01-01T00:00:00Z")));
    settle().await;
    no_run_pending(&mut events);
    scheduler.stop().await;
}

#[tokio::test]
async fn the_workers_run_the_scheduler() {
    let clock = Arc::new(ManualClock::new(at("2026-01-01T00:59:30Z")));
    let rt = Runtime::builder()
        .ignore_env()
        .provider(QueueProvider::Memory)
        .clock(clock.clone())
        .schedules(vec![hourly_note_descriptor()])
        .build()
        .await
        .unwrap();
    let mut feed = rt.store().subscribe();
    let workers = rt.spawn_workers();
    // The scheduler starts inside `run_workers`, out of the test's sight: move the clock an
    // hour at a time until a tick's job has run (the first tick may pass before it starts).
    let mut done = None;
    for _ in 0..50 {
        clock.advance(Duration::from_secs(3600));
        let wait = tokio::time::timeout(Duration::from_millis(200), async {
            loop {
                let record = feed.recv().await.unwrap();
                if record.status == netscript::ExecutionStatus::Succeeded {
                    return record;
                }
            }
        });
        if let Ok(record) = wait.await {
            done = Some(record);
            break;
        }
    }
    let record = done.expect("a scheduled job ran");
    assert_eq!(record.job_id, "sync-note");
    assert!(record.payload.as_str().unwrap().starts_with("hourly 2026-01-01T"), "{:?}", record.payload);
    workers.stop().await;
}

#[tokio::test]
async fn workers_with_the_scheduler_off_fire_nothing() {
    // The same hours pass for both: with the scheduler on, ticks run; off, none does.
    assert!(runs_in_five_hours(true).await > 0, "the scheduler fires when on");
    assert_eq!(runs_in_five_hours(false).await, 0, "no schedule fires when off");
}

/// Runs workers on an hourly schedule while the clock moves five hours; counts the runs.
async fn runs_in_five_hours(scheduler: bool) -> usize {
    let clock = Arc::new(ManualClock::new(at("2026-01-01T00:59:30Z")));
    let rt = Runtime::builder()
        .ignore_env()
        .provider(QueueProvider::Memory)
        .configure(|c| c.scheduler = scheduler)
        .clock(clock.clone())
        .schedules(vec![hourly_note_descriptor()])
        .build()
        .await
        .unwrap();
    let workers = rt.spawn_workers();
    for _ in 0..5 {
        clock.advance(Duration::from_secs(3600));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The schedules are still known (listed by the API and the CLI) either way.
    assert_eq!(rt.schedules().len(), 1);
    workers.stop().await;
    executions(&rt).await.len()
}

/// The descriptor `#[scheduled]` registered for `hourly_note`.
fn hourly_note_descriptor() -> &'static netscript::scheduler::ScheduleDescriptor {
    netscript::scheduler::SCHEDULES.iter().find(|s| s.id == "hourly-note").unwrap()
}

#[tokio::test]
async fn the_api_lists_schedules_with_their_next_five_fire_times() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let clock = Arc::new(ManualClock::new(at("2026-03-29T00:30:00Z")));
    let rt = Runtime::builder().ignore_env().provider(QueueProvider::Memory).clock(clock).build().await.unwrap();
    let request = axum::http::Request::get("/api/v1/workers/schedules").body(axum::body::Body::empty()).unwrap();
    let response = netscript::api::router(rt).oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["fallible-note", "hourly-note", "init-note"]);
    let hourly = &list[1];
    assert_eq!(
        (hourly["expression"].as_str(), hourly["timezone"].as_str()),
        (Some("0 * * * *"), Some("Europe/Berlin"))
    );
    assert_eq!(hourly["tags"], serde_json::json!(["notes", "hourly"]));
    // 2026-03-29 springs forward in Berlin at 01:00Z (02:00 → 03:00 local): every real hour fires.
    assert_eq!(
        hourly["nextFireTimes"],
        serde_json::json!([
            "2026-03-29T01:00:00Z",
            "2026-03-29T02:00:00Z",
            "2026-03-29T03:00:00Z",
            "2026-03-29T04:00:00Z",
            "2026-03-29T05:00:00Z"
        ])
    );
}

#[tokio::test]
async fn the_cli_lists_schedules() {
    use clap::Parser as _;

    for args in [&["app", "schedules"][..], &["app", "schedules", "--json"]] {
        let cli = netscript::cli::Cli::try_parse_from(args).unwrap();
        let builder = Runtime::builder().ignore_env().provider(QueueProvider::Memory);
        assert_eq!(netscript::cli::run_cli(builder, cli).await, std::process::ExitCode::SUCCESS);
    }
}
