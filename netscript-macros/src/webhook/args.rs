//! The arguments of `#[webhook(...)]`: parsed into literals first ([`WebhookArgs::parse`]),
//! then checked ([`WebhookArgs::validate`]): the id, the path, the verifier and its settings.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use syn::LitStr;
use syn::meta::ParseNestedMeta;

use crate::duration;
use crate::errors::Errors;
use crate::job::args::{
    doc_comment, expect_str, expect_str_array, kebab_suggestion, next_argument, parse_arguments, validate_kebab_id,
    validate_tags,
};

/// The arguments `#[webhook]` knows, each with an example for error messages.
const KNOWN: &[(&str, &str)] = &[
    ("id", r#"id = "payment-webhook""#),
    ("path", r#"path = "/webhooks/payment""#),
    ("verifier", r#"verifier = "hmac-sha256""#),
    ("secret_env", r#"secret_env = "WEBHOOK_SECRET""#),
    ("header", r#"header = "X-Signature""#),
    ("timestamp_header", r#"timestamp_header = "X-Timestamp""#),
    ("tolerance", r#"tolerance = "5m""#),
    ("description", r#"description = "Payment provider events""#),
    ("tags", r#"tags = ["payments"]"#),
];

/// The default signature header, as the runtime's `DEFAULT_SIGNATURE_HEADER`.
const DEFAULT_HEADER: &str = "x-signature";
/// The default replay window, as the runtime's `DEFAULT_TOLERANCE`.
const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// The arguments as written, each given at most once.
#[derive(Default)]
pub(crate) struct WebhookArgs {
    id: Option<LitStr>,
    path: Option<LitStr>,
    verifier: Option<LitStr>,
    secret_env: Option<LitStr>,
    header: Option<LitStr>,
    timestamp_header: Option<LitStr>,
    tolerance: Option<LitStr>,
    description: Option<LitStr>,
    tags: Option<Vec<LitStr>>,
    seen: Vec<String>,
    incomplete: bool,
}

/// How requests are verified, checked.
pub(crate) enum VerifierConfig {
    /// `verifier = "none"`.
    None,
    /// `verifier = "hmac-sha256"`.
    HmacSha256 { secret_env: String, header: String, timestamp_header: Option<String>, tolerance: Duration },
}

/// The webhook's settings, checked and with defaults applied.
pub(crate) struct WebhookConfig {
    pub(crate) id: LitStr,
    pub(crate) path: String,
    pub(crate) verifier: VerifierConfig,
    pub(crate) description: String,
    pub(crate) tags: Vec<String>,
}

impl WebhookArgs {
    /// Parses `id = "...", path = "...", ...`; only broken syntax stops parsing.
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> Self {
        let mut args = WebhookArgs::default();
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
            "path" => self.path = errors.ok(string()),
            "verifier" => self.verifier = errors.ok(string()),
            "secret_env" => self.secret_env = errors.ok(string()),
            "header" => self.header = errors.ok(string()),
            "timestamp_header" => self.timestamp_header = errors.ok(string()),
            "tolerance" => self.tolerance = errors.ok(string()),
            "description" => self.description = errors.ok(string()),
            "tags" => self.tags = errors.ok(expect_str_array(&value, example)),
            _ => unreachable!("every name in KNOWN is handled"),
        }
        Ok(())
    }

    /// Checks every value and applies defaults; all problems go to `errors`.
    pub(crate) fn validate(self, func: &syn::ItemFn, errors: &mut Errors) -> Option<WebhookConfig> {
        let fn_name = syn::ext::IdentExt::unraw(&func.sig.ident).to_string();
        let mut failed = false;
        let mut check = |result: syn::Result<()>| {
            if let Err(e) = result {
                errors.push(e);
                failed = true;
            }
        };
        let given = |name: &str| self.incomplete || self.seen.iter().any(|seen| seen == name);
        let missing = |what: &str, example: &str| {
            syn::Error::new(Span::call_site(), format!("missing {what}: add `{example}` to `#[webhook(...)]`"))
        };

        let id = match &self.id {
            Some(id) => {
                check(validate_id(id));
                Some(id.clone())
            }
            None if given("id") => None,
            None => {
                let example = kebab_suggestion(&fn_name).unwrap_or_else(|| "payment-webhook".to_owned());
                check(Err(missing("webhook id", &format!("id = \"{example}\""))));
                None
            }
        };
        let path = match &self.path {
            Some(lit) => {
                check(validate_path(lit));
                Some(lit.value())
            }
            None if given("path") => None,
            None => {
                check(Err(missing("route", r#"path = "/webhooks/payment""#)));
                None
            }
        };
        let header = |lit: &Option<LitStr>, check: &mut dyn FnMut(syn::Result<()>)| {
            lit.as_ref().map(|l| {
                check(validate_header(l));
                l.value().to_ascii_lowercase()
            })
        };
        let signature_header = header(&self.header, &mut check);
        let timestamp_header = header(&self.timestamp_header, &mut check);
        let tolerance = self.tolerance.as_ref().and_then(|lit| match duration::parse_lit(lit, "tolerance") {
            Ok(d) if d.is_zero() => {
                check(Err(syn::Error::new(lit.span(), "`tolerance` must be longer than zero")));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                check(Err(e));
                None
            }
        });
        if let (Some(lit), None) = (&self.tolerance, &self.timestamp_header) {
            check(Err(syn::Error::new(
                lit.span(),
                "`tolerance` is the window for a signed timestamp: add `timestamp_header = \"X-Timestamp\"` too",
            )));
        }

        let verifier = match self.verifier.as_ref().map(|l| (l, l.value())) {
            Some((_, v)) if v == "hmac-sha256" => match &self.secret_env {
                Some(lit) => {
                    check(validate_env_name(lit));
                    Some(VerifierConfig::HmacSha256 {
                        secret_env: lit.value(),
                        header: signature_header.unwrap_or_else(|| DEFAULT_HEADER.to_owned()),
                        timestamp_header,
                        tolerance: tolerance.unwrap_or(DEFAULT_TOLERANCE),
                    })
                }
                None if given("secret_env") => None,
                None => {
                    check(Err(missing("secret variable for `hmac-sha256`", r#"secret_env = "WEBHOOK_SECRET""#)));
                    None
                }
            },
            Some((lit, v)) if v == "none" => {
                for (name, arg) in [
                    ("secret_env", &self.secret_env),
                    ("header", &self.header),
                    ("timestamp_header", &self.timestamp_header),
                ] {
                    if let Some(arg) = arg {
                        check(Err(syn::Error::new(
                            arg.span(),
                            format!("`{name}` has no use with `verifier = \"none\"`, which checks no signature"),
                        )));
                    }
                }
                let _ = lit;
                Some(VerifierConfig::None)
            }
            Some((lit, v)) => {
                check(Err(syn::Error::new(
                    lit.span(),
                    format!(
                        "unknown verifier `{v}`: use `hmac-sha256` (a signature header checked with a shared \
                         secret) or `none` (no check: anyone who can reach the route can call it)"
                    ),
                )));
                None
            }
            None if given("verifier") => None,
            None => {
                check(Err(missing("verifier", r#"verifier = "hmac-sha256""#)));
                None
            }
        };

        let description = match &self.description {
            Some(lit) => lit.value().trim().to_owned(),
            None => doc_comment(&func.attrs),
        };
        let tags = validate_tags(self.tags.unwrap_or_default(), &mut check);
        if failed {
            return None;
        }
        Some(WebhookConfig { id: id?, path: path?, verifier: verifier?, description, tags })
    }
}

fn validate_id(lit: &LitStr) -> syn::Result<()> {
    validate_kebab_id(lit, "webhook", "payment-webhook")
}

/// A literal route: `/` then segments of letters, digits, `-`, `_`, `.` and `~`, no empty
/// segment, no parameter, none of the API's own paths.
fn validate_path(lit: &LitStr) -> syn::Result<()> {
    let path = lit.value();
    let error = |reason: String| Err(syn::Error::new(lit.span(), format!("invalid webhook path `{path}`: {reason}")));
    if !path.starts_with('/') || path == "/" {
        return error("it must start with `/` and name a route, like `/webhooks/payment`".into());
    }
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return error("empty segment (`//`, or a trailing `/`)".into());
        }
        if let Some(c) = segment.chars().find(|c| !(c.is_ascii_alphanumeric() || "-_.~".contains(*c))) {
            return error(format!("`{c}` is not allowed; use letters, digits, `-`, `_`, `.` and `~` (no parameters)"));
        }
    }
    if path == "/health" || path.starts_with("/api/") || path == "/api" {
        return error("`/health` and `/api/...` belong to the API; pick another, like `/webhooks/payment`".into());
    }
    Ok(())
}

/// An HTTP header name: letters, digits and `!#$%&'*+-.^_`|~`.
fn validate_header(lit: &LitStr) -> syn::Result<()> {
    let name = lit.value();
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !name.is_empty() && name.chars().all(token) {
        return Ok(());
    }
    Err(syn::Error::new(lit.span(), format!("`{name}` is not an HTTP header name, like `X-Signature`")))
}

/// An environment variable's name: letters, digits and `_`, not starting with a digit.
fn validate_env_name(lit: &LitStr) -> syn::Result<()> {
    let name = lit.value();
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        return Ok(());
    }
    Err(syn::Error::new(
        lit.span(),
        format!("`{name}` is not an environment variable name: use letters, digits and `_`, like `WEBHOOK_SECRET`"),
    ))
}
