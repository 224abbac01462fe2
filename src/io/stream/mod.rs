//! Streaming load: a checkpoint is read once, front to back, and every tensor goes to its
//! destination (a GPU buffer or a CPU tensor) as its bytes arrive, converted on the way to the
//! form the model holds; nothing keeps a second copy of the file. The same path serves the
//! browser (fetch body or `File.stream()` chunks pushed from JS), the CLI (file reads) and
//! in-memory bytes (tests).
//!
//! 1. The metadata is parsed and checked first (by the caller: `pipeline::ModelSpec`).
//! 2. Once the checkpoint's tensor names are known (a safetensors or GGUF header, a sharded
//!    index, or the state dict pickle of a `pytorch_model.bin`), the model's constructor runs
//!    against a *plan* (`io::weights`) that records what it needs of every tensor. Missing
//!    tensors and wrong shapes are reported here, before the data.
//! 3. Data bytes are routed to per-tensor jobs, which convert whole rows as they complete
//!    ([`convert`]) and write them to their builders ([`builder`]) and, when asked, to a GGUF
//!    file being written ([`crate::io::gguf::GgufLayout`]) — "quantize once, keep it".
//! 4. When every file has ended, the constructor runs again over the finished tensors.

pub mod builder;
pub mod convert;

use std::collections::{HashMap, HashSet};

use sha2::Digest;

use self::builder::Builder;
use self::convert::{convert_rows, decode, encode, stored_form, transpose, SrcType, Stored};
use crate::error::{Error, Result};
use crate::io::gguf::{self, GgufLayout};
use crate::io::torch::{self, TorchDType, TorchTensor};
use crate::io::weights::{Ready, Use, Vb, Weights};
use crate::tensor::{DType, Device, Tensor};

/// What a load builds: a model from a [`Vb`] (called twice: plan, then build).
pub trait ModelSource: Sized {
    type Model;
    fn build(&self, vb: &Vb) -> Result<Self::Model>;
    /// The metadata a GGUF file of this model carries (config and tokenizer JSON …).
    fn gguf_metadata(&self) -> Result<Vec<(String, String)>> {
        Ok(Vec::new())
    }
    /// The model described by a GGUF file's metadata (a `.gguf` loads without other files).
    fn from_gguf(_strings: &HashMap<String, String>) -> Result<Self> {
        Err(Error::Invalid(
            "this load does not read models from GGUF metadata".into(),
        ))
    }
}

/// A model constructor as a [`ModelSource`] (tests and benchmarks build single models).
pub struct FnSource<F>(pub F);

impl<M, F: Fn(&Vb) -> Result<M>> ModelSource for FnSource<F> {
    type Model = M;
    fn build(&self, vb: &Vb) -> Result<M> {
        (self.0)(vb)
    }
}

/// One weight file of a checkpoint, as the caller will push it.
#[derive(Debug, Clone)]
pub struct WeightFile {
    pub name: String,
    /// its length when known (a Content-Length, a File's size): checked at the end
    pub len: Option<u64>,
    /// the expected sha256 (lowercase hex), checked at the end when given
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Safetensors,
    Torch,
    Gguf,
}

fn format_of(name: &str) -> Result<Format> {
    if name.ends_with(".safetensors") {
        Ok(Format::Safetensors)
    } else if name.ends_with(".bin") || name.ends_with(".pt") || name.ends_with(".pth") {
        Ok(Format::Torch)
    } else if name.ends_with(".gguf") {
        Ok(Format::Gguf)
    } else {
        Err(Error::Invalid(format!(
            "{name}: glimpse reads model weights from .safetensors, pytorch_model.bin or .gguf files"
        )))
    }
}

/// Where a source tensor's bytes are.
#[derive(Debug, Clone)]
enum Loc {
    /// `[start, end)` of its file
    Range(u64, u64),
    /// a view into a storage of a PyTorch zip
    Torch(TorchTensor),
    /// named by a sharded index; its shard's header has not arrived yet
    Pending,
}

#[derive(Debug, Clone)]
struct Source {
    file: usize,
    /// `None`: a dtype glimpse does not read (an error only if the model asks for it)
    dtype: Option<SrcType>,
    dtype_name: String,
    shape: Option<Vec<usize>>,
    loc: Loc,
}

/// Per-file parse state.
enum FileState {
    /// Bytes of the header, until it parses.
    Header(Vec<u8>),
    /// Header parsed; data flows to the regions.
    Data,
    /// A PyTorch zip: where the current entry's data ends, where the next record starts (after
    /// a data descriptor), the bytes of the next record's header so far, `data.pkl` being read,
    /// and whether the central directory (the end of the data) was reached.
    Zip {
        next: u64,
        resume: u64,
        head: Vec<u8>,
        pickle: Option<(Vec<u8>, String)>,
        ended: bool,
    },
}

/// A byte range of the current file that belongs to a tensor.
struct Region {
    start: u64,
    end: u64,
    name: String,
}

/// A tensor being received.
struct Job {
    src: SrcType,
    stored: Stored,
    /// rows are converted as they complete; otherwise the whole tensor is buffered (it must be
    /// transposed or gathered first)
    by_rows: bool,
    torch: Option<TorchTensor>,
    source_shape: Vec<usize>,
    buf: Vec<u8>,
    next_row: usize,
    received: u64,
    total: u64,
    builders: Vec<(Use, Builder)>,
    gguf_at: Option<u64>,
}

/// Counters of a finished load.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadStats {
    /// weight bytes read
    pub bytes: u64,
    /// values of the tensors the model holds
    pub params: u64,
    pub tensors: usize,
    /// size of the GGUF file written (0 if none)
    pub gguf_bytes: u64,
}

/// Options of a load.
#[derive(Clone)]
pub struct LoadOptions {
    /// Storage of Linear weights.
    pub dtype: DType,
    /// Where the tensors go; `None` builds no model (e.g. `glimpse quantize` only writes GGUF).
    pub device: Option<Device>,
    /// Also write the model as a GGUF file (take the writes with [`Loader::take_writes`]).
    pub write_gguf: bool,
}

/// A streaming load (see the module comment).
pub struct Loader<S: ModelSource> {
    spec: Option<S>,
    opts: LoadOptions,
    files: Vec<WeightFile>,
    current: usize,
    pos: u64,
    state: FileState,
    format: Option<Format>,
    sources: Option<HashMap<String, Source>>,
    /// names GGUF files of glimpse store in the model's own layout
    model_layout: HashSet<String>,
    plan: Option<HashMap<String, (Vec<Use>, Stored)>>,
    regions: Vec<Region>,
    jobs: HashMap<String, Job>,
    done: HashSet<String>,
    ready: Ready,
    gguf: Option<GgufLayout>,
    writes: Vec<(u64, Vec<u8>)>,
    hasher: Option<sha2::Sha256>,
    stats: LoadStats,
    /// `data.pkl` read ahead (from the directory, e.g. a Range request), per file
    pickles: HashMap<usize, Vec<TorchTensor>>,
    /// the central directory of each `pytorch_model.bin`, entries by local header offset
    zip_dirs: HashMap<usize, Vec<torch::ZipEntry>>,
}

impl<S: ModelSource> Loader<S> {
    /// A load of `files` (pushed in this order). `spec` is `None` for a lone `.gguf` (the model
    /// comes from its metadata).
    pub fn new(spec: Option<S>, files: Vec<WeightFile>, opts: LoadOptions) -> Result<Loader<S>> {
        if files.is_empty() {
            return Err(Error::Invalid("no weight file to load".into()));
        }
        let formats = files
            .iter()
            .map(|f| format_of(&f.name))
            .collect::<Result<Vec<_>>>()?;
        if formats.iter().any(|f| *f != formats[0]) {
            return Err(Error::Invalid("the weight files mix formats".into()));
        }
        if spec.is_none() && (formats[0] != Format::Gguf || files.len() != 1) {
            return Err(Error::Invalid(
                "without config.json, a model loads only from one .gguf file".into(),
            ));
        }
        let mut l = Loader {
            spec,
            opts,
            files,
            current: 0,
            pos: 0,
            state: FileState::Header(Vec::new()),
            format: None,
            sources: None,
            model_layout: HashSet::new(),
            plan: None,
            regions: Vec::new(),
            jobs: HashMap::new(),
            done: HashSet::new(),
            ready: Ready::default(),
            gguf: None,
            writes: Vec::new(),
            hasher: None,
            stats: LoadStats::default(),
            pickles: HashMap::new(),
            zip_dirs: HashMap::new(),
        };
        l.begin_file()?;
        Ok(l)
    }

    /// Tensor names of a sharded checkpoint (`weight_map` of its index), so the model can be
    /// planned before the first shard's data.
    pub fn set_shard_index(&mut self, weight_map: &HashMap<String, String>) -> Result<()> {
        let mut sources = HashMap::new();
        for (name, file) in weight_map {
            let i = self
                .files
                .iter()
                .position(|f| f.name == *file || f.name.ends_with(&format!("/{file}")))
                .ok_or_else(|| {
                    Error::Weights(format!(
                        "the index names shard {file}, which is not being loaded"
                    ))
                })?;
            sources.insert(
                name.clone(),
                Source {
                    file: i,
                    dtype: None,
                    dtype_name: String::new(),
                    shape: None,
                    loc: Loc::Pending,
                },
            );
        }
        self.sources = Some(sources);
        self.make_plan()
    }

    /// The end of a `pytorch_model.bin` (`tail` = bytes `[tail_offset, file_len)`), read before
    /// its data: checks the archive and returns where `data.pkl`'s local header starts and an
    /// upper bound of the bytes to read from there to hold it (see [`Loader::torch_pickle`]).
    /// `Err` when the file is damaged or truncated; `Ok(Err(offset))` when the tail is too
    /// short: fetch it again from `offset`.
    pub fn torch_directory(
        &mut self,
        file: usize,
        tail: &[u8],
        tail_offset: u64,
        file_len: u64,
    ) -> Result<std::result::Result<(u64, u64), u64>> {
        match torch::parse_directory(tail, tail_offset, file_len)? {
            torch::Directory::NeedFrom(o) => Ok(Err(o)),
            torch::Directory::Entries(mut entries, cd_offset) => {
                entries.sort_by_key(|e| e.local_offset);
                // the central directory as a last "entry": where the data of the archive ends
                entries.push(torch::ZipEntry {
                    name: String::new(),
                    local_offset: cd_offset,
                    size: 0,
                    method: 0,
                });
                let pkl = entries
                    .iter()
                    .find(|e| e.name.ends_with("/data.pkl"))
                    .cloned()
                    .ok_or_else(|| {
                        Error::Weights(format!(
                            "{}: no data.pkl in the archive",
                            self.files[file].name
                        ))
                    })?;
                if pkl.method != 0 {
                    return Err(Error::Weights("pytorch_model.bin: data.pkl is compressed; glimpse reads archives as torch.save writes them".into()));
                }
                if pkl.size > torch::MAX_PICKLE {
                    return Err(Error::Weights(
                        "pytorch_model.bin: data.pkl is implausibly large".into(),
                    ));
                }
                if let Some(e) = entries.iter().find(|e| e.method != 0) {
                    return Err(Error::Weights(format!(
                        "pytorch_model.bin: entry {} is compressed; glimpse reads archives as torch.save writes them (stored)",
                        e.name
                    )));
                }
                let at = (pkl.local_offset, 30 + 2 * 65535 + pkl.size);
                self.zip_dirs.insert(file, entries);
                Ok(Ok(at))
            }
        }
    }

    /// `data.pkl` read ahead of the stream (bytes from its local header on, as
    /// [`Loader::torch_directory`] said): the model is planned before any tensor data arrives.
    pub fn torch_pickle(&mut self, file: usize, from_header: &[u8]) -> Result<()> {
        let torch::Next::Entry(h) = torch::parse_local_header(from_header)? else {
            return Err(Error::Weights(
                "pytorch_model.bin: data.pkl's header is damaged".into(),
            ));
        };
        let size = match h.size {
            Some(s) => s,
            None => self
                .zip_dirs
                .get(&file)
                .and_then(|d| d.iter().find(|e| e.name == h.name))
                .map(|e| e.size)
                .ok_or_else(|| {
                    Error::Weights("pytorch_model.bin: data.pkl's size is not known".into())
                })?,
        };
        let end = h.header_len + size as usize;
        if from_header.len() < end {
            return Err(Error::Weights(
                "pytorch_model.bin: data.pkl was cut short".into(),
            ));
        }
        let dir = torch::pickle_dir(&h.name).unwrap_or("archive").to_string();
        let tensors = torch::parse_pickle(&from_header[h.header_len..end], &dir)?;
        self.add_torch_sources(file, &tensors)?;
        self.pickles.insert(file, tensors);
        Ok(())
    }

    fn add_torch_sources(&mut self, file: usize, tensors: &[TorchTensor]) -> Result<()> {
        let sources = self.sources.get_or_insert_with(HashMap::new);
        for t in tensors {
            let dtype = match t.dtype {
                TorchDType::F32 => Some(SrcType::F32),
                TorchDType::F16 => Some(SrcType::F16),
                TorchDType::BF16 => Some(SrcType::BF16),
                TorchDType::F64 => Some(SrcType::F64),
                TorchDType::Other(_) => None,
            };
            sources.insert(
                t.name.clone(),
                Source {
                    file,
                    dtype,
                    dtype_name: format!("{:?}", t.dtype).to_lowercase(),
                    shape: Some(t.shape.clone()),
                    loc: Loc::Torch(t.clone()),
                },
            );
        }
        if self.plan.is_none() && (self.files.len() == 1 || self.all_files_known()) {
            self.make_plan()?;
        }
        Ok(())
    }

    fn all_files_known(&self) -> bool {
        (0..self.files.len()).all(|i| self.pickles.contains_key(&i))
    }

    fn begin_file(&mut self) -> Result<()> {
        self.pos = 0;
        self.format = Some(format_of(&self.files[self.current].name)?);
        self.hasher = self.files[self.current]
            .sha256
            .as_ref()
            .map(|_| sha2::Sha256::new());
        self.state = match self.format {
            Some(Format::Torch) => FileState::Zip {
                next: 0,
                resume: 0,
                head: Vec::new(),
                pickle: None,
                ended: false,
            },
            _ => FileState::Header(Vec::new()),
        };
        self.regions.clear();
        Ok(())
    }

    /// The next bytes of the current weight file.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<()> {
        if self.current >= self.files.len() {
            return Err(Error::Invalid("every weight file has already ended".into()));
        }
        if let Some(h) = &mut self.hasher {
            h.update(bytes);
        }
        self.stats.bytes += bytes.len() as u64;
        while !bytes.is_empty() {
            let used = match &mut self.state {
                FileState::Header(head) => {
                    // the header is parsed from what arrived so far (more bytes if it is cut)
                    let before = head.len();
                    head.extend_from_slice(bytes);
                    match self.try_header()? {
                        Some(header_len) => {
                            // the header ends inside this chunk: the rest is data
                            let used = header_len - before;
                            self.pos = header_len as u64;
                            self.state = FileState::Data;
                            used
                        }
                        None => {
                            self.pos += bytes.len() as u64;
                            bytes.len()
                        }
                    }
                }
                FileState::Data => {
                    self.route(bytes)?;
                    bytes.len()
                }
                FileState::Zip { .. } => self.zip_step(bytes)?,
            };
            bytes = &bytes[used..];
        }
        Ok(())
    }

    /// Tries to parse the header of the current safetensors or GGUF file; returns its length.
    fn try_header(&mut self) -> Result<Option<usize>> {
        let FileState::Header(head) = &self.state else {
            return Ok(None);
        };
        let file_len = self.files[self.current].len;
        match self.format {
            Some(Format::Safetensors) => {
                let Some((len, tensors)) = parse_safetensors_header(head, file_len)? else {
                    return Ok(None);
                };
                let file = self.current;
                let sources = self.sources.get_or_insert_with(HashMap::new);
                for (name, dtype_name, shape, start, end) in tensors {
                    let dtype = match dtype_name.as_str() {
                        "F32" => Some(SrcType::F32),
                        "F16" => Some(SrcType::F16),
                        "BF16" => Some(SrcType::BF16),
                        "F64" => Some(SrcType::F64),
                        _ => None,
                    };
                    if let Some(s) = sources.get(&name) {
                        if s.file != file {
                            return Err(Error::Weights(format!(
                                "tensor {name} is in {} but the index puts it in {}",
                                self.files[file].name, self.files[s.file].name
                            )));
                        }
                    }
                    sources.insert(
                        name,
                        Source {
                            file,
                            dtype,
                            dtype_name: dtype_name.to_lowercase(),
                            shape: Some(shape),
                            loc: Loc::Range(start + len as u64, end + len as u64),
                        },
                    );
                }
                if self.plan.is_none() {
                    self.make_plan()?;
                } else {
                    self.check_shard_shapes(file)?;
                }
                self.open_regions()?;
                Ok(Some(len))
            }
            Some(Format::Gguf) => {
                let h = match gguf::parse_header(head, file_len)? {
                    // the padding up to the data must have arrived too
                    Some(h) if head.len() as u64 >= h.data_start => h,
                    _ if head.len() as u64 > 512 << 20 => {
                        return Err(Error::Weights(
                            "GGUF header larger than 512 MiB: the file is damaged".into(),
                        ))
                    }
                    _ => return Ok(None),
                };
                if self.spec.is_none() {
                    self.spec = Some(S::from_gguf(&h.strings)?);
                }
                if let Some(t) = h.strings.get(gguf::MODEL_LAYOUT) {
                    self.model_layout = t.lines().map(String::from).collect();
                }
                let file = self.current;
                let sources = self.sources.get_or_insert_with(HashMap::new);
                for t in &h.tensors {
                    let start = h.data_start + t.offset;
                    sources.insert(
                        t.name.clone(),
                        Source {
                            file,
                            dtype: Some(SrcType::from_ggml(t.dtype)),
                            dtype_name: t.dtype.name().into(),
                            shape: Some(t.shape.clone()),
                            loc: Loc::Range(start, start + t.bytes() as u64),
                        },
                    );
                }
                self.make_plan()?;
                self.open_regions()?;
                Ok(Some(h.data_start as usize))
            }
            _ => Ok(None),
        }
    }

    /// A shard's header arrived after the plan: its shapes must be what the plan expects.
    fn check_shard_shapes(&self, file: usize) -> Result<()> {
        let (Some(plan), Some(sources)) = (&self.plan, &self.sources) else {
            return Ok(());
        };
        for (name, (uses, _)) in plan {
            let Some(s) = sources.get(name) else { continue };
            if s.file != file {
                continue;
            }
            if s.dtype.is_none() {
                return Err(unsupported_dtype(name, &s.dtype_name));
            }
            if let (Some(shape), Some(u)) = (&s.shape, uses.first()) {
                if *shape != u.source_shape
                    && !(self.model_layout.contains(name) && *shape == u.shape)
                {
                    return Err(Error::Weights(format!(
                        "tensor {name} has shape {shape:?}, the config implies {:?}",
                        u.source_shape
                    )));
                }
            }
        }
        Ok(())
    }

    /// Runs the constructor against a plan: what every tensor is needed as.
    fn make_plan(&mut self) -> Result<()> {
        let spec = self
            .spec
            .as_ref()
            .ok_or_else(|| Error::Invalid("no model description to plan a load".into()))?;
        let sources = self
            .sources
            .as_ref()
            .ok_or_else(|| Error::Invalid("no tensor names yet".into()))?;
        let known = sources
            .iter()
            .map(|(n, s)| (n.clone(), s.shape.clone()))
            .collect();
        let w = Weights::plan(Some(known), self.model_layout.clone());
        let device = self.opts.device.clone().unwrap_or(Device::Cpu);
        spec.build(&Vb::new(&w, &device, self.opts.dtype))?;
        let plan = w.into_plan().ok_or_else(|| Error::Invalid("plan".into()))?;
        let mut out = HashMap::new();
        let mut gguf_tensors = Vec::new();
        for name in &plan.order {
            let uses = plan.uses[name].clone();
            let s = &sources[name];
            if s.dtype.is_none() && !matches!(s.loc, Loc::Pending) {
                return Err(unsupported_dtype(name, &s.dtype_name));
            }
            let stored = stored_form(name, &uses, self.opts.dtype)?;
            gguf_tensors.push((name.clone(), stored.shape.clone(), stored.dtype));
            self.stats.params += stored.numel() as u64;
            out.insert(name.clone(), (uses, stored));
        }
        self.ready.names = sources.keys().cloned().collect();
        self.stats.tensors = out.len();
        if self.opts.write_gguf {
            let mut meta = spec.gguf_metadata()?;
            let relaid: Vec<&str> = plan
                .order
                .iter()
                .filter(|n| {
                    let (uses, stored) = &out[*n];
                    stored.transposed || uses.iter().any(|u| u.source_shape != stored.shape)
                })
                .map(String::as_str)
                .collect();
            if !relaid.is_empty() {
                meta.push((gguf::MODEL_LAYOUT.into(), relaid.join("\n")));
            }
            self.gguf = Some(GgufLayout::new(meta, gguf_tensors));
        }
        self.plan = Some(out);
        Ok(())
    }

    /// Regions of the current (safetensors / GGUF) file for every planned tensor in it.
    fn open_regions(&mut self) -> Result<()> {
        let (Some(plan), Some(sources)) = (&self.plan, &self.sources) else {
            return Ok(());
        };
        let mut regions = Vec::new();
        for name in plan.keys() {
            let s = &sources[name];
            if s.file != self.current {
                continue;
            }
            if let Loc::Range(a, b) = s.loc {
                regions.push(Region {
                    start: a,
                    end: b,
                    name: name.clone(),
                });
            }
        }
        regions.sort_by_key(|r| r.start);
        self.regions = regions;
        Ok(())
    }

    /// Feeds data bytes at `self.pos` to the jobs of the regions they overlap.
    fn route(&mut self, bytes: &[u8]) -> Result<()> {
        let (a, b) = (self.pos, self.pos + bytes.len() as u64);
        // (region index, overlap, name, region length)
        let hits: Vec<(usize, u64, u64, String, u64, bool)> = self
            .regions
            .iter()
            .enumerate()
            .take_while(|(_, r)| r.start < b)
            .filter(|(_, r)| r.end > a || r.end == r.start)
            .map(|(i, r)| {
                let (from, to) = (r.start.max(a), r.end.min(b));
                (i, from, to, r.name.clone(), r.end - r.start, to == r.end)
            })
            .collect();
        let mut finished = Vec::new();
        for (i, from, to, name, total, ends) in hits {
            if !self.jobs.contains_key(&name) {
                let job = self.start_job(&name, total)?;
                self.jobs.insert(name.clone(), job);
            }
            let job = self
                .jobs
                .get_mut(&name)
                .ok_or_else(|| Error::Invalid("job".into()))?;
            let slice = &bytes[(from - a) as usize..(to - a) as usize];
            job_feed(job, slice, &mut self.writes, self.gguf.is_some())?;
            if ends {
                finished.push(i);
            }
        }
        for &i in finished.iter().rev() {
            let r = self.regions.remove(i);
            if let Some(job) = self.jobs.remove(&r.name) {
                self.complete(&r.name, job)?;
            }
        }
        self.pos = b;
        Ok(())
    }

    fn start_job(&mut self, name: &str, total: u64) -> Result<Job> {
        let (uses, stored) = self
            .plan
            .as_ref()
            .and_then(|p| p.get(name))
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("{name} is not planned")))?;
        let s = &self
            .sources
            .as_ref()
            .ok_or_else(|| Error::Invalid("sources".into()))?[name];
        let src = s
            .dtype
            .ok_or_else(|| Error::Weights(format!("tensor {name}: unsupported dtype")))?;
        let source_shape = s.shape.clone().unwrap_or_default();
        let torch = match &s.loc {
            Loc::Torch(t) => Some(t.clone()),
            _ => None,
        };
        let in_model_layout = self.model_layout.contains(name);
        let transpose = stored.transposed && !in_model_layout;
        let contiguous = torch.as_ref().is_none_or(|t| t.is_contiguous());
        // rows stream when the source's element order is the stored order and its blocks (if
        // any) run along the same rows
        let src_cols = source_shape.last().copied().unwrap_or(1);
        let by_rows = !transpose && contiguous && (src.block() == 1 || src_cols == stored.cols());
        let mut builders = Vec::new();
        if let Some(device) = &self.opts.device {
            for u in &uses {
                builders.push((
                    u.clone(),
                    Builder::new(name, u, &stored, self.opts.dtype, device)?,
                ));
            }
        }
        let gguf_at = match &mut self.gguf {
            Some(g) => Some(g.place(name)?),
            None => None,
        };
        Ok(Job {
            src,
            stored,
            by_rows,
            torch,
            source_shape,
            buf: Vec::new(),
            next_row: 0,
            received: 0,
            total,
            builders,
            gguf_at,
        })
    }

    fn complete(&mut self, name: &str, mut job: Job) -> Result<()> {
        if job.received != job.total {
            return Err(Error::Weights(format!(
                "tensor {name}: the file ended inside it"
            )));
        }
        if !job.by_rows {
            let mut raw = std::mem::take(&mut job.buf);
            if let Some(t) = &job.torch {
                if !t.is_contiguous() {
                    raw = t.gather(&raw);
                }
            }
            let mut values = decode(job.src, &raw);
            drop(raw);
            if job.stored.transposed && !self.model_layout.contains(name) {
                let (r, c) = match job.source_shape.as_slice() {
                    [r, c] => (*r, *c),
                    s => {
                        return Err(Error::Weights(format!(
                            "tensor {name}: a transposed weight must be 2-D, it is {s:?}"
                        )))
                    }
                };
                values = transpose(&values, r, c);
            }
            let bytes = encode(&values, job.stored.cols(), job.stored.dtype)?;
            emit(&mut job, 0, &bytes, &mut self.writes, self.gguf.is_some())?;
        } else if !job.buf.is_empty() {
            return Err(Error::Weights(format!(
                "tensor {name}: its last row is incomplete"
            )));
        }
        for (u, b) in job.builders {
            let (tensors, scalar) = b.finish()?;
            if let Some(v) = scalar {
                self.ready.scalars.insert(name.to_string(), v);
            }
            self.ready.tensors.insert((name.to_string(), u), tensors);
        }
        self.done.insert(name.to_string());
        Ok(())
    }

    /// A step through a PyTorch zip: local headers are parsed, entries' data is routed (the
    /// data of `data.pkl` is parsed when complete, unless it was read ahead). Returns the
    /// bytes used.
    fn zip_step(&mut self, bytes: &[u8]) -> Result<usize> {
        let FileState::Zip {
            next,
            resume,
            ended,
            pickle,
            ..
        } = &self.state
        else {
            return Ok(0);
        };
        let (next, resume, ended, reading_pickle) = (*next, *resume, *ended, pickle.is_some());
        if ended {
            // the central directory and what follows it hold no tensor data
            self.pos += bytes.len() as u64;
            return Ok(bytes.len());
        }
        if self.pos < next {
            let take = ((next - self.pos) as usize).min(bytes.len());
            let chunk = &bytes[..take];
            if !reading_pickle {
                self.route(chunk)?;
                return Ok(take);
            }
            let done = self.pos + take as u64 == next;
            self.pos += take as u64;
            let mut finished = None;
            if let FileState::Zip {
                pickle: pickle @ Some(_),
                ..
            } = &mut self.state
            {
                if let Some((buf, _)) = pickle.as_mut() {
                    buf.extend_from_slice(chunk);
                }
                if done {
                    finished = pickle.take();
                }
            }
            if let Some((pkl, dir)) = finished {
                let tensors = torch::parse_pickle(&pkl, &dir)?;
                let file = self.current;
                self.add_torch_sources(file, &tensors)?;
                self.pickles.insert(file, tensors);
            }
            return Ok(take);
        }
        if self.pos < resume {
            // a data descriptor: its fields are in the directory already
            let take = ((resume - self.pos) as usize).min(bytes.len());
            self.pos += take as u64;
            return Ok(take);
        }
        let FileState::Zip { head, .. } = &mut self.state else {
            return Ok(0);
        };
        let before = head.len();
        head.extend_from_slice(&bytes[..bytes.len().min(64 * 1024)]);
        if self.pos == before as u64 && self.pos < 4 && head.len() >= 4 {
            torch::check_magic(head)?;
        }
        let parsed = torch::parse_local_header(head)?;
        let have = head.len();
        match parsed {
            torch::Next::More => {
                let used = have - before;
                self.pos += used as u64;
                Ok(used)
            }
            torch::Next::End => {
                let used = have - before;
                if let FileState::Zip { ended, head, .. } = &mut self.state {
                    *ended = true;
                    head.clear();
                }
                self.pos += used as u64;
                Ok(used)
            }
            torch::Next::Entry(h) => {
                let used = h.header_len - before;
                let data_start = self.pos + used as u64;
                let header_at = self.pos - before as u64;
                // sizes and where the next record starts come from the central directory
                // (torch.save puts them after each entry's data)
                let dir = self.zip_dirs.get(&self.current);
                let size = match (h.size, dir) {
                    (_, Some(d)) => d
                        .iter()
                        .find(|e| e.local_offset == header_at && e.name == h.name)
                        .map(|e| e.size)
                        .ok_or_else(|| {
                            Error::Weights(format!(
                                "pytorch_model.bin: entry {} at byte {header_at} is not in the archive's directory: the file is damaged",
                                h.name
                            ))
                        })?,
                    (Some(s), None) => s,
                    (None, None) => {
                        return Err(Error::Invalid(
                            "pytorch_model.bin: its entries' sizes are in the directory at its end; read that first (Loader::torch_directory)".into(),
                        ))
                    }
                };
                let next_record = dir
                    .and_then(|d| d.iter().find(|e| e.local_offset > header_at))
                    .map(|e| e.local_offset);
                let data_end = data_start + size;
                if let FileState::Zip {
                    next, resume, head, ..
                } = &mut self.state
                {
                    *next = data_end;
                    *resume = next_record.unwrap_or(data_end).max(data_end);
                    head.clear();
                }
                self.pos = data_start;
                self.zip_entry(&h.name, data_start, size)?;
                Ok(used)
            }
        }
    }

    /// A zip entry starts at `data_start`: `data.pkl` is read (unless read ahead), a storage's
    /// tensors get regions.
    fn zip_entry(&mut self, name: &str, data_start: u64, size: u64) -> Result<()> {
        if name.ends_with("/data.pkl") {
            if size > torch::MAX_PICKLE || size == 0 {
                return Err(Error::Weights(format!(
                    "pytorch_model.bin: data.pkl has {size} bytes: the file is damaged"
                )));
            }
            if !self.pickles.contains_key(&self.current) {
                let dir = torch::pickle_dir(name).unwrap_or("archive").to_string();
                if let FileState::Zip { pickle, .. } = &mut self.state {
                    *pickle = Some((Vec::with_capacity(size as usize), dir));
                }
            }
            return Ok(());
        }
        self.regions.clear();
        if !name.contains("/data/") {
            return Ok(());
        }
        if !self.pickles.contains_key(&self.current) {
            return Err(Error::Weights(format!(
                "pytorch_model.bin: entry {name} comes before data.pkl; glimpse reads archives as torch.save writes them"
            )));
        }
        let (Some(plan), Some(sources)) = (&self.plan, &self.sources) else {
            return Ok(());
        };
        let mut regions = Vec::new();
        for pname in plan.keys() {
            let s = &sources[pname];
            if s.file != self.current {
                continue;
            }
            if let Loc::Torch(t) = &s.loc {
                if t.storage == name {
                    let (a, b) = t.byte_range();
                    if b > size {
                        return Err(Error::Weights(format!(
                            "tensor {pname} reads bytes {a}..{b} of storage {name}, which holds {size}: the file is damaged"
                        )));
                    }
                    regions.push(Region {
                        start: data_start + a,
                        end: data_start + b,
                        name: pname.clone(),
                    });
                }
            }
        }
        regions.sort_by_key(|r| r.start);
        self.regions = regions;
        Ok(())
    }

    /// The current weight file has ended: its length and sha256 are checked, and the next one
    /// begins.
    pub fn end_file(&mut self) -> Result<()> {
        let f = self
            .files
            .get(self.current)
            .ok_or_else(|| Error::Invalid("every weight file has already ended".into()))?
            .clone();
        if let FileState::Header(_) = self.state {
            return Err(Error::Weights(format!(
                "{}: the file ended inside its header ({} bytes): it is truncated",
                f.name, self.pos
            )));
        }
        if let Some(len) = f.len {
            if self.pos != len {
                return Err(Error::Weights(format!(
                    "{}: {} bytes arrived, {len} were expected: the download stopped early",
                    f.name, self.pos
                )));
            }
        }
        if let (Some(h), Some(want)) = (self.hasher.take(), &f.sha256) {
            let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
            if got != *want {
                return Err(Error::Weights(format!(
                    "{}: its sha256 is {got}, the catalog says {want}: the file is not the one expected",
                    f.name
                )));
            }
        }
        if let Some(r) = self.regions.first() {
            return Err(Error::Weights(format!(
                "{}: the file ended before tensor {} ({} bytes): it is truncated",
                f.name, r.name, self.pos
            )));
        }
        self.current += 1;
        if self.current < self.files.len() {
            self.begin_file()?;
        }
        Ok(())
    }

    /// GGUF bytes produced so far, as (file offset, bytes); the header comes from
    /// [`Loader::gguf_header`] at the end.
    pub fn take_writes(&mut self) -> Vec<(u64, Vec<u8>)> {
        std::mem::take(&mut self.writes)
    }

    /// The GGUF header (written at offset 0, after every tensor is placed) and the file's
    /// length.
    pub fn gguf_header(&self) -> Option<(Vec<u8>, u64)> {
        self.gguf.as_ref().map(|g| (g.header(), g.file_len()))
    }

    /// The model (when a device was given), once every file has ended.
    pub fn finish(&mut self) -> Result<(Option<S::Model>, LoadStats)> {
        if self.current < self.files.len() {
            return Err(Error::Invalid(format!(
                "{} has not ended yet",
                self.files[self.current].name
            )));
        }
        let plan = self
            .plan
            .as_ref()
            .ok_or_else(|| Error::Weights("no tensor arrived (the checkpoint is empty?)".into()))?;
        if let Some(missing) = plan.keys().find(|n| !self.done.contains(*n)) {
            return Err(Error::Weights(format!(
                "tensor {missing} never arrived: the checkpoint is truncated or damaged"
            )));
        }
        let mut stats = self.stats.clone();
        if let Some(g) = &self.gguf {
            stats.gguf_bytes = g.file_len();
        }
        let Some(device) = self.opts.device.clone() else {
            return Ok((None, stats));
        };
        let spec = self
            .spec
            .as_ref()
            .ok_or_else(|| Error::Invalid("no model description".into()))?;
        let w = Weights::ready(std::mem::take(&mut self.ready));
        let model = spec.build(&Vb::new(&w, &device, self.opts.dtype))?;
        Ok((Some(model), stats))
    }

    /// The model description (from the caller or a GGUF file's metadata).
    pub fn spec(&self) -> Option<&S> {
        self.spec.as_ref()
    }
}

fn unsupported_dtype(name: &str, dtype: &str) -> Error {
    Error::Weights(format!(
        "tensor {name} is stored as {dtype}; glimpse reads f32, f16, bf16, f64, q8_0 and q4_0"
    ))
}

/// Feeds the next bytes of a job's region.
fn job_feed(
    job: &mut Job,
    bytes: &[u8],
    writes: &mut Vec<(u64, Vec<u8>)>,
    gguf: bool,
) -> Result<()> {
    job.received += bytes.len() as u64;
    if job.received > job.total {
        return Err(Error::Invalid(
            "a tensor received more bytes than it holds".into(),
        ));
    }
    job.buf.extend_from_slice(bytes);
    if !job.by_rows {
        return Ok(());
    }
    let cols = job.stored.cols();
    let row = job.src.bytes(cols);
    let rows = job.buf.len() / row.max(1);
    if rows == 0 {
        return Ok(());
    }
    let take = rows * row;
    let stored = convert_rows(job.src, &job.buf[..take], cols, job.stored.dtype)?;
    job.buf.drain(..take);
    let row0 = job.next_row;
    job.next_row += rows;
    emit(job, row0, &stored, writes, gguf)
}

/// Stored rows `row0..` go to every builder of the job and to the GGUF file.
fn emit(
    job: &mut Job,
    row0: usize,
    stored: &[u8],
    writes: &mut Vec<(u64, Vec<u8>)>,
    gguf: bool,
) -> Result<()> {
    for (_, b) in &mut job.builders {
        b.write_rows(row0, stored)?;
    }
    if gguf {
        if let Some(at) = job.gguf_at {
            writes.push((at + (row0 * job.stored.row_bytes()) as u64, stored.to_vec()));
        }
    }
    Ok(())
}

/// Device tensors of one use from f32 values in the checkpoint's layout (random weights).
pub(crate) fn build_from_f32(
    name: &str,
    values: &[f32],
    u: &Use,
    linear: DType,
    device: &Device,
) -> Result<Vec<Tensor>> {
    let stored = stored_form(name, std::slice::from_ref(u), linear)?;
    let v;
    let values = if u.transposed {
        let (r, c) = (u.source_shape[0], u.source_shape[1]);
        v = transpose(values, r, c);
        &v[..]
    } else {
        values
    };
    let mut b = Builder::new(name, u, &stored, linear, device)?;
    b.write_rows(0, &encode(values, stored.cols(), stored.dtype)?)?;
    Ok(b.finish()?.0)
}

/// A safetensors header from the first bytes of the file: (header length including the
/// 8-byte size, [(name, dtype, shape, start, end)] with offsets into the data). `Ok(None)`
/// while more bytes are needed.
#[allow(clippy::type_complexity)]
pub fn parse_safetensors_header(
    prefix: &[u8],
    file_len: Option<u64>,
) -> Result<Option<(usize, Vec<(String, String, Vec<usize>, u64, u64)>)>> {
    let bad = |m: String| {
        Error::Weights(format!(
            "not a valid safetensors file (truncated or damaged?): {m}"
        ))
    };
    if prefix.len() < 8 {
        return Ok(None);
    }
    let mut n8 = [0u8; 8];
    n8.copy_from_slice(&prefix[..8]);
    let n = u64::from_le_bytes(n8);
    if n > 100_000_000 {
        return Err(bad(format!("its header claims {n} bytes")));
    }
    let total = 8 + n as usize;
    if prefix.len() < total {
        return Ok(None);
    }
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&prefix[8..total]).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info["dtype"].as_str().unwrap_or("").to_string();
        let shape: Vec<usize> = info["shape"]
            .as_array()
            .ok_or_else(|| bad(format!("tensor {name} has no shape")))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| bad(format!("tensor {name} has a bad shape")))?;
        let offs = info["data_offsets"]
            .as_array()
            .and_then(|a| Some((a.first()?.as_u64()?, a.get(1)?.as_u64()?)))
            .ok_or_else(|| bad(format!("tensor {name} has no data_offsets")))?;
        let elem = match dtype.as_str() {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            _ => 1,
        };
        let numel = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .ok_or_else(|| bad(format!("tensor {name}: shape overflows")))?;
        if offs.1 < offs.0 || offs.1 - offs.0 != numel.saturating_mul(elem) {
            return Err(bad(format!(
                "tensor {name}: shape {shape:?} does not match its {} bytes",
                offs.1.saturating_sub(offs.0)
            )));
        }
        if let Some(len) = file_len {
            if total as u64 + offs.1 > len {
                return Err(Error::Weights(format!(
                    "tensor {name} lies past the end of the file ({} > {len} bytes): the file is truncated",
                    total as u64 + offs.1
                )));
            }
        }
        out.push((name, dtype, shape, offs.0, offs.1));
    }
    Ok(Some((total, out)))
}

impl<S: ModelSource> Loader<S> {
    /// The device tensors go to.
    pub fn device(&self) -> Option<Device> {
        self.opts.device.clone()
    }

    /// The model description, taken out (after [`Loader::finish`]).
    pub fn into_spec(self) -> Option<S> {
        self.spec
    }
}

/// Pushes weight file `i` held in memory, whole: for a `pytorch_model.bin` its directory and
/// `data.pkl` first (as a Range request does in the browser), then every byte in `chunk`-sized
/// pieces; `on_step` runs after each (to take GGUF writes).
pub fn push_file<S: ModelSource>(
    loader: &mut Loader<S>,
    i: usize,
    name: &str,
    bytes: &[u8],
    chunk: usize,
    on_step: &mut dyn FnMut(&mut Loader<S>) -> Result<()>,
) -> Result<()> {
    if name.ends_with(".bin") {
        let len = bytes.len() as u64;
        let mut from = len.saturating_sub(64 << 10);
        let (at, max) = loop {
            match loader.torch_directory(i, &bytes[from as usize..], from, len)? {
                Ok(at) => break at,
                Err(earlier) if earlier < from => from = earlier,
                Err(_) => return Err(Error::Weights(format!("{name}: damaged zip directory"))),
            }
        };
        let end = (at + max).min(len) as usize;
        loader.torch_pickle(i, &bytes[(at as usize).min(end)..end])?;
    }
    for c in bytes.chunks(chunk.max(1)) {
        loader.push(c)?;
        on_step(loader)?;
    }
    loader.end_file()?;
    on_step(loader)
}

/// Builds a model from checkpoint files in memory (name, bytes) through the stream loader:
/// what tests and tools use to construct one architecture directly.
pub fn build_model<M>(
    files: &[(&str, &[u8])],
    device: &Device,
    dtype: DType,
    ctor: impl Fn(&Vb) -> Result<M>,
) -> Result<M> {
    let wf = files
        .iter()
        .map(|(n, b)| WeightFile {
            name: n.to_string(),
            len: Some(b.len() as u64),
            sha256: None,
        })
        .collect();
    let opts = LoadOptions {
        dtype,
        device: Some(device.clone()),
        write_gguf: false,
    };
    let mut l = Loader::new(Some(FnSource(ctor)), wf, opts)?;
    for (i, (name, b)) in files.iter().enumerate() {
        push_file(&mut l, i, name, b, 4 << 20, &mut |_| Ok(()))?;
    }
    l.finish()?
        .0
        .ok_or_else(|| Error::Invalid("no model was built".into()))
}
