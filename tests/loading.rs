//! Checkpoint layouts: a sharded checkpoint (model.safetensors.index.json + shards) and f16 /
//! bf16 tensors load into the same model as the single f32 file.

mod common;

use common::*;
use glimpse::pipeline::{ModelFiles, Pipeline};
use glimpse::{DType, Device};
use safetensors::tensor::TensorView;

fn tensors(bytes: &[u8]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                t.shape().to_vec(),
                t.data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn write(ts: &[(String, Vec<usize>, Vec<f32>)], dtype: safetensors::Dtype) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> = ts
        .iter()
        .map(|(_, _, d)| match dtype {
            safetensors::Dtype::F16 => d
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            safetensors::Dtype::BF16 => d
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
            _ => d.iter().flat_map(|x| x.to_le_bytes()).collect(),
        })
        .collect();
    let views: Vec<(String, TensorView)> = ts
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn caption_ids(files: &ModelFiles) -> Vec<u32> {
    let p = Pipeline::load(files, &Device::Cpu, DType::F32).unwrap();
    let image = p
        .prepare_image(&std::fs::read(fixture("images/wide_40x64.png")).unwrap())
        .unwrap();
    pollster::block_on(p.caption(&image, None, &p.default_options(), &mut |_| true))
        .unwrap()
        .ids
}

#[test]
fn a_sharded_checkpoint_loads_like_the_single_file() {
    let src = fixture("git");
    let dir = std::env::temp_dir().join(format!("glimpse-sharded-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "tokenizer.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let all = tensors(&std::fs::read(src.join("model.safetensors")).unwrap());
    let (a, b) = all.split_at(all.len() / 2);
    let mut map = serde_json::Map::new();
    for (shard, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        std::fs::write(dir.join(shard), write(part, safetensors::Dtype::F32)).unwrap();
        for (n, _, _) in part {
            map.insert(n.clone(), shard.into());
        }
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let sharded = ModelFiles::from_dir(&dir).unwrap();
    // and streamed from disk, shard after shard
    let (p, _) = Pipeline::load_path(&dir, &Device::Cpu, DType::F32).unwrap();
    let image = p
        .prepare_image(&std::fs::read(fixture("images/wide_40x64.png")).unwrap())
        .unwrap();
    let streamed = pollster::block_on(p.caption(&image, None, &p.default_options(), &mut |_| true))
        .unwrap()
        .ids;
    assert_eq!(sharded.weights.len(), 2);
    let want = u32s(&read_json(&src.join("reference.json"))["images"]["wide_40x64"]["greedy_ids"]);
    assert_eq!(caption_ids(&sharded), want);
    assert_eq!(streamed, want);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn f16_and_bf16_checkpoints_load() {
    let mut files = ModelFiles::from_dir(&fixture("git")).unwrap();
    let all = tensors(&files.weights[0].1);
    for dtype in [safetensors::Dtype::F16, safetensors::Dtype::BF16] {
        files.weights = vec![("model.safetensors".into(), write(&all, dtype))];
        // every value reads back as exactly its f16 / bf16 rounding
        let got = glimpse::io::stream::build_model(
            &[("model.safetensors", &files.weights[0].1)],
            &Device::Cpu,
            DType::F32,
            |vb| {
                all.iter()
                    .map(|(name, shape, _)| vb.get(name, shape))
                    .collect::<glimpse::Result<Vec<_>>>()
            },
        )
        .unwrap();
        for ((name, shape, values), t) in all.iter().zip(&got) {
            let want: Vec<f32> = values
                .iter()
                .map(|&x| {
                    if dtype == safetensors::Dtype::F16 {
                        half::f16::from_f32(x).to_f32()
                    } else {
                        half::bf16::from_f32(x).to_f32()
                    }
                })
                .collect();
            assert_eq!(
                (t.shape(), &read(t)),
                (&shape[..], &want),
                "{name} as {dtype:?}"
            );
        }
        let p = Pipeline::load(&files, &Device::Cpu, DType::F32).unwrap();
        // the weights are rounded (f16: 11 bits, bf16: 8 bits of mantissa), so only loading and a
        // full caption are checked here; parity is for the f32 checkpoint
        let image = p
            .prepare_image(&std::fs::read(fixture("images/square_32.png")).unwrap())
            .unwrap();
        let out = pollster::block_on(p.caption(&image, None, &p.default_options(), &mut |_| true))
            .unwrap();
        assert!(out.new_tokens > 0, "{dtype:?}");
    }
}
