//! The arguments of `#[job(...)]`: parsed into literals first ([`JobArgs::parse`]), then
//! checked and given their defaults ([`JobArgs::validate`]).

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use syn::meta::ParseNestedMeta;
use syn::parse::Parser;
use syn::{Expr, ExprLit, Lit, LitInt, LitStr, Path, Token};

use crate::duration;
use crate::errors::Errors;

/// The arguments `#[job]` knows, each with an example for error messages.
const KNOWN: &[(&str, &str)] = &[
    ("id", r#"id = "process-payment""#),
    ("name", r#"name = "Process payment""#),
    ("topic", r#"topic = "payments""#),
    ("description", r#"description = "Charges a customer""#),
    ("tags", r#"tags = ["billing"]"#),
    ("timeout", r#"timeout = "30s""#),
    ("retries", "retries = 3"),
    ("backoff", r#"backoff = "exponential(1s)""#),
];

/// The arguments as written: literals of the right kind, each given at most once.
#[derive(Default)]
pub(crate) struct JobArgs {
    pub(crate) id: Option<LitStr>,
    name: Option<LitStr>,
    topic: Option<LitStr>,
    description: Option<LitStr>,
    tags: Option<Vec<LitStr>>,
    timeout: Option<LitStr>,
    retries: Option<LitInt>,
    backoff: Option<LitStr>,
    /// Arguments seen so far, to refuse a repeated one (with or without a valid value).
    seen: Vec<String>,
    /// A syntax error stopped parsing: arguments after it were not seen.
    incomplete: bool,
}

/// The job's settings, checked and with defaults applied.
pub(crate) struct JobConfig {
    pub(crate) id: LitStr,
    pub(crate) name: String,
    pub(crate) topic: String,
    pub(crate) description: String,
    pub(crate) tags: Vec<String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retries: u32,
    pub(crate) backoff: Backoff,
}

/// A retry delay policy, mirroring the runtime's `Backoff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backoff {
    Fixed(Duration),
    Linear(Duration),
    Exponential(Duration),
}

impl JobArgs {
    /// Parses `id = "...", retries = 3, ...`. Problems with one argument are recorded and
    /// parsing goes on; only broken syntax stops it.
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> Self {
        let mut args = JobArgs::default();
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
            "name" => self.name = errors.ok(string()),
            "topic" => self.topic = errors.ok(string()),
            "description" => self.description = errors.ok(string()),
            "tags" => self.tags = errors.ok(expect_str_array(&value, example)),
            "timeout" => self.timeout = errors.ok(string()),
            "retries" => self.retries = errors.ok(expect_int(&value, name, example)),
            "backoff" => self.backoff = errors.ok(string()),
            _ => unreachable!("every name in KNOWN is handled"),
        }
        Ok(())
    }

    /// Checks the values and applies defaults. `func` gives the defaults of `name` (its
    /// name) and `description` (its doc comment).
    pub(crate) fn validate(self, func: &syn::ItemFn, errors: &mut Errors) -> Option<JobConfig> {
        let fn_name = syn::ext::IdentExt::unraw(&func.sig.ident).to_string();
        let mut failed = false;
        let mut check = |result: syn::Result<()>| {
            if let Err(e) = result {
                errors.push(e);
                failed = true;
            }
        };

        let id = match self.id {
            Some(id) => {
                check(validate_id(&id));
                Some(id)
            }
            // Given but not a string, or maybe after a syntax error: that error is enough.
            None if self.incomplete || self.seen.iter().any(|seen| seen == "id") => None,
            None => {
                let example = kebab_suggestion(&fn_name).unwrap_or_else(|| "process-payment".to_owned());
                check(Err(syn::Error::new(
                    Span::call_site(),
                    format!("missing job id: add `id = \"{example}\"` (a unique kebab-case id) to `#[job(...)]`"),
                )));
                None
            }
        };

        let name = match self.name {
            Some(lit) if lit.value().trim().is_empty() => {
                check(Err(syn::Error::new(lit.span(), "`name` must not be empty")));
                String::new()
            }
            Some(lit) => lit.value(),
            None => fn_name,
        };

        let topic = match self.topic {
            Some(lit) => {
                check(validate_topic(&lit));
                lit.value()
            }
            None => "default".to_owned(),
        };

        let description = match self.description {
            Some(lit) => lit.value().trim().to_owned(),
            None => doc_comment(&func.attrs),
        };

        let tags = validate_tags(self.tags.unwrap_or_default(), &mut check);

        let timeout = self.timeout.and_then(|lit| match duration::parse_lit(&lit, "timeout") {
            Ok(d) if d.is_zero() => {
                check(Err(syn::Error::new(lit.span(), "`timeout` must be longer than zero")));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                check(Err(e));
                None
            }
        });

        let retries = match self.retries {
            Some(lit) => check_value(&mut check, parse_retries(&lit), 0),
            None => 3,
        };
        let backoff = match self.backoff {
            Some(lit) => check_value(&mut check, parse_backoff_lit(&lit), Backoff::DEFAULT),
            None => Backoff::DEFAULT,
        };

        if failed {
            return None;
        }
        Some(JobConfig { id: id?, name, topic, description, tags, timeout, retries, backoff })
    }
}

impl Backoff {
    pub(crate) const DEFAULT: Backoff = Backoff::Exponential(Duration::from_secs(1));

    /// The runtime's `Backoff` with the same policy, as an expression.
    pub(crate) fn to_tokens(self) -> TokenStream {
        let (kind, d) = match self {
            Backoff::Fixed(d) => ("Fixed", d),
            Backoff::Linear(d) => ("Linear", d),
            Backoff::Exponential(d) => ("Exponential", d),
        };
        let kind = syn::Ident::new(kind, Span::call_site());
        let d = duration::to_tokens(d);
        quote::quote!(::netscript::__private::Backoff::#kind(#d))
    }
}

/// The value of a checked argument, or `fallback` after recording its error with `check`.
pub(crate) fn check_value<T>(check: &mut impl FnMut(syn::Result<()>), result: syn::Result<T>, fallback: T) -> T {
    match result {
        Ok(value) => value,
        Err(e) => {
            check(Err(e));
            fallback
        }
    }
}

/// `retries = N`: a count of further attempts.
pub(crate) fn parse_retries(lit: &LitInt) -> syn::Result<u32> {
    lit.base10_parse::<u32>()
        .map_err(|_| syn::Error::new(lit.span(), format!("`retries` must be a whole number from 0 to {}", u32::MAX)))
}

/// `backoff = "exponential(1s)"`.
pub(crate) fn parse_backoff_lit(lit: &LitStr) -> syn::Result<Backoff> {
    parse_backoff(&lit.value()).map_err(|reason| {
        syn::Error::new(
            lit.span(),
            format!(
                "invalid backoff: {reason}; expected `fixed(<duration>)`, `linear(<duration>)` \
                 or `exponential(<duration>)`, like `exponential(1s)`"
            ),
        )
    })
}

/// Runs `one` on each argument of an attribute; `false` when broken syntax stopped parsing
/// (the error is in `errors`).
pub(crate) fn parse_arguments(
    tokens: TokenStream,
    errors: &mut Errors,
    mut one: impl FnMut(&ParseNestedMeta, &mut Errors) -> syn::Result<()>,
) -> bool {
    let result = syn::meta::parser(|meta| one(&meta, errors)).parse2(tokens);
    match result {
        Ok(()) => true,
        Err(e) => {
            errors.push(e);
            false
        }
    }
}

/// Reads one `name = value` argument of an attribute whose arguments are `known` (each with
/// an example). Records an unknown, value-less or repeated argument in `errors` and returns
/// `None` so parsing goes on; only broken syntax is an `Err`.
pub(crate) fn next_argument(
    meta: &ParseNestedMeta,
    known: &[(&'static str, &'static str)],
    seen: &mut Vec<String>,
    errors: &mut Errors,
) -> syn::Result<Option<(&'static str, &'static str, Expr)>> {
    let found = meta.path.get_ident().and_then(|ident| known.iter().find(|(name, _)| ident == name));
    let Some(&(name, example)) = found else {
        errors.push(unknown_argument(&meta.path, known));
        skip_value(meta)?;
        return Ok(None);
    };
    let repeated = seen.iter().any(|s| s == name);
    seen.push(name.to_owned());
    if !meta.input.peek(Token![=]) {
        // `#[job(id, ...)]`: report it and go on with the next argument.
        errors.push(meta.error(format_args!("`{name}` needs a value, like `{example}`")));
        return Ok(None);
    }
    let value: Expr = meta.value()?.parse()?;
    if repeated {
        errors.push(syn::Error::new_spanned(&meta.path, format_args!("duplicate argument `{name}`")));
        return Ok(None);
    }
    Ok(Some((name, example, value)))
}

fn unknown_argument(path: &Path, known: &[(&str, &str)]) -> syn::Error {
    let written = quote::quote!(#path).to_string().replace(' ', "");
    let names: Vec<String> = known.iter().map(|(name, _)| format!("`{name}`")).collect();
    let hint = closest(&written, known.iter().map(|(name, _)| *name))
        .map(|name| format!(" (did you mean `{name}`?)"))
        .unwrap_or_default();
    syn::Error::new_spanned(path, format!("unknown argument `{written}`{hint}; expected one of {}", names.join(", ")))
}

/// Consumes the value of an unknown argument, whatever its shape, so parsing can go on.
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        content.parse::<TokenStream>()?;
    }
    Ok(())
}

pub(crate) fn expect_str(value: &Expr, name: &str, example: &str) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit { lit: Lit::Str(lit), .. }) => Ok(lit.clone()),
        _ => Err(syn::Error::new_spanned(value, format!("`{name}` takes a string literal, like `{example}`"))),
    }
}

pub(crate) fn expect_int(value: &Expr, name: &str, example: &str) -> syn::Result<LitInt> {
    match value {
        Expr::Lit(ExprLit { lit: Lit::Int(lit), .. }) => Ok(lit.clone()),
        Expr::Unary(syn::ExprUnary { op: syn::UnOp::Neg(_), .. }) => Err(syn::Error::new_spanned(
            value,
            format!("`{name}` must be a whole number from 0 to {}, like `{example}`", u32::MAX),
        )),
        _ => Err(syn::Error::new_spanned(value, format!("`{name}` takes an integer, like `{example}`"))),
    }
}

pub(crate) fn expect_bool(value: &Expr, name: &str, example: &str) -> syn::Result<syn::LitBool> {
    match value {
        Expr::Lit(ExprLit { lit: Lit::Bool(lit), .. }) => Ok(lit.clone()),
        _ => Err(syn::Error::new_spanned(value, format!("`{name}` takes `true` or `false`, like `{example}`"))),
    }
}

pub(crate) fn expect_str_array(value: &Expr, example: &str) -> syn::Result<Vec<LitStr>> {
    let Expr::Array(array) = value else {
        return Err(syn::Error::new_spanned(value, format!("`tags` takes an array of strings, like `{example}`")));
    };
    let mut errors = Errors::default();
    let tags = array
        .elems
        .iter()
        .filter_map(|elem| match elem {
            Expr::Lit(ExprLit { lit: Lit::Str(lit), .. }) => Some(lit.clone()),
            _ => {
                errors.push(syn::Error::new_spanned(elem, format!("tags are string literals, like `{example}`")));
                None
            }
        })
        .collect();
    errors.finish().map(|()| tags)
}

fn validate_id(lit: &LitStr) -> syn::Result<()> {
    validate_kebab_id(lit, "job", "process-payment")
}

/// A `what` id (`job`, `schedule`, `webhook`) must be kebab-case; the error suggests one, or
/// shows `example`.
pub(crate) fn validate_kebab_id(lit: &LitStr, what: &str, example: &str) -> syn::Result<()> {
    let id = lit.value();
    if is_kebab_case(&id) {
        return Ok(());
    }
    const RULE: &str = "lowercase letters and digits, words joined by single `-`";
    let message = match kebab_suggestion(&id) {
        Some(suggestion) => format!("{what} id `{id}` is not kebab-case ({RULE}); try `{suggestion}`"),
        None => format!("{what} id `{id}` is not kebab-case: use {RULE}, like `{example}`"),
    };
    Err(syn::Error::new(lit.span(), message))
}

/// Tags: each non-empty and given once; every problem goes to `check` at its literal.
pub(crate) fn validate_tags(lits: Vec<LitStr>, check: &mut impl FnMut(syn::Result<()>)) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    for lit in lits {
        let tag = lit.value();
        if tag.trim().is_empty() {
            check(Err(syn::Error::new(lit.span(), "tags must not be empty")));
        } else if tags.contains(&tag) {
            check(Err(syn::Error::new(lit.span(), format!("duplicate tag `{tag}`"))));
        } else {
            tags.push(tag);
        }
    }
    tags
}

/// Topics name worker groups; they may also use `.` and `_` between words
/// (`billing.invoices`, `email_outbound`), but stay lowercase ASCII.
fn validate_topic(lit: &LitStr) -> syn::Result<()> {
    let topic = lit.value();
    if words_joined_by(&topic, &['-', '.', '_']) {
        return Ok(());
    }
    let shown =
        if topic.is_empty() { "topic must not be empty".to_owned() } else { format!("invalid topic `{topic}`") };
    Err(syn::Error::new(
        lit.span(),
        format!(
            "{shown}: topics are lowercase letters and digits, words joined by single `-`, `.` or `_`, \
             like `payments` or `billing.invoices`"
        ),
    ))
}

/// `^[a-z0-9]+(-[a-z0-9]+)*$`
pub(crate) fn is_kebab_case(s: &str) -> bool {
    words_joined_by(s, &['-'])
}

/// Non-empty words of `[a-z0-9]`, joined by single separators from `separators`.
fn words_joined_by(s: &str, separators: &[char]) -> bool {
    s.split(|c| separators.contains(&c))
        .all(|word| !word.is_empty() && word.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
}

/// The kebab-case spelling of an identifier-like string (`ProcessPayment`,
/// `process_payment`, `Process Payment` → `process-payment`), if it has one that differs.
pub(crate) fn kebab_suggestion(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut prev: Option<char> = None;
    for c in s.chars() {
        if c.is_ascii_uppercase() && prev.is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit()) {
            out.push('-');
        }
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
        prev = Some(c);
    }
    let out = out.trim_matches('-').to_owned();
    (is_kebab_case(&out) && out != s).then_some(out)
}

/// `fixed(1s)`, `linear(500ms)`, `exponential(2s)`, or a bare kind starting at 1s.
fn parse_backoff(text: &str) -> Result<Backoff, String> {
    let text = text.trim();
    let (kind, delay) = match text.split_once('(') {
        Some((kind, rest)) => {
            let Some(inner) = rest.strip_suffix(')') else {
                return Err(format!("`{text}` is missing its closing `)`"));
            };
            (kind.trim(), duration::parse(inner)?)
        }
        None => (text, Duration::from_secs(1)),
    };
    match kind {
        "fixed" => Ok(Backoff::Fixed(delay)),
        "linear" => Ok(Backoff::Linear(delay)),
        "exponential" => Ok(Backoff::Exponential(delay)),
        "" => Err("empty backoff".to_owned()),
        other => Err(format!("unknown policy `{other}`")),
    }
}

/// A function's `///` comment: lines joined with `\n`, each without the one space after
/// `///`, the whole trimmed. `#[doc = include_str!(..)]` and other non-literals are skipped.
pub(crate) fn doc_comment(attrs: &[syn::Attribute]) -> String {
    let lines: Vec<String> = attrs
        .iter()
        .filter(|attr| attr.path().is_ident("doc"))
        .filter_map(|attr| match &attr.meta {
            syn::Meta::NameValue(nv) => match &nv.value {
                Expr::Lit(ExprLit { lit: Lit::Str(lit), .. }) => Some(lit.value()),
                _ => None,
            },
            _ => None,
        })
        .flat_map(|doc| {
            doc.split('\n').map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end().to_owned()).collect::<Vec<_>>()
        })
        .collect();
    lines.join("\n").trim().to_owned()
}

/// The known name closest to `written`, when it is a plausible typo.
pub(crate) fn closest<'a>(written: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    known
        .map(|name| (edit_distance(written, name), name))
        .filter(|&(distance, name)| distance <= name.len().max(3) / 3)
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, name)| name)
}

/// Levenshtein distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kebab_case() {
        for ok in ["a", "process-payment", "v2-sync", "1-2-3"] {
            assert!(is_kebab_case(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a--b", "Process", "a_b", "a.b", "a b", "é"] {
            assert!(!is_kebab_case(bad), "{bad}");
        }
    }

    #[test]
    fn suggests_kebab_case() {
        assert_eq!(kebab_suggestion("Process_Payment").as_deref(), Some("process-payment"));
        assert_eq!(kebab_suggestion("ProcessPayment").as_deref(), Some("process-payment"));
        assert_eq!(kebab_suggestion("process_payment").as_deref(), Some("process-payment"));
        assert_eq!(kebab_suggestion("process payment!").as_deref(), Some("process-payment"));
        assert_eq!(kebab_suggestion("process-payment"), None);
        assert_eq!(kebab_suggestion("!!!"), None);
    }

    #[test]
    fn topics() {
        for ok in ["default", "payments", "billing.invoices", "email_outbound", "a-b.c_d"] {
            assert!(words_joined_by(ok, &['-', '.', '_']), "{ok}");
        }
        for bad in ["", "Payments", "a..b", ".a", "a/b"] {
            assert!(!words_joined_by(bad, &['-', '.', '_']), "{bad}");
        }
    }

    #[test]
    fn backoff_policies() {
        let s = Duration::from_secs;
        assert_eq!(parse_backoff("exponential(2s)"), Ok(Backoff::Exponential(s(2))));
        assert_eq!(parse_backoff("linear( 500ms )"), Ok(Backoff::Linear(Duration::from_millis(500))));
        assert_eq!(parse_backoff("fixed"), Ok(Backoff::Fixed(s(1))));
        assert_eq!(parse_backoff("exponential"), Ok(Backoff::Exponential(s(1))));
        assert_eq!(parse_backoff("random(1s)"), Err("unknown policy `random`".to_owned()));
        assert_eq!(parse_backoff("fixed(1s"), Err("`fixed(1s` is missing its closing `)`".to_owned()));
        assert_eq!(parse_backoff("fixed(soon)"), Err("`soon` is not a duration".to_owned()));
    }

    #[test]
    fn description_is_the_doc_comment() {
        let func: syn::ItemFn = syn::parse_quote! {
            /// Charges a customer.
            ///
            ///   Indented line.
            #[doc = include_str!("skipped.md")]
            async fn f() {}
        };
        assert_eq!(doc_comment(&func.attrs), "Charges a customer.\n\n  Indented line.");
        let func: syn::ItemFn = syn::parse_quote!(
            async fn f() {}
        );
        assert_eq!(doc_comment(&func.attrs), "");
    }

    #[test]
    fn typo_suggestions() {
        let names = || KNOWN.iter().map(|(name, _)| *name);
        assert_eq!(closest("timout", names()), Some("timeout"));
        assert_eq!(closest("retrys", names()), Some("retries"));
        assert_eq!(closest("tag", names()), Some("tags"));
        assert_eq!(closest("queue", names()), None);
    }
}
