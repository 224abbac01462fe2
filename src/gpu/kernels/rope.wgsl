// Rotary position embedding of x [B, H, T, D] with cos, sin [T, D/2].
//   halves (HF rotate_half): out[j] = x[j]·cos - x[j+D/2]·sin,  out[j+D/2] = x[j+D/2]·cos + x[j]·sin
//   interleaved (GPT-J):     out[2i] = x[2i]·cos - x[2i+1]·sin, out[2i+1] = x[2i]·sin + x[2i+1]·cos

struct Params {
    seq: u32,
    head_dim: u32,
    numel: u32,
    row_pitch: u32,
}

override WG_X: u32 = 256u;
override WG_Y: u32 = 1u;
override INTERLEAVED: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG_X, WG_Y)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.row_pitch;
    if (i >= p.numel) {
        return;
    }
    let d = p.head_dim;
    let half = d / 2u;
    let j = i % d;
    let t = (i / d) % p.seq;
    let row = i - j;
    if (INTERLEAVED) {
        let f = t * half + j / 2u;
        let x0 = x[row + (j & ~1u)];
        let x1 = x[row + (j | 1u)];
        if ((j & 1u) == 0u) {
            out[i] = x0 * cos_t[f] - x1 * sin_t[f];
        } else {
            out[i] = x0 * sin_t[f] + x1 * cos_t[f];
        }
    } else {
        if (j < half) {
            let f = t * half + j;
            out[i] = x[i] * cos_t[f] - x[i + half] * sin_t[f];
        } else {
            let f = t * half + j - half;
            out[i] = x[i] * cos_t[f] + x[i - half] * sin_t[f];
        }
    }
}
