use netscript::prelude::*;

#[job(id = "process-payment")]
struct ProcessPayment;

fn main() {}
