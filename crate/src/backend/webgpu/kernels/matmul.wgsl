// y = x · Wᵀ with W in its GGUF encoding (decoded by quant.wgsl; TYPE is replaced by the type's
// name when the pipeline is built). W may be one chunk of a larger matrix (rows split across
// buffers to respect the adapter's binding limit): its rows land at output column `out_offset`.
//
// One workgroup of 64 threads: 64 / THREADS_PER_ROW weight rows for one token; the threads of a row
// stride over its 32-value sub-blocks, then add up. THREADS_PER_ROW is set per adapter when the
// pipeline is built: 8 on GPUs (neighbouring threads read neighbouring blocks), 1 on CPU
// implementations such as lavapipe and SwiftShader (each SIMD lane takes a row and x is read once
// for all lanes).

struct Params {
    k: u32,           // input features (row length)
    n_rows: u32,      // rows in this chunk
    row_bytes: u32,   // bytes per encoded row
    out_cols: u32,    // output row length (all chunks)
    out_offset: u32,  // first output column of this chunk
    tokens: u32,
}

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

override THREADS_PER_ROW: u32 = 8u;
override ROWS: u32 = 64u / THREADS_PER_ROW;
var<workgroup> partial: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let row = wg.x * ROWS + tid / THREADS_PER_ROW;
    let lane = tid % THREADS_PER_ROW;
    let token = wg.y;
    let subs = p.k / 32u;
    let xo = token * p.k;
    var acc = 0.0;
    if (row < p.n_rows) {
        let row_offset = row * p.row_bytes;
        for (var s = lane; s < subs; s += THREADS_PER_ROW) {
            acc += dot32(decode32_TYPE(row_offset, s), xo + s * 32u);
        }
    }
    partial[tid] = acc;
    workgroupBarrier();
    if (lane == 0u && row < p.n_rows) {
        var sum = 0.0;
        for (var i = 0u; i < THREADS_PER_ROW; i++) {
            sum += partial[tid + i];
        }
        y[token * p.out_cols + p.out_offset + row] = sum;
    }
}

// Prefill: TOKENS tokens per workgroup, each weight sub-block decoded once for all of them.
const TOKENS: u32 = 8u;
var<workgroup> partial_tokens: array<f32, 512>; // 64 threads × TOKENS

@compute @workgroup_size(64)
fn tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let row = wg.x * ROWS + tid / THREADS_PER_ROW;
    let lane = tid % THREADS_PER_ROW;
    let first_token = wg.y * TOKENS;
    let tokens = min(TOKENS, p.tokens - first_token);
    let subs = p.k / 32u;
    var acc: array<f32, 8>;
    if (row < p.n_rows) {
        let row_offset = row * p.row_bytes;
        for (var s = lane; s < subs; s += THREADS_PER_ROW) {
            let wv = decode32_TYPE(row_offset, s);
            for (var t = 0u; t < tokens; t++) {
                acc[t] += dot32(wv, (first_token + t) * p.k + s * 32u);
            }
        }
    }
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
            y[(first_token + t) * p.out_cols + p.out_offset + row] = sum;
        }
    }
}
