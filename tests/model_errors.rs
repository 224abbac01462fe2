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

/// Edits config.json as JSON: `path` is a dotted field path, `value` its new value.
fn set_field(f: &mut ModelFiles, path: &str, value: serde_json::Value) {
    let mut c: serde_json::Value = serde_json::from_slice(&f.meta["config.json"]).unwrap();
    let mut at = &mut c;
    let parts: Vec<&str> = path.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        at = at.get_mut(*p).unwrap();
    }
    at[parts[parts.len() - 1]] = value;
    f.meta
        .insert("config.json".into(), serde_json::to_vec(&c).unwrap());
}

#[test]
fn config_values_are_checked_once_and_the_field_is_named() {
    use serde_json::json;
    // each case would otherwise divide by zero, size a table from a lie, or embed past the
    // vocabulary; every one is a Config error naming its field (never a panic)
    let git = [
        (
            "num_attention_heads",
            json!(0),
            "num_attention_heads = 0; it must be between 1",
        ),
        (
            "num_attention_heads",
            json!(5),
            "num_attention_heads = 5 does not divide hidden_size = 32",
        ),
        (
            "vision_config.num_attention_heads",
            json!(0),
            "vision_config.num_attention_heads = 0",
        ),
        (
            "vision_config.num_attention_heads",
            json!(3),
            "vision_config.num_attention_heads = 3 does not divide vision_config.hidden_size = 32",
        ),
        (
            "vision_config.patch_size",
            json!(0),
            "vision_config.patch_size = 0",
        ),
        (
            "vision_config.patch_size",
            json!(5),
            "vision_config.image_size = 32 is not a multiple of patch_size 5",
        ),
        (
            "vision_config.image_size",
            json!(1_000_000),
            "vision_config.image_size = 1000000; it must be between 1 and 4096",
        ),
        (
            "vision_config.num_channels",
            json!(4),
            "vision_config.num_channels = 4",
        ),
        ("hidden_size", json!(0), "hidden_size = 0"),
        ("vocab_size", json!(0), "vocab_size = 0"),
        (
            "max_position_embeddings",
            json!(4_000_000_000u64),
            "max_position_embeddings = 4000000000",
        ),
        (
            "num_hidden_layers",
            json!(100_000),
            "num_hidden_layers = 100000",
        ),
        ("layer_norm_eps", json!(-1.0), "layer_norm_eps = -1"),
        (
            "eos_token_id",
            json!(120),
            "eos_token_id = 120 is outside the vocabulary of 120 tokens",
        ),
    ];
    for (field, value, want) in git {
        let mut f = git_files();
        set_field(&mut f, field, value.clone());
        let err = match glimpse::pipeline::ModelSpec::from_files(&f.meta) {
            Ok(_) => panic!("{field} = {value} should be refused"),
            Err(e) => e,
        };
        assert_eq!(err.code(), "config", "{field}: {err}");
        assert!(err.to_string().contains(want), "{field}: {err}");
    }
    // the same checks in the other architectures' configs
    let other = [
        (
            "vit-gpt2",
            "decoder.n_head",
            json!(0),
            "config.json decoder: n_head = 0",
        ),
        (
            "vit-gpt2",
            "encoder.num_attention_heads",
            json!(0),
            "config.json encoder: num_attention_heads = 0",
        ),
        (
            "vit-gpt2",
            "decoder_start_token_id",
            json!(1 << 20),
            "decoder_start_token_id = 1048576 is outside",
        ),
        (
            "blip-caption",
            "text_config.num_attention_heads",
            json!(0),
            "text_config.num_attention_heads = 0",
        ),
        (
            "blip-caption",
            "vision_config.num_attention_heads",
            json!(0),
            "vision_config.num_attention_heads = 0",
        ),
        (
            "clip",
            "text_config.num_attention_heads",
            json!(0),
            "text_config.num_attention_heads = 0",
        ),
        ("clip", "projection_dim", json!(0), "projection_dim = 0"),
    ];
    for (fixture_name, field, value, want) in other {
        let mut f = ModelFiles::from_dir(&fixture(fixture_name)).unwrap();
        set_field(&mut f, field, value.clone());
        let err = match glimpse::pipeline::ModelSpec::from_files(&f.meta) {
            Ok(_) => panic!("{fixture_name} {field} = {value} should be refused"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(want), "{fixture_name} {field}: {err}");
    }
}

#[test]
fn generation_requests_are_capped_before_anything_is_allocated() {
    use glimpse::generate::{MAX_BEAMS, MAX_NEW_TOKENS};
    use glimpse::pipeline::{MAX_KV_BYTES, MAX_PROMPT_BYTES};
    let p = Pipeline::load(&git_files(), &Device::Cpu, DType::F32).unwrap();
    let image = p
        .prepare_image(&std::fs::read(fixture("images/square_32.png")).unwrap())
        .unwrap();
    let base = p.default_options();
    let run = |opts: &glimpse::generate::GenerateOptions, prompt: Option<&str>| {
        pollster::block_on(p.caption(&image, prompt, opts, &mut |_| true))
            .unwrap_err()
            .to_string()
    };
    let mut o = base.clone();
    o.num_beams = 100_000;
    assert!(
        run(&o, None).contains(&format!(
            "num_beams = 100000 must be between 1 and {MAX_BEAMS}"
        )),
        "{}",
        run(&o, None)
    );
    o.num_beams = 0;
    assert!(run(&o, None).contains("num_beams = 0"));
    let mut o = base.clone();
    o.max_new_tokens = 1 << 30;
    assert!(run(&o, None).contains(&format!("between 1 and {MAX_NEW_TOKENS}")));
    let mut o = base.clone();
    o.do_sample = true;
    o.temperature = 0.0;
    assert!(run(&o, None).contains("temperature = 0 must be a number > 0"));
    let mut o = base.clone();
    o.top_p = f32::NAN;
    assert!(run(&o, None).contains("top_p = NaN"));
    // a prompt past the positions is refused by token count; a huge one before tokenizing
    let err = run(&base, Some(&"a ".repeat(200)));
    assert!(err.contains("this model holds 64 text positions"), "{err}");
    let err = run(&base, Some(&"x".repeat(100_000)));
    assert!(
        err.contains(&format!("at most {MAX_PROMPT_BYTES} bytes")),
        "{err}"
    );
    // the KV cache: 2 layers × (k, v) × 16 beams × (17 image + 1 + 40 text rows) × 32 × 4 bytes
    // = 475 KiB, refused under a 256 KiB budget, accepted under the default
    let mut o = base.clone();
    o.num_beams = 16;
    o.max_new_tokens = 40;
    o.max_kv_bytes = 256 << 10;
    let err = run(&o, None);
    assert!(
        err.contains(
            "16 beams of 58 positions need 0.5 MiB of key/value cache; this request allows 0.2 MiB"
        ),
        "{err}"
    );
    o.max_kv_bytes = MAX_KV_BYTES;
    assert!(pollster::block_on(p.caption(&image, None, &o, &mut |_| true)).is_ok());
    // after all of it the pipeline still captions
    assert!(pollster::block_on(p.caption(&image, None, &base, &mut |_| true)).is_ok());
}
