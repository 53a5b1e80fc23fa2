//! Which program runs a task's entrypoint.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The language or launcher of a task; it decides the command line (see
/// [`TaskDefinition::command`](super::TaskDefinition::command)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskRuntime {
    /// `deno run <permission flags> <entrypoint> <args..>`; the only runtime that enforces
    /// [`Permissions`](super::Permissions).
    Deno,
    /// `python3 <entrypoint> <args..>` (the interpreter is `$NETSCRIPT_PYTHON` when set).
    Python,
    /// `dotnet <entrypoint> <args..>`, the entrypoint a `.dll`.
    Dotnet,
    /// `cmd /C <entrypoint> <args..>` (Windows).
    Cmd,
    /// `pwsh -NoProfile -NonInteractive -File <entrypoint> <args..>`.
    Powershell,
    /// `sh -c <entrypoint> netscript-task <args..>`: the entrypoint is the script text and
    /// the arguments are `$1`, `$2`, ...
    Shell,
    /// `<entrypoint> <args..>`: the entrypoint is the program itself.
    Executable,
}

impl TaskRuntime {
    /// Every runtime, in the order of its documentation.
    pub const ALL: [Self; 7] =
        [Self::Deno, Self::Python, Self::Dotnet, Self::Cmd, Self::Powershell, Self::Shell, Self::Executable];

    /// The runtime's name, as in manifests: `deno`, `python`, ...
    pub fn name(self) -> &'static str {
        match self {
            Self::Deno => "deno",
            Self::Python => "python",
            Self::Dotnet => "dotnet",
            Self::Cmd => "cmd",
            Self::Powershell => "powershell",
            Self::Shell => "shell",
            Self::Executable => "executable",
        }
    }
}

impl fmt::Display for TaskRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A runtime name that is none of [`TaskRuntime::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown task runtime `{name}`: expected one of deno, python, dotnet, cmd, powershell, shell, executable")]
pub struct UnknownRuntime {
    /// The name given.
    pub name: String,
}

impl FromStr for TaskRuntime {
    type Err = UnknownRuntime;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|r| r.name() == s).ok_or_else(|| UnknownRuntime { name: s.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_from_str_and_serde() {
        for runtime in TaskRuntime::ALL {
            assert_eq!(runtime.name().parse::<TaskRuntime>(), Ok(runtime));
            let json = serde_json::to_string(&runtime).unwrap();
            assert_eq!(json, format!("\"{runtime}\""));
            assert_eq!(serde_json::from_str::<TaskRuntime>(&json).unwrap(), runtime);
        }
        let err = "ruby".parse::<TaskRuntime>().unwrap_err();
        assert!(err.to_string().contains("`ruby`") && err.to_string().contains("executable"), "{err}");
        assert!("Python".parse::<TaskRuntime>().is_err());
    }
}
