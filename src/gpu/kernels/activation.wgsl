// Activations, shared by unary.wgsl and the fused epilogues of matmul.wgsl (the host prepends
// this file to both, so a fused activation computes exactly what the separate kernel does).
// op: 0 gelu (erf), 1 gelu (tanh), 2 quick_gelu, 3 silu

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

fn activate(v: f32, op: u32) -> f32 {
    if (op == 0u) {
        return 0.5 * v * (1.0 + erf(v * 0.70710678118654752));
    } else if (op == 1u) {
        // tanh saturates long before |u| = 15; clamping keeps exp-based tanh finite everywhere
        let u = clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0);
        return 0.5 * v * (1.0 + tanh(u));
    } else if (op == 2u) {
        return v * sigmoid(1.702 * v);
    }
    return v * sigmoid(v);
}
