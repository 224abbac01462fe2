//! VisionEncoderDecoder (ViT + GPT-2 with cross-attention) against Hugging Face transformers on
//! the committed tiny checkpoint: pixels, logits, greedy and beam ids, on the CPU and the GPU.

mod common;

use common::*;
use glimpse::generate::{generate, CachedDecoder, EarlyStopping, GenerateOptions};
use glimpse::image::{decode, ImageProcessorConfig};
use glimpse::io::config::{parse, parse_config, GenerationConfig};
use glimpse::io::stream::build_model;
use glimpse::models::vision_encoder_decoder::{VisionEncoderDecoder, VisionEncoderDecoderConfig};
use glimpse::{DType, Device, Tensor};

fn run(dtype: DType, d: &Device) -> (f32, usize, usize, usize) {
    let dir = fixture("vit-gpt2");
    let read_s = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let cfg: VisionEncoderDecoderConfig =
        parse_config("config.json", &read_s("config.json")).unwrap();
    let gen: GenerationConfig =
        parse("generation_config.json", &read_s("generation_config.json")).unwrap();
    let proc = ImageProcessorConfig::from_json(&read_s("preprocessor_config.json")).unwrap();
    let r = read_json(&dir.join("reference.json"));
    let model = build_model(&[("model.safetensors", &weights)], d, dtype, |vb| {
        VisionEncoderDecoder::new(vb, &cfg)
    })
    .unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 10,
        ..GenerateOptions::from_config(&gen)
    };
    let (mut diff, mut greedy_ok, mut beam_ok, mut n) = (0f32, 0, 0, 0);
    for (name, e) in r["images"].as_object().unwrap() {
        let bytes = std::fs::read(fixture("images").join(format!("{name}.png"))).unwrap();
        let px = proc.preprocess(&decode(&bytes).unwrap()).unwrap();
        // bilinear resize to a fixed size, reproduced exactly (see tests/preprocess.rs)
        assert_close(
            &format!("{name} pixels"),
            &px.data,
            &f32s(&e["pixel_values"]),
            1e-5,
            0.0,
        );
        let image = model
            .encode_image(&Tensor::from_f32(&px.data, &[1, 3, px.height, px.width], d).unwrap())
            .unwrap();
        let want = u32s(&e["greedy_ids"]);
        let start = [want[0]];
        let got = pollster::block_on(generate(
            &mut model.decoder(&image, 4).unwrap(),
            &start,
            &opts,
            &mut |_| true,
        ))
        .unwrap();
        greedy_ok += (got == want) as usize;
        let beam = GenerateOptions {
            num_beams: 3,
            early_stopping: EarlyStopping::True,
            ..opts.clone()
        };
        let got = pollster::block_on(generate(
            &mut model.decoder(&image, 4).unwrap(),
            &start,
            &beam,
            &mut |_| true,
        ))
        .unwrap();
        beam_ok += (got == u32s(&e["beam_ids"])) as usize;
        let logits = read(
            &model
                .decoder(&image, 4)
                .unwrap()
                .forward_all(std::slice::from_ref(&want))
                .unwrap(),
        );
        let wl = f32s(&e["text_logits"]);
        diff = diff.max(max_abs_diff(&logits[..wl.len()], &wl).0);
        n += 1;
    }
    (diff, greedy_ok, beam_ok, n)
}

#[test]
fn vit_gpt2_matches_transformers_on_cpu_and_gpu() {
    for d in both() {
        let (diff, greedy, beam, n) = run(DType::F32, &d);
        eprintln!(
            "vit-gpt2 f32 on {}: max logit diff {diff:.2e}, greedy {greedy}/{n}, beam {beam}/{n}",
            d.name()
        );
        // f32 end to end; the reference is rounded to 7 decimals
        assert!(diff < 1e-3, "logits on {}: {diff}", d.name());
        assert_eq!((greedy, beam), (n, n), "ids on {}", d.name());
    }
}

#[test]
fn vit_gpt2_quantized_at_load_time_stays_close() {
    for d in both() {
        let (diff, greedy, beam, n) = run(DType::Q8_0, &d);
        eprintln!(
            "vit-gpt2 q8_0 on {}: max logit diff {diff:.2e}, greedy {greedy}/{n}, beam {beam}/{n}",
            d.name()
        );
        // as for GIT (tests/models_git.rs): q8_0 moves each weight by ≤ 0.4% of its block maximum
        assert!(diff < 0.15, "q8_0 logits on {}: {diff}", d.name());
    }
}
