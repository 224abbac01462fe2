// Elementwise a ∘ b with numpy broadcasting over up to 4 dims (a broadcast dim has stride 0).

struct Params {
    shape: vec4<u32>,      // output shape, padded in front with 1s
    a_strides: vec4<u32>,
    b_strides: vec4<u32>,
    numel: u32,
    row_pitch: u32,        // invocations per row of workgroups (2-D dispatch of long tensors)
    _pad0: u32,
    _pad1: u32,
}

override WG_X: u32 = 256u;
override WG_Y: u32 = 1u;
override OP: u32 = 0u;  // 0 add, 1 mul

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG_X, WG_Y)
fn binary(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.row_pitch;
    if (i >= p.numel) {
        return;
    }
    var rest = i;
    var ia = 0u;
    var ib = 0u;
    for (var d = 3i; d >= 0i; d--) {
        let c = rest % p.shape[d];
        rest = rest / p.shape[d];
        ia += c * p.a_strides[d];
        ib += c * p.b_strides[d];
    }
    let x = a[ia];
    let y = b[ib];
    if (OP == 0u) {
        out[i] = x + y;
    } else {
        out[i] = x * y;
    }
}
