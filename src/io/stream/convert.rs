//! Element formats and conversions between them, row by row: what a checkpoint stores
//! ([`SrcType`]), the one form glimpse keeps of each tensor ([`Stored`], also what a GGUF file
//! written by glimpse holds), and the device form a model reads (f32, f16, q8_0, q4_0).
//!
//! Conversions work on whole rows (a row is the last dimension; q8_0/q4_0 blocks run along it),
//! so a tensor can be converted as its bytes arrive.

use crate::error::{Error, Result};
use crate::io::gguf::GgmlType;
use crate::io::weights::{Role, Use};
use crate::tensor::DType;

/// How a source tensor's elements are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrcType {
    F32,
    F16,
    BF16,
    F64,
    Q8_0,
    Q4_0,
}

impl SrcType {
    pub fn name(self) -> &'static str {
        match self {
            SrcType::F32 => "f32",
            SrcType::F16 => "f16",
            SrcType::BF16 => "bf16",
            SrcType::F64 => "f64",
            SrcType::Q8_0 => "q8_0",
            SrcType::Q4_0 => "q4_0",
        }
    }

    /// Bytes of `n` consecutive values (`n` a multiple of 32 for the block formats).
    pub fn bytes(self, n: usize) -> usize {
        match self {
            SrcType::F32 => 4 * n,
            SrcType::F16 | SrcType::BF16 => 2 * n,
            SrcType::F64 => 8 * n,
            SrcType::Q8_0 => n / 32 * 34,
            SrcType::Q4_0 => n / 32 * 18,
        }
    }

    pub fn block(self) -> usize {
        match self {
            SrcType::Q8_0 | SrcType::Q4_0 => 32,
            _ => 1,
        }
    }

    pub fn from_ggml(t: GgmlType) -> SrcType {
        match t {
            GgmlType::F32 => SrcType::F32,
            GgmlType::F16 => SrcType::F16,
            GgmlType::Q8_0 => SrcType::Q8_0,
            GgmlType::Q4_0 => SrcType::Q4_0,
        }
    }

    fn ggml(self) -> Option<GgmlType> {
        match self {
            SrcType::F32 => Some(GgmlType::F32),
            SrcType::F16 => Some(GgmlType::F16),
            SrcType::Q8_0 => Some(GgmlType::Q8_0),
            SrcType::Q4_0 => Some(GgmlType::Q4_0),
            _ => None,
        }
    }
}

/// The form glimpse keeps of one checkpoint tensor: its element type and the model's shape of
/// it (`[N, K]` for Linear weights; transposed from the checkpoint for GPT-2's `Conv1D`).
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub dtype: GgmlType,
    pub shape: Vec<usize>,
    pub transposed: bool,
}

impl Stored {
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1).max(1)
    }
    pub fn rows(&self) -> usize {
        self.numel() / self.cols()
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn row_bytes(&self) -> usize {
        self.dtype.bytes(self.cols())
    }
    pub fn bytes(&self) -> usize {
        self.row_bytes() * self.rows()
    }
}

/// The element type a use reads on its device.
pub fn device_dtype(u: &Use, linear: DType) -> DType {
    match u.role {
        Role::F32 | Role::Scalar => DType::F32,
        // f32 for f32 models; f16 otherwise (half the bytes: GPT-2's table fits a 128 MiB
        // binding, and the gather kernel reads f16)
        Role::Embedding if linear == DType::F32 => DType::F32,
        Role::Embedding => DType::F16,
        Role::Linear => {
            let k = u.shape.last().copied().unwrap_or(1);
            match linear {
                // q8_0/q4_0 need whole 32-value blocks along K; other rows stay f16
                d if d.is_quantized() && k.is_multiple_of(32) => d,
                d if d.is_quantized() => DType::F16,
                d => d,
            }
        }
    }
}

fn ggml_of(d: DType) -> GgmlType {
    match d {
        DType::F16 => GgmlType::F16,
        DType::Q8_0 => GgmlType::Q8_0,
        DType::Q4_0 => GgmlType::Q4_0,
        _ => GgmlType::F32,
    }
}

/// The one stored form of a tensor that `uses` read: a use that needs f32 values wins, then a
/// Linear weight's dtype, then an embedding's (a tied embedding is read back from the Linear's
/// blocks). Every use must see the same shape.
pub fn stored_form(name: &str, uses: &[Use], linear: DType) -> Result<Stored> {
    let first = uses
        .first()
        .ok_or_else(|| Error::Invalid(format!("{name}: no use")))?;
    if let Some(u) = uses
        .iter()
        .find(|u| u.shape != first.shape || u.transposed != first.transposed)
    {
        return Err(Error::Weights(format!(
            "tensor {name} is read as {:?} and as {:?}: glimpse cannot hold one form for both",
            first.shape, u.shape
        )));
    }
    let pick = |role: Role| uses.iter().find(|u| u.role == role);
    let dtype = if pick(Role::F32).or(pick(Role::Scalar)).is_some() {
        GgmlType::F32
    } else if let Some(u) = pick(Role::Linear) {
        ggml_of(device_dtype(u, linear))
    } else {
        ggml_of(device_dtype(first, linear))
    };
    Ok(Stored {
        dtype,
        shape: first.shape.clone(),
        transposed: first.transposed,
    })
}

/// f32 values of `bytes` in `src` (whole blocks for the block formats).
pub fn decode(src: SrcType, bytes: &[u8]) -> Vec<f32> {
    match src {
        SrcType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        SrcType::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        SrcType::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        SrcType::F64 => bytes
            .chunks_exact(8)
            .map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                f64::from_le_bytes(a) as f32
            })
            .collect(),
        SrcType::Q8_0 => crate::tensor::quant::dequantize_ggml(bytes, true),
        SrcType::Q4_0 => crate::tensor::quant::dequantize_ggml(bytes, false),
    }
}

/// Encodes rows of `cols` f32 values as `dtype` (q8_0/q4_0: glimpse's quantizer, ggml's rounding).
pub fn encode(values: &[f32], cols: usize, dtype: GgmlType) -> Result<Vec<u8>> {
    Ok(match dtype {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        GgmlType::Q8_0 | GgmlType::Q4_0 => {
            if !cols.is_multiple_of(32) {
                return Err(Error::Invalid(format!(
                    "rows of {cols} values are not whole 32-value blocks"
                )));
            }
            let d = if dtype == GgmlType::Q8_0 {
                DType::Q8_0
            } else {
                DType::Q4_0
            };
            crate::tensor::quant::quantize_blocks(values, d)?
        }
    })
}

/// Converts whole rows from `src` to `dtype`; the bytes pass through unchanged when the two
/// are the same encoding (a q8_0 GGUF loaded as q8_0 is never requantized).
pub fn convert_rows(src: SrcType, bytes: &[u8], cols: usize, dtype: GgmlType) -> Result<Vec<u8>> {
    if src.ggml() == Some(dtype) {
        return Ok(bytes.to_vec());
    }
    encode(&decode(src, bytes), cols, dtype)
}

/// `[r, c]` -> `[c, r]` of f32 values.
pub fn transpose(v: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut t = vec![0f32; v.len()];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = v[i * c + j];
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_blocks_round_trip_exactly() {
        // quantize, decode, quantize again: the same blocks (loading a q8_0 GGUF as q8_0
        // through f32 would give the file's values back)
        let v: Vec<f32> = (0..4 * 64)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for t in [GgmlType::Q8_0, GgmlType::Q4_0] {
            let a = encode(&v, 64, t).unwrap();
            let b = encode(&decode(SrcType::from_ggml(t), &a), 64, t).unwrap();
            assert_eq!(a, b, "{t:?}");
        }
    }

    #[test]
    fn decode_matches_the_tensor_path() {
        let v: Vec<f32> = (0..2 * 32).map(|i| (i as f32 * 0.37).sin()).collect();
        for (t, d) in [(GgmlType::Q8_0, DType::Q8_0), (GgmlType::Q4_0, DType::Q4_0)] {
            let bytes = encode(&v, 32, t).unwrap();
            let want = crate::tensor::quant::dequantize_blocks(&bytes, d).unwrap();
            assert_eq!(decode(SrcType::from_ggml(t), &bytes), want, "{t:?}");
        }
    }
}
