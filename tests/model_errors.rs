//! Broken model files and inputs give clear errors, never panics.

mod common;

use common::*;
use glimpse::pipeline::{ModelFiles, Pipeline};
use glimpse::{DType, Device};
use safetensors::tensor::TensorView;

fn git_files() -> ModelFiles {
    ModelFiles::from_dir(&fixture("git")).unwrap()
}

fn edit_config(f: &mut ModelFiles, edit: impl Fn(String) -> String) {
    let c = String::from_utf8(f.meta["config.json"].clone()).unwrap();
    f.meta.insert("config.json".into(), edit(c).into_bytes());
}

fn load_err(files: &ModelFiles) -> String {
    match Pipeline::load(files, &Device::Cpu, DType::F32) {
        Ok(_) => panic!("loading should fail"),
        Err(e) => e.to_string(),
    }
}

/// Rewrites the checkpoint with `edit` applied to its (name, shape, f32 values) list.
fn rewrite(files: &mut ModelFiles, edit: impl Fn(&mut Vec<(String, Vec<usize>, Vec<u8>)>)) {
    let st = safetensors::SafeTensors::deserialize(&files.weights[0].1).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec(), t.data().to_vec()))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap(),
            )
        })
        .collect();
    files.weights = vec![(
        "model.safetensors".into(),
        safetensors::serialize(views, None).unwrap(),
    )];
}

#[test]
fn a_missing_tensor_is_named() {
    let mut f = git_files();
    rewrite(&mut f, |t| {
        t.retain(|(n, _, _)| n != "git.encoder.layer.1.output.dense.weight")
    });
    let err = load_err(&f);
    assert!(
        err.contains("no tensor git.encoder.layer.1.output.dense.weight"),
        "{err}"
    );
}

#[test]
fn a_tensor_of_the_wrong_shape_is_named() {
    let mut f = git_files();
    rewrite(&mut f, |t| {
        let e = t
            .iter_mut()
            .find(|(n, _, _)| n == "git.embeddings.position_embeddings.weight")
            .unwrap();
        e.1 = vec![32, 64]; // same bytes, transposed shape
    });
    let err = load_err(&f);
    assert!(err.contains("git.embeddings.position_embeddings.weight has shape [32, 64], the config implies [64, 32]"), "{err}");
}

#[test]
fn an_unknown_architecture_is_named() {
    let mut f = git_files();
    edit_config(&mut f, |c| {
        c.replace("GitForCausalLM", "LlavaForConditionalGeneration")
    });
    let err = load_err(&f);
    assert!(
        err.contains("architecture \"LlavaForConditionalGeneration\" is not supported"),
        "{err}"
    );
}

#[test]
fn a_config_missing_a_field_takes_the_class_default() {
    // as transformers does: GitConfig's hidden_size default is 768, which this checkpoint's
    // 32-wide tensors then contradict, and the first of them is named
    let mut f = git_files();
    edit_config(&mut f, |c| {
        c.replace(
            "\"hidden_size\": 32,\n  \"initializer_range\"",
            "\"initializer_range\"",
        )
    });
    let err = load_err(&f);
    assert!(
        err.contains("the config implies") && err.contains("768"),
        "{err}"
    );
}

#[test]
fn a_config_field_of_the_wrong_type_is_named() {
    let mut f = git_files();
    edit_config(&mut f, |c| {
        c.replace(
            "\"hidden_size\": 32,\n  \"initializer_range\"",
            "\"hidden_size\": \"wide\",\n  \"initializer_range\"",
        )
    });
    let err = load_err(&f);
    assert!(err.contains("config.json") && err.contains("wide"), "{err}");
}

#[test]
fn a_truncated_safetensors_file_is_an_error() {
    for keep in [0.5, 0.999] {
        let mut f = git_files();
        let n = (f.weights[0].1.len() as f64 * keep) as usize;
        f.weights[0].1.truncate(n);
        let err = load_err(&f);
        assert!(err.contains("truncated"), "{keep}: {err}");
    }
    let mut f = git_files();
    f.weights[0].1.truncate(5);
    let err = load_err(&f);
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn bad_images_and_prompts_are_errors_and_the_pipeline_keeps_working() {
    let p = Pipeline::load(&git_files(), &gpu(), DType::F32).unwrap();
    for bytes in [
        &b""[..],
        b"GIF89a not really",
        &[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0],
    ] {
        assert!(p.prepare_image(bytes).is_err());
    }
    let image = p
        .prepare_image(&std::fs::read(fixture("images/square_32.png")).unwrap())
        .unwrap();
    let opts = p.default_options();
    let long = "what color is the star? ".repeat(40);
    let err = pollster::block_on(p.ask(&image, &long, &opts, &mut |_| true))
        .unwrap_err()
        .to_string();
    assert!(err.contains("text positions"), "{err}");
    // after the errors the same pipeline and image still caption
    let out = pollster::block_on(p.caption(&image, None, &opts, &mut |_| true)).unwrap();
    assert!(out.new_tokens > 0);
}
