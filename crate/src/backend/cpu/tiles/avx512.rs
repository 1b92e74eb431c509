//! The tile kernels (x86-64 with AVX-512 F, BW and VNNI, built natively with
//! `target-cpu=native`). Each is generic over the number of activation rows, so that its
//! accumulators are registers, never an array in memory indexed at run time.

use std::arch::x86_64::*;

use super::{prefetch_ahead, ActivationBlock, TileQ4K, TileQ6K, MAX_ACTIVATION_ROWS, TILE_ROWS};

/// The 16 rows of a row tile (`tiles`, one per super-block) times the first `rows` of `acts`,
/// into `sums[k]` for activation row k.
pub(super) fn q4k(
    tiles: &[TileQ4K],
    acts: [&[ActivationBlock]; MAX_ACTIVATION_ROWS],
    rows: usize,
    sums: &mut [[f32; TILE_ROWS]; MAX_ACTIVATION_ROWS],
) {
    // SAFETY: this module is built only where the target features are enabled; every access is
    // to a slice or array, bounds-checked or within its fixed size.
    unsafe {
        match rows {
            1 => q4k_rows::<1>(tiles, acts, sums),
            2 => q4k_rows::<2>(tiles, acts, sums),
            3 => q4k_rows::<3>(tiles, acts, sums),
            _ => q4k_rows::<4>(tiles, acts, sums),
        }
    }
}

/// As [`q4k`], for Q6_K tiles.
pub(super) fn q6k(
    tiles: &[TileQ6K],
    acts: [&[ActivationBlock]; MAX_ACTIVATION_ROWS],
    rows: usize,
    sums: &mut [[f32; TILE_ROWS]; MAX_ACTIVATION_ROWS],
) {
    // SAFETY: as in `q4k`.
    unsafe {
        match rows {
            1 => q6k_rows::<1>(tiles, acts, sums),
            2 => q6k_rows::<2>(tiles, acts, sums),
            3 => q6k_rows::<3>(tiles, acts, sums),
            _ => q6k_rows::<4>(tiles, acts, sums),
        }
    }
}

/// Four activations (bytes `at..at + 4`) in every i32 lane.
#[target_feature(enable = "avx512f")]
#[inline]
fn broadcast4(qs: &[i8; 256], at: usize) -> __m512i {
    let four = [qs[at], qs[at + 1], qs[at + 2], qs[at + 3]];
    _mm512_set1_epi32(i32::from_le_bytes(four.map(|q| q as u8)))
}

/// Sums `pair` and `pair + 1` of an activation block's sums, side by side in every i32 lane.
#[target_feature(enable = "avx512f")]
#[inline]
fn broadcast_pair(sums: &[i16], pair: usize) -> __m512i {
    let (a, b) = (
        sums[2 * pair] as u16 as u32,
        sums[2 * pair + 1] as u16 as u32,
    );
    _mm512_set1_epi32((a | (b << 16)) as i32)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn q4k_rows<const N: usize>(
    tiles: &[TileQ4K],
    acts: [&[ActivationBlock]; MAX_ACTIVATION_ROWS],
    sums: &mut [[f32; TILE_ROWS]; MAX_ACTIVATION_ROWS],
) {
    let nibble = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); N];
    for (b, tile) in tiles.iter().enumerate() {
        prefetch_ahead(tile);
        let a: [&ActivationBlock; N] = std::array::from_fn(|k| &acts[k][b]);
        // Σ over sub-blocks of scale · Σ q·x, per row, as integers (at most 8 · 63 · 32 · 15 · 127).
        let mut scaled = [_mm512_setzero_si512(); N];
        for s in 0..8 {
            let mut dot = [_mm512_setzero_si512(); N];
            for g in 4 * s..4 * s + 4 {
                let w = _mm512_loadu_si512(tile.qs[g].as_ptr() as *const _);
                let low = _mm512_and_si512(w, nibble);
                let high = _mm512_and_si512(_mm512_srli_epi16::<4>(w), nibble);
                for k in 0..N {
                    dot[k] = _mm512_dpbusd_epi32(dot[k], low, broadcast4(&a[k].qs, 8 * g));
                    dot[k] = _mm512_dpbusd_epi32(dot[k], high, broadcast4(&a[k].qs, 8 * g + 4));
                }
            }
            let scale = _mm512_cvtepu8_epi32(_mm_loadu_si128(tile.scales[s].as_ptr() as *const _));
            for k in 0..N {
                scaled[k] = _mm512_add_epi32(scaled[k], _mm512_mullo_epi32(dot[k], scale));
            }
        }
        // Σ over sub-blocks of minimum · Σ q, two sub-blocks per instruction.
        let mut min_terms = [_mm512_setzero_si512(); N];
        for p in 0..4 {
            let mins = _mm512_cvtepu8_epi16(_mm256_loadu_si256(tile.mins[p].as_ptr() as *const _));
            for k in 0..N {
                min_terms[k] =
                    _mm512_dpwssd_epi32(min_terms[k], mins, broadcast_pair(&a[k].sums32, p));
            }
        }
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(tile.d.as_ptr() as *const _));
        let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(tile.dmin.as_ptr() as *const _));
        for k in 0..N {
            let x_scale = _mm512_set1_ps(a[k].d);
            acc[k] = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(scaled[k]),
                _mm512_mul_ps(d, x_scale),
                acc[k],
            );
            acc[k] = _mm512_fnmadd_ps(
                _mm512_cvtepi32_ps(min_terms[k]),
                _mm512_mul_ps(dmin, x_scale),
                acc[k],
            );
        }
    }
    for k in 0..N {
        _mm512_storeu_ps(sums[k].as_mut_ptr(), acc[k]);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn q6k_rows<const N: usize>(
    tiles: &[TileQ6K],
    acts: [&[ActivationBlock]; MAX_ACTIVATION_ROWS],
    sums: &mut [[f32; TILE_ROWS]; MAX_ACTIVATION_ROWS],
) {
    let nibble = _mm512_set1_epi8(0x0F);
    let high_bits = _mm512_set1_epi8(0x30);
    let mut acc = [_mm512_setzero_ps(); N];
    for (b, tile) in tiles.iter().enumerate() {
        prefetch_ahead(tile);
        let a: [&ActivationBlock; N] = std::array::from_fn(|k| &acts[k][b]);
        // Σ over the 16 sub-blocks of scale · Σ (q + 32)·x, as integers (at most
        // 16 · 128 · 16 · 63 · 127 in magnitude).
        let mut scaled = [_mm512_setzero_si512(); N];
        for p in 0..8 {
            // Scales of sub-blocks 2p and 2p + 1 as i16 pairs, then each alone as i32.
            let pair =
                _mm512_cvtepi8_epi16(_mm256_loadu_si256(tile.scales[p].as_ptr() as *const _));
            let scales = [
                _mm512_srai_epi32::<16>(_mm512_slli_epi32::<16>(pair)),
                _mm512_srai_epi32::<16>(pair),
            ];
            for (half, scale) in scales.into_iter().enumerate() {
                let t = 2 * p + half;
                let h = _mm512_loadu_si512(tile.high[t].as_ptr() as *const _);
                let l0 = _mm512_loadu_si512(tile.low[2 * t].as_ptr() as *const _);
                let l1 = _mm512_loadu_si512(tile.low[2 * t + 1].as_ptr() as *const _);
                // Low four bits | (high two bits moved to bits 4 and 5): 0xF8 is A | (B & C).
                let join = |low: __m512i, high: __m512i| {
                    _mm512_ternarylogic_epi32::<0xF8>(
                        _mm512_and_si512(low, nibble),
                        high,
                        high_bits,
                    )
                };
                let values = [
                    join(l0, _mm512_slli_epi16::<4>(h)),
                    join(_mm512_srli_epi16::<4>(l0), _mm512_slli_epi16::<2>(h)),
                    join(l1, h),
                    join(_mm512_srli_epi16::<4>(l1), _mm512_srli_epi16::<2>(h)),
                ];
                for k in 0..N {
                    let mut dot = _mm512_setzero_si512();
                    for (i, v) in values.iter().enumerate() {
                        dot = _mm512_dpbusd_epi32(dot, *v, broadcast4(&a[k].qs, 16 * t + 4 * i));
                    }
                    scaled[k] = _mm512_add_epi32(scaled[k], _mm512_mullo_epi32(dot, scale));
                }
            }
        }
        // Σ over sub-blocks of scale · Σ x, which the stored +32 adds 32 times.
        let mut offsets = [_mm512_setzero_si512(); N];
        for p in 0..8 {
            let pair =
                _mm512_cvtepi8_epi16(_mm256_loadu_si256(tile.scales[p].as_ptr() as *const _));
            for k in 0..N {
                offsets[k] = _mm512_dpwssd_epi32(offsets[k], pair, broadcast_pair(&a[k].sums16, p));
            }
        }
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(tile.d.as_ptr() as *const _));
        for k in 0..N {
            let total = _mm512_sub_epi32(scaled[k], _mm512_slli_epi32::<5>(offsets[k]));
            acc[k] = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(total),
                _mm512_mul_ps(d, _mm512_set1_ps(a[k].d)),
                acc[k],
            );
        }
    }
    for k in 0..N {
        _mm512_storeu_ps(sums[k].as_mut_ptr(), acc[k]);
    }
}
