//! Task manifests: `<dir>/vX.Y.Z.json` files, the highest version in force.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::{Permissions, TaskDefinition, TaskError, TaskRuntime, define_task};

/// Where manifests conventionally live, relative to the application's root.
pub const MANIFEST_DIR: &str = "workers/runtime/tasks";

/// A manifest that cannot be used. Every message names the file, and the field when one is
/// at fault (`tasks[1].timeout`).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The directory or the file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A `v….json` file whose name is not a semantic version.
    #[error("{}: the file name is not a version such as v1.2.0.json: {source}", path.display())]
    Version {
        /// The file.
        path: PathBuf,
        /// Why.
        source: semver::Error,
    },
    /// The file is not JSON.
    #[error("{}: not valid JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// Where and why.
        source: serde_json::Error,
    },
    /// A field is missing, unknown or wrong.
    #[error("{}: {field}: {message}", path.display())]
    Field {
        /// The file.
        path: PathBuf,
        /// Where in the file, such as `tasks[1].timeout` (`.` for the whole file).
        field: String,
        /// What is wrong and what is expected.
        message: String,
        /// Where in the file, from 1 (0 when the fault is not at one place, such as a
        /// value out of range found after decoding).
        line: usize,
        /// The column on that line, from 1 (0 as for `line`).
        column: usize,
    },
    /// Two tasks in the file have the same id.
    #[error("{}: tasks[{first}] and tasks[{second}] have the same id `{id}`", path.display())]
    DuplicateId {
        /// The file.
        path: PathBuf,
        /// The id.
        id: String,
        /// The index of the first task with it.
        first: usize,
        /// The index of the second.
        second: usize,
    },
}

/// Loads the tasks of the highest-versioned manifest `<dir>/vX.Y.Z.json`.
///
/// A missing directory, or one without manifests, gives no tasks. Files whose names do not
/// start with `v` and a digit or do not end in `.json` are ignored; a name that does but is
/// not a semantic version (`v1.2.json`) is an error. Only the highest version is read.
pub fn load_manifests(dir: &Path) -> Result<Vec<TaskDefinition>, ManifestError> {
    match latest_manifest(dir)? {
        Some(path) => {
            let text =
                std::fs::read_to_string(&path).map_err(|source| ManifestError::Io { path: path.clone(), source })?;
            parse_manifest(&path, &text)
        }
        None => Ok(Vec::new()),
    }
}

/// The path of the highest-versioned manifest in `dir`, if any.
pub fn latest_manifest(dir: &Path) -> Result<Option<PathBuf>, ManifestError> {
    let io_error = |source| ManifestError::Io { path: dir.to_owned(), source };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(e)),
    };
    let mut best: Option<(semver::Version, PathBuf)> = None;
    for entry in entries {
        let entry = entry.map_err(io_error)?;
        let name = entry.file_name();
        let Some(version) = name.to_str().and_then(version_text) else { continue };
        let path = dir.join(&name);
        let version =
            semver::Version::parse(version).map_err(|source| ManifestError::Version { path: path.clone(), source })?;
        if best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, path));
        }
    }
    Ok(best.map(|(_, path)| path))
}

/// `1.2.0` for `v1.2.0.json`; `None` for names that do not look like a version.
fn version_text(name: &str) -> Option<&str> {
    let version = name.strip_prefix('v')?.strip_suffix(".json")?;
    version.starts_with(|c: char| c.is_ascii_digit()).then_some(version)
}

/// A decoding error as [`ManifestError::Json`] (bad syntax) or [`ManifestError::Field`].
fn field_error(path: &Path, e: serde_path_to_error::Error<serde_json::Error>) -> ManifestError {
    let field = e.path().to_string();
    let inner = e.into_inner();
    if inner.is_syntax() || inner.is_eof() {
        return ManifestError::Json { path: path.to_owned(), source: inner };
    }
    let (line, column) = (inner.line(), inner.column());
    let message = inner.to_string();
    // The position is kept apart so the message reads `<file>: <field>: <what is wrong>`.
    let suffix = format!(" at line {line} column {column}");
    let message = message.strip_suffix(&suffix).map(str::to_owned).unwrap_or(message);
    ManifestError::Field { path: path.to_owned(), field, message, line, column }
}

/// Reads the tasks of one manifest; `path` is for messages.
pub fn parse_manifest(path: &Path, text: &str) -> Result<Vec<TaskDefinition>, ManifestError> {
    // Straight from the text rather than through `serde_json::Value`, which would keep only
    // the last of two fields with the same name.
    let mut de = serde_json::Deserializer::from_str(text);
    let file: ManifestFile = serde_path_to_error::deserialize(&mut de).map_err(|e| field_error(path, e))?;
    de.end().map_err(|source| ManifestError::Json { path: path.to_owned(), source })?;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut tasks = Vec::with_capacity(file.tasks.len());
    for (index, task) in file.tasks.into_iter().enumerate() {
        if let Some(&first) = seen.get(&task.id) {
            return Err(ManifestError::DuplicateId { path: path.to_owned(), id: task.id, first, second: index });
        }
        seen.insert(task.id.clone(), index);
        let def = task.build().map_err(|e: TaskError| ManifestError::Field {
            path: path.to_owned(),
            field: format!("tasks[{index}].{}", e.field),
            message: e.message,
            line: 0,
            column: 0,
        })?;
        tasks.push(def);
    }
    Ok(tasks)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    tasks: Vec<ManifestTask>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ManifestTask {
    id: String,
    runtime: TaskRuntime,
    entrypoint: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default, deserialize_with = "duration")]
    timeout: Option<Duration>,
    retry: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    retry_delay: Option<Duration>,
    max_concurrency: Option<usize>,
    priority: Option<u8>,
    permissions: Option<Permissions>,
    #[serde(default)]
    env_allow: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    topic: Option<String>,
    description: Option<String>,
}

impl ManifestTask {
    fn build(self) -> Result<TaskDefinition, TaskError> {
        let mut b = define_task(&self.id).runtime(self.runtime).entrypoint(self.entrypoint).args(self.args);
        if let Some(t) = self.timeout {
            b = b.timeout(t);
        }
        if let Some(r) = self.retry {
            b = b.retry(r);
        }
        if let Some(d) = self.retry_delay {
            b = b.retry_delay(d);
        }
        if let Some(m) = self.max_concurrency {
            b = b.max_concurrency(m);
        }
        if let Some(p) = self.priority {
            b = b.priority(p);
        }
        if let Some(p) = self.permissions {
            b = b.permissions(p);
        }
        b = b.env_allow(self.env_allow);
        for (name, value) in self.env {
            b = b.env(name, value);
        }
        if let Some(cwd) = self.cwd {
            b = b.cwd(cwd);
        }
        if let Some(topic) = &self.topic {
            b = b.topic(topic);
        }
        if let Some(description) = &self.description {
            b = b.description(description);
        }
        b.build()
    }
}

/// A duration written as text: `"30s"`, `"5m"`, `"1h 30m"`, `"250ms"`.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    deserializer.deserialize_any(DurationVisitor).map(Some)
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"30s\"")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        humantime::parse_duration(text).map_err(|_| E::custom(format!("{text:?} is not a duration such as 30s")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names() {
        assert_eq!(version_text("v1.2.0.json"), Some("1.2.0"));
        assert_eq!(version_text("v1.2.json"), Some("1.2"));
        assert_eq!(version_text("v10.0.0-rc.1.json"), Some("10.0.0-rc.1"));
        assert_eq!(version_text("vnext.json"), None);
        assert_eq!(version_text("tasks.json"), None);
        assert_eq!(version_text("v1.2.0.yaml"), None);
        assert_eq!(version_text("V1.2.0.json"), None);
    }

    #[test]
    fn durations_read_as_text() {
        let read = |json: &str| {
            let mut de = serde_json::Deserializer::from_str(json);
            duration(&mut de).map_err(|e| e.to_string())
        };
        assert_eq!(read("\"30s\""), Ok(Some(Duration::from_secs(30))));
        assert_eq!(read("\"1h 30m\""), Ok(Some(Duration::from_secs(5400))));
        assert!(read("\"3 parsecs\"").unwrap_err().starts_with("\"3 parsecs\" is not a duration such as 30s"));
        assert!(read("30").unwrap_err().contains("a duration such as \"30s\""));
    }
}
