// Rotary position embedding on interleaved pairs (x[2i], x[2i+1]) of every head, as GGUF `llama`
// stores Q and K. `table` holds (cos, sin) per token and pair: [rows][head_dim / 2][2].

struct Params {
    heads: u32,
    head_dim: u32,
    rows: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half_dim = p.head_dim / 2u;
    let pair = gid.x;              // over heads × half_dim
    let row = gid.y;
    if (pair >= p.heads * half_dim || row >= p.rows) {
        return;
    }
    let i = pair % half_dim;
    let at = row * p.heads * p.head_dim + 2u * pair;
    let cs = vec2<f32>(table[2u * (row * half_dim + i)], table[2u * (row * half_dim + i) + 1u]);
    let a = x[at];
    let b = x[at + 1u];
    y[at] = a * cs.x - b * cs.y;
    y[at + 1u] = a * cs.y + b * cs.x;
}
