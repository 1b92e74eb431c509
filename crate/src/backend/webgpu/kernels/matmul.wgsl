// y = x · Wᵀ with W in its GGUF encoding (decoded by quant.wgsl; TYPE is replaced by the type's
// name when the pipeline is built). W may be one chunk of a larger matrix (rows split across
// buffers to respect the adapter's binding limit): its rows land at output column `out_offset`.
//
// One workgroup: ROWS weight rows for one token; 64 threads stride over the row's 32-value
// sub-blocks, each sub-block of x read once for all ROWS rows, then a tree reduction.

struct Params {
    k: u32,           // input features (row length)
    n_rows: u32,      // rows in this chunk
    row_bytes: u32,   // bytes per encoded row
    out_cols: u32,    // output row length (all chunks)
    out_offset: u32,  // first output column of this chunk
    tokens: u32,
}

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const ROWS: u32 = 4u;
const THREADS: u32 = 64u;
var<workgroup> partial: array<f32, 256>; // ROWS × THREADS

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let first_row = wg.x * ROWS;
    let token = wg.y;
    let subs = p.k / 32u;
    let xo = token * p.k;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var s = tid; s < subs; s += THREADS) {
        for (var r = 0u; r < ROWS; r++) {
            let row = first_row + r;
            if (row < p.n_rows) {
                acc[r] += dot32_TYPE(row * p.row_bytes, s, xo + s * 32u);
            }
        }
    }
    for (var r = 0u; r < ROWS; r++) {
        partial[r * THREADS + tid] = acc[r];
    }
    workgroupBarrier();
    for (var stride = THREADS / 2u; stride > 0u; stride /= 2u) {
        if (tid < stride) {
            for (var r = 0u; r < ROWS; r++) {
                partial[r * THREADS + tid] += partial[r * THREADS + tid + stride];
            }
        }
        workgroupBarrier();
    }
    if (tid < ROWS) {
        let row = first_row + tid;
        if (row < p.n_rows) {
            y[token * p.out_cols + p.out_offset + row] = partial[tid * THREADS];
        }
    }
}
