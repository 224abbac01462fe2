//! A mid-size GIT against transformers (issue 10; tools/make_mid_fixture.py): head_dim 64, 101
//! image tokens (several key chunks per query in the fused attention kernel), the real
//! 30522-token BERT vocabulary (a 30522-row LM head and embedding), 2 layers per tower. The
//! tiny fixtures never reach these kernel paths. The weights are made here from the fixture's
//! seed by the same code `glimpse checkpoint` used for the reference; the tokenizer is the real
//! vocab.txt with git-base-coco's tokenizer files. CPU and GPU (lavapipe), f32: pixels, logits,
//! greedy, beam and VQA ids; the page runs the same model in Chromium (tests/browser/mid.test.mjs).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use glimpse::generate::{generate, CachedDecoder, EarlyStopping, GenerateOptions};
use glimpse::io::checkpoint::{random_checkpoint, Format};
use glimpse::pipeline::{ModelFiles, Pipeline};
use glimpse::DType;

/// The fixture as a model folder in memory (what the browser test serves from out/git-mid).
pub fn mid_files() -> ModelFiles {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fix = fixture("git-mid");
    let r = read_json(&fix.join("reference.json"));
    let mut meta = BTreeMap::new();
    for f in [
        "config.json",
        "preprocessor_config.json",
        "generation_config.json",
    ] {
        meta.insert(f.to_string(), std::fs::read(fix.join(f)).unwrap());
    }
    meta.insert(
        "vocab.txt".into(),
        std::fs::read(root.join("tests/hub/tokenizers/bert-base-uncased/vocab.txt")).unwrap(),
    );
    for f in ["tokenizer_config.json", "special_tokens_map.json"] {
        meta.insert(
            f.to_string(),
            std::fs::read(
                root.join("tests/hub/configs/microsoft__git-base-coco/_reconstructed")
                    .join(f),
            )
            .unwrap(),
        );
    }
    let config = String::from_utf8(meta["config.json"].clone()).unwrap();
    let weights = random_checkpoint(
        &config,
        r["seed"].as_u64().unwrap(),
        r["scale"].as_f64().unwrap() as f32,
        Format::Safetensors,
    )
    .unwrap();
    ModelFiles {
        meta,
        weights: vec![("model.safetensors".into(), weights)],
        index: None,
    }
}

#[test]
fn mid_size_git_matches_transformers_on_cpu_and_gpu() {
    let r = read_json(&fixture("git-mid/reference.json"));
    let files = mid_files();
    let config: glimpse::models::git::GitConfig = glimpse::io::config::parse_config(
        "config.json",
        std::str::from_utf8(&files.meta["config.json"]).unwrap(),
    )
    .unwrap();
    for d in both() {
        let p = Pipeline::load(&files, &d, DType::F32).unwrap();
        let model = glimpse::io::stream::build_model(
            &[("model.safetensors", &files.weights[0].1)],
            &d,
            DType::F32,
            |vb| glimpse::models::git::Git::new(vb, &config),
        )
        .unwrap();
        let opts = p.default_options();
        for (name, e) in r["images"].as_object().unwrap() {
            let png = std::fs::read(fixture("images").join(format!("{name}.png"))).unwrap();
            let px = p.pixels(&png).unwrap().tensor;
            let all = read(&px);
            let sample: Vec<f32> = all.iter().copied().step_by(97).collect();
            // 1e-5: the JSON's 7 decimals (see preprocess.rs)
            assert_close(
                &format!("{name} pixels"),
                &sample,
                &f32s(&e["pixel_sample"]),
                1e-5,
                0.0,
            );

            let prefix = model
                .image_prefix(&model.encode_image(&px).unwrap())
                .unwrap();
            let greedy = u32s(&e["greedy_ids"]);
            let mut dec = model.decoder(&prefix, 4).unwrap();
            let logits = read(&dec.forward_all(&[greedy[..4].to_vec()]).unwrap());
            let cols = u32s(&e["logit_ids"]);
            let v = config.vocab_size;
            let got: Vec<f32> = (0..4)
                .flat_map(|t| cols.iter().map(move |&c| (t, c)))
                .map(|(t, c)| logits[t * v + c as usize])
                .collect();
            // f32 at these widths: ~1e-5 of accumulated rounding over 128-wide sums and 30522
            // rows; the top-2 gaps are ≥ 0.01 (reference.json's min_top2_margin)
            assert_close(
                &format!("{name} logits on {d:?}"),
                &got,
                &f32s(&e["text_logits"]),
                1e-4,
                0.0,
            );

            let prepared = p.prepare_image(&png).unwrap();
            let out = pollster::block_on(p.caption(&prepared, None, &opts, &mut |_| true)).unwrap();
            assert_eq!(out.ids, greedy, "{name} greedy on {d:?}");

            let mut dec = model.decoder(&prefix, 4).unwrap();
            let beam = GenerateOptions {
                max_new_tokens: 8,
                num_beams: 3,
                early_stopping: EarlyStopping::True,
                ..opts.clone()
            };
            let got = pollster::block_on(generate(&mut dec, &[101], &beam, &mut |_| true)).unwrap();
            assert_eq!(got, u32s(&e["beam_ids"]), "{name} beam on {d:?}");

            for qa in e["vqa"].as_array().unwrap() {
                let mut o = opts.clone();
                o.max_new_tokens = 6;
                let q = qa["question"].as_str().unwrap();
                let out = pollster::block_on(p.ask(&prepared, q, &o, &mut |_| true)).unwrap();
                assert_eq!(out.ids, u32s(&qa["ids"]), "{name}: {q} on {d:?}");
            }
        }
    }
}
