use std::collections::HashMap;

use super::{JobDescriptor, StateMap};

/// Every job in the binary, collected at link time by `#[job]`.
///
/// A crate whose only use is registering jobs is dropped by the linker unless something
/// refers to it: add `use that_crate as _;` to the binary.
#[linkme::distributed_slice]
pub static JOBS: [JobDescriptor];

/// A problem with the set of registered jobs, found at startup.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    /// Two jobs share an id.
    #[error("two jobs have the id `{id}`: one in {first}, one in {second}; job ids must be unique in a binary")]
    DuplicateId {
        /// The shared id.
        id: &'static str,
        /// Where the first was declared.
        first: String,
        /// Where the second was declared.
        second: String,
    },
    /// A job asks for state that was not registered on the runtime builder.
    #[error(
        "job `{job}` asks for `State<{type_name}>`, but no `{type_name}` was registered; \
         add `.state(value)` to the runtime builder"
    )]
    MissingState {
        /// The job's id.
        job: &'static str,
        /// The state type.
        type_name: &'static str,
    },
}

/// The jobs a runtime can run, by id.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    jobs: Vec<&'static JobDescriptor>,
    by_id: HashMap<&'static str, usize>,
}

impl Registry {
    /// The jobs registered with `#[job]` in this binary.
    pub fn linked() -> Result<Self, RegistryError> {
        Self::new(JOBS.iter())
    }

    /// A registry of the given jobs; fails on a duplicate id.
    pub fn new(jobs: impl IntoIterator<Item = &'static JobDescriptor>) -> Result<Self, RegistryError> {
        let mut registry = Registry::default();
        for job in jobs {
            if let Some(&i) = registry.by_id.get(job.id) {
                return Err(RegistryError::DuplicateId {
                    id: job.id,
                    first: registry.jobs[i].location.to_string(),
                    second: job.location.to_string(),
                });
            }
            registry.by_id.insert(job.id, registry.jobs.len());
            registry.jobs.push(job);
        }
        registry.jobs.sort_by_key(|j| j.id);
        for (i, job) in registry.jobs.iter().enumerate() {
            registry.by_id.insert(job.id, i);
        }
        Ok(registry)
    }

    /// The job with this id.
    pub fn get(&self, id: &str) -> Option<&'static JobDescriptor> {
        self.by_id.get(id).map(|&i| self.jobs[i])
    }

    /// All jobs, sorted by id.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &'static JobDescriptor> + '_ {
        self.jobs.iter().copied()
    }

    /// Number of jobs.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// `true` when no job is registered.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// The distinct topics of the registered jobs.
    pub fn topics(&self) -> Vec<&'static str> {
        let mut topics: Vec<_> = self.jobs.iter().map(|j| j.topic).collect();
        topics.sort_unstable();
        topics.dedup();
        topics
    }

    /// Checks that every `State<T>` a job asks for is in `states`.
    pub fn check_states(&self, states: &StateMap) -> Result<(), RegistryError> {
        for job in &self.jobs {
            for spec in job.states {
                if !states.contains((spec.type_id)()) {
                    return Err(RegistryError::MissingState { job: job.id, type_name: (spec.type_name)() });
                }
            }
        }
        Ok(())
    }
}
