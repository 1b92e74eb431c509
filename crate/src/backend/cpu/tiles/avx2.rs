//! The tile kernels for x86-64 with AVX2, FMA and F16C (built natively with `target-cpu=native`): the
//! AVX-512 kernels' sums, 8 rows per 256-bit register, with `vpmaddubsw` (pairs of u8 × i8 into
//! i16) and `vpmaddwd` for `vpdpbusd`. AVX2 has 16 vector registers, not 32: a tile's two halves
//! of 8 rows go one after the other, and at most two activation rows at a time.

use std::arch::x86_64::*;

use super::{prefetch_ahead, ActivationBlock, TileQ4K, TileQ6K, MAX_ACTIVATION_ROWS, TILE_ROWS};

type Acts<'a> = [&'a [ActivationBlock]; MAX_ACTIVATION_ROWS];
type Sums = [[f32; TILE_ROWS]; MAX_ACTIVATION_ROWS];

/// The 16 rows of a row tile (`tiles`, one per super-block) times the first `rows` of `acts`,
/// into `sums[k]` for activation row k.
pub(super) fn q4k(tiles: &[TileQ4K], acts: Acts, rows: usize, sums: &mut Sums) {
    // SAFETY: this module is built only where the target features are enabled; every access is
    // to a slice or array, bounds-checked or within its fixed size.
    unsafe {
        in_pairs(rows, |first, two| match two {
            true => q4k_rows::<2>(
                tiles,
                [acts[first], acts[first + 1]],
                &mut sums[first..first + 2],
            ),
            false => q4k_rows::<1>(tiles, [acts[first]], &mut sums[first..first + 1]),
        })
    }
}

/// As [`q4k`], for Q6_K tiles.
pub(super) fn q6k(tiles: &[TileQ6K], acts: Acts, rows: usize, sums: &mut Sums) {
    // SAFETY: as in `q4k`.
    unsafe {
        in_pairs(rows, |first, two| match two {
            true => q6k_rows::<2>(
                tiles,
                [acts[first], acts[first + 1]],
                &mut sums[first..first + 2],
            ),
            false => q6k_rows::<1>(tiles, [acts[first]], &mut sums[first..first + 1]),
        })
    }
}

/// Calls `f(first, two)` for activation rows `first` and, if `two`, `first + 1`, covering
/// `0..rows` (the tile is read again from the cache for a second pair).
fn in_pairs(rows: usize, mut f: impl FnMut(usize, bool)) {
    for first in (0..rows).step_by(2) {
        f(first, first + 1 < rows);
    }
}

/// Four activations (bytes `at..at + 4`) in every i32 lane.
#[target_feature(enable = "avx2")]
#[inline]
fn broadcast4(qs: &[i8; 256], at: usize) -> __m256i {
    let four = [qs[at], qs[at + 1], qs[at + 2], qs[at + 3]];
    _mm256_set1_epi32(i32::from_le_bytes(four.map(|q| q as u8)))
}

/// Sums `pair` and `pair + 1` of an activation block's sums, side by side in every i32 lane.
#[target_feature(enable = "avx2")]
#[inline]
fn broadcast_pair(sums: &[i16], pair: usize) -> __m256i {
    let (a, b) = (
        sums[2 * pair] as u16 as u32,
        sums[2 * pair + 1] as u16 as u32,
    );
    _mm256_set1_epi32((a | (b << 16)) as i32)
}

/// Rows `8h..8h + 8` of a 16-row tile line (32 bytes).
#[target_feature(enable = "avx2")]
#[inline]
fn load_half(line: &[[u8; 4]; TILE_ROWS], h: usize) -> __m256i {
    let half: &[[u8; 4]; 8] = line[8 * h..8 * h + 8].try_into().unwrap();
    // SAFETY: `half` is 32 bytes.
    unsafe { _mm256_loadu_si256(half.as_ptr() as *const __m256i) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_rows<const N: usize>(
    tiles: &[TileQ4K],
    acts: [&[ActivationBlock]; N],
    sums: &mut [[f32; TILE_ROWS]],
) {
    let nibble = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    for (b, tile) in tiles.iter().enumerate() {
        prefetch_ahead(tile);
        let a: [&ActivationBlock; N] = std::array::from_fn(|k| &acts[k][b]);
        #[allow(clippy::needless_range_loop)] // h also picks the rows of every load
        for h in 0..2 {
            // As the AVX-512 kernel, for rows 8h..8h + 8.
            let mut scaled = [_mm256_setzero_si256(); N];
            for s in 0..8 {
                // i16 sums of a sub-block's 32 products per row pair: at most 16 · 15 · 127.
                let mut dot = [_mm256_setzero_si256(); N];
                for g in 4 * s..4 * s + 4 {
                    let w = load_half(&tile.qs[g], h);
                    let low = _mm256_and_si256(w, nibble);
                    let high = _mm256_and_si256(_mm256_srli_epi16::<4>(w), nibble);
                    for k in 0..N {
                        let both = _mm256_add_epi16(
                            _mm256_maddubs_epi16(low, broadcast4(&a[k].qs, 8 * g)),
                            _mm256_maddubs_epi16(high, broadcast4(&a[k].qs, 8 * g + 4)),
                        );
                        dot[k] = _mm256_add_epi16(dot[k], both);
                    }
                }
                let scale = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                    tile.scales[s][8 * h..].as_ptr() as *const __m128i
                ));
                for k in 0..N {
                    let dot = _mm256_madd_epi16(dot[k], ones);
                    scaled[k] = _mm256_add_epi32(scaled[k], _mm256_mullo_epi32(dot, scale));
                }
            }
            let mut min_terms = [_mm256_setzero_si256(); N];
            for p in 0..4 {
                let mins: &[[u8; 2]; 8] = tile.mins[p][8 * h..8 * h + 8].try_into().unwrap();
                let mins = _mm256_cvtepu8_epi16(_mm_loadu_si128(mins.as_ptr() as *const __m128i));
                for k in 0..N {
                    let pair = broadcast_pair(&a[k].sums32, p);
                    min_terms[k] = _mm256_add_epi32(min_terms[k], _mm256_madd_epi16(mins, pair));
                }
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(tile.d[8 * h..].as_ptr() as *const __m128i));
            let dmin = _mm256_cvtph_ps(_mm_loadu_si128(
                tile.dmin[8 * h..].as_ptr() as *const __m128i
            ));
            for k in 0..N {
                let x_scale = _mm256_set1_ps(a[k].d);
                acc[k][h] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(scaled[k]),
                    _mm256_mul_ps(d, x_scale),
                    acc[k][h],
                );
                acc[k][h] = _mm256_fnmadd_ps(
                    _mm256_cvtepi32_ps(min_terms[k]),
                    _mm256_mul_ps(dmin, x_scale),
                    acc[k][h],
                );
            }
        }
    }
    for (k, acc) in acc.iter().enumerate() {
        _mm256_storeu_ps(sums[k][..8].as_mut_ptr(), acc[0]);
        _mm256_storeu_ps(sums[k][8..].as_mut_ptr(), acc[1]);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_rows<const N: usize>(
    tiles: &[TileQ6K],
    acts: [&[ActivationBlock]; N],
    sums: &mut [[f32; TILE_ROWS]],
) {
    let nibble = _mm256_set1_epi8(0x0F);
    let high_bits = _mm256_set1_epi8(0x30);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    for (b, tile) in tiles.iter().enumerate() {
        prefetch_ahead(tile);
        let a: [&ActivationBlock; N] = std::array::from_fn(|k| &acts[k][b]);
        #[allow(clippy::needless_range_loop)] // h also picks the rows of every load
        for h in 0..2 {
            // As the AVX-512 kernel, for rows 8h..8h + 8.
            let mut scaled = [_mm256_setzero_si256(); N];
            let mut offsets = [_mm256_setzero_si256(); N];
            for p in 0..8 {
                let pair: &[[i8; 2]; 8] = tile.scales[p][8 * h..8 * h + 8].try_into().unwrap();
                let pair = _mm256_cvtepi8_epi16(_mm_loadu_si128(pair.as_ptr() as *const __m128i));
                for k in 0..N {
                    let sums = broadcast_pair(&a[k].sums16, p);
                    offsets[k] = _mm256_add_epi32(offsets[k], _mm256_madd_epi16(pair, sums));
                }
                let scales = [
                    _mm256_srai_epi32::<16>(_mm256_slli_epi32::<16>(pair)),
                    _mm256_srai_epi32::<16>(pair),
                ];
                for (half, scale) in scales.into_iter().enumerate() {
                    let t = 2 * p + half;
                    let hb = load_half(&tile.high[t], h);
                    let l0 = load_half(&tile.low[2 * t], h);
                    let l1 = load_half(&tile.low[2 * t + 1], h);
                    let join = |low: __m256i, high: __m256i| {
                        _mm256_or_si256(
                            _mm256_and_si256(low, nibble),
                            _mm256_and_si256(high, high_bits),
                        )
                    };
                    let values = [
                        join(l0, _mm256_slli_epi16::<4>(hb)),
                        join(_mm256_srli_epi16::<4>(l0), _mm256_slli_epi16::<2>(hb)),
                        join(l1, hb),
                        join(_mm256_srli_epi16::<4>(l1), _mm256_srli_epi16::<2>(hb)),
                    ];
                    for k in 0..N {
                        // i16 sums of two groups' products per row pair: at most 4 · 63 · 127.
                        let group = |i: usize| {
                            _mm256_add_epi16(
                                _mm256_maddubs_epi16(
                                    values[2 * i],
                                    broadcast4(&a[k].qs, 16 * t + 8 * i),
                                ),
                                _mm256_maddubs_epi16(
                                    values[2 * i + 1],
                                    broadcast4(&a[k].qs, 16 * t + 8 * i + 4),
                                ),
                            )
                        };
                        let dot = _mm256_add_epi32(
                            _mm256_madd_epi16(group(0), ones),
                            _mm256_madd_epi16(group(1), ones),
                        );
                        scaled[k] = _mm256_add_epi32(scaled[k], _mm256_mullo_epi32(dot, scale));
                    }
                }
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(tile.d[8 * h..].as_ptr() as *const __m128i));
            for k in 0..N {
                let total = _mm256_sub_epi32(scaled[k], _mm256_slli_epi32::<5>(offsets[k]));
                acc[k][h] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(total),
                    _mm256_mul_ps(d, _mm256_set1_ps(a[k].d)),
                    acc[k][h],
                );
            }
        }
    }
    for (k, acc) in acc.iter().enumerate() {
        _mm256_storeu_ps(sums[k][..8].as_mut_ptr(), acc[0]);
        _mm256_storeu_ps(sums[k][8..].as_mut_ptr(), acc[1]);
    }
}
