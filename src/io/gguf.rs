//! Single-file GGUF models: the tensors (f32, f16, q8_0, q4_0) under their Hugging Face names,
//! plus the model folder's JSON files as string metadata, so one file holds a whole model.
//!
//! glimpse writes the tensors as the model holds them (see `io::stream`): Linear weights in the
//! dtype the model was loaded as, embedding tables f16 next to quantized weights, the rest f32,
//! and GPT-2's `Conv1D` weights already transposed into Linear rows (such tensors are listed in
//! [`MODEL_LAYOUT`]), so loading the file converts nothing. Files of other writers load too: any
//! tensor in any of these dtypes is converted to what the model needs.
//!
//! The header is parsed here from a prefix of the file ([`parse_header`] says when it needs more
//! bytes), so a GGUF file can be read as a stream; every length and count is checked against
//! caps before anything is allocated from it.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// Metadata keys of the JSON files a model folder holds.
pub const CONFIG: &str = "glimpse.config_json";
pub const GENERATION_CONFIG: &str = "glimpse.generation_config_json";
pub const PREPROCESSOR_CONFIG: &str = "glimpse.preprocessor_config_json";
pub const TOKENIZER: &str = "glimpse.tokenizer_json";
/// The chat template of an instruction model (the key llama.cpp and the GGUF spec use).
pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";
/// Names (one per line) of tensors stored in the model's layout rather than the checkpoint's:
/// GPT-2 `Conv1D` weights transposed, patch-embedding convolutions flattened to `[O, C·P·P]`.
pub const MODEL_LAYOUT: &str = "glimpse.model_layout";
/// Where the tensors came from and how they were converted (free text, for people).
pub const SOURCE: &str = "glimpse.source";

const MAGIC: &[u8; 4] = b"GGUF";
const ALIGNMENT: u64 = 32;
/// Caps on what a header may declare before glimpse allocates anything for it.
const MAX_STRING: u64 = 256 << 20;
const MAX_ARRAY: u64 = 1 << 24;
const MAX_COUNT: u64 = 1 << 20;
const MAX_DIMS: u32 = 8;

pub fn is_gguf(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// ggml's tensor types that glimpse reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q8_0,
}

impl GgmlType {
    pub fn code(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q8_0 => 8,
        }
    }

    fn from_code(code: u32, name: &str) -> Result<GgmlType> {
        Ok(match code {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            8 => GgmlType::Q8_0,
            other => {
                return Err(Error::Weights(format!(
                    "GGUF tensor {name} has ggml type {other}; glimpse reads f32 (0), f16 (1), q4_0 (2) and q8_0 (8)"
                )))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "f32",
            GgmlType::F16 => "f16",
            GgmlType::Q4_0 => "q4_0",
            GgmlType::Q8_0 => "q8_0",
        }
    }

    /// Values per block.
    pub fn block(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 => 1,
            GgmlType::Q4_0 | GgmlType::Q8_0 => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q8_0 => 34,
        }
    }

    /// Bytes of `n` values (`n` a multiple of the block).
    pub fn bytes(self, n: usize) -> usize {
        n / self.block() * self.block_bytes()
    }
}

/// One tensor of a GGUF header: shape in row-major order (outermost first), offset from the
/// start of the data section.
#[derive(Debug, Clone)]
pub struct GgufTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: GgmlType,
    pub offset: u64,
}

impl GgufTensor {
    pub fn bytes(&self) -> usize {
        self.dtype.bytes(self.shape.iter().product())
    }
}

/// A parsed header: string metadata (other value types are skipped), tensors, and where the
/// data section starts.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub strings: HashMap<String, String>,
    pub tensors: Vec<GgufTensor>,
    pub data_start: u64,
}

/// A cursor over a prefix of the file: `Ok(None)` from a read means "needs more bytes".
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
    /// strings are read (UTF-8 checked and copied); otherwise only skipped
    copy: bool,
}

/// Either a value, "need more bytes" or an error.
type Step<T> = Result<Option<T>>;

macro_rules! need {
    ($e:expr) => {
        match $e? {
            Some(v) => v,
            None => return Ok(None),
        }
    };
}

impl Cursor<'_> {
    fn take(&mut self, n: u64) -> Step<&[u8]> {
        let n =
            usize::try_from(n).map_err(|_| Error::Weights("GGUF: a length overflows".into()))?;
        if self.b.len() - self.at < n {
            return Ok(None);
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(Some(s))
    }
    fn u32(&mut self) -> Step<u32> {
        Ok(self
            .take(4)?
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]])))
    }
    fn u64(&mut self) -> Step<u64> {
        Ok(self.take(8)?.map(|s| {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_le_bytes(a)
        }))
    }
    fn string(&mut self, what: &str) -> Step<String> {
        let len = need!(self.u64());
        if len > MAX_STRING {
            return Err(Error::Weights(format!(
                "GGUF: {what} declares a string of {len} bytes (more than glimpse's cap of {MAX_STRING}): the file is damaged"
            )));
        }
        let copy = self.copy;
        let s = need!(self.take(len));
        if !copy {
            return Ok(Some(String::new()));
        }
        String::from_utf8(s.to_vec())
            .map(Some)
            .map_err(|_| Error::Weights(format!("GGUF: {what} is not UTF-8")))
    }

    /// Skips or reads one metadata value of `ty`; returns it when it is a string.
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Step<Option<String>> {
        let fixed = match ty {
            0 | 1 | 7 => 1, // u8, i8, bool
            2 | 3 => 2,     // u16, i16
            4..=6 => 4,     // u32, i32, f32
            10..=12 => 8,   // u64, i64, f64
            8 => return Ok(self.string(key)?.map(Some)),
            9 => {
                if depth > 2 {
                    return Err(Error::Weights(format!(
                        "GGUF: metadata {key} nests arrays too deeply"
                    )));
                }
                let elem = need!(self.u32());
                let n = need!(self.u64());
                if n > MAX_ARRAY {
                    return Err(Error::Weights(format!(
                        "GGUF: metadata {key} declares an array of {n} elements (cap {MAX_ARRAY}): the file is damaged"
                    )));
                }
                for _ in 0..n {
                    need!(self.value(elem, key, depth + 1));
                }
                return Ok(Some(None));
            }
            other => {
                return Err(Error::Weights(format!(
                    "GGUF: metadata {key} has unknown value type {other}: the file is damaged or not GGUF"
                )))
            }
        };
        need!(self.take(fixed));
        Ok(Some(None))
    }
}

/// Parses the header from the first bytes of a GGUF file; `Ok(None)` while the prefix is too
/// short. Tensors must lie inside `file_len` when the length is known.
pub fn parse_header(prefix: &[u8], file_len: Option<u64>) -> Result<Option<GgufHeader>> {
    // The loader asks again after every chunk until the header is complete: a first pass that
    // copies no string answers "more" at a cost per entry, not per byte (copying every string
    // at every chunk made a header of many strings quadratic in its size). Its errors are left
    // to the full pass, which names what is wrong.
    if let Ok(None) = parse(prefix, file_len, false) {
        return Ok(None);
    }
    parse(prefix, file_len, true)
}

fn parse(prefix: &[u8], file_len: Option<u64>, copy: bool) -> Result<Option<GgufHeader>> {
    if prefix.len() >= 4 && !is_gguf(prefix) {
        return Err(Error::Weights(
            "not a GGUF file (it does not start with \"GGUF\")".into(),
        ));
    }
    let mut c = Cursor {
        b: prefix,
        at: 0,
        copy,
    };
    need!(c.take(4));
    let version = need!(c.u32());
    if !(2..=3).contains(&version) {
        return Err(Error::Weights(format!(
            "GGUF version {version} is not supported (glimpse reads versions 2 and 3)"
        )));
    }
    let n_tensors = need!(c.u64());
    let n_kv = need!(c.u64());
    if n_tensors > MAX_COUNT || n_kv > MAX_COUNT {
        return Err(Error::Weights(format!(
            "GGUF header declares {n_tensors} tensors and {n_kv} metadata entries (cap {MAX_COUNT}): the file is damaged"
        )));
    }
    let mut strings = HashMap::new();
    let mut alignment = ALIGNMENT;
    for _ in 0..n_kv {
        let key = need!(c.string("a metadata key"));
        let ty = need!(c.u32());
        let at = c.at;
        let v = need!(c.value(ty, &key, 0));
        if key == "general.alignment" {
            let raw = &prefix[at..c.at];
            alignment = match (ty, raw.len()) {
                (4 | 5, 4) => u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as u64,
                _ => {
                    return Err(Error::Weights(
                        "GGUF: general.alignment must be a 32-bit integer".into(),
                    ))
                }
            };
            if alignment == 0 || !alignment.is_power_of_two() || alignment > 1 << 16 {
                return Err(Error::Weights(format!(
                    "GGUF: general.alignment = {alignment} is not a power of two up to 65536"
                )));
            }
        }
        if let Some(s) = v {
            strings.insert(key, s);
        }
    }
    // a tensor record takes at least 24 bytes (name length, dims, type, offset): the count
    // reserves no more than the bytes at hand can hold (a 24-byte lie must not reserve 64 MB)
    let mut tensors = Vec::with_capacity((n_tensors as usize).min((prefix.len() - c.at) / 24));
    for _ in 0..n_tensors {
        let name = need!(c.string("a tensor name"));
        let n_dims = need!(c.u32());
        if n_dims > MAX_DIMS {
            return Err(Error::Weights(format!(
                "GGUF tensor {name} has {n_dims} dimensions (at most {MAX_DIMS})"
            )));
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = need!(c.u64());
            shape.push(usize::try_from(d).map_err(|_| {
                Error::Weights(format!("GGUF tensor {name}: dimension {d} overflows"))
            })?);
        }
        shape.reverse(); // ggml lists the innermost dimension first
        let dtype = GgmlType::from_code(need!(c.u32()), &name)?;
        let offset = need!(c.u64());
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| {
                Error::Weights(format!("GGUF tensor {name}: shape {shape:?} overflows"))
            })?;
        if numel.checked_mul(dtype.block_bytes()).is_none() {
            return Err(Error::Weights(format!(
                "GGUF tensor {name}: shape {shape:?} is larger than any file: the file is damaged"
            )));
        }
        if numel % dtype.block() != 0 || shape.last().is_some_and(|k| k % dtype.block() != 0) {
            return Err(Error::Weights(format!(
                "GGUF tensor {name}: shape {shape:?} is not whole {}-value blocks of {}",
                dtype.block(),
                dtype.name()
            )));
        }
        if offset % alignment != 0 {
            return Err(Error::Weights(format!(
                "GGUF tensor {name}: offset {offset} is not aligned to {alignment} bytes"
            )));
        }
        tensors.push(GgufTensor {
            name,
            shape,
            dtype,
            offset,
        });
    }
    let data_start = (c.at as u64).div_ceil(alignment) * alignment;
    for t in &tensors {
        // the loader reads bytes [data_start + offset, + bytes) of the file: that must exist
        let end = data_start
            .checked_add(t.offset)
            .and_then(|a| a.checked_add(t.bytes() as u64));
        match (end, file_len) {
            (None, _) => {
                return Err(Error::Weights(format!(
                    "GGUF tensor {}: offset {} lies past any file: the file is damaged",
                    t.name, t.offset
                )))
            }
            (Some(end), Some(len)) if end > len => {
                return Err(Error::Weights(format!(
                    "GGUF tensor {} ends at byte {end}, past the end of the file ({len} bytes): the file is truncated",
                    t.name
                )))
            }
            _ => {}
        }
    }
    Ok(Some(GgufHeader {
        strings,
        tensors,
        data_start,
    }))
}

/// The layout of a GGUF file being written: header bytes are known as soon as the tensor list
/// is (offsets are fixed-width), so data can be written first, in any order, and the header
/// last ([`GgufLayout::header`]).
pub struct GgufLayout {
    strings: Vec<(String, String)>,
    tensors: Vec<GgufTensor>,
    index: HashMap<String, usize>,
    data_start: u64,
    next: u64,
}

fn string_bytes(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl GgufLayout {
    /// `tensors`: (name, shape, dtype); offsets are given out by [`GgufLayout::place`].
    pub fn new(
        strings: Vec<(String, String)>,
        tensors: Vec<(String, Vec<usize>, GgmlType)>,
    ) -> GgufLayout {
        let tensors: Vec<GgufTensor> = tensors
            .into_iter()
            .map(|(name, shape, dtype)| GgufTensor {
                name,
                shape,
                dtype,
                offset: 0,
            })
            .collect();
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let mut layout = GgufLayout {
            strings,
            tensors,
            index,
            data_start: 0,
            next: 0,
        };
        layout.data_start = (layout.header_bytes().len() as u64).div_ceil(ALIGNMENT) * ALIGNMENT;
        layout
    }

    fn header_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(MAGIC);
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.strings.len() as u64 + 1).to_le_bytes());
        string_bytes(&mut out, "general.alignment");
        out.extend(4u32.to_le_bytes());
        out.extend((ALIGNMENT as u32).to_le_bytes());
        for (k, v) in &self.strings {
            string_bytes(&mut out, k);
            out.extend(8u32.to_le_bytes());
            string_bytes(&mut out, v);
        }
        for t in &self.tensors {
            string_bytes(&mut out, &t.name);
            out.extend((t.shape.len() as u32).to_le_bytes());
            for &d in t.shape.iter().rev() {
                out.extend((d as u64).to_le_bytes());
            }
            out.extend(t.dtype.code().to_le_bytes());
            out.extend(t.offset.to_le_bytes());
        }
        out
    }

    /// Reserves the data of tensor `name`; returns its absolute file offset.
    pub fn place(&mut self, name: &str) -> Result<u64> {
        let i = *self
            .index
            .get(name)
            .ok_or_else(|| Error::Invalid(format!("GGUF output has no tensor {name}")))?;
        let t = &mut self.tensors[i];
        t.offset = self.next;
        self.next = (self.next + t.bytes() as u64).div_ceil(ALIGNMENT) * ALIGNMENT;
        Ok(self.data_start + t.offset)
    }

    /// The header with every offset placed, padded to where the data starts.
    pub fn header(&self) -> Vec<u8> {
        let mut h = self.header_bytes();
        h.resize(self.data_start as usize, 0);
        h
    }

    /// The size of the whole file once every tensor is placed.
    pub fn file_len(&self) -> u64 {
        self.data_start + self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_header_parses_back_and_prefixes_ask_for_more() {
        let mut l = GgufLayout::new(
            vec![("glimpse.config_json".into(), "{\"a\": 1}".into())],
            vec![
                ("w".into(), vec![3, 64], GgmlType::Q8_0),
                ("b".into(), vec![5], GgmlType::F32),
            ],
        );
        let b_at = l.place("b").unwrap();
        let w_at = l.place("w").unwrap();
        assert_eq!(b_at % 32, 0);
        assert_eq!(w_at, b_at + 32);
        let mut file = l.header();
        file.resize(l.file_len() as usize, 0);
        let h = parse_header(&file, Some(file.len() as u64))
            .unwrap()
            .unwrap();
        assert_eq!(h.data_start, l.data_start);
        assert_eq!(h.strings["glimpse.config_json"], "{\"a\": 1}");
        let w = h.tensors.iter().find(|t| t.name == "w").unwrap();
        assert_eq!(
            (w.shape.clone(), w.dtype, w.offset),
            (vec![3, 64], GgmlType::Q8_0, 32)
        );
        for cut in [0, 3, 10, 30, l.data_start as usize - 40] {
            assert!(parse_header(&file[..cut], None).unwrap().is_none(), "{cut}");
        }
        let err = parse_header(&file[..l.data_start as usize], Some(l.data_start + 10))
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn lying_headers_are_refused_before_allocating() {
        let mut b = Vec::new();
        b.extend(MAGIC);
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend((8u64 << 30).to_le_bytes()); // an 8 GiB key
        let err = parse_header(&b, None).unwrap_err().to_string();
        assert!(err.contains("cap"), "{err}");
        let mut b = Vec::new();
        b.extend(MAGIC);
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        string_bytes(&mut b, "general.alignment");
        b.extend(4u32.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        let err = parse_header(&b, None).unwrap_err().to_string();
        assert!(err.contains("alignment"), "{err}");
    }
}
