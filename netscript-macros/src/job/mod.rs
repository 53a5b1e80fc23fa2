//! `#[job]`: parse the arguments ([`args`]), classify the signature ([`signature`]), then
//! generate the handle and the registration ([`expand`]).

pub(crate) mod args;
mod expand;
mod signature;

use proc_macro2::TokenStream;
use quote::quote;

use crate::errors::Errors;

/// Expands `#[job(args)] item`.
///
/// On any error the function is emitted unchanged beside the errors (as `tokio::main` does),
/// with its handle when the signature allows one, so a mistake in the attribute is reported
/// once instead of as a cascade of "cannot find" errors where the job is used.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let func: syn::ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(_) => {
            let error = syn::Error::new(proc_macro2::Span::call_site(), "`#[job]` goes on an `async fn`");
            let error = error.to_compile_error();
            return quote!(#error #item);
        }
    };

    let mut errors = Errors::default();
    let args = args::JobArgs::parse(args, &mut errors);
    let raw_id = args.id.as_ref().map(syn::LitStr::value);
    let config = args.validate(&func, &mut errors);
    let sig = signature::classify(&func.sig, &mut errors);

    match (errors.finish(), config, sig) {
        (Ok(()), Some(config), Some(sig)) => expand::job(&func, &config, &sig),
        (result, _, sig) => {
            let error = result.err().map(|e| e.to_compile_error());
            let handle = sig.map(|sig| expand::handle_only(&func, &sig, &raw_id.unwrap_or_default()));
            quote!(#func #handle #error)
        }
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

    const JOB: &str = "pub async fn process_payment(ctx: JobContext, p: Payload) -> JobResult<()> { Ok(()) }";

    #[test]
    fn a_valid_job_gets_its_function_handle_and_registration() {
        let out = expand_str(r#"id = "process-payment""#, JOB);
        assert!(out.contains("pubasyncfnprocess_payment("), "{out}");
        assert!(out.contains("pubstructprocess_payment{_private:(),}"), "{out}");
        assert!(out.contains("distributed_slice(::netscript::__private::JOBS)"), "{out}");
        assert!(out.contains("pubfnenqueue(payload:Payload)"), "{out}");
        assert!(out.contains("macro_rules!netscript_job_id_process_payment"), "{out}");
        assert!(!out.contains("compile_error"), "{out}");
    }

    #[test]
    fn an_attribute_error_keeps_the_function_and_its_handle() {
        let out = expand_str(r#"id = "process-payment", timeout = "soon""#, JOB);
        assert!(out.contains("compile_error"), "{out}");
        assert!(out.contains("pubasyncfnprocess_payment("), "{out}");
        assert!(out.contains("pubfnenqueue(payload:Payload)"), "{out}");
        assert!(!out.contains("distributed_slice"), "no registration of a broken job: {out}");
    }

    #[test]
    fn a_signature_error_keeps_the_function_alone() {
        let out = expand_str(r#"id = "process-payment""#, "fn process_payment() -> JobResult<()> { Ok(()) }");
        assert!(out.contains("compile_error"), "{out}");
        assert!(out.contains("fnprocess_payment()"), "{out}");
        assert!(!out.contains("structprocess_payment"), "{out}");
    }

    #[test]
    fn a_syntax_error_does_not_also_report_the_id_missing() {
        let out = expand_str(r#"retries = , id = "process-payment""#, JOB);
        assert_eq!(out.matches("compile_error").count(), 1, "{out}");
    }

    #[test]
    fn all_errors_are_reported_together() {
        let out = expand_str(r#"id = "Bad", retries = "3", colour = "red""#, "fn f(&self) {}");
        assert_eq!(out.matches("compile_error").count(), 6, "{out}");
    }
}
