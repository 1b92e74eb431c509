//! The KV cache, rotary embeddings and attention for a few query rows, on plain f32 slices.
//!
//! A decode step attends one query per head to every cached key. Going through candle tensors
//! meant copying (and transposing) the whole visible cache of each layer on every step, which
//! cost more than the attention itself; here each query reads the cache where it lies.

use super::parallel::for_each_rows_in_parallel;
use crate::backend::AttentionParams;
use crate::error::{Error, Result};

/// Keys and values of one layer, each `[kv_heads, capacity, head_dim]`, grown by doubling so a
/// short chat does not reserve the whole context.
pub struct CpuKvCache {
    keys: Vec<f32>,
    values: Vec<f32>,
    capacity: usize,
    pub(super) len: usize,
    head_count_kv: usize,
    head_dim: usize,
    max_len: usize,
}

impl CpuKvCache {
    pub(super) fn new(head_count_kv: usize, head_dim: usize, max_len: usize) -> Self {
        Self {
            keys: Vec::new(),
            values: Vec::new(),
            capacity: 0,
            len: 0,
            head_count_kv,
            head_dim,
            max_len,
        }
    }

    fn reserve(&mut self, needed: usize) -> Result<()> {
        if needed <= self.capacity {
            return Ok(());
        }
        if needed > self.max_len {
            return Err(Error::ContextLength {
                needed,
                limit: self.max_len,
            });
        }
        // needed <= max_len here, so the result is at least `needed`.
        let capacity = needed.max(self.capacity * 2).max(256).min(self.max_len);
        let (head_dim, old_capacity, len) = (self.head_dim, self.capacity, self.len);
        let grow = |old: &[f32]| {
            let mut new = vec![0f32; self.head_count_kv * capacity * head_dim];
            for head in 0..self.head_count_kv {
                let from = head * old_capacity * head_dim;
                let to = head * capacity * head_dim;
                new[to..to + len * head_dim].copy_from_slice(&old[from..from + len * head_dim]);
            }
            new
        };
        self.keys = grow(&self.keys);
        self.values = grow(&self.values);
        self.capacity = capacity;
        Ok(())
    }

    /// Appends the keys and values of `rows` tokens, each `[rows, kv_heads * head_dim]`.
    pub(super) fn append(&mut self, keys: &[f32], values: &[f32], rows: usize) -> Result<()> {
        self.reserve(self.len + rows)?;
        let d = self.head_dim;
        for t in 0..rows {
            for head in 0..self.head_count_kv {
                let from = (t * self.head_count_kv + head) * d;
                let to = (head * self.capacity + self.len + t) * d;
                self.keys[to..to + d].copy_from_slice(&keys[from..from + d]);
                self.values[to..to + d].copy_from_slice(&values[from..from + d]);
            }
        }
        self.len += rows;
        Ok(())
    }

    /// Cached positions `range` of one KV head, `[range.len(), head_dim]`.
    pub(super) fn keys(&self, head: usize, range: std::ops::Range<usize>) -> &[f32] {
        let start = head * self.capacity;
        &self.keys[(start + range.start) * self.head_dim..(start + range.end) * self.head_dim]
    }

    pub(super) fn values(&self, head: usize, range: std::ops::Range<usize>) -> &[f32] {
        let start = head * self.capacity;
        &self.values[(start + range.start) * self.head_dim..(start + range.end) * self.head_dim]
    }
}

/// Rotates the interleaved pairs `(x[2i], x[2i+1])` of each head of each `row_len`-long row in
/// place; `cos` and `sin` are `[rows, head_dim / 2]`. Both lengths are non-zero.
pub(super) fn rope_in_place(
    x: &mut [f32],
    row_len: usize,
    head_dim: usize,
    cos: &[f32],
    sin: &[f32],
) {
    let half = head_dim / 2;
    for (row, (cos, sin)) in x
        .chunks_exact_mut(row_len)
        .zip(cos.chunks_exact(half).zip(sin.chunks_exact(half)))
    {
        for head in row.chunks_exact_mut(head_dim) {
            for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * c - b * s;
                pair[1] = a * s + b * c;
            }
        }
    }
}

/// `softmax(q·kᵀ/√d)·v` of each query row and head, straight over the cache, which already
/// holds these rows' keys and values. `q` is `[rows, heads * head_dim]`, and so is the result.
/// Each (row, head) is computed on its own, in the same order however the rows were batched.
pub(super) fn attend(q: &[f32], cache: &CpuKvCache, p: &AttentionParams, rows: usize) -> Vec<f32> {
    let d = p.head_dim;
    let first_row = cache.len - rows;
    let mut out = vec![0f32; rows * p.head_count * d];
    for_each_rows_in_parallel(&mut out, d, |first, run| {
        // One buffer of attention weights per run, not one allocation per (row, head).
        let mut weights = Vec::new();
        for (item, out) in (first..).zip(run.chunks_exact_mut(d)) {
            attend_one(q, cache, p, first_row, item, &mut weights, out);
        }
    });
    out
}

/// One query row and head (`item` = row × heads + head) into `out` (zeros on entry).
fn attend_one(
    q: &[f32],
    cache: &CpuKvCache,
    p: &AttentionParams,
    first_row: usize,
    item: usize,
    weights: &mut Vec<f32>,
    out: &mut [f32],
) {
    let d = p.head_dim;
    let group = p.head_count / p.head_count_kv;
    let scale = 1.0 / (d as f32).sqrt();
    let (t, head) = (item / p.head_count, item % p.head_count);
    let position = first_row + t;
    let first = p
        .sliding_window
        .map_or(0, |w| (position + 1).saturating_sub(w));
    let visible = first..position + 1;
    let query = &q[item * d..(item + 1) * d];
    let keys = cache.keys(head / group, visible.clone());
    let values = cache.values(head / group, visible);
    weights.clear();
    weights.extend(keys.chunks_exact(d).map(|key| dot(query, key) * scale));
    let max = weights.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0f32;
    for w in weights.iter_mut() {
        *w = (*w - max).exp();
        total += *w;
    }
    for (&w, value) in weights.iter().zip(values.chunks_exact(d)) {
        let w = w / total;
        for (o, &v) in out.iter_mut().zip(value) {
            *o += w * v;
        }
    }
}

/// A dot product in eight independent sums, which the compiler keeps in SIMD registers (one
/// running sum would have to add in order).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0f32; 8];
    let (a_main, a_rest) = a.split_at(a.len() / 8 * 8);
    let (b_main, b_rest) = b.split_at(a_main.len());
    for (a, b) in a_main.chunks_exact(8).zip(b_main.chunks_exact(8)) {
        for i in 0..8 {
            sums[i] += a[i] * b[i];
        }
    }
    let rest: f32 = a_rest.iter().zip(b_rest).map(|(a, b)| a * b).sum();
    sums.iter().sum::<f32>() + rest
}
