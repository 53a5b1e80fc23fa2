use std::collections::BTreeMap;

use serde::Serialize;

use crate::job::Backoff;

/// What to do, on start, about ticks that passed while no scheduler was running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MissedTicks {
    /// Forget them: the schedule resumes at its next tick after the start. The default.
    #[default]
    Skip,
    /// Fire once, at start, for the most recent missed tick (however many were missed). Needs
    /// a tick recorded by an earlier run: a schedule that never fired has missed nothing.
    FireOnce,
}

/// How a schedule behaves. `ScheduleOptions::default()` fires on every tick, skips missed
/// ticks, and retries a failing handler 3 times with exponential backoff from 1 s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleOptions {
    /// Also fire once as soon as the schedule is added (in every process that adds it).
    pub run_on_init: bool,
    /// A disabled schedule is listed and can be triggered by hand, but does not fire on its
    /// own.
    pub enabled: bool,
    /// Further attempts after a handler fails (0: none).
    pub max_retries: u32,
    /// The wait before each further attempt, measured on the scheduler's clock.
    pub backoff: Backoff,
    /// Free-form labels, shown by listings.
    pub metadata: BTreeMap<String, String>,
    /// The missed-tick policy.
    pub missed: MissedTicks,
    /// What the schedule is for, shown by listings.
    pub description: Option<String>,
    /// Tags, shown by listings.
    pub tags: Vec<String>,
}

impl Default for ScheduleOptions {
    fn default() -> Self {
        Self {
            run_on_init: false,
            enabled: true,
            max_retries: 3,
            backoff: Backoff::default(),
            metadata: BTreeMap::new(),
            missed: MissedTicks::Skip,
            description: None,
            tags: Vec::new(),
        }
    }
}
