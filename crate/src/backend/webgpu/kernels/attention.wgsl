// Causal attention of `rows` queries over the KV cache (keys and values already appended).
// One workgroup per (query row, head); keys in chunks of 64 with an online softmax, so any
// context length works in fixed workgroup memory. GQA: head h reads KV head h / (heads / kv_heads).
// A sliding window hides keys more than `window - 1` positions back (0 = no window).

struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    rows: u32,
    start_pos: u32,
    window: u32,
    scale: f32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k_cache: array<f32>;
@group(0) @binding(2) var<storage, read> v_cache: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

const CHUNK: u32 = 64u;
const MAX_HEAD_DIM: u32 = 256u;
var<workgroup> qv: array<f32, 256>;
var<workgroup> weights: array<f32, 64>;
var<workgroup> reduce: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let head = wg.x;
    let row = wg.y;
    let kv_head = head / (p.heads / p.kv_heads);
    let kv_stride = p.kv_heads * p.head_dim;
    let q_base = row * p.heads * p.head_dim + head * p.head_dim;
    for (var d = tid; d < p.head_dim; d += CHUNK) {
        qv[d] = q[q_base + d] * p.scale;
    }
    workgroupBarrier();

    let pos = p.start_pos + row;
    var first = 0u;
    if (p.window > 0u && pos + 1u > p.window) {
        first = pos + 1u - p.window;
    }
    var running_max = -3.4e38;
    var running_sum = 0.0;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0); // dims tid, tid + 64, ...
    for (var start = first; start <= pos; start += CHUNK) {
        let key = start + tid;
        var score = -3.4e38;
        if (key <= pos) {
            let k_base = key * kv_stride + kv_head * p.head_dim;
            score = 0.0;
            for (var d = 0u; d < p.head_dim; d++) {
                score += qv[d] * k_cache[k_base + d];
            }
        }
        reduce[tid] = score;
        workgroupBarrier();
        for (var stride = CHUNK / 2u; stride > 0u; stride /= 2u) {
            if (tid < stride) {
                reduce[tid] = max(reduce[tid], reduce[tid + stride]);
            }
            workgroupBarrier();
        }
        let new_max = max(running_max, reduce[0]);
        workgroupBarrier();
        var e = 0.0;
        if (key <= pos) {
            e = exp(score - new_max);
        }
        weights[tid] = e;
        reduce[tid] = e;
        workgroupBarrier();
        for (var stride = CHUNK / 2u; stride > 0u; stride /= 2u) {
            if (tid < stride) {
                reduce[tid] += reduce[tid + stride];
            }
            workgroupBarrier();
        }
        let rescale = exp(running_max - new_max);
        running_sum = running_sum * rescale + reduce[0];
        running_max = new_max;
        let count = min(CHUNK, pos + 1u - start);
        for (var i = 0u; i < 4u; i++) {
            let d = tid + i * CHUNK;
            if (d < p.head_dim) {
                var sum = acc[i] * rescale;
                for (var j = 0u; j < count; j++) {
                    sum += weights[j] * v_cache[(start + j) * kv_stride + kv_head * p.head_dim + d];
                }
                acc[i] = sum;
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let d = tid + i * CHUNK;
        if (d < p.head_dim) {
            y[q_base + d] = acc[i] / running_sum;
        }
    }
}
