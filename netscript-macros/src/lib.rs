//! placeholder: being written
use proc_macro::TokenStream;

/// placeholder
#[proc_macro_attribute]
pub fn job(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}
