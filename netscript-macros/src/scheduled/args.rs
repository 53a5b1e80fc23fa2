//! The arguments of `#[scheduled(...)]`: parsed into literals first ([`ScheduleArgs::parse`]),
//! then checked ([`ScheduleArgs::validate`]): the cron expression and the timezone with the
//! runtime's own parser (`netscript-cron`), so an invalid one is an error at its literal.

use proc_macro2::{Span, TokenStream};
use syn::meta::ParseNestedMeta;
use syn::{LitBool, LitInt, LitStr};

use crate::errors::Errors;
use crate::job::args::{
    Backoff, check_value, doc_comment, expect_bool, expect_int, expect_str, expect_str_array, kebab_suggestion,
    next_argument, parse_arguments, parse_backoff_lit, parse_retries, validate_kebab_id, validate_tags,
};

/// The arguments `#[scheduled]` knows, each with an example for error messages.
const KNOWN: &[(&str, &str)] = &[
    ("id", r#"id = "daily-resync""#),
    ("cron", r#"cron = "0 6 * * *""#),
    ("timezone", r#"timezone = "Europe/Berlin""#),
    ("description", r#"description = "Re-imports the catalogue""#),
    ("tags", r#"tags = ["resync"]"#),
    ("retries", "retries = 3"),
    ("backoff", r#"backoff = "exponential(1s)""#),
    ("missed", r#"missed = "fire-once""#),
    ("run_on_init", "run_on_init = true"),
    ("enabled", "enabled = false"),
];

/// The arguments as written, each given at most once.
#[derive(Default)]
pub(crate) struct ScheduleArgs {
    id: Option<LitStr>,
    cron: Option<LitStr>,
    timezone: Option<LitStr>,
    description: Option<LitStr>,
    tags: Option<Vec<LitStr>>,
    retries: Option<LitInt>,
    backoff: Option<LitStr>,
    missed: Option<LitStr>,
    run_on_init: Option<LitBool>,
    enabled: Option<LitBool>,
    seen: Vec<String>,
    incomplete: bool,
}

/// The schedule's settings, checked and with defaults applied.
pub(crate) struct ScheduleConfig {
    pub(crate) id: LitStr,
    pub(crate) cron: String,
    pub(crate) timezone: String,
    pub(crate) description: String,
    pub(crate) tags: Vec<String>,
    pub(crate) retries: u32,
    pub(crate) backoff: Backoff,
    pub(crate) missed: Missed,
    pub(crate) run_on_init: bool,
    pub(crate) enabled: bool,
}

/// The missed-tick policy, mirroring the runtime's `MissedTicks`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Missed {
    Skip,
    FireOnce,
}

impl Missed {
    /// The runtime's variant name.
    pub(crate) fn variant(self) -> &'static str {
        match self {
            Missed::Skip => "Skip",
            Missed::FireOnce => "FireOnce",
        }
    }
}

impl ScheduleArgs {
    /// Parses `id = "...", cron = "...", ...`; only broken syntax stops parsing.
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> Self {
        let mut args = ScheduleArgs::default();
        args.incomplete = !parse_arguments(tokens, errors, |meta, errors| args.parse_one(meta, errors));
        args
    }

    fn parse_one(&mut self, meta: &ParseNestedMeta, errors: &mut Errors) -> syn::Result<()> {
        let Some((name, example, value)) = next_argument(meta, KNOWN, &mut self.seen, errors)? else {
            return Ok(());
        };
        let string = || expect_str(&value, name, example);
        match name {
            "id" => self.id = errors.ok(string()),
            "cron" => self.cron = errors.ok(string()),
            "timezone" => self.timezone = errors.ok(string()),
            "description" => self.description = errors.ok(string()),
            "tags" => self.tags = errors.ok(expect_str_array(&value, example)),
            "retries" => self.retries = errors.ok(expect_int(&value, name, example)),
            "backoff" => self.backoff = errors.ok(string()),
            "missed" => self.missed = errors.ok(string()),
            "run_on_init" => self.run_on_init = errors.ok(expect_bool(&value, name, example)),
            "enabled" => self.enabled = errors.ok(expect_bool(&value, name, example)),
            _ => unreachable!("every name in KNOWN is handled"),
        }
        Ok(())
    }

    /// Checks the values (the expression and the timezone too) and applies defaults.
    pub(crate) fn validate(self, func: &syn::ItemFn, errors: &mut Errors) -> Option<ScheduleConfig> {
        let fn_name = syn::ext::IdentExt::unraw(&func.sig.ident).to_string();
        let mut failed = false;
        let mut check = |result: syn::Result<()>| {
            if let Err(e) = result {
                errors.push(e);
                failed = true;
            }
        };
        let given = |name: &str| self.incomplete || self.seen.iter().any(|seen| seen == name);

        let id = match &self.id {
            Some(id) => {
                check(validate_id(id));
                Some(id.clone())
            }
            None if given("id") => None,
            None => {
                let example = kebab_suggestion(&fn_name).unwrap_or_else(|| "daily-resync".to_owned());
                check(Err(syn::Error::new(
                    Span::call_site(),
                    format!(
                        "missing schedule id: add `id = \"{example}\"` (a unique kebab-case id) to `#[scheduled(...)]`"
                    ),
                )));
                None
            }
        };

        let cron = match &self.cron {
            Some(lit) => {
                if let Err(e) = netscript_cron::parse_cron_expression(&lit.value()) {
                    check(Err(syn::Error::new(lit.span(), format!("invalid cron expression: {e}"))));
                }
                Some(lit.value().trim().to_owned())
            }
            None if given("cron") => None,
            None => {
                check(Err(syn::Error::new(
                    Span::call_site(),
                    "missing cron expression: add `cron = \"0 6 * * *\"` (minute hour day-of-month month day-of-week)",
                )));
                None
            }
        };

        let timezone = match &self.timezone {
            Some(lit) => {
                if let Err(e) = netscript_cron::parse_timezone(&lit.value()) {
                    check(Err(syn::Error::new(lit.span(), format!("invalid timezone: {e}"))));
                }
                lit.value()
            }
            None => "UTC".to_owned(),
        };

        let description = match &self.description {
            Some(lit) => lit.value().trim().to_owned(),
            None => doc_comment(&func.attrs),
        };

        let tags = validate_tags(self.tags.unwrap_or_default(), &mut check);

        let retries = match &self.retries {
            Some(lit) => check_value(&mut check, parse_retries(lit), 0),
            None => 3,
        };
        let backoff = match &self.backoff {
            Some(lit) => check_value(&mut check, parse_backoff_lit(lit), Backoff::DEFAULT),
            None => Backoff::DEFAULT,
        };
        let missed = match &self.missed {
            Some(lit) => check_value(&mut check, parse_missed(lit), Missed::Skip),
            None => Missed::Skip,
        };
        let run_on_init = self.run_on_init.as_ref().is_some_and(LitBool::value);
        let enabled = self.enabled.as_ref().is_none_or(LitBool::value);

        if failed {
            return None;
        }
        Some(ScheduleConfig {
            id: id?,
            cron: cron?,
            timezone,
            description,
            tags,
            retries,
            backoff,
            missed,
            run_on_init,
            enabled,
        })
    }
}

/// `missed = "skip"` or `missed = "fire-once"`.
fn parse_missed(lit: &LitStr) -> syn::Result<Missed> {
    match lit.value().as_str() {
        "skip" => Ok(Missed::Skip),
        "fire-once" => Ok(Missed::FireOnce),
        other => Err(syn::Error::new(
            lit.span(),
            format!(
                "unknown missed-tick policy `{other}`: use `skip` (forget ticks missed while no scheduler ran) \
                 or `fire-once` (fire once on start for the latest missed tick)"
            ),
        )),
    }
}

fn validate_id(lit: &LitStr) -> syn::Result<()> {
    validate_kebab_id(lit, "schedule", "daily-resync")
}
