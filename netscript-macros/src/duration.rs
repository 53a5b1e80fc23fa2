//! Duration literals (`"30s"`, `"5m"`, `"250ms"`, `"1h 30m"`), parsed at expansion time so a
//! typo is a compile error at the literal.

use std::time::Duration;

use proc_macro2::TokenStream;
use quote::quote;

/// What a valid duration looks like, for error messages.
pub(crate) const EXAMPLES: &str = "like `30s`, `5m`, `250ms` or `1h`";

/// Parses a duration written the `humantime` way: numbers with units, optionally several
/// (`1h 30m`). The error says what is wrong, without the examples.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    humantime::parse_duration(text).map_err(|e| match e {
        humantime::DurationError::Empty => "empty duration".to_owned(),
        humantime::DurationError::UnknownUnit { unit, value, .. } if unit.is_empty() => {
            format!("`{value}` has no unit")
        }
        humantime::DurationError::UnknownUnit { unit, .. } => format!("unknown unit `{unit}`"),
        humantime::DurationError::NumberOverflow => format!("`{text}` is too large"),
        _ => format!("`{text}` is not a duration"),
    })
}

/// Parses a string literal as a duration; the error points at the literal.
pub(crate) fn parse_lit(lit: &syn::LitStr, what: &str) -> syn::Result<Duration> {
    parse(&lit.value())
        .map_err(|reason| syn::Error::new(lit.span(), format!("invalid {what}: {reason}; write a duration {EXAMPLES}")))
}

/// `::netscript::__private::Duration::new(secs, nanos)`, a const expression.
pub(crate) fn to_tokens(duration: Duration) -> TokenStream {
    let secs = duration.as_secs();
    let nanos = duration.subsec_nanos();
    quote!(::netscript::__private::Duration::new(#secs, #nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_units() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse(" 1h 30m "), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn says_what_is_wrong() {
        assert_eq!(parse(""), Err("empty duration".to_owned()));
        assert_eq!(parse("30"), Err("`30` has no unit".to_owned()));
        assert_eq!(parse("30x"), Err("unknown unit `x`".to_owned()));
        assert_eq!(parse("thirty seconds"), Err("`thirty seconds` is not a duration".to_owned()));
    }

    #[test]
    fn tokens_are_a_const_constructor() {
        let tokens = to_tokens(Duration::from_millis(1500)).to_string();
        assert!(tokens.ends_with("Duration :: new (1u64 , 500000000u32)"), "{tokens}");
    }
}
