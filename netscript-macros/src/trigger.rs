//! What `#[scheduled]` and `#[webhook]` share: the steps of a trigger attribute.

use proc_macro2::TokenStream;
use quote::quote;

use crate::errors::Errors;

/// Parses `item` as a function, lets `check` read the arguments and the signature (every error
/// into the one list, so all are reported at once), then `generate`s the registration. On any
/// error the function is emitted unchanged beside the errors, so one mistake is reported once.
pub(crate) fn expand<C, S>(
    attribute: &str,
    item: TokenStream,
    check: impl FnOnce(&syn::ItemFn, &mut Errors) -> (Option<C>, Option<S>),
    generate: impl FnOnce(&syn::ItemFn, &C, &S) -> TokenStream,
) -> TokenStream {
    let func: syn::ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(_) => {
            let message = format!("`#[{attribute}]` goes on an `async fn`");
            let error = syn::Error::new(proc_macro2::Span::call_site(), message).to_compile_error();
            return quote!(#error #item);
        }
    };
    let mut errors = Errors::default();
    let (config, sig) = check(&func, &mut errors);
    match (errors.finish(), config, sig) {
        (Ok(()), Some(config), Some(sig)) => generate(&func, &config, &sig),
        (result, _, _) => {
            let error = result.err().map(|e| e.to_compile_error());
            quote!(#func #error)
        }
    }
}

/// The checks every trigger function shares: `async`, not `const` or `unsafe`, not generic, no
/// `self`. `kind` names it in messages (`scheduled`, `webhook`); `shape` is the expected
/// signature. Each problem goes to `fail`.
pub(crate) fn check_plain_async(sig: &syn::Signature, kind: &str, shape: &str, fail: &mut impl FnMut(syn::Error)) {
    use syn::spanned::Spanned;
    if sig.asyncness.is_none() {
        fail(syn::Error::new_spanned(sig.fn_token, format!("a {kind} function must be `async`: {shape}")));
    }
    if let Some(token) = sig.constness.as_ref().map(|c| c.span()).or(sig.unsafety.as_ref().map(|u| u.span())) {
        fail(syn::Error::new(token, format!("a {kind} function cannot be `const` or `unsafe`")));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        fail(syn::Error::new_spanned(&sig.generics, format!("a {kind} function cannot be generic")));
    }
    for input in &sig.inputs {
        if let syn::FnArg::Receiver(receiver) = input {
            fail(syn::Error::new_spanned(receiver, format!("a {kind} function cannot take `self`")));
        }
    }
}
