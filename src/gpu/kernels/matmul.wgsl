// Matrix products against weights in any storage format, dequantized inside the kernel.
// (activation.wgsl is prepended by the host.)
//
//   matmul: C[b] = A[b] · B[b] (+ bias)   tiled GEMM, 64×64 outputs per workgroup (prefill)
//   gemv:   c    = a · Bᵀ (+ bias)        one input row per workgroup.z, 8 output rows per workgroup (decode)
//
// Both end in the same epilogue: v = acc (+ bias[n]); v = activate(v) when p.act > 0 (op act - 1);
// v += residual[m, n] when has_residual — a Linear, its activation and the residual add of a
// transformer block in one dispatch.
//
// A and C are f32. B is read as 32-bit words, decoded per WDTYPE (layouts: src/tensor/quant.rs):
//   0 f32, 1 f16 (two per word), 2 q8_0 (8 words of quants per 32-value block), 3 q4_0 (4 words).
// Quantized B is always a Linear weight [N, K] with K a multiple of 32; scales follow the quants
// at word p.scale_offset.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    has_bias: u32,
    a_batch_stride: u32,   // elements
    b_batch_stride: u32,   // elements (0: B shared by every batch)
    c_batch_stride: u32,   // elements
    scale_offset: u32,     // words
    has_residual: u32,
    // 0: none, else activation.wgsl's op act - 1. A uniform rather than an override constant:
    // one pipeline per kernel and weight format instead of one per activation too (pipelines
    // are compiled at first use, slowly on software adapters; the branch is uniform).
    act: u32,
    _pad1: u32,
    _pad2: u32,
}

override WG_X: u32 = 16u;
override WG_Y: u32 = 16u;
override WDTYPE: u32 = 0u;
override B_TRANS: bool = true;  // B is [N, K] (a Linear's weight) rather than [K, N]

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;
@group(0) @binding(5) var<storage, read> residual: array<f32>;

// The epilogue of output (row m of batch, column n), at index i of c.
fn epilogue(acc: f32, n: u32, i: u32) -> f32 {
    var v = acc;
    if (p.has_bias != 0u) {
        v += bias[n];
    }
    if (p.act > 0u) {
        v = activate(v, p.act - 1u);
    }
    if (p.has_residual != 0u) {
        v += residual[i];
    }
    return v;
}

// GEMM tile: BM×BN outputs, BK-deep slices; each of the 16×16 invocations owns TM×TN outputs.
const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 32u;   // = one quantization block
const TM: u32 = 4u;
const TN: u32 = 4u;
const THREADS: u32 = 256u;  // WG_X · WG_Y, set by the host to 16 × 16

// Tiles in shared memory, [BK][BM] and [BK][BN]. Column c of row kk lives at kk·64 + (c ^ kk):
// the XOR swizzle spreads the column-wise stores of the global loads (consecutive invocations,
// consecutive kk) over distinct banks, while the row-wise reads of the inner loop stay
// conflict-free. It costs no extra memory (2 × 8 KiB fits WebGPU's 16 KiB minimum).
var<workgroup> As: array<f32, 2048>;
var<workgroup> Bs: array<f32, 2048>;

fn sw(kk: u32, c: u32) -> u32 {
    return kk * 64u + (c ^ kk);
}

fn load_f16(i: u32) -> f32 {
    let w = unpack2x16float(b[i >> 1u]);
    return select(w.x, w.y, (i & 1u) == 1u);
}

// Element i of a dense (f32 or f16) B.
fn load_dense(i: u32) -> f32 {
    if (WDTYPE == 1u) {
        return load_f16(i);
    }
    return bitcast<f32>(b[i]);
}

// Signed byte j (0..3) of a word.
fn i8_of(w: u32, j: u32) -> f32 {
    return f32(bitcast<i32>(w << (24u - 8u * j)) >> 24u);
}

// The four signed bytes of a q8_0 word, unscaled.
fn q8_word(w: u32) -> vec4<f32> {
    return vec4<f32>(i8_of(w, 0u), i8_of(w, 1u), i8_of(w, 2u), i8_of(w, 3u));
}

// The low nibbles of a q4_0 word's four bytes, unscaled (`w >> 4` gives the high ones).
fn q4_low(w: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(w, w >> 8u, w >> 16u, w >> 24u) & vec4<u32>(0xfu)) - 8.0;
}

fn block_scale(blk: u32) -> f32 {
    return bitcast<f32>(b[p.scale_offset + blk]);
}

// Fills Bs[kk][nn] for the tile at (n0, k0) of a quantized [N, K] weight.
fn load_b_tile_quant(tid: u32, n0: u32, k0: u32) {
    let nb = p.k / BK;
    if (WDTYPE == 2u) {
        // 64 rows × 8 words: two words per invocation, 4 values each
        for (var i = 0u; i < 2u; i++) {
            let idx = tid + i * THREADS;
            let nn = idx / 8u;
            let w = idx % 8u;
            let gn = n0 + nn;
            var word = 0u;
            var d = 0.0;
            if (gn < p.n) {
                let blk = gn * nb + k0 / BK;
                word = b[blk * 8u + w];
                d = block_scale(blk);
            }
            for (var j = 0u; j < 4u; j++) {
                Bs[sw(w * 4u + j, nn)] = i8_of(word, j) * d;
            }
        }
    } else {
        // 64 rows × 4 words: one word per invocation, 8 values (4 low nibbles, 4 high)
        let nn = tid / 4u;
        let w = tid % 4u;
        let gn = n0 + nn;
        var word = 0x88888888u;  // decodes to zeros
        var d = 0.0;
        if (gn < p.n) {
            let blk = gn * nb + k0 / BK;
            word = b[blk * 4u + w];
            d = block_scale(blk);
        }
        for (var j = 0u; j < 4u; j++) {
            let byte = (word >> (8u * j)) & 0xffu;
            Bs[sw(w * 4u + j, nn)] = (f32(byte & 0xfu) - 8.0) * d;
            Bs[sw(16u + w * 4u + j, nn)] = (f32(byte >> 4u) - 8.0) * d;
        }
    }
}

@compute @workgroup_size(WG_X, WG_Y)
fn matmul(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let tid = lid.y * WG_X + lid.x;
    let n0 = wid.x * BN;
    let m0 = wid.y * BM;
    let batch = wid.z;
    let a_base = batch * p.a_batch_stride;
    let b_base = batch * p.b_batch_stride;

    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // A tile (BM × BK), read along K
        for (var i = 0u; i < 8u; i++) {
            let idx = tid + i * THREADS;
            let mm = idx / BK;
            let kk = idx % BK;
            let gm = m0 + mm;
            let gk = k0 + kk;
            var v = 0.0;
            if (gm < p.m && gk < p.k) {
                v = a[a_base + gm * p.k + gk];
            }
            As[sw(kk, mm)] = v;
        }
        // B tile (BK × BN)
        if (WDTYPE >= 2u) {
            load_b_tile_quant(tid, n0, k0);
        } else if (B_TRANS) {
            for (var i = 0u; i < 8u; i++) {
                let idx = tid + i * THREADS;
                let nn = idx / BK;
                let kk = idx % BK;
                let gn = n0 + nn;
                let gk = k0 + kk;
                var v = 0.0;
                if (gn < p.n && gk < p.k) {
                    v = load_dense(b_base + gn * p.k + gk);
                }
                Bs[sw(kk, nn)] = v;
            }
        } else {
            for (var i = 0u; i < 8u; i++) {
                let idx = tid + i * THREADS;
                let kk = idx / BN;
                let nn = idx % BN;
                let gn = n0 + nn;
                let gk = k0 + kk;
                var v = 0.0;
                if (gn < p.n && gk < p.k) {
                    v = load_dense(b_base + gk * p.n + gn);
                }
                Bs[sw(kk, nn)] = v;
            }
        }
        workgroupBarrier();

        for (var kk = 0u; kk < BK; kk++) {
            var ar: array<f32, 4>;
            var br: array<f32, 4>;
            for (var i = 0u; i < TM; i++) {
                ar[i] = As[sw(kk, lid.y + i * WG_Y)];
            }
            for (var j = 0u; j < TN; j++) {
                br[j] = Bs[sw(kk, lid.x + j * WG_X)];
            }
            for (var i = 0u; i < TM; i++) {
                for (var j = 0u; j < TN; j++) {
                    acc[i * TN + j] = fma(ar[i], br[j], acc[i * TN + j]);
                }
            }
        }
        workgroupBarrier();
    }

    let c_base = batch * p.c_batch_stride;
    for (var i = 0u; i < TM; i++) {
        let gm = m0 + lid.y + i * WG_Y;
        for (var j = 0u; j < TN; j++) {
            let gn = n0 + lid.x + j * WG_X;
            if (gm < p.m && gn < p.n) {
                let ci = c_base + gm * p.n + gn;
                c[ci] = epilogue(acc[i * TN + j], gn, ci);
            }
        }
    }
}

// ---- GEMV: one input row (workgroup_id.z), GEMV_ROWS output features per workgroup ----

const GEMV_ROWS: u32 = 8u;
var<workgroup> red: array<f32, 256>;

fn a4(i: u32) -> vec4<f32> {
    return vec4<f32>(a[i], a[i + 1u], a[i + 2u], a[i + 3u]);
}

@compute @workgroup_size(WG_X)
fn gemv(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let lanes = WG_X / GEMV_ROWS;
    let r = lid.x / lanes;
    let lane = lid.x % lanes;
    let n = wid.x * GEMV_ROWS + r;
    let row = wid.z;
    let x0 = row * p.k;

    var sum = 0.0;
    if (n < p.n) {
        let nb = p.k / BK;
        if (WDTYPE == 2u) {
            // consecutive lanes read consecutive words of the row
            let nw = nb * 8u;
            let base = n * nw;
            for (var wi = lane; wi < nw; wi += lanes) {
                let word = b[base + wi];
                let q = q8_word(word);
                sum += block_scale(n * nb + wi / 8u) * dot(q, a4(x0 + wi * 4u));
            }
        } else if (WDTYPE == 3u) {
            let nw = nb * 4u;
            let base = n * nw;
            for (var wi = lane; wi < nw; wi += lanes) {
                let word = b[base + wi];
                let k = (wi / 4u) * BK + (wi % 4u) * 4u;
                let lo = q4_low(word);
                let hi = q4_low(word >> 4u);
                sum += block_scale(n * nb + wi / 4u) * (dot(lo, a4(x0 + k)) + dot(hi, a4(x0 + k + 16u)));
            }
        } else {
            let base = n * p.k;
            for (var k = lane; k < p.k; k += lanes) {
                sum = fma(a[x0 + k], load_dense(base + k), sum);
            }
        }
    }
    red[lid.x] = sum;
    workgroupBarrier();
    for (var s = lanes / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            red[lid.x] += red[lid.x + s];
        }
        workgroupBarrier();
    }
    if (lane == 0u && n < p.n) {
        let ci = row * p.n + n;
        c[ci] = epilogue(red[lid.x], n, ci);
    }
}

// ---- gemv_rows: the same product with one output per invocation and no workgroup memory or
// barriers, for software adapters (SwiftShader, lavapipe), where a barrier switches through every
// invocation of the workgroup and a 256-invocation reduction costs more than the arithmetic.
// On a real GPU neighbouring invocations would read far-apart rows: `gemv` is used there. ----

@compute @workgroup_size(WG_X)
fn gemv_rows(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let n = gid.x;
    let row = wid.z;
    if (n >= p.n) {
        return;
    }
    let x0 = row * p.k;
    let nb = p.k / BK;
    var sum = 0.0;
    if (WDTYPE == 2u) {
        let base = n * nb * 8u;
        for (var blk = 0u; blk < nb; blk++) {
            var s = 0.0;
            for (var j = 0u; j < 8u; j++) {
                let wi = blk * 8u + j;
                let word = b[base + wi];
                let q = q8_word(word);
                s += dot(q, a4(x0 + wi * 4u));
            }
            sum += block_scale(n * nb + blk) * s;
        }
    } else if (WDTYPE == 3u) {
        let base = n * nb * 4u;
        for (var blk = 0u; blk < nb; blk++) {
            var s = 0.0;
            for (var j = 0u; j < 4u; j++) {
                let word = b[base + blk * 4u + j];
                let k = blk * BK + j * 4u;
                let lo = q4_low(word);
                let hi = q4_low(word >> 4u);
                s += dot(lo, a4(x0 + k)) + dot(hi, a4(x0 + k + 16u));
            }
            sum += block_scale(n * nb + blk) * s;
        }
    } else {
        let base = n * p.k;
        let k4 = p.k & ~3u;
        var acc = vec4<f32>(0.0);
        for (var k = 0u; k < k4; k += 4u) {
            let w = vec4<f32>(load_dense(base + k), load_dense(base + k + 1u), load_dense(base + k + 2u), load_dense(base + k + 3u));
            acc = fma(a4(x0 + k), w, acc);
        }
        sum = (acc.x + acc.y) + (acc.z + acc.w);
        for (var k = k4; k < p.k; k++) {
            sum = fma(a[x0 + k], load_dense(base + k), sum);
        }
    }
    let ci = row * p.n + n;
    c[ci] = epilogue(sum, n, ci);
}

// ---- matmul_rows: the GEMM without workgroup memory or barriers, for software adapters (as
// gemv_rows). Each invocation owns an RM×4 block of outputs — rows RM·gid.y.., columns 4·gid.x.. of
// batch wid.z — and reads A and B straight from memory: on a CPU its caches do what the shared
// tiles do on a GPU, and no barrier switches through the workgroup's invocations. ----

// B's values (column n, depths k..k+3), for any WDTYPE; k is a multiple of 4.
fn b4(b_base: u32, n: u32, k: u32) -> vec4<f32> {
    if (WDTYPE == 2u) {
        let blk = n * (p.k / BK) + k / BK;
        let word = b[blk * 8u + (k % BK) / 4u];
        let q = q8_word(word);
        return q * block_scale(blk);
    }
    if (WDTYPE == 3u) {
        let blk = n * (p.k / BK) + k / BK;
        let o = k % BK;
        let word = b[blk * 4u + (o % 16u) / 4u] >> select(0u, 4u, o >= 16u);
        let q = q4_low(word);
        return q * block_scale(blk);
    }
    if (B_TRANS) {
        let i = b_base + n * p.k + k;
        return vec4<f32>(load_dense(i), load_dense(i + 1u), load_dense(i + 2u), load_dense(i + 3u));
    }
    let i = b_base + k * p.n + n;
    return vec4<f32>(load_dense(i), load_dense(i + p.n), load_dense(i + 2u * p.n), load_dense(i + 3u * p.n));
}

// B[n, k] (or B[k, n]) of a dense B: the K % 4 tail.
fn b1(b_base: u32, n: u32, k: u32) -> f32 {
    if (B_TRANS) {
        return load_dense(b_base + n * p.k + k);
    }
    return load_dense(b_base + k * p.n + n);
}

// rows of A per invocation (its columns of B: 4). On SwiftShader 8 rows made CLIP's request
// 1.8× faster than 4 (fewer loads of B per output); 16 was slower again for CLIP's 50 rows.
const RM: u32 = 8u;

@compute @workgroup_size(WG_X, WG_Y)
fn matmul_rows(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let m0 = gid.y * RM;
    let n0 = gid.x * 4u;
    if (m0 >= p.m || n0 >= p.n) {
        return;
    }
    let batch = wid.z;
    let a_base = batch * p.a_batch_stride;
    let b_base = batch * p.b_batch_stride;
    // rows and columns past the edge read the last valid one and are not stored
    var ar: array<u32, RM>;
    var bn: array<u32, 4>;
    for (var i = 0u; i < RM; i++) {
        ar[i] = a_base + min(m0 + i, p.m - 1u) * p.k;
    }
    for (var j = 0u; j < 4u; j++) {
        bn[j] = min(n0 + j, p.n - 1u);
    }
    var acc: array<f32, RM * 4u>;
    for (var i = 0u; i < RM * 4u; i++) {
        acc[i] = 0.0;
    }
    let k4 = p.k & ~3u;
    for (var k = 0u; k < k4; k += 4u) {
        let b0 = b4(b_base, bn[0], k);
        let b1v = b4(b_base, bn[1], k);
        let b2 = b4(b_base, bn[2], k);
        let b3 = b4(b_base, bn[3], k);
        for (var i = 0u; i < RM; i++) {
            let x = a4(ar[i] + k);
            acc[i * 4u] += dot(x, b0);
            acc[i * 4u + 1u] += dot(x, b1v);
            acc[i * 4u + 2u] += dot(x, b2);
            acc[i * 4u + 3u] += dot(x, b3);
        }
    }
    // only dense B can have K % 4 ≠ 0 (quantized K is a multiple of 32)
    for (var k = k4; k < p.k; k++) {
        for (var j = 0u; j < 4u; j++) {
            let w = b1(b_base, bn[j], k);
            for (var i = 0u; i < RM; i++) {
                acc[i * 4u + j] = fma(a[ar[i] + k], w, acc[i * 4u + j]);
            }
        }
    }
    let c_base = batch * p.c_batch_stride;
    for (var i = 0u; i < RM; i++) {
        let gm = m0 + i;
        for (var j = 0u; j < 4u; j++) {
            let gn = n0 + j;
            if (gm < p.m && gn < p.n) {
                let ci = c_base + gm * p.n + gn;
                c[ci] = epilogue(acc[i * 4u + j], gn, ci);
            }
        }
    }
}
