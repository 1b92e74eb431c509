// GGUF block decoding, shared by the kernels that read quantized weights (matmul, embed).
//
// The including kernel declares `w: array<u32>` (the raw GGUF bytes of the weights, as stored in
// the file) and `x: array<vec4<f32>>` (activations, read four at a time). Every type is read in
// sub-blocks of 32 values, the common granularity of Q4_0/Q4_1/Q8_0 (one block) and Q4_K/Q6_K (one
// eighth of a block):
//   decode32_T(row, s) = W[row][32·s .. 32·s + 32] as 8 vec4s, `row` the byte offset of the row
//   dot32(w, xo)       = Σ_{i<32} w[i] · x[xo + i] for a decoded sub-block
//   dot32_T(row, s, xo) = dot32(decode32_T(row, s), xo); for the K-quants computed without the
//                        decoded sub-block (Σ q·x and Σ x, the scales applied once): no 32-value
//                        array per step, which GPU compilers can leave in slow local memory
// All arithmetic is f32 (the path every adapter supports); f16 values are read with unpack2x16float.
// With `F16` (adapters with shader-f16; context.rs resolves the `// #if` lines) the matmul uses
// decode32h_T and dot32h instead: the sub-block as small integers q (exact in f16) with its scales,
//   W[i] = scale[i / 16] · q[i] + bias   (F16 weights: q = W, scale 1)
// and Σ q[i] · x[i] over each half in f16, scaled and summed in f32 (BIASED_T: the type has a bias,
// which adds bias · Σ x[i]).
//
// Layouts: Q4_0 18 bytes per 32 values (d f16, 16 bytes of nibbles: low 0..16, high 16..32);
// Q4_1 20 bytes (d, m f16, nibbles; value d·q + m); Q8_0 34 bytes (d f16, 32 signed bytes);
// Q4_K 144 bytes per 256 (d, dmin f16, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles:
// sub-block `sub` is chunk sub/2, low nibbles when even; value d·scale·q − dmin·min);
// Q6_K 210 bytes per 256 (ql[128] low 4 bits, qh[64] high 2 bits, 16 signed scales, d f16: half n
// has ql[64n..], qh[32n..], scales[8n..]; its quarter q takes low nibbles for q < 2, ql offset
// 32·(q odd), qh bits 2q..2q+2, scale 8n + 2q + (l ≥ 16)).

fn wbyte(i: u32) -> u32 {
    return (w[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu;
}

// A little-endian u16 at a 2-aligned byte offset.
fn wu16(i: u32) -> u32 {
    return (w[i >> 2u] >> ((i & 2u) * 8u)) & 0xffffu;
}

fn wf16(i: u32) -> f32 {
    return unpack2x16float(wu16(i)).x;
}

fn signed8(b: u32) -> f32 {
    return f32(bitcast<i32>(b << 24u) >> 24u);
}

// The 4 bytes at a 2-aligned byte offset, as one little-endian word (blocks of 18, 34 and 210
// bytes start on 2-byte boundaries; reading whole words beats byte-by-byte extraction).
fn wword(i: u32) -> u32 {
    let lo = w[i >> 2u];
    let hi = w[(i >> 2u) + 1u];
    // Branch-free: neighbouring invocations read blocks of both alignments.
    return select(lo, (lo >> 16u) | (hi << 16u), (i & 2u) != 0u);
}

// Four signed bytes of a word as floats.
fn signed4(word: u32) -> vec4<f32> {
    return vec4<f32>(unpack4xI8(word));
}

fn unsigned4(word: u32) -> vec4<f32> {
    return vec4<f32>(unpack4xU8(word));
}

fn x4(i: u32) -> vec4<f32> {
    return x[i >> 2u];
}

fn q4_k_scale_min(base: u32, sub: u32) -> vec2<f32> {
    let scales = base + 4u;
    var sc: u32;
    var m: u32;
    if (sub < 4u) {
        sc = wbyte(scales + sub) & 63u;
        m = wbyte(scales + sub + 4u) & 63u;
    } else {
        sc = (wbyte(scales + sub + 4u) & 15u) | ((wbyte(scales + sub - 4u) >> 6u) << 4u);
        m = (wbyte(scales + sub + 4u) >> 4u) | ((wbyte(scales + sub) >> 6u) << 4u);
    }
    let dm = unpack2x16float(w[base >> 2u]);
    return vec2<f32>(dm.x * f32(sc), dm.y * f32(m));
}
// Sub-block s of a Q4_K row at byte `row`: (d·scale, dmin·min), the word index of the 32 bytes of
// nibbles it shares with its neighbour, and the shift to its own (the low ones when s is even).
struct Q4kSub {
    scale_min: vec2<f32>,
    qs: u32,
    shift: u32,
}
fn q4_k_sub(row: u32, s: u32) -> Q4kSub {
    let base = row + (s / 8u) * 144u;
    let sub = s % 8u;
    return Q4kSub(q4_k_scale_min(base, sub), (base + 16u + (sub / 2u) * 32u) >> 2u, (sub % 2u) * 4u);
}
fn q6_k_scale(base: u32, sub: u32, l: u32) -> f32 {
    let n = sub / 4u;
    let quarter = sub % 4u;
    return wf16(base + 208u) * signed8(wbyte(base + 192u + 8u * n + 2u * quarter + l / 16u));
}
// Word k (values 4k .. 4k + 4) of sub-block s of a Q6_K row at byte `row`, as four 6-bit
// unsigned bytes (q + 32).
fn q6_k_word(row: u32, s: u32, k: u32) -> u32 {
    let base = row + (s / 8u) * 210u;
    let n = (s % 8u) / 4u;
    let quarter = s % 4u;
    let ql_at = base + 64u * n + 32u * (quarter % 2u);
    let qh_at = base + 128u + 32u * n;
    let low = (wword(ql_at + 4u * k) >> select(0u, 4u, quarter >= 2u)) & 0x0f0f0f0fu;
    let high = ((wword(qh_at + 4u * k) >> (2u * quarter)) & 0x03030303u) << 4u;
    return low | high;
}
fn decode32_f32(row: u32, s: u32) -> array<vec4<f32>, 8> {
    let base = (row >> 2u) + s * 32u;
    var out: array<vec4<f32>, 8>;
    for (var k = 0u; k < 8u; k++) {
        let i = base + 4u * k;
        out[k] = vec4<f32>(bitcast<f32>(w[i]), bitcast<f32>(w[i + 1u]), bitcast<f32>(w[i + 2u]), bitcast<f32>(w[i + 3u]));
    }
    return out;
}
fn decode32_f16(row: u32, s: u32) -> array<vec4<f32>, 8> {
    let base = (row >> 2u) + s * 16u;
    var out: array<vec4<f32>, 8>;
    for (var k = 0u; k < 8u; k++) {
        out[k] = vec4<f32>(unpack2x16float(w[base + 2u * k]), unpack2x16float(w[base + 2u * k + 1u]));
    }
    return out;
}
fn decode32_q4_0(row: u32, s: u32) -> array<vec4<f32>, 8> {
    let base = row + s * 18u;
    let d = wf16(base);
    var out: array<vec4<f32>, 8>;
    for (var k = 0u; k < 4u; k++) {
        let q = wword(base + 2u + 4u * k);
        out[k] = d * (unsigned4(q & 0x0f0f0f0fu) - 8.0);
        out[k + 4u] = d * (unsigned4((q >> 4u) & 0x0f0f0f0fu) - 8.0);
    }
    return out;
}
fn decode32_q4_1(row: u32, s: u32) -> array<vec4<f32>, 8> {
    let word = (row + s * 20u) >> 2u;
    let dm = unpack2x16float(w[word]);
    var out: array<vec4<f32>, 8>;
    for (var k = 0u; k < 4u; k++) {
        let q = w[word + 1u + k];
        out[k] = dm.x * unsigned4(q & 0x0f0f0f0fu) + dm.y;
        out[k + 4u] = dm.x * unsigned4((q >> 4u) & 0x0f0f0f0fu) + dm.y;
    }
    return out;
}
fn decode32_q8_0(row: u32, s: u32) -> array<vec4<f32>, 8> {
    let base = row + s * 34u;
    let d = wf16(base);
    var out: array<vec4<f32>, 8>;
    for (var k = 0u; k < 8u; k++) {
        out[k] = d * signed4(wword(base + 2u + 4u * k));
    }
    return out;
}
fn decode32_q4_k(row: u32, s: u32) -> array<vec4<f32>, 8> {
    let q4k = q4_k_sub(row, s);
    var out: array<vec4<f32>, 8>;
    for (var k = 0u; k < 8u; k++) {
        out[k] = q4k.scale_min.x * unsigned4((w[q4k.qs + k] >> q4k.shift) & 0x0f0f0f0fu) - q4k.scale_min.y;
    }
    return out;
}
fn decode32_q6_k(row: u32, s: u32) -> array<vec4<f32>, 8> {
    let base = row + (s / 8u) * 210u;
    let scale_lo = q6_k_scale(base, s % 8u, 0u);
    let scale_hi = q6_k_scale(base, s % 8u, 16u);
    var out: array<vec4<f32>, 8>;
    for (var k = 0u; k < 8u; k++) {
        out[k] = select(scale_hi, scale_lo, k < 4u) * (unsigned4(q6_k_word(row, s, k)) - 32.0);
    }
    return out;
}

// A decoded sub-block times x[xo .. xo + 32].
fn dot32(wv: array<vec4<f32>, 8>, xo: u32) -> f32 {
    var acc = 0.0;
    for (var k = 0u; k < 8u; k++) {
        acc += dot(wv[k], x4(xo + 4u * k));
    }
    return acc;
}

fn dot32_f32(row: u32, s: u32, xo: u32) -> f32 {
    return dot32(decode32_f32(row, s), xo);
}
fn dot32_f16(row: u32, s: u32, xo: u32) -> f32 {
    return dot32(decode32_f16(row, s), xo);
}
fn dot32_q4_0(row: u32, s: u32, xo: u32) -> f32 {
    return dot32(decode32_q4_0(row, s), xo);
}
// d·Σ q·x + m·Σ x.
fn dot32_q4_1(row: u32, s: u32, xo: u32) -> f32 {
    let word = (row + s * 20u) >> 2u;
    let dm = unpack2x16float(w[word]);
    var qx = vec4<f32>(0.0);
    var xs = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        let q = w[word + 1u + k];
        let xl = x4(xo + 4u * k);
        let xh = x4(xo + 16u + 4u * k);
        qx = fma(unsigned4(q & 0x0f0f0f0fu), xl, qx);
        qx = fma(unsigned4((q >> 4u) & 0x0f0f0f0fu), xh, qx);
        xs += xl + xh;
    }
    let ones = vec4<f32>(1.0);
    return dm.x * dot(qx, ones) + dm.y * dot(xs, ones);
}
fn dot32_q8_0(row: u32, s: u32, xo: u32) -> f32 {
    return dot32(decode32_q8_0(row, s), xo);
}
// d·scale·Σ q·x − dmin·min·Σ x.
fn dot32_q4_k(row: u32, s: u32, xo: u32) -> f32 {
    let q4k = q4_k_sub(row, s);
    var qx = vec4<f32>(0.0);
    var xs = vec4<f32>(0.0);
    for (var k = 0u; k < 8u; k++) {
        let xv = x4(xo + 4u * k);
        qx = fma(unsigned4((w[q4k.qs + k] >> q4k.shift) & 0x0f0f0f0fu), xv, qx);
        xs += xv;
    }
    let ones = vec4<f32>(1.0);
    return q4k.scale_min.x * dot(qx, ones) - q4k.scale_min.y * dot(xs, ones);
}
// Each half's scale times Σ (q − 32)·x over the half.
fn dot32_q6_k(row: u32, s: u32, xo: u32) -> f32 {
    var lo = vec4<f32>(0.0);
    var hi = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        lo = fma(unsigned4(q6_k_word(row, s, k)) - 32.0, x4(xo + 4u * k), lo);
        hi = fma(unsigned4(q6_k_word(row, s, k + 4u)) - 32.0, x4(xo + 16u + 4u * k), hi);
    }
    let base = row + (s / 8u) * 210u;
    let ones = vec4<f32>(1.0);
    return q6_k_scale(base, s % 8u, 0u) * dot(lo, ones) + q6_k_scale(base, s % 8u, 16u) * dot(hi, ones);
}

// #if Q8X
// The decode matmul on quantized activations (kernels/quantize.wgsl's blocks in `xq`, declared by
// the including kernel): dot32q_T(row, s, xb) = Σ over sub-block s of W·x with x's block at quad
// `xb`, from integer dot products of 4 signed bytes at a time (dot4I8Packed), the scales applied
// once per sub-block. The weights' values go in as signed bytes: nibbles and Q6_K's 6-bit values
// (0..63) are non-negative, their offsets (−8, −32) and minimums are taken off through the
// block's sum of x.
struct XBlock {
    lo: vec4<u32>, // values 0..16: word i holds 4i .. 4i + 4
    hi: vec4<u32>, // values 16..32
    d: f32,        // x ≈ d · q
    sum: f32,      // d · Σ q
}
fn x_block(xb: u32) -> XBlock {
    let scales = bitcast<vec2<f32>>(xq[xb + 2u].xy);
    return XBlock(xq[xb], xq[xb + 1u], scales.x, scales.y);
}
// Σ q over the 4 bytes of a word.
fn byte_sum(word: u32) -> i32 {
    return dot4I8Packed(word, 0x01010101u);
}
// Nibble word k holds values 4k.. in its low nibbles and 16 + 4k.. in its high ones (Q4_0, Q4_1).
fn nibble_dot(word: u32, k: u32, xv: XBlock) -> i32 {
    return dot4I8Packed(word & 0x0f0f0f0fu, xv.lo[k]) + dot4I8Packed((word >> 4u) & 0x0f0f0f0fu, xv.hi[k]);
}
// d·Σ (q − 8)·x.
fn dot32q_q4_0(row: u32, s: u32, xb: u32) -> f32 {
    let base = row + s * 18u;
    let xv = x_block(xb);
    var dot = 0;
    for (var k = 0u; k < 4u; k++) {
        dot += nibble_dot(wword(base + 2u + 4u * k), k, xv);
    }
    return wf16(base) * (xv.d * f32(dot) - 8.0 * xv.sum);
}
// d·Σ q·x + m·Σ x.
fn dot32q_q4_1(row: u32, s: u32, xb: u32) -> f32 {
    let word = (row + s * 20u) >> 2u;
    let dm = unpack2x16float(w[word]);
    let xv = x_block(xb);
    var dot = 0;
    for (var k = 0u; k < 4u; k++) {
        dot += nibble_dot(w[word + 1u + k], k, xv);
    }
    return dm.x * xv.d * f32(dot) + dm.y * xv.sum;
}
fn dot32q_q8_0(row: u32, s: u32, xb: u32) -> f32 {
    let base = row + s * 34u;
    let xv = x_block(xb);
    var dot = 0;
    for (var k = 0u; k < 4u; k++) {
        dot += dot4I8Packed(wword(base + 2u + 4u * k), xv.lo[k]);
        dot += dot4I8Packed(wword(base + 18u + 4u * k), xv.hi[k]);
    }
    return wf16(base) * xv.d * f32(dot);
}
// d·scale·Σ q·x − dmin·min·Σ x: word k of the sub-block holds values 4k.. in one nibble.
fn dot32q_q4_k(row: u32, s: u32, xb: u32) -> f32 {
    let q4k = q4_k_sub(row, s);
    let xv = x_block(xb);
    var dot = 0;
    for (var k = 0u; k < 4u; k++) {
        dot += dot4I8Packed((w[q4k.qs + k] >> q4k.shift) & 0x0f0f0f0fu, xv.lo[k]);
        dot += dot4I8Packed((w[q4k.qs + 4u + k] >> q4k.shift) & 0x0f0f0f0fu, xv.hi[k]);
    }
    return q4k.scale_min.x * xv.d * f32(dot) - q4k.scale_min.y * xv.sum;
}
// Each half's scale times Σ (q − 32)·x over the half.
fn dot32q_q6_k(row: u32, s: u32, xb: u32) -> f32 {
    let xv = x_block(xb);
    var lo = 0;
    var hi = 0;
    var lo_sum = 0;
    var hi_sum = 0;
    for (var k = 0u; k < 4u; k++) {
        lo += dot4I8Packed(q6_k_word(row, s, k), xv.lo[k]);
        hi += dot4I8Packed(q6_k_word(row, s, k + 4u), xv.hi[k]);
        lo_sum += byte_sum(xv.lo[k]);
        hi_sum += byte_sum(xv.hi[k]);
    }
    let base = row + (s / 8u) * 210u;
    return xv.d * (q6_k_scale(base, s % 8u, 0u) * f32(lo - 32 * lo_sum)
        + q6_k_scale(base, s % 8u, 16u) * f32(hi - 32 * hi_sum));
}
// #endif

// #if F16
struct Block16 {
    q: array<vec4<f16>, 8>,
    scale: vec2<f32>, // values 0..16, 16..32
    bias: f32,
}

// Σ W[i] · x[xo + i] for a sub-block from decode32h_T: x rounded to f16, q · x summed over each
// half in f16 (four lanes of four fused multiply-adds), the rest in f32.
fn dot32h(b: Block16, xo: u32, biased: bool) -> f32 {
    var lo = vec4<f16>(0.0);
    var hi = vec4<f16>(0.0);
    var xs = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        let xl = x4(xo + 4u * k);
        let xh = x4(xo + 16u + 4u * k);
        lo = fma(b.q[k], vec4<f16>(xl), lo);
        hi = fma(b.q[k + 4u], vec4<f16>(xh), hi);
        if (biased) {
            xs += xl + xh;
        }
    }
    let ones = vec4<f32>(1.0);
    var sum = b.scale.x * dot(vec4<f32>(lo), ones) + b.scale.y * dot(vec4<f32>(hi), ones);
    if (biased) {
        sum += b.bias * dot(xs, ones);
    }
    return sum;
}

// The four bytes of `word`, masked, minus `offset`. (The conversion-free form, bitcasting
// 0x6400 | b to the f16 1024 + b, needs `bitcast<vec2<f16>>(u32)`, which naga does not take.)
fn bytes_h(word: u32, mask: u32, offset: f16) -> vec4<f16> {
    return vec4<f16>(unpack4xU8(word & (mask * 0x01010101u))) - offset;
}

// Nibbles are centred (q − 8): smaller products, less rounding.
fn nibbles_h(word: u32) -> vec4<f16> {
    return bytes_h(word, 0x0fu, 8.0h);
}

const BIASED_f16 = false;
fn decode32h_f16(row: u32, s: u32) -> Block16 {
    let base = (row >> 2u) + s * 16u;
    var b: Block16;
    for (var k = 0u; k < 8u; k++) {
        b.q[k] = vec4<f16>(vec4<f32>(unpack2x16float(w[base + 2u * k]), unpack2x16float(w[base + 2u * k + 1u])));
    }
    b.scale = vec2<f32>(1.0);
    return b;
}
const BIASED_q4_0 = false;
fn decode32h_q4_0(row: u32, s: u32) -> Block16 {
    let base = row + s * 18u;
    var b: Block16;
    for (var k = 0u; k < 4u; k++) {
        let q = wword(base + 2u + 4u * k);
        b.q[k] = nibbles_h(q);
        b.q[k + 4u] = nibbles_h(q >> 4u);
    }
    b.scale = vec2<f32>(wf16(base));
    return b;
}
const BIASED_q4_1 = true;
fn decode32h_q4_1(row: u32, s: u32) -> Block16 {
    let word = (row + s * 20u) >> 2u;
    let dm = unpack2x16float(w[word]);
    var b: Block16;
    for (var k = 0u; k < 4u; k++) {
        let q = w[word + 1u + k];
        b.q[k] = nibbles_h(q);
        b.q[k + 4u] = nibbles_h(q >> 4u);
    }
    b.scale = vec2<f32>(dm.x);
    b.bias = dm.y + 8.0 * dm.x;
    return b;
}
const BIASED_q8_0 = false;
fn decode32h_q8_0(row: u32, s: u32) -> Block16 {
    let base = row + s * 34u;
    var b: Block16;
    for (var k = 0u; k < 8u; k++) {
        b.q[k] = vec4<f16>(unpack4xI8(wword(base + 2u + 4u * k)));
    }
    b.scale = vec2<f32>(wf16(base));
    return b;
}
const BIASED_q4_k = true;
fn decode32h_q4_k(row: u32, s: u32) -> Block16 {
    let q4k = q4_k_sub(row, s);
    var b: Block16;
    for (var k = 0u; k < 8u; k++) {
        b.q[k] = nibbles_h(w[q4k.qs + k] >> q4k.shift);
    }
    b.scale = vec2<f32>(q4k.scale_min.x);
    b.bias = 8.0 * q4k.scale_min.x - q4k.scale_min.y;
    return b;
}
const BIASED_q6_k = false;
fn decode32h_q6_k(row: u32, s: u32) -> Block16 {
    let base = row + (s / 8u) * 210u;
    var b: Block16;
    for (var k = 0u; k < 8u; k++) {
        b.q[k] = bytes_h(q6_k_word(row, s, k), 0x3fu, 32.0h);
    }
    b.scale = vec2<f32>(q6_k_scale(base, s % 8u, 0u), q6_k_scale(base, s % 8u, 16u));
    return b;
}
// #endif

// #if MULTI_ROW
// For kernels where one invocation takes several rows (CPU implementations, see matmul.wgsl):
// sub-block s of a row in three steps, so that x is read and prepared once for all the rows, and
// the scales are read only after the loop over the values (fewer values live across it):
//   sub_T(row, s)     where the sub-block's words are and which bits hold its values (no loads)
//   raw_T(h, k)       values 4k .. 4k + 4 (`lo`) and 16 + 4k .. 20 + 4k (`hi`), k < 4, as
//                     integers in place: element j still weighs 256^j (see `lanes`)
//   scales_T(row, s)  (lo, hi, bias_lo, bias_hi)
// and the kernel adds up Σ raw · (x / 256^j) per half, then lo · Σ_lo + hi · Σ_hi +
// bias_lo · Σ x_lo + bias_hi · Σ x_hi once per sub-block.
//
// Written for how CPU implementations run shaders: a vector of lanes per SPIR-V operation, where
// every load at a runtime offset is a per-lane gather, arrays live in memory, and integer shifts
// by a vector amount (which is what a shift by a constant becomes in SPIR-V), so also
// unpack4xU8's bit-field extracts, run one lane at a time. Masking each byte in place and
// converting it as a signed integer costs two vector operations per value, against about ten
// for a shift, a mask and an unsigned conversion.
struct Sub {
    at: u32,      // word index of the sub-block's data
    odd: bool,    // the data starts 2 bytes into word `at` (blocks of 18, 34 and 210 bytes)
    mask_lo: vec4<u32>, // the bits of each byte that hold a value, in place (see `lanes`)
    mask_hi: vec4<u32>,
    // Q6_K: the high two bits, from word `at2` under `mask2`, weighed `unit2`.
    at2: u32,
    mask2: vec4<u32>,
    unit2: f32,
}

struct Quads {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

// The weight of byte j of a word, undone on x: x · POSITION[j] · (byte j in place) = x · byte.
const POSITION = vec4<f32>(1.0, 1.0 / 256.0, 1.0 / 65536.0, 1.0 / 16777216.0);

// `mask` (one byte's bits, 0x0f, 0xf0, 0x03 << 2q, 0xff) for each byte of a word, in place.
fn byte_masks(mask: u32) -> vec4<u32> {
    return vec4<u32>(mask, mask << 8u, mask << 16u, mask << 24u);
}

const LOW_NIBBLES = vec4<u32>(0x0fu, 0x0f00u, 0x0f0000u, 0x0f000000u);
const HIGH_NIBBLES = vec4<u32>(0xf0u, 0xf000u, 0xf00000u, 0xf0000000u);
const NO_MASK = vec4<u32>(0u);

// The masked bytes of `word`, each left in place (byte j as value · 256^j), as floats: exact, as
// at most 8 bits are set in each. Converted as signed integers (one instruction on CPUs, where
// unsigned conversion takes several); the top byte with its high bit set comes out 2^32 low.
fn lanes(word: u32, mask: vec4<u32>) -> vec4<f32> {
    var v = vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(word) & mask));
    v.w += select(0.0, 4294967296.0, v.w < 0.0);
    return v;
}

// The same for the four bytes that start 2 bytes into word `i` when `odd` (then bytes 2, 3 of
// word i and 0, 1 of word i + 1, moved to their places), else at word `i`. Branch-free: with a
// branch here, 8 rows of Q6_K (four calls per row and quad) took SwiftShader minutes and 17 GB
// to compile, and Q8_0 ran 4% slower. So word i + 1 is read even when unused: for the last Q8_0
// block of a buffer that is one word past its end, which WebGPU's bounds-checked storage reads
// (naga and Tint both) turn into a harmless value, thrown away by the `select`.
fn lanes_at(i: u32, odd: bool, mask: vec4<u32>) -> vec4<f32> {
    let a = lanes(w[i], mask);
    return select(a, shifted(a, lanes(w[i + 1u], mask)), odd);
}

// Bytes 2, 3 of `a` and 0, 1 of `b` (lanes of neighbouring words), moved to their places.
fn shifted(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(a.zw * (1.0 / 65536.0), b.xy * 65536.0);
}

// The f16 at byte offset `byte` (2-aligned).
fn f16_at(byte: u32) -> f32 {
    let pair = unpack2x16float(w[byte >> 2u]);
    return select(pair.x, pair.y, (byte & 2u) != 0u);
}

fn sub_of(at: u32, odd: bool, mask_lo: vec4<u32>, mask_hi: vec4<u32>) -> Sub {
    return Sub(at, odd, mask_lo, mask_hi, 0u, NO_MASK, 0.0);
}

// Float weights are not integers in place: they are divided by POSITION to cancel it.
fn sub_f32(row: u32, s: u32) -> Sub {
    return sub_of((row >> 2u) + s * 32u, false, NO_MASK, NO_MASK);
}
fn raw_f32(h: Sub, k: u32) -> Quads {
    let lo = h.at + 4u * k;
    let hi = lo + 16u;
    return Quads(
        bitcast<vec4<f32>>(vec4<u32>(w[lo], w[lo + 1u], w[lo + 2u], w[lo + 3u])) / POSITION,
        bitcast<vec4<f32>>(vec4<u32>(w[hi], w[hi + 1u], w[hi + 2u], w[hi + 3u])) / POSITION,
    );
}
fn scales_f32(row: u32, s: u32) -> vec4<f32> {
    return vec4<f32>(1.0, 1.0, 0.0, 0.0);
}
fn sub_f16(row: u32, s: u32) -> Sub {
    return sub_of((row >> 2u) + s * 16u, false, NO_MASK, NO_MASK);
}
fn raw_f16(h: Sub, k: u32) -> Quads {
    let lo = h.at + 2u * k;
    let hi = lo + 8u;
    return Quads(
        vec4<f32>(unpack2x16float(w[lo]), unpack2x16float(w[lo + 1u])) / POSITION,
        vec4<f32>(unpack2x16float(w[hi]), unpack2x16float(w[hi + 1u])) / POSITION,
    );
}
fn scales_f16(row: u32, s: u32) -> vec4<f32> {
    return vec4<f32>(1.0, 1.0, 0.0, 0.0);
}
// Q4_0, Q4_1: word k holds values 4k.. in its low nibbles and 16 + 4k.. in its high ones (16
// times their value in place: the 1/16 goes into `hi`).
fn sub_q4_0(row: u32, s: u32) -> Sub {
    let data = row + s * 18u + 2u;
    return sub_of(data >> 2u, (data & 2u) != 0u, LOW_NIBBLES, HIGH_NIBBLES);
}
// Both nibbles of the same (one or two) words: each word read once.
fn raw_q4_0(h: Sub, k: u32) -> Quads {
    let a = w[h.at + k];
    let lo = lanes(a, LOW_NIBBLES);
    let hi = lanes(a, HIGH_NIBBLES);
    if (!h.odd) {
        return Quads(lo, hi);
    }
    let b = w[h.at + k + 1u];
    return Quads(shifted(lo, lanes(b, LOW_NIBBLES)), shifted(hi, lanes(b, HIGH_NIBBLES)));
}
fn scales_q4_0(row: u32, s: u32) -> vec4<f32> {
    let d = f16_at(row + s * 18u);
    return vec4<f32>(d, d / 16.0, -8.0 * d, -8.0 * d);
}
fn sub_q4_1(row: u32, s: u32) -> Sub {
    // 20-byte blocks: rows are whole words
    return sub_of((row >> 2u) + s * 5u + 1u, false, LOW_NIBBLES, HIGH_NIBBLES);
}
fn raw_q4_1(h: Sub, k: u32) -> Quads {
    let q = w[h.at + k];
    return Quads(lanes(q, LOW_NIBBLES), lanes(q, HIGH_NIBBLES));
}
fn scales_q4_1(row: u32, s: u32) -> vec4<f32> {
    let dm = unpack2x16float(w[(row >> 2u) + s * 5u]);
    return vec4<f32>(dm.x, dm.x / 16.0, dm.y, dm.y);
}
// Q8_0: signed bytes, read as unsigned (b + 256 when negative) and corrected by `signed`.
fn sub_q8_0(row: u32, s: u32) -> Sub {
    let data = row + s * 34u + 2u;
    return sub_of(data >> 2u, (data & 2u) != 0u, byte_masks(0xffu), byte_masks(0xffu));
}
fn signed(v: vec4<f32>) -> vec4<f32> {
    let limit = vec4<f32>(128.0, 32768.0, 8388608.0, 2147483648.0); // 128 · 256^j
    return v - select(vec4<f32>(0.0), 2.0 * limit, v >= limit);
}
fn raw_q8_0(h: Sub, k: u32) -> Quads {
    return Quads(signed(lanes_at(h.at + k, h.odd, h.mask_lo)), signed(lanes_at(h.at + 4u + k, h.odd, h.mask_lo)));
}
fn scales_q8_0(row: u32, s: u32) -> vec4<f32> {
    let d = f16_at(row + s * 34u);
    return vec4<f32>(d, d, 0.0, 0.0);
}
// Q4_K: an even sub-block takes the low nibbles of its 8 words, an odd one the high nibbles.
fn sub_q4_k(row: u32, s: u32) -> Sub {
    let base = row + (s >> 3u) * 144u;
    let sub = s & 7u;
    let mask = select(LOW_NIBBLES, HIGH_NIBBLES, (sub & 1u) == 1u);
    return sub_of((base + 16u + (sub >> 1u) * 32u) >> 2u, false, mask, mask);
}
fn raw_q4_k(h: Sub, k: u32) -> Quads {
    return Quads(lanes(w[h.at + k], h.mask_lo), lanes(w[h.at + 4u + k], h.mask_lo));
}
fn scales_q4_k(row: u32, s: u32) -> vec4<f32> {
    let sub = s & 7u;
    let scale_min = q4_k_scale_min(row + (s >> 3u) * 144u, sub);
    let scale = select(scale_min.x, scale_min.x / 16.0, (sub & 1u) == 1u);
    return vec4<f32>(scale, scale, -scale_min.y, -scale_min.y);
}
// Q6_K (layout above q6_k_word): q = low nibble + 16 · high bits − 32. Quarter q of half n takes
// the low nibbles of ql for q < 2, else the high ones (16 times their value in place: the 1/16
// goes into the scales), and bits 2q..2q+2 of qh (4^q times theirs in place, weighed `unit2` to
// count 16 low-nibble units each).
fn q6_k_unit(s: u32) -> f32 {
    return select(1.0, 1.0 / 16.0, (s & 3u) >= 2u);
}
fn sub_q6_k(row: u32, s: u32) -> Sub {
    let base = row + (s >> 3u) * 210u;
    let n = (s & 7u) >> 2u;
    let quarter = s & 3u;
    let ql_at = base + 64u * n + 32u * (quarter & 1u);
    let qh_at = base + 128u + 32u * n;
    let unit = q6_k_unit(s);
    return Sub(ql_at >> 2u, (base & 2u) != 0u, select(LOW_NIBBLES, HIGH_NIBBLES, quarter >= 2u),
        NO_MASK, qh_at >> 2u, byte_masks(3u << (2u * quarter)), 16.0 / f32(1u << (2u * quarter)) / unit);
}
fn raw_q6_k(h: Sub, k: u32) -> Quads {
    let lo = lanes_at(h.at + k, h.odd, h.mask_lo) + lanes_at(h.at2 + k, h.odd, h.mask2) * h.unit2;
    let hi = lanes_at(h.at + 4u + k, h.odd, h.mask_lo) + lanes_at(h.at2 + 4u + k, h.odd, h.mask2) * h.unit2;
    return Quads(lo, hi);
}
fn scales_q6_k(row: u32, s: u32) -> vec4<f32> {
    let base = row + (s >> 3u) * 210u;
    let lo = q6_k_scale(base, s & 7u, 0u);
    let hi = q6_k_scale(base, s & 7u, 16u);
    let unit = q6_k_unit(s);
    return vec4<f32>(lo * unit, hi * unit, -32.0 * lo, -32.0 * hi);
}
// #endif
