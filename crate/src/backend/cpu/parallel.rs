//! Work shared out over candle's pool of worker threads: the same pool as candle's own quantized
//! kernels, whose workers spin briefly between calls. A second pool (rayon's) would have its
//! threads fight this one's for the cores, and sleep and wake between the hundreds of short
//! calls of a decode step.

/// Calls `f(row, out_row)` for every `row_len`-long row of `out`, rows spread over the threads.
pub(super) fn for_each_row_in_parallel(
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
        for (row, dst) in out.chunks_exact_mut(row_len).enumerate() {
            f(row, dst);
        }
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
            for row in range {
                // SAFETY: `execute_chunked` hands every index in 0..rows to exactly one call, so
                // each row is written by one thread only, and it lies inside `out`
                // (row < rows = out.len() / row_len).
                let dst = unsafe {
                    let Output(start) = output;
                    std::slice::from_raw_parts_mut(start.add(row * row_len), row_len)
                };
                f(row, dst);
            }
        });
    }
}
