//! Single-file GGUF (`glimpse quantize`): the default model written as q8_0 GGUF loads from that
//! one file and predicts exactly what the safetensors folder quantized to q8_0 while loading
//! predicts (the blocks are the same), on the CPU and on the GPU; f32 GGUF is lossless; broken
//! files are clear errors.

mod common;

use common::*;
use glimpse::eval::evaluate;
use glimpse::io::gguf::{model_files, quantize_model};
use glimpse::pipeline::{ModelFiles, Pipeline};
use glimpse::DType;

fn default_model() -> ModelFiles {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    ModelFiles::from_dir(&root.join("models/scenes-git")).unwrap()
}

fn predictions(files: &ModelFiles, d: &glimpse::Device, dtype: DType) -> Vec<String> {
    let p = Pipeline::load(files, d, dtype).unwrap();
    let r = pollster::block_on(evaluate(&p, 9_000_100, 6, 64, &mut |_, _| {})).unwrap();
    r.items.into_iter().map(|i| i.predicted).collect()
}

#[test]
fn q8_0_gguf_predicts_like_the_folder_quantized_while_loading() {
    let folder = default_model();
    let bytes = quantize_model(&folder, DType::Q8_0).unwrap();
    // Linear weights at ~1.06 bytes per value instead of 4: the file is well under half the f32 one
    assert!(
        bytes.len() * 2 < folder.weights[0].len(),
        "{} bytes",
        bytes.len()
    );
    let gguf = model_files(bytes).unwrap();
    assert_eq!(gguf.config, folder.config);
    assert_eq!(gguf.tokenizer, folder.tokenizer);
    for d in both() {
        let want = predictions(&folder, &d, DType::Q8_0);
        assert_eq!(predictions(&gguf, &d, DType::Q8_0), want, "{d:?}");
        assert!(want.len() > 30);
    }
}

#[test]
fn f32_gguf_is_lossless() {
    let folder = default_model();
    let gguf = model_files(quantize_model(&folder, DType::F32).unwrap()).unwrap();
    let d = cpu();
    assert_eq!(
        predictions(&gguf, &d, DType::F32),
        predictions(&folder, &d, DType::F32)
    );
}

#[test]
fn broken_gguf_files_are_clear_errors() {
    let bytes = quantize_model(&default_model(), DType::Q8_0).unwrap();
    for cut in [10, 200, bytes.len() / 2, bytes.len() - 100] {
        let err = match model_files(bytes[..cut].to_vec()) {
            Ok(files) => Pipeline::load(&files, &cpu(), DType::Q8_0).err(),
            Err(e) => Some(e),
        }
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
    let msg = model_files(out.into_inner()).err().unwrap().to_string();
    assert!(msg.contains("config.json"), "{msg}");
}
