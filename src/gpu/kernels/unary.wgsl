// Elementwise activations.

struct Params {
    numel: u32,
    row_pitch: u32,
    _pad0: u32,
    _pad1: u32,
}

override WG_X: u32 = 256u;
override WG_Y: u32 = 1u;
override OP: u32 = 0u;  // 0 gelu (erf), 1 gelu (tanh), 2 quick_gelu, 3 silu

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// erf by Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7), odd-extended.
fn erf(v: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * abs(v));
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let r = 1.0 - poly * exp(-v * v);
    return select(r, -r, v < 0.0);
}

fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

@compute @workgroup_size(WG_X, WG_Y)
fn unary(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.row_pitch;
    if (i >= p.numel) {
        return;
    }
    let v = x[i];
    var r: f32;
    if (OP == 0u) {
        r = 0.5 * v * (1.0 + erf(v * 0.70710678118654752));
    } else if (OP == 1u) {
        // tanh saturates long before |u| = 15; clamping keeps exp-based tanh finite everywhere
        let u = clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0);
        r = 0.5 * v * (1.0 + tanh(u));
    } else if (OP == 2u) {
        r = v * sigmoid(1.702 * v);
    } else {
        r = v * sigmoid(v);
    }
    out[i] = r;
}
