//! BLIP against Hugging Face transformers on the committed tiny checkpoints: captioning (greedy,
//! beam, with a prompt, text logits) and VQA answers, on the CPU and on the GPU.

mod common;

use common::*;
use glimpse::generate::{generate, CachedDecoder, EarlyStopping, GenerateOptions};
use glimpse::image::{decode, ImageProcessorConfig};
use glimpse::io::config::{parse, parse_config, GenerationConfig};
use glimpse::io::stream::build_model;
use glimpse::io::tokenizer::Tokenizer;
use glimpse::models::blip::{Blip, BlipConfig};
use glimpse::{DType, Device, Tensor};

struct Fx {
    weights: Vec<u8>,
    cfg: BlipConfig,
    gen: GenerationConfig,
    proc: ImageProcessorConfig,
    tok: Tokenizer,
    r: serde_json::Value,
}

fn load(kind: &str) -> Fx {
    let dir = fixture(kind);
    let read_s = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    Fx {
        weights: std::fs::read(dir.join("model.safetensors")).unwrap(),
        cfg: parse_config("config.json", &read_s("config.json")).unwrap(),
        gen: parse("generation_config.json", &read_s("generation_config.json")).unwrap(),
        proc: ImageProcessorConfig::from_json(&read_s("preprocessor_config.json")).unwrap(),
        tok: Tokenizer::from_bytes(&std::fs::read(dir.join("tokenizer.json")).unwrap()).unwrap(),
        r: read_json(&dir.join("reference.json")),
    }
}

fn pixels(f: &Fx, name: &str, entry: &serde_json::Value, d: &Device) -> Tensor {
    let bytes = std::fs::read(fixture("images").join(format!("{name}.png"))).unwrap();
    let px = f.proc.preprocess(&decode(&bytes).unwrap()).unwrap();
    // bicubic to a fixed 32×32, reproduced exactly (tests/preprocess.rs)
    assert_close(
        &format!("{name} pixels"),
        &px.data,
        &f32s(&entry["pixel_values"]),
        1e-5,
        0.0,
    );
    Tensor::from_f32(&px.data, &[1, 3, px.height, px.width], d).unwrap()
}

/// (max logit diff, matches, total) for captioning: greedy, beam and prompted ids.
fn caption(f: &Fx, d: &Device, dtype: DType) -> (f32, usize, usize) {
    let model = build_model(&[("model.safetensors", &f.weights)], d, dtype, |vb| {
        Blip::new(vb, &f.cfg, false)
    })
    .unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 10,
        ..GenerateOptions::from_config(&f.gen)
    };
    let (mut diff, mut ok, mut total) = (0f32, 0, 0);
    for (name, e) in f.r["images"].as_object().unwrap() {
        let memory = model
            .caption_memory(&model.encode_image(&pixels(f, name, e, d)).unwrap())
            .unwrap();
        let want = u32s(&e["greedy_ids"]);
        let bos = [want[0]];
        let got = pollster::block_on(generate(
            &mut model.decoder(&memory, 4).unwrap(),
            &bos,
            &opts,
            &mut |_| true,
        ))
        .unwrap();
        ok += (got == want) as usize;
        let beam = GenerateOptions {
            num_beams: 3,
            early_stopping: EarlyStopping::True,
            ..opts.clone()
        };
        let got = pollster::block_on(generate(
            &mut model.decoder(&memory, 4).unwrap(),
            &bos,
            &beam,
            &mut |_| true,
        ))
        .unwrap();
        ok += (got == u32s(&e["beam_ids"])) as usize;
        // conditional captioning: [BOS] + the prompt's tokens, as BlipForConditionalGeneration.generate
        let mut prompt = bos.to_vec();
        prompt.extend(f.tok.encode(e["prompt"].as_str().unwrap(), false).unwrap());
        let got = pollster::block_on(generate(
            &mut model.decoder(&memory, 4).unwrap(),
            &prompt,
            &GenerateOptions {
                max_new_tokens: 6,
                ..opts.clone()
            },
            &mut |_| true,
        ))
        .unwrap();
        ok += (got == u32s(&e["prompted_ids"])) as usize;
        let logits = read(
            &model
                .decoder(&memory, 4)
                .unwrap()
                .forward_all(std::slice::from_ref(&want))
                .unwrap(),
        );
        let wl = f32s(&e["text_logits"]);
        diff = diff.max(max_abs_diff(&logits[..wl.len()], &wl).0);
        total += 3;
    }
    (diff, ok, total)
}

fn vqa(f: &Fx, d: &Device, dtype: DType) -> (usize, usize) {
    let model = build_model(&[("model.safetensors", &f.weights)], d, dtype, |vb| {
        Blip::new(vb, &f.cfg, true)
    })
    .unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 6,
        ..GenerateOptions::from_config(&f.gen)
    };
    let (mut ok, mut total) = (0, 0);
    for (name, e) in f.r["images"].as_object().unwrap() {
        let image = model.encode_image(&pixels(f, name, e, d)).unwrap();
        for (q, a) in f.r["questions"]
            .as_array()
            .unwrap()
            .iter()
            .zip(e["vqa"].as_array().unwrap())
        {
            let ids = f.tok.encode(q.as_str().unwrap(), true).unwrap();
            assert_eq!(ids, u32s(&a["question_ids"]), "question tokens");
            let memory = model.question_memory(&image, &ids).unwrap();
            let got = pollster::block_on(generate(
                &mut model.decoder(&memory, 4).unwrap(),
                &[f.cfg.text_config.bos_token_id],
                &opts,
                &mut |_| true,
            ))
            .unwrap();
            ok += (got == u32s(&a["ids"])) as usize;
            total += 1;
        }
    }
    (ok, total)
}

#[test]
fn blip_captioning_matches_transformers_on_cpu_and_gpu() {
    let f = load("blip-caption");
    for d in both() {
        let (diff, ok, total) = caption(&f, &d, DType::F32);
        eprintln!(
            "blip caption f32 on {}: max logit diff {diff:.2e}, ids {ok}/{total}",
            d.name()
        );
        // f32 end to end; the reference is rounded to 7 decimals
        assert!(diff < 1e-3, "logits on {}: {diff}", d.name());
        assert_eq!(ok, total, "ids on {}", d.name());
    }
}

#[test]
fn blip_vqa_matches_transformers_on_cpu_and_gpu() {
    let f = load("blip-vqa");
    for d in both() {
        let (ok, total) = vqa(&f, &d, DType::F32);
        eprintln!("blip vqa f32 on {}: answers {ok}/{total}", d.name());
        assert_eq!(ok, total, "answers on {}", d.name());
    }
}

#[test]
fn blip_quantized_at_load_time_stays_close() {
    let f = load("blip-caption");
    let v = load("blip-vqa");
    for d in both() {
        let (diff, ok, total) = caption(&f, &d, DType::Q8_0);
        let (vok, vtotal) = vqa(&v, &d, DType::Q8_0);
        eprintln!("blip q8_0 on {}: caption max logit diff {diff:.2e}, ids {ok}/{total}; vqa {vok}/{vtotal}", d.name());
        // as for GIT (tests/models_git.rs): q8_0 moves each weight by ≤ 0.4% of its block maximum;
        // BLIP's weights here have std 0.2 and its logits reach ~±10, hence a bound relative to them
        assert!(diff < 0.15, "q8_0 logits on {}: {diff}", d.name());
    }
}
