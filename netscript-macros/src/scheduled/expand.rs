//! Code generation for a checked schedule: the `ScheduleDescriptor` registered in
//! `SCHEDULES`, the type-erased handler, and the compile-time check of the return type.
//! Generated code names the runtime only as `::netscript::__private::...`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, ItemFn};

use super::ScheduleSignature;
use super::args::ScheduleConfig;

/// Everything `#[scheduled]` emits for a valid schedule.
pub(crate) fn schedule(func: &ItemFn, config: &ScheduleConfig, sig: &ScheduleSignature) -> TokenStream {
    let cfgs: Vec<_> =
        func.attrs.iter().filter(|a| a.path().is_ident("cfg") || a.path().is_ident("cfg_attr")).collect();
    let ScheduleConfig { id, cron, timezone, description, tags, retries, backoff, missed, run_on_init, enabled } =
        config;
    let backoff = backoff.to_tokens();
    let missed = Ident::new(missed.variant(), Span::call_site());
    let name = &func.sig.ident;
    let output = &sig.output;
    // A mixed-site name cannot clash with the user's; the argument is located at the
    // parameter's type, so a wrong parameter type is reported there.
    let (tick_pat, args) = match &sig.tick {
        Some(ty) => {
            let tick = Ident::new("tick", Span::mixed_site().located_at(ty.span()));
            (quote!(#tick), quote!(#tick))
        }
        None => (quote!(_), quote!()),
    };
    let assert_return = quote_spanned!(output.span()=> ::netscript::__private::assert_schedule_return::<#output>);
    let into_actions =
        quote_spanned!(output.span()=> <#output as ::netscript::__private::ScheduleReturn>::into_actions);
    let future = quote_spanned!(name.span()=>
        ::std::boxed::Box::pin(async move { #into_actions(#name(#args).await) })
    );
    let line = quote_spanned!(name.span()=> ::core::line!());
    let unique = {
        let span = id.span();
        let name = format_ident!("netscript_schedule_id_{}", id.value().replace('-', "_"), span = span);
        quote_spanned! {span=>
            #[doc(hidden)]
            #[macro_export]
            macro_rules! #name { () => {}; }
        }
    };

    quote! {
        // `async` is required of a scheduled function, even of one that never awaits.
        #[allow(clippy::unused_async)]
        #func

        #(#cfgs)*
        const _: () = {
            #[::netscript::__private::linkme::distributed_slice(::netscript::__private::SCHEDULES)]
            #[linkme(crate = ::netscript::__private::linkme)]
            static __NETSCRIPT_SCHEDULE: ::netscript::__private::ScheduleDescriptor = {
                let _: fn() = || { #assert_return(); };
                ::netscript::__private::ScheduleDescriptor {
                    id: #id,
                    cron: #cron,
                    timezone: #timezone,
                    description: #description,
                    tags: &[#(#tags),*],
                    run_on_init: #run_on_init,
                    enabled: #enabled,
                    max_retries: #retries,
                    backoff: #backoff,
                    missed: ::netscript::__private::MissedTicks::#missed,
                    handler: |#tick_pat: ::netscript::__private::ScheduledTick| -> ::netscript::__private::ScheduleFuture {
                        #future
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
