//! A task's definition, its builder and its command line.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde::ser::Serializer;

use super::{Permissions, TaskRuntime};

/// How long an attempt may run when the definition does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// The delay between attempts when the definition does not say.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);
/// The priority when the definition does not say (0 to 100, higher runs first).
pub const DEFAULT_PRIORITY: u8 = 50;
/// The environment variable that names the Python interpreter (`python3` when unset).
pub const PYTHON_ENV: &str = "NETSCRIPT_PYTHON";

/// Starts the definition of the task `id` (kebab-case, such as `resize-images`).
pub fn define_task(id: &str) -> TaskBuilder {
    TaskBuilder {
        id: id.to_owned(),
        runtime: None,
        entrypoint: String::new(),
        args: Vec::new(),
        timeout: DEFAULT_TIMEOUT,
        retry: 0,
        retry_delay: DEFAULT_RETRY_DELAY,
        max_concurrency: 1,
        priority: DEFAULT_PRIORITY,
        permissions: None,
        env_allow: Vec::new(),
        env: Vec::new(),
        cwd: None,
        topic: "default".to_owned(),
        description: None,
    }
}

/// A definition that does not hold together; `field` is its name as in manifests.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("task `{task}`: {field}: {message}")]
pub struct TaskError {
    /// The task's id, as given.
    pub task: String,
    /// The field at fault, spelled as in manifests (`maxConcurrency`).
    pub field: &'static str,
    /// What is wrong and what is expected.
    pub message: String,
}

/// Builds a [`TaskDefinition`]; start with [`define_task`]. Every setter has a default but
/// [`runtime`](Self::runtime) and [`entrypoint`](Self::entrypoint).
#[derive(Clone)]
#[must_use = "call .build() to get the definition"]
pub struct TaskBuilder {
    id: String,
    runtime: Option<TaskRuntime>,
    entrypoint: String,
    args: Vec<String>,
    timeout: Duration,
    retry: u32,
    retry_delay: Duration,
    max_concurrency: usize,
    priority: u8,
    permissions: Option<Permissions>,
    env_allow: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
    topic: String,
    description: Option<String>,
}

impl fmt::Debug for TaskBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskBuilder").field("id", &self.id).field("runtime", &self.runtime).finish_non_exhaustive()
    }
}

impl TaskBuilder {
    /// What runs the entrypoint (required).
    pub fn runtime(mut self, runtime: TaskRuntime) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// The script, assembly or program (required); for [`TaskRuntime::Shell`] the script text.
    pub fn entrypoint(mut self, entrypoint: impl Into<String>) -> Self {
        self.entrypoint = entrypoint.into();
        self
    }

    /// Appends arguments passed after the entrypoint.
    pub fn args(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// How long one attempt may run (default 5 minutes); past it the process group is killed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many times a failed attempt is retried (default 0).
    pub fn retry(mut self, retries: u32) -> Self {
        self.retry = retries;
        self
    }

    /// The delay between attempts (default 1 second).
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// How many attempts of this task may run at once in one worker (default 1).
    pub fn max_concurrency(mut self, max: usize) -> Self {
        self.max_concurrency = max;
        self
    }

    /// 0 to 100, higher runs first (default 50).
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// What a Deno task may do. Without it a Deno task gets `--allow-all` and a warning.
    /// Other runtimes do not enforce permissions.
    pub fn permissions(mut self, permissions: Permissions) -> Self {
        self.permissions = Some(permissions);
        self
    }

    /// Appends names of variables copied from the worker's environment (runtimes other than
    /// Deno get no other variable of the worker's, not even `PATH` or `HOME`).
    pub fn env_allow(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.env_allow.extend(names.into_iter().map(Into::into));
        self
    }

    /// Sets a variable for the task (replacing an earlier value of the same name).
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        self.env.retain(|(n, _)| *n != name);
        self.env.push((name, value.into()));
        self
    }

    /// The working directory (default: the worker's).
    pub fn cwd(mut self, cwd: impl Into<PathBuf>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    /// The topic (worker group) the task runs in (default `default`).
    pub fn topic(mut self, topic: &str) -> Self {
        topic.clone_into(&mut self.topic);
        self
    }

    /// A sentence for people, shown by the API.
    pub fn description(mut self, description: &str) -> Self {
        self.description = Some(description.to_owned());
        self
    }

    /// Checks the definition; the error names the field at fault.
    pub fn build(self) -> Result<TaskDefinition, TaskError> {
        let fail = |field: &'static str, message: String| TaskError { task: self.id.clone(), field, message };
        if !is_kebab_case(&self.id) {
            return Err(fail(
                "id",
                "use lowercase letters and digits, words joined by single `-`, like `resize-images`".into(),
            ));
        }
        let Some(runtime) = self.runtime else {
            return Err(fail(
                "runtime",
                "not set: one of deno, python, dotnet, cmd, powershell, shell, executable".into(),
            ));
        };
        if self.entrypoint.trim().is_empty() {
            return Err(fail("entrypoint", "must not be empty".into()));
        }
        if self.timeout.is_zero() {
            return Err(fail("timeout", "must be longer than zero".into()));
        }
        if self.max_concurrency == 0 {
            return Err(fail("maxConcurrency", "must be at least 1".into()));
        }
        if self.priority > 100 {
            return Err(fail("priority", format!("must be 0 to 100, got {}", self.priority)));
        }
        if self.topic.trim().is_empty() {
            return Err(fail("topic", "must not be empty".into()));
        }
        if let Some(bad) = self.args.iter().find(|a| a.contains('\0')) {
            return Err(fail("args", format!("{bad:?} contains a NUL byte")));
        }
        if let Some(bad) = self.env_allow.iter().find(|n| !is_env_name(n)) {
            return Err(fail("envAllow", format!("{bad:?} is not a variable name")));
        }
        if let Some((name, _)) = self.env.iter().find(|(n, v)| !is_env_name(n) || v.contains('\0')) {
            return Err(fail("env", format!("{name:?}: a name without `=` or NUL, and a value without NUL")));
        }
        let permissions = self.resolve_permissions(runtime);
        Ok(TaskDefinition {
            id: self.id,
            runtime,
            entrypoint: self.entrypoint,
            args: self.args,
            timeout: self.timeout,
            retry: self.retry,
            retry_delay: self.retry_delay,
            max_concurrency: self.max_concurrency,
            priority: self.priority,
            permissions,
            env_allow: self.env_allow,
            env: self.env,
            cwd: self.cwd,
            topic: self.topic,
            description: self.description,
        })
    }

    fn resolve_permissions(&self, runtime: TaskRuntime) -> Permissions {
        match (&self.permissions, runtime) {
            (None, TaskRuntime::Deno) => {
                tracing::warn!(
                    task = %self.id,
                    "deno task `{}` has no permissions set: it runs with --allow-all; set a preset such as `minimal` to narrow it",
                    self.id
                );
                Permissions::all_access()
            }
            (None, _) => Permissions::all_access(),
            (Some(p), TaskRuntime::Deno) => p.clone(),
            (Some(p), other) => {
                if !p.all {
                    tracing::warn!(
                        task = %self.id,
                        "task `{}` sets permissions, but the {other} runtime cannot enforce them: only its environment and working directory are restricted",
                        self.id
                    );
                }
                p.clone()
            }
        }
    }
}

/// Lowercase letters and digits, words joined by single `-`.
pub fn is_kebab_case(s: &str) -> bool {
    s.split('-').all(|word| !word.is_empty() && word.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0'])
}

/// A task: a job whose code is an external program. Plain data; build one with
/// [`define_task`] or load it from a [manifest](super::load_manifests).
///
/// Its `Debug` and `Serialize` forms show the names of [`env`](Self::env) variables, never
/// their values.
#[derive(Clone)]
pub struct TaskDefinition {
    /// Unique kebab-case id; also the job id the task runs under.
    pub id: String,
    /// What runs the entrypoint.
    pub runtime: TaskRuntime,
    /// The script, assembly or program; for [`TaskRuntime::Shell`] the script text.
    pub entrypoint: String,
    /// Arguments after the entrypoint.
    pub args: Vec<String>,
    /// How long one attempt may run.
    pub timeout: Duration,
    /// How many times a failed attempt is retried.
    pub retry: u32,
    /// The delay between attempts.
    pub retry_delay: Duration,
    /// How many attempts may run at once in one worker (at least 1).
    pub max_concurrency: usize,
    /// 0 to 100, higher runs first.
    pub priority: u8,
    /// Deno's permissions (resolved: `all_access` when none were set). Not enforced by
    /// other runtimes.
    pub permissions: Permissions,
    /// Variables copied from the worker's environment (runtimes other than Deno).
    pub env_allow: Vec<String>,
    /// Variables set for the task.
    pub env: Vec<(String, String)>,
    /// The working directory; the worker's when `None`.
    pub cwd: Option<PathBuf>,
    /// The topic (worker group).
    pub topic: String,
    /// A sentence for people.
    pub description: Option<String>,
}

impl TaskDefinition {
    /// Attempts allowed in all: `retry + 1`.
    pub fn max_attempts(&self) -> u32 {
        self.retry.saturating_add(1)
    }

    /// Whether [`permissions`](Self::permissions) are enforced: only Deno does.
    pub fn permissions_enforced(&self) -> bool {
        self.runtime == TaskRuntime::Deno
    }

    /// The program and its arguments. No shell is involved unless the runtime is one.
    /// The program is as written here (`python3`); it is looked up in `PATH` when run.
    pub fn command(&self) -> (PathBuf, Vec<OsString>) {
        let entry = || OsString::from(&self.entrypoint);
        let (program, mut args): (PathBuf, Vec<OsString>) = match self.runtime {
            TaskRuntime::Deno => {
                let mut args = vec![OsString::from("run")];
                args.extend(self.permissions.deno_flags().into_iter().map(OsString::from));
                args.push(entry());
                ("deno".into(), args)
            }
            TaskRuntime::Python => {
                let python = std::env::var_os(PYTHON_ENV).filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".into());
                (python.into(), vec![entry()])
            }
            TaskRuntime::Dotnet => ("dotnet".into(), vec![entry()]),
            TaskRuntime::Cmd => ("cmd".into(), vec!["/C".into(), entry()]),
            TaskRuntime::Powershell => {
                ("pwsh".into(), vec!["-NoProfile".into(), "-NonInteractive".into(), "-File".into(), entry()])
            }
            TaskRuntime::Shell => ("sh".into(), vec!["-c".into(), entry(), "netscript-task".into()]),
            TaskRuntime::Executable => (self.entrypoint.clone().into(), Vec::new()),
        };
        args.extend(self.args.iter().map(OsString::from));
        (program, args)
    }
}

impl fmt::Debug for TaskDefinition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskDefinition")
            .field("id", &self.id)
            .field("runtime", &self.runtime)
            .field("entrypoint", &self.entrypoint)
            .field("args", &self.args)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("retry_delay", &self.retry_delay)
            .field("max_concurrency", &self.max_concurrency)
            .field("priority", &self.priority)
            .field("permissions", &self.permissions)
            .field("env_allow", &self.env_allow)
            .field("env (names)", &self.env_names())
            .field("cwd", &self.cwd)
            .field("topic", &self.topic)
            .field("description", &self.description)
            .finish()
    }
}

impl TaskDefinition {
    fn env_names(&self) -> Vec<&str> {
        self.env.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// The form `GET /api/v1/workers/tasks` shows: camelCase, durations in milliseconds,
/// `env` as names only.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TaskView<'a> {
    id: &'a str,
    runtime: TaskRuntime,
    entrypoint: &'a str,
    args: &'a [String],
    timeout_ms: u128,
    retry: u32,
    retry_delay_ms: u128,
    max_concurrency: usize,
    priority: u8,
    topic: &'a str,
    permissions: PermissionsView,
    env_allow: &'a [String],
    env: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cwd: Option<&'a std::path::Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
}

/// `enforced`: whether the runtime applies them (Deno only); `flags`: Deno's flags.
#[derive(Serialize)]
struct PermissionsView {
    enforced: bool,
    flags: Vec<String>,
}

impl Serialize for TaskDefinition {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        TaskView {
            id: &self.id,
            runtime: self.runtime,
            entrypoint: &self.entrypoint,
            args: &self.args,
            timeout_ms: self.timeout.as_millis(),
            retry: self.retry,
            retry_delay_ms: self.retry_delay.as_millis(),
            max_concurrency: self.max_concurrency,
            priority: self.priority,
            topic: &self.topic,
            permissions: PermissionsView {
                enforced: self.permissions_enforced(),
                flags: self.permissions.deno_flags(),
            },
            env_allow: &self.env_allow,
            env: self.env_names(),
            cwd: self.cwd.as_deref(),
            description: self.description.as_deref(),
        }
        .serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(runtime: TaskRuntime, entrypoint: &str) -> TaskDefinition {
        define_task("t").runtime(runtime).entrypoint(entrypoint).args(["a b", "c"]).build().unwrap()
    }

    fn strings(args: &[OsString]) -> Vec<&str> {
        args.iter().map(|a| a.to_str().unwrap()).collect()
    }

    #[test]
    fn command_line_per_runtime() {
        let cases: [(TaskRuntime, &str, &str, &[&str]); 6] = [
            (TaskRuntime::Dotnet, "app.dll", "dotnet", &["app.dll", "a b", "c"]),
            (TaskRuntime::Cmd, "job.bat", "cmd", &["/C", "job.bat", "a b", "c"]),
            (
                TaskRuntime::Powershell,
                "job.ps1",
                "pwsh",
                &["-NoProfile", "-NonInteractive", "-File", "job.ps1", "a b", "c"],
            ),
            (TaskRuntime::Shell, "echo \"$1\"", "sh", &["-c", "echo \"$1\"", "netscript-task", "a b", "c"]),
            (TaskRuntime::Executable, "./bin/job", "./bin/job", &["a b", "c"]),
            (TaskRuntime::Deno, "main.ts", "deno", &["run", "--allow-all", "main.ts", "a b", "c"]),
        ];
        for (runtime, entrypoint, program, args) in cases {
            let (p, a) = task(runtime, entrypoint).command();
            assert_eq!(p, PathBuf::from(program), "{runtime}");
            assert_eq!(strings(&a), args, "{runtime}");
        }
    }

    #[test]
    fn python_runs_python3_unless_overridden() {
        let (program, args) = task(TaskRuntime::Python, "job.py").command();
        let expected = std::env::var_os(PYTHON_ENV).filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".into());
        assert_eq!(program.as_os_str(), expected);
        assert_eq!(strings(&args), ["job.py", "a b", "c"]);
    }

    #[test]
    fn deno_gets_its_permission_flags_before_the_entrypoint() {
        let def = define_task("fetch-feeds")
            .runtime(TaskRuntime::Deno)
            .entrypoint("feeds.ts")
            .permissions(Permissions {
                net: super::super::Access::List(vec!["a.com".into(), "b.com".into()]),
                ..Permissions::read_only()
            })
            .args(["--fast"])
            .build()
            .unwrap();
        let (program, args) = def.command();
        assert_eq!(program, PathBuf::from("deno"));
        assert_eq!(strings(&args), ["run", "--allow-net=a.com,b.com", "--allow-read", "feeds.ts", "--fast"]);
        let minimal =
            define_task("m").runtime(TaskRuntime::Deno).entrypoint("m.ts").permissions(Permissions::minimal());
        assert_eq!(strings(&minimal.build().unwrap().command().1), ["run", "m.ts"]);
    }

    #[test]
    fn build_names_the_field_at_fault() {
        let ok = || define_task("resize-images").runtime(TaskRuntime::Python).entrypoint("resize.py");
        assert!(ok().build().is_ok());
        let field = |b: TaskBuilder| b.build().unwrap_err().field;
        for id in ["Resize", "resize--images", "-resize", "resize-", "", "resize_images", "résumé"] {
            let b = define_task(id).runtime(TaskRuntime::Python).entrypoint("resize.py");
            assert_eq!(field(b), "id", "{id:?}");
        }
        assert_eq!(field(define_task("x").entrypoint("a.py")), "runtime");
        assert_eq!(field(ok().entrypoint(" ")), "entrypoint");
        assert_eq!(field(ok().priority(101)), "priority");
        assert!(ok().priority(100).build().is_ok());
        assert_eq!(field(ok().max_concurrency(0)), "maxConcurrency");
        assert_eq!(field(ok().timeout(Duration::ZERO)), "timeout");
        assert_eq!(field(ok().topic("")), "topic");
        assert_eq!(field(ok().env_allow(["A=B"])), "envAllow");
        assert_eq!(field(ok().env("", "v")), "env");
        let err = ok().priority(150).build().unwrap_err().to_string();
        assert_eq!(err, "task `resize-images`: priority: must be 0 to 100, got 150");
    }

    #[test]
    fn defaults_and_resolved_permissions() {
        let def = define_task("t").runtime(TaskRuntime::Deno).entrypoint("t.ts").build().unwrap();
        assert_eq!(def.timeout, DEFAULT_TIMEOUT);
        assert_eq!((def.retry, def.max_attempts()), (0, 1));
        assert_eq!(def.retry_delay, DEFAULT_RETRY_DELAY);
        assert_eq!((def.max_concurrency, def.priority), (1, 50));
        assert_eq!(def.topic, "default");
        assert_eq!(def.permissions, Permissions::all_access());
        assert!(def.permissions_enforced());
    }

    #[test]
    fn env_values_are_never_shown() {
        let def = define_task("t")
            .runtime(TaskRuntime::Python)
            .entrypoint("t.py")
            .env("API_TOKEN", "s3cret")
            .env("API_TOKEN", "s3cret-2")
            .env_allow(["HOME"])
            .permissions(Permissions::network())
            .description("Does t.")
            .build()
            .unwrap();
        assert_eq!(def.env, [("API_TOKEN".to_owned(), "s3cret-2".to_owned())]);
        let json = serde_json::to_value(&def).unwrap();
        assert!(!json.to_string().contains("s3cret"));
        assert!(!format!("{def:?}").contains("s3cret"));
        assert_eq!(
            json,
            serde_json::json!({
                "id": "t", "runtime": "python", "entrypoint": "t.py", "args": [],
                "timeoutMs": 300_000, "retry": 0, "retryDelayMs": 1000, "maxConcurrency": 1,
                "priority": 50, "topic": "default",
                "permissions": {"enforced": false, "flags": ["--allow-net"]},
                "envAllow": ["HOME"], "env": ["API_TOKEN"], "description": "Does t."
            })
        );
    }
}
