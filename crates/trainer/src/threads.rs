//! Where the trainer's work runs: on one of rayon's workers, not beside them.
//!
//! A matrix product that splits its work across rayon's pool, called from a thread outside the
//! pool, queues its parts for the workers and puts the caller to sleep until they finish; the
//! next operation then waits for the caller to wake. On two cores that is three threads and a
//! wake-up per product (about 10% of a DAS step on SmolLM2). Called from a worker, the product
//! keeps part of the work on the calling thread and hands the rest to the other worker directly.

use anyhow::Result;

/// Runs `work` on a worker of rayon's global pool, built here with the main thread's stack size
/// (8 MiB; rayon's own default is 2 MiB) and `RAYON_NUM_THREADS` workers (one per core by
/// default). With one worker, `work` stays on the calling thread, so that code which waits on
/// threads of its own (the hierarchical recipe's seeds, data-parallel peers) leaves a worker free
/// for their products.
pub fn on_worker<R: Send>(work: impl FnOnce() -> Result<R> + Send) -> Result<R> {
    // A pool built earlier in the process (a test harness, a library user) is kept as it is.
    let _ = rayon::ThreadPoolBuilder::new().stack_size(8 << 20).build_global();
    if rayon::current_num_threads() > 1 { rayon::scope(move |_| work()) } else { work() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_on_a_worker_and_returns_its_result() {
        let inside = on_worker(|| Ok(rayon::current_thread_index())).expect("no error");
        if rayon::current_num_threads() > 1 {
            assert!(inside.is_some(), "the work ran outside rayon's pool");
        } else {
            assert!(inside.is_none(), "with one worker the work stays on the calling thread");
        }
        let failed: Result<()> = on_worker(|| Err(anyhow::anyhow!("the work's own error")));
        assert_eq!(failed.expect_err("the error comes back").to_string(), "the work's own error");
    }
}
