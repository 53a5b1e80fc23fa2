//! Entry points for the cargo-fuzz targets in `fuzz/` (see `docs/fuzzing.md`).
//!
//! Thin public wrappers around decoders that are internal to the runtime, so that the fuzz
//! crate, which sits outside the workspace, can call them. They exist for fuzzing only: they
//! are not a stable API, may change or disappear in any release, and applications should not
//! call them. What is public elsewhere (`webhook::HmacSpec::verify`, `webhook::sign_hex`,
//! `cron`) is fuzzed through its public path instead.

use crate::api::ApiError;
use crate::job::EnqueueOptions;

/// The HTTP trigger's body decoder (`POST /api/v1/workers/jobs/{id}/trigger`): splits a body
/// into the job's payload and the enqueue options of an envelope.
///
/// For the fuzz targets only, not a stable API.
pub fn parse_trigger_body(body: &[u8]) -> Result<(serde_json::Value, EnqueueOptions), ApiError> {
    crate::api::parse_trigger_body(body)
}

/// The webhook signature header decoder: `sha256=<hex>`, `<hex>` or base64 of 32 bytes, or
/// `None` when the header is none of these.
///
/// For the fuzz targets only, not a stable API.
pub fn decode_signature(text: &str) -> Option<Vec<u8>> {
    crate::webhook::decode_signature(text)
}
