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
//! candle's portable quantizer), and a quantized Linear on the CPU multiplies f32 activations by
//! the dequantized weights, as the GPU kernels do. It never quantizes the activations: rounding
//! activations to 8 bits turns the last-bit differences between platforms (SIMD widths, libm)
//! into whole quantization steps, so the same weights would caption differently natively and in
//! wasm.

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

/// f32 values of ggml q8_0 (`q8`) or q4_0 blocks; a trailing partial block is ignored.
pub fn dequantize_ggml(bytes: &[u8], q8: bool) -> Vec<f32> {
    let bb = if q8 { Q8_0_BYTES } else { Q4_0_BYTES };
    let mut out = Vec::with_capacity(bytes.len() / bb * BLOCK);
    let mut q = [0f32; BLOCK];
    for blk in bytes.chunks_exact(bb) {
        let d = scale(blk);
        quants(&blk[2..], q8, &mut q);
        out.extend(q.iter().map(|&v| v * d));
    }
    out
}

/// f32 values of ggml blocks of `dtype`.
pub fn dequantize_blocks(bytes: &[u8], dtype: DType) -> Result<Vec<f32>> {
    block_bytes(dtype)?;
    Ok(dequantize_ggml(bytes, dtype == DType::Q8_0))
}

/// `y[r, n] = Σ_k x[r, k] · w[n, k]` for a quantized `w [N, K]` (ggml blocks) and f32 `x [R, K]`:
/// each block's 32 products summed in f32, scaled by the block's d, the blocks summed in order.
/// The same sums on every platform.
pub fn gemv(
    x: &[f32],
    rows: usize,
    w: &[u8],
    n: usize,
    k: usize,
    dtype: DType,
) -> Result<Vec<f32>> {
    let bb = block_bytes(dtype)?;
    let bpr = k / BLOCK;
    if w.len() != n * bpr * bb || x.len() != rows * k {
        return Err(Error::shape(
            "linear",
            format!(
                "quantized weight of {} bytes is not [{n}, {k}] {}",
                w.len(),
                dtype.name()
            ),
        ));
    }
    let mut y = vec![0f32; rows * n];
    let mut q = [0f32; BLOCK];
    for (j, wrow) in w.chunks_exact(bpr * bb).enumerate() {
        for (b, blk) in wrow.chunks_exact(bb).enumerate() {
            let d = scale(blk);
            quants(&blk[2..], dtype == DType::Q8_0, &mut q);
            for r in 0..rows {
                let xs = &x[r * k + b * BLOCK..r * k + (b + 1) * BLOCK];
                let mut s = 0f32;
                for i in 0..BLOCK {
                    s += xs[i] * q[i];
                }
                y[r * n + j] += s * d;
            }
        }
    }
    Ok(y)
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
        let (n, k, rows) = (5, 96, 3);
        let w = data(n * k);
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0)
            .collect();
        for dtype in [DType::Q8_0, DType::Q4_0] {
            let q = quantize("w", &w, &[n, k], dtype).unwrap();
            let deq = dequantize_blocks(&q, dtype).unwrap();
            let y = gemv(&x, rows, &q, n, k, dtype).unwrap();
            for r in 0..rows {
                for j in 0..n {
                    let want: f32 = (0..k).map(|i| x[r * k + i] * deq[j * k + i]).sum();
                    assert!(
                        (y[r * n + j] - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "{dtype:?}"
                    );
                }
            }
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
