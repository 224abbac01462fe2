// LayerNorm and RMSNorm over the last dimension, one workgroup per row.
// LayerNorm takes the mean first and then Σ (x - mean)², which stays accurate when |mean| ≫ std.

struct Params {
    rows: u32,
    cols: u32,
    groups_x: u32,
    _pad: u32,
    eps: f32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

override WG_X: u32 = 256u;
override WG_Y: u32 = 1u;
override RMS: bool = false;      // RMSNorm: no mean, no bias
override HAS_BIAS: bool = true;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<f32, 256>;

fn reduce_sum(t: u32, v: f32) -> f32 {
    red[t] = v;
    workgroupBarrier();
    for (var s = WG_X / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            red[t] += red[t + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG_X)
fn layer_norm(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.x + wid.y * p.groups_x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    let t = lid.x;
    let n = f32(p.cols);

    var mean = 0.0;
    if (!RMS) {
        var s = 0.0;
        for (var i = t; i < p.cols; i += WG_X) {
            s += x[base + i];
        }
        mean = reduce_sum(t, s) / n;
    }
    var sq = 0.0;
    for (var i = t; i < p.cols; i += WG_X) {
        let d = x[base + i] - mean;
        sq += d * d;
    }
    let rstd = inverseSqrt(reduce_sum(t, sq) / n + p.eps);

    for (var i = t; i < p.cols; i += WG_X) {
        var v = (x[base + i] - mean) * rstd * weight[i];
        if (HAS_BIAS) {
            v += bias[i];
        }
        out[base + i] = v;
    }
}

// ---- layer_norm_rows: one invocation per row (row = gid.x + wid.y · p.groups_x), without
// workgroup memory or barriers, for software adapters (see GpuOptions::software): a prefill's
// LayerNorm over a few hundred rows cost 8 barriers per row there. Same two passes. ----

@compute @workgroup_size(WG_X)
fn layer_norm_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = gid.x + wid.y * p.groups_x;
    if (gid.x >= p.groups_x || row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    let n = f32(p.cols);
    var mean = 0.0;
    if (!RMS) {
        // summed as offsets from the first value: a long sequential f32 sum of values with
        // |mean| ≫ std would lose the digits that matter (the tree reduction above does not)
        let x0 = x[base];
        var s = 0.0;
        for (var i = 0u; i < p.cols; i++) {
            s += x[base + i] - x0;
        }
        mean = x0 + s / n;
    }
    var sq = 0.0;
    for (var i = 0u; i < p.cols; i++) {
        let d = x[base + i] - mean;
        sq += d * d;
    }
    let rstd = inverseSqrt(sq / n + p.eps);
    for (var i = 0u; i < p.cols; i++) {
        var v = (x[base + i] - mean) * rstd * weight[i];
        if (HAS_BIAS) {
            v += bias[i];
        }
        out[base + i] = v;
    }
}
