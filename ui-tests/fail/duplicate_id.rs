mod billing {
    use netscript::prelude::*;

    #[job(id = "send-invoice")]
    pub async fn send_invoice() -> JobResult<()> {
        Ok(())
    }
}

mod reminders {
    use netscript::prelude::*;

    #[job(id = "send-invoice")]
    pub async fn send_reminder() -> JobResult<()> {
        Ok(())
    }
}

fn main() {}
