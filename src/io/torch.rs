//! `pytorch_model.bin`: PyTorch's zip of pickles (torch ≥ 1.6). The archive holds
//! `<dir>/data.pkl` (the state dict: for each tensor its storage key, dtype, offset, shape and
//! strides) and one stored (uncompressed) entry `<dir>/data/<key>` per storage.
//!
//! The zip is read two ways, both without holding the file: its central directory (at the end of
//! the file, [`parse_directory`]) when the caller can fetch the tail first (an HTTP Range request
//! or `File.slice` in the browser, a seek natively), and its local headers in order
//! ([`parse_local_header`]) as the bytes stream by. The pickle is read by candle's pickle VM.
//! [`TorchWriter`] writes the same format (the tests make real-size checkpoints with it).

use std::io::Write;

use crate::error::{Error, Result};

const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;
const EOCD64_SIG: u32 = 0x0606_4b50;
const EOCD64_LOCATOR_SIG: u32 = 0x0706_4b50;
/// Caps on what a zip or pickle may declare before glimpse allocates for it.
const MAX_NAME: usize = 4096;
pub const MAX_PICKLE: u64 = 256 << 20;

fn err(msg: impl Into<String>) -> Error {
    Error::Weights(format!("pytorch_model.bin: {}", msg.into()))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Why a file that should be a PyTorch zip is not one, from its first bytes.
pub fn check_magic(first: &[u8]) -> Result<()> {
    if first.len() >= 4 && u32_at(first, 0) == LOCAL_SIG {
        return Ok(());
    }
    if first.first() == Some(&0x80) {
        return Err(err(
            "this file uses PyTorch's legacy (pre-1.6) format; glimpse reads the zip format that torch.save writes since 2020 (or model.safetensors)",
        ));
    }
    Err(err(
        "not a PyTorch checkpoint (a zip archive was expected; the file may be an HTML error page or damaged)",
    ))
}

/// One entry of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipEntry {
    pub name: String,
    /// Where the entry's local header starts.
    pub local_offset: u64,
    pub size: u64,
    /// 0 = stored; PyTorch never compresses.
    pub method: u16,
}

/// What the tail of the file says: the central directory, or where it starts when the tail
/// fetched was too short to hold it.
#[derive(Debug)]
pub enum Directory {
    /// the entries, and where the central directory starts (the end of the entries' data)
    Entries(Vec<ZipEntry>, u64),
    NeedFrom(u64),
}

/// Reads the end-of-central-directory record and the central directory from the last bytes of
/// the file: `tail` holds bytes `[tail_offset, file_len)`.
pub fn parse_directory(tail: &[u8], tail_offset: u64, file_len: u64) -> Result<Directory> {
    if tail_offset + tail.len() as u64 != file_len {
        return Err(Error::Invalid(
            "the tail of pytorch_model.bin must end at the end of the file".into(),
        ));
    }
    // the EOCD record is 22 bytes plus a comment of at most 65535
    let eocd = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(tail, i) == EOCD_SIG)
        .ok_or_else(|| {
            err("no end of central directory: the file is truncated or not a zip archive")
        })?;
    let mut entries = u16_at(tail, eocd + 10) as u64;
    let mut cd_size = u32_at(tail, eocd + 12) as u64;
    let mut cd_offset = u32_at(tail, eocd + 16) as u64;
    if cd_offset == 0xffff_ffff || entries == 0xffff || cd_size == 0xffff_ffff {
        // zip64: a locator right before the EOCD points at the zip64 EOCD record
        if eocd < 20 || u32_at(tail, eocd - 20) != EOCD64_LOCATOR_SIG {
            return Err(err("zip64 archive without its locator"));
        }
        let rec = u64_at(tail, eocd - 20 + 8);
        if rec < tail_offset {
            return Ok(Directory::NeedFrom(rec));
        }
        let r = (rec - tail_offset) as usize;
        if r + 56 > tail.len() || u32_at(tail, r) != EOCD64_SIG {
            return Err(err("damaged zip64 end of central directory"));
        }
        entries = u64_at(tail, r + 32);
        cd_size = u64_at(tail, r + 40);
        cd_offset = u64_at(tail, r + 48);
    }
    if cd_offset.saturating_add(cd_size) > file_len {
        return Err(err(format!(
            "the central directory ({cd_size} bytes at {cd_offset}) lies past the end of the file ({file_len} bytes): the file is truncated"
        )));
    }
    if cd_offset < tail_offset {
        return Ok(Directory::NeedFrom(cd_offset));
    }
    let cd = &tail[(cd_offset - tail_offset) as usize..];
    let mut out = Vec::new();
    let mut at = 0usize;
    for _ in 0..entries {
        if at + 46 > cd.len() || u32_at(cd, at) != CENTRAL_SIG {
            return Err(err("damaged central directory"));
        }
        let method = u16_at(cd, at + 10);
        let mut csize = u32_at(cd, at + 20) as u64;
        let usize_ = u32_at(cd, at + 24) as u64;
        let (n, m, k) = (
            u16_at(cd, at + 28) as usize,
            u16_at(cd, at + 30) as usize,
            u16_at(cd, at + 32) as usize,
        );
        let mut local = u32_at(cd, at + 42) as u64;
        if at + 46 + n + m + k > cd.len() {
            return Err(err("damaged central directory"));
        }
        let name = String::from_utf8_lossy(&cd[at + 46..at + 46 + n]).into_owned();
        let extra = &cd[at + 46 + n..at + 46 + n + m];
        if csize == 0xffff_ffff || local == 0xffff_ffff || usize_ == 0xffff_ffff {
            // zip64 extra field: the 8-byte values that overflowed, in order usize, csize, offset
            let z =
                zip64_extra(extra).ok_or_else(|| err(format!("{name}: zip64 sizes missing")))?;
            let mut vals = z.chunks_exact(8).map(|c| u64_at(c, 0));
            if usize_ == 0xffff_ffff {
                vals.next();
            }
            if csize == 0xffff_ffff {
                csize = vals.next().ok_or_else(|| err("damaged zip64 field"))?;
            }
            if local == 0xffff_ffff {
                local = vals.next().ok_or_else(|| err("damaged zip64 field"))?;
            }
        }
        if local.saturating_add(csize) > file_len {
            return Err(err(format!(
                "entry {name} ({csize} bytes at {local}) lies past the end of the file: the file is truncated"
            )));
        }
        out.push(ZipEntry {
            name,
            local_offset: local,
            size: csize,
            method,
        });
        at += 46 + n + m + k;
    }
    Ok(Directory::Entries(out, cd_offset))
}

fn zip64_extra(extra: &[u8]) -> Option<&[u8]> {
    let mut at = 0;
    while at + 4 <= extra.len() {
        let (id, len) = (u16_at(extra, at), u16_at(extra, at + 2) as usize);
        if at + 4 + len > extra.len() {
            return None;
        }
        if id == 1 {
            return Some(&extra[at + 4..at + 4 + len]);
        }
        at += 4 + len;
    }
    None
}

/// A local file header read from the stream: its entry, and how many bytes the header took.
#[derive(Debug)]
pub struct LocalHeader {
    pub name: String,
    /// `None` when the size follows the data (a data descriptor), as torch.save writes it
    pub size: Option<u64>,
    pub method: u16,
    pub header_len: usize,
}

/// What comes next in the archive's byte stream.
#[derive(Debug)]
pub enum Next {
    /// A local file header (its data follows).
    Entry(LocalHeader),
    /// The central directory: no more data.
    End,
    /// More bytes are needed to tell.
    More,
}

/// Parses the record at the start of `b` (a local header, or the start of the central
/// directory).
pub fn parse_local_header(b: &[u8]) -> Result<Next> {
    if b.len() < 4 {
        return Ok(Next::More);
    }
    match u32_at(b, 0) {
        CENTRAL_SIG | EOCD_SIG | EOCD64_SIG => return Ok(Next::End),
        LOCAL_SIG => {}
        _ => return Err(err("damaged archive (expected a zip entry)")),
    }
    if b.len() < 30 {
        return Ok(Next::More);
    }
    let flags = u16_at(b, 6);
    let method = u16_at(b, 8);
    let mut size = u32_at(b, 18) as u64;
    let (n, m) = (u16_at(b, 26) as usize, u16_at(b, 28) as usize);
    if n > MAX_NAME {
        return Err(err("damaged archive (an entry name is too long)"));
    }
    if b.len() < 30 + n + m {
        return Ok(Next::More);
    }
    let name = String::from_utf8_lossy(&b[30..30 + n]).into_owned();
    if size == 0xffff_ffff {
        let z = zip64_extra(&b[30 + n..30 + n + m])
            .ok_or_else(|| err(format!("{name}: zip64 sizes missing")))?;
        // local zip64 extra: usize then csize
        if z.len() < 16 {
            return Err(err(format!("{name}: damaged zip64 field")));
        }
        size = u64_at(z, 8);
    }
    Ok(Next::Entry(LocalHeader {
        name,
        // torch.save writes sizes after the data (flag bit 3): the central directory has them
        size: if flags & 0x8 != 0 && size == 0 {
            None
        } else {
            Some(size)
        },
        method,
        header_len: 30 + n + m,
    }))
}

/// Element types of PyTorch storages glimpse reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchDType {
    F32,
    F16,
    BF16,
    F64,
    /// integer buffers (e.g. `position_ids`); never a weight
    Other(usize),
}

impl TorchDType {
    pub fn size(self) -> usize {
        match self {
            TorchDType::F32 => 4,
            TorchDType::F16 | TorchDType::BF16 => 2,
            TorchDType::F64 => 8,
            TorchDType::Other(s) => s,
        }
    }
}

/// One tensor of the state dict: a view into a storage.
#[derive(Debug, Clone)]
pub struct TorchTensor {
    pub name: String,
    pub dtype: TorchDType,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
    /// element offset into the storage
    pub offset: usize,
    /// the storage's zip entry, e.g. `archive/data/3`
    pub storage: String,
}

impl TorchTensor {
    pub fn numel(&self) -> usize {
        self.shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .unwrap_or(usize::MAX)
    }

    pub fn is_contiguous(&self) -> bool {
        let mut expect = 1;
        for (d, s) in self.shape.iter().zip(&self.strides).rev() {
            if *d != 1 && *s != expect {
                return false;
            }
            expect *= d;
        }
        true
    }

    /// [`TorchTensor::byte_range`] with every step checked; `None` if it overflows.
    fn checked_range(&self) -> Option<(u64, u64)> {
        let e = self.dtype.size() as u64;
        let numel = self
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))?;
        let last = self
            .shape
            .iter()
            .zip(&self.strides)
            .try_fold(0usize, |a, (d, s)| {
                a.checked_add(d.saturating_sub(1).checked_mul(*s)?)
            })?;
        let start = (self.offset as u64).checked_mul(e)?;
        let end = if numel == 0 {
            start
        } else {
            (self.offset.checked_add(last)?.checked_add(1)? as u64).checked_mul(e)?
        };
        numel.checked_mul(self.dtype.size())?;
        Some((start, end))
    }

    /// The byte range of the storage this tensor reads: `[start, end)`. Tensors from
    /// [`parse_pickle`] are checked not to overflow; for others an overflow is a range past any
    /// storage.
    pub fn byte_range(&self) -> (u64, u64) {
        self.checked_range().unwrap_or((u64::MAX, u64::MAX))
    }

    /// Gathers the tensor's elements (row-major) from the bytes of its byte range.
    pub fn gather(&self, range_bytes: &[u8]) -> Vec<u8> {
        let e = self.dtype.size();
        let mut out = Vec::with_capacity(self.numel() * e);
        let rank = self.shape.len();
        let mut idx = vec![0usize; rank];
        for _ in 0..self.numel() {
            let at: usize = idx.iter().zip(&self.strides).map(|(i, s)| i * s).sum();
            out.extend_from_slice(&range_bytes[at * e..at * e + e]);
            for d in (0..rank).rev() {
                idx[d] += 1;
                if idx[d] < self.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        out
    }
}

/// The tensors of a state dict, from the bytes of `<dir>/data.pkl` (`dir` is the entry's folder,
/// e.g. `archive`). Values that are not tensors are skipped, as are tensors of storages glimpse
/// does not know; a tensor whose shape, strides or offset reach past any file is an error.
pub fn parse_pickle(pkl: &[u8], dir: &str) -> Result<Vec<TorchTensor>> {
    let obj = crate::io::pickle::load(pkl)?;
    // a whole saved object ({"state_dict": …} or {"model": …}) is searched one level down
    let dict = obj
        .as_dict()
        .ok_or_else(|| err("data.pkl holds no state dict (a dict of tensors)"))?;
    let mut out = Vec::new();
    let mut nested = Vec::new();
    for (k, v) in dict {
        let Some(name) = k.as_str() else { continue };
        match v.as_dict() {
            Some(inner) => nested.push(inner),
            None => out.extend(tensor_of(name, v, dir)?),
        }
    }
    if out.is_empty() {
        for inner in nested {
            for (k, v) in inner {
                if let Some(name) = k.as_str() {
                    out.extend(tensor_of(name, v, dir)?);
                }
            }
        }
    }
    Ok(out)
}

/// The element size of a storage class (`torch.FloatStorage` …).
fn storage_dtype(class: &str) -> Option<TorchDType> {
    Some(match class {
        "FloatStorage" => TorchDType::F32,
        "HalfStorage" => TorchDType::F16,
        "BFloat16Storage" => TorchDType::BF16,
        "DoubleStorage" => TorchDType::F64,
        "LongStorage" => TorchDType::Other(8),
        "IntStorage" => TorchDType::Other(4),
        "ShortStorage" => TorchDType::Other(2),
        "CharStorage" | "ByteStorage" | "BoolStorage" => TorchDType::Other(1),
        _ => return None,
    })
}

/// A tensor of the state dict: `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
/// …)`, possibly inside `_rebuild_parameter` or `_rebuild_from_type_v2`. `None` for anything
/// else.
fn tensor_of(name: &str, v: &crate::io::pickle::Value, dir: &str) -> Result<Option<TorchTensor>> {
    use crate::io::pickle::Value;
    let mut v = v;
    // each unwrapping goes one level down a value of bounded depth
    let args = loop {
        let Some((f, args)) = v.as_call() else {
            return Ok(None);
        };
        let args = args.as_tuple().unwrap_or_default();
        match f.as_global() {
            Some(("torch._utils", "_rebuild_tensor_v2")) => break args,
            Some(("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state")) => {
                let Some(inner) = args.first() else {
                    return Ok(None);
                };
                v = inner;
            }
            // (function, type, args, state): the tensor is function(*args)
            Some(("torch._tensor", "_rebuild_from_type_v2")) => match args {
                [f, _, a, ..] => {
                    let call = Value::Call(std::rc::Rc::new(crate::io::pickle::Node::pair(
                        f.clone(),
                        a.clone(),
                    )));
                    return tensor_of(name, &call, dir);
                }
                _ => return Ok(None),
            },
            _ => return Ok(None),
        }
    };
    let [storage, offset, size, stride, ..] = args else {
        return Ok(None);
    };
    // the persistent id: ('storage', storage class, key, location, numel)
    let Some(id) = storage.as_persistent().and_then(Value::as_tuple) else {
        return Ok(None);
    };
    let (Some((_, class)), Some(key)) = (
        id.get(1).and_then(Value::as_global),
        id.get(2).and_then(Value::as_str),
    ) else {
        return Ok(None);
    };
    let Some(dtype) = storage_dtype(class) else {
        return Ok(None);
    };
    let damaged = |what: &str| err(format!("tensor {name}: {what}: the file is damaged"));
    let uints = |v: &Value, what: &str| -> Result<Vec<usize>> {
        v.as_tuple()
            .ok_or_else(|| damaged(&format!("its {what} is not a tuple")))?
            .iter()
            .map(|d| match d {
                Value::Int(i) => usize::try_from(*i).ok(),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| damaged(&format!("its {what} holds a value that is not a size")))
    };
    let shape = uints(size, "size")?;
    let strides = uints(stride, "stride")?;
    let offset = match offset {
        Value::Int(i) => usize::try_from(*i).map_err(|_| damaged("a negative storage offset"))?,
        _ => return Err(damaged("its storage offset is not an integer")),
    };
    if shape.len() != strides.len() {
        return Err(damaged("its size and stride differ in length"));
    }
    let t = TorchTensor {
        name: name.to_string(),
        dtype,
        shape,
        strides,
        offset,
        storage: format!("{dir}/data/{key}"),
    };
    // every later computation (numel, byte range, gather) stays within u64 / usize
    t.checked_range()
        .ok_or_else(|| damaged("its size, stride and offset reach past any file"))?;
    Ok(Some(t))
}

/// The folder of an archive's `data.pkl` (`archive/data.pkl` -> `archive`).
pub fn pickle_dir(entry: &str) -> Option<&str> {
    entry.strip_suffix("/data.pkl")
}

/// Writes a state dict as `torch.save` does: `archive/data.pkl` (pickle protocol 2, an
/// OrderedDict of `torch._utils._rebuild_tensor_v2` calls), `archive/byteorder`, one stored
/// entry per tensor `archive/data/<i>` aligned to 64 bytes, `archive/version`. Tensors are
/// added one at a time so a multi-GB checkpoint never sits in memory.
pub struct TorchWriter<W: Write + std::io::Seek> {
    zip: zip::ZipWriter<W>,
    next: usize,
}

/// The pickle of a state dict whose tensor `i` (f32 or f16, contiguous) is storage `i`.
pub fn state_dict_pickle(tensors: &[(String, Vec<usize>, TorchDType)]) -> Vec<u8> {
    fn unicode(p: &mut Vec<u8>, s: &str) {
        p.push(b'X');
        p.extend((s.len() as u32).to_le_bytes());
        p.extend(s.as_bytes());
    }
    fn int(p: &mut Vec<u8>, v: usize) {
        if v < 256 {
            p.extend([b'K', v as u8]);
        } else if v < (1 << 31) {
            p.push(b'J');
            p.extend((v as u32).to_le_bytes());
        } else {
            p.extend([0x8a, 8]);
            p.extend((v as u64).to_le_bytes());
        }
    }
    let mut p = vec![0x80, 2];
    p.extend(b"ccollections\nOrderedDict\n)R(");
    for (i, (name, shape, dtype)) in tensors.iter().enumerate() {
        unicode(&mut p, name);
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        // persistent id: ('storage', storage_type, key, location, numel)
        p.push(b'(');
        unicode(&mut p, "storage");
        let class = match dtype {
            TorchDType::F16 => "HalfStorage",
            _ => "FloatStorage",
        };
        p.extend(format!("ctorch\n{class}\n").as_bytes());
        unicode(&mut p, &i.to_string());
        unicode(&mut p, "cpu");
        int(&mut p, shape.iter().product());
        p.extend(b"tQ");
        int(&mut p, 0); // storage offset
        p.push(b'(');
        for &d in shape {
            int(&mut p, d);
        }
        p.push(b't');
        p.push(b'(');
        let mut stride = 1;
        let mut strides = vec![0; shape.len()];
        for (s, &d) in strides.iter_mut().zip(shape).rev() {
            *s = stride;
            stride *= d;
        }
        for s in strides {
            int(&mut p, s);
        }
        p.push(b't');
        p.push(0x89); // requires_grad = False
        p.extend(b"ccollections\nOrderedDict\n)R"); // backward hooks
        p.extend(b"tR");
    }
    p.extend(b"u.");
    p
}

impl<W: Write + std::io::Seek> TorchWriter<W> {
    /// Starts the archive with its pickle; `tensors` are then written in this order.
    pub fn new(out: W, tensors: &[(String, Vec<usize>, TorchDType)]) -> Result<TorchWriter<W>> {
        let mut zip = zip::ZipWriter::new(out);
        let e = |e: zip::result::ZipError| Error::Weights(format!("writing the zip: {e}"));
        let io = |e: std::io::Error| Error::Weights(format!("writing the zip: {e}"));
        let opts = || {
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored)
                .large_file(true)
        };
        zip.start_file("archive/data.pkl", opts()).map_err(e)?;
        zip.write_all(&state_dict_pickle(tensors)).map_err(io)?;
        zip.start_file("archive/byteorder", opts()).map_err(e)?;
        zip.write_all(b"little").map_err(io)?;
        Ok(TorchWriter { zip, next: 0 })
    }

    /// Writes the next tensor's bytes (little-endian, row-major).
    pub fn tensor(&mut self, bytes: &[u8]) -> Result<()> {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .with_alignment(64)
            .large_file(bytes.len() as u64 >= 0xffff_ffff);
        self.zip
            .start_file(format!("archive/data/{}", self.next), opts)
            .map_err(|e| Error::Weights(format!("writing the zip: {e}")))?;
        self.zip
            .write_all(bytes)
            .map_err(|e| Error::Weights(format!("writing the zip: {e}")))?;
        self.next += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<W> {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        let e = |e: zip::result::ZipError| Error::Weights(format!("writing the zip: {e}"));
        self.zip.start_file("archive/version", opts).map_err(e)?;
        self.zip
            .write_all(b"3\n")
            .map_err(|e| Error::Weights(format!("writing the zip: {e}")))?;
        self.zip.finish().map_err(e)
    }
}
