//! `#[scheduled]`: parse and check the arguments ([`args`], the cron expression and the
//! timezone included), check the signature, then generate the registration ([`expand`]).

mod args;
mod expand;

use proc_macro2::TokenStream;

use crate::errors::Errors;

/// Expands `#[scheduled(args)] item`. On any error the function is emitted unchanged beside
/// the errors, so one mistake is reported once.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    crate::trigger::expand(
        "scheduled",
        item,
        |func, errors| {
            let config = args::ScheduleArgs::parse(args, errors).validate(func, errors);
            (config, check_signature(&func.sig, errors))
        },
        expand::schedule,
    )
}

/// What the signature says: whether the function takes the tick, and its return type.
pub(crate) struct ScheduleSignature {
    /// The type of the tick parameter, if the function takes one.
    pub(crate) tick: Option<syn::Type>,
    /// The return type.
    pub(crate) output: syn::Type,
}

const SHAPE: &str = "expected `async fn name(tick: ScheduledTick) -> Vec<Action>` (or `-> JobResult<Vec<Action>>`)";

/// A scheduled function is a plain `async fn` taking the tick (or nothing) and returning the
/// actions.
fn check_signature(sig: &syn::Signature, errors: &mut Errors) -> Option<ScheduleSignature> {
    let mut ok = true;
    let mut fail = |error: syn::Error| {
        errors.push(error);
        ok = false;
    };
    crate::trigger::check_plain_async(sig, "scheduled", SHAPE, &mut fail);
    let mut tick = None;
    for (i, input) in sig.inputs.iter().enumerate() {
        match input {
            // Reported by `check_plain_async`.
            syn::FnArg::Receiver(_) => {}
            syn::FnArg::Typed(_) if i > 0 => {
                fail(syn::Error::new_spanned(input, format!("a scheduled function takes only the tick: {SHAPE}")));
            }
            syn::FnArg::Typed(pat) => tick = Some((*pat.ty).clone()),
        }
    }
    let output = match &sig.output {
        syn::ReturnType::Type(_, ty) => Some((**ty).clone()),
        syn::ReturnType::Default => {
            fail(syn::Error::new_spanned(&sig.ident, format!("a scheduled function returns its actions: {SHAPE}")));
            None
        }
    };
    if ok { output.map(|output| ScheduleSignature { tick, output }) } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(args: &str, item: &str) -> String {
        let args: TokenStream = args.parse().expect("valid tokens");
        let item: TokenStream = item.parse().expect("valid tokens");
        expand(args, item).to_string().replace(' ', "")
    }

    const SCHEDULE: &str = "async fn daily(tick: ScheduledTick) -> Vec<Action> { vec![] }";

    #[test]
    fn a_valid_schedule_is_registered() {
        let out = expand_str(r#"id = "daily-resync", cron = "0 6 * * *", timezone = "Europe/Berlin""#, SCHEDULE);
        assert!(out.contains("distributed_slice(::netscript::__private::SCHEDULES)"), "{out}");
        assert!(out.contains(r#"cron:"0 6 * * *""#.replace(' ', "").as_str()), "{out}");
        assert!(out.contains(r#"timezone:"Europe/Berlin""#), "{out}");
        assert!(out.contains("macro_rules!netscript_schedule_id_daily_resync"), "{out}");
        assert!(!out.contains("compile_error"), "{out}");
    }

    #[test]
    fn the_timezone_defaults_to_utc() {
        let out = expand_str(r#"id = "daily-resync", cron = "@daily""#, SCHEDULE);
        assert!(out.contains(r#"timezone:"UTC""#), "{out}");
    }

    #[test]
    fn all_errors_are_reported_together_and_the_function_is_kept() {
        let out = expand_str(r#"cron = "0 25 * * *", timezone = "Mars/Olympus", every = "day""#, "fn daily() {}");
        // missing id, bad cron, bad timezone, unknown argument, not async, no return type
        assert_eq!(out.matches("compile_error").count(), 6, "{out}");
        assert!(out.contains("fndaily(){}"), "{out}");
        assert!(!out.contains("distributed_slice"), "{out}");
    }
}
