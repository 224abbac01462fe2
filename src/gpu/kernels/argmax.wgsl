// Index of the maximum of each row (the lowest index among equal maxima), one workgroup per row.

struct Params {
    rows: u32,
    cols: u32,
    groups_x: u32,
    _pad: u32,
}

override WG_X: u32 = 256u;
override WG_Y: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;

@compute @workgroup_size(WG_X)
fn argmax(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.x + wid.y * p.groups_x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    let t = lid.x;
    var bv = -3.402823e38;
    var bi = 0xffffffffu;
    for (var i = t; i < p.cols; i += WG_X) {
        let v = x[base + i];
        if (v > bv || bi == 0xffffffffu) {   // strictly greater keeps the first index per lane
            bv = v;
            bi = i;
        }
    }
    best_v[t] = bv;
    best_i[t] = bi;
    workgroupBarrier();
    for (var s = WG_X / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            let ov = best_v[t + s];
            let oi = best_i[t + s];
            let cv = best_v[t];
            let ci = best_i[t];
            if (oi != 0xffffffffu && (ci == 0xffffffffu || ov > cv || (ov == cv && oi < ci))) {
                best_v[t] = ov;
                best_i[t] = oi;
            }
        }
        workgroupBarrier();
    }
    if (t == 0u) {
        out[row] = best_i[0];
    }
}
