//! What a Deno task may do: Deno's `--allow-*` flags, as data.
//!
//! Only the Deno runtime enforces these. Python, .NET, shells and executables run with the
//! rights of the worker's user; what limits them is the environment scrubbing and the working
//! directory (see the [module docs](super)).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// Access to one capability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// All of it (`true`: `--allow-net`) or none (`false`: no flag).
    Allow(bool),
    /// Only these hosts, paths, variables or programs (`--allow-net=a.com,b.com`); an empty
    /// list allows nothing.
    List(Vec<String>),
}

impl Default for Access {
    fn default() -> Self {
        Self::Allow(false)
    }
}

impl Access {
    /// The flag for capability `name`, if this grants anything.
    fn flag(&self, name: &str) -> Option<String> {
        match self {
            Self::Allow(true) => Some(format!("--allow-{name}")),
            Self::Allow(false) => None,
            Self::List(items) if items.is_empty() => None,
            Self::List(items) => Some(format!("--allow-{name}={}", items.join(","))),
        }
    }
}

/// What a Deno task may do. [`Permissions::default`] allows nothing.
///
/// A task defined without permissions gets [`Permissions::all_access`] (and a warning);
/// [`minimal`](Self::minimal) is the explicit way to allow nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Everything (`--allow-all`); the capabilities below are then ignored.
    pub all: bool,
    /// Network access (`--allow-net`), optionally to these hosts.
    pub net: Access,
    /// Reading files (`--allow-read`), optionally under these paths.
    pub read: Access,
    /// Writing files (`--allow-write`), optionally under these paths.
    pub write: Access,
    /// Environment variables (`--allow-env`), optionally only these.
    pub env: Access,
    /// Running subprocesses (`--allow-run`), optionally only these programs.
    pub run: Access,
    /// Native libraries (`--allow-ffi`), optionally only these.
    pub ffi: Access,
    /// Importing code from the network (`--allow-import`), optionally only from these hosts.
    pub import: Access,
}

/// The preset names [`Permissions::preset`] knows.
pub const PRESETS: [&str; 8] =
    ["minimal", "none", "network", "filesystem", "read-only", "subprocess", "full", "all-access"];

/// A preset name that is none of [`PRESETS`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown permission preset `{name}`: expected one of minimal, none, network, filesystem, read-only, subprocess, full, all-access"
)]
pub struct UnknownPreset {
    /// The name given.
    pub name: String,
}

impl Permissions {
    /// Nothing allowed: no flags at all (unlike leaving permissions out, which allows all).
    pub fn minimal() -> Self {
        Self::default()
    }

    /// Nothing allowed; the same as [`minimal`](Self::minimal).
    pub fn none() -> Self {
        Self::default()
    }

    /// Network access only.
    pub fn network() -> Self {
        Self { net: Access::Allow(true), ..Self::default() }
    }

    /// Reading and writing files.
    pub fn filesystem() -> Self {
        Self { read: Access::Allow(true), write: Access::Allow(true), ..Self::default() }
    }

    /// Reading files only.
    pub fn read_only() -> Self {
        Self { read: Access::Allow(true), ..Self::default() }
    }

    /// Running subprocesses only.
    pub fn subprocess() -> Self {
        Self { run: Access::Allow(true), ..Self::default() }
    }

    /// Every capability, each with its own flag (so a later Deno capability is not granted).
    pub fn full() -> Self {
        let yes = || Access::Allow(true);
        Self { all: false, net: yes(), read: yes(), write: yes(), env: yes(), run: yes(), ffi: yes(), import: yes() }
    }

    /// `--allow-all`: everything, including capabilities Deno adds later.
    pub fn all_access() -> Self {
        Self { all: true, ..Self::default() }
    }

    /// The preset called `name` (one of [`PRESETS`]; `read_only` and `all_access` work too).
    pub fn preset(name: &str) -> Result<Self, UnknownPreset> {
        match name {
            "minimal" => Ok(Self::minimal()),
            "none" => Ok(Self::none()),
            "network" => Ok(Self::network()),
            "filesystem" => Ok(Self::filesystem()),
            "read-only" | "read_only" => Ok(Self::read_only()),
            "subprocess" => Ok(Self::subprocess()),
            "full" => Ok(Self::full()),
            "all-access" | "all_access" => Ok(Self::all_access()),
            _ => Err(UnknownPreset { name: name.to_owned() }),
        }
    }

    /// The `deno run` flags, in the order net, read, write, env, run, ffi, import.
    pub fn deno_flags(&self) -> Vec<String> {
        if self.all {
            return vec!["--allow-all".to_owned()];
        }
        self.capabilities().into_iter().filter_map(|(name, access)| access.flag(name)).collect()
    }

    fn capabilities(&self) -> [(&'static str, &Access); 7] {
        [
            ("net", &self.net),
            ("read", &self.read),
            ("write", &self.write),
            ("env", &self.env),
            ("run", &self.run),
            ("ffi", &self.ffi),
            ("import", &self.import),
        ]
    }
}

/// In manifests: a preset name (`"network"`) or an object of capabilities
/// (`{"net": true, "read": ["./data"]}`, and `"all": true`).
impl<'de> Deserialize<'de> for Permissions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PermissionsVisitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PermissionsObject {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    net: Access,
    #[serde(default)]
    read: Access,
    #[serde(default)]
    write: Access,
    #[serde(default)]
    env: Access,
    #[serde(default)]
    run: Access,
    #[serde(default)]
    ffi: Access,
    #[serde(default)]
    import: Access,
}

struct PermissionsVisitor;

impl<'de> Visitor<'de> for PermissionsVisitor {
    type Value = Permissions;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a preset name such as \"network\" or an object such as {\"net\": true, \"read\": [\"./data\"]}")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Permissions, E> {
        Permissions::preset(name).map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Permissions, A::Error> {
        let o = PermissionsObject::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(Permissions {
            all: o.all,
            net: o.net,
            read: o.read,
            write: o.write,
            env: o.env,
            run: o.run,
            ffi: o.ffi,
            import: o.import,
        })
    }
}

/// `true`, `false` or a list of strings.
impl<'de> Deserialize<'de> for Access {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AccessVisitor)
    }
}

struct AccessVisitor;

impl<'de> Visitor<'de> for AccessVisitor {
    type Value = Access;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("true, false or a list of strings such as [\"example.com\"]")
    }

    fn visit_bool<E: de::Error>(self, allow: bool) -> Result<Access, E> {
        Ok(Access::Allow(allow))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Access, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<String>()? {
            items.push(item);
        }
        Ok(Access::List(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_give_their_flags() {
        let flags = |name: &str| Permissions::preset(name).unwrap().deno_flags();
        assert!(flags("minimal").is_empty());
        assert!(flags("none").is_empty());
        assert_eq!(flags("network"), ["--allow-net"]);
        assert_eq!(flags("filesystem"), ["--allow-read", "--allow-write"]);
        assert_eq!(flags("read-only"), ["--allow-read"]);
        assert_eq!(flags("read_only"), ["--allow-read"]);
        assert_eq!(flags("subprocess"), ["--allow-run"]);
        assert_eq!(
            flags("full"),
            [
                "--allow-net",
                "--allow-read",
                "--allow-write",
                "--allow-env",
                "--allow-run",
                "--allow-ffi",
                "--allow-import"
            ]
        );
        assert_eq!(flags("all-access"), ["--allow-all"]);
        for name in PRESETS {
            assert!(Permissions::preset(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn unknown_preset_lists_the_names() {
        let err = Permissions::preset("everything").unwrap_err().to_string();
        assert!(err.contains("`everything`"), "{err}");
        for name in PRESETS {
            assert!(err.contains(name), "{err} lacks {name}");
        }
    }

    #[test]
    fn allowlists_become_flag_values() {
        let p = Permissions {
            net: Access::List(vec!["a.com".into(), "b.com:8080".into()]),
            read: Access::List(vec![]),
            env: Access::Allow(true),
            write: Access::Allow(false),
            ..Permissions::minimal()
        };
        assert_eq!(p.deno_flags(), ["--allow-net=a.com,b.com:8080", "--allow-env"]);
        // `all` wins over everything else.
        let p = Permissions { all: true, net: Access::Allow(true), ..Permissions::minimal() };
        assert_eq!(p.deno_flags(), ["--allow-all"]);
    }

    #[test]
    fn deserializes_from_a_preset_name_or_an_object() {
        let p: Permissions = serde_json::from_str(r#""network""#).unwrap();
        assert_eq!(p, Permissions::network());
        let p: Permissions = serde_json::from_str(r#"{"net": true, "read": ["./data"], "run": false}"#).unwrap();
        assert_eq!(
            p,
            Permissions {
                net: Access::Allow(true),
                read: Access::List(vec!["./data".into()]),
                ..Permissions::minimal()
            }
        );
        let p: Permissions = serde_json::from_str(r#"{"all": true}"#).unwrap();
        assert_eq!(p, Permissions::all_access());
        let err = serde_json::from_str::<Permissions>(r#"{"network": true}"#).unwrap_err().to_string();
        assert!(err.contains("unknown field `network`"), "{err}");
        let err = serde_json::from_str::<Permissions>(r#"{"net": "a.com"}"#).unwrap_err().to_string();
        assert!(err.contains("true, false or a list of strings"), "{err}");
        let err = serde_json::from_str::<Permissions>(r#""sandbox""#).unwrap_err().to_string();
        assert!(err.contains("unknown permission preset `sandbox`"), "{err}");
        assert!(serde_json::from_str::<Permissions>("3").is_err());
    }
}
