//! Webhooks: `#[webhook]` functions that turn a verified HTTP call into actions, such as
//! enqueueing a job.
//!
//! ```text
//! POST <path> ──► body limit ──► signature (401) ──► decode the body as T (400) ──► handler
//!             ──► actions (enqueues; 422 for a payload a job refuses) ──► 202 { executionIds }
//! ```
//!
//! Webhook routes are not behind the API's bearer token: their verifier is their
//! authentication. A `hmac-sha256` webhook's secret comes from the environment variable it
//! names (or [`RuntimeBuilder::webhook_secret`](crate::RuntimeBuilder::webhook_secret)); a
//! missing one stops startup with an error naming the variable.

mod event;
mod verify;

use std::collections::HashMap;

pub use event::{WebhookError, WebhookEvent, WebhookFn, WebhookFuture, WebhookRequest, decode};
pub(crate) use verify::decode_signature;
pub use verify::{DEFAULT_SIGNATURE_HEADER, DEFAULT_TOLERANCE, HmacSpec, Verifier, VerifyError, sign_hex};

use crate::job::Location;

/// Every webhook in the binary, collected at link time by `#[webhook]`.
#[linkme::distributed_slice]
pub static WEBHOOKS: [WebhookDescriptor];

/// Everything the runtime knows about a webhook: written by `#[webhook]` as a `static`.
#[derive(Debug)]
pub struct WebhookDescriptor {
    /// Unique kebab-case id.
    pub id: &'static str,
    /// The route, such as `/webhooks/payment` (POST).
    pub path: &'static str,
    /// How requests are authenticated.
    pub verifier: Verifier,
    /// From the `description` argument, or the function's doc comment.
    pub description: &'static str,
    /// Free-form tags.
    pub tags: &'static [&'static str],
    /// The Rust type of the body.
    pub body_type: &'static str,
    /// The body's JSON Schema.
    pub body_schema: fn() -> schemars::Schema,
    /// Decodes a request and runs the function.
    pub handler: WebhookFn,
    /// Where it was declared.
    pub location: Location,
}

/// A problem with the registered webhooks, found at startup.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WebhookSetError {
    /// Two webhooks share an id or a path.
    #[error("two webhooks have the {what} `{value}`: one in {first}, one in {second}")]
    Duplicate {
        /// `id` or `path`.
        what: &'static str,
        /// The shared value.
        value: &'static str,
        /// Where the first was declared.
        first: String,
        /// Where the second was declared.
        second: String,
    },
    /// A path that the API itself serves.
    #[error("webhook `{id}`: the path `{path}` is the API's; pick one outside /api/ and /health")]
    ReservedPath {
        /// The webhook.
        id: &'static str,
        /// Its path.
        path: &'static str,
    },
    /// The secret's environment variable is not set.
    #[error(
        "webhook `{id}` verifies signatures with the secret in `{variable}`, which is not set; \
         set it (or give the secret with RuntimeBuilder::webhook_secret)"
    )]
    MissingSecret {
        /// The webhook.
        id: &'static str,
        /// The variable.
        variable: &'static str,
    },
}

/// A webhook ready to serve: its descriptor and, for a signing verifier, its secret.
#[derive(Clone)]
pub struct ArmedWebhook {
    /// The webhook.
    pub descriptor: &'static WebhookDescriptor,
    /// The secret (empty for `Verifier::None`).
    pub secret: std::sync::Arc<[u8]>,
}

impl std::fmt::Debug for ArmedWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmedWebhook").field("id", &self.descriptor.id).finish_non_exhaustive()
    }
}

/// Checks the webhooks (unique ids and paths, none on the API's paths) and finds each one's
/// secret with `secret` (a variable's value by name). Sorted by id.
pub fn arm_webhooks(
    webhooks: impl IntoIterator<Item = &'static WebhookDescriptor>,
    secret: impl Fn(&str) -> Option<String>,
) -> Result<Vec<ArmedWebhook>, WebhookSetError> {
    let mut ids: HashMap<&str, &WebhookDescriptor> = HashMap::new();
    let mut paths: HashMap<&str, &WebhookDescriptor> = HashMap::new();
    let mut armed = Vec::new();
    for webhook in webhooks {
        for (what, value, seen) in [("id", webhook.id, &mut ids), ("path", webhook.path, &mut paths)] {
            if let Some(first) = seen.insert(value, webhook) {
                return Err(WebhookSetError::Duplicate {
                    what,
                    value,
                    first: first.location.to_string(),
                    second: webhook.location.to_string(),
                });
            }
        }
        if webhook.path == "/health" || webhook.path.starts_with("/api/") {
            return Err(WebhookSetError::ReservedPath { id: webhook.id, path: webhook.path });
        }
        let secret: Vec<u8> = match webhook.verifier {
            Verifier::None => {
                tracing::warn!(
                    webhook = webhook.id,
                    path = webhook.path,
                    "webhook has verifier `none`: anyone who can reach it can call it"
                );
                Vec::new()
            }
            Verifier::HmacSha256(spec) => match secret(spec.secret_env).filter(|s| !s.is_empty()) {
                Some(value) => value.into_bytes(),
                None => return Err(WebhookSetError::MissingSecret { id: webhook.id, variable: spec.secret_env }),
            },
        };
        armed.push(ArmedWebhook { descriptor: webhook, secret: secret.into() });
    }
    armed.sort_by_key(|w| w.descriptor.id);
    Ok(armed)
}
