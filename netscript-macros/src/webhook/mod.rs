//! `#[webhook]`: parse and check the arguments ([`args`]: id, path, verifier and its
//! settings), check the signature, then generate the registration ([`expand`]).

mod args;
mod expand;

use proc_macro2::TokenStream;

use crate::errors::Errors;

/// Expands `#[webhook(args)] item`. On any error the function is emitted unchanged beside the
/// errors, so one mistake is reported once.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    crate::trigger::expand(
        "webhook",
        item,
        |func, errors| {
            let config = args::WebhookArgs::parse(args, errors).validate(func, errors);
            (config, check_signature(&func.sig, errors))
        },
        expand::webhook,
    )
}

/// What the signature says: the body type and the return type.
pub(crate) struct WebhookSignature {
    /// `T` of the `WebhookEvent<T>` parameter.
    pub(crate) body: syn::Type,
    /// The return type.
    pub(crate) output: syn::Type,
}

const SHAPE: &str =
    "expected `async fn name(event: WebhookEvent<Body>) -> Vec<Action>` (or `-> JobResult<Vec<Action>>`)";

/// A webhook function is a plain `async fn` taking one `WebhookEvent<T>` and returning the
/// actions.
fn check_signature(sig: &syn::Signature, errors: &mut Errors) -> Option<WebhookSignature> {
    let mut ok = true;
    let mut fail = |error: syn::Error| {
        errors.push(error);
        ok = false;
    };
    crate::trigger::check_plain_async(sig, "webhook", SHAPE, &mut fail);
    let mut body = None;
    for (i, input) in sig.inputs.iter().enumerate() {
        match input {
            // Reported by `check_plain_async`.
            syn::FnArg::Receiver(_) => {}
            syn::FnArg::Typed(_) if i > 0 => {
                fail(syn::Error::new_spanned(input, format!("a webhook function takes only its event: {SHAPE}")));
            }
            syn::FnArg::Typed(pat) => match event_body(&pat.ty) {
                Some(ty) => body = Some(ty),
                None => fail(syn::Error::new_spanned(
                    &pat.ty,
                    format!(
                        "a webhook function takes a `WebhookEvent<Body>`, where `Body` is the request's JSON: {SHAPE}"
                    ),
                )),
            },
        }
    }
    if sig.inputs.is_empty() {
        fail(syn::Error::new_spanned(&sig.ident, format!("a webhook function takes its event: {SHAPE}")));
    }
    let output = match &sig.output {
        syn::ReturnType::Type(_, ty) => Some((**ty).clone()),
        syn::ReturnType::Default => {
            fail(syn::Error::new_spanned(&sig.ident, format!("a webhook function returns its actions: {SHAPE}")));
            None
        }
    };
    match (ok, body, output) {
        (true, Some(body), Some(output)) => Some(WebhookSignature { body, output }),
        _ => None,
    }
}

/// `T` of a `WebhookEvent<T>` (by the last path segment's name).
fn event_body(ty: &syn::Type) -> Option<syn::Type> {
    let syn::Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "WebhookEvent" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else { return None };
    match args.args.iter().collect::<Vec<_>>().as_slice() {
        [syn::GenericArgument::Type(body)] => Some(body.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(args: &str, item: &str) -> String {
        let args: TokenStream = args.parse().expect("valid tokens");
        let item: TokenStream = item.parse().expect("valid tokens");
        expand(args, item).to_string().replace(' ', "")
    }

    const HOOK: &str = "async fn pay(event: WebhookEvent<Payment>) -> Vec<Action> { vec![] }";

    #[test]
    fn a_valid_webhook_is_registered() {
        let out = expand_str(
            r#"id = "payment-webhook", path = "/webhooks/payment", verifier = "hmac-sha256", secret_env = "WEBHOOK_SECRET", header = "Stripe-Signature""#,
            HOOK,
        );
        assert!(out.contains("distributed_slice(::netscript::__private::WEBHOOKS)"), "{out}");
        assert!(out.contains(r#"secret_env:"WEBHOOK_SECRET""#), "{out}");
        assert!(out.contains(r#"header:"stripe-signature""#), "{out}");
        assert!(out.contains("macro_rules!netscript_webhook_id_payment_webhook"), "{out}");
        assert!(!out.contains("compile_error"), "{out}");
    }

    #[test]
    fn all_errors_are_reported_together_and_the_function_is_kept() {
        let out = expand_str(r#"path = "webhooks", verifier = "rsa", retries = 3"#, "fn pay(x: u32) {}");
        // missing id, bad path, unknown verifier, unknown argument, not async, not an event, no return
        assert_eq!(out.matches("compile_error").count(), 7, "{out}");
        assert!(out.contains("fnpay(x:u32){}"), "{out}");
    }
}
