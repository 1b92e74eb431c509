//! Work shared out over candle's pool of worker threads: the same pool as candle's own quantized
//! kernels, whose workers spin briefly between calls. A second pool (rayon's) would have its
//! threads fight this one's for the cores, and sleep and wake between the hundreds of short
//! calls of a decode step.

/// Calls `f(first_row, rows)` on consecutive runs of `row_len`-long rows of `out` that together
/// cover it once, the runs spread over the threads.
pub(super) fn for_each_rows_in_parallel(
    out: &mut [f32],
    row_len: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    if row_len == 0 {
        return;
    }
    #[cfg(target_arch = "wasm32")]
    {
        // No worker threads in wasm.
        f(0, out);
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        /// The output's address, shared with the workers.
        struct Output(*mut f32);
        // SAFETY: the workers write disjoint rows (below), and the pool returns only once all of
        // them are done, while `out` is still borrowed mutably here.
        unsafe impl Sync for Output {}
        let rows = out.len() / row_len;
        let output = &Output(out.as_mut_ptr());
        candle_core::utils::barrier_pool().execute_chunked(rows, |range| {
            // SAFETY: `execute_chunked` hands out disjoint ranges inside 0..rows, so each run of
            // rows is written by one thread only, and it lies inside `out`
            // (range.end <= rows = out.len() / row_len).
            let run = unsafe {
                let Output(start) = output;
                std::slice::from_raw_parts_mut(
                    start.add(range.start * row_len),
                    range.len() * row_len,
                )
            };
            f(range.start, run);
        });
    }
}
