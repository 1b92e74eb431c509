// Causal attention of `rows` queries over the KV cache (keys and values already appended).
// `main`: one workgroup per (query row, head); keys in chunks of 64 with an online softmax, so any
// context length works in fixed workgroup memory. GQA: head h reads KV head h / (heads / kv_heads).
// A sliding window hides keys more than `window - 1` positions back (0 = no window).
// Decode over a long context splits the keys instead (flash-decoding): `split_partial` runs one
// workgroup per (head, key range) and writes its running max, sum and unnormalized output;
// `split_combine` merges the ranges of each head.

struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    rows: u32,
    start_pos: u32,
    window: u32,
    scale: f32,
    keys_per_split: u32, // split_partial / split_combine only
    splits: u32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
// Keys four dimensions at a time (head_dim is a multiple of 4, checked at load): a quarter of the
// serial loads in each thread's dot product.
@group(0) @binding(1) var<storage, read> k_cache: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> v_cache: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;
// split_partial writes, split_combine reads: per (head, split): max, sum, then head_dim values.
@group(0) @binding(5) var<storage, read_write> partials: array<f32>;

const CHUNK: u32 = 64u;
const MAX_HEAD_DIM: u32 = 256u;
var<workgroup> qv: array<vec4<f32>, 64>; // MAX_HEAD_DIM / 4
var<workgroup> weights: array<f32, 64>;
var<workgroup> reduce: array<f32, 64>;

var<private> acc: array<f32, 4>; // dims tid, tid + 64, ...

// Attends query `row` of `head` to keys [first, last]: leaves the unnormalized output in `acc`
// and returns (running max, sum of weights). Called in uniform control flow (it has barriers).
fn attend(head: u32, row: u32, first: u32, last: u32, tid: u32) -> vec2<f32> {
    let kv_head = head / (p.heads / p.kv_heads);
    let kv_stride = p.kv_heads * p.head_dim;
    let q_base = row * p.heads * p.head_dim + head * p.head_dim;
    let quads = p.head_dim / 4u;
    for (var d = tid; d < quads; d += CHUNK) {
        let at = q_base + 4u * d;
        qv[d] = vec4<f32>(q[at], q[at + 1u], q[at + 2u], q[at + 3u]) * p.scale;
    }
    workgroupBarrier();
    var running_max = -3.4e38;
    var running_sum = 0.0;
    acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var start = first; start <= last; start += CHUNK) {
        let key = start + tid;
        var score = -3.4e38;
        if (key <= last) {
            let k_base = (key * kv_stride + kv_head * p.head_dim) / 4u;
            var dots = vec4<f32>(0.0);
            for (var d = 0u; d < quads; d++) {
                dots = fma(qv[d], k_cache[k_base + d], dots);
            }
            score = dots.x + dots.y + dots.z + dots.w;
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
        if (key <= last) {
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
        let count = min(CHUNK, last + 1u - start);
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
    return vec2<f32>(running_max, running_sum);
}

// The first key query position `pos` may see.
fn first_key(pos: u32) -> u32 {
    if (p.window > 0u && pos + 1u > p.window) {
        return pos + 1u - p.window;
    }
    return 0u;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let head = wg.x;
    let row = wg.y;
    let pos = p.start_pos + row;
    let stats = attend(head, row, first_key(pos), pos, tid);
    let q_base = row * p.heads * p.head_dim + head * p.head_dim;
    for (var i = 0u; i < 4u; i++) {
        let d = tid + i * CHUNK;
        if (d < p.head_dim) {
            y[q_base + d] = acc[i] / stats.y;
        }
    }
}

@compute @workgroup_size(64)
fn split_partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let head = wg.x;
    let split = wg.y;
    let pos = p.start_pos; // decode: one query row
    let first = first_key(pos) + split * p.keys_per_split;
    let base = (head * p.splits + split) * (p.head_dim + 2u);
    if (first > pos) {
        // An empty range (the last splits of a short window): weight 0 in the merge.
        if (tid == 0u) {
            partials[base] = -3.4e38;
            partials[base + 1u] = 0.0;
        }
        return;
    }
    let last = min(pos, first + p.keys_per_split - 1u);
    let stats = attend(head, 0u, first, last, tid);
    if (tid == 0u) {
        partials[base] = stats.x;
        partials[base + 1u] = stats.y;
    }
    for (var i = 0u; i < 4u; i++) {
        let d = tid + i * CHUNK;
        if (d < p.head_dim) {
            partials[base + 2u + d] = acc[i];
        }
    }
}

@compute @workgroup_size(64)
fn split_combine(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let head = wg.x;
    let stride = p.head_dim + 2u;
    var global_max = -3.4e38;
    for (var s = 0u; s < p.splits; s++) {
        global_max = max(global_max, partials[(head * p.splits + s) * stride]);
    }
    var total = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        let base = (head * p.splits + s) * stride;
        total += partials[base + 1u] * exp(partials[base] - global_max);
    }
    for (var d = tid; d < p.head_dim; d += CHUNK) {
        var sum = 0.0;
        for (var s = 0u; s < p.splits; s++) {
            let base = (head * p.splits + s) * stride;
            sum += partials[base + 2u + d] * exp(partials[base] - global_max);
        }
        y[head * p.head_dim + d] = sum / total;
    }
}
