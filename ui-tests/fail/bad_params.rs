use netscript::prelude::*;

#[derive(Deserialize, JsonSchema)]
struct Import {
    url: String,
}

#[job(id = "by-reference")]
async fn by_reference(payload: &Import) -> JobResult<()> {
    let _ = &payload.url;
    Ok(())
}

#[job(id = "two-contexts")]
async fn two_contexts(ctx: JobContext, again: JobContext) -> JobResult<()> {
    let _ = (ctx, again);
    Ok(())
}

#[job(id = "impl-trait")]
async fn impl_trait(payload: impl JsonSchema) -> JobResult<()> {
    let _ = payload;
    Ok(())
}

fn main() {}
