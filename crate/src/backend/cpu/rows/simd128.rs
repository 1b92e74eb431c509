//! The row kernels for wasm with SIMD128.
//!
//! The kernels are `#[inline]`: in a module of their own they would otherwise land in another
//! codegen unit than the row loop that calls them, and a call per pair of short rows is slower
//! than the loop (the tiny Mistral's decode dropped from 518-524 to 429-469 tok/s).

use std::arch::wasm32::*;

use half::f16;

use super::{BlockQ8_1, RowFormat};

/// f16 → f32 for every bit pattern. wasm has no f16 conversion instruction and the software one
/// branches; two lookups per 32-value block are cheaper.
fn f16_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| f16::from_bits(bits).to_f32())
            .collect()
    })
}

/// One Q4_1 block against one activation block in wasm: the integer dot product (four lanes to
/// add) and the block's scale and minimum.
#[inline(always)]
fn q4_1_block(block: &[u8], a: &BlockQ8_1, table: &[f32]) -> (v128, f32, f32) {
    let d = table[usize::from(u16::from_le_bytes([block[0], block[1]]))];
    let m = table[usize::from(u16::from_le_bytes([block[2], block[3]]))];
    // SAFETY: a Q4_1 block has 20 bytes, so 16 bytes from offset 4 are in bounds (checked
    // below); `a.wide` holds 32 i16 (64 bytes), read as four 16-byte vectors.
    assert!(block.len() >= 20);
    let (packed, a0, a1, a2, a3) = unsafe {
        let wide = a.wide.as_ptr() as *const v128;
        (
            v128_load(block.as_ptr().add(4) as *const v128),
            v128_load(wide),
            v128_load(wide.add(1)),
            v128_load(wide.add(2)),
            v128_load(wide.add(3)),
        )
    };
    let lo = v128_and(packed, u8x16_splat(0x0F));
    let hi = u8x16_shr(packed, 4);
    let sum = i32x4_add(
        i32x4_add(
            i32x4_dot_i16x8(u16x8_extend_low_u8x16(lo), a0),
            i32x4_dot_i16x8(u16x8_extend_high_u8x16(lo), a1),
        ),
        i32x4_add(
            i32x4_dot_i16x8(u16x8_extend_low_u8x16(hi), a2),
            i32x4_dot_i16x8(u16x8_extend_high_u8x16(hi), a3),
        ),
    );
    (sum, d, m)
}

fn horizontal_sum(v: v128) -> f32 {
    f32x4_extract_lane::<0>(v)
        + f32x4_extract_lane::<1>(v)
        + f32x4_extract_lane::<2>(v)
        + f32x4_extract_lane::<3>(v)
}

#[inline]
pub(super) fn dot_q4_1(weights: &[u8], act: &[BlockQ8_1]) -> f32 {
    let table = f16_table();
    let mut acc = f32x4_splat(0.0);
    let mut mins = 0f32;
    for (block, a) in weights.chunks_exact(RowFormat::Q4_1.block_bytes()).zip(act) {
        let (sum, d, m) = q4_1_block(block, a, table);
        mins += m * a.s;
        acc = f32x4_add(
            acc,
            f32x4_mul(f32x4_splat(d * a.d), f32x4_convert_i32x4(sum)),
        );
    }
    horizontal_sum(acc) + mins
}

#[inline]
pub(super) fn dot_q4_1_pair(w0: &[u8], w1: &[u8], act: &[BlockQ8_1]) -> [f32; 2] {
    let table = f16_table();
    let (mut acc0, mut acc1) = (f32x4_splat(0.0), f32x4_splat(0.0));
    let (mut mins0, mut mins1) = (0f32, 0f32);
    let block_bytes = RowFormat::Q4_1.block_bytes();
    for ((b0, b1), a) in w0
        .chunks_exact(block_bytes)
        .zip(w1.chunks_exact(block_bytes))
        .zip(act)
    {
        let (sum0, d0, m0) = q4_1_block(b0, a, table);
        let (sum1, d1, m1) = q4_1_block(b1, a, table);
        mins0 += m0 * a.s;
        mins1 += m1 * a.s;
        acc0 = f32x4_add(
            acc0,
            f32x4_mul(f32x4_splat(d0 * a.d), f32x4_convert_i32x4(sum0)),
        );
        acc1 = f32x4_add(
            acc1,
            f32x4_mul(f32x4_splat(d1 * a.d), f32x4_convert_i32x4(sum1)),
        );
    }
    [horizontal_sum(acc0) + mins0, horizontal_sum(acc1) + mins1]
}

/// One Q8_0 block against one activation block in wasm: the integer dot product (four lanes to
/// add) and the block's scale.
#[inline(always)]
fn q8_0_block(block: &[u8], a: &BlockQ8_1, table: &[f32]) -> (v128, f32) {
    let d = table[usize::from(u16::from_le_bytes([block[0], block[1]]))];
    assert!(block.len() >= 34);
    // SAFETY: the block has 34 bytes (checked above), so the four 8-byte loads at offsets 2, 10,
    // 18 and 26 are in bounds; `a.wide` holds 32 i16 (64 bytes), read as four 16-byte vectors.
    let sum = unsafe {
        let weights = block.as_ptr().add(2) as *const i8;
        let wide = a.wide.as_ptr() as *const v128;
        i32x4_add(
            i32x4_add(
                i32x4_dot_i16x8(i16x8_load_extend_i8x8(weights), v128_load(wide)),
                i32x4_dot_i16x8(
                    i16x8_load_extend_i8x8(weights.add(8)),
                    v128_load(wide.add(1)),
                ),
            ),
            i32x4_add(
                i32x4_dot_i16x8(
                    i16x8_load_extend_i8x8(weights.add(16)),
                    v128_load(wide.add(2)),
                ),
                i32x4_dot_i16x8(
                    i16x8_load_extend_i8x8(weights.add(24)),
                    v128_load(wide.add(3)),
                ),
            ),
        )
    };
    (sum, d)
}

#[inline]
pub(super) fn dot_q8_0(weights: &[u8], act: &[BlockQ8_1]) -> f32 {
    let table = f16_table();
    let mut acc = f32x4_splat(0.0);
    for (block, a) in weights.chunks_exact(RowFormat::Q8_0.block_bytes()).zip(act) {
        let (sum, d) = q8_0_block(block, a, table);
        acc = f32x4_add(
            acc,
            f32x4_mul(f32x4_splat(d * a.d_f16), f32x4_convert_i32x4(sum)),
        );
    }
    horizontal_sum(acc)
}

#[inline]
pub(super) fn dot_q8_0_pair(w0: &[u8], w1: &[u8], act: &[BlockQ8_1]) -> [f32; 2] {
    let table = f16_table();
    let (mut acc0, mut acc1) = (f32x4_splat(0.0), f32x4_splat(0.0));
    let block_bytes = RowFormat::Q8_0.block_bytes();
    for ((b0, b1), a) in w0
        .chunks_exact(block_bytes)
        .zip(w1.chunks_exact(block_bytes))
        .zip(act)
    {
        let (sum0, d0) = q8_0_block(b0, a, table);
        let (sum1, d1) = q8_0_block(b1, a, table);
        acc0 = f32x4_add(
            acc0,
            f32x4_mul(f32x4_splat(d0 * a.d_f16), f32x4_convert_i32x4(sum0)),
        );
        acc1 = f32x4_add(
            acc1,
            f32x4_mul(f32x4_splat(d1 * a.d_f16), f32x4_convert_i32x4(sum1)),
        );
    }
    [horizontal_sum(acc0), horizontal_sum(acc1)]
}
