use netscript::prelude::*;

#[job(id = "import")]
async fn import<T: JsonSchema>(payload: T) -> JobResult<()> {
    let _ = payload;
    Ok(())
}

fn main() {}

#[job(id = "with-where")]
async fn with_where() -> JobResult<()>
where
    String: Sized,
{
    Ok(())
}
