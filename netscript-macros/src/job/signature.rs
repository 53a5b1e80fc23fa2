//! What a job function's signature means: which parameter is the context, which are state,
//! which is the payload, and what it returns.
//!
//! Parameters are told apart by the syntax of their type (its last path segment), since a
//! macro cannot see through type aliases: `JobContext` is the context, `State<T>` is state,
//! anything else is the payload.

use syn::{FnArg, ReturnType, Signature, Type};

use crate::errors::Errors;

/// One parameter of the job function, in the order written.
pub(crate) enum Param {
    /// `JobContext`.
    Context,
    /// `State<T>`; the type as written.
    State(Type),
    /// The payload; the type as written.
    Payload(Type),
}

/// A job function's parameters and return type.
pub(crate) struct JobSignature {
    pub(crate) params: Vec<Param>,
    /// The return type as written: `JobResult<T>`, checked by the compiler.
    pub(crate) output: Type,
}

impl JobSignature {
    /// The payload type, if the job takes one.
    pub(crate) fn payload(&self) -> Option<&Type> {
        self.params.iter().find_map(|p| match p {
            Param::Payload(ty) => Some(ty),
            _ => None,
        })
    }

    /// The `State<T>` parameter types.
    pub(crate) fn states(&self) -> impl Iterator<Item = &Type> {
        self.params.iter().filter_map(|p| match p {
            Param::State(ty) => Some(ty),
            _ => None,
        })
    }
}

/// Checks that `sig` can be a job and classifies its parameters. Every problem is recorded;
/// `None` when there was one.
pub(crate) fn classify(sig: &Signature, errors: &mut Errors) -> Option<JobSignature> {
    let mut failed = false;
    let mut error = |e: syn::Error| {
        errors.push(e);
        failed = true;
    };

    if let Some(constness) = &sig.constness {
        error(syn::Error::new_spanned(constness, "a job cannot be a `const fn`"));
    }
    if let Some(unsafety) = &sig.unsafety {
        error(syn::Error::new_spanned(unsafety, "a job cannot be `unsafe`"));
    }
    if let Some(abi) = &sig.abi {
        error(syn::Error::new_spanned(abi, "a job cannot be `extern`; remove the ABI"));
    }
    if sig.asyncness.is_none() {
        let name = &sig.ident;
        error(syn::Error::new_spanned(sig.fn_token, format!("a job must be an `async fn`: write `async fn {name}`")));
    }
    if !sig.generics.params.is_empty() {
        error(syn::Error::new_spanned(
            &sig.generics,
            "a job cannot be generic: the runtime must know its payload and output types",
        ));
    }
    if let Some(where_clause) = &sig.generics.where_clause {
        error(syn::Error::new_spanned(where_clause, "a job cannot have a `where` clause"));
    }
    if let Some(variadic) = &sig.variadic {
        error(syn::Error::new_spanned(variadic, "a job cannot be variadic"));
    }

    let mut params = Vec::new();
    let mut payload: Option<&Type> = None;
    let mut context = false;
    for input in &sig.inputs {
        let pat_type = match input {
            FnArg::Receiver(receiver) => {
                error(syn::Error::new_spanned(receiver, "a job cannot take `self`; make it a free function"));
                continue;
            }
            FnArg::Typed(pat_type) => pat_type,
        };
        let ty = strip_groups(&pat_type.ty);
        match ty {
            Type::Reference(reference) => {
                error(syn::Error::new_spanned(
                    ty,
                    format!(
                        "job parameters are taken by value: write `{}`, not `{}`",
                        display(&reference.elem),
                        display(ty)
                    ),
                ));
                continue;
            }
            Type::ImplTrait(_) => {
                error(syn::Error::new_spanned(ty, "a job cannot be generic: `impl Trait` parameters are not allowed"));
                continue;
            }
            _ => {}
        }
        match last_segment(ty).as_deref() {
            Some("JobContext") if context => {
                error(syn::Error::new_spanned(ty, "a job takes at most one `JobContext`"));
            }
            Some("JobContext") => {
                context = true;
                params.push(Param::Context);
            }
            Some("State") => params.push(Param::State(ty.clone())),
            _ => {
                if let Some(first) = payload {
                    let (first, this) = (display(first), display(ty));
                    error(syn::Error::new_spanned(
                        ty,
                        format!(
                            "a job takes at most one payload, and `{first}` is already one; \
                             shared resources go in `State<T>` parameters, like `State<{this}>`"
                        ),
                    ));
                    continue;
                }
                payload = Some(ty);
                params.push(Param::Payload(ty.clone()));
            }
        }
    }

    let output = match &sig.output {
        ReturnType::Type(_, ty) => Some((**ty).clone()),
        ReturnType::Default => {
            // Underlines `fn name(...)`: the return type goes after it.
            error(syn::Error::new_spanned(
                FnToParen(sig),
                "a job must return `JobResult<T>`; add `-> JobResult<()>` if it has no output",
            ));
            None
        }
    };

    if failed {
        return None;
    }
    Some(JobSignature { params, output: output? })
}

/// The tokens from `fn` to the closing parenthesis, for an error that underlines them.
struct FnToParen<'a>(&'a Signature);

impl quote::ToTokens for FnToParen<'_> {
    fn to_tokens(&self, tokens: &mut proc_macro2::TokenStream) {
        let sig = self.0;
        sig.fn_token.to_tokens(tokens);
        sig.ident.to_tokens(tokens);
        sig.paren_token.surround(tokens, |tokens| sig.inputs.to_tokens(tokens));
    }
}

/// `(T)` and invisible groups (from `macro_rules!`) are `T`.
fn strip_groups(ty: &Type) -> &Type {
    match ty {
        Type::Group(group) => strip_groups(&group.elem),
        Type::Paren(paren) => strip_groups(&paren.elem),
        other => other,
    }
}

/// The last path segment of a plain path type: `State` for `netscript::State<Db>`.
fn last_segment(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(path) if path.qself.is_none() => path.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

/// A type as written, for messages: `Vec<String>`, not `Vec < String >`.
fn display(ty: &Type) -> String {
    let mut shown = quote::ToTokens::to_token_stream(ty).to_string();
    for (spaced, tight) in
        [(" < ", "<"), (" <", "<"), ("< ", "<"), (" >", ">"), (" ,", ","), (" :: ", "::"), (":: ", "::"), ("& ", "&")]
    {
        shown = shown.replace(spaced, tight);
    }
    shown
}
