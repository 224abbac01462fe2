//! Block-quantized weights. Quantization itself is candle's (ggml's q8_0 / q4_0: 32 values per
//! block, one f16 scale each). For the GPU the blocks are repacked into 32-bit words, which every
//! WebGPU device can read without shader-f16:
//!
//! ```text
//! words [0, nblocks * Q)      the quants of block b at b*Q .. b*Q+Q, bytes in ggml order
//!                             (q8_0: Q = 8, byte i = value i as i8;
//!                              q4_0: Q = 4, byte i = value i in the low nibble, value i+16 high)
//! words [nblocks * Q, + nblocks)  the scale of block b as f32 bits
//! ```
//! Blocks run along K within a row, rows follow each other: block b = n * (K/32) + k/32.

use candle_core::quantized::{GgmlDType, QTensor};

use super::DType;
use crate::error::{Error, Result};

pub const BLOCK: usize = 32;
pub const Q8_0_WORDS_PER_BLOCK: u64 = 9;
pub const Q4_0_WORDS_PER_BLOCK: u64 = 5;
const Q8_0_BYTES: usize = 34;
const Q4_0_BYTES: usize = 18;

fn ggml(dtype: DType) -> Result<GgmlDType> {
    match dtype {
        DType::Q8_0 => Ok(GgmlDType::Q8_0),
        DType::Q4_0 => Ok(GgmlDType::Q4_0),
        d => Err(Error::DType {
            op: "quantize",
            dtype: d.name(),
            msg: "quantized formats are q8_0 and q4_0".into(),
        }),
    }
}

/// Quantizes a 2-D `[N, K]` weight (K a multiple of 32) on the host.
pub fn quantize(name: &str, data: &[f32], shape: &[usize], dtype: DType) -> Result<QTensor> {
    let g = ggml(dtype)?;
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
    let t = candle_core::Tensor::from_slice(data, shape, &candle_core::Device::Cpu)?;
    Ok(QTensor::quantize(&t, g)?)
}

/// What the GPU kernels see of a quantized tensor: the word layout described above.
pub fn pack_for_gpu(q: &QTensor, dtype: DType) -> Result<Vec<u32>> {
    let raw = q.data()?;
    let (block_bytes, qwords) = match dtype {
        DType::Q8_0 => (Q8_0_BYTES, 8usize),
        DType::Q4_0 => (Q4_0_BYTES, 4usize),
        d => {
            return Err(ggml(d)
                .err()
                .unwrap_or(Error::Invalid("not quantized".into())))
        }
    };
    if raw.len() % block_bytes != 0 {
        return Err(Error::Invalid(format!(
            "quantized data of {} bytes is not whole {}-byte blocks",
            raw.len(),
            block_bytes
        )));
    }
    let nblocks = raw.len() / block_bytes;
    let mut words = vec![0u32; nblocks * (qwords + 1)];
    for (b, block) in raw.chunks_exact(block_bytes).enumerate() {
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
            for b in 0..nblocks {
                let d = f32::from_bits(words[nblocks * qwords + b]);
                let bytes: Vec<u8> = words[b * qwords..(b + 1) * qwords]
                    .iter()
                    .flat_map(|w| w.to_le_bytes())
                    .collect();
                if dtype == DType::Q8_0 {
                    out.extend(bytes.iter().map(|&q| (q as i8) as f32 * d));
                } else {
                    let lo = bytes.iter().map(|&q| ((q & 0xf) as f32 - 8.0) * d);
                    let hi = bytes.iter().map(|&q| ((q >> 4) as f32 - 8.0) * d);
                    out.extend(lo.chain(hi));
                }
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
        _ => {
            let q = quantize("reference", data, shape, dtype)?;
            Ok(q.dequantize(&candle_core::Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_packing_round_trips_through_candle_dequantize() {
        let data: Vec<f32> = (0..3 * 64)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for dtype in [DType::Q8_0, DType::Q4_0] {
            let q = quantize("w", &data, &[3, 64], dtype).unwrap();
            let words = pack_for_gpu(&q, dtype).unwrap();
            let ours = unpack_from_gpu(&words, data.len(), dtype).unwrap();
            let theirs = quantize_dequantize(&data, &[3, 64], dtype).unwrap();
            assert_eq!(ours, theirs, "{dtype:?}");
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
