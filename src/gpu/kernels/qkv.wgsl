// The fused q/k/v projection's output [B, T, 3·H·Dh] split into heads in one pass: q into its own
// [B, H, T, Dh] tensor, k and v straight into the KV cache [B, H, capacity, Dh] at position
// `pos` (what split_heads + KvCache::append did with five dispatches).

struct Params {
    batch: u32,
    tokens: u32,
    heads: u32,
    head_dim: u32,
    capacity: u32,
    pos: u32,
    numel: u32,     // B·T·3·H·Dh
    row_pitch: u32,
}

override WG_X: u32 = 256u;
override WG_Y: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> q: array<f32>;
@group(0) @binding(3) var<storage, read_write> kc: array<f32>;
@group(0) @binding(4) var<storage, read_write> vc: array<f32>;

@compute @workgroup_size(WG_X, WG_Y)
fn split_qkv(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.row_pitch;
    if (i >= p.numel) {
        return;
    }
    // i = (((b·T + t)·3 + s)·H + h)·Dh + d
    let d = i % p.head_dim;
    var rest = i / p.head_dim;
    let h = rest % p.heads;
    rest = rest / p.heads;
    let s = rest % 3u;
    rest = rest / 3u;
    let t = rest % p.tokens;
    let b = rest / p.tokens;
    let v = qkv[i];
    let bh = b * p.heads + h;
    if (s == 0u) {
        q[(bh * p.tokens + t) * p.head_dim + d] = v;
    } else if (s == 1u) {
        kc[(bh * p.capacity + p.pos + t) * p.head_dim + d] = v;
    } else {
        vc[(bh * p.capacity + p.pos + t) * p.head_dim + d] = v;
    }
}
