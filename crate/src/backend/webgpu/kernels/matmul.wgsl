// y = x · Wᵀ with W in its GGUF encoding (decoded by quant.wgsl; TYPE is replaced by the type's
// name when the pipeline is built). W may be one chunk of a larger matrix (rows split across
// buffers to respect the adapter's binding limit): its rows land at output column `out_offset`.
// An epilogue applied as each output is written saves a separate element-wise dispatch:
// `EPILOGUE_ADD` y = x · Wᵀ + r (the residual stream, after the attention output and FFN down
// projections), `EPILOGUE_SWIGLU` y = silu(x · Wᵀ) · r (the FFN gate times the up projection).
//
// One workgroup of 64 threads: 64 / THREADS_PER_ROW weight rows for one token; the threads of a row
// stride over its 32-value sub-blocks, then add up. THREADS_PER_ROW is set per adapter when the
// pipeline is built: 32 on GPUs (a row's sub-blocks read by neighbouring threads), 1 on CPU
// implementations such as lavapipe and SwiftShader, where MULTI_ROW takes over (16 invocations
// of 8 rows: 128 rows per workgroup). Row groups past the adapter's per-dimension dispatch limit
// continue in z.
//
// Variants (context.rs resolves the `// #if FLAG` / `// #else` / `// #endif` lines and prepends the
// `enable` directives):
//   F16             each sub-block's products in f16 (quant.wgsl's dot32h: small integers times x,
//                   the block's scales applied in f32), the sum over sub-blocks in f32. Needs the
//                   adapter's shader-f16; never used for F32 weights.
//   REDUCE_SHARED   the THREADS_PER_ROW partial sums of a row added up through workgroup memory.
//   REDUCE_SUBGROUP the same with subgroupShuffleXor butterflies, no workgroup memory or barrier.
//                   Only built when the adapter's smallest subgroup holds THREADS_PER_ROW lanes:
//                   a row's lanes are THREADS_PER_ROW consecutive invocations, aligned, which lie in
//                   one subgroup as consecutive subgroup lanes (the linear layout of 1-D
//                   workgroups that Vulkan, Metal, D3D12 and the browsers' implementations use).
//   neither         THREADS_PER_ROW is 1: each thread has its row's whole sum.
//   Q8X             the decode kernel multiplies quantized weights by x quantized to signed bytes
//                   (xq, from kernels/quantize.wgsl) with integer dot products of 4 bytes
//                   (quant.wgsl's dot32q_T), as llama.cpp's and the CPU backend's decode do:
//                   a quarter of f32 x's reads. Not for F16/F32 weights, nor with MULTI_ROW.
//   MULTI_ROW       THREADS_PER_ROW is 1 with f32 products (CPU implementations): `main` takes
//                   eight rows per invocation (below); prefill runs it token by token for
//                   Q4_1 (context.rs `gemm_prefill`).
//
// `tiled` (at the end) is the prefill kernel: a tile of 64 rows by 32 tokens per workgroup.

struct Params {
    k: u32,           // input features (row length)
    n_rows: u32,      // rows in this chunk
    row_bytes: u32,   // bytes per encoded row
    out_cols: u32,    // output row length (all chunks)
    out_offset: u32,  // first output column of this chunk
    tokens: u32,
    epilogue: u32, // EPILOGUE_*
}

const EPILOGUE_NONE: u32 = 0u;
const EPILOGUE_ADD: u32 = 1u;
const EPILOGUE_SWIGLU: u32 = 2u;

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;
// The epilogue's second operand (same shape as y); a one-word placeholder without an epilogue.
@group(0) @binding(4) var<storage, read> r: array<f32>;
// #if Q8X
// x quantized by kernels/quantize.wgsl, which the decode kernel reads instead of x.
@group(0) @binding(5) var<storage, read> xq: array<vec4<u32>>;
// #endif

fn store(i: u32, v: f32) {
    switch p.epilogue {
        case EPILOGUE_ADD: {
            y[i] = v + r[i];
        }
        case EPILOGUE_SWIGLU: {
            y[i] = v / (1.0 + exp(-v)) * r[i];
        }
        default: {
            y[i] = v;
        }
    }
}

override THREADS_PER_ROW: u32 = 8u;
override ROWS: u32 = 64u / THREADS_PER_ROW;
// #if REDUCE_SHARED
var<workgroup> partial: array<f32, 64>;
// #endif

// #if REDUCE_SUBGROUP
// The sum over the THREADS_PER_ROW lanes of a row, in every one of them.
fn row_sum(v: f32) -> f32 {
    var sum = v;
    for (var mask = THREADS_PER_ROW / 2u; mask > 0u; mask >>= 1u) {
        sum += subgroupShuffleXor(sum, mask);
    }
    return sum;
}
// #endif

// #if MULTI_ROW
// CPU implementations (THREADS_PER_ROW 1): each invocation takes 8 neighbouring rows, and reads
// and prepares each quad of x once for all of them (quant.wgsl's raw_T: integers in place, x
// scaled by POSITION). There a workgroup's invocations run as SIMD lanes, each load at a runtime
// offset is a gather, one lane at a time, and values that do not fit the registers are spilled:
// what counts is loads and live values per weight. So each row keeps one running sum per half
// (a dot product per quad), and its scales are read after the loop over the sub-block. 16
// invocations make 128 rows per workgroup. (SwiftShader, a 2048 x 2048 Q4_1 matrix: 5.1 ms with
// 4 rows and vector sums per row, 4.3 ms so.)
fn quad_sums(q: Quads, pl: vec4<f32>, ph: vec4<f32>) -> vec2<f32> {
    return vec2<f32>(dot(q.lo, pl), dot(q.hi, ph));
}

// Σ over the sub-block of each of 4 rows: raw sums per half `lo`, `hi`, their rows' scales
// (lo, hi, bias_lo, bias_hi each), and Σ x per half.
fn sub_sums(lo: vec4<f32>, hi: vec4<f32>, s0: vec4<f32>, s1: vec4<f32>, s2: vec4<f32>, s3: vec4<f32>,
    xs: vec2<f32>) -> vec4<f32> {
    let scales = transpose(mat4x4<f32>(s0, s1, s2, s3)); // row j: scale j of the 4 rows
    return scales[0] * lo + scales[1] * hi + scales[2] * xs.x + scales[3] * xs.y;
}

@compute @workgroup_size(16)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let first = ((wg.x + wg.z * groups.x) * 16u + tid) * 8u;
    if (first >= p.n_rows) {
        return;
    }
    // Rows past the end repeat the last one; only real rows are stored.
    let last = p.n_rows - 1u;
    let r0 = min(first + 0u, last) * p.row_bytes;
    let r1 = min(first + 1u, last) * p.row_bytes;
    let r2 = min(first + 2u, last) * p.row_bytes;
    let r3 = min(first + 3u, last) * p.row_bytes;
    let r4 = min(first + 4u, last) * p.row_bytes;
    let r5 = min(first + 5u, last) * p.row_bytes;
    let r6 = min(first + 6u, last) * p.row_bytes;
    let r7 = min(first + 7u, last) * p.row_bytes;
    let token = wg.y;
    let subs = p.k / 32u;
    var acc_a = vec4<f32>(0.0); // rows first .. first + 4
    var acc_b = vec4<f32>(0.0); // rows first + 4 .. first + 8
    for (var s = 0u; s < subs; s++) {
        let h0 = sub_TYPE(r0, s);
        let h1 = sub_TYPE(r1, s);
        let h2 = sub_TYPE(r2, s);
        let h3 = sub_TYPE(r3, s);
        let h4 = sub_TYPE(r4, s);
        let h5 = sub_TYPE(r5, s);
        let h6 = sub_TYPE(r6, s);
        let h7 = sub_TYPE(r7, s);
        let xb = token * p.k + s * 32u;
        var xs = vec4<f32>(0.0); // Σ x over the low and the high half, by lane
        var xt = vec4<f32>(0.0);
        var lo_a = vec4<f32>(0.0); // raw sums of the low half, rows first .. first + 4
        var hi_a = vec4<f32>(0.0);
        var lo_b = vec4<f32>(0.0);
        var hi_b = vec4<f32>(0.0);
        for (var k = 0u; k < 4u; k++) {
            let xl = x4(xb + 4u * k);
            let xh = x4(xb + 16u + 4u * k);
            xs += xl;
            xt += xh;
            let pl = xl * POSITION;
            let ph = xh * POSITION;
            let t0 = quad_sums(raw_TYPE(h0, k), pl, ph);
            lo_a.x += t0.x;
            hi_a.x += t0.y;
            let t1 = quad_sums(raw_TYPE(h1, k), pl, ph);
            lo_a.y += t1.x;
            hi_a.y += t1.y;
            let t2 = quad_sums(raw_TYPE(h2, k), pl, ph);
            lo_a.z += t2.x;
            hi_a.z += t2.y;
            let t3 = quad_sums(raw_TYPE(h3, k), pl, ph);
            lo_a.w += t3.x;
            hi_a.w += t3.y;
            let t4 = quad_sums(raw_TYPE(h4, k), pl, ph);
            lo_b.x += t4.x;
            hi_b.x += t4.y;
            let t5 = quad_sums(raw_TYPE(h5, k), pl, ph);
            lo_b.y += t5.x;
            hi_b.y += t5.y;
            let t6 = quad_sums(raw_TYPE(h6, k), pl, ph);
            lo_b.z += t6.x;
            hi_b.z += t6.y;
            let t7 = quad_sums(raw_TYPE(h7, k), pl, ph);
            lo_b.w += t7.x;
            hi_b.w += t7.y;
        }
        let ones = vec4<f32>(1.0);
        let sums = vec2<f32>(dot(xs, ones), dot(xt, ones));
        acc_a += sub_sums(lo_a, hi_a, scales_TYPE(r0, s), scales_TYPE(r1, s), scales_TYPE(r2, s),
            scales_TYPE(r3, s), sums);
        acc_b += sub_sums(lo_b, hi_b, scales_TYPE(r4, s), scales_TYPE(r5, s), scales_TYPE(r6, s),
            scales_TYPE(r7, s), sums);
    }
    let out = token * p.out_cols + p.out_offset + first;
    for (var i = 0u; i < 8u; i++) {
        if (first + i <= last) {
            store(out + i, select(acc_b[i & 3u], acc_a[i & 3u], i < 4u));
        }
    }
}
// #else
@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let row = (wg.x + wg.z * groups.x) * ROWS + tid / THREADS_PER_ROW;
    let lane = tid % THREADS_PER_ROW;
    let token = wg.y;
    let subs = p.k / 32u;
    let xo = token * p.k;
    var acc = 0.0;
    if (row < p.n_rows) {
        let row_offset = row * p.row_bytes;
        for (var s = lane; s < subs; s += THREADS_PER_ROW) {
// #if Q8X
            acc += dot32q_TYPE(row_offset, s, (token * subs + s) * 3u);
// #else
// #if F16
            acc += dot32h(decode32h_TYPE(row_offset, s), xo + s * 32u, BIASED_TYPE);
// #else
            acc += dot32_TYPE(row_offset, s, xo + s * 32u);
// #endif
// #endif
        }
    }
// #if REDUCE_SHARED
    partial[tid] = acc;
    workgroupBarrier();
    if (lane == 0u && row < p.n_rows) {
        var sum = 0.0;
        for (var i = 0u; i < THREADS_PER_ROW; i++) {
            sum += partial[tid + i];
        }
        store(token * p.out_cols + p.out_offset + row, sum);
    }
// #else
// #if REDUCE_SUBGROUP
    acc = row_sum(acc);
// #endif
    if (lane == 0u && row < p.n_rows) {
        store(token * p.out_cols + p.out_offset + row, acc);
    }
// #endif
}
// #endif

// Prefill: a tiled matrix product. A workgroup of 64 threads computes GEMM_ROWS weight rows for
// GEMM_TOKENS tokens (the last tile of each is partial). It walks k one 32-value sub-block at a
// time: each thread decodes one row's sub-block into w_tile and copies a share of the tokens' x
// into x_tile, then each thread multiplies from there for its 4 rows (r, r + 16, r + 32, r + 48)
// and 8 tokens (t, t + 4, ..., t + 28). So a weight is read from memory once per 32 tokens and a
// value of x once per 64 rows, and neighbouring threads read neighbouring entries of w_tile (the
// threads of a token group read the same x_tile entry: a broadcast). Both tiles hold quads of
// consecutive k; with F16 they hold f16 (half the workgroup memory) and each quad's four
// products are summed in f16, the running sums in f32.
const GEMM_ROWS: u32 = 64u;
const GEMM_TOKENS: u32 = 32u;
// #if F16
alias TileQuad = vec4<f16>;
alias TileMatrix = mat4x4<f16>;
// #else
alias TileQuad = vec4<f32>;
alias TileMatrix = mat4x4<f32>;
// #endif
var<workgroup> w_tile: array<TileQuad, 512>; // quad q of row r at q · GEMM_ROWS + r
var<workgroup> x_tile: array<TileQuad, 256>; // quad q of token t at q · GEMM_TOKENS + t

@compute @workgroup_size(64)
fn tiled(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let first_row = (wg.x + wg.z * groups.x) * GEMM_ROWS;
    let first_token = wg.y * GEMM_TOKENS;
    let row_lane = tid % 16u;
    let token_lane = tid / 16u;
    // The row this thread decodes (rows past the end repeat the last one; never stored).
    let decoded_row = min(first_row + tid, p.n_rows - 1u) * p.row_bytes;
    var acc: array<vec4<f32>, 8>; // token t + 4j: its sums for rows r, r + 16, r + 32, r + 48
    for (var s = 0u; s < p.k / 32u; s++) {
        let wv = decode32_TYPE(decoded_row, s);
        for (var q = 0u; q < 8u; q++) {
            w_tile[q * GEMM_ROWS + tid] = TileQuad(wv[q]);
        }
        for (var i = tid; i < 8u * GEMM_TOKENS; i += 64u) {
            let token = i / 8u;
            let q = i % 8u;
            var v = vec4<f32>(0.0);
            if (first_token + token < p.tokens) {
                v = x4((first_token + token) * p.k + s * 32u + q * 4u);
            }
            x_tile[q * GEMM_TOKENS + token] = TileQuad(v);
        }
        workgroupBarrier();
        for (var q = 0u; q < 8u; q++) {
            let w_at = q * GEMM_ROWS + row_lane;
            // Column i: the quad of row r + 16i; x · W gives the four rows' dot products.
            let w = TileMatrix(w_tile[w_at], w_tile[w_at + 16u], w_tile[w_at + 32u], w_tile[w_at + 48u]);
            for (var j = 0u; j < 8u; j++) {
                acc[j] += vec4<f32>(x_tile[q * GEMM_TOKENS + token_lane + 4u * j] * w);
            }
        }
        workgroupBarrier();
    }
    for (var j = 0u; j < 8u; j++) {
        let token = first_token + token_lane + 4u * j;
        for (var i = 0u; i < 4u; i++) {
            let row = first_row + row_lane + 16u * i;
            if (token < p.tokens && row < p.n_rows) {
                store(token * p.out_cols + p.out_offset + row, acc[j][i]);
            }
        }
    }
}
