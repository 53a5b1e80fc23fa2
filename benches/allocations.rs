//! Heap allocations per no-op job on the memory backend, enqueue and run separately.
//!
//! ```text
//! cargo bench --bench allocations
//! ```
//!
//! A counting global allocator wraps the system one; the figure guides work on the per-job
//! cost of the hot path (see docs/BENCHMARKS.md).

#![allow(clippy::unwrap_used)] // a benchmark: a failed unwrap is a failed run

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use netscript::QueueProvider;
use netscript::prelude::*;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

static DONE: AtomicUsize = AtomicUsize::new(0);

/// Does nothing but count itself.
#[job(id = "noop", retries = 0)]
async fn noop() -> JobResult<()> {
    DONE.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    tokio.block_on(async {
        let rt = Runtime::builder().ignore_env().provider(QueueProvider::Memory).build().await.unwrap();
        let jobs = 50_000;
        let before_enqueue = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..jobs / 1000 {
            rt.enqueue_many((0..1000).map(|_| noop::enqueue()).collect()).await.unwrap();
        }
        let before_run = ALLOCATIONS.load(Ordering::Relaxed);
        let workers = rt.spawn_workers();
        while DONE.load(Ordering::Relaxed) < jobs {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        workers.stop().await;
        let after = ALLOCATIONS.load(Ordering::Relaxed);
        println!(
            "memory: {:.1} allocations per enqueued job, {:.1} per run (claim, run, record, ack), over {jobs} jobs",
            (before_run - before_enqueue) as f64 / jobs as f64,
            (after - before_run) as f64 / jobs as f64,
        );
    });
}
