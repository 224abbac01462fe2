// Strided copy over up to 4 dims: dst[dst_offset + Σ c·dst_strides] = src[src_offset + Σ c·src_strides]
// for every coordinate c of `shape`. Serves permute, narrow, cat and the in-place KV-cache write.
// Words are copied as bits, so f32 and u32 tensors both go through it.

struct Params {
    shape: vec4<u32>,
    src_strides: vec4<u32>,
    dst_strides: vec4<u32>,
    src_offset: u32,
    dst_offset: u32,
    numel: u32,
    row_pitch: u32,
}

override WG_X: u32 = 256u;
override WG_Y: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

@compute @workgroup_size(WG_X, WG_Y)
fn copy_strided(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.row_pitch;
    if (i >= p.numel) {
        return;
    }
    var rest = i;
    var s = p.src_offset;
    var d = p.dst_offset;
    for (var k = 3i; k >= 0i; k--) {
        let c = rest % p.shape[k];
        rest = rest / p.shape[k];
        s += c * p.src_strides[k];
        d += c * p.dst_strides[k];
    }
    dst[d] = src[s];
}
