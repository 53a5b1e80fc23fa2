use netscript::prelude::*;

#[derive(Deserialize, JsonSchema)]
struct Body {
    _n: u32,
}

#[webhook(id = "Payment_Hook", path = "webhooks/payment", verifier = "hmac-sha256", secret_env = "webhook-secret")]
async fn bad_id_path_and_secret(_event: WebhookEvent<Body>) -> Vec<Action> {
    vec![]
}

#[webhook(id = "rsa-hook", path = "/webhooks/{id}", verifier = "rsa-sha512", sekret_env = "S")]
async fn bad_verifier_and_unknown_argument(_event: WebhookEvent<Body>) -> Vec<Action> {
    vec![]
}

#[webhook(id = "no-secret", path = "/api/v1/hook", verifier = "hmac-sha256", header = "X Signature", tolerance = "1m")]
async fn reserved_path_missing_secret_bad_header(_event: WebhookEvent<Body>) -> Vec<Action> {
    vec![]
}

#[webhook(id = "open", path = "/hooks/open", verifier = "none", secret_env = "UNUSED")]
async fn none_with_a_secret(_event: WebhookEvent<Body>) -> Vec<Action> {
    vec![]
}

fn main() {}
