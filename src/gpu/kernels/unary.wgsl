// Elementwise activations (activation.wgsl, prepended by the host).

struct Params {
    numel: u32,
    row_pitch: u32,
    _pad0: u32,
    _pad1: u32,
}

override WG_X: u32 = 256u;
override WG_Y: u32 = 1u;
override OP: u32 = 0u;  // activation.wgsl's op

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG_X, WG_Y)
fn unary(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.row_pitch;
    if (i >= p.numel) {
        return;
    }
    out[i] = activate(x[i], OP);
}
