//! Reading weights into a model: from files in memory, from a folder on disk (streamed, as the
//! browser streams a download), and into a GGUF file (`glimpse quantize`).

#[cfg(not(target_arch = "wasm32"))]
use super::spec::read_dir_meta;
use super::spec::{ModelFiles, ModelSpec};
#[cfg(not(target_arch = "wasm32"))]
use crate::error::Error;
use crate::error::Result;
#[cfg(not(target_arch = "wasm32"))]
use crate::io::stream::LoadStats;
#[cfg(not(target_arch = "wasm32"))]
use crate::io::stream::ModelSource;
use crate::io::stream::{LoadOptions, Loader, WeightFile};
#[cfg(not(target_arch = "wasm32"))]
use crate::tensor::DType;

/// Chunks pushed at a time when glimpse reads a file itself.
const CHUNK: usize = 8 << 20;

/// Loads the weights through the stream loader, from bytes in memory.
pub(super) fn load_files(files: &ModelFiles, opts: LoadOptions) -> Result<Loader<ModelSpec>> {
    load_files_with(files, opts, &mut |_| Ok(()))
}

pub(super) fn load_files_with(
    files: &ModelFiles,
    opts: LoadOptions,
    on_step: &mut dyn FnMut(&mut Loader<ModelSpec>) -> Result<()>,
) -> Result<Loader<ModelSpec>> {
    let spec = if files.meta.contains_key("config.json") {
        Some(ModelSpec::from_files(&files.meta)?)
    } else {
        None
    };
    let wf = files
        .weights
        .iter()
        .map(|(n, b)| WeightFile {
            name: n.clone(),
            len: Some(b.len() as u64),
            sha256: None,
        })
        .collect();
    let mut loader = Loader::new(spec, wf, opts)?;
    if let Some(index) = &files.index {
        loader.set_shard_index(index)?;
    }
    for (i, (name, bytes)) in files.weights.iter().enumerate() {
        crate::io::stream::push_file(&mut loader, i, name, bytes, CHUNK, on_step)?;
    }
    Ok(loader)
}

/// Writes a model (a folder or `.gguf` on disk, or files in memory) as one GGUF file with
/// Linear weights in `dtype`, streaming: `glimpse quantize`. The file is what the page stores
/// after loading the same model as `dtype`.
#[cfg(not(target_arch = "wasm32"))]
pub fn quantize(
    path: Option<&std::path::Path>,
    files: Option<&ModelFiles>,
    dtype: DType,
    out: &std::path::Path,
) -> Result<LoadStats> {
    use std::io::{Seek, SeekFrom, Write};
    if dtype == DType::U32 {
        return Err(Error::Invalid(
            "GGUF weights are f32, f16, q8_0 or q4_0".into(),
        ));
    }
    let io = |e: std::io::Error| Error::Weights(format!("{}: {e}", out.display()));
    let mut file = std::fs::File::create(out).map_err(io)?;
    let mut write = |l: &mut Loader<ModelSpec>| -> Result<()> {
        for (at, bytes) in l.take_writes() {
            file.seek(SeekFrom::Start(at)).map_err(io)?;
            file.write_all(&bytes).map_err(io)?;
        }
        Ok(())
    };
    let opts = LoadOptions {
        dtype,
        device: None,
        write_gguf: true,
    };
    let mut loader = match (path, files) {
        (Some(p), _) => {
            let (meta, _) = read_dir_meta(p)?;
            let spec = if meta.contains_key("config.json") {
                Some(ModelSpec::from_files(&meta)?)
            } else {
                None
            };
            stream_dir(p, spec, opts, &mut write)?
        }
        (None, Some(f)) => load_files_with(f, opts, &mut write)?,
        (None, None) => return Err(Error::Invalid("no model to quantize".into())),
    };
    let (_, stats) = loader.finish()?;
    let (header, len) = loader
        .gguf_header()
        .ok_or_else(|| Error::Invalid("no GGUF was written".into()))?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.write_all(&header).map_err(io)?;
    file.set_len(len).map_err(io)?;
    Ok(stats)
}

/// Streams the weight files of a folder on disk into a loader, reading `pytorch_model.bin`'s
/// directory and state dict first (as the browser does with Range requests). `on_step` runs
/// after every chunk (to take GGUF writes).
#[cfg(not(target_arch = "wasm32"))]
pub fn stream_dir<S: ModelSource>(
    dir: &std::path::Path,
    spec: Option<S>,
    opts: LoadOptions,
    on_step: &mut dyn FnMut(&mut Loader<S>) -> Result<()>,
) -> Result<Loader<S>> {
    use std::io::{Read, Seek, SeekFrom};
    let (_, set) = read_dir_meta(dir)?;
    let path_of = |f: &str| {
        if dir.is_file() {
            dir.to_path_buf()
        } else {
            dir.join(f)
        }
    };
    let io =
        |p: &std::path::Path, e: std::io::Error| Error::Weights(format!("{}: {e}", p.display()));
    let mut wf = Vec::new();
    for f in &set.files {
        let p = path_of(f);
        let len = std::fs::metadata(&p).map_err(|e| io(&p, e))?.len();
        wf.push(WeightFile {
            name: f.clone(),
            len: Some(len),
            sha256: None,
        });
    }
    let mut loader = Loader::new(spec, wf.clone(), opts)?;
    if let Some(index) = &set.index {
        loader.set_shard_index(index)?;
    }
    for (i, f) in wf.iter().enumerate() {
        let p = path_of(&f.name);
        let mut file = std::fs::File::open(&p).map_err(|e| io(&p, e))?;
        let len = f.len.unwrap_or(0);
        if f.name.ends_with(".bin") {
            // the zip's directory, then data.pkl, before the data
            let mut from = len.saturating_sub(64 << 10);
            let (pkl_at, pkl_max) = loop {
                let mut tail = vec![0u8; (len - from) as usize];
                file.seek(SeekFrom::Start(from)).map_err(|e| io(&p, e))?;
                file.read_exact(&mut tail).map_err(|e| io(&p, e))?;
                match loader.torch_directory(i, &tail, from, len)? {
                    Ok(at) => break at,
                    Err(earlier) if earlier < from => from = earlier,
                    Err(_) => {
                        return Err(Error::Weights(format!(
                            "{}: damaged zip directory",
                            p.display()
                        )))
                    }
                }
            };
            let n = pkl_max.min(len - pkl_at) as usize;
            let mut pkl = vec![0u8; n];
            file.seek(SeekFrom::Start(pkl_at)).map_err(|e| io(&p, e))?;
            file.read_exact(&mut pkl).map_err(|e| io(&p, e))?;
            loader.torch_pickle(i, &pkl)?;
            file.seek(SeekFrom::Start(0)).map_err(|e| io(&p, e))?;
        }
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buf).map_err(|e| io(&p, e))?;
            if n == 0 {
                break;
            }
            loader.push(&buf[..n])?;
            on_step(&mut loader)?;
        }
        loader.end_file()?;
        on_step(&mut loader)?;
    }
    Ok(loader)
}
