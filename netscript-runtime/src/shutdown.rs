//! Graceful shutdown of a process's resources: register each with a priority and a stop
//! function, then stop them in order within one overall time budget, and get a report of
//! what stopped, what failed and what ran out of time.
//!
//! ```no_run
//! # async fn demo() {
//! use std::time::Duration;
//! use netscript_runtime::shutdown::ShutdownManager;
//!
//! let shutdown = ShutdownManager::new(Duration::from_secs(30));
//! let stop_claiming = shutdown.token(); // fired as soon as the shutdown starts
//! shutdown.register("http", 0, || async { Ok(()) });
//! shutdown.register("database pool", 10, || async { Ok(()) });
//! shutdown.shutdown_on_signals(); // SIGTERM or SIGINT starts it
//! let report = shutdown.wait_for_shutdown().await;
//! assert!(report.is_clean(), "{report:?}");
//! # drop(stop_claiming);
//! # }
//! ```
//!
//! The rules:
//! - Lower priorities stop first; resources of equal priority stop concurrently, and the next
//!   group starts once every resource of the current one has finished.
//! - The timeout is one deadline for the whole shutdown, shared by the groups in order. When
//!   it passes, the resources still stopping are reported timed out (their stop futures are
//!   dropped), and the resources not started yet are reported timed out without being
//!   started: the budget is spent, and a predictable exit beats one more best effort.
//! - A stop function that returns an error or panics is reported failed (a panic with its
//!   message); the others carry on.
//! - A resource registered while a shutdown runs is started at once, alongside whatever is
//!   stopping, under the same deadline, and is part of the report. One registered after the
//!   shutdown completed is stopped at once on its own task and only logged.
//!
//! This module does not stop the workers by itself: `Runtime::serve`/`run_workers` drain on
//! their own stop token (stop claiming, let running jobs finish within
//! `WorkersConfig::shutdown_timeout`, give the rest back to the queue). Register that drain
//! here to order it against the other resources of an app.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a shutdown did, returned by [`ShutdownManager::shutdown`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ShutdownReport {
    /// Resources that stopped cleanly, in the order they finished.
    pub stopped: Vec<String>,
    /// Resources whose stop returned an error or panicked: name, error.
    pub failed: Vec<(String, String)>,
    /// Resources still stopping when the budget ran out (their stop futures were dropped), or
    /// never started because it had run out.
    pub timed_out: Vec<String>,
    /// How long the shutdown took.
    pub elapsed: Duration,
}

impl ShutdownReport {
    /// `true` when every resource stopped: nothing failed, nothing timed out.
    pub fn is_clean(&self) -> bool {
        self.failed.is_empty() && self.timed_out.is_empty()
    }
}

type StopFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type StopFn = Box<dyn FnOnce() -> StopFuture + Send>;

struct Resource {
    name: String,
    priority: i32,
    stop: StopFn,
}

enum Phase {
    /// Not started: registrations wait in `State::pending`.
    Idle,
    /// The driver task runs; registrations go to `State::late`.
    Running,
    /// Completed; registrations are stopped at once on their own task.
    Done,
}

struct State {
    phase: Phase,
    pending: Vec<Resource>,
    late: Vec<Resource>,
}

struct Inner {
    timeout: Duration,
    state: Mutex<State>,
    /// Fired when the shutdown starts.
    token: CancellationToken,
    /// Wakes the driver when a resource is registered while it runs.
    registered: Notify,
    /// The report, once the shutdown has completed.
    report: watch::Sender<Option<ShutdownReport>>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section leaves the state whole: a poisoned lock still holds a valid one.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Stops a process's resources in priority order within one time budget. Cheap to clone: the
/// clones share one shutdown. See the [module docs](self).
#[derive(Clone)]
pub struct ShutdownManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ShutdownManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.lock();
        let phase = match state.phase {
            Phase::Idle => "idle",
            Phase::Running => "running",
            Phase::Done => "done",
        };
        f.debug_struct("ShutdownManager")
            .field("timeout", &self.inner.timeout)
            .field("phase", &phase)
            .field("registered", &(state.pending.len() + state.late.len()))
            .finish()
    }
}

impl ShutdownManager {
    /// A manager whose shutdowns take at most `timeout` overall.
    pub fn new(timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                timeout,
                state: Mutex::new(State { phase: Phase::Idle, pending: Vec::new(), late: Vec::new() }),
                token: CancellationToken::new(),
                registered: Notify::new(),
                report: watch::channel(None).0,
            }),
        }
    }

    /// Registers a resource. Lower `priority` stops first; equal priorities stop concurrently.
    ///
    /// Registered while a shutdown runs, the resource is stopped at once and reported; after
    /// the shutdown completed, it is stopped at once on a task of its own and the outcome is
    /// only logged (this needs a tokio runtime; without one it is logged and dropped).
    pub fn register<F, Fut>(&self, name: impl Into<String>, priority: i32, stop: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let resource = Resource { name: name.into(), priority, stop: Box::new(move || Box::pin(stop()) as StopFuture) };
        let mut state = self.inner.lock();
        match state.phase {
            Phase::Idle => state.pending.push(resource),
            Phase::Running => {
                state.late.push(resource);
                drop(state);
                self.inner.registered.notify_one();
            }
            Phase::Done => {
                drop(state);
                let name = resource.name.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(handle) => {
                        handle.spawn(async move {
                            tracing::info!(resource = %name, "registered after the shutdown completed; stopping it now");
                            let (name, outcome, _) = stop_one(resource).await;
                            if let Err(error) = outcome {
                                tracing::warn!(resource = %name, %error, "late resource failed to stop");
                            }
                        });
                    }
                    Err(_) => tracing::error!(
                        resource = %name,
                        "registered after the shutdown completed, outside a tokio runtime: not stopped"
                    ),
                }
            }
        }
    }

    /// Fired as soon as shutdown starts: in-flight work watches it (e.g. stop claiming).
    pub fn token(&self) -> CancellationToken {
        self.inner.token.clone()
    }

    /// Starts the shutdown and waits for its report. Idempotent: a second call (from any
    /// clone) waits for the first shutdown and returns its report.
    ///
    /// The shutdown runs on a task of its own, so dropping this future does not stop it.
    pub async fn shutdown(&self) -> ShutdownReport {
        let start = {
            let mut state = self.inner.lock();
            match state.phase {
                Phase::Idle => {
                    state.phase = Phase::Running;
                    Some(std::mem::take(&mut state.pending))
                }
                Phase::Running | Phase::Done => None,
            }
        };
        if let Some(resources) = start {
            self.inner.token.cancel();
            tracing::info!(resources = resources.len(), timeout = ?self.inner.timeout, "shutting down");
            tokio::spawn(drive(Arc::clone(&self.inner), resources));
        }
        self.wait_for_shutdown().await
    }

    /// Waits until a shutdown started by anyone has completed; returns its report.
    pub async fn wait_for_shutdown(&self) -> ShutdownReport {
        let mut rx = self.inner.report.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(report) => report.clone().unwrap_or_default(),
            // The sender lives in `inner`, which `self` keeps alive: never closed here.
            Err(_) => ShutdownReport::default(),
        }
    }

    /// Spawns a task that calls [`shutdown`](Self::shutdown) on the first SIGTERM or SIGINT
    /// (ctrl-c); a second signal while shutting down is logged, and does not abort the
    /// process. The signal handlers are installed before this returns, so a signal sent
    /// afterwards is never missed. Needs a tokio runtime (without one it logs an error).
    pub fn shutdown_on_signals(&self) {
        let handle = match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle,
            Err(_) => {
                tracing::error!("shutdown_on_signals needs a tokio runtime; signals will not stop this process");
                return;
            }
        };
        let _guard = handle.enter();
        let mut signals = Signals::install();
        let manager = self.clone();
        handle.spawn(async move {
            let name = signals.recv().await;
            tracing::info!(signal = name, "signal received; shutting down");
            let done = manager.shutdown();
            tokio::pin!(done);
            loop {
                tokio::select! {
                    _ = &mut done => return,
                    name = signals.recv() => {
                        tracing::warn!(signal = name, "signal received while shutting down; the shutdown carries on");
                    }
                }
            }
        });
    }

    /// `true` once a shutdown has started (and after it completed).
    pub fn is_shutting_down(&self) -> bool {
        self.inner.token.is_cancelled()
    }
}

/// SIGTERM and SIGINT, listened for from the moment they are installed.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for {name}");
                    None
                }
            };
            Self { term: listen(SignalKind::terminate(), "SIGTERM"), int: listen(SignalKind::interrupt(), "SIGINT") }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// The next signal's name. Pending forever when none can be listened for.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        if s.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = next(&mut self.term) => "SIGTERM",
                () = next(&mut self.int) => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "ctrl-c"
        }
    }
}

/// The outcome of one stop: name, result, how long it took.
type Stopped = (String, Result<(), String>, Duration);

/// Runs one stop function, catching a panic (in the call or in its future).
async fn stop_one(resource: Resource) -> Stopped {
    let Resource { name, stop, .. } = resource;
    tracing::info!(resource = %name, "stopping {name}");
    let began = Instant::now();
    let outcome = match AssertUnwindSafe(async move { stop().await }).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => Err(format!("panicked: {}", crate::worker::runner::panic_message(panic.as_ref()))),
    };
    (name, outcome, began.elapsed())
}

/// The resources being stopped, by name in start order, and their futures.
#[derive(Default)]
struct Stopping {
    names: Vec<String>,
    futures: FuturesUnordered<Pin<Box<dyn Future<Output = Stopped> + Send>>>,
}

impl Stopping {
    fn start(&mut self, resource: Resource) {
        self.names.push(resource.name.clone());
        self.futures.push(Box::pin(stop_one(resource)));
    }

    fn finish(&mut self, report: &mut ShutdownReport, (name, outcome, took): Stopped) {
        if let Some(i) = self.names.iter().position(|n| *n == name) {
            self.names.remove(i);
        }
        match outcome {
            Ok(()) => {
                tracing::info!(resource = %name, took_ms = took.as_millis(), "stopped {name} in {}ms", took.as_millis());
                report.stopped.push(name);
            }
            Err(error) => {
                tracing::warn!(resource = %name, %error, "{name} failed to stop");
                report.failed.push((name, error));
            }
        }
    }

    /// Gives up on the resources still stopping: their futures are dropped.
    fn time_out(&mut self, report: &mut ShutdownReport) {
        self.futures = FuturesUnordered::new();
        for name in self.names.drain(..) {
            tracing::warn!(resource = %name, "{name} did not stop within the shutdown timeout");
            report.timed_out.push(name);
        }
    }
}

/// Reports resources as timed out without starting them: the budget is spent.
fn skip(report: &mut ShutdownReport, resources: Vec<Resource>) {
    for r in resources {
        tracing::warn!(resource = %r.name, "{} not stopped: the shutdown timeout had passed", r.name);
        report.timed_out.push(r.name);
    }
}

/// The shutdown itself: groups in priority order under one deadline, late registrations
/// joining whatever is stopping; publishes the report.
async fn drive(inner: Arc<Inner>, resources: Vec<Resource>) {
    let began = Instant::now();
    let deadline = began + inner.timeout;
    let mut groups: BTreeMap<i32, Vec<Resource>> = BTreeMap::new();
    for r in resources {
        groups.entry(r.priority).or_default().push(r);
    }
    let mut groups = groups.into_values();
    let mut report = ShutdownReport::default();
    let mut stopping = Stopping::default();
    loop {
        // Next work: the resources registered meanwhile, else the next group once the
        // current one is done, else the end (decided under the lock, so that a registration
        // either lands in this report or sees the shutdown done).
        let late = std::mem::take(&mut inner.lock().late);
        let next = match (late.is_empty(), stopping.names.is_empty()) {
            (false, _) => late,
            (true, false) => Vec::new(),
            (true, true) => match groups.next() {
                Some(group) => group,
                None => {
                    let mut state = inner.lock();
                    if state.late.is_empty() {
                        state.phase = Phase::Done;
                        break;
                    }
                    continue;
                }
            },
        };
        if Instant::now() >= deadline {
            skip(&mut report, next);
            continue;
        }
        for r in next {
            stopping.start(r);
        }
        if stopping.names.is_empty() {
            continue;
        }
        tokio::select! {
            Some(done) = stopping.futures.next() => stopping.finish(&mut report, done),
            () = inner.registered.notified() => {}
            () = tokio::time::sleep_until(deadline) => stopping.time_out(&mut report),
        }
    }
    report.elapsed = began.elapsed();
    match report.is_clean() {
        true => tracing::info!(stopped = report.stopped.len(), elapsed = ?report.elapsed, "shutdown complete"),
        false => tracing::warn!(
            stopped = report.stopped.len(),
            failed = report.failed.len(),
            timed_out = report.timed_out.len(),
            elapsed = ?report.elapsed,
            "shutdown complete with problems"
        ),
    }
    inner.report.send_replace(Some(report));
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A stop function that logs its name into `log` after `took`.
    fn logged(
        log: &Arc<Mutex<Vec<String>>>,
        name: &'static str,
        took: Duration,
    ) -> impl FnOnce() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + 'static {
        let log = Arc::clone(log);
        move || {
            Box::pin(async move {
                log.lock().unwrap().push(format!("start {name}"));
                tokio::time::sleep(took).await;
                log.lock().unwrap().push(format!("end {name}"));
                Ok(())
            })
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test]
    async fn lower_priorities_stop_first() {
        let m = ShutdownManager::new(Duration::from_secs(10));
        let log = Arc::new(Mutex::new(Vec::new()));
        m.register("db", 20, logged(&log, "db", Duration::from_millis(5)));
        m.register("http", -1, logged(&log, "http", Duration::from_millis(50)));
        m.register("workers", 10, logged(&log, "workers", Duration::from_millis(20)));
        let report = m.shutdown().await;
        assert_eq!(report.stopped, names(&["http", "workers", "db"]));
        assert_eq!(
            *log.lock().unwrap(),
            names(&["start http", "end http", "start workers", "end workers", "start db", "end db"]),
            "each group starts after the previous one ended"
        );
        assert!(report.is_clean());
        assert!(report.elapsed >= Duration::from_millis(75), "one after the other: {:?}", report.elapsed);
    }

    #[tokio::test]
    async fn equal_priorities_stop_concurrently() {
        let m = ShutdownManager::new(Duration::from_secs(10));
        // Each waits for the other: stopped one after the other, they would never finish.
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        for name in ["a", "b"] {
            let barrier = Arc::clone(&barrier);
            m.register(name, 0, move || async move {
                barrier.wait().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(())
            });
        }
        let report = m.shutdown().await;
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.stopped.len(), 2);
        assert!(report.elapsed < Duration::from_millis(550), "300 ms each, side by side: {:?}", report.elapsed);
    }

    /// Sets its flag when dropped.
    struct DropFlag(Arc<AtomicUsize>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn the_budget_is_shared_and_what_is_left_times_out() {
        let m = ShutdownManager::new(Duration::from_millis(400));
        let log = Arc::new(Mutex::new(Vec::new()));
        m.register("quick", 0, logged(&log, "quick", Duration::from_millis(250)));
        let dropped = Arc::new(AtomicUsize::new(0));
        let flag = DropFlag(Arc::clone(&dropped));
        m.register("slow", 1, move || async move {
            let _flag = flag;
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(())
        });
        m.register("slow-too", 1, logged(&log, "slow-too", Duration::from_millis(50)));
        m.register("never", 2, logged(&log, "never", Duration::ZERO));
        let report = m.shutdown().await;
        assert_eq!(report.stopped, names(&["quick", "slow-too"]));
        assert_eq!(report.timed_out, names(&["slow", "never"]));
        assert!(report.failed.is_empty());
        assert!(!report.is_clean());
        assert!(
            report.elapsed >= Duration::from_millis(400) && report.elapsed < Duration::from_secs(2),
            "one deadline for every group: {:?}",
            report.elapsed
        );
        let log = log.lock().unwrap().clone();
        assert!(!log.contains(&"start never".to_owned()), "a resource after the deadline is not started: {log:?}");
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "the timed-out stop future was dropped");
    }

    #[tokio::test]
    async fn errors_and_panics_are_failures_and_the_rest_carry_on() {
        let m = ShutdownManager::new(Duration::from_secs(5));
        m.register("broken", 0, || async { Err("connection reset".to_owned()) });
        m.register("panicky", 0, || async { panic!("boom at stop") });
        m.register("panics-at-call", 0, || -> std::future::Ready<Result<(), String>> { panic!("boom at call") });
        m.register("fine", 1, || async { Ok(()) });
        let report = m.shutdown().await;
        let mut failed = report.failed.clone();
        failed.sort();
        assert_eq!(
            failed,
            vec![
                ("broken".to_owned(), "connection reset".to_owned()),
                ("panicky".to_owned(), "panicked: boom at stop".to_owned()),
                ("panics-at-call".to_owned(), "panicked: boom at call".to_owned()),
            ]
        );
        assert_eq!(report.stopped, names(&["fine"]));
        assert!(report.timed_out.is_empty());
    }

    #[tokio::test]
    async fn shutdown_is_idempotent() {
        let m = ShutdownManager::new(Duration::from_secs(5));
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        m.register("once", 0, move || async move {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(())
        });
        let other = m.clone();
        let (first, second) = tokio::join!(m.shutdown(), other.shutdown());
        let third = m.shutdown().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(first, second);
        assert_eq!(first, third);
        assert_eq!(first.stopped, names(&["once"]));
    }

    #[tokio::test]
    async fn wait_for_shutdown_sees_a_shutdown_started_elsewhere() {
        let m = ShutdownManager::new(Duration::from_secs(5));
        m.register("r", 0, || async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            Ok(())
        });
        let waiter = tokio::spawn({
            let m = m.clone();
            async move { m.wait_for_shutdown().await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "nothing started the shutdown yet");
        assert!(!m.is_shutting_down());
        let report = m.shutdown().await;
        assert_eq!(waiter.await.unwrap(), report);
        assert_eq!(report.stopped, names(&["r"]));
    }

    #[tokio::test]
    async fn the_token_fires_when_the_shutdown_starts() {
        let m = ShutdownManager::new(Duration::from_secs(5));
        let token = m.token();
        let seen = Arc::new(AtomicUsize::new(0));
        let s = Arc::clone(&seen);
        let t = token.clone();
        // The first resource to stop already sees the token fired.
        m.register("first", 0, move || async move {
            s.store(usize::from(t.is_cancelled()) + 1, Ordering::SeqCst);
            Ok(())
        });
        assert!(!token.is_cancelled());
        m.shutdown().await;
        assert!(token.is_cancelled());
        assert!(m.is_shutting_down());
        assert_eq!(seen.load(Ordering::SeqCst), 2, "fired before the first stop ran");
    }

    #[tokio::test]
    async fn late_registrations_are_stopped_at_once() {
        let m = ShutdownManager::new(Duration::from_secs(5));
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        m.register("slow", 0, move || async move {
            let _ = started_tx.send(());
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(())
        });
        m.register("last", 9, || async { Ok(()) });
        let running = tokio::spawn({
            let m = m.clone();
            async move { m.shutdown().await }
        });
        started_rx.await.unwrap();
        // While "slow" stops: joins it at once, before the later group.
        m.register("late", 100, || async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(())
        });
        let report = running.await.unwrap();
        assert_eq!(report.stopped, names(&["late", "slow", "last"]));

        // After the shutdown: stopped anyway, not reported.
        let (tx, rx) = tokio::sync::oneshot::channel();
        m.register("after", 0, move || async move {
            let _ = tx.send(());
            Ok(())
        });
        tokio::time::timeout(Duration::from_secs(1), rx).await.expect("stopped at once").unwrap();
        assert_eq!(m.wait_for_shutdown().await, report);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn sigterm_starts_the_shutdown_and_a_second_one_does_not_abort() {
        let m = ShutdownManager::new(Duration::from_secs(5));
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        m.register("slow", 0, move || async move {
            let _ = started_tx.send(());
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(())
        });
        m.shutdown_on_signals();
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).unwrap();
        started_rx.await.unwrap();
        // A second signal mid-shutdown is only logged: this process is still here to see the end.
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).unwrap();
        let report = tokio::time::timeout(Duration::from_secs(5), m.wait_for_shutdown()).await.unwrap();
        assert_eq!(report.stopped, names(&["slow"]));
    }
}
