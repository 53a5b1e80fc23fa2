//! The arguments of `#[scheduled(...)]`: parsed into literals first ([`ScheduleArgs::parse`]),
//! then checked ([`ScheduleArgs::validate`]): the cron expression and the timezone with the
//! runtime's own parser (`netscript-cron`), so an invalid one is an error at its literal.

use proc_macro2::{Span, TokenStream};
use syn::LitStr;
use syn::meta::ParseNestedMeta;

use crate::errors::Errors;
use crate::job::args::{
    doc_comment, expect_str, expect_str_array, is_kebab_case, kebab_suggestion, next_argument, parse_arguments,
};

/// The arguments `#[scheduled]` knows, each with an example for error messages.
const KNOWN: &[(&str, &str)] = &[
    ("id", r#"id = "daily-resync""#),
    ("cron", r#"cron = "0 6 * * *""#),
    ("timezone", r#"timezone = "Europe/Berlin""#),
    ("description", r#"description = "Re-imports the catalogue""#),
    ("tags", r#"tags = ["resync"]"#),
];

/// The arguments as written, each given at most once.
#[derive(Default)]
pub(crate) struct ScheduleArgs {
    id: Option<LitStr>,
    cron: Option<LitStr>,
    timezone: Option<LitStr>,
    description: Option<LitStr>,
    tags: Option<Vec<LitStr>>,
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

        let mut tags: Vec<String> = Vec::new();
        for lit in self.tags.unwrap_or_default() {
            let tag = lit.value();
            if tag.trim().is_empty() {
                check(Err(syn::Error::new(lit.span(), "tags must not be empty")));
            } else if tags.contains(&tag) {
                check(Err(syn::Error::new(lit.span(), format!("duplicate tag `{tag}`"))));
            } else {
                tags.push(tag);
            }
        }

        if failed {
            return None;
        }
        Some(ScheduleConfig { id: id?, cron: cron?, timezone, description, tags })
    }
}

fn validate_id(lit: &LitStr) -> syn::Result<()> {
    let id = lit.value();
    if is_kebab_case(&id) {
        return Ok(());
    }
    const RULE: &str = "lowercase letters and digits, words joined by single `-`";
    let message = match kebab_suggestion(&id) {
        Some(suggestion) => format!("schedule id `{id}` is not kebab-case ({RULE}); try `{suggestion}`"),
        None => format!("schedule id `{id}` is not kebab-case: use {RULE}, like `daily-resync`"),
    };
    Err(syn::Error::new(lit.span(), message))
}
