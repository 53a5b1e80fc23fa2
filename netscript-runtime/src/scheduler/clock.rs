use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// A future returned by [`Clock::sleep_until`].
pub type SleepFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Where the scheduler reads the time and how it waits for a fire time.
///
/// [`SystemClock`] is the real one. [`ManualClock`] only moves when told to, so tests of
/// schedules run fast and give the same result every time.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;

    /// Resolves once [`now`](Self::now) is at or after `deadline`.
    fn sleep_until(&self, deadline: DateTime<Utc>) -> SleepFuture;
}

/// The system's wall clock.
///
/// Waits in steps of at most [`SystemClock::MAX_STEP`] and re-reads the wall clock after each,
/// so a clock that is set forward or a machine that slept does not delay fires by long.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl SystemClock {
    /// The longest single wait before the wall clock is read again.
    pub const MAX_STEP: Duration = Duration::from_secs(30);
}

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::from(SystemTime::now())
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> SleepFuture {
        Box::pin(async move {
            loop {
                let Ok(left) = (deadline - SystemClock.now()).to_std() else { return };
                if left.is_zero() {
                    return;
                }
                tokio::time::sleep(left.min(Self::MAX_STEP)).await;
            }
        })
    }
}

/// A clock that moves only when told to: [`advance`](Self::advance) or [`set`](Self::set).
///
/// Moving it wakes every wait whose deadline has come, so the scheduler fires the ticks that
/// became due. Share one (in an `Arc`) between several schedulers to drive them together.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use netscript_runtime::scheduler::{Clock, ManualClock};
///
/// let clock = ManualClock::new("2026-01-01T00:00:00Z".parse().unwrap());
/// clock.advance(Duration::from_secs(90));
/// assert_eq!(clock.now().to_rfc3339(), "2026-01-01T00:01:30+00:00");
/// ```
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self { now: watch::Sender::new(start) }
    }

    /// Moves the clock to `instant` (backwards too, though nothing already fired un-fires).
    pub fn set(&self, instant: DateTime<Utc>) {
        self.now.send_replace(instant);
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        // A `Duration` too large for chrono saturates at the largest step it can take.
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        self.now.send_modify(|now| *now = now.checked_add_signed(by).unwrap_or(DateTime::<Utc>::MAX_UTC));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> SleepFuture {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock; if it is gone, nothing will ever move it.
            if rx.wait_for(|now| *now >= deadline).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_advanced() {
        let clock = ManualClock::new("2026-01-01T00:00:00Z".parse().unwrap());
        let deadline = clock.now() + chrono::Duration::seconds(60);
        let sleeper = tokio::spawn(clock.sleep_until(deadline));
        clock.advance(Duration::from_secs(59));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(5), sleeper).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn system_clock_returns_at_once_for_a_past_deadline() {
        let past = SystemClock.now() - chrono::Duration::seconds(1);
        tokio::time::timeout(Duration::from_secs(1), SystemClock.sleep_until(past)).await.unwrap();
    }
}
