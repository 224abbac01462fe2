// Fused multi-head attention: out = softmax(q·kᵀ·scale + mask) · v, one workgroup per
// (query row, head, batch). Keys are visited in chunks of WG_X with an online softmax (running
// max m, running sum l, rescaled accumulator), so no Tq×Tk score matrix is ever stored; the same
// kernel serves prefill (many queries) and the decode step (one query against the KV cache).
//
// q, out: [B, H, Tq, D]; k, v: [B or 1, Hkv, cap, D] of which the first kv_len rows are valid;
// head h reads kv head h / (H / Hkv) (grouped-query attention). D ≤ 4·WG_X.

struct Params {
    heads: u32,
    kv_heads: u32,
    tq: u32,
    kv_len: u32,
    head_dim: u32,
    cap: u32,
    causal: u32,
    has_mask: u32,
    mask_b_stride: u32,   // elements; 0 when the mask is shared by the batch
    mask_cols: u32,       // row length of the mask (≥ kv_len)
    scale: f32,
    kv_shared: u32,       // 1: k, v have batch 1, shared by every batch row of q
}

override WG_X: u32 = 64u;
override WG_Y: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> mask: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const MAX_D: u32 = 256u;
// Scores are clamped to this before exp: a key masked with -inf then counts like one masked
// with a large finite value (as Hugging Face does with finfo.min), and no inf - inf = NaN appears.
const NEG: f32 = -3.0e38;

var<workgroup> q_sh: array<f32, 256>;
var<workgroup> p_sh: array<f32, 64>;
var<workgroup> red: array<f32, 64>;

fn reduce(t: u32, x: f32, is_max: bool) -> f32 {
    red[t] = x;
    workgroupBarrier();
    for (var s = WG_X / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            if (is_max) {
                red[t] = max(red[t], red[t + s]);
            } else {
                red[t] += red[t + s];
            }
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG_X)
fn attention(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = lid.x;
    let i = wid.x;        // query row
    let h = wid.y;
    let b = wid.z;
    let d = p.head_dim;
    let hk = h / (p.heads / p.kv_heads);
    let q_off = ((b * p.heads + h) * p.tq + i) * d;
    let kv_b = select(b, 0u, p.kv_shared == 1u);
    let kv_off = (kv_b * p.kv_heads + hk) * p.cap * d;
    let mask_off = b * p.mask_b_stride + i * p.mask_cols;

    for (var j = t; j < d; j += WG_X) {
        q_sh[j] = q[q_off + j] * p.scale;
    }
    workgroupBarrier();

    // causal: query i is position kv_len - tq + i and sees keys up to it
    var n_keys = p.kv_len;
    if (p.causal != 0u) {
        n_keys = p.kv_len - p.tq + i + 1u;
    }

    var m = NEG;
    var l = 0.0;
    var acc = vec4<f32>(0.0);   // output dims t, t + WG_X, t + 2·WG_X, t + 3·WG_X

    for (var c = 0u; c < n_keys; c += WG_X) {
        let key = c + t;
        var s = NEG;
        if (key < n_keys) {
            var dotv = 0.0;
            let kr = kv_off + key * d;
            for (var j = 0u; j < d; j++) {
                dotv = fma(q_sh[j], k[kr + j], dotv);
            }
            if (p.has_mask != 0u) {
                dotv += mask[mask_off + key];
            }
            s = max(dotv, NEG);
        }
        let m_new = max(m, reduce(t, s, true));
        var e = 0.0;
        if (key < n_keys) {
            e = exp(s - m_new);
        }
        p_sh[t] = e;
        let chunk_sum = reduce(t, e, false);   // its barriers also publish p_sh
        let alpha = exp(m - m_new);
        l = l * alpha + chunk_sum;
        m = m_new;

        let count = min(WG_X, n_keys - c);
        for (var r = 0u; r < 4u; r++) {
            let j = t + r * WG_X;
            if (j < d) {
                var a = acc[r] * alpha;
                for (var kk = 0u; kk < count; kk++) {
                    a = fma(p_sh[kk], v[kv_off + (c + kk) * d + j], a);
                }
                acc[r] = a;
            }
        }
        workgroupBarrier();
    }

    let inv = select(0.0, 1.0 / l, l > 0.0);
    for (var r = 0u; r < 4u; r++) {
        let j = t + r * WG_X;
        if (j < d) {
            out[q_off + j] = acc[r] * inv;
        }
    }
}

// ---- attention_rows: one invocation per (query row gid.x, head wid.y, batch wid.z), without
// workgroup memory or barriers, for software adapters (SwiftShader, lavapipe; see
// GpuOptions::software): the keys one at a time with the same online softmax, the query and the
// output accumulator held by the invocation, 4 dims at a time when head_dim is a multiple of 4.
// llvmpipe (lavapipe) ends every loop of an invocation once 65535 iterations were taken in all, so
// the host only picks this kernel while kv_len · (iterations per key) stays below that
// (`attention.rs`). ----

fn k4(i: u32) -> vec4<f32> {
    return vec4<f32>(k[i], k[i + 1u], k[i + 2u], k[i + 3u]);
}

fn v4(i: u32) -> vec4<f32> {
    return vec4<f32>(v[i], v[i + 1u], v[i + 2u], v[i + 3u]);
}

// One key of the online softmax: the score (plus its mask entry) updates the running max m and
// sum l; returns (alpha, e): the accumulator becomes acc · alpha + e · v[key].
fn online_step(score: f32, mask_i: u32, m: ptr<function, f32>, l: ptr<function, f32>) -> vec2<f32> {
    var s = score;
    if (p.has_mask != 0u) {
        s += mask[mask_i];
    }
    s = max(s, NEG);
    let m_new = max(*m, s);
    let alpha = exp(*m - m_new);
    let e = exp(s - m_new);
    *m = m_new;
    *l = *l * alpha + e;
    return vec2<f32>(alpha, e);
}

@compute @workgroup_size(WG_X)
fn attention_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.tq) {
        return;
    }
    let h = wid.y;
    let b = wid.z;
    let d = p.head_dim;
    let hk = h / (p.heads / p.kv_heads);
    let q_off = ((b * p.heads + h) * p.tq + i) * d;
    let kv_b = select(b, 0u, p.kv_shared == 1u);
    let kv_off = (kv_b * p.kv_heads + hk) * p.cap * d;
    let mask_off = b * p.mask_b_stride + i * p.mask_cols;
    var n_keys = p.kv_len;
    if (p.causal != 0u) {
        n_keys = p.kv_len - p.tq + i + 1u;
    }
    var m = NEG;
    var l = 0.0;

    if (d % 4u == 0u) {
        let d4 = d / 4u;
        var qv: array<vec4<f32>, 64>;
        var acc: array<vec4<f32>, 64>;
        for (var j = 0u; j < d4; j++) {
            qv[j] = vec4<f32>(q[q_off + 4u * j], q[q_off + 4u * j + 1u], q[q_off + 4u * j + 2u], q[q_off + 4u * j + 3u]) * p.scale;
            acc[j] = vec4<f32>(0.0);
        }
        for (var key = 0u; key < n_keys; key++) {
            let kr = kv_off + key * d;
            var s = 0.0;
            for (var j = 0u; j < d4; j++) {
                s += dot(qv[j], k4(kr + 4u * j));
            }
            let w = online_step(s, mask_off + key, &m, &l);
            for (var j = 0u; j < d4; j++) {
                acc[j] = fma(vec4<f32>(w.y), v4(kr + 4u * j), acc[j] * w.x);
            }
        }
        let inv = select(0.0, 1.0 / l, l > 0.0);
        for (var j = 0u; j < d4; j++) {
            let o = acc[j] * inv;
            out[q_off + 4u * j] = o.x;
            out[q_off + 4u * j + 1u] = o.y;
            out[q_off + 4u * j + 2u] = o.z;
            out[q_off + 4u * j + 3u] = o.w;
        }
        return;
    }

    var qs: array<f32, MAX_D>;
    var accs: array<f32, MAX_D>;
    for (var j = 0u; j < d; j++) {
        qs[j] = q[q_off + j] * p.scale;
        accs[j] = 0.0;
    }
    for (var key = 0u; key < n_keys; key++) {
        let kr = kv_off + key * d;
        var s = 0.0;
        for (var j = 0u; j < d; j++) {
            s = fma(qs[j], k[kr + j], s);
        }
        let w = online_step(s, mask_off + key, &m, &l);
        for (var j = 0u; j < d; j++) {
            accs[j] = fma(w.y, v[kr + j], accs[j] * w.x);
        }
    }
    let inv = select(0.0, 1.0 / l, l > 0.0);
    for (var j = 0u; j < d; j++) {
        out[q_off + j] = accs[j] * inv;
    }
}
