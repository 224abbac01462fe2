//! Single-file GGUF (`glimpse quantize`, and what the page stores after a quantized load): the
//! default model written as q8_0 GGUF loads from that one file and predicts exactly what the
//! safetensors folder quantized to q8_0 while loading predicts (the blocks are the same), on the
//! CPU and on the GPU; f32 GGUF is lossless; the GGUF shipped by an earlier glimpse (written by
//! candle's writer) still loads; broken files are clear errors.

mod common;

use common::*;
use glimpse::eval::evaluate;
use glimpse::pipeline::{quantize, ModelFiles, Pipeline};
use glimpse::DType;

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn default_model() -> ModelFiles {
    ModelFiles::from_dir(&root().join("models/scenes-git")).unwrap()
}

/// The default model written as GGUF by `glimpse quantize` (into a temporary file).
fn quantized(dtype: DType) -> Vec<u8> {
    let out = std::env::temp_dir().join(format!(
        "glimpse-gguf-test-{}-{}.gguf",
        std::process::id(),
        dtype.name()
    ));
    let stats = quantize(Some(&root().join("models/scenes-git")), None, dtype, &out).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    assert_eq!(bytes.len() as u64, stats.gguf_bytes);
    bytes
}

fn gguf_files(bytes: Vec<u8>) -> ModelFiles {
    ModelFiles {
        weights: vec![("model.gguf".into(), bytes)],
        ..Default::default()
    }
}

fn predictions(files: &ModelFiles, d: &glimpse::Device, dtype: DType) -> Vec<String> {
    let p = Pipeline::load(files, d, dtype).unwrap();
    let r = pollster::block_on(evaluate(&p, 9_000_100, 6, 64, &mut |_, _| {})).unwrap();
    r.items.into_iter().map(|i| i.predicted).collect()
}

#[test]
fn q8_0_gguf_predicts_like_the_folder_quantized_while_loading() {
    let folder = default_model();
    let bytes = quantized(DType::Q8_0);
    // Linear weights at ~1.06 bytes per value instead of 4: well under half the f32 file
    assert!(
        bytes.len() * 2 < folder.weights[0].1.len(),
        "{} bytes",
        bytes.len()
    );
    let gguf = gguf_files(bytes);
    for d in both() {
        let want = predictions(&folder, &d, DType::Q8_0);
        assert_eq!(predictions(&gguf, &d, DType::Q8_0), want, "{d:?}");
        assert!(want.len() > 30);
    }
}

#[test]
fn the_gguf_of_an_earlier_glimpse_still_loads() {
    // models/scenes-git/model-q8_0.gguf was written by candle's writer (GGUF v2, embeddings
    // and the patch conv in f32); its q8_0 blocks are loaded as they are
    let old = std::fs::read(root().join("models/scenes-git/model-q8_0.gguf")).unwrap();
    let d = cpu();
    assert_eq!(
        predictions(&gguf_files(old), &d, DType::Q8_0),
        predictions(&default_model(), &d, DType::Q8_0)
    );
}

#[test]
fn f32_gguf_is_lossless() {
    let folder = default_model();
    let gguf = gguf_files(quantized(DType::F32));
    let d = cpu();
    assert_eq!(
        predictions(&gguf, &d, DType::F32),
        predictions(&folder, &d, DType::F32)
    );
}

#[test]
fn broken_gguf_files_are_clear_errors() {
    let bytes = quantized(DType::Q8_0);
    for cut in [10, 200, bytes.len() / 2, bytes.len() - 100] {
        let err = Pipeline::load(&gguf_files(bytes[..cut].to_vec()), &cpu(), DType::Q8_0)
            .err()
            .unwrap_or_else(|| panic!("a GGUF cut to {cut} bytes loaded"));
        let msg = err.to_string();
        assert!(
            msg.contains("GGUF") || msg.contains("truncated"),
            "cut at {cut}: {msg}"
        );
    }
    // a GGUF file from elsewhere (no glimpse metadata) names what it lacks
    let mut out = std::io::Cursor::new(Vec::new());
    candle_core::quantized::gguf_file::write(&mut out, &[], &[]).unwrap();
    let msg = Pipeline::load(&gguf_files(out.into_inner()), &cpu(), DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("config.json"), "{msg}");
}
