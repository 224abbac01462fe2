// Softmax over the last dimension, one workgroup per row: max, then Σ exp(x - max), then write.

struct Params {
    rows: u32,
    cols: u32,
    groups_x: u32,   // workgroups along x (rows beyond 65535 continue along y)
    _pad: u32,
}

override WG_X: u32 = 256u;
override WG_Y: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(WG_X)
fn softmax(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.x + wid.y * p.groups_x;
    if (row >= p.rows) {
        return;  // uniform across the workgroup
    }
    let base = row * p.cols;
    let t = lid.x;

    var m = -3.402823e38;
    for (var i = t; i < p.cols; i += WG_X) {
        m = max(m, x[base + i]);
    }
    red[t] = m;
    workgroupBarrier();
    for (var s = WG_X / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            red[t] = max(red[t], red[t + s]);
        }
        workgroupBarrier();
    }
    let row_max = red[0];
    workgroupBarrier();

    var sum = 0.0;
    for (var i = t; i < p.cols; i += WG_X) {
        sum += exp(x[base + i] - row_max);
    }
    red[t] = sum;
    workgroupBarrier();
    for (var s = WG_X / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            red[t] += red[t + s];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / red[0];

    for (var i = t; i < p.cols; i += WG_X) {
        out[base + i] = exp(x[base + i] - row_max) * inv;
    }
}
