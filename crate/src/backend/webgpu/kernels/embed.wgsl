// Embedding lookup: y[t] = row tokens[t] of the table, decoded from its GGUF encoding (quant.wgsl;
// TYPE is replaced when the pipeline is built). The table may be one chunk of rows
// [first_row, first_row + n_rows): tokens outside it are left to the other chunks' dispatches.

struct Params {
    cols: u32,
    row_bytes: u32,
    first_row: u32,
    n_rows: u32,
    tokens: u32,
}

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;
// quant.wgsl's dot32 names `x`; the lookup never calls it.
@group(0) @binding(4) var<storage, read> x: array<vec4<f32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let t = gid.y;
    if (j >= p.cols || t >= p.tokens) {
        return;
    }
    let id = ids[t];
    if (id < p.first_row || id >= p.first_row + p.n_rows) {
        return;
    }
    let block = decode32_TYPE((id - p.first_row) * p.row_bytes, j / 32u);
    y[t * p.cols + j] = block[(j % 32u) / 4u][j % 4u];
}
