//! K-quant weight matrices repacked once at load into tiles of 16 rows × one 256-value
//! super-block, multiplied with integer dot products across the 16 rows at once (AVX-512 VNNI's
//! `vpdpbusd`, or AVX2's `vpmaddubsw`): a tile's scales and minimums are vectors across its rows
//! and no sum is ever reduced across lanes. The same tiles serve decode (one activation row) and
//! prompts (up to four activation rows per pass over a tile), so the GGUF blocks are not kept.
//!
//! Why ours and not candle's repacked kernels: candle's tiles widen every scale and minimum to
//! f32 (3072 bytes per tile where the GGUF blocks take 2304: a third more to read per token) and
//! keep the GGUF blocks beside them (the 8B-shaped model took 10.6 GB of memory, now 5.5), and its
//! inner loop, sized at run time for up to four activation rows, ran at about half the memory
//! bandwidth of one core on the 8B-shaped model's decode. Ours take 2368 bytes per Q4_K tile and
//! 3392 per Q6_K tile (3360 in GGUF).
//!
//! Built for x86-64 with AVX2 and FMA at compile time (`target-cpu=native`), with the AVX-512
//! kernels where AVX-512 F, BW and VNNI are too; elsewhere candle's kernels and ours in `rows.rs`
//! run.

use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};

use crate::error::{Error, Result};

mod avx2;
#[cfg(all(
    target_feature = "avx512f",
    target_feature = "avx512bw",
    target_feature = "avx512vnni"
))]
mod avx512;

/// The kernels a multiplication runs: the widest this build has, unless a test asks for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernels {
    // Constructed by AVX2-only builds, and by the tests everywhere.
    #[cfg_attr(
        all(
            target_feature = "avx512f",
            target_feature = "avx512bw",
            target_feature = "avx512vnni"
        ),
        allow(dead_code)
    )]
    Avx2,
    #[cfg(all(
        target_feature = "avx512f",
        target_feature = "avx512bw",
        target_feature = "avx512vnni"
    ))]
    Avx512,
}

impl Kernels {
    #[cfg(all(
        target_feature = "avx512f",
        target_feature = "avx512bw",
        target_feature = "avx512vnni"
    ))]
    const WIDEST: Kernels = Kernels::Avx512;
    #[cfg(not(all(
        target_feature = "avx512f",
        target_feature = "avx512bw",
        target_feature = "avx512vnni"
    )))]
    const WIDEST: Kernels = Kernels::Avx2;
}

/// How many tiles ahead of the one being multiplied the kernels ask for their bytes: the
/// hardware prefetcher alone left the Q6_K kernel waiting on its loads (a tile's three parts are
/// three interleaved streams).
const PREFETCH_TILES: usize = 4;

/// Asks for the cache lines of the tile `PREFETCH_TILES` after `tile` in memory (in this row
/// tile or the next: the matrix's tiles are consecutive; past its end the hint is dropped).
#[inline(always)]
fn prefetch_ahead<T>(tile: &T) {
    let size = std::mem::size_of::<T>();
    let ahead = (tile as *const T as *const u8).wrapping_add(PREFETCH_TILES * size);
    for offset in (0..size).step_by(64) {
        // SAFETY: a prefetch is a hint; it reads nothing and never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(offset) as *const i8) };
    }
}

/// Weight rows per tile: one 512-bit register of i32 or f32 lanes.
pub const TILE_ROWS: usize = 16;
/// Values per K-quant super-block, and per tile row.
const SUPER_BLOCK: usize = 256;
/// Activation rows multiplied per pass over a tile (prompts): each weight load then feeds
/// four products, and the accumulators of four rows still fit the 32 vector registers.
const MAX_ACTIVATION_ROWS: usize = 4;

/// A K-quant GGUF type that the tiles hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileFormat {
    Q4K,
    Q6K,
}

impl TileFormat {
    /// Bytes of one super-block of one row in the GGUF file.
    fn gguf_block_bytes(self) -> usize {
        match self {
            TileFormat::Q4K => 144,
            TileFormat::Q6K => 210,
        }
    }
}

/// 16 rows of one Q4_K super-block. Values go in groups of eight: `qs[g][row]` holds values
/// `8g..8g+4` in its four low nibbles and `8g+4..8g+8` in its high ones, so one 64-byte load
/// and a mask give four values of each of the 16 rows, ready for `vpdpbusd`. Each 32 values
/// (four groups) share a 6-bit scale and minimum, here one byte each per row.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct TileQ4K {
    qs: [[[u8; 4]; TILE_ROWS]; SUPER_BLOCK / 8],
    /// `scales[s][row]`: the scale of the 32 values of sub-block `s`.
    scales: [[u8; TILE_ROWS]; 8],
    /// `mins[p][row]`: the minimums of sub-blocks `2p` and `2p + 1`, side by side as
    /// `vpdpwssd` takes pairs.
    mins: [[[u8; 2]; TILE_ROWS]; 4],
    /// f16 bits of each row's super-scale and super-minimum.
    d: [u16; TILE_ROWS],
    dmin: [u16; TILE_ROWS],
}

/// 16 rows of one Q6_K super-block. Each 6-bit value (stored as q + 32) is split: its low
/// four bits in `low`, laid out as Q4_K's `qs`, and its high two bits in `high`, where
/// `high[t][row]` holds those of the 16 values of groups `2t` and `2t + 1` (byte j: values
/// 16t+j, 16t+j+4, 16t+8+j, 16t+8+j+4 from its low bits up), so that shifts and masks put
/// them beside the low bits.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct TileQ6K {
    low: [[[u8; 4]; TILE_ROWS]; SUPER_BLOCK / 8],
    high: [[[u8; 4]; TILE_ROWS]; SUPER_BLOCK / 16],
    /// `scales[p][row]`: the signed scales of the 16-value sub-blocks `2p` and `2p + 1`.
    scales: [[[i8; 2]; TILE_ROWS]; 8],
    d: [u16; TILE_ROWS],
}

/// 256 activations quantized as `x ≈ d · q` with one scale, and the sums of `q` over each 16
/// and each 32 values (the terms that Q4_K's minimums and Q6_K's +32 take off).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct ActivationBlock {
    qs: [i8; SUPER_BLOCK],
    sums16: [i16; SUPER_BLOCK / 16],
    sums32: [i16; SUPER_BLOCK / 32],
    d: f32,
}

enum Tiles {
    Q4K(Vec<TileQ4K>),
    Q6K(Vec<TileQ6K>),
}

/// A `rows × cols` weight matrix as tiles: row tile after row tile, each `cols / 256` tiles.
pub struct TiledMatrix {
    tiles: Tiles,
    rows: usize,
    cols: usize,
}

impl TiledMatrix {
    /// Whether a matrix of this shape can be tiled.
    pub fn fits(rows: usize, cols: usize) -> bool {
        rows > 0 && cols > 0 && rows.is_multiple_of(TILE_ROWS) && cols.is_multiple_of(SUPER_BLOCK)
    }

    /// Repacks the GGUF blocks (row after row) of a `rows × cols` matrix.
    pub fn from_gguf(format: TileFormat, bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        let blocks_per_row = cols / SUPER_BLOCK;
        if !Self::fits(rows, cols)
            || bytes.len() != rows * blocks_per_row * format.gguf_block_bytes()
        {
            return Err(Error::Backend(format!(
                "{format:?} matrix {rows}x{cols} of {} bytes cannot be tiled",
                bytes.len()
            )));
        }
        let block_bytes = format.gguf_block_bytes();
        let block = |row: usize, b: usize| {
            let start = (row * blocks_per_row + b) * block_bytes;
            &bytes[start..start + block_bytes]
        };
        let tiles = match format {
            TileFormat::Q4K => Tiles::Q4K(repack(rows, blocks_per_row, EMPTY_Q4K, |t, b| {
                tile_q4k(|r| block(t * TILE_ROWS + r, b))
            })),
            TileFormat::Q6K => Tiles::Q6K(repack(rows, blocks_per_row, EMPTY_Q6K, |t, b| {
                tile_q6k(|r| block(t * TILE_ROWS + r, b))
            })),
        };
        Ok(Self { tiles, rows, cols })
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

/// `x · Wᵢᵀ` for several matrices with the same `cols` (Q, K and V; gate and up): the
/// activations are quantized once and every tile of the group is shared out in one parallel
/// pass, so a decode step wakes the worker threads once per group.
pub fn matmul_many(matrices: &[&TiledMatrix], x: &[f32], m: usize) -> Vec<Vec<f32>> {
    matmul_many_with(Kernels::WIDEST, matrices, x, m)
}

fn matmul_many_with(
    kernels: Kernels,
    matrices: &[&TiledMatrix],
    x: &[f32],
    m: usize,
) -> Vec<Vec<f32>> {
    let Some(first) = matrices.first() else {
        return Vec::new();
    };
    let cols = first.cols;
    assert!(
        matrices.iter().all(|w| w.cols == cols) && x.len() == m * cols,
        "matrices of one group share their column count, and x is m × cols"
    );
    let blocks_per_row = cols / SUPER_BLOCK;
    let activations: Vec<ActivationBlock> = x.chunks_exact(SUPER_BLOCK).map(quantize).collect();
    let mut outputs: Vec<Vec<f32>> = matrices.iter().map(|w| vec![0f32; m * w.rows]).collect();
    // A unit of work: one row tile of one matrix against up to four activation rows. Units go
    // row tile by row tile, so a thread's consecutive units reuse the tile from its cache.
    let passes = m.div_ceil(MAX_ACTIVATION_ROWS);
    let units_of = |w: &TiledMatrix| w.rows / TILE_ROWS * passes;
    let first_unit: Vec<usize> = matrices
        .iter()
        .scan(0, |next, w| {
            Some(std::mem::replace(next, *next + units_of(w)))
        })
        .collect();
    let units = matrices.iter().map(|w| units_of(w)).sum();
    let output_ptrs: Vec<SharedPtr<f32>> = outputs
        .iter_mut()
        .map(|o| SharedPtr(o.as_mut_ptr()))
        .collect();
    super::parallel::for_each_in_parallel(units, |range| {
        for unit in range {
            let i = first_unit.partition_point(|&f| f <= unit) - 1;
            let (w, local) = (matrices[i], unit - first_unit[i]);
            let (tile_row, pass) = (local / passes, local % passes);
            let first_row = pass * MAX_ACTIVATION_ROWS;
            let n = (m - first_row).min(MAX_ACTIVATION_ROWS);
            let act = |k: usize| {
                let row = first_row + k.min(n - 1);
                &activations[row * blocks_per_row..(row + 1) * blocks_per_row]
            };
            let tiles = tile_row * blocks_per_row..(tile_row + 1) * blocks_per_row;
            let mut sums = [[0f32; TILE_ROWS]; MAX_ACTIVATION_ROWS];
            let acts = [act(0), act(1), act(2), act(3)];
            match (&w.tiles, kernels) {
                (Tiles::Q4K(all), Kernels::Avx2) => avx2::q4k(&all[tiles], acts, n, &mut sums),
                (Tiles::Q6K(all), Kernels::Avx2) => avx2::q6k(&all[tiles], acts, n, &mut sums),
                #[cfg(all(
                    target_feature = "avx512f",
                    target_feature = "avx512bw",
                    target_feature = "avx512vnni"
                ))]
                (Tiles::Q4K(all), Kernels::Avx512) => avx512::q4k(&all[tiles], acts, n, &mut sums),
                #[cfg(all(
                    target_feature = "avx512f",
                    target_feature = "avx512bw",
                    target_feature = "avx512vnni"
                ))]
                (Tiles::Q6K(all), Kernels::Avx512) => avx512::q6k(&all[tiles], acts, n, &mut sums),
            }
            for (k, row_sums) in sums[..n].iter().enumerate() {
                let start = (first_row + k) * w.rows + tile_row * TILE_ROWS;
                // SAFETY: each (matrix, tile row, activation row) is one unit's alone, and
                // `start + 16 <= m · rows`, inside the output that outlives the parallel call.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        row_sums.as_ptr(),
                        output_ptrs[i].at(start),
                        TILE_ROWS,
                    );
                }
            }
        }
    });
    outputs
}

/// The tiles of a matrix, `make(row_tile, super_block)`, built over the threads (a scalar
/// pass over every value: about 3 s for the 8B-shaped model on one core).
fn repack<T: Copy + Send>(
    rows: usize,
    blocks_per_row: usize,
    empty: T,
    make: impl Fn(usize, usize) -> T + Sync,
) -> Vec<T> {
    let mut tiles = vec![empty; rows / TILE_ROWS * blocks_per_row];
    let start = SharedPtr(tiles.as_mut_ptr());
    super::parallel::for_each_in_parallel(tiles.len(), |range| {
        for i in range {
            // SAFETY: each index is one run's alone and inside `tiles`, which outlives the call.
            unsafe { *start.at(i) = make(i / blocks_per_row, i % blocks_per_row) };
        }
    });
    tiles
}

/// An output's address, shared with the worker threads, which write disjoint parts of it.
struct SharedPtr<T>(*mut T);
// SAFETY: the callers' threads write disjoint elements, and the parallel call returns only when
// all are done.
unsafe impl<T: Send> Sync for SharedPtr<T> {}

impl<T> SharedPtr<T> {
    /// The address of element `i`.
    fn at(&self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
}

fn quantize(x: &[f32]) -> ActivationBlock {
    let d = x.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; SUPER_BLOCK];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * inv).round() as i8;
    }
    // At most 32 · 127 in magnitude.
    let sum = |n: usize, g: usize| qs[n * g..n * (g + 1)].iter().map(|&q| i16::from(q)).sum();
    ActivationBlock {
        qs,
        sums16: std::array::from_fn(|g| sum(16, g)),
        sums32: std::array::from_fn(|g| sum(32, g)),
        d,
    }
}

fn f16_bits(bytes: &[u8]) -> u16 {
    u16::from_le_bytes([bytes[0], bytes[1]])
}

/// Scale and minimum of sub-block `j` of a Q4_K (or Q5_K) super-block from its 12 bytes of
/// 6-bit fields (ggml's layout).
fn q4k_scale_min(j: usize, scales: &[u8]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// Packs values (one per byte, < 16) of a row into its column of a tile's nibble groups.
fn pack_nibbles(values: &[u8; SUPER_BLOCK], groups: &mut [[[u8; 4]; TILE_ROWS]; 32], row: usize) {
    for (g, group) in groups.iter_mut().enumerate() {
        for j in 0..4 {
            group[row][j] = (values[8 * g + j] & 0x0F) | ((values[8 * g + j + 4] & 0x0F) << 4);
        }
    }
}

const EMPTY_Q4K: TileQ4K = TileQ4K {
    qs: [[[0; 4]; TILE_ROWS]; SUPER_BLOCK / 8],
    scales: [[0; TILE_ROWS]; 8],
    mins: [[[0; 2]; TILE_ROWS]; 4],
    d: [0; TILE_ROWS],
    dmin: [0; TILE_ROWS],
};

const EMPTY_Q6K: TileQ6K = TileQ6K {
    low: [[[0; 4]; TILE_ROWS]; SUPER_BLOCK / 8],
    high: [[[0; 4]; TILE_ROWS]; SUPER_BLOCK / 16],
    scales: [[[0; 2]; TILE_ROWS]; 8],
    d: [0; TILE_ROWS],
};

/// The tile of 16 rows' Q4_K super-blocks (`block(r)`: row r's 144 bytes).
fn tile_q4k<'a>(block: impl Fn(usize) -> &'a [u8]) -> TileQ4K {
    let mut tile = EMPTY_Q4K;
    for r in 0..TILE_ROWS {
        let b = block(r);
        tile.d[r] = f16_bits(&b[0..2]);
        tile.dmin[r] = f16_bits(&b[2..4]);
        for s in 0..8 {
            let (scale, min) = q4k_scale_min(s, &b[4..16]);
            tile.scales[s][r] = scale;
            tile.mins[s / 2][r][s % 2] = min;
        }
        // GGUF: each 32 bytes of `qs` hold 64 values, the first 32 in the low nibbles.
        let qs = &b[16..144];
        let mut values = [0u8; SUPER_BLOCK];
        for (i, v) in values.iter_mut().enumerate() {
            let byte = qs[32 * (i / 64) + i % 32];
            *v = if i % 64 < 32 { byte & 0x0F } else { byte >> 4 };
        }
        pack_nibbles(&values, &mut tile.qs, r);
    }
    tile
}

/// The tile of 16 rows' Q6_K super-blocks (`block(r)`: row r's 210 bytes).
fn tile_q6k<'a>(block: impl Fn(usize) -> &'a [u8]) -> TileQ6K {
    let mut tile = EMPTY_Q6K;
    for r in 0..TILE_ROWS {
        let b = block(r);
        let (ql, qh) = (&b[0..128], &b[128..192]);
        // GGUF: value 128n + 32j + l has low bits from ql[64n + l + 32 (j % 2)] (low nibble for
        // j < 2, else high) and high bits (2j, 2j + 1) of qh[32n + l].
        let mut values = [0u8; SUPER_BLOCK];
        for (i, v) in values.iter_mut().enumerate() {
            let (n, j, l) = (i / 128, i % 128 / 32, i % 32);
            let low = ql[64 * n + l + 32 * (j % 2)];
            let low = if j < 2 { low & 0x0F } else { low >> 4 };
            let high = (qh[32 * n + l] >> (2 * j)) & 3;
            *v = low | (high << 4);
        }
        pack_nibbles(&values, &mut tile.low, r);
        for (t, group) in tile.high.iter_mut().enumerate() {
            let high = |i: usize| values[16 * t + i] >> 4;
            for (j, byte) in group[r].iter_mut().enumerate() {
                *byte = high(j) | (high(j + 4) << 2) | (high(8 + j) << 4) | (high(8 + j + 4) << 6);
            }
        }
        for s in 0..16 {
            tile.scales[s / 2][r][s % 2] = b[192 + s] as i8;
        }
        tile.d[r] = f16_bits(&b[208..210]);
    }
    tile
}

#[cfg(test)]
mod tests {
    use super::super::test_blocks::{
        assert_matches_dequantized, dequantize_q6_k, random_bytes, random_q6_k,
    };
    use super::*;
    use half::f16;

    fn f32_of(bits: u16) -> f32 {
        f16::from_bits(bits).to_f32()
    }

    fn random_blocks(format: TileFormat, rows: usize, cols: usize, seed: u32) -> Vec<u8> {
        if format == TileFormat::Q6K {
            return random_q6_k(rows, cols, seed);
        }
        let mut next = random_bytes(seed);
        let mut bytes = Vec::new();
        for _ in 0..rows * cols / SUPER_BLOCK {
            let d = f16::from_f32(0.0001 + next() as f32 / 500_000.0);
            let dmin = f16::from_f32(0.0001 + next() as f32 / 700_000.0);
            bytes.extend_from_slice(&d.to_le_bytes());
            bytes.extend_from_slice(&dmin.to_le_bytes());
            // Any bits: every 6-bit scale and minimum up to 63.
            bytes.extend((0..140).map(|_| next()));
        }
        bytes
    }

    /// Written from ggml's `dequantize_row_q4_K` and `dequantize_row_q6_K` on the GGUF bytes,
    /// not from the repacking above.
    fn dequantize(format: TileFormat, bytes: &[u8]) -> Vec<f32> {
        if format == TileFormat::Q6K {
            return dequantize_q6_k(bytes);
        }
        let mut out = Vec::new();
        for b in bytes.chunks_exact(format.gguf_block_bytes()) {
            let d = f32_of(f16_bits(&b[0..2]));
            let dmin = f32_of(f16_bits(&b[2..4]));
            let scales = &b[4..16];
            for c in 0..4 {
                let q = &b[16 + 32 * c..48 + 32 * c];
                let (s0, m0) = q4k_scale_min(2 * c, scales);
                let (s1, m1) = q4k_scale_min(2 * c + 1, scales);
                out.extend(
                    q.iter()
                        .map(|&v| d * s0 as f32 * (v & 0x0F) as f32 - dmin * m0 as f32),
                );
                out.extend(
                    q.iter()
                        .map(|&v| d * s1 as f32 * (v >> 4) as f32 - dmin * m1 as f32),
                );
            }
        }
        out
    }

    /// Every kernel set this build has.
    const BUILT: &[Kernels] = &[
        Kernels::Avx2,
        #[cfg(all(
            target_feature = "avx512f",
            target_feature = "avx512bw",
            target_feature = "avx512vnni"
        ))]
        Kernels::Avx512,
    ];

    fn matmul_with(kernels: Kernels, w: &TiledMatrix, x: &[f32], m: usize) -> Vec<f32> {
        matmul_many_with(kernels, &[w], x, m).pop().unwrap()
    }

    fn input(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i + seed) * 37 % 101) as f32 - 50.0) / 25.0)
            .collect()
    }

    /// Against an f64 product of the dequantized GGUF blocks, within 1% of the sum of |terms|
    /// (see `assert_matches_dequantized`).
    #[test]
    fn matmul_matches_dequantized_product() {
        let cases = [(16, 256, 1), (48, 512, 1), (32, 1024, 3), (16, 768, 9)];
        for (format, kernels) in [TileFormat::Q4K, TileFormat::Q6K]
            .into_iter()
            .flat_map(|f| BUILT.iter().map(move |&k| (f, k)))
        {
            for (rows, cols, m) in cases {
                let bytes = random_blocks(format, rows, cols, (rows * 31 + cols) as u32);
                let w = dequantize(format, &bytes);
                let x = input(m * cols, rows);
                let tiled = TiledMatrix::from_gguf(format, &bytes, rows, cols).unwrap();
                let got = matmul_with(kernels, &tiled, &x, m);
                assert_matches_dequantized(&format!("{format:?} {kernels:?}"), &got, &w, &x, rows);
            }
        }
    }

    /// A prompt's rows, four per pass over a tile, give exactly what one row at a time gives
    /// (prefill and decode agree).
    #[test]
    fn batched_rows_equal_single_rows() {
        for format in [TileFormat::Q4K, TileFormat::Q6K] {
            let (rows, cols, m) = (32, 512, 7);
            let bytes = random_blocks(format, rows, cols, 9);
            let w = TiledMatrix::from_gguf(format, &bytes, rows, cols).unwrap();
            let x = input(m * cols, 3);
            for &kernels in BUILT {
                let batched = matmul_with(kernels, &w, &x, m);
                for i in 0..m {
                    let single = matmul_with(kernels, &w, &x[i * cols..(i + 1) * cols], 1);
                    assert_eq!(
                        &batched[i * rows..(i + 1) * rows],
                        &single[..],
                        "{format:?} {kernels:?} row {i}"
                    );
                }
            }
        }
    }

    /// One pass over a group of formats mixed (Q4_K projections beside a Q6_K one, as in
    /// Q4_K_M files) gives exactly each matrix's own product.
    #[test]
    fn a_group_equals_separate_products() {
        let cols = 512;
        let parts: Vec<TiledMatrix> = [
            (TileFormat::Q4K, 64),
            (TileFormat::Q6K, 16),
            (TileFormat::Q4K, 32),
        ]
        .iter()
        .enumerate()
        .map(|(seed, &(format, rows))| {
            let bytes = random_blocks(format, rows, cols, seed as u32);
            TiledMatrix::from_gguf(format, &bytes, rows, cols).unwrap()
        })
        .collect();
        let refs: Vec<&TiledMatrix> = parts.iter().collect();
        for m in [1, 5] {
            let x = input(m * cols, m);
            let grouped = matmul_many(&refs, &x, m);
            for (w, got) in parts.iter().zip(&grouped) {
                assert_eq!(got, &w.matmul(&x, m));
            }
        }
    }

    /// The kernel sets add the same integers and round the same floats in the same order.
    #[test]
    fn every_kernel_set_gives_the_same_products() {
        let (rows, cols, m) = (48, 768, 6);
        for format in [TileFormat::Q4K, TileFormat::Q6K] {
            let bytes = random_blocks(format, rows, cols, 21);
            let w = TiledMatrix::from_gguf(format, &bytes, rows, cols).unwrap();
            let x = input(m * cols, 5);
            let widest = matmul_with(Kernels::WIDEST, &w, &x, m);
            for &kernels in BUILT {
                assert_eq!(
                    matmul_with(kernels, &w, &x, m),
                    widest,
                    "{format:?} {kernels:?}"
                );
            }
        }
    }

    #[test]
    fn rejects_shapes_it_cannot_tile() {
        let q4k = |rows, cols| {
            TiledMatrix::from_gguf(
                TileFormat::Q4K,
                &vec![0; rows * cols / 256 * 144],
                rows,
                cols,
            )
        };
        assert!(q4k(16, 256).is_ok());
        assert!(q4k(8, 256).is_err());
        assert!(q4k(16, 128).is_err());
        assert!(TiledMatrix::from_gguf(TileFormat::Q6K, &[0; 210 * 15], 16, 256).is_err());
    }
}
