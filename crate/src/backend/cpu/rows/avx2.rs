//! The row kernels for x86-64 with AVX2 and FMA (built natively with `target-cpu=native`).
//!
//! The kernels are `#[inline]`: in a module of their own they would otherwise land in another
//! codegen unit than the row loop that calls them, and a call per pair of short rows is slower
//! than the loop (the tiny Mistral's decode dropped from 518-524 to 429-469 tok/s).

use std::arch::x86_64::*;

use half::f16;

use super::{scale_and_min, BlockQ8_1, RowFormat, SuperBlockQ8};

#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn dot_q4_1(weights: &[u8], act: &[BlockQ8_1]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (block, a) in weights.chunks_exact(RowFormat::Q4_1.block_bytes()).zip(act) {
        prefetch_ahead(block);
        let q8 = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
        let (sums, d, m) = q4_1_block(block, q8);
        mins += m * a.s;
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), sums, acc);
    }
    horizontal_sum(acc) + mins
}

#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn dot_q4_1_pair(w0: &[u8], w1: &[u8], act: &[BlockQ8_1]) -> [f32; 2] {
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (mut mins0, mut mins1) = (0f32, 0f32);
    let block_bytes = RowFormat::Q4_1.block_bytes();
    for ((b0, b1), a) in w0
        .chunks_exact(block_bytes)
        .zip(w1.chunks_exact(block_bytes))
        .zip(act)
    {
        prefetch_ahead(b0);
        prefetch_ahead(b1);
        let q8 = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
        let (sums0, d0, m0) = q4_1_block(b0, q8);
        let (sums1, d1, m1) = q4_1_block(b1, q8);
        mins0 += m0 * a.s;
        mins1 += m1 * a.s;
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0 * a.d), sums0, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d1 * a.d), sums1, acc1);
    }
    [horizontal_sum(acc0) + mins0, horizontal_sum(acc1) + mins1]
}

/// One Q4_1 block against 32 activations: eight partial sums (to add) as floats, and the block's
/// scale and minimum.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn q4_1_block(block: &[u8], q8: __m256i) -> (__m256, f32, f32) {
    let (d, m) = scale_and_min(block);
    // `block[4..20]` is bounds-checked: the 16-byte load stays inside the block.
    let packed = _mm_loadu_si128(block[4..20].as_ptr() as *const __m128i);
    // Low nibbles are elements 0–15, high nibbles 16–31.
    let nibbles = _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed),
        _mm256_set1_epi8(0x0F),
    );
    let pairs = _mm256_maddubs_epi16(nibbles, q8);
    let sums = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
    (_mm256_cvtepi32_ps(sums), d, m)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn horizontal_sum(v: __m256) -> f32 {
    let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
    let one = _mm_add_ss(quarter, _mm_shuffle_ps(quarter, quarter, 1));
    _mm_cvtss_f32(one)
}

#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn dot_q6_k(weights: &[u8], act: &[SuperBlockQ8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let block_bytes = RowFormat::Q6K.block_bytes();
    for (block, a) in weights.chunks_exact(block_bytes).zip(act) {
        prefetch_ahead(block);
        let mut sums = _mm256_setzero_si256();
        for n in 0..2 {
            let (quarters, scales) = q6_k_half(block, n);
            for (j, &quarter) in quarters.iter().enumerate() {
                let q8 = q6_k_activations(a, 4 * n + j);
                sums = q6_k_quarter(sums, quarter, q8, scales, j);
            }
        }
        let act_sums = _mm256_loadu_si256(a.sums.as_ptr() as *const __m256i);
        sums = _mm256_sub_epi32(sums, q6_k_offset(block, act_sums));
        let d = f16::from_le_bytes([block[208], block[209]]).to_f32();
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(sums), acc);
    }
    horizontal_sum(acc)
}

#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn dot_q6_k_pair(w0: &[u8], w1: &[u8], act: &[SuperBlockQ8]) -> [f32; 2] {
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let block_bytes = RowFormat::Q6K.block_bytes();
    for ((b0, b1), a) in w0
        .chunks_exact(block_bytes)
        .zip(w1.chunks_exact(block_bytes))
        .zip(act)
    {
        prefetch_ahead(b0);
        prefetch_ahead(b1);
        let (mut sums0, mut sums1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for n in 0..2 {
            let (quarters0, scales0) = q6_k_half(b0, n);
            let (quarters1, scales1) = q6_k_half(b1, n);
            for j in 0..4 {
                let q8 = q6_k_activations(a, 4 * n + j);
                sums0 = q6_k_quarter(sums0, quarters0[j], q8, scales0, j);
                sums1 = q6_k_quarter(sums1, quarters1[j], q8, scales1, j);
            }
        }
        let act_sums = _mm256_loadu_si256(a.sums.as_ptr() as *const __m256i);
        sums0 = _mm256_sub_epi32(sums0, q6_k_offset(b0, act_sums));
        sums1 = _mm256_sub_epi32(sums1, q6_k_offset(b1, act_sums));
        let d0 = f16::from_le_bytes([b0[208], b0[209]]).to_f32();
        let d1 = f16::from_le_bytes([b1[208], b1[209]]).to_f32();
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0 * a.d), _mm256_cvtepi32_ps(sums0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d1 * a.d), _mm256_cvtepi32_ps(sums1), acc1);
    }
    [horizontal_sum(acc0), horizontal_sum(acc1)]
}

/// How far ahead of a row's current block [`prefetch_ahead`] asks for its bytes.
const PREFETCH_DISTANCE: usize = 2048;

/// Asks for the cache lines `PREFETCH_DISTANCE` bytes past the start of `block`, one per 64
/// bytes of it, so that consecutive blocks have the lines of the blocks after them requested. The
/// hardware prefetcher alone left the kernels waiting on the cache: the tiny Mistral's Q6_K head
/// went 30.7 -> 37.5 GB/s (131072 x 512, 2 threads), SmolLM2's Q4_1 decode 90-98 -> 123-128
/// tok/s. Prefetching an address past the row's end is harmless (a hint, it never faults), so
/// the pointer is only computed, never read.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn prefetch_ahead(block: &[u8]) {
    for offset in (0..block.len()).step_by(64) {
        let line = block.as_ptr().wrapping_add(PREFETCH_DISTANCE + offset);
        _mm_prefetch::<_MM_HINT_T0>(line as *const i8);
    }
}

/// Half `n` (elements 128·n ..) of a Q6_K super-block: its four quarters of 32 six-bit values
/// (q + 32), one byte each, and its eight scales as i16 in both 128-bit lanes.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn q6_k_half(block: &[u8], n: usize) -> ([__m256i; 4], __m256i) {
    // The sub-slices are bounds-checked: each load stays inside them.
    let ql0 = _mm256_loadu_si256(block[64 * n..64 * n + 32].as_ptr() as *const __m256i);
    let ql1 = _mm256_loadu_si256(block[64 * n + 32..64 * n + 64].as_ptr() as *const __m256i);
    let qh = _mm256_loadu_si256(block[128 + 32 * n..160 + 32 * n].as_ptr() as *const __m256i);
    let scales = _mm_loadl_epi64(block[192 + 8 * n..200 + 8 * n].as_ptr() as *const __m128i);
    let low = _mm256_set1_epi8(0x0F);
    let high = _mm256_set1_epi8(0x30);
    // 16-bit shifts: the masks drop the bits that cross into a neighbouring byte.
    let quarters = [
        _mm256_or_si256(
            _mm256_and_si256(ql0, low),
            _mm256_and_si256(_mm256_slli_epi16(qh, 4), high),
        ),
        _mm256_or_si256(
            _mm256_and_si256(ql1, low),
            _mm256_and_si256(_mm256_slli_epi16(qh, 2), high),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(ql0, 4), low),
            _mm256_and_si256(qh, high),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low),
            _mm256_and_si256(_mm256_srli_epi16(qh, 2), high),
        ),
    ];
    (
        quarters,
        _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(scales)),
    )
}

/// Activations `32 c .. 32 c + 32` of a super-block.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn q6_k_activations(act: &SuperBlockQ8, c: usize) -> __m256i {
    // Bounds-checked: the load stays inside the sub-slice.
    _mm256_loadu_si256(act.qs[32 * c..32 * c + 32].as_ptr() as *const __m256i)
}

/// What the +32 of a super-block's stored values added to its sums: 32 · Σ scale_g · Σ q_g over
/// its sixteen groups g of 16 activations, spread over eight lanes.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn q6_k_offset(block: &[u8], act_sums: __m256i) -> __m256i {
    let scales = _mm_loadu_si128(block[192..208].as_ptr() as *const __m128i);
    _mm256_slli_epi32(_mm256_madd_epi16(_mm256_cvtepi8_epi16(scales), act_sums), 5)
}

/// Quarter `j` of a half (32 values, stored as q + 32) against its 32 activations, scaled and
/// added to `sums` (eight integer partial sums). Elements 0–15 lie in the low 128 bits and take
/// scale 2j, elements 16–31 scale 2j + 1. No overflow: pairs of 63 · 127 stay under 2^15, and a
/// super-block's sums under 2^25.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn q6_k_quarter(
    sums: __m256i,
    q: __m256i,
    q8: __m256i,
    scales: __m256i,
    j: usize,
) -> __m256i {
    let pairs = _mm256_maddubs_epi16(q, q8);
    // A byte shuffle picking i16 scale 2j in the low lane and 2j + 1 in the high lane: the
    // byte pair (2s, 2s + 1), as one little-endian i16, selects scale s.
    let pick = |s: usize| (2 * s as i16) | ((2 * s as i16 + 1) << 8);
    let picks = _mm256_set_m128i(_mm_set1_epi16(pick(2 * j + 1)), _mm_set1_epi16(pick(2 * j)));
    _mm256_add_epi32(
        sums,
        _mm256_madd_epi16(pairs, _mm256_shuffle_epi8(scales, picks)),
    )
}
