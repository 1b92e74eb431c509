//! For the kernel tests (`rows.rs`, `tiles.rs`): random GGUF blocks, ggml's dequantization
//! written from the GGUF layout (not from our kernels' reading of it), and the check of a
//! product against the dequantized weights.

use half::f16;

/// A reproducible byte stream.
pub fn random_bytes(seed: u32) -> impl FnMut() -> u8 {
    let mut state = seed;
    move || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 8) as u8
    }
}

/// Q6_K super-blocks (210 bytes each): any bits for the values, scales over the whole i8 range
/// (-128 included), a small positive super-scale.
pub fn random_q6_k(rows: usize, cols: usize, seed: u32) -> Vec<u8> {
    let mut next = random_bytes(seed);
    let mut bytes = Vec::new();
    for _ in 0..rows * cols / 256 {
        bytes.extend((0..192).map(|_| next()));
        bytes.extend((0..16).map(|i| if i == 5 { 0x80 } else { next() }));
        let d = f16::from_f32(0.0001 + next() as f32 / 500_000.0);
        bytes.extend_from_slice(&d.to_le_bytes());
    }
    bytes
}

/// ggml's `dequantize_row_q6_K`: element 128n + 32j + l of each half n.
pub fn dequantize_q6_k(bytes: &[u8]) -> Vec<f32> {
    let mut out = Vec::new();
    for block in bytes.chunks_exact(210) {
        let d = f16::from_le_bytes([block[208], block[209]]).to_f32();
        for n in 0..2 {
            let (ql, qh) = (&block[64 * n..], &block[128 + 32 * n..]);
            let scale = |i: usize| f32::from(block[192 + 8 * n + i] as i8);
            let mut half = [0f32; 128];
            for l in 0..32 {
                let is = l / 16;
                let q = [
                    (ql[l] & 0xF) | ((qh[l] & 3) << 4),
                    (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4),
                    (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                    (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                ];
                for (j, q) in q.into_iter().enumerate() {
                    half[32 * j + l] = d * scale(is + 2 * j) * (q as f32 - 32.0);
                }
            }
            out.extend(half);
        }
    }
    out
}

/// `got` (m × rows) against an f64 product of `x` (m × cols) with the dequantized weights `w`
/// (rows × cols): the only error is the 8-bit rounding of the activations, bounded here by 1% of
/// the sum of |terms|.
pub fn assert_matches_dequantized(what: &str, got: &[f32], w: &[f32], x: &[f32], rows: usize) {
    let cols = w.len() / rows;
    let m = x.len() / cols;
    for i in 0..m {
        for j in 0..rows {
            let terms = (0..cols).map(|c| w[j * cols + c] as f64 * x[i * cols + c] as f64);
            let exact: f64 = terms.clone().sum();
            let magnitude: f64 = terms.map(f64::abs).sum();
            let err = (got[i * rows + j] as f64 - exact).abs();
            assert!(
                err <= 0.01 * magnitude + 1e-4,
                "{what} {rows}x{cols} m={m} [{i},{j}]: {} vs {exact}",
                got[i * rows + j]
            );
        }
    }
}
