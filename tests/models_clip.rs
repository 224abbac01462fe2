//! CLIP against Hugging Face transformers on the committed tiny checkpoint: text embeddings,
//! image embeddings and logits_per_image, on the CPU and on the GPU.

mod common;

use common::*;
use glimpse::image::{decode, ImageProcessorConfig};
use glimpse::io::config::parse_config;
use glimpse::io::stream::build_model;
use glimpse::models::clip::{logits_per_image, Clip, ClipConfig};
use glimpse::{DType, Tensor};

#[test]
fn clip_matches_transformers_on_cpu_and_gpu() {
    let dir = fixture("clip");
    let read_s = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let cfg: ClipConfig = parse_config("config.json", &read_s("config.json")).unwrap();
    let proc = ImageProcessorConfig::from_json(&read_s("preprocessor_config.json")).unwrap();
    let r = read_json(&dir.join("reference.json"));
    let ids: Vec<Vec<u32>> = r["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(u32s)
        .collect();
    let mask: Vec<Vec<u32>> = r["attention_mask"]
        .as_array()
        .unwrap()
        .iter()
        .map(u32s)
        .collect();
    // the tokenizer gives the reference ids
    let tok = glimpse::io::tokenizer::Tokenizer::from_bytes(
        &std::fs::read(dir.join("tokenizer.json")).unwrap(),
    )
    .unwrap();
    for (text, want) in r["texts"].as_array().unwrap().iter().zip(&ids) {
        let got = tok.encode(text.as_str().unwrap(), true).unwrap();
        assert_eq!(got[..], want[..got.len()], "tokens of {text}");
    }
    for dtype in [DType::F32, DType::Q8_0] {
        for d in both() {
            let model = build_model(&[("model.safetensors", &weights)], &d, dtype, |vb| {
                Clip::new(vb, &cfg)
            })
            .unwrap();
            let p = cfg.projection_dim;
            let txt = read(&model.text_embeds(&ids, &mask).unwrap());
            let (mut emb_diff, mut logit_diff) =
                (max_abs_diff(&txt, &f32s(&r["text_embeds"])).0, 0f32);
            for (name, e) in r["images"].as_object().unwrap() {
                let bytes = std::fs::read(fixture("images").join(format!("{name}.png"))).unwrap();
                let px = proc.preprocess(&decode(&bytes).unwrap()).unwrap();
                let img = read(
                    &model
                        .image_embeds(
                            &Tensor::from_f32(&px.data, &[1, 3, px.height, px.width], &d).unwrap(),
                        )
                        .unwrap(),
                );
                // CLIPModel's image_embeds are L2-normalized (get_text_features' are not)
                let mut unit = img.clone();
                glimpse::models::clip::normalize_rows(&mut unit, p);
                emb_diff = emb_diff.max(max_abs_diff(&unit, &f32s(&e["image_embeds"])).0);
                let logits = logits_per_image(img, txt.clone(), p, model.logit_scale);
                logit_diff = logit_diff.max(max_abs_diff(&logits, &f32s(&e["logits_per_image"])).0);
            }
            eprintln!("clip {} on {}: max embedding diff {emb_diff:.2e}, max logits_per_image diff {logit_diff:.2e}", dtype.name(), d.name());
            // f32: rounding only (reference rounded to 7 decimals). q8_0: each weight moves by up
            // to 0.4% of its block's largest |w| (here a block is a whole row of 32); through the
            // 2 + 2 layers and the projections the embedding directions turn by under 1%, so the
            // cosine similarities move by < 0.01 and the logits (logit_scale × cosine) by < 0.01·scale.
            let bound = if dtype == DType::F32 {
                1e-3
            } else {
                0.01 * model.logit_scale
            };
            assert!(
                logit_diff < bound && (dtype != DType::F32 || emb_diff < 1e-4),
                "clip {} on {}",
                dtype.name(),
                d.name()
            );
        }
    }
}
