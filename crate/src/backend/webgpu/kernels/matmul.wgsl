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
// implementations such as lavapipe and SwiftShader, where MULTI_ROW takes over. Row groups past
// the adapter's per-dimension dispatch limit continue in z.
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
//   MULTI_ROW       THREADS_PER_ROW is 1 with f32 products (CPU implementations): `main` takes
//                   four rows per invocation (below); prefill runs it token by token.

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
// CPU implementations (THREADS_PER_ROW 1): each invocation takes 4 neighbouring rows, and reads
// and prepares each quad of x once for all four (quant.wgsl's raw_T: integers in place, x scaled
// by POSITION). There a workgroup's invocations run as SIMD lanes, each load at a runtime offset
// is a gather, one lane at a time, and the code is spilled more than optimized: what counts is
// operations per weight. 16 invocations make the usual 64 rows per workgroup. (8 rows per
// invocation took SwiftShader minutes and gigabytes to compile.)
fn sub_sum(h: Sub, lo: vec4<f32>, hi: vec4<f32>, xs: vec2<f32>) -> f32 {
    let ones = vec4<f32>(1.0);
    return h.lo * dot(lo, ones) + h.hi * dot(hi, ones) + h.bias_lo * xs.x + h.bias_hi * xs.y;
}

@compute @workgroup_size(16)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let first = ((wg.x + wg.z * groups.x) * 16u + tid) * 4u;
    if (first >= p.n_rows) {
        return;
    }
    // Rows past the end repeat the last one; only real rows are stored.
    let last = p.n_rows - 1u;
    let r0 = first * p.row_bytes;
    let r1 = min(first + 1u, last) * p.row_bytes;
    let r2 = min(first + 2u, last) * p.row_bytes;
    let r3 = min(first + 3u, last) * p.row_bytes;
    let token = wg.y;
    let subs = p.k / 32u;
    var acc = vec4<f32>(0.0); // rows first .. first + 4
    for (var s = 0u; s < subs; s++) {
        let h0 = sub_TYPE(r0, s);
        let h1 = sub_TYPE(r1, s);
        let h2 = sub_TYPE(r2, s);
        let h3 = sub_TYPE(r3, s);
        let xb = token * p.k + s * 32u;
        var xs = vec4<f32>(0.0); // Σ x over the low and the high half, by lane
        var xt = vec4<f32>(0.0);
        var lo0 = vec4<f32>(0.0);
        var hi0 = vec4<f32>(0.0);
        var lo1 = vec4<f32>(0.0);
        var hi1 = vec4<f32>(0.0);
        var lo2 = vec4<f32>(0.0);
        var hi2 = vec4<f32>(0.0);
        var lo3 = vec4<f32>(0.0);
        var hi3 = vec4<f32>(0.0);
        for (var k = 0u; k < 4u; k++) {
            let xl = x4(xb + 4u * k);
            let xh = x4(xb + 16u + 4u * k);
            xs += xl;
            xt += xh;
            let pl = xl * POSITION;
            let ph = xh * POSITION;
            let q0 = raw_TYPE(h0, k);
            lo0 += q0.lo * pl;
            hi0 += q0.hi * ph;
            let q1 = raw_TYPE(h1, k);
            lo1 += q1.lo * pl;
            hi1 += q1.hi * ph;
            let q2 = raw_TYPE(h2, k);
            lo2 += q2.lo * pl;
            hi2 += q2.hi * ph;
            let q3 = raw_TYPE(h3, k);
            lo3 += q3.lo * pl;
            hi3 += q3.hi * ph;
        }
        let ones = vec4<f32>(1.0);
        let sums = vec2<f32>(dot(xs, ones), dot(xt, ones));
        acc += vec4<f32>(sub_sum(h0, lo0, hi0, sums), sub_sum(h1, lo1, hi1, sums),
            sub_sum(h2, lo2, hi2, sums), sub_sum(h3, lo3, hi3, sums));
    }
    let out = token * p.out_cols + p.out_offset + first;
    store(out, acc.x);
    if (first + 1u <= last) {
        store(out + 1u, acc.y);
    }
    if (first + 2u <= last) {
        store(out + 2u, acc.z);
    }
    if (first + 3u <= last) {
        store(out + 3u, acc.w);
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
// #if F16
            acc += dot32h(decode32h_TYPE(row_offset, s), xo + s * 32u, BIASED_TYPE);
// #else
            acc += dot32_TYPE(row_offset, s, xo + s * 32u);
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

// Prefill: TOKENS tokens per workgroup, each weight sub-block decoded once for all of them.
const TOKENS: u32 = 8u;
// #if REDUCE_SHARED
var<workgroup> partial_tokens: array<f32, 512>; // 64 threads × TOKENS
// #endif

@compute @workgroup_size(64)
fn tiled(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let row = (wg.x + wg.z * groups.x) * ROWS + tid / THREADS_PER_ROW;
    let lane = tid % THREADS_PER_ROW;
    let first_token = wg.y * TOKENS;
    let tokens = min(TOKENS, p.tokens - first_token);
    let subs = p.k / 32u;
    var acc: array<f32, 8>;
    if (row < p.n_rows) {
        let row_offset = row * p.row_bytes;
        for (var s = lane; s < subs; s += THREADS_PER_ROW) {
// #if F16
            let wv = decode32h_TYPE(row_offset, s);
            for (var t = 0u; t < tokens; t++) {
                acc[t] += dot32h(wv, (first_token + t) * p.k + s * 32u, BIASED_TYPE);
            }
// #else
            let wv = decode32_TYPE(row_offset, s);
            for (var t = 0u; t < tokens; t++) {
                acc[t] += dot32(wv, (first_token + t) * p.k + s * 32u);
            }
// #endif
        }
    }
// #if REDUCE_SHARED
    for (var t = 0u; t < TOKENS; t++) {
        partial_tokens[tid * TOKENS + t] = acc[t];
    }
    workgroupBarrier();
    if (lane == 0u && row < p.n_rows) {
        for (var t = 0u; t < tokens; t++) {
            var sum = 0.0;
            for (var i = 0u; i < THREADS_PER_ROW; i++) {
                sum += partial_tokens[(tid + i) * TOKENS + t];
            }
            store((first_token + t) * p.out_cols + p.out_offset + row, sum);
        }
    }
// #else
// #if REDUCE_SUBGROUP
    for (var t = 0u; t < tokens; t++) {
        acc[t] = row_sum(acc[t]);
    }
// #endif
    if (lane == 0u && row < p.n_rows) {
        for (var t = 0u; t < tokens; t++) {
            store((first_token + t) * p.out_cols + p.out_offset + row, acc[t]);
        }
    }
// #endif
}
