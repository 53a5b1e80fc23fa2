//! Compile-time behaviour of `#[job]` and `#[scheduled]`: every error they report
//! (`ui-tests/fail/*.rs`, each with the expected compiler output in its `.stderr`), and code that
//! must compile cleanly (`ui-tests/pass/*.rs`). Regenerate the `.stderr` files with
//! `TRYBUILD=overwrite cargo test -p netscript-ui-tests`, then read them.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("fail/*.rs");
    cases.pass("pass/*.rs");
}
