//! Signature checks of webhook requests.

use std::time::Duration;

use base64::Engine as _;
use hmac::{KeyInit, Mac};

/// How a webhook's requests are authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verifier {
    /// Not at all: anyone who can reach the route can call it (logged as a warning at
    /// startup).
    None,
    /// An HMAC-SHA256 signature of the body with a shared secret.
    HmacSha256(HmacSpec),
}

/// An HMAC-SHA256 verifier's settings, from `#[webhook(...)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HmacSpec {
    /// The environment variable holding the shared secret (read at startup).
    pub secret_env: &'static str,
    /// The header carrying the signature: hex or base64, with or without a `sha256=` prefix.
    pub header: &'static str,
    /// The header carrying the Unix time (seconds) the sender signed at. When set, the signed
    /// content is `<timestamp>.<body>` and a timestamp further than `tolerance` from now is
    /// refused, so a captured request cannot be replayed later.
    pub timestamp_header: Option<&'static str>,
    /// How far the signed timestamp may be from the receiver's clock.
    pub tolerance: Duration,
}

/// The header `#[webhook]` reads the signature from unless told otherwise.
pub const DEFAULT_SIGNATURE_HEADER: &str = "x-signature";
/// The replay window unless told otherwise.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Why a request's signature was refused. Each is a 401.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No signature header.
    #[error("missing signature header `{0}`")]
    MissingSignature(&'static str),
    /// The signature is neither hex nor base64 of 32 bytes.
    #[error("the signature in `{0}` is not a hex or base64 HMAC-SHA256 (with or without `sha256=`)")]
    MalformedSignature(&'static str),
    /// The signature does not match the body (and timestamp).
    #[error("the signature does not match the request")]
    Mismatch,
    /// No timestamp header, though the webhook signs one.
    #[error("missing timestamp header `{0}`")]
    MissingTimestamp(&'static str),
    /// The timestamp is not a whole number of seconds.
    #[error("the timestamp in `{0}` is not Unix seconds")]
    MalformedTimestamp(&'static str),
    /// The timestamp is outside the tolerance: a replay, or a clock far off.
    #[error("the signed timestamp is {age_secs} s from now, outside the {tolerance_secs} s window (a replay?)")]
    Expired {
        /// Seconds between the timestamp and now.
        age_secs: u64,
        /// The window.
        tolerance_secs: u64,
    },
}

impl HmacSpec {
    /// Checks a request: `header` looks a header up by name (any case), `now` is Unix seconds.
    /// The comparison of the signature takes the same time wherever it differs.
    pub fn verify<'a>(
        &self,
        secret: &[u8],
        header: impl Fn(&str) -> Option<&'a str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError> {
        let presented = header(self.header).ok_or(VerifyError::MissingSignature(self.header))?;
        let signature = decode_signature(presented).ok_or(VerifyError::MalformedSignature(self.header))?;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).map_err(|_| VerifyError::Mismatch)?;
        if let Some(name) = self.timestamp_header {
            let timestamp = header(name).ok_or(VerifyError::MissingTimestamp(name))?.trim();
            let seconds: i64 = timestamp.parse().map_err(|_| VerifyError::MalformedTimestamp(name))?;
            let age = now.abs_diff(seconds);
            if age > self.tolerance.as_secs() {
                return Err(VerifyError::Expired { age_secs: age, tolerance_secs: self.tolerance.as_secs() });
            }
            mac.update(timestamp.as_bytes());
            mac.update(b".");
        }
        mac.update(body);
        mac.verify_slice(&signature).map_err(|_| VerifyError::Mismatch)
    }
}

/// `sha256=<hex>`, `<hex>`, or base64 (standard or URL-safe, padded or not) of 32 bytes.
pub(crate) fn decode_signature(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    let text = text.strip_prefix("sha256=").unwrap_or(text);
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return (0..32).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()).collect();
    }
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .filter(|bytes| bytes.len() == 32)
}

/// The signature a sender computes: HMAC-SHA256 of `<timestamp>.<body>` (or of the body when
/// there is no timestamp), as lowercase hex. For tests and for clients written in Rust.
pub fn sign_hex(secret: &[u8], timestamp: Option<i64>, body: &[u8]) -> String {
    let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        // HMAC takes keys of any length.
        Err(_) => return String::new(),
    };
    if let Some(t) = timestamp {
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
    }
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test";
    const BODY: &[u8] = br#"{"order":"o-1"}"#;

    fn spec(timestamp_header: Option<&'static str>) -> HmacSpec {
        HmacSpec { secret_env: "S", header: "x-signature", timestamp_header, tolerance: DEFAULT_TOLERANCE }
    }

    fn headers<'a>(pairs: &'a [(&'a str, String)]) -> impl Fn(&str) -> Option<&'a str> {
        move |name| pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    #[test]
    fn hex_base64_and_prefixed_signatures_verify() {
        let hex = sign_hex(SECRET, None, BODY);
        let raw: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
        for signature in
            [hex.clone(), format!("sha256={hex}"), hex.to_uppercase(), b64.clone(), format!("sha256={b64}")]
        {
            let pairs = [("X-Signature", signature.clone())];
            assert_eq!(spec(None).verify(SECRET, headers(&pairs), BODY, 0), Ok(()), "{signature}");
        }
    }

    #[test]
    fn wrong_missing_and_malformed_signatures_are_refused() {
        let good = sign_hex(SECRET, None, BODY);
        let other = sign_hex(b"another secret", None, BODY);
        let s = spec(None);
        assert_eq!(s.verify(SECRET, headers(&[("x-signature", other)]), BODY, 0), Err(VerifyError::Mismatch));
        assert_eq!(s.verify(SECRET, headers(&[("x-signature", good.clone())]), b"{}", 0), Err(VerifyError::Mismatch));
        assert_eq!(s.verify(SECRET, headers(&[]), BODY, 0), Err(VerifyError::MissingSignature("x-signature")));
        assert_eq!(
            s.verify(SECRET, headers(&[("x-signature", "zz".into())]), BODY, 0),
            Err(VerifyError::MalformedSignature("x-signature"))
        );
    }

    #[test]
    fn a_signed_timestamp_outside_the_window_is_a_replay() {
        let s = spec(Some("x-timestamp"));
        let now = 1_800_000_000;
        let signed_at = now - 60;
        let pairs = [("x-signature", sign_hex(SECRET, Some(signed_at), BODY)), ("x-timestamp", signed_at.to_string())];
        assert_eq!(s.verify(SECRET, headers(&pairs), BODY, now), Ok(()));
        // The same request ten minutes later.
        assert_eq!(
            s.verify(SECRET, headers(&pairs), BODY, now + 600),
            Err(VerifyError::Expired { age_secs: 660, tolerance_secs: 300 })
        );
        // A fresh timestamp cannot be pasted onto an old signature.
        let moved = [pairs[0].clone(), ("x-timestamp", (now + 590).to_string())];
        assert_eq!(s.verify(SECRET, headers(&moved), BODY, now + 600), Err(VerifyError::Mismatch));
        assert_eq!(
            s.verify(SECRET, headers(&pairs[..1]), BODY, now),
            Err(VerifyError::MissingTimestamp("x-timestamp"))
        );
    }
}
