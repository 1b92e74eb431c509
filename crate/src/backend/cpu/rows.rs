//! Weight matrices multiplied by our own kernels: the weights stay in their GGUF blocks, the
//! activations are quantized to 8 bits once per call, and each weight row is one dot product per
//! activation row, rows shared out over the threads.
//!
//! - Q4_1 everywhere: candle-core has only scalar code for it (its dot took ~80% of SmolLM2's
//!   decode time).
//! - Q8_0 in wasm: candle's simd128 kernel converts two f16 scales in software and widens the
//!   same activations again for every weight row (it ran at less than half our Q4_1 kernel's speed
//!   per weight). Natively candle's AVX kernels, repacked for prompts, are kept.
//! - Q6_K natively with AVX2, for an output projection of Mistral-shaped files that the tiles
//!   (`tiles.rs`) cannot take (see `CpuBackend::load_head`): two rows at a time,
//!   sharing the activations, where candle's kernel takes one (tiny Mistral's 131072 x 512 head
//!   at 2 threads: 24.4 -> 27.0 GB/s).

use half::f16;

use super::parallel::for_each_rows_in_parallel;

use crate::error::{Error, Result};

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod avx2;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128;

/// Elements per activation block, and per weight block of Q4_1 and Q8_0.
const BLOCK: usize = 32;
/// Elements per Q6_K super-block (eight activation blocks).
const SUPER_BLOCK: usize = 256;

/// A GGUF block layout that our kernels multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowFormat {
    /// f16 scale `d`, f16 minimum `m`, 16 bytes of nibbles (elements 0–15 low, 16–31 high).
    Q4_1,
    /// f16 scale `d`, 32 signed bytes.
    Q8_0,
    /// 256 elements of 6 bits: 128 bytes of low nibbles, 64 bytes of high bit pairs, 16 signed
    /// scales (one per 16 elements), f16 super-scale `d`.
    Q6K,
}

impl RowFormat {
    fn block_bytes(self) -> usize {
        match self {
            RowFormat::Q4_1 => 20,
            RowFormat::Q8_0 => 34,
            RowFormat::Q6K => 210,
        }
    }

    fn block_values(self) -> usize {
        match self {
            RowFormat::Q4_1 | RowFormat::Q8_0 => BLOCK,
            RowFormat::Q6K => SUPER_BLOCK,
        }
    }
}

/// Activations quantized for the dot product: `x ≈ d · q`, and `s = d · Σq` for the Q4_1 minimum
/// term.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
pub struct BlockQ8_1 {
    qs: [i8; BLOCK],
    d: f32,
    s: f32,
    /// `d` rounded to f16, as GGUF's Q8_0 activation blocks store it: Q8_0 products then equal
    /// candle's and llama.cpp's.
    d_f16: f32,
    /// `qs` widened to 16 bits once per token, for wasm's `i32x4_dot_i16x8` (otherwise every
    /// weight row would widen the same activations again).
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    wide: [i16; BLOCK],
}

/// 256 activations with one scale, for Q6_K rows (as llama.cpp's Q8_K): `x ≈ d · q`, and the
/// sum of `q` over each 16 values, with which the kernel takes off the +32 of Q6_K's stored
/// values once per super-block instead of once per 32 products.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub struct SuperBlockQ8 {
    qs: [i8; SUPER_BLOCK],
    sums: [i16; SUPER_BLOCK / 16],
    d: f32,
}

/// A `rows × cols` weight matrix in its GGUF encoding.
pub struct RowMatrix {
    format: RowFormat,
    bytes: Vec<u8>,
    rows: usize,
    cols: usize,
}

impl RowMatrix {
    pub fn new(format: RowFormat, bytes: Vec<u8>, rows: usize, cols: usize) -> Result<Self> {
        let block_values = format.block_values();
        if !cols.is_multiple_of(block_values)
            || bytes.len() != rows * cols / block_values * format.block_bytes()
        {
            return Err(Error::Backend(format!(
                "{format:?} matrix {rows}x{cols} has {} bytes",
                bytes.len()
            )));
        }
        Ok(Self {
            format,
            bytes,
            rows,
            cols,
        })
    }

    pub fn format(&self) -> RowFormat {
        self.format
    }

    /// The GGUF blocks, row after row.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `x · Wᵀ` for `x` of `m × cols` (row-major), giving `m × rows`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        matmul_many(&[self], x, m).pop().unwrap_or_default()
    }
}

/// `x · Wᵢᵀ` for several matrices with the same `cols` (Q, K and V; gate and up): the activations
/// are quantized once and all rows are shared out in one parallel pass, so a decode step wakes
/// the worker threads once per group instead of once per matrix.
pub fn matmul_many(matrices: &[&RowMatrix], x: &[f32], m: usize) -> Vec<Vec<f32>> {
    let Some(first) = matrices.first() else {
        return Vec::new();
    };
    let cols = first.cols;
    assert!(
        matrices.iter().all(|w| w.cols == cols),
        "matrices of one group share their column count"
    );
    let blocks_per_row = cols / BLOCK;
    // Each kind of activation block only where a matrix of the group takes it (a Q6_K head alone
    // takes only the super-block kind).
    let needs = |pred: fn(RowFormat) -> bool| matrices.iter().any(|w| pred(w.format));
    let activations: Vec<BlockQ8_1> = if needs(|f| f != RowFormat::Q6K) {
        x.chunks_exact(BLOCK).map(quantize_block).collect()
    } else {
        Vec::new()
    };
    let act_row = |i: usize| &activations[i * blocks_per_row..(i + 1) * blocks_per_row];
    // Q6_K rows take activations with one scale per super-block: their kernel then adds a
    // super-block's eight quarters as integers.
    let super_activations: Vec<SuperBlockQ8> = if needs(|f| f == RowFormat::Q6K) {
        x.chunks_exact(SUPER_BLOCK)
            .map(quantize_super_block)
            .collect()
    } else {
        Vec::new()
    };
    let super_blocks_per_row = cols / SUPER_BLOCK;
    let super_act_row =
        |i: usize| &super_activations[i * super_blocks_per_row..(i + 1) * super_blocks_per_row];
    // Rows of all matrices, one after another.
    let starts: Vec<usize> = matrices
        .iter()
        .scan(0, |next, w| Some(std::mem::replace(next, *next + w.rows)))
        .collect();
    let total_rows: usize = matrices.iter().map(|w| w.rows).sum();
    // Weight row outer, activation rows inner: each weight row is read once per call.
    let mut by_row = vec![0f32; total_rows * m];
    for_each_rows_in_parallel(&mut by_row, m, |first, run| {
        // The run's rows, matrix by matrix.
        let (mut row, mut out) = (first, run);
        while !out.is_empty() {
            let i = starts.partition_point(|&s| s <= row) - 1;
            let (w, j) = (matrices[i], row - starts[i]);
            let n = (w.rows - j).min(out.len() / m);
            let row_bytes = cols / w.format.block_values() * w.format.block_bytes();
            let (now, rest) = std::mem::take(&mut out).split_at_mut(n * m);
            let bytes = &w.bytes[j * row_bytes..(j + n) * row_bytes];
            match w.format {
                RowFormat::Q4_1 => {
                    multiply_rows(bytes, row_bytes, now, m, act_row, dot_q4_1_pair, dot_q4_1)
                }
                RowFormat::Q8_0 => {
                    multiply_rows(bytes, row_bytes, now, m, act_row, dot_q8_0_pair, dot_q8_0)
                }
                RowFormat::Q6K => multiply_rows(
                    bytes,
                    row_bytes,
                    now,
                    m,
                    super_act_row,
                    dot_q6_k_pair,
                    dot_q6_k,
                ),
            }
            (row, out) = (row + n, rest);
        }
    });
    // Back to one `m × rows` output per matrix.
    matrices
        .iter()
        .zip(&starts)
        .map(|(w, &start)| {
            let part = &by_row[start * m..(start + w.rows) * m];
            if m == 1 {
                return part.to_vec();
            }
            let mut out = vec![0f32; m * w.rows];
            for j in 0..w.rows {
                for i in 0..m {
                    out[i * w.rows + j] = part[j * m + i];
                }
            }
            out
        })
        .collect()
}

/// Consecutive weight rows of one format (`row_bytes` each) times every activation row, into
/// `out` (weight row outer, `act(i)` for activation row i inner), with a kernel's dot product of
/// two weight rows and of one. Rows go two at a time: the kernels share the activations' loads,
/// and each row's sums are the single-row kernel's, so results do not depend on the pairing.
/// Inlined, so that the kernels are too: a call per pair of short rows (the tiny Mistral's head
/// has 65536 pairs of 420 bytes) cost more than its loop.
#[inline(always)]
fn multiply_rows<'a, A: 'a>(
    bytes: &[u8],
    row_bytes: usize,
    out: &mut [f32],
    m: usize,
    act: impl Fn(usize) -> &'a [A],
    pair: impl Fn(&[u8], &[u8], &[A]) -> [f32; 2],
    single: impl Fn(&[u8], &[A]) -> f32,
) {
    let mut pairs = out.chunks_exact_mut(2 * m);
    for (dst, w) in (&mut pairs).zip(bytes.chunks_exact(2 * row_bytes)) {
        let (w0, w1) = w.split_at(row_bytes);
        let (dst0, dst1) = dst.split_at_mut(m);
        for (i, (d0, d1)) in dst0.iter_mut().zip(dst1).enumerate() {
            [*d0, *d1] = pair(w0, w1, act(i));
        }
    }
    let last = pairs.into_remainder();
    if !last.is_empty() {
        let w = &bytes[bytes.len() - row_bytes..];
        for (i, d) in last.iter_mut().enumerate() {
            *d = single(w, act(i));
        }
    }
}

fn quantize_block(x: &[f32]) -> BlockQ8_1 {
    quantize_with_scale(x, max_magnitude(x) / 127.0)
}

/// 256 activations with one scale, from their largest magnitude.
fn quantize_super_block(x: &[f32]) -> SuperBlockQ8 {
    let d = max_magnitude(x) / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; SUPER_BLOCK];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * inv).round() as i8;
    }
    // At most 16 · 127 in magnitude.
    let sums =
        std::array::from_fn(|g| qs[16 * g..16 * (g + 1)].iter().map(|&q| i16::from(q)).sum());
    SuperBlockQ8 { qs, sums, d }
}

fn max_magnitude(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |a, v| a.max(v.abs()))
}

/// 32 activations as `d · q` for the given scale `d`.
fn quantize_with_scale(x: &[f32], d: f32) -> BlockQ8_1 {
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; BLOCK];
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * inv).round() as i8;
        sum += *q as i32;
    }
    BlockQ8_1 {
        qs,
        d,
        s: d * sum as f32,
        d_f16: f16::from_f32(d).to_f32(),
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        wide: qs.map(i16::from),
    }
}

fn scale_and_min(block: &[u8]) -> (f32, f32) {
    let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
    let m = f16::from_le_bytes([block[2], block[3]]).to_f32();
    (d, m)
}

/// Dot product of one Q4_1 weight row with one Q8_1 activation row.
fn dot_q4_1(weights: &[u8], act: &[BlockQ8_1]) -> f32 {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    {
        // SAFETY: the target features are enabled at compile time; slices are bounds-checked.
        unsafe { avx2::dot_q4_1(weights, act) }
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        simd128::dot_q4_1(weights, act)
    }
    #[cfg(not(any(
        all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        ),
        all(target_arch = "wasm32", target_feature = "simd128")
    )))]
    {
        dot_q4_1_scalar(weights, act)
    }
}

#[allow(dead_code)]
fn dot_q4_1_scalar(weights: &[u8], act: &[BlockQ8_1]) -> f32 {
    let mut total = 0f32;
    for (block, a) in weights.chunks_exact(RowFormat::Q4_1.block_bytes()).zip(act) {
        let (d, m) = scale_and_min(block);
        let qs = &block[4..];
        let mut sum = 0i32;
        for (i, &q) in qs[..16].iter().enumerate() {
            sum += (q & 0x0F) as i32 * a.qs[i] as i32;
            sum += (q >> 4) as i32 * a.qs[i + 16] as i32;
        }
        total += d * a.d * sum as f32 + m * a.s;
    }
    total
}

/// Two Q4_1 weight rows against one activation row, each exactly as `dot_q4_1` computes it. The
/// rows share the activations' loads and the loop, and their two chains of sums run side by side
/// (SmolLM2 decode in Chromium 29.9 -> 40.8 tok/s, natively at 2 threads 95-99 -> 122-126).
fn dot_q4_1_pair(w0: &[u8], w1: &[u8], act: &[BlockQ8_1]) -> [f32; 2] {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    {
        // SAFETY: the target features are enabled at compile time; slices are bounds-checked.
        unsafe { avx2::dot_q4_1_pair(w0, w1, act) }
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        simd128::dot_q4_1_pair(w0, w1, act)
    }
    #[cfg(not(any(
        all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        ),
        all(target_arch = "wasm32", target_feature = "simd128")
    )))]
    {
        [dot_q4_1(w0, act), dot_q4_1(w1, act)]
    }
}

/// Dot product of one Q8_0 weight row with one Q8 activation row.
fn dot_q8_0(weights: &[u8], act: &[BlockQ8_1]) -> f32 {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        simd128::dot_q8_0(weights, act)
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        dot_q8_0_scalar(weights, act)
    }
}

#[allow(dead_code)]
fn dot_q8_0_scalar(weights: &[u8], act: &[BlockQ8_1]) -> f32 {
    let mut total = 0f32;
    for (block, a) in weights.chunks_exact(RowFormat::Q8_0.block_bytes()).zip(act) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let sum: i32 = block[2..]
            .iter()
            .zip(&a.qs)
            .map(|(&w, &q)| w as i8 as i32 * q as i32)
            .sum();
        total += d * a.d_f16 * sum as f32;
    }
    total
}

/// Two Q8_0 weight rows against one activation row, each exactly as `dot_q8_0` computes it (in
/// wasm sharing the activations' loads; elsewhere two single-row calls).
fn dot_q8_0_pair(w0: &[u8], w1: &[u8], act: &[BlockQ8_1]) -> [f32; 2] {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        simd128::dot_q8_0_pair(w0, w1, act)
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        [dot_q8_0(w0, act), dot_q8_0(w1, act)]
    }
}

/// The six-bit value (0..64, i.e. q + 32) of element `32·j + l` of half `n` of a Q6_K
/// super-block, and the index of its scale: quarter `j` takes the low nibbles of `ql[l]` (j = 0)
/// or `ql[l + 32]` (j = 1), then their high nibbles (j = 2, 3), and bits `2j, 2j + 1` of `qh[l]`.
fn q6_k_value(block: &[u8], n: usize, j: usize, l: usize) -> (i32, usize) {
    let ql = block[64 * n + l + 32 * (j % 2)];
    let low = if j < 2 { ql & 0x0F } else { ql >> 4 };
    let high = (block[128 + 32 * n + l] >> (2 * j)) & 3;
    (i32::from(low | (high << 4)), 8 * n + 2 * j + l / 16)
}

/// Dot product of one Q6_K weight row with one activation row from `quantize_super_block` (the
/// eight blocks of each super-block share their scale).
fn dot_q6_k(weights: &[u8], act: &[SuperBlockQ8]) -> f32 {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    {
        // SAFETY: the target features are enabled at compile time; slices are bounds-checked.
        unsafe { avx2::dot_q6_k(weights, act) }
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    {
        dot_q6_k_scalar(weights, act)
    }
}

#[allow(dead_code)]
fn dot_q6_k_scalar(weights: &[u8], act: &[SuperBlockQ8]) -> f32 {
    let mut total = 0f32;
    let block_bytes = RowFormat::Q6K.block_bytes();
    for (block, a) in weights.chunks_exact(block_bytes).zip(act) {
        let d = f16::from_le_bytes([block[208], block[209]]).to_f32();
        let mut sum = 0i32;
        for (c, a) in a.qs.chunks_exact(BLOCK).enumerate() {
            let (n, j) = (c / 4, c % 4);
            for (l, &a) in a.iter().enumerate() {
                let (q, scale) = q6_k_value(block, n, j, l);
                sum += (q - 32) * i32::from(a) * i32::from(block[192 + scale] as i8);
            }
        }
        total += d * a.d * sum as f32;
    }
    total
}

/// Two Q6_K weight rows against one activation row, each exactly as `dot_q6_k` computes it (with
/// AVX2 sharing the activations' loads; elsewhere two single-row calls).
fn dot_q6_k_pair(w0: &[u8], w1: &[u8], act: &[SuperBlockQ8]) -> [f32; 2] {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    {
        // SAFETY: the target features are enabled at compile time; slices are bounds-checked.
        unsafe { avx2::dot_q6_k_pair(w0, w1, act) }
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    {
        [dot_q6_k(w0, act), dot_q6_k(w1, act)]
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_blocks::{
        assert_matches_dequantized, dequantize_q6_k, random_bytes, random_q6_k,
    };
    use super::*;

    fn random_q4_1(rows: usize, cols: usize, seed: u32) -> Vec<u8> {
        let mut next = random_bytes(seed);
        let mut bytes = Vec::new();
        for _ in 0..rows * cols / BLOCK {
            let d = f16::from_f32(0.01 + next() as f32 / 5000.0);
            let m = f16::from_f32(-(next() as f32) / 3000.0);
            bytes.extend_from_slice(&d.to_le_bytes());
            bytes.extend_from_slice(&m.to_le_bytes());
            bytes.extend((0..16).map(|_| next()));
        }
        bytes
    }

    fn random_q8_0(rows: usize, cols: usize, seed: u32) -> Vec<u8> {
        let mut next = random_bytes(seed);
        let mut bytes = Vec::new();
        for _ in 0..rows * cols / BLOCK {
            let d = f16::from_f32(0.0001 + next() as f32 / 500_000.0);
            bytes.extend_from_slice(&d.to_le_bytes());
            // -127..=127, as GGUF's quantizer writes them.
            bytes.extend((0..BLOCK).map(|_| (next() % 255) as i8 as u8 ^ 0x80));
        }
        bytes
    }

    fn random(format: RowFormat, rows: usize, cols: usize, seed: u32) -> Vec<u8> {
        match format {
            RowFormat::Q4_1 => random_q4_1(rows, cols, seed),
            RowFormat::Q8_0 => random_q8_0(rows, cols, seed),
            RowFormat::Q6K => random_q6_k(rows, cols, seed),
        }
    }

    fn dequantize(format: RowFormat, bytes: &[u8]) -> Vec<f32> {
        let mut out = Vec::new();
        for block in bytes.chunks_exact(format.block_bytes()) {
            match format {
                RowFormat::Q4_1 => {
                    let (d, m) = scale_and_min(block);
                    let qs = &block[4..];
                    out.extend(qs.iter().map(|q| d * (q & 0x0F) as f32 + m));
                    out.extend(qs.iter().map(|q| d * (q >> 4) as f32 + m));
                }
                RowFormat::Q8_0 => {
                    let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
                    out.extend(block[2..].iter().map(|&q| d * q as i8 as f32));
                }
                // Written from GGUF's layout, not from our kernel's `q6_k_value`.
                RowFormat::Q6K => out.extend(dequantize_q6_k(block)),
            }
        }
        out
    }

    /// Against an f64 product of the dequantized weights: the only error is the Q8 rounding of
    /// the activations, bounded here by 1% of the sum of |terms|.
    #[test]
    fn matmul_matches_dequantized_product() {
        let cases = [(7, 32, 1), (33, 64, 1), (64, 576, 3), (17, 96, 5)];
        let super_block_cases = [(7, 256, 1), (33, 512, 1), (64, 1024, 3), (17, 768, 5)];
        for format in [RowFormat::Q4_1, RowFormat::Q8_0, RowFormat::Q6K] {
            let cases = if format == RowFormat::Q6K {
                super_block_cases
            } else {
                cases
            };
            for (rows, cols, m) in cases {
                let bytes = random(format, rows, cols, rows as u32 * 31 + cols as u32);
                let w = dequantize(format, &bytes);
                let x: Vec<f32> = (0..m * cols)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                    .collect();
                let got = RowMatrix::new(format, bytes.clone(), rows, cols)
                    .unwrap()
                    .matmul(&x, m);
                assert_matches_dequantized(&format!("{format:?}"), &got, &w, &x, rows);
            }
        }
    }

    /// The SIMD paths and the portable ones agree to float rounding.
    #[test]
    fn simd_dots_match_the_scalar_ones() {
        let cols = 576;
        let x: Vec<f32> = (0..cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let act: Vec<BlockQ8_1> = x.chunks_exact(BLOCK).map(quantize_block).collect();
        let q4_1 = random_q4_1(1, cols, 5);
        let q8_0 = random_q8_0(1, cols, 5);
        let super_cols = cols / SUPER_BLOCK * SUPER_BLOCK;
        let super_blocks: Vec<SuperBlockQ8> = x[..super_cols]
            .chunks_exact(SUPER_BLOCK)
            .map(quantize_super_block)
            .collect();
        let q6_k = random_q6_k(1, super_cols, 5);
        for (simd, scalar) in [
            (dot_q4_1(&q4_1, &act), dot_q4_1_scalar(&q4_1, &act)),
            (dot_q8_0(&q8_0, &act), dot_q8_0_scalar(&q8_0, &act)),
            (
                dot_q6_k(&q6_k, &super_blocks),
                dot_q6_k_scalar(&q6_k, &super_blocks),
            ),
        ] {
            assert!(
                (simd - scalar).abs() <= 1e-4 * scalar.abs().max(1.0),
                "{simd} vs {scalar}"
            );
        }
    }

    /// The two-row kernel sums each row exactly as the one-row kernel does, so the products do
    /// not depend on which rows were paired.
    #[test]
    fn paired_rows_equal_single_rows() {
        let cols = 576;
        let x: Vec<f32> = (0..cols)
            .map(|i| ((i * 41 % 89) as f32 - 44.0) / 9.0)
            .collect();
        let act: Vec<BlockQ8_1> = x.chunks_exact(BLOCK).map(quantize_block).collect();
        let (w0, w1) = (random_q4_1(1, cols, 11), random_q4_1(1, cols, 12));
        assert_eq!(
            dot_q4_1_pair(&w0, &w1, &act),
            [dot_q4_1(&w0, &act), dot_q4_1(&w1, &act)]
        );
        let (w0, w1) = (random_q8_0(1, cols, 11), random_q8_0(1, cols, 12));
        assert_eq!(
            dot_q8_0_pair(&w0, &w1, &act),
            [dot_q8_0(&w0, &act), dot_q8_0(&w1, &act)]
        );
        let act: Vec<SuperBlockQ8> = x[..512]
            .chunks_exact(SUPER_BLOCK)
            .map(quantize_super_block)
            .collect();
        let (w0, w1) = (random_q6_k(1, 512, 11), random_q6_k(1, 512, 12));
        assert_eq!(
            dot_q6_k_pair(&w0, &w1, &act),
            [dot_q6_k(&w0, &act), dot_q6_k(&w1, &act)]
        );
    }

    /// A batch gives exactly the rows one-at-a-time calls give (prefill and decode agree).
    #[test]
    fn batched_rows_equal_single_rows() {
        for (rows, cols, m) in [(300, 576, 7), (576, 1536, 6), (1536, 576, 2), (192, 576, 6)] {
            let matrix =
                RowMatrix::new(RowFormat::Q4_1, random_q4_1(rows, cols, 7), rows, cols).unwrap();
            let x: Vec<f32> = (0..m * cols)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 17.0)
                .collect();
            let batched = matrix.matmul(&x, m);
            for i in 0..m {
                let single = matrix.matmul(&x[i * cols..(i + 1) * cols], 1);
                assert_eq!(
                    &batched[i * rows..(i + 1) * rows],
                    &single[..],
                    "{rows}x{cols} row {i}"
                );
            }
        }
    }

    /// One pass over a group (formats mixed, as in files whose V projections are Q8_0) gives
    /// exactly each matrix's own product.
    #[test]
    fn a_group_equals_separate_products() {
        let cols = 256;
        let parts: Vec<RowMatrix> = [
            (RowFormat::Q4_1, 40, 1),
            (RowFormat::Q8_0, 24, 2),
            (RowFormat::Q6K, 7, 4),
            (RowFormat::Q4_1, 9, 3),
        ]
        .iter()
        .map(|&(format, rows, seed)| {
            RowMatrix::new(format, random(format, rows, cols, seed), rows, cols).unwrap()
        })
        .collect();
        let refs: Vec<&RowMatrix> = parts.iter().collect();
        for m in [1, 3] {
            let x: Vec<f32> = (0..m * cols)
                .map(|i| ((i * 29 % 83) as f32 - 41.0) / 13.0)
                .collect();
            let grouped = matmul_many(&refs, &x, m);
            for (w, got) in parts.iter().zip(&grouped) {
                assert_eq!(got, &w.matmul(&x, m));
            }
        }
    }

    #[test]
    fn rejects_wrong_sizes() {
        assert!(RowMatrix::new(RowFormat::Q4_1, vec![0; 19], 1, 32).is_err());
        assert!(RowMatrix::new(RowFormat::Q4_1, vec![0; 20], 1, 31).is_err());
        assert!(RowMatrix::new(RowFormat::Q8_0, vec![0; 33], 1, 32).is_err());
        assert!(RowMatrix::new(RowFormat::Q8_0, vec![0; 34], 1, 32).is_ok());
        assert!(RowMatrix::new(RowFormat::Q6K, vec![0; 210], 1, 32).is_err());
        assert!(RowMatrix::new(RowFormat::Q6K, vec![0; 209], 1, 256).is_err());
        assert!(RowMatrix::new(RowFormat::Q6K, vec![0; 420], 2, 256).is_ok());
    }
}
