// Activations quantized for the decode matmul's integer dot products (matmul.wgsl `Q8X`): x in
// 32-value blocks of signed bytes with one f32 scale each, the rule of GGUF's Q8_0 and of the CPU
// backend's activations: d = max |x| / 127, q = round(x / d). Block b takes three quads of `xq`:
// 3b and 3b + 1 hold its 32 bytes (values 4i .. 4i + 4 in word i, the first value in the low
// byte), 3b + 2 holds (d, d · Σ q) as f32 bits (the block's sum, for weight types with an offset
// or minimum), then two zero words. One invocation per block: it reads its 32 values once.

struct Params {
    blocks: u32, // rows · (row length / 32)
}

@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> xq: array<vec4<u32>>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let block = (wg.x + wg.y * groups.x) * 64u + tid;
    if (block >= p.blocks) {
        return;
    }
    var v: array<vec4<f32>, 8>;
    var amax = vec4<f32>(0.0);
    for (var i = 0u; i < 8u; i++) {
        v[i] = x[block * 8u + i];
        amax = max(amax, abs(v[i]));
    }
    let d = max(max(amax.x, amax.y), max(amax.z, amax.w)) / 127.0;
    let inverse = select(0.0, 1.0 / d, d > 0.0);
    var words: array<u32, 8>;
    var sum = vec4<i32>(0);
    for (var i = 0u; i < 8u; i++) {
        let q = vec4<i32>(clamp(round(v[i] * inverse), vec4<f32>(-127.0), vec4<f32>(127.0)));
        sum += q;
        words[i] = pack4xI8(q);
    }
    let total = sum.x + sum.y + sum.z + sum.w;
    xq[block * 3u] = vec4<u32>(words[0], words[1], words[2], words[3]);
    xq[block * 3u + 1u] = vec4<u32>(words[4], words[5], words[6], words[7]);
    xq[block * 3u + 2u] = vec4<u32>(bitcast<u32>(d), bitcast<u32>(d * f32(total)), 0u, 0u);
}
