use netscript::prelude::*;

#[derive(Deserialize, JsonSchema)]
struct Body {
    _n: u32,
}

struct NotJson;

#[webhook(id = "takes-a-string", path = "/hooks/a", verifier = "none")]
async fn takes_a_string(body: String) -> Vec<Action> {
    let _ = body;
    vec![]
}

#[webhook(id = "returns-nothing", path = "/hooks/b", verifier = "none")]
fn returns_nothing(_event: WebhookEvent<Body>) {}

#[webhook(id = "not-json", path = "/hooks/c", verifier = "none")]
async fn not_json(_event: WebhookEvent<NotJson>) -> Vec<Action> {
    vec![]
}

#[webhook(id = "wrong-return", path = "/hooks/d", verifier = "none")]
async fn wrong_return(_event: WebhookEvent<Body>) -> u32 {
    0
}

fn main() {}
