//! Code generation for a checked webhook: the `WebhookDescriptor` registered in `WEBHOOKS`,
//! the type-erased handler, and the compile-time checks of the body and return types.
//! Generated code names the runtime only as `::netscript::__private::...`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, ItemFn};

use super::WebhookSignature;
use super::args::{VerifierConfig, WebhookConfig};
use crate::duration;

/// Everything `#[webhook]` emits for a valid webhook.
pub(crate) fn webhook(func: &ItemFn, config: &WebhookConfig, sig: &WebhookSignature) -> TokenStream {
    let cfgs: Vec<_> =
        func.attrs.iter().filter(|a| a.path().is_ident("cfg") || a.path().is_ident("cfg_attr")).collect();
    let WebhookConfig { id, path, verifier, description, tags } = config;
    let name = &func.sig.ident;
    let (body, output) = (&sig.body, &sig.output);
    let verifier = match verifier {
        VerifierConfig::None => quote!(::netscript::__private::Verifier::None),
        VerifierConfig::HmacSha256 { secret_env, header, timestamp_header, tolerance } => {
            let timestamp_header = match timestamp_header {
                Some(h) => quote!(::core::option::Option::Some(#h)),
                None => quote!(::core::option::Option::None),
            };
            let tolerance = duration::to_tokens(*tolerance);
            quote! {
                ::netscript::__private::Verifier::HmacSha256(::netscript::__private::HmacSpec {
                    secret_env: #secret_env,
                    header: #header,
                    timestamp_header: #timestamp_header,
                    tolerance: #tolerance,
                })
            }
        }
    };
    let at = |ty: &syn::Type, f: &str| {
        let f = Ident::new(f, ty.span());
        quote_spanned!(ty.span()=> ::netscript::__private::#f::<#ty>)
    };
    let (deserialize, schema, assert_return) = (
        at(body, "assert_payload_deserialize"),
        at(body, "assert_payload_schema"),
        at(output, "assert_schedule_return"),
    );
    let body_schema = at(body, "payload_schema");
    let decode = at(body, "decode_webhook");
    let into_actions =
        quote_spanned!(output.span()=> <#output as ::netscript::__private::ScheduleReturn>::into_actions);
    let request = Ident::new("request", Span::mixed_site());
    let event = Ident::new("event", Span::mixed_site());
    let future = quote_spanned!(name.span()=>
        ::std::boxed::Box::pin(async move { #into_actions(#name(#event).await) })
    );
    let line = quote_spanned!(name.span()=> ::core::line!());
    let unique = {
        let span = id.span();
        let macro_name = format_ident!("netscript_webhook_id_{}", id.value().replace('-', "_"), span = span);
        quote_spanned! {span=>
            #[doc(hidden)]
            #[macro_export]
            macro_rules! #macro_name { () => {}; }
        }
    };

    quote! {
        // `async` is required of a webhook function, even of one that never awaits.
        #[allow(clippy::unused_async)]
        #func

        #(#cfgs)*
        const _: () = {
            #[::netscript::__private::linkme::distributed_slice(::netscript::__private::WEBHOOKS)]
            #[linkme(crate = ::netscript::__private::linkme)]
            static __NETSCRIPT_WEBHOOK: ::netscript::__private::WebhookDescriptor = {
                let _: fn() = || {
                    #deserialize();
                    #schema();
                    #assert_return();
                };
                ::netscript::__private::WebhookDescriptor {
                    id: #id,
                    path: #path,
                    verifier: #verifier,
                    description: #description,
                    tags: &[#(#tags),*],
                    body_type: ::core::stringify!(#body),
                    body_schema: #body_schema,
                    handler: |#request: ::netscript::__private::WebhookRequest|
                        -> ::core::result::Result<::netscript::__private::WebhookFuture, ::netscript::__private::WebhookError>
                    {
                        let #event = #decode(#request)?;
                        ::core::result::Result::Ok(#future)
                    },
                    location: ::netscript::__private::Location {
                        module_path: ::core::module_path!(),
                        file: ::core::file!(),
                        line: #line,
                    },
                }
            };
            #unique
        };
    }
}
