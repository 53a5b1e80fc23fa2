//! The job catalogue in the shared store: `POST /api/v1/workers/seed` (or the `seed` command)
//! writes what this binary runs (its jobs, with their payload schemas, and its polyglot tasks)
//! under `("catalogue", "jobs" | "tasks", id)`, so that dashboards and the API processes of
//! other binaries on the same store can list every job of the system
//! (`GET /api/v1/workers/jobs?source=store`). Seeding again overwrites this binary's entries
//! and leaves the others'.

use serde::Serialize;

use crate::api::JobInfo;
use crate::kv::{Key, KvError, ListOptions};
use crate::runtime::Runtime;

/// The first part of every catalogue key.
pub const CATALOGUE_PREFIX: &str = "catalogue";

/// How many entries a seed wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Seeded {
    /// Jobs (tasks included, since each is a job too).
    pub jobs: usize,
    /// Polyglot tasks.
    pub tasks: usize,
}

/// Writes this runtime's jobs and tasks to the catalogue of its store.
pub async fn seed(rt: &Runtime) -> Result<Seeded, KvError> {
    let kv = rt.store().kv();
    let mut seeded = Seeded::default();
    for job in rt.registry().iter() {
        // Serializing plain data with string keys cannot fail.
        let value = serde_json::to_vec(&JobInfo::of(job)).unwrap_or_default();
        kv.set(Key::from((CATALOGUE_PREFIX, "jobs", job.id)), value).await?;
        seeded.jobs += 1;
    }
    for task in rt.tasks().iter() {
        let value = serde_json::to_vec(task.as_ref()).unwrap_or_default();
        kv.set(Key::from((CATALOGUE_PREFIX, "tasks", task.id.as_str())), value).await?;
        seeded.tasks += 1;
    }
    Ok(seeded)
}

/// The jobs seeded in the store by every binary, by id.
pub async fn jobs(rt: &Runtime) -> Result<Vec<serde_json::Value>, KvError> {
    let options = ListOptions::prefix(Key::from((CATALOGUE_PREFIX, "jobs"))).limit(100_000);
    let entries = rt.store().kv().list(options).await?;
    Ok(entries.into_iter().filter_map(|e| serde_json::from_slice(&e.value).ok()).collect())
}
