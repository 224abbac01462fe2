// Patches of a [B, C, H, W] image as rows of a [B·Hp·Wp, C·P·P] matrix (stride = kernel = P),
// each row in (c, ky, kx) order to match a conv weight [O, C, P, P] flattened to [O, C·P·P].

struct Params {
    channels: u32,
    height: u32,
    width: u32,
    patch_size: u32,
    numel: u32,
    row_pitch: u32,
    _pad0: u32,
    _pad1: u32,
}

override WG_X: u32 = 256u;
override WG_Y: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> cols: array<f32>;

@compute @workgroup_size(WG_X, WG_Y)
fn im2col(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.row_pitch;
    if (i >= p.numel) {
        return;
    }
    let pp = p.patch_size * p.patch_size;
    let row_len = p.channels * pp;
    let hp = p.height / p.patch_size;
    let wp = p.width / p.patch_size;
    let row = i / row_len;
    let col = i % row_len;
    let b = row / (hp * wp);
    let pi = row % (hp * wp);
    let c = col / pp;
    let r = col % pp;
    let y = (pi / wp) * p.patch_size + r / p.patch_size;
    let xx = (pi % wp) * p.patch_size + r % p.patch_size;
    cols[i] = x[((b * p.channels + c) * p.height + y) * p.width + xx];
}
