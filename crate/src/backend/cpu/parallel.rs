//! Work shared out over candle's pool of worker threads: the same pool as candle's own quantized
//! kernels, whose workers spin briefly between calls. A second pool (rayon's) would have its
//! threads fight this one's for the cores, and sleep and wake between the hundreds of short
//! calls of a decode step.

/// [`argmax`](crate::sampling::argmax) of `values` (the same index), the scan shared out over
/// the threads in runs of `ARGMAX_CHUNK` values: a vocabulary of 131072 logits took 4 % of the
/// tiny Mistral's decode step on one thread while the others waited.
pub(super) fn argmax_in_parallel(values: &[f32]) -> u32 {
    const ARGMAX_CHUNK: usize = 16384;
    // Per chunk: its first maximum's index (as bits) and value.
    let mut best = vec![0f32; 2 * values.len().div_ceil(ARGMAX_CHUNK)];
    for_each_rows_in_parallel(&mut best, 2, |first, run| {
        for (c, out) in (first..).zip(run.chunks_exact_mut(2)) {
            let start = c * ARGMAX_CHUNK;
            let chunk = &values[start..values.len().min(start + ARGMAX_CHUNK)];
            let i = crate::sampling::argmax(chunk) as usize;
            out[0] = f32::from_bits((start + i) as u32);
            out[1] = chunk[i];
        }
    });
    // A later chunk wins only with a strictly larger value (NaN never), as in one scan; when
    // nothing beats -inf, that is index 0.
    let mut winner = (0, f32::NEG_INFINITY);
    for chunk in best.chunks_exact(2) {
        if chunk[1] > winner.1 {
            winner = (chunk[0].to_bits(), chunk[1]);
        }
    }
    winner.0
}

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
        for_each_in_parallel(rows, |range| {
            // SAFETY: `for_each_in_parallel` hands out disjoint ranges inside 0..rows, so each run of
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

/// Calls `f` on disjoint runs of `0..units` that together cover it once, the runs spread over
/// the threads; returns when all are done.
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn for_each_in_parallel(units: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    candle_core::utils::barrier_pool().execute_chunked(units, f);
}
