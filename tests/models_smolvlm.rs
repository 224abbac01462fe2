//! SmolVLM (Idefics3) against Hugging Face transformers on the committed tiny checkpoint
//! (tools/make_smolvlm_fixture.py): the processor's tiles, pixels, prompt text and ids; the
//! connector's image tokens; the logits of a one-turn and a two-turn conversation and their
//! greedy ids, the second turn resuming the first turn's caches; on the CPU and on the GPU.

mod common;

use std::collections::BTreeMap;

use common::*;
use glimpse::generate::{generate, GenerateOptions};
use glimpse::image::tiles::expand_images;
use glimpse::image::{decode, ImageProcessorConfig};
use glimpse::io::chat::{ChatTemplate, Message};
use glimpse::io::config::{parse, parse_config, GenerationConfig};
use glimpse::io::stream::build_model;
use glimpse::io::tokenizer::Tokenizer;
use glimpse::models::idefics3::{Idefics3, Idefics3Config};
use glimpse::{DType, Device, Tensor};

struct Fixture {
    weights: Vec<u8>,
    cfg: Idefics3Config,
    gen: GenerationConfig,
    proc: ImageProcessorConfig,
    template: ChatTemplate,
    tokenizer: Tokenizer,
    reference: serde_json::Value,
}

fn load() -> Fixture {
    let dir = fixture("smolvlm");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let mut meta = BTreeMap::new();
    meta.insert(
        "chat_template.json".to_string(),
        read("chat_template.json").into_bytes(),
    );
    Fixture {
        weights: std::fs::read(dir.join("model.safetensors")).unwrap(),
        cfg: parse_config("config.json", &read("config.json")).unwrap(),
        gen: parse("generation_config.json", &read("generation_config.json")).unwrap(),
        proc: ImageProcessorConfig::from_json(&read("preprocessor_config.json")).unwrap(),
        template: ChatTemplate::from_files(&meta).unwrap().unwrap(),
        tokenizer: Tokenizer::from_bytes(read("tokenizer.json").as_bytes()).unwrap(),
        reference: read_json(&dir.join("reference.json")),
    }
}

/// The tiles `[N, 3, T, T]` and (rows, cols) of a fixture image, through glimpse's processor.
fn tiles(proc: &ImageProcessorConfig, name: &str) -> (Vec<f32>, usize, usize, usize) {
    let bytes = std::fs::read(fixture("images").join(format!("{name}.png"))).unwrap();
    let t = proc.preprocess_tiles(&decode(&bytes).unwrap()).unwrap();
    let data: Vec<f32> = t.frames.iter().flat_map(|p| p.data.clone()).collect();
    (data, t.frames.len(), t.rows, t.cols)
}

/// The prompt ids of `messages` over an image of `rows × cols` tiles, checked on the way
/// against the reference's rendered and expanded text.
fn prompt_ids(
    f: &Fixture,
    messages: &[Message],
    grid: (usize, usize),
    turn: &serde_json::Value,
) -> Vec<u32> {
    let text = f.template.render(messages, true, &BTreeMap::new()).unwrap();
    assert_eq!(text, turn["prompt_text"].as_str().unwrap());
    let expanded = expand_images(&text, &[grid], f.cfg.image_seq_len()).unwrap();
    if let Some(want) = turn.get("expanded_text") {
        assert_eq!(expanded, want.as_str().unwrap());
    }
    let ids = f.tokenizer.encode(&expanded, true).unwrap();
    assert_eq!(ids, u32s(&turn["input_ids"]));
    ids
}

#[test]
fn processor_matches_transformers() {
    let f = load();
    let mut no_split = f.proc.clone();
    no_split.do_image_splitting = false;
    let cases = f.reference["images"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(n, e)| (n.clone(), e, &f.proc))
        .chain(
            f.reference["no_split"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(n, e)| (n.clone(), e, &no_split)),
        )
        .collect::<Vec<_>>();
    for (name, entry, proc) in cases {
        let (data, n, rows, cols) = tiles(proc, &name);
        assert_eq!(
            (rows, cols),
            (
                entry["rows"].as_u64().unwrap() as usize,
                entry["cols"].as_u64().unwrap() as usize
            ),
            "{name}"
        );
        let shape: Vec<usize> = entry["pixel_values_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "{name}: {shape:?} vs {n} tiles"
        );
        // the reference is rounded to 7 digits; glimpse computes the same f32 pixels
        let d = max_abs_diff(&data, &f32s(&entry["pixel_values"])).0;
        assert!(d < 1e-6, "{name}: pixels differ by {d}");
        let msgs = vec![Message::user_with_image(
            f.reference["question"].as_str().unwrap(),
        )];
        prompt_ids(&f, &msgs, (rows, cols), &entry["turn1"]);
    }
}

/// Per device: (worst image-token diff, worst logit diff, greedy runs equal, runs).
fn run(f: &Fixture, d: &Device, dtype: DType) -> (f32, f32, usize, usize) {
    let model = build_model(&[("model.safetensors", &f.weights)], d, dtype, |vb| {
        Idefics3::new(vb, &f.cfg)
    })
    .unwrap();
    let mut opts = GenerateOptions::from_config(&f.gen);
    opts.max_new_tokens = f.reference["config"]["max_new_tokens"].as_u64().unwrap() as usize;
    let (mut img_diff, mut logit_diff, mut ok, mut runs) = (0f32, 0f32, 0, 0);
    for (name, entry) in f.reference["images"].as_object().unwrap() {
        let (data, n, rows, cols) = tiles(&f.proc, name);
        let t = f.cfg.vision_config.image_size;
        let pixels = Tensor::from_f32(&data, &[n, 3, t, t], d).unwrap();
        let image = model.encode_image(&pixels).unwrap();
        img_diff =
            img_diff.max(max_abs_diff(&read(&image), &f32s(&entry["image_hidden_states"])).0);

        let mut state = None;
        for (turn, msgs) in [
            (
                "turn1",
                vec![Message::user_with_image(
                    f.reference["question"].as_str().unwrap(),
                )],
            ),
            (
                "turn2",
                serde_json::from_value(entry["turn2"]["messages"].clone()).unwrap(),
            ),
        ] {
            let want = &entry[turn];
            let ids = prompt_ids(f, &msgs, (rows, cols), want);
            // the prompt's last logits, through a decoder that resumes the conversation
            let mut dec = model.decoder(&image, state.take()).unwrap();
            let logits =
                glimpse::generate::Decoder::forward(&mut dec, std::slice::from_ref(&ids)).unwrap();
            logit_diff =
                logit_diff.max(max_abs_diff(&read(&logits), &f32s(&want["last_logits"])).0);
            let state_after_prompt = dec.into_state();
            // greedy generation resumes the same caches (the prompt is now wholly cached)
            let mut dec = model.decoder(&image, state_after_prompt).unwrap();
            let out = pollster::block_on(generate(&mut dec, &ids, &opts, &mut |_| true)).unwrap();
            let new = out[ids.len()..].to_vec();
            runs += 1;
            if new == u32s(&want["greedy_ids"]) {
                ok += 1;
            } else {
                eprintln!("{name} {turn}: {new:?} vs {:?}", u32s(&want["greedy_ids"]));
            }
            state = dec.into_state();
        }
    }
    (img_diff, logit_diff, ok, runs)
}

#[test]
fn smolvlm_matches_transformers_on_cpu_and_gpu() {
    let f = load();
    // the fixture's lm_head is scaled by 16 (an exact power of two that only separates the
    // top logits): 1e-4 on the model's own logits is 16e-4 on these
    let scale = f.reference["config"]["lm_head_scale"].as_f64().unwrap() as f32;
    println!("| device | image tokens max |Δ| | last logits max |Δ| / scale | greedy ids equal |");
    for d in both() {
        let (img, logits, ok, runs) = run(&f, &d, DType::F32);
        println!(
            "| {} | {img:.2e} | {:.2e} | {ok}/{runs} |",
            d.name(),
            logits / scale
        );
        // image tokens: two SigLIP layers and a projection in f32, different summation order
        assert!(img < 1e-4, "{}: image tokens differ by {img}", d.name());
        assert!(
            logits / scale < 1e-4,
            "{}: logits differ by {}",
            d.name(),
            logits / scale
        );
        assert_eq!(ok, runs, "{}: greedy ids", d.name());
    }
}

/// PNG bytes of a `w × h` gradient.
fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn pipeline_holds_a_two_turn_conversation() {
    use glimpse::pipeline::{ChatSession, Pipeline, Task};
    let f = load();
    let dir = fixture("smolvlm");
    let (p, _) = Pipeline::load_path(&dir, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(p.task(), Task::Chat);
    let entry = &f.reference["images"]["wide_40x64"];
    let bytes = std::fs::read(fixture("images").join("wide_40x64.png")).unwrap();
    let image = p.prepare_image(&bytes).unwrap();
    let mut opts = p.default_options();
    opts.max_new_tokens = 12;
    let mut session = ChatSession::new();
    let mut msgs = vec![Message::user_with_image(
        f.reference["question"].as_str().unwrap(),
    )];
    let first =
        pollster::block_on(p.chat(&image, &msgs, &mut session, &opts, &mut |_| true)).unwrap();
    let turn1 = &entry["turn1"];
    let prompt1 = u32s(&turn1["input_ids"]);
    assert_eq!(first.ids[prompt1.len()..], u32s(&turn1["greedy_ids"])[..]);
    // the answer's text, as transformers decodes it (special tokens skipped, stripped)
    assert_eq!(first.text, turn1["answer"].as_str().unwrap());
    let cached = session.cached_tokens();
    assert_eq!(
        cached,
        prompt1.len() + 11,
        "the prompt and all but the last new token are cached"
    );

    msgs.push(Message::text("assistant", &first.text));
    msgs.push(Message::text(
        "user",
        f.reference["follow_up"].as_str().unwrap(),
    ));
    let turn2 = &entry["turn2"];
    assert_eq!(
        p.chat_prompt(&msgs, (2, 2)).unwrap(),
        u32s(&turn2["input_ids"])
    );
    let second =
        pollster::block_on(p.chat(&image, &msgs, &mut session, &opts, &mut |_| true)).unwrap();
    let prompt2 = u32s(&turn2["input_ids"]);
    assert_eq!(second.ids[prompt2.len()..], u32s(&turn2["greedy_ids"])[..]);
    assert!(session.cached_tokens() > cached);

    // caption and ask on an instruction model are one-turn conversations
    let asked = pollster::block_on(p.ask(
        &image,
        f.reference["question"].as_str().unwrap(),
        &opts,
        &mut |_| true,
    ))
    .unwrap();
    assert_eq!(asked.ids, first.ids);
}

#[test]
fn bad_conversations_are_clear_errors() {
    use glimpse::pipeline::{ChatSession, Pipeline};
    let (p, _) = Pipeline::load_path(&fixture("smolvlm"), &Device::Cpu, DType::F32).unwrap();
    let mut opts = p.default_options();
    opts.max_new_tokens = 2;
    let mut session = ChatSession::new();
    // a 1 × 5000 strip: resized to the longest edge, its one pixel row becomes a row of tiles
    let strip = p.prepare_image(&png(5000, 1)).unwrap();
    let q = [Message::user_with_image("What is it?")];
    pollster::block_on(p.chat(&strip, &q, &mut session, &opts, &mut |_| true)).unwrap();
    let err = |msgs: &[Message], opts: &GenerateOptions| {
        pollster::block_on(p.chat(&strip, msgs, &mut ChatSession::new(), opts, &mut |_| true))
            .unwrap_err()
            .to_string()
    };
    assert!(err(&[], &opts).contains("no messages"));
    // two images in one conversation
    let two = [Message::user_with_image("a"), Message::user_with_image("b")];
    assert!(err(&two, &opts).contains("one image per conversation"));
    // longer than the context: max_position_embeddings is 512
    let mut long = opts.clone();
    long.max_new_tokens = 500;
    let e = err(&q, &long);
    assert!(e.contains("this model holds 512 positions"), "{e}");
    let many: Vec<Message> = std::iter::once(Message::user_with_image("x"))
        .chain((0..100).map(|i| {
            Message::text(
                if i % 2 == 0 { "assistant" } else { "user" },
                "a star and a ring",
            )
        }))
        .collect();
    let e = err(&many, &opts);
    assert!(e.contains("start a new conversation"), "{e}");
}

/// The ids of a two-turn conversation about `wide_40x64` (12 new tokens a turn).
fn two_turns(p: &glimpse::pipeline::Pipeline) -> Vec<Vec<u32>> {
    use glimpse::pipeline::ChatSession;
    let bytes = std::fs::read(fixture("images").join("wide_40x64.png")).unwrap();
    let image = p.prepare_image(&bytes).unwrap();
    let mut opts = p.default_options();
    opts.max_new_tokens = 12;
    let mut session = ChatSession::new();
    let mut msgs = vec![Message::user_with_image("What is in the picture?")];
    let mut out = Vec::new();
    for follow in ["And the color?", ""] {
        let g =
            pollster::block_on(p.chat(&image, &msgs, &mut session, &opts, &mut |_| true)).unwrap();
        msgs.push(Message::text("assistant", &g.text));
        out.push(g.ids);
        if follow.is_empty() {
            break;
        }
        msgs.push(Message::text("user", follow));
    }
    out
}

#[test]
fn gguf_carries_the_chat_model_whole() {
    use glimpse::pipeline::{quantize, ModelFiles, Pipeline};
    let dir = fixture("smolvlm");
    let gguf = |dtype: DType| {
        let out = std::env::temp_dir().join(format!(
            "glimpse-smolvlm-{}-{}.gguf",
            std::process::id(),
            dtype.name()
        ));
        quantize(Some(&dir), None, dtype, &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        ModelFiles {
            weights: vec![("model.gguf".into(), bytes)],
            ..Default::default()
        }
    };
    let folder = ModelFiles::from_dir(&dir).unwrap();
    // f32 GGUF: the chat template and processor travel in its metadata; ids as the folder's
    let want = two_turns(&Pipeline::load(&folder, &Device::Cpu, DType::F32).unwrap());
    assert_eq!(
        two_turns(&Pipeline::load(&gguf(DType::F32), &Device::Cpu, DType::F32).unwrap()),
        want
    );
    // q8_0 GGUF holds the blocks the folder is quantized to while loading: the same ids
    let q8 = gguf(DType::Q8_0);
    for d in both() {
        let from_folder = two_turns(&Pipeline::load(&folder, &d, DType::Q8_0).unwrap());
        assert_eq!(
            two_turns(&Pipeline::load(&q8, &d, DType::Q8_0).unwrap()),
            from_folder,
            "{d:?}"
        );
    }
    // q4_0 loads and talks on both devices (its ids are its own)
    for d in both() {
        let ids = two_turns(&Pipeline::load(&folder, &d, DType::Q4_0).unwrap());
        assert_eq!(ids.len(), 2, "{d:?}");
    }
}

#[test]
fn stop_strings_cut_the_answer_and_stop_generating() {
    use glimpse::pipeline::{ChatSession, Pipeline};
    let f = load();
    let (p, _) = Pipeline::load_path(&fixture("smolvlm"), &Device::Cpu, DType::F32).unwrap();
    let bytes = std::fs::read(fixture("images").join("wide_40x64.png")).unwrap();
    let image = p.prepare_image(&bytes).unwrap();
    let mut opts = p.default_options();
    opts.max_new_tokens = 12;
    let answer = f.reference["images"]["wide_40x64"]["turn1"]["answer"]
        .as_str()
        .unwrap()
        .to_string();
    // a stop string from the middle of the full answer: the text ends before it
    let chars: Vec<char> = answer.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    opts.stop_strings = vec![stop.clone()];
    let q = [Message::user_with_image(
        f.reference["question"].as_str().unwrap(),
    )];
    let out = pollster::block_on(p.chat(&image, &q, &mut ChatSession::new(), &opts, &mut |_| true))
        .unwrap();
    let cut = &answer[..answer.find(&stop).unwrap()];
    assert_eq!(out.text, cut.trim());
    assert!(out.new_tokens < 12, "generation stops at the stop string");
    // generation_config.json's stop_strings may be one string or a list
    for text in [r#"{"stop_strings": "<x>"}"#, r#"{"stop_strings": ["<x>"]}"#] {
        let g: GenerationConfig = parse("generation_config.json", text).unwrap();
        assert_eq!(g.stop_strings, vec!["<x>".to_string()]);
    }
}
