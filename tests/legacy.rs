//! Models as the hub's older repos hold them (issue 10): `pytorch_model.bin` (with the buffers
//! old checkpoints carried), full config dumps with `null` fields and missing ones, legacy
//! processor configs (`feature_extractor_type`, integer `size`), slow tokenizers' files only
//! (vocab.txt, vocab.json + merges.txt) and no generation_config.json. Each legacy twin
//! (tools/make_legacy_fixtures.py) gives exactly what transformers gives loading that folder,
//! which the script checked equals the safetensors / tokenizer.json fixture it was made from:
//! tokenizer ids (and those of transformers' own conversion, `twin/tokenizer.json`), pixels,
//! greedy ids, VQA answers, CLIP logits; on the CPU and the GPU, streamed from disk and from
//! memory. The real vocabularies of the catalog's repos tokenize as transformers does.

mod common;

use common::*;
use glimpse::io::tokenizer::{Tokenizer, TokenizerFiles};
use glimpse::pipeline::{ModelFiles, Pipeline};
use glimpse::{DType, Device};

fn legacy(name: &str) -> std::path::PathBuf {
    fixture("legacy").join(name)
}

fn image(name: &str) -> Vec<u8> {
    std::fs::read(fixture("images").join(format!("{name}.png"))).unwrap()
}

/// The pipeline of a legacy folder, streamed from disk (the zip's directory and data.pkl read
/// first) or from memory (the zip parsed front to back).
fn load(name: &str, d: &Device, from_disk: bool) -> Pipeline {
    if from_disk {
        Pipeline::load_path(&legacy(name), d, DType::F32).unwrap().0
    } else {
        Pipeline::load(&ModelFiles::from_dir(&legacy(name)).unwrap(), d, DType::F32).unwrap()
    }
}

fn check_tokenizer(name: &str, p: &Pipeline, r: &serde_json::Value) {
    let twin =
        Tokenizer::from_bytes(&std::fs::read(legacy(name).join("twin/tokenizer.json")).unwrap())
            .unwrap();
    for (text, want) in r["texts"]
        .as_array()
        .unwrap()
        .iter()
        .zip(r["ids"].as_array().unwrap())
    {
        let text = text.as_str().unwrap();
        let want = u32s(want);
        assert_eq!(
            p.tokenizer().encode(text, true).unwrap(),
            want,
            "{name}: {text:?}"
        );
        assert_eq!(
            twin.encode(text, true).unwrap(),
            want,
            "{name} twin: {text:?}"
        );
    }
}

fn check_pixels(name: &str, p: &Pipeline, r: &serde_json::Value) {
    for (img, e) in r["images"].as_object().unwrap() {
        let px = read(&p.pixels(&image(img)).unwrap().tensor);
        // 1e-5: the reference's 7-decimal JSON rounding, far below one 8-bit step (see preprocess.rs)
        assert_close(
            &format!("{name}/{img} pixels"),
            &px,
            &f32s(&e["pixel_values"]),
            1e-5,
            0.0,
        );
    }
}

#[test]
fn legacy_git_vit_gpt2_and_blip_caption_like_transformers() {
    for name in ["git", "vit-gpt2", "blip-caption"] {
        let r = read_json(&legacy(name).join("reference.json"));
        for (d, from_disk) in [(cpu(), true), (gpu(), true), (cpu(), false)] {
            let p = load(name, &d, from_disk);
            check_tokenizer(name, &p, &r);
            check_pixels(name, &p, &r);
            let mut opts = p.default_options();
            opts.max_new_tokens = 10;
            for (img, e) in r["images"].as_object().unwrap() {
                let prepared = p.prepare_image(&image(img)).unwrap();
                let out =
                    pollster::block_on(p.caption(&prepared, None, &opts, &mut |_| true)).unwrap();
                assert_eq!(
                    out.ids,
                    u32s(&e["greedy_ids"]),
                    "{name}/{img} on {d:?}, disk {from_disk}"
                );
            }
        }
    }
}

#[test]
fn legacy_blip_vqa_answers_like_transformers() {
    let name = "blip-vqa";
    let r = read_json(&legacy(name).join("reference.json"));
    for d in both() {
        let p = load(name, &d, true);
        check_tokenizer(name, &p, &r);
        let mut opts = p.default_options();
        opts.max_new_tokens = 6;
        for (img, e) in r["images"].as_object().unwrap() {
            let prepared = p.prepare_image(&image(img)).unwrap();
            for a in e["vqa"].as_array().unwrap() {
                let q = a["question"].as_str().unwrap();
                let out = pollster::block_on(p.ask(&prepared, q, &opts, &mut |_| true)).unwrap();
                assert_eq!(out.ids, u32s(&a["ids"]), "{img}: {q} on {d:?}");
            }
        }
    }
}

#[test]
fn legacy_clip_matches_like_transformers() {
    let name = "clip";
    let r = read_json(&legacy(name).join("reference.json"));
    let labels: Vec<String> = r["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    for d in both() {
        let p = load(name, &d, true);
        check_tokenizer(name, &p, &r);
        check_pixels(name, &p, &r);
        for (img, e) in r["images"].as_object().unwrap() {
            let prepared = p.prepare_image(&image(img)).unwrap();
            let probs = pollster::block_on(p.match_texts(&prepared, &labels)).unwrap();
            // softmax of the reference logits_per_image
            let logits = f32s(&e["logits_per_image"]);
            let max = logits.iter().copied().fold(f32::MIN, f32::max);
            let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            let want: Vec<f32> = exps.iter().map(|e| e / sum).collect();
            // logits agree to ~2e-6 (docs/models.md); probabilities to 1e-5
            assert_close(&format!("{img} scores on {d:?}"), &probs, &want, 1e-5, 0.0);
        }
    }
}

#[test]
fn real_vocabularies_tokenize_as_transformers() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hub/tokenizers");
    let r = read_json(&root.join("reference.json"));
    let texts = r["texts"].as_array().unwrap();
    let read = |p: &str| std::fs::read(root.join(p)).unwrap();
    let bert_vocab = read("bert-base-uncased/vocab.txt");
    let gpt2 = (read("gpt2/vocab.json"), read("gpt2/merges.txt"));
    let clip = (read("clip/vocab.json"), read("clip/merges.txt"));
    // the tokenizer configs of the hub repos that use these vocabularies
    let hub = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hub/configs");
    let blip_cfg =
        std::fs::read(hub.join("Salesforce__blip-image-captioning-base/tokenizer_config.json"))
            .unwrap();
    let clip_cfg = std::fs::read(
        hub.join("openai__clip-vit-base-patch32/_reconstructed/tokenizer_config.json"),
    )
    .unwrap();
    let clip_map = std::fs::read(
        hub.join("openai__clip-vit-base-patch32/_reconstructed/special_tokens_map.json"),
    )
    .unwrap();
    let gpt2_map = std::fs::read(
        hub.join("nlpconnect__vit-gpt2-image-captioning/_reconstructed/special_tokens_map.json"),
    )
    .unwrap();
    let none = TokenizerFiles {
        tokenizer_json: None,
        vocab_txt: None,
        vocab_json: None,
        merges_txt: None,
        tokenizer_config: None,
        special_tokens_map: None,
        added_tokens: None,
        model_type: "",
    };
    let cases = [
        (
            "bert-base-uncased",
            TokenizerFiles {
                vocab_txt: Some(&bert_vocab),
                tokenizer_config: Some(&blip_cfg),
                model_type: "blip",
                ..none
            },
        ),
        (
            "gpt2",
            TokenizerFiles {
                vocab_json: Some(&gpt2.0),
                merges_txt: Some(&gpt2.1),
                special_tokens_map: Some(&gpt2_map),
                model_type: "vision-encoder-decoder",
                ..none
            },
        ),
        (
            "clip",
            TokenizerFiles {
                vocab_json: Some(&clip.0),
                merges_txt: Some(&clip.1),
                tokenizer_config: Some(&clip_cfg),
                special_tokens_map: Some(&clip_map),
                model_type: "clip",
                ..none
            },
        ),
    ];
    for (name, files) in cases {
        let tok = Tokenizer::from_files(&files).unwrap();
        for (text, want) in texts.iter().zip(r[name].as_array().unwrap()) {
            let text = text.as_str().unwrap();
            assert_eq!(
                tok.encode(text, true).unwrap(),
                u32s(want),
                "{name}: {text:?}"
            );
        }
    }
}
