use std::cell::Cell;

use netscript::prelude::*;

struct Counter(Cell<u32>);

#[job(id = "count")]
async fn count(State(counter): State<Counter>) -> JobResult<u32> {
    Ok(counter.0.get())
}

fn main() {}
