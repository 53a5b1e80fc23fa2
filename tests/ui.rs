//! Compile-time behaviour of `#[job]`: every error it reports (`ui-tests/*.rs`, each with the
//! expected compiler output in its `.stderr`), and code that must compile cleanly
//! (`ui-tests/pass/*.rs`). Regenerate the `.stderr` files with
//! `TRYBUILD=overwrite cargo test --test ui`, then read them.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("ui-tests/*.rs");
    cases.pass("ui-tests/pass/*.rs");
}
