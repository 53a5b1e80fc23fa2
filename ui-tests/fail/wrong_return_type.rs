use netscript::prelude::*;

#[job(id = "send-report")]
async fn send_report() -> String {
    "sent".to_owned()
}

fn main() {}
