//! `webhook_signature`: the signature check of `hmac-sha256` webhooks (`HmacSpec::verify`),
//! its header decoder (`decode_signature`) and the sender's side (`sign_hex`).
//!
//! Input: `<signature header>[\n<timestamp header>]` as UTF-8, optionally followed by a NUL byte
//! and raw bytes that libFuzzer turns into a secret, a body, a signing time, the receiver's
//! clock, a tolerance, an encoding and the position and value of a one-byte change.
//!
//! Checked, beyond "no panic":
//! - The header as given: `decode_signature` gives nothing or 32 bytes, the bytes it gives
//!   decode again from their hex, `sha256=` hex and base64 forms; `verify` answers exactly as
//!   the contract says, in its order (missing or malformed signature, missing, malformed or
//!   expired timestamp, then match or mismatch of the HMAC over `<timestamp>.<body>`).
//! - A signature made by `sign_hex` for any secret, body and signing time is 64 lowercase hex
//!   digits, equals the HMAC-SHA256 of `<timestamp>.<body>` computed with the `hmac` crate, and
//!   verifies in every accepted encoding (hex either case, `sha256=`, base64
//!   standard or URL-safe, padded or not, with surrounding whitespace), unless the signing
//!   time is outside the tolerance, which is `Expired` with the right age.
//! - A one-byte change of the body or the secret, a different hex digit in the signature, or
//!   another signing time in the timestamp header never verifies; a changed base64 character
//!   verifies only if it decodes to the same 32 bytes.

#![no_main]

use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use hmac::{KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use netscript_runtime::fuzzing::decode_signature;
use netscript_runtime::webhook::{HmacSpec, VerifyError, sign_hex};

const SIGNATURE: &str = "x-signature";
const TIMESTAMP: &str = "x-timestamp";

/// How a produced signature is written in its header.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Encoding {
    Hex,
    UpperHex,
    PrefixedHex,
    Base64,
    Base64NoPad,
    UrlSafe,
    UrlSafeNoPad,
    PrefixedBase64,
}

#[derive(Arbitrary, Debug)]
struct Knobs<'a> {
    secret: &'a [u8],
    signed_at: Option<i64>,
    now: i64,
    tolerance_secs: u32,
    encoding: Encoding,
    padded: bool,
    change_at: usize,
    change_by: u8,
    body: &'a [u8],
}

fuzz_target!(|data: &[u8]| {
    let (text, rest) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else { return };
    let Ok(knobs) = Knobs::arbitrary_take_rest(Unstructured::new(rest)) else { return };
    let (signature, timestamp) = match text.split_once('\n') {
        Some((signature, timestamp)) => (signature, Some(timestamp)),
        None => (text, None),
    };
    check_given_headers(&knobs, signature, timestamp);
    check_produced_signature(&knobs);
});

fn spec(timestamped: bool, tolerance_secs: u32) -> HmacSpec {
    HmacSpec {
        secret_env: "FUZZ_SECRET",
        header: SIGNATURE,
        timestamp_header: timestamped.then_some(TIMESTAMP),
        tolerance: Duration::from_secs(u64::from(tolerance_secs)),
    }
}

/// Looks headers up by name in any case, as the webhook route does.
fn headers<'a>(pairs: &'a [(&'static str, String)]) -> impl Fn(&str) -> Option<&'a str> {
    move |name| pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// HMAC-SHA256 of `content` with `secret`, computed with the `hmac` crate directly; checks on
/// the way that the sender's function agrees.
fn hmac(secret: &[u8], content: &[u8]) -> Vec<u8> {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(content);
    let expected = mac.finalize().into_bytes().to_vec();
    let hex = sign_hex(secret, None, content);
    assert_eq!(hex.len(), 64, "sign_hex gives 64 hex digits: {hex:?}");
    assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "lowercase hex: {hex:?}");
    let bytes: Vec<u8> =
        (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex")).collect();
    assert_eq!(bytes, expected, "sign_hex is HMAC-SHA256");
    bytes
}

fn check_given_headers(knobs: &Knobs<'_>, signature: &str, timestamp: Option<&str>) {
    let decoded = decode_signature(signature);
    if let Some(bytes) = &decoded {
        assert_eq!(bytes.len(), 32, "{signature:?} decodes to {} bytes", bytes.len());
        for form in
            [hex(bytes), format!("sha256={}", hex(bytes)), STANDARD.encode(bytes), URL_SAFE_NO_PAD.encode(bytes)]
        {
            assert_eq!(decode_signature(&form).as_ref(), Some(bytes), "{form:?}");
        }
    }

    // Without a timestamp header in the spec.
    let mut pairs = vec![(SIGNATURE, signature.to_owned())];
    let untimed = spec(false, knobs.tolerance_secs).verify(knobs.secret, headers(&pairs), knobs.body, knobs.now);
    let expected = match &decoded {
        None => Err(VerifyError::MalformedSignature(SIGNATURE)),
        Some(bytes) if *bytes == hmac(knobs.secret, knobs.body) => Ok(()),
        Some(_) => Err(VerifyError::Mismatch),
    };
    assert_eq!(untimed, expected, "signature {signature:?}");

    // With one, given or not.
    if let Some(timestamp) = timestamp {
        pairs.push((TIMESTAMP, timestamp.to_owned()));
    }
    let timed = spec(true, knobs.tolerance_secs).verify(knobs.secret, headers(&pairs), knobs.body, knobs.now);
    let expected = match (&decoded, timestamp) {
        (None, _) => Err(VerifyError::MalformedSignature(SIGNATURE)),
        (Some(_), None) => Err(VerifyError::MissingTimestamp(TIMESTAMP)),
        (Some(bytes), Some(timestamp)) => match timestamp.trim().parse::<i64>() {
            Err(_) => Err(VerifyError::MalformedTimestamp(TIMESTAMP)),
            Ok(seconds) if knobs.now.abs_diff(seconds) > u64::from(knobs.tolerance_secs) => Err(VerifyError::Expired {
                age_secs: knobs.now.abs_diff(seconds),
                tolerance_secs: u64::from(knobs.tolerance_secs),
            }),
            Ok(_) => {
                let content = [timestamp.trim().as_bytes(), b".", knobs.body].concat();
                if *bytes == hmac(knobs.secret, &content) { Ok(()) } else { Err(VerifyError::Mismatch) }
            }
        },
    };
    assert_eq!(timed, expected, "signature {signature:?}, timestamp {timestamp:?}");

    // No signature header at all.
    assert_eq!(
        spec(timestamp.is_some(), knobs.tolerance_secs).verify(knobs.secret, |_| None, knobs.body, knobs.now),
        Err(VerifyError::MissingSignature(SIGNATURE))
    );
}

fn encode(raw: &[u8], encoding: Encoding) -> String {
    match encoding {
        Encoding::Hex => hex(raw),
        Encoding::UpperHex => hex(raw).to_uppercase(),
        Encoding::PrefixedHex => format!("sha256={}", hex(raw)),
        Encoding::Base64 => STANDARD.encode(raw),
        Encoding::Base64NoPad => STANDARD_NO_PAD.encode(raw),
        Encoding::UrlSafe => URL_SAFE.encode(raw),
        Encoding::UrlSafeNoPad => URL_SAFE_NO_PAD.encode(raw),
        Encoding::PrefixedBase64 => format!("sha256={}", STANDARD.encode(raw)),
    }
}

fn check_produced_signature(knobs: &Knobs<'_>) {
    let Knobs { secret, signed_at, now, tolerance_secs, encoding, padded, change_at, change_by, body } = *knobs;
    let spec = spec(signed_at.is_some(), tolerance_secs);
    let signed = sign_hex(secret, signed_at, body);
    let content = match signed_at {
        Some(t) => [t.to_string().as_bytes(), b".", body].concat(),
        None => body.to_vec(),
    };
    let raw = hmac(secret, &content);
    assert_eq!(signed, hex(&raw), "sign_hex signs `<timestamp>.<body>`");

    let mut header = encode(&raw, encoding);
    if padded {
        header = format!(" \t{header} ");
    }
    assert_eq!(decode_signature(&header).as_deref(), Some(&raw[..]), "{header:?}");
    let pairs_with = |signature: String, timestamp: Option<i64>| {
        let mut pairs = vec![(SIGNATURE, signature)];
        pairs.extend(timestamp.map(|t| (TIMESTAMP, t.to_string())));
        pairs
    };
    let pairs = pairs_with(header.clone(), signed_at);
    let verdict = spec.verify(secret, headers(&pairs), body, now);
    let in_window = match signed_at {
        Some(t) if now.abs_diff(t) > u64::from(tolerance_secs) => {
            let age_secs = now.abs_diff(t);
            let tolerance_secs = u64::from(tolerance_secs);
            assert_eq!(verdict, Err(VerifyError::Expired { age_secs, tolerance_secs }));
            false
        }
        _ => {
            assert_eq!(verdict, Ok(()), "a signature made by sign_hex verifies: {header:?}");
            true
        }
    };
    if !in_window {
        return;
    }

    // A one-byte change of the body.
    let change = change_by.max(1);
    if !body.is_empty() {
        let mut changed = body.to_vec();
        changed[change_at % body.len()] ^= change;
        assert_eq!(spec.verify(secret, headers(&pairs), &changed, now), Err(VerifyError::Mismatch), "body changed");
    }
    // A one-byte change of the secret (in place: HMAC pads short keys with zeros, so a
    // longer key that only adds zeros is the same key).
    if !secret.is_empty() {
        let mut changed = secret.to_vec();
        changed[change_at % secret.len()] ^= change;
        assert_eq!(spec.verify(&changed, headers(&pairs), body, now), Err(VerifyError::Mismatch), "secret changed");
    }
    // Another signing time, still in the window, pasted onto the signature.
    if let Some(t) = signed_at {
        let moved = if t < now { t + 1 } else { t - 1 };
        let moved_pairs = pairs_with(header.clone(), Some(moved));
        if moved != t && now.abs_diff(moved) <= u64::from(tolerance_secs) {
            assert_eq!(spec.verify(secret, headers(&moved_pairs), body, now), Err(VerifyError::Mismatch));
        }
    }
    // One character of the signature changed: another hex digit never verifies; another base64
    // character verifies only if it decodes to the same bytes (`+` and `-` are both 62, in
    // the standard and the URL-safe alphabet).
    let offset = header.len() - header.trim_start().len() + if header.trim().starts_with("sha256=") { 7 } else { 0 };
    let encoded = header.trim().trim_start_matches("sha256=");
    let at = offset + change_at % encoded.len();
    let mut mutated = header.clone().into_bytes();
    let hex_encoded = matches!(encoding, Encoding::Hex | Encoding::UpperHex | Encoding::PrefixedHex);
    mutated[at] = if hex_encoded {
        let value = char::from(mutated[at]).to_digit(16).expect("a hex digit");
        let other = char::from_digit((value + u32::from(change % 15) + 1) % 16, 16).expect("a digit below 16");
        if mutated[at].is_ascii_uppercase() { other.to_ascii_uppercase() as u8 } else { other as u8 }
    } else {
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_=";
        alphabet[usize::from(change) % alphabet.len()]
    };
    let Ok(mutated) = String::from_utf8(mutated) else { panic!("an ASCII header stays ASCII") };
    if mutated == header {
        return;
    }
    let pairs = pairs_with(mutated.clone(), signed_at);
    let verdict = spec.verify(secret, headers(&pairs), body, now);
    if hex_encoded {
        assert_eq!(verdict, Err(VerifyError::Mismatch), "another hex digit: {mutated:?}");
    }
    match decode_signature(&mutated) {
        None => assert_eq!(verdict, Err(VerifyError::MalformedSignature(SIGNATURE)), "{mutated:?}"),
        Some(bytes) if bytes == raw => assert_eq!(verdict, Ok(()), "{mutated:?}"),
        Some(_) => assert_eq!(verdict, Err(VerifyError::Mismatch), "{mutated:?}"),
    }
}
