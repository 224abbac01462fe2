//! Block-quantized weights: ggml's q8_0 and q4_0 (32 values per block, one f16 scale each), in
//! ggml's byte layout on the CPU (and in GGUF files), repacked into 32-bit words for the GPU:
//!
//! ```text
//! words [0, nblocks * Q)      the quants of block b at b*Q .. b*Q+Q, bytes in ggml order
//!                             (q8_0: Q = 8, byte i = value i as i8;
//!                              q4_0: Q = 4, byte i = value i in the low nibble, value i+16 high)
//! words [nblocks * Q, + nblocks)  the scale of block b as f32 bits
//! ```
//! Blocks run along K within a row, rows follow each other: block b = n * (K/32) + k/32.
//!
//! Quantization is glimpse's own scalar code (ggml's reference rounding, bit-identical to
//! candle's portable quantizer). A quantized Linear on the CPU ([`gemv`]) multiplies the weights'
//! quants by activations rounded to 16-bit blocks, in integers (8 multiply-adds per wasm
//! instruction), with the same bits on every platform. It does not round activations to 8 bits:
//! that would turn the last-bit differences between platforms (SIMD widths, libm) into whole
//! quantization steps, so the same weights would caption differently natively and in wasm; a
//! 16-bit step is 128 times finer. The GPU kernels multiply f32 activations by the dequantized
//! weights.

use super::DType;
use crate::error::{Error, Result};

pub const BLOCK: usize = 32;
pub const Q8_0_WORDS_PER_BLOCK: u64 = 9;
pub const Q4_0_WORDS_PER_BLOCK: u64 = 5;
pub const Q8_0_BYTES: usize = 34;
pub const Q4_0_BYTES: usize = 18;

fn block_bytes(dtype: DType) -> Result<usize> {
    match dtype {
        DType::Q8_0 => Ok(Q8_0_BYTES),
        DType::Q4_0 => Ok(Q4_0_BYTES),
        d => Err(Error::DType {
            op: "quantize",
            dtype: d.name(),
            msg: "quantized formats are q8_0 and q4_0".into(),
        }),
    }
}

/// Quantizes values (a multiple of 32) into ggml blocks of `dtype`.
pub fn quantize_blocks(values: &[f32], dtype: DType) -> Result<Vec<u8>> {
    let bb = block_bytes(dtype)?;
    if !values.len().is_multiple_of(BLOCK) {
        return Err(Error::shape(
            "quantize",
            format!("{} values are not whole 32-value blocks", values.len()),
        ));
    }
    let mut out = Vec::with_capacity(values.len() / BLOCK * bb);
    for xs in values.chunks_exact(BLOCK) {
        if dtype == DType::Q8_0 {
            let amax = xs.iter().fold(0f32, |a, x| a.max(x.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend(half::f16::from_f32(d).to_le_bytes());
            out.extend(xs.iter().map(|&x| (x * id).round() as i8 as u8));
        } else {
            // the value of largest magnitude, with its sign, maps to -8
            let (mut amax, mut max) = (0f32, 0f32);
            for &x in xs {
                if amax < x.abs() {
                    amax = x.abs();
                    max = x;
                }
            }
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend(half::f16::from_f32(d).to_le_bytes());
            for j in 0..BLOCK / 2 {
                let q0 = ((xs[j] * id + 8.5) as u8).min(15);
                let q1 = ((xs[BLOCK / 2 + j] * id + 8.5) as u8).min(15);
                out.push(q0 | (q1 << 4));
            }
        }
    }
    Ok(out)
}

/// Quantizes a 2-D `[N, K]` weight (K a multiple of 32): ggml blocks, row after row.
pub fn quantize(name: &str, data: &[f32], shape: &[usize], dtype: DType) -> Result<Vec<u8>> {
    block_bytes(dtype)?;
    let &[_, k] = shape else {
        return Err(Error::shape(
            "quantize",
            format!("{name}: quantized weights are 2-D [N, K], got {shape:?}"),
        ));
    };
    if k % BLOCK != 0 {
        return Err(Error::shape(
            "quantize",
            format!(
                "{name}: K = {k} is not a multiple of the {BLOCK}-value block of {}; keep this tensor f16 or f32",
                dtype.name()
            ),
        ));
    }
    quantize_blocks(data, dtype)
}

/// The 32 quants of one block as f32, unscaled: q8_0's signed bytes, or q4_0's low nibbles
/// then high nibbles, each minus 8. `qs` is the block without its scale.
fn quants(qs: &[u8], q8: bool, q: &mut [f32; BLOCK]) {
    if q8 {
        for (t, &v) in q.iter_mut().zip(qs) {
            *t = (v as i8) as f32;
        }
    } else {
        for i in 0..BLOCK / 2 {
            q[i] = (qs[i] & 0xf) as f32 - 8.0;
            q[i + BLOCK / 2] = (qs[i] >> 4) as f32 - 8.0;
        }
    }
}

/// The scale of a ggml block (its first two bytes, f16).
fn scale(blk: &[u8]) -> f32 {
    half::f16::from_le_bytes([blk[0], blk[1]]).to_f32()
}

/// The 32 weights of one ggml block, dequantized: each quant times the block's scale. The
/// product of a quant (at most 8 bits) and an f16 scale (11 bits) is exact in f32, so this is
/// the value the weight stands for, with no rounding of its own.
#[inline(always)]
fn dequantize_block(blk: &[u8], q8: bool, w: &mut [f32; BLOCK]) {
    quants(&blk[2..], q8, w);
    let d = scale(blk);
    for v in w.iter_mut() {
        *v *= d;
    }
}

/// f32 values of ggml q8_0 (`q8`) or q4_0 blocks; a trailing partial block is ignored.
pub fn dequantize_ggml(bytes: &[u8], q8: bool) -> Vec<f32> {
    dequantize_split(bytes, q8, crate::cpu::pool_threads())
}

/// [`dequantize_ggml`] in `threads` runs of blocks on the rayon pool (≤ 1: on this thread).
fn dequantize_split(bytes: &[u8], q8: bool, threads: usize) -> Vec<f32> {
    let bb = if q8 { Q8_0_BYTES } else { Q4_0_BYTES };
    let nblocks = bytes.len() / bb;
    let mut out = vec![0f32; nblocks * BLOCK];
    let run = |src: &[u8], dst: &mut [f32]| {
        let (dst, _) = dst.as_chunks_mut::<BLOCK>();
        for (blk, w) in src.chunks_exact(bb).zip(dst) {
            dequantize_block(blk, q8, w);
        }
    };
    // whole weights (a GGUF's q8_0 loaded as f32, a quantized tensor widened): on the CPU
    // path's pool (the threaded wasm build), one run of blocks per thread
    if threads > 1 && nblocks >= 64 * threads {
        use rayon::prelude::*;
        let per = nblocks.div_ceil(threads);
        out.par_chunks_mut(per * BLOCK)
            .zip(bytes[..nblocks * bb].par_chunks(per * bb))
            .for_each(|(dst, src)| run(src, dst));
    } else {
        run(bytes, &mut out);
    }
    out
}

/// f32 values of ggml blocks of `dtype`.
pub fn dequantize_blocks(bytes: &[u8], dtype: DType) -> Result<Vec<f32>> {
    block_bytes(dtype)?;
    Ok(dequantize_ggml(bytes, dtype == DType::Q8_0))
}

/// One row of activations for the integer kernel: per block of 32 a scale `d = max|x| / 32767`
/// and the values `x / d` rounded to the nearest (ties to even) as i16 (ggml's q8_1 idea at 16 bits). The rounding moves an
/// activation by at most 1/65534 of its block's largest value — far below the weights' own q8_0
/// step (1/254 of theirs) — so last-bit differences between platforms (SIMD widths, libm) almost
/// never move a 16-bit step, where 8-bit activations would turn them into visible changes.
struct QRow {
    q: Vec<[i16; BLOCK]>,
    d: Vec<f32>,
}

fn quantize_row(x: &[f32]) -> QRow {
    let (blocks, _) = x.as_chunks::<BLOCK>();
    let mut q = vec![[0i16; BLOCK]; blocks.len()];
    let mut d = vec![0f32; blocks.len()];
    for ((xb, qb), db) in blocks.iter().zip(q.iter_mut()).zip(d.iter_mut()) {
        let amax = block_amax(xb);
        // a non-finite value makes d non-finite, and the outputs that read it NaN or inf
        *db = amax / 32767.0;
        let id = if amax > 0.0 { 32767.0 / amax } else { 0.0 };
        round_block(xb, id, qb);
    }
    QRow { q, d }
}

/// max |v| of a block, NaN ignored (as `f32::max` does).
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn block_amax(xb: &[f32; BLOCK]) -> f32 {
    xb.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// `v · id` rounded to the nearest i16, ties to even (NaN → 0, beyond the range: saturated).
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn round_block(xb: &[f32; BLOCK], id: f32, qb: &mut [i16; BLOCK]) {
    for (t, &v) in qb.iter_mut().zip(xb) {
        *t = (v * id).round_ties_even() as i16;
    }
}

/// [`block_amax`] in simd128: `pmax` keeps its first operand when the second is NaN, as
/// `f32::max` does; a maximum is exact in any order.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn block_amax(xb: &[f32; BLOCK]) -> f32 {
    use core::arch::wasm32::*;
    let mut m = f32x4_splat(0.0);
    for c in xb.as_chunks::<4>().0 {
        // SAFETY: `c` is four readable f32s
        m = f32x4_pmax(
            m,
            f32x4_abs(unsafe { v128_load(c.as_ptr() as *const v128) }),
        );
    }
    let l = [
        f32x4_extract_lane::<0>(m),
        f32x4_extract_lane::<1>(m),
        f32x4_extract_lane::<2>(m),
        f32x4_extract_lane::<3>(m),
    ];
    l.iter().fold(0f32, |a, &v| a.max(v))
}

/// [`round_block`] in simd128: `nearest` rounds ties to even, `trunc_sat` and the saturating
/// narrow give Rust's `as i16` (NaN → 0, saturated ends).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn round_block(xb: &[f32; BLOCK], id: f32, qb: &mut [i16; BLOCK]) {
    use core::arch::wasm32::*;
    let s = f32x4_splat(id);
    for (c, out) in xb.as_chunks::<8>().0.iter().zip(qb.as_chunks_mut::<8>().0) {
        // SAFETY: `c` is eight readable f32s, `out` eight writable i16s
        unsafe {
            let p = c.as_ptr() as *const v128;
            let lo = i32x4_trunc_sat_f32x4(f32x4_nearest(f32x4_mul(v128_load(p), s)));
            let hi = i32x4_trunc_sat_f32x4(f32x4_nearest(f32x4_mul(v128_load(p.add(1)), s)));
            v128_store(out.as_mut_ptr() as *mut v128, i16x8_narrow_i32x4(lo, hi));
        }
    }
}

/// The 32 quants of one ggml block as i16 (q8_0's bytes, or q4_0's nibbles minus 8).
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
#[inline(always)]
fn block_quants(blk: &[u8], q8: bool, w: &mut [i16; BLOCK]) {
    let qs = &blk[2..];
    if q8 {
        if let Some(qs) = qs.first_chunk::<BLOCK>() {
            for (t, &v) in w.iter_mut().zip(qs) {
                *t = (v as i8) as i16;
            }
        }
    } else if let Some(qs) = qs.first_chunk::<{ BLOCK / 2 }>() {
        let (lo, hi) = w.split_at_mut(BLOCK / 2);
        for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(qs) {
            *l = (v & 0xf) as i16 - 8;
            *h = (v >> 4) as i16 - 8;
        }
    }
}

/// `a[l] += (s[l] as f32) · d` where `s[l]` is the exact integer sum of the products `x[i]·w[i]`
/// whose index i has (i / 2) mod 4 = l — the lanes of wasm's `i32x4.dot_i16x8_s` summed over the
/// block's four 8-wide chunks. Integer sums are exact in any order; the f32 steps are one
/// conversion, one multiply and one add per lane, so every platform gets the same bits.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
#[inline(always)]
fn block_fma(a: &mut [f32; 4], x: &[i16; BLOCK], w: &[i16; BLOCK], d: f32) {
    let mut s = [0i32; 4];
    for c in 0..BLOCK / 8 {
        for (l, sl) in s.iter_mut().enumerate() {
            let i = 8 * c + 2 * l;
            *sl += x[i] as i32 * w[i] as i32 + x[i + 1] as i32 * w[i + 1] as i32;
        }
    }
    for l in 0..4 {
        a[l] += s[l] as f32 * d;
    }
}

/// The four lanes summed in a fixed tree.
#[inline(always)]
fn lane_sum(a: &[f32; 4]) -> f32 {
    (a[0] + a[2]) + (a[1] + a[3])
}

/// Rows of x one pass over the weight serves (each block is decoded once for all of them).
const ROW_GROUP: usize = 4;

/// The four f32 lanes of one weight row's dot products with each of R rows of x (portable code,
/// [`block_fma`]). R is a constant so that the rows' accumulators stay in registers.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
#[inline(always)]
fn row_group_dots<const R: usize>(
    group: &[QRow; R],
    wrow: &[u8],
    wscales: &[f32],
    bb: usize,
    q8: bool,
) -> [[f32; 4]; R] {
    let mut acc = [[0f32; 4]; R];
    let mut wq = [0i16; BLOCK];
    for ((b, blk), &dw) in wrow.chunks_exact(bb).enumerate().zip(wscales) {
        block_quants(blk, q8, &mut wq);
        for (a, xr) in acc.iter_mut().zip(group) {
            block_fma(a, &xr.q[b], &wq, dw * xr.d[b]);
        }
    }
    acc
}

/// [`row_group_dots`] in simd128, the same operations lane for lane: a weight block becomes four
/// i16x8 (sign-extended bytes, or nibbles minus 8), each row adds four `i32x4.dot_i16x8_s` and
/// one convert, multiply and add into its f32x4.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[inline(always)]
fn row_group_dots<const R: usize>(
    group: &[QRow; R],
    wrow: &[u8],
    wscales: &[f32],
    bb: usize,
    q8: bool,
) -> [[f32; 4]; R] {
    use core::arch::wasm32::*;
    let mut acc = [f32x4_splat(0.0); R];
    for ((b, blk), &dw) in wrow.chunks_exact(bb).enumerate().zip(wscales) {
        let qs = &blk[2..];
        let wv: [v128; 4] = if q8 {
            let Some(q) = qs.first_chunk::<32>() else {
                continue;
            };
            // SAFETY: `q` is 32 readable bytes; v128_load has no alignment requirement
            let (lo, hi) = unsafe {
                let p = q.as_ptr() as *const v128;
                (v128_load(p), v128_load(p.add(1)))
            };
            [
                i16x8_extend_low_i8x16(lo),
                i16x8_extend_high_i8x16(lo),
                i16x8_extend_low_i8x16(hi),
                i16x8_extend_high_i8x16(hi),
            ]
        } else {
            let Some(q) = qs.first_chunk::<16>() else {
                continue;
            };
            // SAFETY: `q` is 16 readable bytes
            let v = unsafe { v128_load(q.as_ptr() as *const v128) };
            let lo = i8x16_sub(v128_and(v, u8x16_splat(0x0f)), i8x16_splat(8));
            let hi = i8x16_sub(u8x16_shr(v, 4), i8x16_splat(8));
            [
                i16x8_extend_low_i8x16(lo),
                i16x8_extend_high_i8x16(lo),
                i16x8_extend_low_i8x16(hi),
                i16x8_extend_high_i8x16(hi),
            ]
        };
        for (a, xr) in acc.iter_mut().zip(group) {
            let (xb, dx) = (&xr.q[b], xr.d[b]);
            // SAFETY: `xb` is 32 i16 = four v128s
            let s = unsafe {
                let p = xb.as_ptr() as *const v128;
                i32x4_add(
                    i32x4_add(
                        i32x4_dot_i16x8(v128_load(p), wv[0]),
                        i32x4_dot_i16x8(v128_load(p.add(1)), wv[1]),
                    ),
                    i32x4_add(
                        i32x4_dot_i16x8(v128_load(p.add(2)), wv[2]),
                        i32x4_dot_i16x8(v128_load(p.add(3)), wv[3]),
                    ),
                )
            };
            *a = f32x4_add(*a, f32x4_mul(f32x4_convert_i32x4(s), f32x4_splat(dw * dx)));
        }
    }
    acc.map(|a| {
        [
            f32x4_extract_lane::<0>(a),
            f32x4_extract_lane::<1>(a),
            f32x4_extract_lane::<2>(a),
            f32x4_extract_lane::<3>(a),
        ]
    })
}

/// `y[r, n] = Σ_k x[r, k] · w[n, k]` for a quantized `w [N, K]` (ggml blocks) and f32 `x [R, K]`,
/// the CPU path's quantized Linear (in wasm for any number of rows, natively for a decode step):
/// each row of x is
/// rounded to 16-bit blocks ([`QRow`]), each weight block is multiplied into a group of rows in
/// integers ([`block_fma`]), and the block sums are scaled by both blocks' scales into four f32
/// lanes, summed in a fixed tree. The same bits on every platform; in wasm, 8 multiply-adds per instruction.
pub fn gemv(
    x: &[f32],
    rows: usize,
    w: &[u8],
    n: usize,
    k: usize,
    dtype: DType,
) -> Result<Vec<f32>> {
    gemv_split(x, rows, w, n, k, dtype, gemv_threads())
}

/// Threads [`gemv`] splits the weight's rows over: the wasm pool's (none in the single-thread
/// build), natively rayon's global pool.
fn gemv_threads() -> usize {
    if cfg!(target_arch = "wasm32") {
        crate::cpu::pool_threads()
    } else {
        rayon::current_num_threads()
    }
}

/// [`gemv`] with the weight's rows split into `threads` runs on the rayon pool (≤ 1: all on the
/// calling thread). Every output is computed the same way whatever the split.
fn gemv_split(
    x: &[f32],
    rows: usize,
    w: &[u8],
    n: usize,
    k: usize,
    dtype: DType,
    threads: usize,
) -> Result<Vec<f32>> {
    let bb = block_bytes(dtype)?;
    let bpr = k / BLOCK;
    if w.len() != n * bpr * bb || x.len() != rows * k || !k.is_multiple_of(BLOCK) {
        return Err(Error::shape(
            "linear",
            format!(
                "quantized weight of {} bytes is not [{n}, {k}] {}",
                w.len(),
                dtype.name()
            ),
        ));
    }
    let q8 = dtype == DType::Q8_0;
    let mut y = vec![0f32; rows * n];
    if rows == 0 || bpr == 0 || n == 0 {
        return Ok(y);
    }
    let xq: Vec<QRow> = x.chunks_exact(k).map(quantize_row).collect();
    // the weight's rows: all on this thread, or one run per thread of the CPU path's pool (the
    // threaded wasm build)
    if threads > 1 && n >= 2 * threads {
        use rayon::prelude::*;
        let per = n.div_ceil(threads);
        let parts: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(per))
            .into_par_iter()
            .map(|c| {
                let cols = c * per..((c + 1) * per).min(n);
                let mut part = vec![0f32; rows * cols.len()];
                let wpart = &w[cols.start * bpr * bb..cols.end * bpr * bb];
                gemv_into(&xq, wpart, cols.len(), bpr * bb, bb, q8, &mut part);
                (cols.start, part)
            })
            .collect();
        for (start, part) in parts {
            let width = part.len() / rows;
            for (r, src) in part.chunks_exact(width).enumerate() {
                y[r * n + start..r * n + start + width].copy_from_slice(src);
            }
        }
    } else {
        gemv_into(&xq, w, n, bpr * bb, bb, q8, &mut y);
    }
    Ok(y)
}

/// `y [rows, n] = xq · wᵀ` for `n` weight rows of `row_bytes` each ([`gemv`]'s loop): groups of
/// 4 rows of x (the last one 1–3), each against every weight row.
fn gemv_into(
    xq: &[QRow],
    w: &[u8],
    n: usize,
    row_bytes: usize,
    bb: usize,
    q8: bool,
    y: &mut [f32],
) {
    // the blocks' f16 scales widened once per call, not once per group of rows
    let scales: Vec<f32> = w.chunks_exact(bb).map(scale).collect();
    let bpr = row_bytes / bb;
    // A block of rows of x (X_BLOCK_BYTES of 16-bit activations, in the core's cache) against
    // the whole weight, W_CHUNK weight rows (13 KiB of q8_0 at K = 768) at a time: each chunk
    // stays in cache while the block's groups pass. Without the blocks, an image's thousands of
    // rows (SmolVLM: 5120 × 768 × 2 bytes = 7.5 MiB) were read again for every chunk.
    let k = xq.first().map_or(0, |r| r.q.len() * BLOCK);
    let block = (X_BLOCK_BYTES / (2 * k).max(1) / ROW_GROUP * ROW_GROUP).max(ROW_GROUP);
    for b0 in (0..xq.len()).step_by(block) {
        let xb = &xq[b0..(b0 + block).min(xq.len())];
        for (c, (wc, sc)) in w
            .chunks(W_CHUNK * row_bytes)
            .zip(scales.chunks(W_CHUNK * bpr))
            .enumerate()
        {
            let mut g = 0;
            while g < xb.len() {
                let rest = &xb[g..];
                let args = (b0 + g, c * W_CHUNK, wc, sc, n, row_bytes, bb, q8);
                match rest.len() {
                    1 => group_into::<1>(rest, args, y),
                    2 => group_into::<2>(rest, args, y),
                    3 => group_into::<3>(rest, args, y),
                    _ => group_into::<ROW_GROUP>(rest, args, y),
                }
                g += rest.len().min(ROW_GROUP);
            }
        }
    }
}

/// The 16-bit rows of x [`gemv_into`] keeps in cache while the weight passes (a quarter of a
/// 1 MiB L2: 256 rows at K = 768).
const X_BLOCK_BYTES: usize = 384 << 10;

/// Weight rows [`gemv_into`] takes through every group of rows of x at a time.
const W_CHUNK: usize = 16;

/// The first R rows of `rows` (rows `g..g + R` of y) against the weight rows in `w` (rows
/// `j0..` of the weight).
#[inline(always)]
#[allow(clippy::type_complexity)]
fn group_into<const R: usize>(
    rows: &[QRow],
    (g, j0, w, scales, n, row_bytes, bb, q8): (
        usize,
        usize,
        &[u8],
        &[f32],
        usize,
        usize,
        usize,
        bool,
    ),
    y: &mut [f32],
) {
    let Some(group) = rows.first_chunk::<R>() else {
        return;
    };
    let bpr = row_bytes / bb;
    for ((j, wrow), ws) in w
        .chunks_exact(row_bytes)
        .enumerate()
        .zip(scales.chunks_exact(bpr))
    {
        let acc = row_group_dots(group, wrow, ws, bb, q8);
        for (r, a) in acc.iter().enumerate() {
            y[(g + r) * n + j0 + j] = lane_sum(a);
        }
    }
}

/// What the GPU kernels see of quantized blocks: the word layout described above.
pub fn pack_for_gpu(raw: &[u8], dtype: DType) -> Result<Vec<u32>> {
    let bb = block_bytes(dtype)?;
    let qwords = if dtype == DType::Q8_0 { 8usize } else { 4 };
    if !raw.len().is_multiple_of(bb) {
        return Err(Error::Invalid(format!(
            "quantized data of {} bytes is not whole {bb}-byte blocks",
            raw.len(),
        )));
    }
    let nblocks = raw.len() / bb;
    let mut words = vec![0u32; nblocks * (qwords + 1)];
    for (b, block) in raw.chunks_exact(bb).enumerate() {
        let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
        for w in 0..qwords {
            let o = 2 + 4 * w;
            words[b * qwords + w] =
                u32::from_le_bytes([block[o], block[o + 1], block[o + 2], block[o + 3]]);
        }
        words[nblocks * qwords + b] = d.to_bits();
    }
    Ok(words)
}

/// The inverse of [`pack_for_gpu`] followed by dequantization: f32 values of a GPU weight.
pub fn unpack_from_gpu(words: &[u32], numel: usize, dtype: DType) -> Result<Vec<f32>> {
    match dtype {
        DType::F16 => Ok((0..numel)
            .map(|i| {
                let w = words[i / 2];
                let h = if i % 2 == 0 { w & 0xffff } else { w >> 16 };
                half::f16::from_bits(h as u16).to_f32()
            })
            .collect()),
        DType::Q8_0 | DType::Q4_0 => {
            let nblocks = numel / BLOCK;
            let qwords = if dtype == DType::Q8_0 { 8 } else { 4 };
            let mut out = Vec::with_capacity(numel);
            let mut q = [0f32; BLOCK];
            for b in 0..nblocks {
                let d = f32::from_bits(words[nblocks * qwords + b]);
                let bytes: Vec<u8> = words[b * qwords..(b + 1) * qwords]
                    .iter()
                    .flat_map(|w| w.to_le_bytes())
                    .collect();
                quants(&bytes, dtype == DType::Q8_0, &mut q);
                out.extend(q.iter().map(|&v| v * d));
            }
            Ok(out)
        }
        d => Err(Error::DType {
            op: "unpack",
            dtype: d.name(),
            msg: "not a packed weight format".into(),
        }),
    }
}

/// Quantize then dequantize on the host: the exact values a quantized weight stands for.
/// Tests compare quantized kernels against an f32 matmul with these values.
pub fn quantize_dequantize(data: &[f32], shape: &[usize], dtype: DType) -> Result<Vec<f32>> {
    match dtype {
        DType::F32 => Ok(data.to_vec()),
        DType::F16 => Ok(data
            .iter()
            .map(|&x| half::f16::from_f32(x).to_f32())
            .collect()),
        _ => dequantize_blocks(&quantize("reference", data, shape, dtype)?, dtype),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect()
    }

    #[test]
    fn blocks_are_candles_and_ggmls() {
        // glimpse quantizes as candle's portable code (ggml's reference) does, bit for bit
        let v = data(6 * 64);
        for (dtype, g) in [
            (DType::Q8_0, candle_core::quantized::GgmlDType::Q8_0),
            (DType::Q4_0, candle_core::quantized::GgmlDType::Q4_0),
        ] {
            let t =
                candle_core::Tensor::from_slice(&v, (6, 64), &candle_core::Device::Cpu).unwrap();
            let theirs = candle_core::quantized::QTensor::quantize(&t, g)
                .unwrap()
                .data()
                .unwrap()
                .into_owned();
            assert_eq!(
                quantize("w", &v, &[6, 64], dtype).unwrap(),
                theirs,
                "{dtype:?}"
            );
        }
    }

    #[test]
    fn gpu_packing_round_trips_through_dequantize() {
        let v = data(3 * 64);
        for dtype in [DType::Q8_0, DType::Q4_0] {
            let q = quantize("w", &v, &[3, 64], dtype).unwrap();
            let words = pack_for_gpu(&q, dtype).unwrap();
            assert_eq!(
                unpack_from_gpu(&words, v.len(), dtype).unwrap(),
                dequantize_blocks(&q, dtype).unwrap(),
                "{dtype:?}"
            );
        }
    }

    #[test]
    fn gemv_is_the_dequantized_product() {
        // 37 weight rows: chunks of 16, 16 and 5; 11 rows of x: groups of 4, 4 and 3
        let (n, k) = (37, 96);
        let w = data(n * k);
        // 2050 rows: X_BLOCK_BYTES holds 2048 rows of K = 96, so the last 2 are a second block
        for rows in [1, 3, 6, 11, 2050] {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0)
                .collect();
            for dtype in [DType::Q8_0, DType::Q4_0] {
                let q = quantize("w", &w, &[n, k], dtype).unwrap();
                let deq = dequantize_blocks(&q, dtype).unwrap();
                let y = gemv(&x, rows, &q, n, k, dtype).unwrap();
                for r in 0..rows {
                    for j in 0..n {
                        let xs = &x[r * k..(r + 1) * k];
                        let ws = &deq[j * k..(j + 1) * k];
                        let want: f32 = xs.iter().zip(ws).map(|(a, b)| a * b).sum();
                        // each activation moves by ≤ half a 16-bit step of its block's largest
                        // value (max|x| / 65534), so the sum moves by ≤ Σ |w_i| · max|x| / 65534;
                        // f32 rounding of the sums adds ~1e-6 relative
                        let xmax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                        let wsum: f32 = ws.iter().map(|v| v.abs()).sum();
                        let bound = wsum * xmax / 65534.0 + 1e-5 * want.abs().max(1.0);
                        let got = y[r * n + j];
                        assert!(
                            (got - want).abs() <= bound,
                            "{dtype:?} row {r} col {j}: {got} vs {want} (bound {bound})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn dequantize_split_over_threads_gives_the_same_values() {
        // 300 blocks and a trailing partial one: uneven runs, the partial block ignored
        let w = data(300 * BLOCK);
        for dtype in [DType::Q8_0, DType::Q4_0] {
            let mut q = quantize("w", &w, &[300, BLOCK], dtype).unwrap();
            q.extend_from_slice(&[7, 7, 7]);
            let one = dequantize_split(&q, dtype == DType::Q8_0, 1);
            assert_eq!(one.len(), 300 * BLOCK);
            for threads in [2, 3] {
                // 64 blocks per thread at least: 2 and 3 threads split, 5 does not
                assert_eq!(
                    one,
                    dequantize_split(&q, dtype == DType::Q8_0, threads),
                    "{dtype:?} {threads}"
                );
            }
            assert_eq!(one, dequantize_split(&q, dtype == DType::Q8_0, 5));
        }
    }

    #[test]
    fn gemv_split_over_threads_gives_the_same_bits() {
        // the threaded wasm build splits the weight's rows over its pool: every output must be
        // the single-thread one exactly, for uneven splits and rows past a row group
        let (n, k) = (37, 64);
        let w = data(n * k);
        for rows in [1, 5] {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 7 % 23) as f32 - 11.0) / 5.0)
                .collect();
            for dtype in [DType::Q8_0, DType::Q4_0] {
                let q = quantize("w", &w, &[n, k], dtype).unwrap();
                let one = gemv_split(&x, rows, &q, n, k, dtype, 1).unwrap();
                for threads in [2, 3, 8] {
                    let split = gemv_split(&x, rows, &q, n, k, dtype, threads).unwrap();
                    assert_eq!(
                        one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        split.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{dtype:?}, {rows} rows, {threads} threads"
                    );
                }
            }
        }
    }

    #[test]
    fn gemv_keeps_zeros_and_signs_exact() {
        // activations that are exact multiples of their 16-bit step give the exact product
        let (n, k) = (3, 64);
        let w = data(n * k);
        let x: Vec<f32> = (0..k)
            .map(|i| {
                if i % 5 == 0 {
                    0.0
                } else {
                    (i % 3) as f32 - 1.0
                }
            })
            .collect();
        let q = quantize("w", &w, &[n, k], DType::Q8_0).unwrap();
        let deq = dequantize_blocks(&q, DType::Q8_0).unwrap();
        let y = gemv(&x, 1, &q, n, k, DType::Q8_0).unwrap();
        for j in 0..n {
            let want: f32 = x
                .iter()
                .zip(&deq[j * k..(j + 1) * k])
                .map(|(a, b)| a * b)
                .sum();
            assert!(
                (y[j] - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{} vs {want}",
                y[j]
            );
        }
    }

    #[test]
    fn k_not_multiple_of_block_is_a_clear_error() {
        let err = quantize("fc.weight", &[0.0; 2 * 33], &[2, 33], DType::Q8_0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fc.weight") && err.contains("multiple of the 32"),
            "{err}"
        );
    }
}
