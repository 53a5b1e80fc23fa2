use netscript::prelude::*;

struct Mailer;

impl Mailer {
    #[job(id = "send-mail")]
    async fn send_mail(&self) -> JobResult<()> {
        Ok(())
    }
}

fn main() {}
